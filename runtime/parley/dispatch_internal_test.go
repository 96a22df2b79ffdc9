package parley

import (
	"context"
	"log/slog"
	"runtime"
	"sync/atomic"
	"testing"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// TestEventQueueIsBounded: a client's event handlers that fall behind by
// more than the queue's bytes make the reader's push wait, rather than the
// queue grow without bound (a new-user trial found a blocked handler let a
// Go client buffer every event); the push goes on once a handler takes an
// event, and closing the runner releases it. Events keep their order.
func TestEventQueueIsBounded(t *testing.T) {
	for _, closeIt := range []bool{false, true} {
		ctx, cancel := context.WithCancel(context.Background())
		release := make(chan struct{})
		started := make(chan string, 10)
		handle := func(ctx context.Context, req proto.Message) (proto.Message, error) {
			started <- req.(*wrapperspb.StringValue).GetValue()
			select {
			case <-release:
			case <-ctx.Done():
			}
			return nil, nil
		}
		r := newEventRunner(ctx, handle, slog.Default(), new(atomic.Uint64), 100)
		m := &Method{spec: &MethodSpec{Procedure: "/test.Events/E"}}
		ev := func(s string) queuedEvent {
			return queuedEvent{m: m, req: wrapperspb.String(s), ci: &CallInfo{Spec: m.spec, Event: true}, size: 60}
		}
		r.push(ev("1"))
		if got := <-started; got != "1" {
			t.Fatalf("first handled %q", got)
		}
		r.push(ev("2")) // 60 bytes queued: within 100
		pushed := make(chan struct{})
		go func() {
			r.push(ev("3")) // 120 would pass 100: waits
			close(pushed)
		}()
		for waiting := 0; waiting == 0; runtime.Gosched() {
			select {
			case <-pushed:
				t.Fatal("the push went through a full queue")
			default:
			}
			r.mu.Lock()
			waiting = r.waiting
			r.mu.Unlock()
		}
		if closeIt {
			cancel()
			r.close()
			<-pushed
			continue
		}
		close(release)
		<-pushed
		for _, want := range []string{"2", "3"} {
			if got := <-started; got != want {
				t.Fatalf("handled %q, want %q", got, want)
			}
		}
		r.close()
		cancel()
	}
}
