package parley_test

import (
	"context"
	"testing"
	"time"

	e2ev1 "github.com/parleyrpc/parley/internal/e2e/gen/e2e/v1"
	"github.com/parleyrpc/parley/runtime/parley"
)

// An event handler that closes its own connection (say, on a "you were
// kicked" event) gets Close back, and the connection ends once the handler
// returns. Close waits for a running handler, but it cannot wait for the
// one that called it.
func TestCloseFromOwnEventHandler(t *testing.T) {
	s := newEventServer(t)
	conn, err := parley.Dial(context.Background(), s.url)
	if err != nil {
		t.Fatal(err)
	}
	returned := make(chan struct{})
	handlerDone := make(chan struct{})
	conn.Register(parley.NewEventMethod(postedSpec, func(ctx context.Context, _ *e2ev1.EchoRequest) {
		defer close(handlerDone)
		_ = conn.Close()
		close(returned)
		if ctx.Err() == nil {
			t.Error("the handler's context is not cancelled after Close")
		}
	}))
	res := new(e2ev1.EchoResponse)
	if err := conn.Invoke(context.Background(), joinSpec, &e2ev1.EchoRequest{Text: "kick"}, res); err != nil {
		t.Fatal(err)
	}
	if err := s.srv.Publish(context.Background(), parley.ToRoom("kick"), postedSpec, &e2ev1.EchoRequest{Text: "bye"}); err != nil {
		t.Fatal(err)
	}
	select {
	case <-returned:
	case <-time.After(5 * time.Second):
		t.Fatal("Close called from the connection's own event handler did not return")
	}
	<-handlerDone
	select {
	case <-conn.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("the connection did not end after its handler returned")
	}
	if err := conn.Close(); err != nil {
		t.Fatalf("a second Close: %v", err)
	}
	if st := conn.State(); st.Status != parley.StatusClosed || parley.CodeOf(st.Err) != parley.CodeCanceled {
		t.Fatalf("state %v %v, want closed, canceled", st.Status, st.Err)
	}
}
