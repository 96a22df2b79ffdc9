package parley_test

import (
	"context"
	"encoding/binary"
	"errors"
	"net"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"google.golang.org/protobuf/proto"

	parleyv1 "github.com/parleyrpc/parley/gen/parley/v1"
	e2ev1 "github.com/parleyrpc/parley/internal/e2e/gen/e2e/v1"
	"github.com/parleyrpc/parley/runtime/parley"
)

// rawPeer is a client that speaks WebSocket through gorilla/websocket and
// Parley's frames by hand, and can write raw bytes on the socket
// underneath.
type rawPeer struct {
	ws      *websocket.Conn
	raw     net.Conn
	welcome *parleyv1.Welcome
}

// dialRaw connects and exchanges hello (a bare one if nil) for the
// server's Welcome; writeBuffer is gorilla's (0: its default), which
// fragments longer messages.
func dialRaw(t *testing.T, url string, writeBuffer int, hello *parleyv1.Hello) *rawPeer {
	t.Helper()
	p := &rawPeer{}
	d := websocket.Dialer{
		Subprotocols:    []string{parley.SubprotocolProto},
		WriteBufferSize: writeBuffer,
		NetDialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			c, err := (&net.Dialer{}).DialContext(ctx, network, addr)
			p.raw = c
			return c, err
		},
	}
	ws, _, err := d.Dial(url, nil)
	if err != nil {
		t.Fatal(err)
	}
	p.ws = ws
	t.Cleanup(func() { _ = ws.Close() })
	if hello == nil {
		hello = &parleyv1.Hello{}
	}
	p.write(t, &parleyv1.Frame{Kind: &parleyv1.Frame_Hello{Hello: hello}})
	if p.welcome = p.read(t).GetWelcome(); p.welcome == nil {
		t.Fatal("no welcome")
	}
	return p
}

func (p *rawPeer) write(t *testing.T, f *parleyv1.Frame) {
	t.Helper()
	b, err := proto.Marshal(f)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.ws.WriteMessage(websocket.BinaryMessage, b); err != nil {
		t.Fatal(err)
	}
}

func (p *rawPeer) read(t *testing.T) *parleyv1.Frame {
	t.Helper()
	_ = p.ws.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, data, err := p.ws.ReadMessage()
	if err != nil {
		t.Fatal(err)
	}
	f := new(parleyv1.Frame)
	if err := proto.Unmarshal(data, f); err != nil {
		t.Fatal(err)
	}
	return f
}

// closeCode reads until the server closes, and returns the close code.
func (p *rawPeer) closeCode(t *testing.T) int {
	t.Helper()
	_ = p.ws.SetReadDeadline(time.Now().Add(5 * time.Second))
	for {
		_, _, err := p.ws.ReadMessage()
		var ce *websocket.CloseError
		if errors.As(err, &ce) {
			return ce.Code
		}
		if err != nil {
			t.Fatalf("read ended with %v, not a close frame", err)
		}
	}
}

func newEchoServer(t *testing.T) string {
	t.Helper()
	srv := parley.NewServer(parley.WithMaxMessageBytes(64 << 10))
	srv.Register(parley.NewUnaryMethod(echoSpec, func(ctx context.Context, r *e2ev1.EchoRequest) (*e2ev1.EchoResponse, error) {
		return &e2ev1.EchoResponse{Text: r.Text}, nil
	}))
	hs := httptest.NewServer(srv)
	t.Cleanup(hs.Close)
	t.Cleanup(func() { _ = srv.Shutdown(context.Background()) })
	return "ws" + strings.TrimPrefix(hs.URL, "http")
}

// TestFragmentsAndPings: the server reads a message sent in many frames,
// with a ping between them, and answers the ping.
func TestFragmentsAndPings(t *testing.T) {
	p := dialRaw(t, newEchoServer(t), 64, nil) // gorilla sends what overflows 64 bytes as a fragment
	pong := make(chan string, 1)
	p.ws.SetPongHandler(func(s string) error { pong <- s; return nil })
	if err := p.ws.WriteControl(websocket.PingMessage, []byte("are you there"), time.Now().Add(time.Second)); err != nil {
		t.Fatal(err)
	}
	text := strings.Repeat("fragment ", 300)
	req, _ := proto.Marshal(&e2ev1.EchoRequest{Text: text})
	w, err := p.ws.NextWriter(websocket.BinaryMessage)
	if err != nil {
		t.Fatal(err)
	}
	frame, _ := proto.Marshal(&parleyv1.Frame{Kind: &parleyv1.Frame_Call{Call: &parleyv1.Call{Id: 1, Method: echoSpec.Procedure, Body: &parleyv1.Call_Payload{Payload: req}}}})
	for len(frame) > 0 { // written in pieces: several frames on the wire
		n := min(len(frame), 100)
		if _, err := w.Write(frame[:n]); err != nil {
			t.Fatal(err)
		}
		frame = frame[n:]
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	f := p.read(t) // also runs the pong handler
	var res e2ev1.EchoResponse
	if err := proto.Unmarshal(f.GetReply().GetPayload(), &res); err != nil || res.GetText() != text {
		t.Fatalf("reply %v (%v), want the text echoed", f, err)
	}
	select {
	case s := <-pong:
		if s != "are you there" {
			t.Fatalf("pong %q", s)
		}
	default:
		t.Fatal("no pong for the ping")
	}
}

// TestBadFrames: frames that break RFC 6455 close the connection with
// 1002, and a message longer than the limit with 1009 before its payload
// is read.
func TestBadFrames(t *testing.T) {
	url := newEchoServer(t)
	mask := []byte{1, 2, 3, 4}
	for _, tc := range []struct {
		name  string
		bytes []byte
		code  int
	}{
		{"unmasked", []byte{0x82, 0x01, 0x00}, websocket.CloseProtocolError},
		{"reserved bit", append([]byte{0xc2, 0x81}, append(mask, 0)...), websocket.CloseProtocolError},
		{"continuation first", append([]byte{0x80, 0x81}, append(mask, 0)...), websocket.CloseProtocolError},
		{"unknown opcode", append([]byte{0x83, 0x81}, append(mask, 0)...), websocket.CloseProtocolError},
		{"long control frame", append([]byte{0x89, 0xfe, 0x00, 126}, mask...), websocket.CloseProtocolError},
		{"fragmented control frame", append([]byte{0x09, 0x80}, mask...), websocket.CloseProtocolError},
		{"new message inside another", append(append([]byte{0x02, 0x81}, append(mask, 0)...), append([]byte{0x82, 0x81}, append(mask, 0)...)...), websocket.CloseProtocolError},
		{"too big", append([]byte{0x82, 0xff, 0, 0, 0, 0, 0x10, 0, 0, 0}, mask...), websocket.CloseMessageTooBig},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := dialRaw(t, url, 0, nil)
			if _, err := p.raw.Write(tc.bytes); err != nil {
				t.Fatal(err)
			}
			if code := p.closeCode(t); code != tc.code {
				t.Fatalf("closed with %d, want %d", code, tc.code)
			}
		})
	}
}

// TestWholeMessageOverTheLimitGets1009: a peer that sends all of a message
// over the limit (not just its header) still reads the 1009 close frame:
// the server reads past the message and waits for the peer's close rather
// than closing a socket with the peer's bytes unread, which resets it (the
// peer then saw 1006, its read buffer discarded).
func TestWholeMessageOverTheLimitGets1009(t *testing.T) {
	url := newEchoServer(t) // 64 KiB limit
	for _, size := range []int{64<<10 + 1, 4 << 20} {
		p := dialRaw(t, url, 0, nil)
		payload := make([]byte, size)
		frame := append([]byte{0x82, 0xff}, binary.BigEndian.AppendUint64(nil, uint64(size))...)
		frame = append(append(frame, 0, 0, 0, 0), payload...) // mask 0: the payload as it is
		wrote := make(chan error, 1)
		go func() {
			_, err := p.raw.Write(frame)
			wrote <- err
		}()
		if code := p.closeCode(t); code != websocket.CloseMessageTooBig {
			t.Fatalf("%d bytes: closed with %d, want %d", size, code, websocket.CloseMessageTooBig)
		}
		if err := <-wrote; err != nil {
			t.Fatalf("%d bytes: the server reset the socket before reading the message: %v", size, err)
		}
	}
}
