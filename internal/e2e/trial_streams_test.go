package e2e_test

// A new user's trial of the Go streaming API: the generated typed streams
// on the client and the handler side, over a real WebSocket on loopback,
// in both encodings, used the ways a demanding user uses them (and
// misuses them). Each test asserts what the docs promise.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http/httptest"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/parleyrpc/parley/internal/e2e"
	e2ev1 "github.com/parleyrpc/parley/internal/e2e/gen/e2e/v1"
	"github.com/parleyrpc/parley/internal/e2e/gen/e2e/v1/e2ev1parley"
	"github.com/parleyrpc/parley/runtime/parley"
)

// hookStreams serves e2e.v1.StreamService with e2e.StreamService's
// behaviour, except for the methods a test replaces. Set the hooks before
// the server serves.
type hookStreams struct {
	*e2e.StreamService
	count func(context.Context, *e2ev1.CountRequest, *parley.ServerStream[e2ev1.CountResponse]) error
	sum   func(context.Context, *parley.ClientStream[e2ev1.SumRequest]) (*e2ev1.SumResponse, error)
	echo  func(context.Context, *parley.BidiStream[e2ev1.EchoItem, e2ev1.EchoItem]) error
}

func (h *hookStreams) Count(ctx context.Context, req *e2ev1.CountRequest, s *parley.ServerStream[e2ev1.CountResponse]) error {
	if h.count != nil && req.GetToken() != stillUpToken {
		return h.count(ctx, req, s)
	}
	return h.StreamService.Count(ctx, req, s)
}

func (h *hookStreams) Sum(ctx context.Context, s *parley.ClientStream[e2ev1.SumRequest]) (*e2ev1.SumResponse, error) {
	if h.sum != nil {
		return h.sum(ctx, s)
	}
	return h.StreamService.Sum(ctx, s)
}

func (h *hookStreams) Echo(ctx context.Context, s *parley.BidiStream[e2ev1.EchoItem, e2ev1.EchoItem]) error {
	if h.echo != nil {
		return h.echo(ctx, s)
	}
	return h.StreamService.Echo(ctx, s)
}

// trialServer serves h (and the echo service) on loopback; it is shut
// down at the test's end.
func trialServer(t *testing.T, h *hookStreams, opts ...parley.ServerOption) (*parley.Server, string) {
	t.Helper()
	if h.StreamService == nil {
		h.StreamService = &e2e.StreamService{}
	}
	srv := parley.NewServer(opts...)
	e2ev1parley.RegisterStreamServiceServer(srv, h)
	e2ev1parley.RegisterEchoServiceServer(srv, &e2e.EchoService{})
	hs := httptest.NewServer(srv)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
		hs.Close()
	})
	return srv, "ws" + strings.TrimPrefix(hs.URL, "http")
}

// within runs f and fails the test if it is still blocked after 5s.
func within[T any](t *testing.T, what string, f func() T) T {
	t.Helper()
	c := make(chan T, 1)
	go func() { c <- f() }()
	select {
	case v := <-c:
		return v
	case <-time.After(5 * time.Second):
		t.Fatalf("%s: still blocked after 5s", what)
		panic("unreachable")
	}
}

// recvErr is the error of one Recv (nil when it returned an item).
func recvErr[T any](f func() (*T, error)) func() error {
	return func() error { _, err := f(); return err }
}

// waitFor waits (at most 5s) for c to be closed or to deliver.
func waitFor[T any](t *testing.T, what string, c <-chan T) T {
	t.Helper()
	select {
	case v := <-c:
		return v
	case <-time.After(5 * time.Second):
		t.Fatalf("%s: not within 5s", what)
		panic("unreachable")
	}
}

// stillUpToken marks stillUp's streams: they get e2e.StreamService's
// behaviour whatever the hooks.
const stillUpToken = "still-up"

// stillUp checks that conn still carries calls and streams.
func stillUp(t *testing.T, conn *parley.Conn) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	res, err := e2ev1parley.NewEchoServiceClient(conn).Echo(ctx, &e2ev1.EchoRequest{Text: "up"})
	if err != nil || res.GetText() != "up" {
		t.Fatalf("a call after: %v, %v", res, err)
	}
	st, err := e2ev1parley.NewStreamServiceClient(conn).Count(ctx, &e2ev1.CountRequest{From: 7, Count: 2, Token: stillUpToken})
	if err != nil {
		t.Fatalf("a stream after: %v", err)
	}
	for want := int32(7); want < 9; want++ {
		item, err := st.Recv()
		if err != nil || item.GetN() != want {
			t.Fatalf("a stream after: item %v, %v; want %d", item, err, want)
		}
	}
	if _, err := st.Recv(); !errors.Is(err, io.EOF) {
		t.Fatalf("a stream after: end %v, want io.EOF", err)
	}
}

// TestTrialStreamClientMisuse: what each misuse of a client stream
// returns, at once: Send after CloseSend, CloseSend twice, Recv after the
// end (the same outcome each time), CloseAndRecv twice, Send and Recv
// after the context ended, and what the handler saw.
func TestTrialStreamClientMisuse(t *testing.T) {
	h := &hookStreams{}
	_, url := trialServer(t, h)
	for _, enc := range encodings {
		t.Run(enc.name, func(t *testing.T) {
			conn, _ := dial(t, url, enc.opts...)
			sc := e2ev1parley.NewStreamServiceClient(conn)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()

			// Bidi: half-close, then misuse the closed direction.
			bidi, err := sc.Echo(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if err := bidi.Send(&e2ev1.EchoItem{Text: "a"}); err != nil {
				t.Fatal(err)
			}
			if err := within(t, "CloseSend", bidi.CloseSend); err != nil {
				t.Fatalf("CloseSend: %v", err)
			}
			if err := within(t, "CloseSend twice", bidi.CloseSend); err != nil {
				t.Fatalf("CloseSend twice: %v, want nil", err)
			}
			err = within(t, "Send after CloseSend", func() error { return bidi.Send(&e2ev1.EchoItem{Text: "b"}) })
			if err == nil || errors.Is(err, io.EOF) {
				t.Fatalf("Send after CloseSend: %v, want an error that is not io.EOF", err)
			}
			if item, err := bidi.Recv(); err != nil || item.GetText() != "a" {
				t.Fatalf("Recv: %v, %v", item, err)
			}
			for range 3 {
				if err := within(t, "Recv after the end", recvErr(bidi.Recv)); !errors.Is(err, io.EOF) {
					t.Fatalf("Recv after the end: %v, want io.EOF", err)
				}
			}
			if err := within(t, "Send after the end", func() error { return bidi.Send(&e2ev1.EchoItem{}) }); err == nil {
				t.Fatal("Send after the end: nil")
			}

			// Client stream: CloseAndRecv twice.
			sum, err := sc.Sum(ctx)
			if err != nil {
				t.Fatal(err)
			}
			for v := range int64(3) {
				if err := sum.Send(&e2ev1.SumRequest{Value: v + 1}); err != nil {
					t.Fatal(err)
				}
			}
			res, err := sum.CloseAndRecv()
			if err != nil || res.GetSum() != 6 || res.GetCount() != 3 {
				t.Fatalf("CloseAndRecv: %v, %v", res, err)
			}
			for range 2 {
				if err := within(t, "CloseAndRecv again", func() error { _, err := sum.CloseAndRecv(); return err }); err == nil {
					t.Fatal("CloseAndRecv again: nil error")
				}
			}

			// Server stream, cancelled mid-way: Recv returns canceled from
			// then on, whatever was queued, and the handler sees it.
			cctx, ccancel := context.WithCancel(ctx)
			count, err := sc.Count(cctx, &e2ev1.CountRequest{Count: 1 << 30, Token: "misuse-cancel-" + enc.name})
			if err != nil {
				t.Fatal(err)
			}
			for want := range int32(10) {
				if item, err := count.Recv(); err != nil || item.GetN() != want {
					t.Fatalf("Recv: %v, %v, want %d", item, err, want)
				}
			}
			ccancel()
			for range 3 {
				if err := within(t, "Recv after cancel", recvErr(count.Recv)); parley.CodeOf(err) != parley.CodeCanceled {
					t.Fatalf("Recv after cancel: %v, want canceled", err)
				}
			}
			out, err := sc.StreamOutcome(ctx, &e2ev1.StreamOutcomeRequest{Token: "misuse-cancel-" + enc.name})
			if err != nil || out.GetOutcome() != "canceled" {
				t.Fatalf("handler's outcome: %v, %v; want canceled", out, err)
			}

			// Bidi with its context ended before anything was sent.
			cctx, ccancel = context.WithCancel(ctx)
			bidi, err = sc.Echo(cctx)
			if err != nil {
				t.Fatal(err)
			}
			ccancel()
			if err := within(t, "Send after cancel", func() error { return bidi.Send(&e2ev1.EchoItem{Text: "late"}) }); err == nil {
				t.Fatal("Send after cancel: nil")
			}
			if err := within(t, "Recv after cancel", recvErr(bidi.Recv)); parley.CodeOf(err) != parley.CodeCanceled {
				t.Fatalf("Recv after cancel: %v, want canceled", err)
			}
			if err := within(t, "CloseSend after cancel", bidi.CloseSend); err != nil {
				t.Fatalf("CloseSend after cancel: %v", err)
			}
			_ = within(t, "Close after cancel", bidi.Close)

			// Bidi whose deadline passes while it waits.
			dctx, dcancel := context.WithTimeout(ctx, 50*time.Millisecond)
			defer dcancel()
			bidi, err = sc.Echo(dctx)
			if err != nil {
				t.Fatal(err)
			}
			if err := bidi.Send(&e2ev1.EchoItem{Text: "x", Token: "misuse-deadline-" + enc.name}); err != nil {
				t.Fatal(err)
			}
			if item, err := bidi.Recv(); err != nil || item.GetText() != "x" {
				t.Fatalf("Recv: %v, %v", item, err)
			}
			if err := within(t, "Recv past the deadline", recvErr(bidi.Recv)); parley.CodeOf(err) != parley.CodeDeadlineExceeded {
				t.Fatalf("Recv past the deadline: %v, want deadline_exceeded", err)
			}
			out, err = sc.StreamOutcome(ctx, &e2ev1.StreamOutcomeRequest{Token: "misuse-deadline-" + enc.name})
			if err != nil || out.GetOutcome() != "deadline_exceeded" {
				t.Fatalf("handler's outcome: %v, %v; want deadline_exceeded", out, err)
			}
			stillUp(t, conn)
		})
	}
}

// TestTrialConcurrentSendersOneReceiver: two goroutines Send on one bidi
// stream while a third Recvs. The docs allow one sender and one receiver;
// two senders are serialized by the stream (sendMu): each sender's items
// arrive in its order, none lost or duplicated, and -race stays quiet.
func TestTrialConcurrentSendersOneReceiver(t *testing.T) {
	_, url := trialServer(t, &hookStreams{})
	for _, enc := range encodings {
		t.Run(enc.name, func(t *testing.T) {
			conn, _ := dial(t, url, enc.opts...)
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			bidi, err := e2ev1parley.NewStreamServiceClient(conn).Echo(ctx)
			if err != nil {
				t.Fatal(err)
			}
			const n = 2000
			var senders sync.WaitGroup
			for _, who := range []string{"a", "b"} {
				senders.Add(1)
				go func() {
					defer senders.Done()
					for i := range n {
						if err := bidi.Send(&e2ev1.EchoItem{Text: fmt.Sprintf("%s%d", who, i)}); err != nil {
							t.Errorf("Send %s%d: %v", who, i, err)
							return
						}
					}
				}()
			}
			closed := make(chan error, 1)
			go func() { senders.Wait(); closed <- bidi.CloseSend() }()
			next := map[byte]int{'a': 0, 'b': 0}
			for {
				item, err := bidi.Recv()
				if errors.Is(err, io.EOF) {
					break
				}
				if err != nil {
					t.Fatalf("Recv: %v", err)
				}
				text := item.GetText()
				if want := fmt.Sprintf("%c%d", text[0], next[text[0]]); text != want {
					t.Fatalf("got %s, want %s", text, want)
				}
				next[text[0]]++
			}
			if err := waitFor(t, "CloseSend", closed); err != nil {
				t.Fatalf("CloseSend: %v", err)
			}
			if next['a'] != n || next['b'] != n {
				t.Fatalf("got %d and %d items, want %d each", next['a'], next['b'], n)
			}
		})
	}
}

// TestTrialDroppedStreamLivesUntilItsContext: a server stream the caller
// stops reading, without Close, holds its handler (waiting for credit)
// until the caller's context ends; then the handler's context ends and
// everything's goroutines with it.
func TestTrialDroppedStreamLivesUntilItsContext(t *testing.T) {
	started := make(chan struct{}, 1)
	ended := make(chan error, 1)
	h := &hookStreams{count: func(ctx context.Context, req *e2ev1.CountRequest, s *parley.ServerStream[e2ev1.CountResponse]) error {
		started <- struct{}{}
		for i := int32(0); ; i++ {
			if err := s.Send(&e2ev1.CountResponse{N: i}); err != nil {
				ended <- err
				return err
			}
		}
	}}
	_, url := trialServer(t, h)
	for _, enc := range encodings {
		t.Run(enc.name, func(t *testing.T) {
			conn, _ := dial(t, url, enc.opts...)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			st, err := e2ev1parley.NewStreamServiceClient(conn).Count(ctx, &e2ev1.CountRequest{})
			if err != nil {
				t.Fatal(err)
			}
			waitFor(t, "handler start", started)
			if _, err := st.Recv(); err != nil {
				t.Fatal(err)
			}
			// Dropped: the handler waits for credit, the connection
			// goes on.
			stillUp(t, conn)
			select {
			case err := <-ended:
				t.Fatalf("the handler ended (%v) while its stream's context lives", err)
			default:
			}
			cancel()
			if err := waitFor(t, "handler end", ended); parley.CodeOf(err) != parley.CodeCanceled {
				t.Fatalf("handler's Send: %v, want canceled", err)
			}
			stillUp(t, conn)
		})
	}
}

// TestTrialHandlerReturnsWhileClientSends: a client-streaming handler
// that answers after the first item. The client's Sends go on until they
// return io.EOF (never block for ever); CloseAndRecv then returns the
// response. A bidi handler that fails mid-stream: the client's Send gets
// io.EOF, Recv the error with its code, message and details.
func TestTrialHandlerReturnsWhileClientSends(t *testing.T) {
	h := &hookStreams{
		sum: func(ctx context.Context, s *parley.ClientStream[e2ev1.SumRequest]) (*e2ev1.SumResponse, error) {
			req, err := s.Recv()
			if err != nil {
				return nil, err
			}
			return &e2ev1.SumResponse{Sum: req.GetValue(), Count: 1}, nil
		},
		echo: func(ctx context.Context, s *parley.BidiStream[e2ev1.EchoItem, e2ev1.EchoItem]) error {
			for i := 0; ; i++ {
				item, err := s.Recv()
				if err != nil {
					return err
				}
				if i == 3 {
					e := parley.NewError(parley.CodeFailedPrecondition, "no more after "+item.GetText())
					if err := e.AddDetail(&e2ev1.EchoItem{Text: "detail", Token: item.GetText()}); err != nil {
						return err
					}
					return e
				}
				if err := s.Send(item); err != nil {
					return err
				}
			}
		},
	}
	_, url := trialServer(t, h)
	for _, enc := range encodings {
		t.Run(enc.name, func(t *testing.T) {
			conn, _ := dial(t, url, enc.opts...)
			sc := e2ev1parley.NewStreamServiceClient(conn)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()

			sum, err := sc.Sum(ctx)
			if err != nil {
				t.Fatal(err)
			}
			sent := within(t, "Sends after the handler returned", func() int {
				for i := range 1_000_000 {
					if err := sum.Send(&e2ev1.SumRequest{Value: 42}); err != nil {
						if !errors.Is(err, io.EOF) {
							t.Errorf("Send: %v, want io.EOF", err)
						}
						return i
					}
				}
				return -1
			})
			if sent < 0 {
				t.Fatal("a million Sends succeeded after the handler returned")
			}
			res, err := sum.CloseAndRecv()
			if err != nil || res.GetSum() != 42 || res.GetCount() != 1 {
				t.Fatalf("CloseAndRecv: %v, %v", res, err)
			}

			bidi, err := sc.Echo(ctx)
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			sendErr := within(t, "Sends after the handler failed", func() error {
				for i := range 1_000_000 {
					if err := bidi.Send(&e2ev1.EchoItem{Text: fmt.Sprint(i)}); err != nil {
						return err
					}
				}
				return nil
			})
			if !errors.Is(sendErr, io.EOF) {
				t.Fatalf("Send: %v, want io.EOF", sendErr)
			}
			var end error
			for {
				item, err := bidi.Recv()
				if err != nil {
					end = err
					break
				}
				got = append(got, item.GetText())
			}
			if fmt.Sprint(got) != "[0 1 2]" {
				t.Fatalf("items %v, want [0 1 2]", got)
			}
			var perr *parley.Error
			if !errors.As(end, &perr) || perr.Code() != parley.CodeFailedPrecondition || perr.Message() != "no more after 3" {
				t.Fatalf("outcome %v, want failed_precondition: no more after 3", end)
			}
			if len(perr.Details()) != 1 {
				t.Fatalf("%d details, want 1", len(perr.Details()))
			}
			var d e2ev1.EchoItem
			if err := perr.Details()[0].UnmarshalTo(&d); err != nil || d.GetText() != "detail" || d.GetToken() != "3" {
				t.Fatalf("detail %v, %v", &d, err)
			}
			if err := bidi.Send(&e2ev1.EchoItem{}); !errors.Is(err, io.EOF) {
				t.Fatalf("Send after the outcome: %v, want io.EOF", err)
			}
			if _, err := bidi.Recv(); !errors.Is(err, end) && err.Error() != end.Error() {
				t.Fatalf("Recv again: %v, want %v again", err, end)
			}
			stillUp(t, conn)
		})
	}
}

// TestTrialHandlerIgnoresCancellation: a handler that ignores its context
// and Sends in a loop after its client closed the stream: Send fails
// (canceled) rather than blocking for ever. A goroutine the handler
// leaked Sends after the handler returned: its Send fails, and the client
// sees nothing more than the clean end.
func TestTrialHandlerIgnoresCancellation(t *testing.T) {
	sendErr := make(chan error, 1)
	lateErr := make(chan error, 1)
	returned := make(chan struct{}, 1)
	h := &hookStreams{
		count: func(ctx context.Context, req *e2ev1.CountRequest, s *parley.ServerStream[e2ev1.CountResponse]) error {
			if req.GetFrom() == -1 {
				// Send once after the client gave up, with credit left.
				if err := s.Send(&e2ev1.CountResponse{N: -1}); err != nil {
					return err
				}
				<-ctx.Done()
				sendErr <- s.Send(&e2ev1.CountResponse{N: -2})
				return nil
			}
			for i := int32(0); ; i++ {
				if err := s.Send(&e2ev1.CountResponse{N: i}); err != nil {
					sendErr <- err
					return nil // ignores it too
				}
			}
		},
		echo: func(_ context.Context, s *parley.BidiStream[e2ev1.EchoItem, e2ev1.EchoItem]) error {
			if _, err := s.Recv(); err != nil {
				return err
			}
			go func() {
				<-returned
				lateErr <- s.Send(&e2ev1.EchoItem{Text: "late"})
			}()
			return nil
		},
	}
	_, url := trialServer(t, h)
	for _, enc := range encodings {
		t.Run(enc.name, func(t *testing.T) {
			conn, _ := dial(t, url, enc.opts...)
			sc := e2ev1parley.NewStreamServiceClient(conn)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()

			st, err := sc.Count(ctx, &e2ev1.CountRequest{})
			if err != nil {
				t.Fatal(err)
			}
			for want := range int32(100) {
				if item, err := st.Recv(); err != nil || item.GetN() != want {
					t.Fatalf("Recv: %v, %v, want %d", item, err, want)
				}
			}
			_ = st.Close()
			if err := waitFor(t, "the handler's Send failing", sendErr); parley.CodeOf(err) != parley.CodeCanceled {
				t.Fatalf("handler's Send: %v, want canceled", err)
			}
			// With credit left: the Send after the cancel still fails
			// (it used to send the item, for nobody).
			st, err = sc.Count(ctx, &e2ev1.CountRequest{From: -1})
			if err != nil {
				t.Fatal(err)
			}
			if item, err := st.Recv(); err != nil || item.GetN() != -1 {
				t.Fatalf("Recv: %v, %v", item, err)
			}
			_ = st.Close()
			if err := waitFor(t, "the handler's Send after the cancel", sendErr); parley.CodeOf(err) != parley.CodeCanceled {
				t.Fatalf("handler's Send after the cancel: %v, want canceled", err)
			}

			bidi, err := sc.Echo(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if err := bidi.Send(&e2ev1.EchoItem{Text: "x"}); err != nil {
				t.Fatal(err)
			}
			if err := within(t, "Recv", recvErr(bidi.Recv)); !errors.Is(err, io.EOF) {
				t.Fatalf("Recv: %v, want io.EOF", err)
			}
			returned <- struct{}{}
			if err := waitFor(t, "the late Send", lateErr); err == nil {
				t.Fatal("a Send after the handler returned: nil")
			}
			stillUp(t, conn)
		})
	}
}

// TestTrialHandlerPanicsMidStream: the client gets the items sent before
// the panic, then internal; the connection carries on.
func TestTrialHandlerPanicsMidStream(t *testing.T) {
	h := &hookStreams{
		count: func(_ context.Context, _ *e2ev1.CountRequest, s *parley.ServerStream[e2ev1.CountResponse]) error {
			for i := range int32(5) {
				if err := s.Send(&e2ev1.CountResponse{N: i}); err != nil {
					return err
				}
			}
			panic("trial: mid-stream")
		},
		sum: func(_ context.Context, s *parley.ClientStream[e2ev1.SumRequest]) (*e2ev1.SumResponse, error) {
			if _, err := s.Recv(); err != nil {
				return nil, err
			}
			panic("trial: mid-stream")
		},
	}
	_, url := trialServer(t, h)
	for _, enc := range encodings {
		t.Run(enc.name, func(t *testing.T) {
			conn, _ := dial(t, url, enc.opts...)
			sc := e2ev1parley.NewStreamServiceClient(conn)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			st, err := sc.Count(ctx, &e2ev1.CountRequest{})
			if err != nil {
				t.Fatal(err)
			}
			for want := range int32(5) {
				if item, err := st.Recv(); err != nil || item.GetN() != want {
					t.Fatalf("Recv: %v, %v, want %d", item, err, want)
				}
			}
			wantCode(t, within(t, "Recv", recvErr(st.Recv)), parley.CodeInternal)

			sum, err := sc.Sum(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if err := sum.Send(&e2ev1.SumRequest{Value: 1}); err != nil {
				t.Fatal(err)
			}
			wantCode(t, within(t, "CloseAndRecv", func() error { _, err := sum.CloseAndRecv(); return err }), parley.CodeInternal)
			stillUp(t, conn)
		})
	}
}

// TestTrialStreamDeadlineMidStream: a deadline that passes while items
// flow ends the stream with deadline_exceeded on both sides, after the
// items received in order.
func TestTrialStreamDeadlineMidStream(t *testing.T) {
	_, url := trialServer(t, &hookStreams{})
	for _, enc := range encodings {
		t.Run(enc.name, func(t *testing.T) {
			conn, _ := dial(t, url, enc.opts...)
			sc := e2ev1parley.NewStreamServiceClient(conn)
			ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
			defer cancel()
			token := "deadline-" + enc.name
			st, err := sc.Count(ctx, &e2ev1.CountRequest{Count: 1000, DelayMs: 5, Token: token})
			if err != nil {
				t.Fatal(err)
			}
			var n int32
			var end error
			for {
				item, err := st.Recv()
				if err != nil {
					end = err
					break
				}
				if item.GetN() != n {
					t.Fatalf("item %d, want %d", item.GetN(), n)
				}
				n++
			}
			wantCode(t, end, parley.CodeDeadlineExceeded)
			if n == 0 || n >= 1000 {
				t.Fatalf("%d items before the deadline", n)
			}
			out, err := sc.StreamOutcome(context.Background(), &e2ev1.StreamOutcomeRequest{Token: token})
			if err != nil || out.GetOutcome() != "deadline_exceeded" {
				t.Fatalf("handler's outcome: %v, %v; want deadline_exceeded", out, err)
			}
			stillUp(t, conn)
		})
	}
}

// echoOnce sends text on bidi and waits for it back: the stream is open on
// the server once it returns.
func echoOnce(t *testing.T, bidi *parley.BidiStreamClient[e2ev1.EchoItem, e2ev1.EchoItem], text string) {
	t.Helper()
	if err := bidi.Send(&e2ev1.EchoItem{Text: text}); err != nil {
		t.Fatalf("Send %s: %v", text, err)
	}
	var item *e2ev1.EchoItem
	err := within(t, "Recv "+text, func() (err error) { item, err = bidi.Recv(); return err })
	if err != nil || item.GetText() != text {
		t.Fatalf("Recv %s: %v, %v", text, item, err)
	}
}

// TestTrialMaxStreams: at WithMaxStreams open streams, the next fails
// with resource_exhausted; the slot comes back when a stream ends cleanly,
// is cancelled by its caller, or fails in its handler.
func TestTrialMaxStreams(t *testing.T) {
	_, url := trialServer(t, &hookStreams{}, parley.WithMaxStreams(3))
	for _, enc := range encodings {
		t.Run(enc.name, func(t *testing.T) {
			conn, _ := dial(t, url, enc.opts...)
			sc := e2ev1parley.NewStreamServiceClient(conn)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			open := func(name string) *parley.BidiStreamClient[e2ev1.EchoItem, e2ev1.EchoItem] {
				t.Helper()
				bidi, err := sc.Echo(ctx)
				if err != nil {
					t.Fatal(err)
				}
				echoOnce(t, bidi, name)
				return bidi
			}
			full := func() {
				t.Helper()
				bidi, err := sc.Echo(ctx)
				if err != nil {
					t.Fatal(err)
				}
				defer bidi.Close()
				_ = bidi.Send(&e2ev1.EchoItem{Text: "over"}) // nil or io.EOF: the refusal may be in
				err = within(t, "Recv on a refused stream", recvErr(bidi.Recv))
				wantCode(t, err, parley.CodeResourceExhausted)
				// A refused stream's count is not kept by anyone.
				sum, err := sc.Sum(ctx)
				if err != nil {
					t.Fatal(err)
				}
				wantCode(t, within(t, "CloseAndRecv on a refused stream", func() error { _, err := sum.CloseAndRecv(); return err }), parley.CodeResourceExhausted)
			}
			s1, s2, s3 := open("1"), open("2"), open("3")
			full()

			// A clean end frees its slot.
			_ = s1.CloseSend()
			if err := within(t, "Recv", recvErr(s1.Recv)); !errors.Is(err, io.EOF) {
				t.Fatal(err)
			}
			s4 := open("4")
			full()

			// So does a cancel.
			_ = s2.Close()
			s5 := open("5")
			full()

			// And a handler's error.
			if err := s3.Send(&e2ev1.EchoItem{Text: "fail", FailCode: "aborted"}); err != nil {
				t.Fatal(err)
			}
			wantCode(t, within(t, "Recv", recvErr(s3.Recv)), parley.CodeAborted)
			s6 := open("6")
			full()
			for _, s := range []*parley.BidiStreamClient[e2ev1.EchoItem, e2ev1.EchoItem]{s4, s5, s6} {
				_ = s.CloseSend()
				if err := within(t, "Recv", recvErr(s.Recv)); !errors.Is(err, io.EOF) {
					t.Fatal(err)
				}
			}
			a, b, c := open("a"), open("b"), open("c")
			full()
			for _, s := range []*parley.BidiStreamClient[e2ev1.EchoItem, e2ev1.EchoItem]{a, b, c} {
				_ = s.Close()
			}
		})
	}
}

// TestTrialItemOverMaxMessage: an item over the limit fails its Send
// with resource_exhausted, on either side, and the stream goes on (the
// next item flows, the stream ends cleanly), as does the connection.
func TestTrialItemOverMaxMessage(t *testing.T) {
	const limit = 32 << 10
	handlerErr := make(chan error, 4)
	h := &hookStreams{echo: func(_ context.Context, s *parley.BidiStream[e2ev1.EchoItem, e2ev1.EchoItem]) error {
		for {
			item, err := s.Recv()
			if errors.Is(err, io.EOF) {
				return nil
			}
			if err != nil {
				return err
			}
			if item.GetToken() == "grow" {
				// Reply with more than the client takes.
				err := s.Send(&e2ev1.EchoItem{Text: strings.Repeat(item.GetText(), 4)})
				handlerErr <- err
				if err == nil {
					continue
				}
			}
			if err := s.Send(item); err != nil {
				return err
			}
		}
	}}
	// The server takes at most limit bytes; the client (below) too.
	_, url := trialServer(t, h, parley.WithMaxMessageBytes(limit))
	for _, enc := range encodings {
		t.Run(enc.name, func(t *testing.T) {
			conn, _ := dial(t, url, append([]parley.ClientOption{parley.WithMaxMessageBytes(limit)}, enc.opts...)...)
			sc := e2ev1parley.NewStreamServiceClient(conn)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			bidi, err := sc.Echo(ctx)
			if err != nil {
				t.Fatal(err)
			}
			// Client to server.
			err = bidi.Send(&e2ev1.EchoItem{Text: strings.Repeat("x", limit+1)})
			wantCode(t, err, parley.CodeResourceExhausted)
			echoOnce(t, bidi, "after a large send")
			// Server to client: the handler's Send fails, the stream goes
			// on with the item itself.
			text := strings.Repeat("y", limit/3)
			if err := bidi.Send(&e2ev1.EchoItem{Text: text, Token: "grow"}); err != nil {
				t.Fatal(err)
			}
			wantCode(t, waitFor(t, "handler's Send", handlerErr), parley.CodeResourceExhausted)
			item, err := bidi.Recv()
			if err != nil || item.GetText() != text {
				t.Fatalf("Recv after the handler's large send: %d bytes, %v", len(item.GetText()), err)
			}
			echoOnce(t, bidi, "after a large reply")
			_ = bidi.CloseSend()
			if err := within(t, "Recv", recvErr(bidi.Recv)); !errors.Is(err, io.EOF) {
				t.Fatalf("end: %v", err)
			}
			// A client stream: the large item is not counted.
			sum, err := sc.Sum(ctx)
			if err != nil {
				t.Fatal(err)
			}
			_ = sum.Send(&e2ev1.SumRequest{Value: 1})
			wantCode(t, sum.Send(&e2ev1.SumRequest{Value: 100, FailCode: strings.Repeat("z", limit)}), parley.CodeResourceExhausted)
			_ = sum.Send(&e2ev1.SumRequest{Value: 2})
			res, err := sum.CloseAndRecv()
			if err != nil || res.GetSum() != 3 || res.GetCount() != 2 {
				t.Fatalf("CloseAndRecv: %v, %v", res, err)
			}
			stillUp(t, conn)
		})
	}
}

// TestTrialEmptyMessages: empty messages as items, as a server stream's
// items, as a client stream's response.
func TestTrialEmptyMessages(t *testing.T) {
	_, url := trialServer(t, &hookStreams{})
	for _, enc := range encodings {
		t.Run(enc.name, func(t *testing.T) {
			conn, _ := dial(t, url, enc.opts...)
			sc := e2ev1parley.NewStreamServiceClient(conn)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()

			bidi, err := sc.Echo(ctx)
			if err != nil {
				t.Fatal(err)
			}
			const n = 300
			go func() {
				for range n {
					if err := bidi.Send(&e2ev1.EchoItem{}); err != nil {
						t.Errorf("Send: %v", err)
						return
					}
				}
				_ = bidi.CloseSend()
			}()
			got := 0
			for {
				item, err := bidi.Recv()
				if errors.Is(err, io.EOF) {
					break
				}
				if err != nil {
					t.Fatalf("Recv after %d: %v", got, err)
				}
				if item.GetText() != "" {
					t.Fatalf("item %v", item)
				}
				got++
			}
			if got != n {
				t.Fatalf("%d empty items back, want %d", got, n)
			}

			// From 0: the first item is the empty message.
			st, err := sc.Count(ctx, &e2ev1.CountRequest{From: 0, Count: 1})
			if err != nil {
				t.Fatal(err)
			}
			if item, err := st.Recv(); err != nil || item.GetN() != 0 {
				t.Fatalf("Recv: %v, %v", item, err)
			}
			if _, err := st.Recv(); !errors.Is(err, io.EOF) {
				t.Fatalf("end: %v", err)
			}

			// A client stream of no items: its response (the empty
			// message) comes back, not io.EOF.
			sum, err := sc.Sum(ctx)
			if err != nil {
				t.Fatal(err)
			}
			res, err := sum.CloseAndRecv()
			if err != nil || res == nil || res.GetCount() != 0 {
				t.Fatalf("CloseAndRecv of no items: %v, %v", res, err)
			}
			sum, err = sc.Sum(ctx)
			if err != nil {
				t.Fatal(err)
			}
			for range n {
				if err := sum.Send(&e2ev1.SumRequest{}); err != nil {
					t.Fatal(err)
				}
			}
			res, err = sum.CloseAndRecv()
			if err != nil || res.GetCount() != n {
				t.Fatalf("CloseAndRecv of empty items: %v, %v", res, err)
			}
		})
	}
}

// TestTrialManyShortStreams: 5,000 short streams of every kind and ending
// (clean, cancelled mid-way, failed by the handler, past a deadline),
// four at a time under WithMaxStreams(4); then four streams open at once
// still fit (no slot leaked), and once everything closes the goroutines
// are back to the baseline.
func TestTrialManyShortStreams(t *testing.T) {
	base := runtime.NumGoroutine()
	const maxStreams = 4
	srv := parley.NewServer(parley.WithMaxStreams(maxStreams), parley.WithStreamBufferBytes(256<<10))
	e2ev1parley.RegisterStreamServiceServer(srv, &e2e.StreamService{})
	hs := httptest.NewServer(srv)
	url := "ws" + strings.TrimPrefix(hs.URL, "http")
	var conns []*parley.Conn
	for _, enc := range encodings {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		conn, err := parley.Dial(ctx, url, append([]parley.ClientOption{parley.WithStreamBufferBytes(256 << 10)}, enc.opts...)...)
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, conn)
	}
	const total = 5000
	var next atomic.Int64
	var wg sync.WaitGroup
	for g := range maxStreams {
		conn := conns[g%len(conns)]
		sc := e2ev1parley.NewStreamServiceClient(conn)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				k := next.Add(1)
				if k > total || t.Failed() {
					return
				}
				if err := shortStream(sc, int(k)); err != nil {
					t.Errorf("stream %d: %v", k, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	// Every slot is free again, on both connections.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, conn := range conns {
		sc := e2ev1parley.NewStreamServiceClient(conn)
		var held []*parley.BidiStreamClient[e2ev1.EchoItem, e2ev1.EchoItem]
		for i := range maxStreams {
			bidi, err := sc.Echo(ctx)
			if err != nil {
				t.Fatal(err)
			}
			echoOnce(t, bidi, fmt.Sprint("held", i))
			held = append(held, bidi)
		}
		for _, b := range held {
			_ = b.CloseSend()
			if err := within(t, "Recv", recvErr(b.Recv)); !errors.Is(err, io.EOF) {
				t.Fatal(err)
			}
		}
	}
	for _, conn := range conns {
		_ = conn.Close()
	}
	if err := srv.Shutdown(ctx); err != nil {
		t.Errorf("Shutdown: %v", err)
	}
	hs.Close()
	waitGoroutines(t, base)
}

// shortStream runs stream k of TestTrialManyShortStreams, its kind and
// ending chosen by k.
func shortStream(sc e2ev1parley.StreamServiceClient, k int) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	switch k % 6 {
	case 0: // server stream, read to the end
		st, err := sc.Count(ctx, &e2ev1.CountRequest{From: int32(k), Count: 3})
		if err != nil {
			return err
		}
		for i := range int32(3) {
			item, err := st.Recv()
			if err != nil || item.GetN() != int32(k)+i {
				return fmt.Errorf("item %d: %v, %v", i, item, err)
			}
		}
		if _, err := st.Recv(); !errors.Is(err, io.EOF) {
			return fmt.Errorf("end: %v", err)
		}
	case 1: // server stream, closed after one item of many
		st, err := sc.Count(ctx, &e2ev1.CountRequest{Count: 1 << 20})
		if err != nil {
			return err
		}
		if _, err := st.Recv(); err != nil {
			return err
		}
		_ = st.Close()
		if _, err := st.Recv(); parley.CodeOf(err) != parley.CodeCanceled {
			return fmt.Errorf("after Close: %v", err)
		}
	case 2: // client stream
		sum, err := sc.Sum(ctx)
		if err != nil {
			return err
		}
		for range 2 {
			if err := sum.Send(&e2ev1.SumRequest{Value: int64(k)}); err != nil {
				return err
			}
		}
		res, err := sum.CloseAndRecv()
		if err != nil || res.GetSum() != 2*int64(k) {
			return fmt.Errorf("CloseAndRecv: %v, %v", res, err)
		}
	case 3: // bidi, one round trip
		bidi, err := sc.Echo(ctx)
		if err != nil {
			return err
		}
		if err := bidi.Send(&e2ev1.EchoItem{Text: fmt.Sprint(k)}); err != nil {
			return err
		}
		if item, err := bidi.Recv(); err != nil || item.GetText() != fmt.Sprint(k) {
			return fmt.Errorf("Recv: %v, %v", item, err)
		}
		_ = bidi.CloseSend()
		if _, err := bidi.Recv(); !errors.Is(err, io.EOF) {
			return fmt.Errorf("end: %v", err)
		}
	case 4: // bidi failed by its handler, with items still being sent
		bidi, err := sc.Echo(ctx)
		if err != nil {
			return err
		}
		if err := bidi.Send(&e2ev1.EchoItem{Text: "f", FailCode: "aborted"}); err != nil {
			return err
		}
		for bidi.Send(&e2ev1.EchoItem{Text: "more"}) == nil {
		}
		if _, err := bidi.Recv(); parley.CodeOf(err) != parley.CodeAborted {
			return fmt.Errorf("Recv: %v, want aborted", err)
		}
	case 5: // server stream past its deadline, items queued unread
		dctx, dcancel := context.WithTimeout(ctx, time.Millisecond)
		defer dcancel()
		st, err := sc.Count(dctx, &e2ev1.CountRequest{Count: 1 << 20})
		if err != nil {
			if parley.CodeOf(err) == parley.CodeDeadlineExceeded {
				return nil
			}
			return err
		}
		<-dctx.Done()
		for {
			_, err := st.Recv()
			if err == nil {
				continue
			}
			if parley.CodeOf(err) != parley.CodeDeadlineExceeded {
				return fmt.Errorf("past the deadline: %v", err)
			}
			break
		}
	}
	return nil
}

// TestTrialSocketDropMidStream: a socket that drops under open streams
// ends them with unavailable on both sides (the client after the items it
// had received; the handler in its Send or Recv); the reconnected Conn
// carries a new stream.
func TestTrialSocketDropMidStream(t *testing.T) {
	handlerErr := make(chan error, 4)
	sending := make(chan struct{}, 4)
	h := &hookStreams{
		count: func(ctx context.Context, _ *e2ev1.CountRequest, s *parley.ServerStream[e2ev1.CountResponse]) error {
			for i := int32(0); ; i++ {
				if err := s.Send(&e2ev1.CountResponse{N: i}); err != nil {
					handlerErr <- err
					return err
				}
				if i == 10 {
					sending <- struct{}{}
				}
			}
		},
		echo: func(ctx context.Context, s *parley.BidiStream[e2ev1.EchoItem, e2ev1.EchoItem]) error {
			for {
				item, err := s.Recv()
				if errors.Is(err, io.EOF) {
					return nil
				}
				if err != nil {
					handlerErr <- err
					return err
				}
				if err := s.Send(item); err != nil {
					handlerErr <- err
					return err
				}
			}
		},
	}
	_, url := trialServer(t, h)
	proxy := newCutProxy(t, strings.TrimPrefix(url, "ws://"), func() cutPlan { return cutPlan{up: -1, down: -1} })
	defer proxy.close()
	for _, enc := range encodings {
		t.Run(enc.name, func(t *testing.T) {
			opened := make(chan struct{}, 4)
			conn, _ := dial(t, proxy.url(), append([]parley.ClientOption{
				parley.WithReconnect(parley.Backoff{Initial: 5 * time.Millisecond, Max: 20 * time.Millisecond, Multiplier: 2}),
			}, enc.opts...)...)
			conn.OnStateChange(func(st parley.ConnState) {
				if st.Status == parley.StatusOpen && st.Reconnected {
					opened <- struct{}{}
				}
			})
			sc := e2ev1parley.NewStreamServiceClient(conn)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			count, err := sc.Count(ctx, &e2ev1.CountRequest{})
			if err != nil {
				t.Fatal(err)
			}
			waitFor(t, "the handler sending", sending)
			bidi, err := sc.Echo(ctx)
			if err != nil {
				t.Fatal(err)
			}
			echoOnce(t, bidi, "before")
			proxy.mu.Lock()
			for l := range proxy.links {
				l.drop()
			}
			proxy.mu.Unlock()
			for range 2 {
				wantCode(t, waitFor(t, "a handler's end", handlerErr), parley.CodeUnavailable)
			}
			var n int32
			for {
				item, err := count.Recv()
				if err != nil {
					wantCode(t, err, parley.CodeUnavailable)
					break
				}
				if item.GetN() != n {
					t.Fatalf("item %d, want %d", item.GetN(), n)
				}
				n++
			}
			if n < 11 {
				t.Fatalf("%d items before the drop, want the 11 the handler sent at least", n)
			}
			wantCode(t, within(t, "bidi Recv", recvErr(bidi.Recv)), parley.CodeUnavailable)
			if err := within(t, "bidi Send", func() error { return bidi.Send(&e2ev1.EchoItem{}) }); err == nil {
				t.Fatal("Send on a dropped stream: nil")
			}
			waitFor(t, "reconnected", opened)
			bidi, err = sc.Echo(ctx)
			if err != nil {
				t.Fatal(err)
			}
			echoOnce(t, bidi, "after")
			_ = bidi.CloseSend()
			if err := within(t, "Recv", recvErr(bidi.Recv)); !errors.Is(err, io.EOF) {
				t.Fatal(err)
			}
		})
	}
}

// TestTrialServerStreamCancelledAsItOpens: a server stream whose context
// is cancelled while Count opens it fails with canceled, at the open or in
// Recv; never with a bare io.EOF from the open (which reads as "unknown").
func TestTrialServerStreamCancelledAsItOpens(t *testing.T) {
	_, url := trialServer(t, &hookStreams{})
	for _, enc := range encodings {
		t.Run(enc.name, func(t *testing.T) {
			conn, _ := dial(t, url, enc.opts...)
			sc := e2ev1parley.NewStreamServiceClient(conn)
			codes := map[string]int{}
			for k := range 3000 {
				ctx, cancel := context.WithCancel(context.Background())
				ready := make(chan struct{})
				go func() {
					<-ready
					for range k % 50 {
						runtime.Gosched()
					}
					cancel()
				}()
				close(ready)
				st, err := sc.Count(ctx, &e2ev1.CountRequest{Count: 1})
				if err != nil {
					codes["open "+parley.CodeOf(err).String()]++
					if parley.CodeOf(err) != parley.CodeCanceled {
						t.Fatalf("open %d: %v (code %v), want canceled", k, err, parley.CodeOf(err))
					}
					cancel()
					continue
				}
				for {
					_, err := st.Recv()
					if err == nil {
						continue
					}
					if !errors.Is(err, io.EOF) && parley.CodeOf(err) != parley.CodeCanceled {
						t.Fatalf("Recv %d: %v, want io.EOF or canceled", k, err)
					}
					codes["recv "+fmt.Sprint(err)[:min(8, len(fmt.Sprint(err)))]]++
					break
				}
				cancel()
			}
			t.Logf("%v", codes)
		})
	}
}

// TestTrialCloseWhileSendingAndReceiving: Close from a third goroutine
// while one goroutine Sends (often waiting for credit) and another Recvs:
// both return (Send io.EOF or canceled, Recv canceled), with -race quiet.
func TestTrialCloseWhileSendingAndReceiving(t *testing.T) {
	release := make(chan struct{})
	defer close(release)
	h := &hookStreams{echo: func(ctx context.Context, s *parley.BidiStream[e2ev1.EchoItem, e2ev1.EchoItem]) error {
		// Echo the first half window, then stop reading: the client's
		// Sends wait for credit.
		for range 32 {
			item, err := s.Recv()
			if err != nil {
				return err
			}
			if err := s.Send(item); err != nil {
				return err
			}
		}
		<-ctx.Done()
		return ctx.Err()
	}}
	_, url := trialServer(t, h)
	for _, enc := range encodings {
		t.Run(enc.name, func(t *testing.T) {
			conn, _ := dial(t, url, enc.opts...)
			sc := e2ev1parley.NewStreamServiceClient(conn)
			for k := range 50 {
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				bidi, err := sc.Echo(ctx)
				if err != nil {
					t.Fatal(err)
				}
				sendErr, recvErr := make(chan error, 1), make(chan error, 1)
				got := make(chan struct{})
				go func() {
					for {
						if err := bidi.Send(&e2ev1.EchoItem{Text: "x"}); err != nil {
							sendErr <- err
							return
						}
					}
				}()
				go func() {
					for n := 0; ; n++ {
						if n == k%32+1 {
							close(got)
						}
						if _, err := bidi.Recv(); err != nil {
							recvErr <- err
							return
						}
					}
				}()
				waitFor(t, "items", got)
				_ = bidi.Close()
				if err := waitFor(t, "Send", sendErr); !errors.Is(err, io.EOF) && parley.CodeOf(err) != parley.CodeCanceled {
					t.Fatalf("Send after Close: %v", err)
				}
				wantCode(t, waitFor(t, "Recv", recvErr), parley.CodeCanceled)
				cancel()
			}
			stillUp(t, conn)
		})
	}
}

// TestTrialTinyWindows: windows of one item and of 100 bytes on both
// sides, items of 10 KB (each larger than the byte window, so each goes
// alone): everything arrives, in order, in both directions.
func TestTrialTinyWindows(t *testing.T) {
	small := []parley.Option{parley.WithStreamWindow(1), parley.WithStreamWindowBytes(100)}
	var sopts []parley.ServerOption
	for _, o := range small {
		sopts = append(sopts, o)
	}
	_, url := trialServer(t, &hookStreams{}, sopts...)
	for _, enc := range encodings {
		t.Run(enc.name, func(t *testing.T) {
			copts := append([]parley.ClientOption(nil), enc.opts...)
			for _, o := range small {
				copts = append(copts, o)
			}
			conn, _ := dial(t, url, copts...)
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			bidi, err := e2ev1parley.NewStreamServiceClient(conn).Echo(ctx)
			if err != nil {
				t.Fatal(err)
			}
			const n = 200
			go func() {
				for i := range n {
					if err := bidi.Send(&e2ev1.EchoItem{Text: fmt.Sprintf("%05d%s", i, strings.Repeat("p", 10_000))}); err != nil {
						t.Errorf("Send %d: %v", i, err)
						return
					}
				}
				_ = bidi.CloseSend()
			}()
			for i := 0; ; i++ {
				item, err := bidi.Recv()
				if errors.Is(err, io.EOF) {
					if i != n {
						t.Fatalf("%d items, want %d", i, n)
					}
					break
				}
				if err != nil {
					t.Fatalf("Recv %d: %v", i, err)
				}
				if got := item.GetText()[:5]; got != fmt.Sprintf("%05d", i) {
					t.Fatalf("item %s, want %05d", got, i)
				}
			}
		})
	}
}

// TestTrialMethodTimeoutCoversTheStream: a streaming method's timeout_ms
// (here on a spec of the user's own for the same procedure) is the
// stream's deadline when ctx has none: the caller gets deadline_exceeded
// and so does the handler, through the Call's timeout.
func TestTrialMethodTimeoutCoversTheStream(t *testing.T) {
	_, url := trialServer(t, &hookStreams{})
	spec := &parley.MethodSpec{Procedure: e2ev1parley.StreamServiceEchoProcedure, Kind: parley.StreamBidi, Timeout: 100 * time.Millisecond}
	for _, enc := range encodings {
		t.Run(enc.name, func(t *testing.T) {
			conn, _ := dial(t, url, enc.opts...)
			start := time.Now()
			bidi, err := parley.CallBidiStream[e2ev1.EchoItem, e2ev1.EchoItem](context.Background(), conn, spec)
			if err != nil {
				t.Fatal(err)
			}
			token := "method-timeout-" + enc.name
			if err := bidi.Send(&e2ev1.EchoItem{Text: "x", Token: token}); err != nil {
				t.Fatal(err)
			}
			var end error
			for end == nil {
				_, end = bidi.Recv()
			}
			wantCode(t, end, parley.CodeDeadlineExceeded)
			if el := time.Since(start); el < 100*time.Millisecond || el > 3*time.Second {
				t.Fatalf("ended after %v, want about 100ms", el)
			}
			out, err := e2ev1parley.NewStreamServiceClient(conn).StreamOutcome(context.Background(), &e2ev1.StreamOutcomeRequest{Token: token})
			if err != nil || out.GetOutcome() != "deadline_exceeded" || out.GetItems() != 1 {
				t.Fatalf("handler's outcome: %v, %v; want deadline_exceeded after 1 item", out, err)
			}
		})
	}
}
