package parley_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	e2ev1 "github.com/parleyrpc/parley/internal/e2e/gen/e2e/v1"
	"github.com/parleyrpc/parley/runtime/parley"
)

// TestWritesAfterTheHandshakesWriteDeadline: each side's handshake sets a
// write deadline a write timeout ahead, and nothing that writes without
// waiting for the socket (a handler writing its reply, a caller its call,
// the server's flusher its events) moved it. Once it passed, every such
// write failed at once with "i/o timeout" though the socket had room, and
// the connection dropped: about every 10 s at the defaults, on any
// connection busy with calls or events.
func TestWritesAfterTheHandshakesWriteDeadline(t *testing.T) {
	const timeout = 100 * time.Millisecond
	s := newEventServer(t, parley.WithWriteTimeout(timeout))
	l := listen(t, s.url, "room", parley.WithWriteTimeout(timeout), parley.WithoutReconnect())
	st := watch(l.conn)
	// Not synchronisation: the deadlines passing is what is tested.
	time.Sleep(3 * timeout)
	const n = 20
	for i := range n {
		res := new(e2ev1.EchoResponse)
		if err := l.conn.Invoke(context.Background(), joinSpec, &e2ev1.EchoRequest{Text: "room"}, res); err != nil {
			t.Fatalf("call %d after the handshake's write deadline: %v", i, err)
		}
		if err := s.srv.Publish(context.Background(), parley.ToRoom("room"), postedSpec, &e2ev1.EchoRequest{Text: fmt.Sprint(i)}); err != nil {
			t.Fatal(err)
		}
	}
	l.waitFor(t, n)
	if all := st.all(); len(all) > 0 {
		t.Fatalf("the connection changed state: %+v", all)
	}
}
