package parley_test

import (
	"context"
	"fmt"
	"testing"

	e2ev1 "github.com/parleyrpc/parley/internal/e2e/gen/e2e/v1"
	"github.com/parleyrpc/parley/runtime/parley"
)

// TestResentCallsGoBeforeNewOnes: a server with max_in_flight 2 remembers
// 2×2+16 = 20 outcomes per session. Two non-idempotent calls are in flight
// when the socket drops; they finish while the client is away, and the
// client makes 100 new calls meanwhile. On resuming, the two are sent
// again before any new call, so their outcomes are still remembered and
// answered, not run again. New calls used to race them for the two call
// slots: those finishing first pushed the lost calls' outcomes out, and a
// new-user trial saw non-idempotent calls run twice in a resumed session.
func TestResentCallsGoBeforeNewOnes(t *testing.T) {
	r := newRig(t, parley.WithMaxInFlight(2))
	conn := dialT(t, r.url, fastBackoff)
	st := watch(conn)
	release := r.work.hold()
	defer release()
	work := func(prefix string, n int) []chan callResult {
		out := make([]chan callResult, n)
		for i := range n {
			out[i] = make(chan callResult, 1)
			go func() {
				res := new(e2ev1.EchoResponse)
				err := conn.Invoke(context.Background(), workSpec, &e2ev1.EchoRequest{Text: fmt.Sprint(prefix, i)}, res)
				out[i] <- callResult{text: res.GetText(), err: err}
			}()
		}
		return out
	}
	lost := work("lost", 2)
	r.work.waitStarted(t, 2)
	r.proxy.Refuse(true)
	r.proxy.Drop()
	st.waitFor(t, "reconnecting", isReconnecting)
	release()
	waitUntil(t, func() bool { return r.work.served.Load() == 2 })
	fresh := work("new", 100)
	r.proxy.Refuse(false)
	if s, _ := st.waitFor(t, "reopened", isReopened); !s.Resumed {
		t.Fatalf("not resumed: %+v", s)
	}
	for prefix, results := range map[string][]chan callResult{"lost": lost, "new": fresh} {
		for i, res := range collect(t, results) {
			want := fmt.Sprint(prefix, i)
			if res.err != nil || res.text != want {
				t.Errorf("call %s: %q, %v", want, res.text, res.err)
			}
			if runs := r.work.runsOf(want); runs != 1 {
				t.Errorf("call %s ran %d times", want, runs)
			}
		}
	}
}
