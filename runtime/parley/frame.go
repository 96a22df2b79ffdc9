package parley

import (
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"

	parleyv1 "github.com/parleyrpc/parley/gen/parley/v1"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/structpb"
)

// Subprotocols, as offered in Sec-WebSocket-Protocol.
const (
	// SubprotocolProto carries frames as binary protobuf messages.
	SubprotocolProto = "parley.v1+proto"
	// SubprotocolJSON carries frames as protojson text messages.
	SubprotocolJSON = "parley.v1+json"
)

// frameKind is the field number of a kind in parley.v1.Frame's oneof.
type frameKind protowire.Number

const (
	kindHello   frameKind = 1
	kindWelcome frameKind = 2
	kindCall    frameKind = 3
	kindReply   frameKind = 4
	kindError   frameKind = 5
	kindCancel  frameKind = 6
	kindEvent   frameKind = 7
	kindItem    frameKind = 8
	kindEnd     frameKind = 9
	kindCredit  frameKind = 10
	kindGoAway  frameKind = 11
	kindPing    frameKind = 12
	kindPong    frameKind = 13

	// kindUnknown is a kind this version does not know (from a newer
	// peer; not a field number): f.message names it (its field number, or
	// its JSON name) and f.id is its id, if it has one.
	kindUnknown frameKind = 1 << 20
)

func (k frameKind) String() string {
	names := [...]string{"", "hello", "welcome", "call", "reply", "error", "cancel", "event", "item", "end", "credit", "goaway", "ping", "pong"}
	if int(k) < len(names) && k > 0 {
		return names[k]
	}
	if k == kindUnknown {
		return "unknown kind"
	}
	return fmt.Sprintf("kind(%d)", int(k))
}

// frame is a decoded parley.v1.Frame, flattened: which fields are set
// depends on kind. The hot kinds (call, reply, error, cancel) are encoded and
// decoded by hand, without building the generated message; the rare ones go
// through the generated types.
//
// payload holds the message in the connection's encoding: protobuf bytes
// for SubprotocolProto, protojson bytes for SubprotocolJSON. After decoding
// it may alias the read buffer, so it is only valid until the next read.
type frame struct {
	kind       frameKind
	id         uint64
	method     string // call, event; on a reply, error or item being sent, the call's, for messages only (not encoded)
	methodRaw  []byte // the method as decoded from binary, aliasing the read buffer
	hasPayload bool
	payload    []byte
	timeoutMs  uint32
	metadata   map[string]string
	code       Code
	message    string
	details    []*anypb.Any
	items      uint32 // credit
	bytes      uint32 // credit
	// size is a received frame's WebSocket message length: what a
	// StreamItem costs in byte credit (set by the reader, not encoded).
	size   int
	nonce  uint64 // ping, pong
	topic  string // event
	offset uint64 // event
	epoch  string // event
	notRun bool   // error: the callee never ran the call

	hello   *parleyv1.Hello
	welcome *parleyv1.Welcome
	goaway  *parleyv1.GoAway
}

// procedure returns the frame's method without copying it: valid until the
// next read.
func (f *frame) procedure() []byte {
	if f.methodRaw != nil {
		return f.methodRaw
	}
	return []byte(f.method)
}

// codec turns frames into WebSocket messages and back for one subprotocol.
type codec interface {
	// appendFrame appends f's encoding to b. When msg is non-nil it is the
	// payload, marshalled in place; otherwise f.payload is used.
	appendFrame(b []byte, f *frame, msg proto.Message) ([]byte, error)
	// decodeFrame decodes data into f.
	decodeFrame(data []byte, f *frame) error
	// unmarshal decodes a payload into msg.
	unmarshal(payload []byte, msg proto.Message) error
	// marshal encodes msg as a payload.
	marshal(msg proto.Message) ([]byte, error)
	// messageType is the WebSocket message type: binary or text.
	messageType() int
	subprotocol() string
}

func codecFor(subprotocol string) (codec, bool) {
	switch subprotocol {
	case SubprotocolProto:
		return binaryCodec{}, true
	case SubprotocolJSON:
		return jsonCodec{}, true
	}
	return nil, false
}

// errFrame reports an undecodable frame envelope.
var errFrame = errors.New("parley: malformed frame")

// binaryCodec is SubprotocolProto.
type binaryCodec struct{}

func (binaryCodec) messageType() int                        { return 2 } // websocket.BinaryMessage
func (binaryCodec) subprotocol() string                     { return SubprotocolProto }
func (binaryCodec) marshal(m proto.Message) ([]byte, error) { return proto.Marshal(m) }
func (binaryCodec) unmarshal(b []byte, m proto.Message) error {
	return proto.Unmarshal(b, m)
}

func (binaryCodec) appendFrame(b []byte, f *frame, msg proto.Message) ([]byte, error) {
	var size int
	if msg != nil {
		size = proto.Size(msg)
	} else {
		size = len(f.payload)
	}
	appendPayload := func(b []byte, num protowire.Number) ([]byte, error) {
		b = protowire.AppendTag(b, num, protowire.BytesType)
		b = protowire.AppendVarint(b, uint64(size))
		if msg == nil {
			return append(b, f.payload...), nil
		}
		return proto.MarshalOptions{UseCachedSize: true}.MarshalAppend(b, msg)
	}
	// Fields go out in the order Go's deterministic marshalling uses:
	// plain fields by number, the oneof body last, map entries by key.
	var inner int
	switch f.kind {
	case kindCall:
		inner = sizeVarint(1, f.id) + sizeStringField(2, f.method) + sizeBytes(3, size) + sizeVarint(5, uint64(f.timeoutMs)) + sizeMetadata(6, f.metadata)
		b = appendHeader(b, f.kind, inner)
		b = appendVarint(b, 1, f.id)
		b = appendString(b, 2, f.method)
		b = appendVarint(b, 5, uint64(f.timeoutMs))
		b = appendMetadata(b, 6, f.metadata)
		return appendPayload(b, 3)
	case kindReply:
		inner = sizeVarint(1, f.id) + sizeMetadata(4, f.metadata)
		if f.hasPayload || msg != nil {
			inner += sizeBytes(2, size)
		}
		b = appendHeader(b, f.kind, inner)
		b = appendVarint(b, 1, f.id)
		b = appendMetadata(b, 4, f.metadata)
		if f.hasPayload || msg != nil {
			return appendPayload(b, 2)
		}
		return b, nil
	case kindError:
		var details [][]byte
		inner = sizeVarint(1, f.id) + sizeVarint(2, uint64(f.code)) + sizeStringField(3, f.message) + sizeMetadata(5, f.metadata) + sizeVarint(6, boolVarint(f.notRun))
		for _, d := range f.details {
			db, err := proto.MarshalOptions{Deterministic: true}.Marshal(d)
			if err != nil {
				return b, err
			}
			details = append(details, db)
			inner += sizeBytes(4, len(db))
		}
		b = appendHeader(b, f.kind, inner)
		b = appendVarint(b, 1, f.id)
		b = appendVarint(b, 2, uint64(f.code))
		b = appendString(b, 3, f.message)
		for _, db := range details {
			b = protowire.AppendTag(b, 4, protowire.BytesType)
			b = protowire.AppendBytes(b, db)
		}
		b = appendMetadata(b, 5, f.metadata)
		return appendVarint(b, 6, boolVarint(f.notRun)), nil
	case kindCancel:
		b = appendHeader(b, f.kind, sizeVarint(1, f.id)+sizeVarint(2, uint64(f.code)))
		b = appendVarint(b, 1, f.id)
		return appendVarint(b, 2, uint64(f.code)), nil
	case kindEnd:
		b = appendHeader(b, f.kind, sizeVarint(1, f.id))
		return appendVarint(b, 1, f.id), nil
	case kindCredit:
		b = appendHeader(b, f.kind, sizeVarint(1, f.id)+sizeVarint(2, uint64(f.items))+sizeVarint(3, uint64(f.bytes)))
		b = appendVarint(b, 1, f.id)
		b = appendVarint(b, 2, uint64(f.items))
		return appendVarint(b, 3, uint64(f.bytes)), nil
	case kindPing, kindPong:
		b = appendHeader(b, f.kind, sizeVarint(1, f.nonce))
		return appendVarint(b, 1, f.nonce), nil
	case kindItem:
		b = appendHeader(b, f.kind, sizeVarint(1, f.id)+sizeBytes(2, size))
		b = appendVarint(b, 1, f.id)
		return appendPayload(b, 2)
	case kindEvent:
		if msg == nil {
			return append(appendEventHead(b, f), f.payload...), nil
		}
		inner = sizeStringField(1, f.method) + sizeBytes(2, size) + sizeStringField(4, f.topic) + sizeVarint(5, f.offset) + sizeStringField(6, f.epoch)
		b = appendHeader(b, f.kind, inner)
		b = appendEventFields(b, f)
		return appendPayload(b, 2)
	}
	// The rare kinds go through the generated types.
	pf, err := f.toProto(nil)
	if err != nil {
		return b, err
	}
	return proto.MarshalOptions{Deterministic: true}.MarshalAppend(b, pf)
}

func boolVarint(b bool) uint64 {
	if b {
		return 1
	}
	return 0
}

// appendEventHead appends a binary Event frame carrying f.payload, all but
// the payload's bytes, which come last in the encoding: the head followed
// by f.payload is the whole frame. A payload many connections share is
// then written after each one's head instead of being copied into it.
func appendEventHead(b []byte, f *frame) []byte {
	inner := sizeStringField(1, f.method) + sizeBytes(2, len(f.payload)) + sizeStringField(4, f.topic) + sizeVarint(5, f.offset) + sizeStringField(6, f.epoch)
	b = appendHeader(b, kindEvent, inner)
	b = appendEventFields(b, f)
	b = protowire.AppendTag(b, 2, protowire.BytesType)
	return protowire.AppendVarint(b, uint64(len(f.payload)))
}

// appendEventFields appends an Event's fields but its body, in the order
// Go's deterministic marshalling uses (the oneof body goes last).
func appendEventFields(b []byte, f *frame) []byte {
	b = appendString(b, 1, f.method)
	b = appendString(b, 4, f.topic)
	b = appendVarint(b, 5, f.offset)
	return appendString(b, 6, f.epoch)
}

func appendHeader(b []byte, k frameKind, size int) []byte {
	b = protowire.AppendTag(b, protowire.Number(k), protowire.BytesType)
	return protowire.AppendVarint(b, uint64(size))
}

func sizeVarint(num protowire.Number, v uint64) int {
	if v == 0 {
		return 0
	}
	return protowire.SizeTag(num) + protowire.SizeVarint(v)
}

func sizeBytes(num protowire.Number, n int) int {
	return protowire.SizeTag(num) + protowire.SizeBytes(n)
}

func appendVarint(b []byte, num protowire.Number, v uint64) []byte {
	if v == 0 {
		return b
	}
	b = protowire.AppendTag(b, num, protowire.VarintType)
	return protowire.AppendVarint(b, v)
}

func appendString(b []byte, num protowire.Number, s string) []byte {
	if s == "" {
		return b
	}
	b = protowire.AppendTag(b, num, protowire.BytesType)
	return protowire.AppendString(b, s)
}

func sizeMetadata(num protowire.Number, md map[string]string) int {
	n := 0
	for k, v := range md {
		entry := sizeStringField(1, k) + sizeStringField(2, v)
		n += sizeBytes(num, entry)
	}
	return n
}

func sizeStringField(num protowire.Number, s string) int {
	if s == "" {
		return 0
	}
	return sizeBytes(num, len(s))
}

// appendMetadata writes map entries sorted by key, as Go's deterministic
// marshalling does, so frames are byte-for-byte reproducible.
func appendMetadata(b []byte, num protowire.Number, md map[string]string) []byte {
	if len(md) == 0 {
		return b
	}
	keys := make([]string, 0, len(md))
	for k := range md {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		v := md[k]
		b = protowire.AppendTag(b, num, protowire.BytesType)
		b = protowire.AppendVarint(b, uint64(sizeStringField(1, k)+sizeStringField(2, v)))
		b = appendString(b, 1, k)
		b = appendString(b, 2, v)
	}
	return b
}

func (binaryCodec) decodeFrame(data []byte, f *frame) error {
	*f = frame{}
	// The envelope holds one field of the oneof. Should a sender repeat
	// kinds, the last wins, as protobuf's merge rules say.
	var body, unknown []byte
	var unknownNum protowire.Number
	for len(data) > 0 {
		num, typ, n := protowire.ConsumeTag(data)
		if n < 0 {
			return errFrame
		}
		data = data[n:]
		if typ != protowire.BytesType || num < 1 || num > protowire.Number(kindPong) {
			// An unknown field: skip it, but remember a message-typed one,
			// which may be a kind a newer peer sends (kinds are only added).
			if typ == protowire.BytesType {
				unknownNum = num
				unknown, n = protowire.ConsumeBytes(data)
			} else {
				n = protowire.ConsumeFieldValue(num, typ, data)
			}
			if n < 0 {
				return errFrame
			}
			data = data[n:]
			continue
		}
		v, n := protowire.ConsumeBytes(data)
		if n < 0 {
			return errFrame
		}
		data = data[n:]
		f.kind, body = frameKind(num), v
	}
	if f.kind == 0 && unknownNum != 0 {
		f.kind, f.message = kindUnknown, strconv.Itoa(int(unknownNum))
		f.id = unknownID(unknown)
		return nil
	}
	if f.kind == 0 {
		return fmt.Errorf("%w: no frame kind set", errFrame)
	}
	switch f.kind {
	case kindHello:
		f.hello = new(parleyv1.Hello)
		return wrapFrameErr(proto.Unmarshal(body, f.hello))
	case kindWelcome:
		f.welcome = new(parleyv1.Welcome)
		return wrapFrameErr(proto.Unmarshal(body, f.welcome))
	case kindGoAway:
		f.goaway = new(parleyv1.GoAway)
		if err := proto.Unmarshal(body, f.goaway); err != nil {
			return wrapFrameErr(err)
		}
		f.id = f.goaway.GetLastId()
		f.message = f.goaway.GetReason()
		return nil
	}
	return decodeFields(body, func(num protowire.Number, typ protowire.Type, v uint64, b []byte) error {
		switch f.kind {
		case kindCall:
			switch num {
			case 1:
				f.id = v
			case 2:
				f.methodRaw = b
			case 3:
				f.hasPayload, f.payload = true, b
			case 4:
				return errJSONBody
			case 5:
				f.timeoutMs = uint32(v)
			case 6:
				return f.decodeMetadataEntry(b)
			}
		case kindReply:
			switch num {
			case 1:
				f.id = v
			case 2:
				f.hasPayload, f.payload = true, b
			case 3:
				return errJSONBody
			case 4:
				return f.decodeMetadataEntry(b)
			}
		case kindError:
			switch num {
			case 1:
				f.id = v
			case 2:
				f.code = Code(v)
			case 3:
				f.message = string(b)
			case 4:
				d := new(anypb.Any)
				if err := proto.Unmarshal(b, d); err != nil {
					return err
				}
				f.details = append(f.details, d)
			case 5:
				return f.decodeMetadataEntry(b)
			case 6:
				f.notRun = v != 0
			}
		case kindCancel:
			switch num {
			case 1:
				f.id = v
			case 2:
				f.code = Code(v)
			}
		case kindEnd:
			if num == 1 {
				f.id = v
			}
		case kindCredit:
			switch num {
			case 1:
				f.id = v
			case 2:
				f.items = uint32(v)
			case 3:
				f.bytes = uint32(v)
			}
		case kindPing, kindPong:
			if num == 1 {
				f.nonce = v
			}
		case kindItem:
			switch num {
			case 1:
				f.id = v
			case 2:
				f.hasPayload, f.payload = true, b
			case 3:
				return errJSONBody
			}
		case kindEvent:
			switch num {
			case 1:
				f.methodRaw = b
			case 2:
				f.hasPayload, f.payload = true, b
			case 3:
				return errJSONBody
			case 4:
				f.topic = string(b)
			case 5:
				f.offset = v
			case 6:
				f.epoch = string(b)
			}
		}
		return nil
	})
}

// errJSONBody is a body in parley.v1+json's form (the json field) on
// parley.v1+proto: a protocol error, as a binary payload on parley.v1+json
// is (see fromProto).
var errJSONBody = fmt.Errorf("json body on %s; use the payload field", SubprotocolProto)

// unknownID reads an unknown kind's id: its field 1, when that is a
// varint, as every kind with an id has it; else 0.
func unknownID(msg []byte) uint64 {
	var id uint64
	_ = decodeFields(msg, func(num protowire.Number, typ protowire.Type, v uint64, _ []byte) error {
		if num == 1 && typ == protowire.VarintType {
			id = v
		}
		return nil
	})
	return id
}

func wrapFrameErr(err error) error {
	if err != nil {
		return fmt.Errorf("%w: %v", errFrame, err)
	}
	return nil
}

// decodeFields walks a message's fields, handing varints as v and
// length-delimited fields as b; other wire types are skipped.
func decodeFields(data []byte, fn func(num protowire.Number, typ protowire.Type, v uint64, b []byte) error) error {
	for len(data) > 0 {
		num, typ, n := protowire.ConsumeTag(data)
		if n < 0 {
			return errFrame
		}
		data = data[n:]
		switch typ {
		case protowire.VarintType:
			v, n := protowire.ConsumeVarint(data)
			if n < 0 {
				return errFrame
			}
			data = data[n:]
			if err := fn(num, typ, v, nil); err != nil {
				return wrapFrameErr(err)
			}
		case protowire.BytesType:
			b, n := protowire.ConsumeBytes(data)
			if n < 0 {
				return errFrame
			}
			data = data[n:]
			if err := fn(num, typ, 0, b); err != nil {
				return wrapFrameErr(err)
			}
		default:
			n := protowire.ConsumeFieldValue(num, typ, data)
			if n < 0 {
				return errFrame
			}
			data = data[n:]
		}
	}
	return nil
}

func (f *frame) decodeMetadataEntry(b []byte) error {
	var k, v string
	err := decodeFields(b, func(num protowire.Number, _ protowire.Type, _ uint64, s []byte) error {
		switch num {
		case 1:
			k = string(s)
		case 2:
			v = string(s)
		}
		return nil
	})
	if err != nil {
		return err
	}
	if f.metadata == nil {
		f.metadata = make(map[string]string)
	}
	f.metadata[k] = v
	return nil
}

// jsonCodec is SubprotocolJSON: the protojson form of parley.v1.Frame, with
// payloads as the protojson form of their message in the `json` fields.
// It favours clarity over speed; it is for debugging and for clients
// without protobuf.
type jsonCodec struct{}

func (jsonCodec) messageType() int                        { return 1 } // websocket.TextMessage
func (jsonCodec) subprotocol() string                     { return SubprotocolJSON }
func (jsonCodec) marshal(m proto.Message) ([]byte, error) { return protojson.Marshal(m) }
func (jsonCodec) unmarshal(b []byte, m proto.Message) error {
	if len(b) == 0 {
		// No "json" field: the empty message, as an absent payload is in
		// parley.v1+proto (a body is never empty JSON: "{}" at least).
		proto.Reset(m)
		return nil
	}
	return protojson.UnmarshalOptions{DiscardUnknown: true}.Unmarshal(b, m)
}

func (c jsonCodec) appendFrame(b []byte, f *frame, msg proto.Message) ([]byte, error) {
	if f.kind == kindEvent && msg == nil {
		return appendJSONEvent(b, f), nil
	}
	var payload *structpb.Value
	if msg != nil || f.hasPayload {
		raw := f.payload
		if msg != nil {
			var err error
			if raw, err = protojson.Marshal(msg); err != nil {
				return b, err
			}
		}
		payload = new(structpb.Value)
		if err := protojson.Unmarshal(raw, payload); err != nil {
			return b, err
		}
	}
	pf, err := f.toProto(payload)
	if err != nil {
		return b, err
	}
	out, err := protojson.Marshal(pf)
	if err != nil {
		return b, err
	}
	return append(b, out...), nil
}

// appendJSONEvent appends an Event frame whose f.payload is its message's
// protojson, as protojson would write the frame (offset as a string, empty
// fields left out), with the payload spliced in as it is rather than
// parsed into a google.protobuf.Value and written out again: an event goes
// to many connections, and to each again when its session replays it.
func appendJSONEvent(b []byte, f *frame) []byte {
	b = append(b, `{"event":{"method":`...)
	b = appendJSONString(b, f.method)
	b = append(b, `,"json":`...)
	b = append(b, f.payload...)
	if f.topic != "" {
		b = append(b, `,"topic":`...)
		b = appendJSONString(b, f.topic)
	}
	if f.offset != 0 {
		b = append(b, `,"offset":"`...)
		b = strconv.AppendUint(b, f.offset, 10)
		b = append(b, '"')
	}
	if f.epoch != "" {
		b = append(b, `,"epoch":`...)
		b = appendJSONString(b, f.epoch)
	}
	return append(b, "}}"...)
}

// appendJSONString appends s as a JSON string.
func appendJSONString(b []byte, s string) []byte {
	q, _ := json.Marshal(s) // a string always marshals (invalid UTF-8 becomes U+FFFD)
	return append(b, q...)
}

func (jsonCodec) decodeFrame(data []byte, f *frame) error {
	*f = frame{}
	var pf parleyv1.Frame
	if err := (protojson.UnmarshalOptions{DiscardUnknown: true}).Unmarshal(data, &pf); err != nil {
		return fmt.Errorf("%w: %v", errFrame, err)
	}
	if pf.Kind == nil {
		return f.unknownJSON(data)
	}
	if err := f.fromProto(&pf); err != nil {
		return err
	}
	if (f.kind == kindCancel || f.kind == kindError) && f.code == 0 {
		return f.codeByName(data)
	}
	return nil
}

// codeByName reads a Cancel's or Error's code given as a name protojson
// did not know (it drops those): the Connect name a client may well send
// ("deadline_exceeded"), as the TS runtime reads it too. Another name is
// a malformed frame, not a silent CODE_UNSPECIFIED.
func (f *frame) codeByName(data []byte) error {
	var members map[string]struct{ Code json.RawMessage }
	if json.Unmarshal(data, &members) != nil {
		return nil // protojson read it; nothing more to find
	}
	for _, m := range members {
		var name string
		if json.Unmarshal(m.Code, &name) != nil || name == "" || name == "CODE_UNSPECIFIED" {
			continue
		}
		var c Code
		if err := c.UnmarshalText([]byte(strings.ToLower(strings.TrimPrefix(name, "CODE_")))); err != nil {
			return fmt.Errorf("%w: unknown code %q (a CODE_* name, its number or its Connect name)", errFrame, name)
		}
		f.code = c
	}
	return nil
}

// unknownJSON reads a JSON frame that sets no kind this version knows: a
// kind a newer peer sends (an object under a name protojson discarded) is
// kindUnknown, with its "id" if it has one; a frame with no member at all
// is malformed.
func (f *frame) unknownJSON(data []byte) error {
	var members map[string]json.RawMessage
	if err := json.Unmarshal(data, &members); err != nil || len(members) == 0 {
		return fmt.Errorf("%w: no frame kind set", errFrame)
	}
	f.kind = kindUnknown
	for name, raw := range members {
		f.message = name
		var m struct{ ID json.RawMessage }
		if json.Unmarshal(raw, &m) == nil {
			// protojson writes a uint64 as a string; accept a number too.
			if id, err := strconv.ParseUint(strings.Trim(string(m.ID), `"`), 10, 64); err == nil {
				f.id = id
			}
		}
	}
	return nil
}

// toProto builds the generated form of f; payload, if non-nil, is set as
// the json body, else f.payload as the binary body.
func (f *frame) toProto(payload *structpb.Value) (*parleyv1.Frame, error) {
	pf := new(parleyv1.Frame)
	switch f.kind {
	case kindHello:
		pf.Kind = &parleyv1.Frame_Hello{Hello: f.hello}
	case kindWelcome:
		pf.Kind = &parleyv1.Frame_Welcome{Welcome: f.welcome}
	case kindGoAway:
		pf.Kind = &parleyv1.Frame_Goaway{Goaway: &parleyv1.GoAway{Reason: f.message, LastId: f.id}}
	case kindCall:
		c := &parleyv1.Call{Id: f.id, Method: string(f.procedure()), TimeoutMs: f.timeoutMs, Metadata: f.metadata}
		if payload != nil {
			c.Body = &parleyv1.Call_Json{Json: payload}
		} else if f.hasPayload {
			c.Body = &parleyv1.Call_Payload{Payload: f.payload}
		}
		pf.Kind = &parleyv1.Frame_Call{Call: c}
	case kindReply:
		r := &parleyv1.Reply{Id: f.id, Metadata: f.metadata}
		if payload != nil {
			r.Body = &parleyv1.Reply_Json{Json: payload}
		} else if f.hasPayload {
			r.Body = &parleyv1.Reply_Payload{Payload: f.payload}
		}
		pf.Kind = &parleyv1.Frame_Reply{Reply: r}
	case kindError:
		pf.Kind = &parleyv1.Frame_Error{Error: &parleyv1.Error{
			Id: f.id, Code: parleyv1.Code(f.code), Message: f.message, Details: f.details, Metadata: f.metadata, NotRun: f.notRun,
		}}
	case kindCancel:
		pf.Kind = &parleyv1.Frame_Cancel{Cancel: &parleyv1.Cancel{Id: f.id, Code: parleyv1.Code(f.code)}}
	case kindEnd:
		pf.Kind = &parleyv1.Frame_End{End: &parleyv1.StreamEnd{Id: f.id}}
	case kindCredit:
		pf.Kind = &parleyv1.Frame_Credit{Credit: &parleyv1.Credit{Id: f.id, Items: f.items, Bytes: f.bytes}}
	case kindPing:
		pf.Kind = &parleyv1.Frame_Ping{Ping: &parleyv1.Ping{Nonce: f.nonce}}
	case kindPong:
		pf.Kind = &parleyv1.Frame_Pong{Pong: &parleyv1.Pong{Nonce: f.nonce}}
	case kindItem:
		it := &parleyv1.StreamItem{Id: f.id}
		if payload != nil {
			it.Body = &parleyv1.StreamItem_Json{Json: payload}
		} else {
			it.Body = &parleyv1.StreamItem_Payload{Payload: f.payload}
		}
		pf.Kind = &parleyv1.Frame_Item{Item: it}
	case kindEvent:
		ev := &parleyv1.Event{Method: string(f.procedure()), Topic: f.topic, Offset: f.offset, Epoch: f.epoch}
		if payload != nil {
			ev.Body = &parleyv1.Event_Json{Json: payload}
		} else {
			ev.Body = &parleyv1.Event_Payload{Payload: f.payload}
		}
		pf.Kind = &parleyv1.Frame_Event{Event: ev}
	default:
		return nil, fmt.Errorf("parley: cannot encode frame kind %v", f.kind)
	}
	return pf, nil
}

// fromProto flattens a frame decoded by protojson. JSON payloads are kept
// as protojson bytes for the method's codec to decode.
func (f *frame) fromProto(pf *parleyv1.Frame) error {
	setJSON := func(v *structpb.Value) error {
		if v == nil {
			return nil
		}
		b, err := protojson.Marshal(v)
		if err != nil {
			return err
		}
		f.hasPayload, f.payload = true, b
		return nil
	}
	switch k := pf.Kind.(type) {
	case *parleyv1.Frame_Hello:
		f.kind, f.hello = kindHello, k.Hello
	case *parleyv1.Frame_Welcome:
		f.kind, f.welcome = kindWelcome, k.Welcome
	case *parleyv1.Frame_Goaway:
		f.kind, f.goaway, f.id, f.message = kindGoAway, k.Goaway, k.Goaway.GetLastId(), k.Goaway.GetReason()
	case *parleyv1.Frame_Call:
		c := k.Call
		f.kind, f.id, f.method, f.timeoutMs, f.metadata = kindCall, c.GetId(), c.GetMethod(), c.GetTimeoutMs(), c.GetMetadata()
		if p, ok := c.Body.(*parleyv1.Call_Payload); ok {
			return fmt.Errorf("%w: binary payload on %s (%d bytes); use the json field", errFrame, SubprotocolJSON, len(p.Payload))
		}
		return setJSON(c.GetJson())
	case *parleyv1.Frame_Reply:
		r := k.Reply
		f.kind, f.id, f.metadata = kindReply, r.GetId(), r.GetMetadata()
		return setJSON(r.GetJson())
	case *parleyv1.Frame_Error:
		e := k.Error
		f.kind, f.id, f.code, f.message, f.details, f.metadata, f.notRun = kindError, e.GetId(), Code(e.GetCode()), e.GetMessage(), e.GetDetails(), e.GetMetadata(), e.GetNotRun()
	case *parleyv1.Frame_Cancel:
		f.kind, f.id, f.code = kindCancel, k.Cancel.GetId(), Code(k.Cancel.GetCode())
	case *parleyv1.Frame_End:
		f.kind, f.id = kindEnd, k.End.GetId()
	case *parleyv1.Frame_Credit:
		f.kind, f.id, f.items, f.bytes = kindCredit, k.Credit.GetId(), k.Credit.GetItems(), k.Credit.GetBytes()
	case *parleyv1.Frame_Ping:
		f.kind, f.nonce = kindPing, k.Ping.GetNonce()
	case *parleyv1.Frame_Pong:
		f.kind, f.nonce = kindPong, k.Pong.GetNonce()
	case *parleyv1.Frame_Item:
		f.kind, f.id = kindItem, k.Item.GetId()
		return setJSON(k.Item.GetJson())
	case *parleyv1.Frame_Event:
		ev := k.Event
		f.kind, f.method, f.topic, f.offset, f.epoch = kindEvent, ev.GetMethod(), ev.GetTopic(), ev.GetOffset(), ev.GetEpoch()
		return setJSON(ev.GetJson())
	default:
		return fmt.Errorf("%w: no frame kind set", errFrame)
	}
	return nil
}
