package parley_test

import (
	"context"
	"testing"
	"time"

	parleyv1 "github.com/parleyrpc/parley/gen/parley/v1"
	e2ev1 "github.com/parleyrpc/parley/internal/e2e/gen/e2e/v1"
	"github.com/parleyrpc/parley/runtime/parley"
)

// TestResumingDoesNotRaiseMaxInFlight: unary calls outlive their socket,
// so a client that fills max_in_flight, drops its socket and resumes
// must find the session's calls still counted. It used to start
// max_in_flight more on every resumed socket (5,120 handlers on one
// session after 40 resumes at the default 128).
func TestResumingDoesNotRaiseMaxInFlight(t *testing.T) {
	const limit = 4
	release := make(chan struct{})
	started := make(chan struct{}, 2*limit)
	srv := parley.NewServer(parley.WithMaxInFlight(limit))
	srv.Register(parley.NewUnaryMethod(echoSpec, func(ctx context.Context, r *e2ev1.EchoRequest) (*e2ev1.EchoResponse, error) {
		started <- struct{}{}
		select {
		case <-release:
		case <-ctx.Done():
		}
		return &e2ev1.EchoResponse{Text: r.Text}, nil
	}))
	url := serveWS(t, srv)
	defer close(release)
	call := func(p *rawPeer, id uint64) {
		p.write(t, &parleyv1.Frame{Kind: &parleyv1.Frame_Call{Call: &parleyv1.Call{Id: id, Method: echoSpec.Procedure}}})
	}

	p := dialRaw(t, url, 0, nil)
	for i := range limit {
		call(p, uint64(2*i+1))
	}
	for range limit {
		select {
		case <-started:
		case <-time.After(5 * time.Second):
			t.Fatal("the calls did not start")
		}
	}
	_ = p.raw.Close() // dropped, not closed: the session waits to be resumed

	q := dialRaw(t, url, 0, &parleyv1.Hello{SessionId: p.welcome.GetSessionId(), ResumeToken: p.welcome.GetResumeToken()})
	if !q.welcome.GetResumed() {
		t.Fatal("the session did not resume")
	}
	id := uint64(2*limit + 1)
	call(q, id)
	f := q.read(t)
	if e := f.GetError(); e.GetId() != id || e.GetCode() != parleyv1.Code_CODE_RESOURCE_EXHAUSTED {
		t.Fatalf("call %d beyond the session's %d in flight: got %v, want resource_exhausted", id, limit, f)
	}
	select {
	case <-started:
		t.Fatal("a call beyond max_in_flight ran")
	default:
	}
}
