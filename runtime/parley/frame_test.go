package parley

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"slices"
	"testing"

	parleyv1 "github.com/parleyrpc/parley/gen/parley/v1"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/testing/protocmp"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/google/go-cmp/cmp"
)

var update = flag.Bool("update", false, "rewrite internal/testdata/frames/vectors.json")

const vectorsPath = "../../internal/testdata/frames/vectors.json"

// vector is one frame in the cross-language test vectors: the TypeScript
// runtime decodes binary and json, re-encodes them, and must get the same
// bytes (binary) and the same JSON value (json; protojson's spacing is
// deliberately unstable).
type vector struct {
	Name      string          `json:"name"`
	BinaryHex string          `json:"binary_hex"`
	JSON      json.RawMessage `json:"json"`
}

func testFrames(t *testing.T) []struct {
	name string
	f    frame
	msg  proto.Message
} {
	detail, err := anypb.New(wrapperspb.String("why"))
	if err != nil {
		t.Fatal(err)
	}
	return []struct {
		name string
		f    frame
		msg  proto.Message
	}{
		{"hello", frame{kind: kindHello, hello: &parleyv1.Hello{Metadata: map[string]string{"authorization": "Bearer t", "a": "b"}, Agent: "parley-go/0.1.0"}}, nil},
		{"hello_resume", frame{kind: kindHello, hello: &parleyv1.Hello{SessionId: "s1", ResumeToken: "r1", Offsets: map[string]uint64{"session": 42}}}, nil},
		{"hello_limits", frame{kind: kindHello, hello: &parleyv1.Hello{Agent: "parley-ts/0.1.0", StreamWindow: 32, MaxMessageBytes: 1 << 20}}, nil},
		{"welcome", frame{kind: kindWelcome, welcome: &parleyv1.Welcome{SessionId: "s1", MaxMessageBytes: 4 << 20, MaxInFlight: 128, PingIntervalMs: 20000, Agent: "parley-go/0.1.0"}}, nil},
		{"call", frame{kind: kindCall, id: 1, method: "/e2e.v1.EchoService/Echo", hasPayload: true, timeoutMs: 30000}, wrapperspb.String("hi")},
		{"call_empty_payload", frame{kind: kindCall, id: 3, method: "/e2e.v1.EchoService/Panic", hasPayload: true}, &wrapperspb.StringValue{}},
		{"call_metadata", frame{kind: kindCall, id: 300000000001, method: "/a.B/C", hasPayload: true, timeoutMs: 5, metadata: map[string]string{"x": "1", "trace": "abc"}}, wrapperspb.String("x")},
		{"reply", frame{kind: kindReply, id: 1, hasPayload: true}, wrapperspb.String("hi")},
		{"reply_empty", frame{kind: kindReply, id: 7, hasPayload: true}, &wrapperspb.StringValue{}},
		{"error", frame{kind: kindError, id: 5, code: CodeNotFound, message: "no such thing"}, nil},
		{"error_details", frame{kind: kindError, id: 9, code: CodeInvalidArgument, message: "bad", details: []*anypb.Any{detail}}, nil},
		{"error_not_run", frame{kind: kindError, id: 19, code: CodeUnavailable, message: "server is shutting down", notRun: true}, nil},
		{"error_connection", frame{kind: kindError, code: CodeUnauthenticated, message: "token expired"}, nil},
		{"cancel", frame{kind: kindCancel, id: 11}, nil},
		{"cancel_deadline", frame{kind: kindCancel, id: 15, code: CodeDeadlineExceeded}, nil},
		{"event", frame{kind: kindEvent, method: "/chat.v1.ChatEvents/MessagePosted", hasPayload: true, topic: "room:lobby", offset: 17, epoch: "e1"}, wrapperspb.String("posted")},
		{"event_plain", frame{kind: kindEvent, method: "/chat.v1.ChatEvents/Typing", hasPayload: true}, &wrapperspb.StringValue{}},
		{"error_no_message", frame{kind: kindError, id: 17, code: CodeCanceled}, nil},
		{"item", frame{kind: kindItem, id: 13, hasPayload: true}, wrapperspb.String("item")},
		{"end", frame{kind: kindEnd, id: 13}, nil},
		{"credit", frame{kind: kindCredit, id: 13, items: 64}, nil},
		{"goaway", frame{kind: kindGoAway, id: 21, message: "server shutting down"}, nil},
		{"ping", frame{kind: kindPing, nonce: 99}, nil},
		{"pong", frame{kind: kindPong, nonce: 99}, nil},
		{"hello_byte_window", frame{kind: kindHello, hello: &parleyv1.Hello{Agent: "parley-ts/0.1.0", StreamWindow: 64, MaxMessageBytes: 4 << 20, StreamWindowBytes: 256 << 10}}, nil},
		{"welcome_windows", frame{kind: kindWelcome, welcome: &parleyv1.Welcome{SessionId: "s1", StreamWindow: 64, MaxStreams: 100, StreamWindowBytes: 256 << 10}}, nil},
		{"credit_bytes", frame{kind: kindCredit, id: 13, items: 2, bytes: 200000}, nil},
		{"credit_bytes_only", frame{kind: kindCredit, id: 15, bytes: 600042}, nil},
	}
}

// TestBinaryCodecMatchesProto checks the hand-written encoder against
// protobuf's own deterministic marshalling of the same Frame, and that
// decoding gives the frame back.
func TestBinaryCodecMatchesProto(t *testing.T) {
	var vectors []vector
	for _, tc := range testFrames(t) {
		t.Run(tc.name, func(t *testing.T) {
			got, err := binaryCodec{}.appendFrame(nil, &tc.f, tc.msg)
			if err != nil {
				t.Fatal(err)
			}
			want := tc.f
			if tc.msg != nil {
				want.payload, _ = proto.MarshalOptions{Deterministic: true}.Marshal(tc.msg)
			}
			pf, err := want.toProto(nil)
			if err != nil {
				t.Fatal(err)
			}
			wantBytes, err := proto.MarshalOptions{Deterministic: true}.Marshal(pf)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, wantBytes) {
				t.Fatalf("binary encoding differs from proto.Marshal\n got %x\nwant %x", got, wantBytes)
			}
			var back frame
			if err := (binaryCodec{}).decodeFrame(got, &back); err != nil {
				t.Fatal(err)
			}
			backProto, err := back.toProto(nil)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(pf, backProto, protocmp.Transform()); diff != "" {
				t.Fatalf("decoded frame differs (-want +got):\n%s", diff)
			}

			js, err := jsonCodec{}.appendFrame(nil, &tc.f, tc.msg)
			if err != nil {
				t.Fatal(err)
			}
			var fromJSON frame
			if err := (jsonCodec{}).decodeFrame(js, &fromJSON); err != nil {
				t.Fatalf("decoding %s: %v", js, err)
			}
			if fromJSON.kind != tc.f.kind || fromJSON.id != tc.f.id || fromJSON.method != tc.f.method || fromJSON.code != tc.f.code {
				t.Fatalf("json round trip changed the frame: %s", js)
			}
			if tc.msg != nil {
				m := tc.msg.ProtoReflect().New().Interface()
				if err := (jsonCodec{}).unmarshal(fromJSON.payload, m); err != nil {
					t.Fatal(err)
				}
				if !proto.Equal(m, tc.msg) {
					t.Fatalf("json payload round trip: got %v, want %v", m, tc.msg)
				}
			}
			compact := new(bytes.Buffer)
			if err := json.Compact(compact, js); err != nil {
				t.Fatal(err)
			}
			vectors = append(vectors, vector{Name: tc.name, BinaryHex: hex.EncodeToString(got), JSON: compact.Bytes()})
		})
	}
	checkVectors(t, vectors)
}

func checkVectors(t *testing.T, vectors []vector) {
	t.Helper()
	got, err := json.MarshalIndent(vectors, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	got = append(got, '\n')
	if *update {
		if err := os.MkdirAll(filepath.Dir(vectorsPath), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(vectorsPath, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(vectorsPath)
	if err != nil {
		t.Fatalf("%v (run go test ./runtime/parley -run Vectors -update)", err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("%s is stale; run go test ./runtime/parley -run BinaryCodec -update", vectorsPath)
	}
}

// TestJSONPayloadIsReadable pins that JSON frames carry payloads as plain
// JSON objects, not base64.
func TestJSONPayloadIsReadable(t *testing.T) {
	js, err := jsonCodec{}.appendFrame(nil, &frame{kind: kindCall, id: 1, method: "/a.B/C", hasPayload: true}, structpb.NewStringValue("hello"))
	if err != nil {
		t.Fatal(err)
	}
	var v map[string]map[string]any
	if err := json.Unmarshal(js, &v); err != nil {
		t.Fatal(err)
	}
	if got := v["call"]["json"]; got != "hello" {
		t.Fatalf("payload = %#v in %s, want the JSON string \"hello\"", got, js)
	}
	if _, err := protojson.Marshal(&parleyv1.Frame{}); err != nil {
		t.Fatal(err)
	}
}

// FuzzDecodeFrame feeds arbitrary bytes to both decoders: they must return
// a frame or an error, never panic, and a decoded binary frame must
// re-encode.
func FuzzDecodeFrame(f *testing.F) {
	for _, tc := range testFrames(&testing.T{}) {
		b, _ := binaryCodec{}.appendFrame(nil, &tc.f, tc.msg)
		f.Add(b)
		j, _ := jsonCodec{}.appendFrame(nil, &tc.f, tc.msg)
		f.Add(j)
	}
	f.Add([]byte{0x1a, 0xff, 0xff, 0xff, 0xff, 0x0f})
	f.Add([]byte(`{"call":{"id":"1","method":"/a.B/C","json":{"a":1}}}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		var fr frame
		if err := (binaryCodec{}).decodeFrame(data, &fr); err == nil {
			switch fr.kind {
			case kindHello, kindWelcome, kindCall, kindReply, kindError, kindCancel, kindEvent, kindItem, kindEnd, kindCredit, kindGoAway, kindPing, kindPong:
				if _, err := (binaryCodec{}).appendFrame(nil, &fr, nil); err != nil {
					t.Fatalf("decoded %v frame does not re-encode: %v", fr.kind, err)
				}
			}
		}
		_ = (jsonCodec{}).decodeFrame(data, &fr)
	})
}

// TestEventHead: an event's head followed by its payload is the frame
// appendFrame encodes, byte for byte, and decodes as that event.
func TestEventHead(t *testing.T) {
	for _, f := range []frame{
		{kind: kindEvent, method: "/chat.v1.Events/Posted", hasPayload: true, payload: []byte("hello"), topic: sessionTopic, offset: 300},
		{kind: kindEvent, method: "/e.E/Big", hasPayload: true, payload: make([]byte, 70000)},
		{kind: kindEvent, method: "/e.E/Empty", hasPayload: true, payload: []byte{}, epoch: "x"},
	} {
		whole, err := binaryCodec{}.appendFrame(nil, &f, nil)
		if err != nil {
			t.Fatal(err)
		}
		split := append(appendEventHead(nil, &f), f.payload...)
		if !bytes.Equal(whole, split) {
			t.Fatalf("%s: head+payload differs from the frame", f.method)
		}
		var pf parleyv1.Frame
		if err := proto.Unmarshal(split, &pf); err != nil {
			t.Fatal(err)
		}
		ev := pf.GetEvent()
		if ev.GetMethod() != f.method || ev.GetOffset() != f.offset || ev.GetTopic() != f.topic || len(ev.GetPayload()) != len(f.payload) {
			t.Fatalf("decoded %v from %+v", ev, f)
		}
	}
}

// TestEventHeadsHoldSmallBuffers: a queued event holds only its head's
// buffer (the payload is shared), and that buffer is a small one whatever
// frames the process sent before: a head in a pooled 64 KiB buffer would
// hold 1,000 times what the send queue's bound counts for it.
func TestEventHeadsHoldSmallBuffers(t *testing.T) {
	big := getBuf()
	*big = slices.Grow(*big, 60<<10)
	putBuf(big) // the pool now offers a large buffer, as after a large reply
	payload := make([]byte, 1000)
	f := frame{kind: kindEvent, method: "/chat.v1.ChatEvents/MessagePosted", hasPayload: true, payload: payload, topic: sessionTopic, offset: 1 << 40}
	out := binaryEvent(&f)
	if c := cap(*out.b); c > headCap {
		t.Fatalf("the head of %d bytes holds a buffer of %d", len(*out.b), c)
	}
	whole, err := binaryCodec{}.appendFrame(nil, &f, nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := append(slices.Clone(*out.b), out.tail...); !bytes.Equal(got, whole) {
		t.Fatal("head and payload differ from the frame")
	}
	putBuf(out.b)
}

// TestJSONEvent: an event written by appendJSONEvent, its payload spliced
// in, is the frame protojson writes for it (compared as JSON values), and
// decodes as that event.
func TestJSONEvent(t *testing.T) {
	payload, err := protojson.Marshal(structpb.NewStringValue("h\u00e9llo \"quoted\" <tag>"))
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range []frame{
		{kind: kindEvent, method: "/chat.v1.Events/Posted", hasPayload: true, payload: payload, topic: sessionTopic, offset: 300},
		{kind: kindEvent, method: "/e.E/Plain", hasPayload: true, payload: []byte(`{"a":[1,2,{"b":null}]}`)},
		{kind: kindEvent, method: "/e.E/Epoch", hasPayload: true, payload: []byte(`{}`), topic: "room:\"x\"\n", offset: 1<<64 - 1, epoch: "e\x01"},
	} {
		got := appendJSONEvent(nil, &f)
		var v structpb.Value
		if err := protojson.Unmarshal(f.payload, &v); err != nil {
			t.Fatal(err)
		}
		pf, err := f.toProto(&v)
		if err != nil {
			t.Fatal(err)
		}
		want, err := protojson.Marshal(pf)
		if err != nil {
			t.Fatal(err)
		}
		var gotV, wantV any
		if err := json.Unmarshal(got, &gotV); err != nil {
			t.Fatalf("%s: not JSON: %v\n%s", f.method, err, got)
		}
		if err := json.Unmarshal(want, &wantV); err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(wantV, gotV); diff != "" {
			t.Fatalf("%s: differs from protojson's frame (-want +got):\n%s", f.method, diff)
		}
		var back frame
		if err := (jsonCodec{}).decodeFrame(got, &back); err != nil {
			t.Fatal(err)
		}
		if back.kind != kindEvent || back.method != f.method || back.topic != f.topic || back.offset != f.offset || back.epoch != f.epoch {
			t.Fatalf("decoded %+v from %+v", back, f)
		}
	}
}

// TestMaskCopy checks the word-at-a-time masking against RFC 6455's
// definition (byte i XOR key byte i%4), whole and in two parts with the
// key carried over, in place and into another buffer.
func TestMaskCopy(t *testing.T) {
	key := uint32(0x44332211) // key bytes 11 22 33 44 on the wire
	src := make([]byte, 100)
	for i := range src {
		src[i] = byte(i * 7)
	}
	want := func(p []byte) []byte {
		out := make([]byte, len(p))
		for i := range p {
			out[i] = p[i] ^ byte(key>>(8*(i%4)))
		}
		return out
	}
	for n := 0; n <= len(src); n++ {
		for split := 0; split <= n; split += max(1, n/7) {
			dst := make([]byte, n)
			k := maskCopy(dst[:split], src[:split], key)
			maskCopy(dst[split:], src[split:n], k)
			if !bytes.Equal(dst, want(src[:n])) {
				t.Fatalf("n=%d split=%d: masked differently", n, split)
			}
		}
		inPlace := slices.Clone(src[:n])
		maskCopy(inPlace, inPlace, key)
		if !bytes.Equal(inPlace, want(src[:n])) {
			t.Fatalf("n=%d: masked in place differently", n)
		}
	}
}

// TestJSONCodeNames: over JSON a Cancel's or Error's code may be its enum
// name, its number or its Connect name; another name is a malformed
// frame, never read as unspecified.
func TestJSONCodeNames(t *testing.T) {
	for _, tc := range []struct {
		json string
		want Code
	}{
		{`{"cancel":{"id":"1","code":"CODE_DEADLINE_EXCEEDED"}}`, CodeDeadlineExceeded},
		{`{"cancel":{"id":"1","code":4}}`, CodeDeadlineExceeded},
		{`{"cancel":{"id":"1","code":"deadline_exceeded"}}`, CodeDeadlineExceeded},
		{`{"error":{"id":"3","code":"not_found","message":"m"}}`, CodeNotFound},
		{`{"cancel":{"id":"1"}}`, 0},
	} {
		var f frame
		if err := (jsonCodec{}).decodeFrame([]byte(tc.json), &f); err != nil || f.code != tc.want {
			t.Errorf("%s: code %v, %v; want %v", tc.json, f.code, err, tc.want)
		}
	}
	var f frame
	if err := (jsonCodec{}).decodeFrame([]byte(`{"cancel":{"id":"1","code":"timeout"}}`), &f); !errors.Is(err, errFrame) {
		t.Fatalf("an unknown code name: %v, want a malformed frame", err)
	}
}
