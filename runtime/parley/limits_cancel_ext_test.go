package parley_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"google.golang.org/protobuf/proto"

	parleyv1 "github.com/parleyrpc/parley/gen/parley/v1"
	e2ev1 "github.com/parleyrpc/parley/internal/e2e/gen/e2e/v1"
	"github.com/parleyrpc/parley/runtime/parley"
)

// TestStreamCallTooLargeSendsNothing: a server-streaming call whose request
// is over the server's limit fails at once, and nothing at all goes out for
// it: no Call, and no Cancel for an id the server never saw. The raw server
// below sees the client's next frame, a small unary Call, right after Hello.
func TestStreamCallTooLargeSendsNothing(t *testing.T) {
	next := make(chan *parleyv1.Frame, 1)
	url := scriptedServer(t, &parleyv1.Welcome{SessionId: "s", MaxMessageBytes: 512}, func(ws *websocket.Conn) {
		_, data, err := ws.ReadMessage()
		if err != nil {
			return
		}
		f := new(parleyv1.Frame)
		if err := proto.Unmarshal(data, f); err != nil {
			t.Errorf("undecodable frame: %v", err)
			return
		}
		next <- f
		if call := f.GetCall(); call != nil {
			reply, _ := proto.Marshal(&parleyv1.Frame{Kind: &parleyv1.Frame_Reply{Reply: &parleyv1.Reply{Id: call.Id}}})
			_ = ws.WriteMessage(websocket.BinaryMessage, reply)
		}
		_, _, _ = ws.ReadMessage() // until the client closes
	})
	conn := dialT(t, url, parley.WithoutReconnect())
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	_, err := parley.CallServerStream[e2ev1.EchoResponse](ctx, conn, itemsSpec, &e2ev1.SleepRequest{Ms: 1, Token: strings.Repeat("x", 2048)})
	wantTooLarge(t, err, itemsSpec.Procedure, "the request")
	invoked := make(chan error, 1)
	go func() {
		invoked <- conn.Invoke(ctx, echoSpec, &e2ev1.EchoRequest{Text: "small"}, new(e2ev1.EchoResponse))
	}()
	select {
	case f := <-next:
		if f.GetCall().GetMethod() != echoSpec.Procedure {
			t.Fatalf("the frame after Hello is %v, want the small call's Call", f)
		}
	case <-ctx.Done():
		t.Fatal("the server saw no frame after Hello")
	}
	if err := <-invoked; err != nil {
		t.Fatalf("the small call after it: %v", err)
	}
}
