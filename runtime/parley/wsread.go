package parley

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"slices"
	"time"
	"unicode/utf8"

	"github.com/gorilla/websocket"
)

// gorilla/websocket keeps a read buffer per connection that Parley does not
// use once connected: minGorillaBuffer asks for the smallest it allows
// (it raises anything smaller to a control frame's 125 bytes); a client's
// reads the HTTP upgrade response through clientHandshakeBuffer first.
const (
	minGorillaBuffer      = 1
	clientHandshakeBuffer = 1024
)

// readMessage reads the next data message from the socket and returns it
// with its type (websocket.TextMessage or BinaryMessage). It reads the
// frames of RFC 6455 §5 itself rather than through gorilla/websocket's
// reader, which allocates per message and copies through a buffer of its
// own: frames come straight from the connection's read-ahead (see
// readAheadConn), so a stream of small messages costs one system call per
// block. A message in one frame that the read-ahead holds whole is
// returned in place, unmasked there, without a copy; it is valid until the
// next read. Any other is copied into *pooled, a buffer from the pool
// taken when needed, which the caller returns (pooled nil: a fresh one).
//
// On the way it answers pings, takes pongs (extending the read deadline),
// reassembles fragmented messages and enforces the message size limit
// (closing with 1009 before reading a larger message). A close frame is
// answered and returned as a *websocket.CloseError; a frame that breaks
// the protocol is answered with a 1002 close and returned as an error.
// Only the connection's reader calls it.
func (e *endpoint) readMessage(pooled **[]byte) (typ int, msg []byte, err error) {
	src := e.bc // the connection, read through its read-ahead (over TLS, if any)
	hdr := e.rhdr[:]
	for {
		if _, err := io.ReadFull(src, hdr[:2]); err != nil {
			return 0, nil, err
		}
		fin, op := hdr[0]&0x80 != 0, int(hdr[0]&0x0f)
		masked, n := hdr[1]&0x80 != 0, uint64(hdr[1]&0x7f)
		switch {
		case hdr[0]&0x70 != 0:
			return 0, nil, e.protocolError("reserved bits set (no extension was negotiated)")
		case masked != (e.side == SideServer):
			if masked {
				return 0, nil, e.protocolError("a server's frames must not be masked")
			}
			return 0, nil, e.protocolError("a client's frames must be masked")
		}
		switch n {
		case 126:
			if _, err := io.ReadFull(src, hdr[:2]); err != nil {
				return 0, nil, err
			}
			n = uint64(binary.BigEndian.Uint16(hdr[:2]))
		case 127:
			if _, err := io.ReadFull(src, hdr[:8]); err != nil {
				return 0, nil, err
			}
			n = binary.BigEndian.Uint64(hdr[:8])
		}
		var key uint32
		if masked {
			if _, err := io.ReadFull(src, hdr[:4]); err != nil {
				return 0, nil, err
			}
			key = binary.LittleEndian.Uint32(hdr[:4])
		}

		if op >= websocket.CloseMessage { // a control frame, maybe inside a fragmented message
			if !fin || n > 125 {
				return 0, nil, e.protocolError("control frames must be whole and at most 125 bytes")
			}
			if err := e.readControl(op, int(n), key); err != nil {
				return 0, nil, err
			}
			continue
		}

		switch {
		case op == 0 && typ == 0:
			return 0, nil, e.protocolError("a continuation frame with no message to continue")
		case op != 0 && typ != 0:
			return 0, nil, e.protocolError("a new message before the last one ended")
		case op != websocket.TextMessage && op != websocket.BinaryMessage && op != 0:
			return 0, nil, e.protocolError(fmt.Sprintf("unknown opcode %d", op))
		case op != 0:
			typ = op
		}
		var err error
		if msg, err = e.readData(pooled, msg, n, key, fin && op != 0); err != nil {
			return 0, nil, err
		}
		if fin {
			return typ, msg, nil
		}
	}
}

// readData reads a data frame's payload of n bytes and returns msg with it
// appended: in place, when the frame is a whole message (whole) that the
// read-ahead holds all of, else copied into *pooled (see readMessage). It
// is readMessage's, apart for the same reason as readControl.
//
//go:noinline
func (e *endpoint) readData(pooled **[]byte, msg []byte, n uint64, key uint32, whole bool) ([]byte, error) {
	if n > uint64(e.readMax-len(msg)) {
		closeMsg := websocket.FormatCloseMessage(websocket.CloseMessageTooBig, "")
		_ = e.ws.WriteControl(websocket.CloseMessage, closeMsg, time.Now().Add(e.cfg.writeTimeout))
		// Read past the message (for closeGrace at most) before the socket
		// closes: closed with the peer's bytes unread, it would be reset,
		// and a peer whose read buffer a reset discards never sees the
		// close frame (1006, not 1009).
		_ = e.bc.SetReadDeadline(time.Now().Add(closeGrace))
		_, _ = io.CopyN(io.Discard, e.bc, int64(min(n, math.MaxInt64)))
		return nil, websocket.ErrReadLimit
	}
	if whole {
		if p := e.bc.reader.take(int(n)); p != nil {
			maskCopy(p, p, key)
			return p, nil
		}
	}
	if pooled != nil && *pooled == nil {
		*pooled = getBuf()
		msg = (**pooled)[:0]
	}
	start := len(msg)
	msg = slices.Grow(msg, int(n))[:start+int(n)]
	if pooled != nil {
		**pooled = msg // the grown buffer goes back to the pool
	}
	if _, err := io.ReadFull(e.bc, msg[start:]); err != nil {
		return nil, err
	}
	maskCopy(msg[start:], msg[start:], key)
	return msg, nil
}

// readControl reads a control frame's payload of n bytes and handles it.
// It is readMessage's, apart so that its buffer is not in readMessage's
// frame: an idle connection's reader parks in readMessage, and the GC
// shrinks its stack to 2 KiB only while it uses under 1 KiB.
//
//go:noinline
func (e *endpoint) readControl(op, n int, key uint32) error {
	var p [125]byte
	payload := p[:n]
	if _, err := io.ReadFull(e.bc, payload); err != nil {
		return err
	}
	maskCopy(payload, payload, key)
	return e.control(op, payload)
}

// control handles a ping, a pong or a close frame.
func (e *endpoint) control(op int, payload []byte) error {
	deadline := time.Now().Add(e.cfg.writeTimeout)
	switch op {
	case websocket.PingMessage:
		err := e.ws.WriteControl(websocket.PongMessage, payload, deadline)
		if err != nil && !errors.Is(err, websocket.ErrCloseSent) {
			return err
		}
	case websocket.PongMessage:
		e.alive()
	case websocket.CloseMessage:
		code, text := websocket.CloseNoStatusReceived, ""
		switch {
		case len(payload) == 1:
			return e.protocolError("a close frame with a one-byte payload")
		case len(payload) >= 2:
			code, text = int(binary.BigEndian.Uint16(payload)), string(payload[2:])
			if !validCloseCode(code) || !utf8.ValidString(text) {
				return e.protocolError("a close frame with an invalid code or reason")
			}
		}
		// Answer with the same code, as gorilla/websocket's default does.
		var answer []byte
		if code != websocket.CloseNoStatusReceived {
			answer = websocket.FormatCloseMessage(code, "")
		}
		_ = e.ws.WriteControl(websocket.CloseMessage, answer, deadline)
		return &websocket.CloseError{Code: code, Text: text}
	default:
		return e.protocolError(fmt.Sprintf("unknown control opcode %d", op))
	}
	return nil
}

// validCloseCode reports whether a peer may send code (RFC 6455 §7.4).
func validCloseCode(code int) bool {
	switch {
	case code >= 1000 && code <= 1003, code >= 1007 && code <= 1014:
		return true
	case code >= 3000 && code <= 4999:
		return true
	}
	return false
}

// protocolError closes the socket with 1002 and returns the reason as an
// error.
func (e *endpoint) protocolError(reason string) error {
	msg := websocket.FormatCloseMessage(websocket.CloseProtocolError, reason)
	_ = e.ws.WriteControl(websocket.CloseMessage, msg, time.Now().Add(e.cfg.writeTimeout))
	return errors.New("websocket: protocol error: " + reason)
}
