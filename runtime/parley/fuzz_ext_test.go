package parley_test

import (
	"errors"
	"net"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"google.golang.org/protobuf/proto"

	parleyv1 "github.com/parleyrpc/parley/gen/parley/v1"
	e2ev1 "github.com/parleyrpc/parley/internal/e2e/gen/e2e/v1"
	"github.com/parleyrpc/parley/runtime/parley"
)

// FuzzDispatch sends an arbitrary message to a live server after the
// handshake, then a well-formed call. The server must answer the call or
// close the socket with a protocol-level code; it must never crash or
// hang. The seed corpus runs with go test.
func FuzzDispatch(f *testing.F) {
	frame := func(fr *parleyv1.Frame) []byte {
		b, _ := proto.Marshal(fr)
		return b
	}
	echo, _ := proto.Marshal(&e2ev1.EchoRequest{Text: "x"})
	f.Add(frame(&parleyv1.Frame{Kind: &parleyv1.Frame_Call{Call: &parleyv1.Call{Id: 1, Method: unarySpec.Procedure, Body: &parleyv1.Call_Payload{Payload: echo}}}}))
	f.Add(frame(&parleyv1.Frame{Kind: &parleyv1.Frame_Call{Call: &parleyv1.Call{Id: 2, Method: unarySpec.Procedure}}}))
	f.Add(frame(&parleyv1.Frame{Kind: &parleyv1.Frame_Call{Call: &parleyv1.Call{Id: 3, Method: "/nope"}}}))
	f.Add(frame(&parleyv1.Frame{Kind: &parleyv1.Frame_Call{Call: &parleyv1.Call{Id: 5, Method: countSpec.Procedure, Body: &parleyv1.Call_Payload{Payload: []byte{0xff}}}}}))
	f.Add(frame(&parleyv1.Frame{Kind: &parleyv1.Frame_Item{Item: &parleyv1.StreamItem{Id: 7}}}))
	f.Add(frame(&parleyv1.Frame{Kind: &parleyv1.Frame_Credit{Credit: &parleyv1.Credit{Id: 7, Items: 1 << 31}}}))
	f.Add(frame(&parleyv1.Frame{Kind: &parleyv1.Frame_Cancel{Cancel: &parleyv1.Cancel{Id: 9}}}))
	f.Add(frame(&parleyv1.Frame{Kind: &parleyv1.Frame_Hello{Hello: &parleyv1.Hello{}}}))
	f.Add(frame(&parleyv1.Frame{Kind: &parleyv1.Frame_Reply{Reply: &parleyv1.Reply{Id: 2}}}))
	f.Add(frame(&parleyv1.Frame{Kind: &parleyv1.Frame_Ping{Ping: &parleyv1.Ping{Nonce: 1}}}))
	f.Add([]byte{})
	f.Add([]byte{0x1a, 0x80})
	f.Add([]byte("\x7a\x00"))
	f.Fuzz(func(t *testing.T, data []byte) {
		_, url := newStreamServer(t)
		d := websocket.Dialer{Subprotocols: []string{parley.SubprotocolProto}}
		ws, _, err := d.Dial(url, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer ws.Close()
		write := func(b []byte) bool {
			return ws.WriteMessage(websocket.BinaryMessage, b) == nil
		}
		if !write(frame(&parleyv1.Frame{Kind: &parleyv1.Frame_Hello{Hello: &parleyv1.Hello{}}})) {
			t.Fatal("hello not sent")
		}
		if _, _, err := ws.ReadMessage(); err != nil {
			t.Fatal(err)
		}
		const probe = 1_000_001
		write(data)
		write(frame(&parleyv1.Frame{Kind: &parleyv1.Frame_Call{Call: &parleyv1.Call{Id: probe, Method: unarySpec.Procedure, Body: &parleyv1.Call_Payload{Payload: echo}}}}))
		_ = ws.SetReadDeadline(time.Now().Add(10 * time.Second))
		for {
			_, msg, err := ws.ReadMessage()
			var ce *websocket.CloseError
			switch {
			case errors.As(err, &ce):
				if ce.Code != websocket.CloseProtocolError && ce.Code != websocket.CloseUnsupportedData {
					t.Fatalf("closed with %d (%s)", ce.Code, ce.Text)
				}
				return
			case err != nil:
				t.Fatalf("no answer and no close: %v", err)
			}
			var fr parleyv1.Frame
			if proto.Unmarshal(msg, &fr) != nil {
				t.Fatalf("server sent an undecodable frame %x", msg)
			}
			if r := fr.GetReply(); r != nil && r.GetId() == probe {
				return
			}
			if e := fr.GetError(); e != nil && e.GetId() == probe {
				t.Fatalf("the probe call failed: %v", e)
			}
		}
	})
}

// FuzzWebSocketFrames writes arbitrary bytes on a connection's socket after
// the handshake, then a well-formed call, then ends its side of the TCP
// connection. Whatever the bytes, the server must answer the call or close
// the connection within the deadline; it must never crash or hang (the
// server reads WebSocket frames itself, see readMessage).
func FuzzWebSocketFrames(f *testing.F) {
	masked := func(op byte, payload []byte) []byte {
		b := []byte{0x80 | op}
		switch n := len(payload); {
		case n < 126:
			b = append(b, 0x80|byte(n))
		default:
			b = append(b, 0x80|126, byte(n>>8), byte(n))
		}
		return append(append(b, 0, 0, 0, 0), payload...) // a zero key masks nothing
	}
	call, _ := proto.Marshal(&parleyv1.Frame{Kind: &parleyv1.Frame_Call{Call: &parleyv1.Call{Id: 3, Method: unarySpec.Procedure}}})
	f.Add(masked(2, call))
	f.Add(append(masked(9, []byte("ping")), masked(2, call)...))
	f.Add(append([]byte{0x02, 0x80, 0, 0, 0, 0}, masked(0, call)...)) // an empty first fragment
	f.Add(masked(8, []byte{0x03, 0xe8}))
	f.Add(masked(8, []byte{0x03}))
	f.Add([]byte{0x82, 0x01, 0x00})
	f.Add([]byte{0x82, 0xff, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0})
	f.Add([]byte{0x82, 0xfe, 0xff})
	f.Fuzz(func(t *testing.T, data []byte) {
		_, url := newStreamServer(t)
		p := dialRaw(t, url, 0, nil)
		if _, err := p.raw.Write(data); err != nil {
			return // the server closed already
		}
		const probe = 1_000_001
		echo, _ := proto.Marshal(&e2ev1.EchoRequest{Text: "x"})
		b, _ := proto.Marshal(&parleyv1.Frame{Kind: &parleyv1.Frame_Call{Call: &parleyv1.Call{Id: probe, Method: unarySpec.Procedure, Body: &parleyv1.Call_Payload{Payload: echo}}}})
		_, _ = p.raw.Write(masked(2, b))
		_ = p.raw.(*net.TCPConn).CloseWrite() // a frame left incomplete ends at EOF
		_ = p.ws.SetReadDeadline(time.Now().Add(10 * time.Second))
		for {
			_, msg, err := p.ws.ReadMessage()
			if err != nil {
				if isTimeout(err) {
					t.Fatal("no answer and no close within 10 s")
				}
				return // closed: with a close frame, or the connection dropped
			}
			var fr parleyv1.Frame
			if proto.Unmarshal(msg, &fr) != nil {
				t.Fatalf("server sent an undecodable frame %x", msg)
			}
			if fr.GetReply().GetId() == probe || fr.GetError().GetId() == probe {
				return
			}
		}
	})
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
