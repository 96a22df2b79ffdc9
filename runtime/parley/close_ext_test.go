package parley_test

import (
	"context"
	"fmt"
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

// Events queued behind the handler that closes its connection do not run:
// no handler starts after Close returned.
func TestNoEventRunsAfterCloseFromOwnHandler(t *testing.T) {
	s := newEventServer(t)
	conn, err := parley.Dial(context.Background(), s.url)
	if err != nil {
		t.Fatal(err)
	}
	const events = 20
	release := make(chan struct{})
	var ran []string
	conn.Register(parley.NewEventMethod(postedSpec, func(_ context.Context, ev *e2ev1.EchoRequest) {
		ran = append(ran, ev.GetText()) // handlers run one at a time
		if ev.GetText() == "0" {
			<-release // let the others queue up behind this one
			_ = conn.Close()
		}
	}))
	res := new(e2ev1.EchoResponse)
	if err := conn.Invoke(context.Background(), joinSpec, &e2ev1.EchoRequest{Text: "kick"}, res); err != nil {
		t.Fatal(err)
	}
	for i := range events {
		if err := s.srv.Publish(context.Background(), parley.ToConn(res.GetText()), postedSpec, &e2ev1.EchoRequest{Text: fmt.Sprint(i)}); err != nil {
			t.Fatal(err)
		}
	}
	// A call answered after the events were published arrives after them:
	// they are queued behind the first handler by then.
	if err := conn.Invoke(context.Background(), joinSpec, &e2ev1.EchoRequest{Text: "kick"}, res); err != nil {
		t.Fatal(err)
	}
	close(release)
	select {
	case <-conn.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("the connection did not end")
	}
	if len(ran) != 1 {
		t.Fatalf("handlers ran for events %v after the first one's Close, want only [0]", ran)
	}
}
