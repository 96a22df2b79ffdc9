package parley_test

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	e2ev1 "github.com/parleyrpc/parley/internal/e2e/gen/e2e/v1"
	"github.com/parleyrpc/parley/runtime/parley"
)

// Message limits (WithMaxMessageBytes) bound what each side sends, not only
// what it reads: its own limit and the one the peer advertised (Hello,
// Welcome). What is too large fails where it was made, and the socket,
// which the peer would close with 1009 (and a client then resume, and
// send or be sent the same message again), stays up.

var (
	// sizedSpec answers SleepRequest{Ms: n}: a reply of n bytes of text,
	// or with Token "error" an error whose message is n bytes, or with
	// Token "hold" a small reply once the test releases it. Idempotent:
	// a client may send it again after a reconnect.
	sizedSpec = &parley.MethodSpec{Procedure: "/test.Limits/Sized", Idempotency: parley.IdempotencyIdempotent}
	// itemsSpec streams an item of Ms bytes, then "after".
	itemsSpec = &parley.MethodSpec{Procedure: "/test.Limits/Items", Kind: parley.StreamServer}
	// gatherSpec joins the texts of the items it receives.
	gatherSpec = &parley.MethodSpec{Procedure: "/test.Limits/Gather", Kind: parley.StreamClient}
	// askBigSpec calls the client's Confirm with a request of Ms bytes
	// and answers with the code it failed with ("" if none).
	askBigSpec = &parley.MethodSpec{Procedure: "/test.Limits/AskBig"}
)

type limitServer struct {
	srv      *parley.Server
	url      string
	upgrades atomic.Int64 // WebSocket upgrades asked for: dials, first or again
	runs     atomic.Int64 // sizedSpec handlers run
	hold     chan struct{}
	held     chan struct{}
	sendErrs chan error // what itemsSpec's big Send returned
}

func newLimitServer(t *testing.T, opts ...parley.ServerOption) *limitServer {
	t.Helper()
	ls := &limitServer{hold: make(chan struct{}), held: make(chan struct{}, 10), sendErrs: make(chan error, 10)}
	ls.srv = parley.NewServer(opts...)
	ls.srv.Register(
		parley.NewUnaryMethod(sizedSpec, func(ctx context.Context, r *e2ev1.SleepRequest) (*e2ev1.EchoResponse, error) {
			ls.runs.Add(1)
			switch r.GetToken() {
			case "error":
				return nil, parley.NewError(parley.CodeFailedPrecondition, strings.Repeat("e", int(r.GetMs())))
			case "hold":
				ls.held <- struct{}{}
				select {
				case <-ls.hold:
				case <-ctx.Done():
					return nil, ctx.Err()
				}
			}
			return &e2ev1.EchoResponse{Text: strings.Repeat("r", int(r.GetMs()))}, nil
		}),
		parley.NewServerStreamMethod(itemsSpec, func(ctx context.Context, r *e2ev1.SleepRequest, s *parley.ServerStream[e2ev1.EchoResponse]) error {
			ls.sendErrs <- s.Send(&e2ev1.EchoResponse{Text: strings.Repeat("i", int(r.GetMs()))})
			return s.Send(&e2ev1.EchoResponse{Text: "after"})
		}),
		parley.NewClientStreamMethod(gatherSpec, func(ctx context.Context, s *parley.ClientStream[e2ev1.EchoRequest]) (*e2ev1.EchoResponse, error) {
			var texts []string
			for {
				req, err := s.Recv()
				if errors.Is(err, io.EOF) {
					return &e2ev1.EchoResponse{Text: strings.Join(texts, ",")}, nil
				}
				if err != nil {
					return nil, err
				}
				texts = append(texts, req.GetText())
			}
		}),
		parley.NewUnaryMethod(askBigSpec, func(ctx context.Context, r *e2ev1.SleepRequest) (*e2ev1.EchoResponse, error) {
			peer, _ := parley.PeerFromContext(ctx)
			err := peer.Invoke(ctx, confirmSpec, &e2ev1.EchoRequest{Text: strings.Repeat("q", int(r.GetMs()))}, new(e2ev1.EchoResponse))
			if err == nil {
				return &e2ev1.EchoResponse{}, nil
			}
			return &e2ev1.EchoResponse{Text: parley.CodeOf(err).String() + ": " + err.Error()}, nil
		}),
		parley.NewUnaryMethod(joinSpec, func(ctx context.Context, r *e2ev1.EchoRequest) (*e2ev1.EchoResponse, error) {
			peer, _ := parley.PeerFromContext(ctx)
			if err := peer.Join(ctx, r.GetText()); err != nil {
				return nil, err
			}
			return &e2ev1.EchoResponse{Text: peer.ID()}, nil
		}),
	)
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ls.upgrades.Add(1)
		ls.srv.ServeHTTP(w, r)
	}))
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = ls.srv.Shutdown(ctx)
		hs.Close()
	})
	ls.url = "ws" + strings.TrimPrefix(hs.URL, "http")
	return ls
}

// sized calls sizedSpec, with a deadline that ends a reconnect loop
// (what a too-large message caused) soon.
func sized(conn *parley.Conn, n uint32, token string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	res := new(e2ev1.EchoResponse)
	err := conn.Invoke(ctx, sizedSpec, &e2ev1.SleepRequest{Ms: n, Token: token}, res)
	return res.GetText(), err
}

// wantTooLarge fails unless err is resource_exhausted with a message
// containing each of parts.
func wantTooLarge(t *testing.T, err error, parts ...string) {
	t.Helper()
	if parley.CodeOf(err) != parley.CodeResourceExhausted {
		t.Fatalf("got %v, want resource_exhausted", err)
	}
	for _, p := range parts {
		if !strings.Contains(err.Error(), p) {
			t.Errorf("error %q does not say %q", err, p)
		}
	}
}

// stillUp checks, after a round trip on conn, that it never left its first
// socket: one upgrade for the server, no state change since the watch.
func (ls *limitServer) stillUp(t *testing.T, conn *parley.Conn, st *states) {
	t.Helper()
	if text, err := sized(conn, 3, ""); err != nil || text != "rrr" {
		t.Fatalf("a small call after: %q, %v", text, err)
	}
	if n := ls.upgrades.Load(); n != 1 {
		t.Errorf("%d WebSocket upgrades, want 1: the client reconnected", n)
	}
	if seen := st.all(); len(seen) != 0 {
		t.Errorf("state changes %+v, want none", seen)
	}
}

// TestCallOverTheServersLimit: a request larger than the server's
// Welcome.max_message_bytes fails at once, unsent, with resource_exhausted
// naming the sizes; the connection does not drop (the server would close
// it with 1009, and the client resume and send the call again, until its
// deadline).
func TestCallOverTheServersLimit(t *testing.T) {
	ls := newLimitServer(t, parley.WithMaxMessageBytes(1<<20))
	conn := dialT(t, ls.url, fastBackoff)
	st := watch(conn)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	err := conn.Invoke(ctx, askBigSpec, &e2ev1.SleepRequest{Token: strings.Repeat("x", 2<<20)}, new(e2ev1.EchoResponse))
	wantTooLarge(t, err, askBigSpec.Procedure+": the request is 20971", "the limit 1048576")
	ls.stillUp(t, conn, st)
}

// TestClientSendLimitIsItsOwn: a client's own WithMaxMessageBytes bounds
// what it sends, below a server's larger limit: the call fails unsent (its
// handler never runs), a client-stream item fails its Send and the stream
// goes on.
func TestClientSendLimitIsItsOwn(t *testing.T) {
	ls := newLimitServer(t) // 4 MiB
	conn := dialT(t, ls.url, fastBackoff, parley.WithMaxMessageBytes(1024))
	st := watch(conn)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	err := conn.Invoke(ctx, sizedSpec, &e2ev1.SleepRequest{Ms: 1, Token: strings.Repeat("x", 2048)}, new(e2ev1.EchoResponse))
	wantTooLarge(t, err, sizedSpec.Procedure+": the request is 20", "the limit 1024")
	if n := ls.runs.Load(); n != 0 {
		t.Errorf("the handler ran %d times for a request never sent", n)
	}

	s, err := conn.NewStream(ctx, gatherSpec)
	if err != nil {
		t.Fatal(err)
	}
	wantTooLarge(t, s.SendMsg(&e2ev1.EchoRequest{Text: strings.Repeat("x", 2048)}), gatherSpec.Procedure+": a stream item is 20", "the limit 1024")
	for _, text := range []string{"a", "b"} {
		if err := s.SendMsg(&e2ev1.EchoRequest{Text: text}); err != nil {
			t.Fatalf("sending %q after the refused item: %v", text, err)
		}
	}
	if err := s.CloseSend(); err != nil {
		t.Fatal(err)
	}
	res := new(e2ev1.EchoResponse)
	if err := s.RecvMsg(res); err != nil || res.GetText() != "a,b" {
		t.Fatalf("gathered %q, %v; want \"a,b\"", res.GetText(), err)
	}
	ls.stillUp(t, conn, st)
}

// TestReplyOverTheClientsLimit: the client advertises its limit in Hello;
// a reply or error larger than it reaches the caller as resource_exhausted
// from the server, the socket stays up, and a call in flight meanwhile
// completes.
func TestReplyOverTheClientsLimit(t *testing.T) {
	ls := newLimitServer(t)
	conn := dialT(t, ls.url, fastBackoff, parley.WithMaxMessageBytes(512))
	st := watch(conn)

	heldDone := make(chan error, 1)
	go func() {
		_, err := sized(conn, 1, "hold")
		heldDone <- err
	}()
	<-ls.held

	_, err := sized(conn, 2048, "")
	wantTooLarge(t, err, sizedSpec.Procedure+": the response is 20", "the limit 512")
	_, err = sized(conn, 2048, "error")
	wantTooLarge(t, err, sizedSpec.Procedure+": the failed_precondition error is 20", "the limit 512")
	// Within the limit, the error itself arrives.
	if _, err := sized(conn, 100, "error"); parley.CodeOf(err) != parley.CodeFailedPrecondition {
		t.Errorf("a small error: got %v, want failed_precondition", err)
	}
	close(ls.hold)
	if err := <-heldDone; err != nil {
		t.Errorf("the call in flight: %v", err)
	}
	if n := ls.runs.Load(); n != 4 {
		t.Errorf("%d handler runs, want 4 (one per call)", n)
	}
	ls.stillUp(t, conn, st)
}

// TestServerStreamItemOverTheClientsLimit: the handler's Send of an item
// larger than the client accepts returns resource_exhausted; the stream
// goes on.
func TestServerStreamItemOverTheClientsLimit(t *testing.T) {
	ls := newLimitServer(t)
	conn := dialT(t, ls.url, fastBackoff, parley.WithMaxMessageBytes(512))
	st := watch(conn)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s, err := conn.NewStream(ctx, itemsSpec)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.SendMsg(&e2ev1.SleepRequest{Ms: 2048}); err != nil {
		t.Fatal(err)
	}
	var got []string
	for {
		res := new(e2ev1.EchoResponse)
		err := s.RecvMsg(res)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("after %q: %v", got, err)
		}
		got = append(got, res.GetText())
	}
	if strings.Join(got, ",") != "after" {
		t.Errorf("received %q, want only \"after\"", got)
	}
	select {
	case err := <-ls.sendErrs:
		wantTooLarge(t, err, itemsSpec.Procedure+": a stream item is 20", "the limit 512")
	default:
		t.Fatal("the handler's Send did not return")
	}
	ls.stillUp(t, conn, st)
}

// TestEventOverAClientsLimit: an event larger than one client accepts is
// not sent to that client; the others get it, and both connections stay
// up.
func TestEventOverAClientsLimit(t *testing.T) {
	ls := newLimitServer(t)
	small := listen(t, ls.url, "room", fastBackoff, parley.WithMaxMessageBytes(512))
	smallStates := watch(small.conn)
	big := listen(t, ls.url, "room", fastBackoff)
	ctx := context.Background()
	for _, text := range []string{strings.Repeat("e", 2048), "marker"} {
		if err := ls.srv.Publish(ctx, parley.ToRoom("room"), postedSpec, &e2ev1.EchoRequest{Text: text}); err != nil {
			t.Fatal(err)
		}
	}
	if got := big.waitFor(t, 2); len(got) != 2 || len(got[0]) != 2048 || got[1] != "marker" {
		t.Errorf("the client with room for it got %d events, want the big one and the marker", len(got))
	}
	// Events to a connection arrive in order: the marker comes after
	// whatever became of the big one.
	if got := small.waitFor(t, 1); len(got) != 1 || got[0] != "marker" {
		t.Errorf("the client with a 512-byte limit got %d events (%d bytes first), want only the marker", len(got), len(got[0]))
	}
	ls.upgrades.Add(-1) // the second listener's
	ls.stillUp(t, small.conn, smallStates)
}

// TestServerCallOverTheClientsLimit: a server's call to a client with a
// request larger than the client's Hello limit fails in the server's
// handler, unsent.
func TestServerCallOverTheClientsLimit(t *testing.T) {
	ls := newLimitServer(t)
	conn := dialT(t, ls.url, fastBackoff, parley.WithMaxMessageBytes(512))
	conn.Register(parley.NewUnaryMethod(confirmSpec, func(_ context.Context, r *e2ev1.EchoRequest) (*e2ev1.EchoResponse, error) {
		return &e2ev1.EchoResponse{Text: "confirmed"}, nil
	}))
	st := watch(conn)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	res := new(e2ev1.EchoResponse)
	if err := conn.Invoke(ctx, askBigSpec, &e2ev1.SleepRequest{Ms: 2048}, res); err != nil {
		t.Fatal(err)
	}
	if want := "resource_exhausted: resource_exhausted: " + confirmSpec.Procedure + ": the request is 20"; !strings.HasPrefix(res.GetText(), want) {
		t.Errorf("the server's call failed with %q, want %q...", res.GetText(), want)
	}
	ls.stillUp(t, conn, st)
}
