package parley_test

import (
	"errors"
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
