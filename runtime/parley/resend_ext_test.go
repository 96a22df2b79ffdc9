package parley_test

import (
	"context"
	"fmt"
	"strings"
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

// TestKeptRepliesAreBoundedInBytes: two calls in flight when the socket
// drops finish while the client is away, each with a reply of about 1,000
// bytes, on a server that keeps 1,500 bytes of replies per session. On
// resuming, the client re-sends both: the later reply is kept and
// answered; the earlier one gave way to a data_loss error, and neither
// call ran twice. Before the bound, a session kept up to 2×max_in_flight+16
// replies whatever their size: with 4 MiB replies, over 1 GB per session.
func TestKeptRepliesAreBoundedInBytes(t *testing.T) {
	r := newRig(t, parley.WithResumeReplyBytes(1500))
	conn := dialT(t, r.url, fastBackoff)
	st := watch(conn)
	release := r.work.hold()
	defer release()
	results := make([]chan callResult, 2)
	texts := make([]string, 2)
	for i := range results {
		texts[i] = fmt.Sprint(i, strings.Repeat("x", 1000))
		results[i] = make(chan callResult, 1)
		go func() {
			res := new(e2ev1.EchoResponse)
			err := conn.Invoke(context.Background(), workSpec, &e2ev1.EchoRequest{Text: texts[i]}, res)
			results[i] <- callResult{text: res.GetText(), err: err}
		}()
	}
	r.work.waitStarted(t, 2)
	r.proxy.Refuse(true)
	r.proxy.Drop()
	st.waitFor(t, "reconnecting", isReconnecting)
	release()
	waitUntil(t, func() bool { return r.work.served.Load() == 2 })
	r.proxy.Refuse(false)
	if s, _ := st.waitFor(t, "reopened", isReopened); !s.Resumed {
		t.Fatalf("not resumed: %+v", s)
	}
	var answered, lost int
	for i, res := range collect(t, results) {
		switch {
		case res.err == nil && res.text == texts[i]:
			answered++
		case parley.CodeOf(res.err) == parley.CodeDataLoss && strings.Contains(res.err.Error(), "WithResumeReplyBytes"):
			lost++
		default:
			t.Errorf("call %d: %d bytes, %v", i, len(res.text), res.err)
		}
		if runs := r.work.runsOf(texts[i]); runs != 1 {
			t.Errorf("call %d ran %d times", i, runs)
		}
	}
	if answered != 1 || lost != 1 {
		t.Errorf("%d calls answered and %d lost, want 1 and 1", answered, lost)
	}
}
