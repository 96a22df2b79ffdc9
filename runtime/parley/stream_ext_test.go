package parley_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"google.golang.org/protobuf/proto"

	parleyv1 "github.com/parleyrpc/parley/gen/parley/v1"
	e2ev1 "github.com/parleyrpc/parley/internal/e2e/gen/e2e/v1"
	"github.com/parleyrpc/parley/runtime/parley"
)

// Hand-written specs stand in for generated code here, so these tests
// exercise the runtime alone.
var (
	countSpec  = &parley.MethodSpec{Procedure: "/test.Streams/Count", Kind: parley.StreamServer}
	sumSpec    = &parley.MethodSpec{Procedure: "/test.Streams/Sum", Kind: parley.StreamClient}
	echoesSpec = &parley.MethodSpec{Procedure: "/test.Streams/Echoes", Kind: parley.StreamBidi}
	unarySpec  = &parley.MethodSpec{Procedure: "/test.Streams/Unary"}
)

type streamServer struct {
	started chan string // handler names, as they start
	ended   chan error  // handler context errors, as they end
}

func newStreamServer(t *testing.T, opts ...parley.ServerOption) (*streamServer, string) {
	t.Helper()
	ss := &streamServer{started: make(chan string, 1000), ended: make(chan error, 1000)}
	srv := parley.NewServer(opts...)
	// Count sends req.Ms items, numbered in Text, then ends; Token "fail"
	// fails after them.
	srv.Register(parley.NewServerStreamMethod(countSpec, func(ctx context.Context, req *e2ev1.SleepRequest, s *parley.ServerStream[e2ev1.EchoResponse]) error {
		ss.started <- "count"
		defer func() { ss.ended <- ctx.Err() }()
		for i := range int(req.GetMs()) {
			if err := s.Send(&e2ev1.EchoResponse{Text: fmt.Sprint(i)}); err != nil {
				return err
			}
		}
		if req.GetToken() == "fail" {
			return parley.NewError(parley.CodeDataLoss, "failed after the items")
		}
		if req.GetToken() == "hang" {
			<-ctx.Done()
			return ctx.Err()
		}
		return nil
	}))
	srv.Register(parley.NewClientStreamMethod(sumSpec, func(ctx context.Context, s *parley.ClientStream[e2ev1.EchoRequest]) (*e2ev1.EchoResponse, error) {
		ss.started <- "sum"
		var parts []string
		for {
			req, err := s.Recv()
			if errors.Is(err, io.EOF) {
				return &e2ev1.EchoResponse{Text: strings.Join(parts, ",")}, nil
			}
			if err != nil {
				ss.ended <- err
				return nil, err
			}
			parts = append(parts, req.GetText())
		}
	}))
	srv.Register(parley.NewBidiStreamMethod(echoesSpec, func(ctx context.Context, s *parley.BidiStream[e2ev1.EchoRequest, e2ev1.EchoResponse]) error {
		ss.started <- "echoes"
		defer func() { ss.ended <- ctx.Err() }()
		for {
			req, err := s.Recv()
			if errors.Is(err, io.EOF) {
				return nil
			}
			if err != nil {
				return err
			}
			if req.GetText() == "stall" {
				<-ctx.Done()
				return ctx.Err()
			}
			if err := s.Send(&e2ev1.EchoResponse{Text: req.GetText(), Data: req.GetData()}); err != nil {
				return err
			}
		}
	}))
	srv.Register(parley.NewUnaryMethod(unarySpec, func(ctx context.Context, r *e2ev1.EchoRequest) (*e2ev1.EchoResponse, error) {
		return &e2ev1.EchoResponse{Text: r.Text}, nil
	}))
	return ss, serveWS(t, srv)
}

func dialT(t *testing.T, url string, opts ...parley.ClientOption) *parley.Conn {
	t.Helper()
	conn, err := parley.Dial(context.Background(), url, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return conn
}

func TestStreamKindsRoundTrip(t *testing.T) {
	_, url := newStreamServer(t)
	for _, opts := range [][]parley.ClientOption{nil, {parley.WithJSON()}} {
		conn := dialT(t, url, opts...)
		ctx := context.Background()

		// Server streaming, longer than the window.
		n := 3*parley.DefaultStreamWindow + 5
		ss, err := parley.CallServerStream[e2ev1.EchoResponse](ctx, conn, countSpec, &e2ev1.SleepRequest{Ms: uint32(n)})
		if err != nil {
			t.Fatal(err)
		}
		for i := range n {
			res, err := ss.Recv()
			if err != nil {
				t.Fatalf("item %d: %v", i, err)
			}
			if res.GetText() != fmt.Sprint(i) {
				t.Fatalf("item %d is %q", i, res.GetText())
			}
		}
		if _, err := ss.Recv(); !errors.Is(err, io.EOF) {
			t.Fatalf("after the last item: %v, want io.EOF", err)
		}

		// Client streaming.
		cs, err := parley.CallClientStream[e2ev1.EchoRequest, e2ev1.EchoResponse](ctx, conn, sumSpec)
		if err != nil {
			t.Fatal(err)
		}
		var want []string
		for i := range 200 {
			want = append(want, fmt.Sprint(i))
			if err := cs.Send(&e2ev1.EchoRequest{Text: fmt.Sprint(i)}); err != nil {
				t.Fatal(err)
			}
		}
		res, err := cs.CloseAndRecv()
		if err != nil {
			t.Fatal(err)
		}
		if res.GetText() != strings.Join(want, ",") {
			t.Fatalf("sum got %q", res.GetText())
		}

		// Bidi: interleaved sends and receives.
		bs, err := parley.CallBidiStream[e2ev1.EchoRequest, e2ev1.EchoResponse](ctx, conn, echoesSpec)
		if err != nil {
			t.Fatal(err)
		}
		for i := range 300 {
			if err := bs.Send(&e2ev1.EchoRequest{Text: fmt.Sprint(i)}); err != nil {
				t.Fatal(err)
			}
			res, err := bs.Recv()
			if err != nil || res.GetText() != fmt.Sprint(i) {
				t.Fatalf("echo %d: %v %v", i, res, err)
			}
		}
		if err := bs.CloseSend(); err != nil {
			t.Fatal(err)
		}
		if _, err := bs.Recv(); !errors.Is(err, io.EOF) {
			t.Fatalf("after CloseSend: %v, want io.EOF", err)
		}
	}
}

// TestStreamsInterleaveWithUnary runs 100 bidi streams and unary calls at
// once on one socket.
func TestStreamsInterleaveWithUnary(t *testing.T) {
	_, url := newStreamServer(t)
	conn := dialT(t, url)
	ctx := context.Background()
	var wg sync.WaitGroup
	for i := range 100 {
		wg.Add(2)
		go func() {
			defer wg.Done()
			bs, err := parley.CallBidiStream[e2ev1.EchoRequest, e2ev1.EchoResponse](ctx, conn, echoesSpec)
			if err != nil {
				t.Error(err)
				return
			}
			for j := range 50 {
				text := fmt.Sprintf("%d/%d", i, j)
				if err := bs.Send(&e2ev1.EchoRequest{Text: text}); err != nil {
					t.Error(err)
					return
				}
				res, err := bs.Recv()
				if err != nil || res.GetText() != text {
					t.Errorf("stream %d got %v, %v; want %s", i, res, err, text)
					return
				}
			}
			_ = bs.CloseSend()
			if _, err := bs.Recv(); !errors.Is(err, io.EOF) {
				t.Errorf("stream %d end: %v", i, err)
			}
		}()
		go func() {
			defer wg.Done()
			for j := range 20 {
				res := new(e2ev1.EchoResponse)
				text := fmt.Sprintf("u%d/%d", i, j)
				if err := conn.Invoke(ctx, unarySpec, &e2ev1.EchoRequest{Text: text}, res); err != nil || res.GetText() != text {
					t.Errorf("unary got %v, %v", res, err)
					return
				}
			}
		}()
	}
	wg.Wait()
}

// TestStalledStreamStallsOnlyItself: a stream whose reader never reads
// fills its window and stops; another stream and unary calls on the same
// socket go on, and the stalled handler waits in Send (bounded memory).
func TestStalledStreamStallsOnlyItself(t *testing.T) {
	ss, url := newStreamServer(t)
	conn := dialT(t, url)
	ctx, cancel := context.WithCancel(context.Background())
	stalled, err := parley.CallServerStream[e2ev1.EchoResponse](ctx, conn, countSpec, &e2ev1.SleepRequest{Ms: 1_000_000})
	if err != nil {
		t.Fatal(err)
	}
	<-ss.started
	// Never read stalled; meanwhile another stream completes.
	start := time.Now()
	other, err := parley.CallServerStream[e2ev1.EchoResponse](context.Background(), conn, countSpec, &e2ev1.SleepRequest{Ms: 1000})
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; ; i++ {
		if _, err := other.Recv(); errors.Is(err, io.EOF) {
			if i != 1000 {
				t.Fatalf("got %d items, want 1000", i)
			}
			break
		} else if err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("1000 items on a second stream took %v beside a stalled one", time.Since(start))
	cancel()
	if _, err := stalled.Recv(); parley.CodeOf(err) != parley.CodeCanceled {
		t.Fatalf("stalled stream after cancel: %v", err)
	}
}

// TestStreamEndings checks server errors mid-stream, client cancellation
// and deadlines reach the other side with the right code.
func TestStreamEndings(t *testing.T) {
	ss, url := newStreamServer(t)
	conn := dialT(t, url)

	// Server error after some items: items first, then the error.
	s, err := parley.CallServerStream[e2ev1.EchoResponse](context.Background(), conn, countSpec, &e2ev1.SleepRequest{Ms: 3, Token: "fail"})
	if err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if _, err := s.Recv(); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.Recv(); parley.CodeOf(err) != parley.CodeDataLoss {
		t.Fatalf("got %v, want data_loss", err)
	}
	<-ss.started
	<-ss.ended

	// Cancel mid-stream reaches the handler.
	ctx, cancel := context.WithCancel(context.Background())
	s, err = parley.CallServerStream[e2ev1.EchoResponse](ctx, conn, countSpec, &e2ev1.SleepRequest{Ms: 1, Token: "hang"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Recv(); err != nil {
		t.Fatal(err)
	}
	<-ss.started
	cancel()
	if err := <-ss.ended; !errors.Is(err, context.Canceled) {
		t.Fatalf("handler context ended with %v, want canceled", err)
	}
	if _, err := s.Recv(); parley.CodeOf(err) != parley.CodeCanceled {
		t.Fatalf("client got %v, want canceled", err)
	}

	// A deadline mid-stream ends both sides with deadline_exceeded.
	ctx, cancel = context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	s, err = parley.CallServerStream[e2ev1.EchoResponse](ctx, conn, countSpec, &e2ev1.SleepRequest{Ms: 1, Token: "hang"})
	if err != nil {
		t.Fatal(err)
	}
	<-ss.started
	if _, err := s.Recv(); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Recv(); parley.CodeOf(err) != parley.CodeDeadlineExceeded {
		t.Fatalf("client got %v, want deadline_exceeded", err)
	}
	if err := <-ss.ended; !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("handler context ended with %v, want deadline exceeded", err)
	}
}

// TestSocketClosedMidStream: closing the connection ends open streams.
func TestSocketClosedMidStream(t *testing.T) {
	ss, url := newStreamServer(t)
	conn, err := parley.Dial(context.Background(), url)
	if err != nil {
		t.Fatal(err)
	}
	bs, err := parley.CallBidiStream[e2ev1.EchoRequest, e2ev1.EchoResponse](context.Background(), conn, echoesSpec)
	if err != nil {
		t.Fatal(err)
	}
	if err := bs.Send(&e2ev1.EchoRequest{Text: "stall"}); err != nil {
		t.Fatal(err)
	}
	<-ss.started
	_ = conn.Close()
	if _, err := bs.Recv(); parley.CodeOf(err) != parley.CodeCanceled && parley.CodeOf(err) != parley.CodeUnavailable {
		t.Fatalf("got %v, want the stream ended by the close", err)
	}
	if err := <-ss.ended; err == nil {
		t.Fatal("handler context still alive after the socket closed")
	}
}

// TestMaxStreams refuses streams beyond the limit.
func TestMaxStreams(t *testing.T) {
	ss, url := newStreamServer(t, parley.WithMaxStreams(2))
	conn := dialT(t, url)
	var open []*parley.BidiStreamClient[e2ev1.EchoRequest, e2ev1.EchoResponse]
	for range 2 {
		bs, err := parley.CallBidiStream[e2ev1.EchoRequest, e2ev1.EchoResponse](context.Background(), conn, echoesSpec)
		if err != nil {
			t.Fatal(err)
		}
		open = append(open, bs)
		<-ss.started
	}
	third, err := parley.CallBidiStream[e2ev1.EchoRequest, e2ev1.EchoResponse](context.Background(), conn, echoesSpec)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := third.Recv(); parley.CodeOf(err) != parley.CodeResourceExhausted {
		t.Fatalf("third stream: %v, want resource_exhausted", err)
	}
	for _, bs := range open {
		_ = bs.CloseSend()
		if _, err := bs.Recv(); !errors.Is(err, io.EOF) {
			t.Fatal(err)
		}
	}
}

// TestCancelledStreamFreesItsSlot: a stream the caller cancelled stops
// counting against WithMaxStreams when its Cancel arrives, not when its
// handler returns, so a caller that frees a slot and opens another stream
// at once is not refused while the old handler winds down.
func TestCancelledStreamFreesItsSlot(t *testing.T) {
	started, release := make(chan struct{}, 3), make(chan struct{})
	srv := parley.NewServer(parley.WithMaxStreams(2))
	srv.Register(parley.NewBidiStreamMethod(echoesSpec, func(ctx context.Context, s *parley.BidiStream[e2ev1.EchoRequest, e2ev1.EchoResponse]) error {
		started <- struct{}{}
		for {
			req, err := s.Recv()
			if errors.Is(err, io.EOF) {
				return nil
			}
			if err != nil {
				<-release // a handler slow to wind down after its cancellation
				return err
			}
			if err := s.Send(&e2ev1.EchoResponse{Text: req.GetText()}); err != nil {
				return err
			}
		}
	}))
	hs := httptest.NewServer(srv)
	t.Cleanup(func() {
		close(release)
		_ = srv.Shutdown(context.Background())
		hs.Close()
	})
	conn := dialT(t, "ws"+strings.TrimPrefix(hs.URL, "http")+"/")
	open := func() *parley.BidiStreamClient[e2ev1.EchoRequest, e2ev1.EchoResponse] {
		t.Helper()
		bs, err := parley.CallBidiStream[e2ev1.EchoRequest, e2ev1.EchoResponse](context.Background(), conn, echoesSpec)
		if err != nil {
			t.Fatal(err)
		}
		return bs
	}
	first, second := open(), open()
	<-started
	<-started
	_ = first.Close() // Cancel; its handler stays until release
	third := open()
	if err := third.Send(&e2ev1.EchoRequest{Text: "room"}); err != nil {
		t.Fatal(err)
	}
	if res, err := third.Recv(); err != nil || res.GetText() != "room" {
		t.Fatalf("stream opened after a cancelled one: %v, %v; want the echo", res, err)
	}
	for _, bs := range []*parley.BidiStreamClient[e2ev1.EchoRequest, e2ev1.EchoResponse]{second, third} {
		_ = bs.CloseSend()
		if _, err := bs.Recv(); !errors.Is(err, io.EOF) {
			t.Fatal(err)
		}
	}
}

// TestStreamBufferBytesBound: items a peer sends within its credit but
// that nobody reads are bounded in bytes per connection too
// (WithStreamBufferBytes): the stream that would pass the bound ends with
// resource_exhausted, and what it held is released for the others.
func TestStreamBufferBytesBound(t *testing.T) {
	_, url := newStreamServer(t, parley.WithStreamWindow(1000), parley.WithStreamBufferBytes(64<<10))
	p := dialRaw(t, url, 0, nil)
	item := func(text string) []byte {
		b, _ := proto.Marshal(&e2ev1.EchoRequest{Text: text, Data: make([]byte, 8<<10)})
		return b
	}
	send := func(id uint64, payload []byte) {
		p.write(t, &parleyv1.Frame{Kind: &parleyv1.Frame_Item{Item: &parleyv1.StreamItem{Id: id, Body: &parleyv1.StreamItem_Payload{Payload: payload}}}})
	}
	// Stream 1's handler takes the first item and stalls; 8 KiB items
	// then pile up, well within the window of 1000.
	p.write(t, &parleyv1.Frame{Kind: &parleyv1.Frame_Call{Call: &parleyv1.Call{Id: 1, Method: echoesSpec.Procedure}}})
	send(1, item("stall"))
	for range 20 {
		send(1, item("queued"))
	}
	for {
		f := p.read(t)
		if e := f.GetError(); e != nil {
			if e.GetId() != 1 || e.GetCode() != parleyv1.Code_CODE_RESOURCE_EXHAUSTED || !strings.Contains(e.GetMessage(), "WithStreamBufferBytes") {
				t.Fatalf("got %v, want resource_exhausted naming WithStreamBufferBytes for stream 1", e)
			}
			break
		}
	}
	// Stream 3 echoes 7 items of 8 KiB sent at once (56 KiB, under the
	// bound only if stream 1's items were released).
	p.write(t, &parleyv1.Frame{Kind: &parleyv1.Frame_Call{Call: &parleyv1.Call{Id: 3, Method: echoesSpec.Procedure}}})
	for i := range 7 {
		send(3, item(fmt.Sprint(i)))
	}
	for echoed := 0; echoed < 7; {
		f := p.read(t)
		switch {
		case f.GetError() != nil:
			t.Fatalf("stream 3 failed: %v", f.GetError())
		case f.GetItem() != nil:
			echoed++
		}
	}
}

// TestPeerIgnoringCreditIsStopped: a raw client that floods a stream past
// the server's window gets resource_exhausted for that stream instead of
// the server buffering without bound.
func TestPeerIgnoringCreditIsStopped(t *testing.T) {
	_, url := newStreamServer(t, parley.WithStreamWindow(8))
	if _, _, err := websocket.DefaultDialer.Dial(url, nil); err == nil {
		t.Fatal("dial without a subprotocol succeeded")
	}
	p := dialRaw(t, url, 0, nil)
	// The handler takes the first item and stalls, so the window cannot
	// grow (a receiver that keeps draining would grant more credit, and
	// a peer that sends ahead of it would not be caught overrunning).
	p.write(t, &parleyv1.Frame{Kind: &parleyv1.Frame_Call{Call: &parleyv1.Call{Id: 1, Method: echoesSpec.Procedure}}})
	item, _ := proto.Marshal(&e2ev1.EchoRequest{Text: "stall"})
	for range 100 {
		p.write(t, &parleyv1.Frame{Kind: &parleyv1.Frame_Item{Item: &parleyv1.StreamItem{Id: 1, Body: &parleyv1.StreamItem_Payload{Payload: item}}}})
	}
	for {
		if e := p.read(t).GetError(); e != nil {
			if e.GetId() != 1 || e.GetCode() != parleyv1.Code_CODE_RESOURCE_EXHAUSTED {
				t.Fatalf("got %v, want resource_exhausted for stream 1", e)
			}
			return
		}
	}
}

// TestDrainedStreamWindowGrows: a receiver that keeps its queue drained
// grants more credit than it consumed, doubling its window, so that a
// fast stream is not held back by credit round trips; a raw peer sees the
// credit frames.
func TestDrainedStreamWindowGrows(t *testing.T) {
	_, url := newStreamServer(t, parley.WithStreamWindow(8))
	grants := grantsWhileDrained(t, url, 8, "")
	// Credit goes back every half configured window consumed (4 items).
	// Without growth every grant would be 4; drained, the window doubles
	// at each grant, which adds the window's old size: 4+8, 4+16, 4+32...
	if len(grants) < 3 || grants[0] != 4+8 || grants[1] != 4+16 || grants[2] != 4+32 {
		t.Fatalf("grants %v, want the window doubling (12, 20, 36, ...)", grants)
	}
}

// TestLargeItemsDoNotGrowTheWindow: a window grows only while, at the
// size of its stream's largest item, it stays within half the
// connection's stream buffer bytes, so that growth never lets a sender
// within its credit overrun that bound when the reader pauses. With 8 KiB
// items and a bound of 128 KiB, a window of 8 items (64 KiB) is at that
// half already: drained or not, every grant is the 4 items consumed.
func TestLargeItemsDoNotGrowTheWindow(t *testing.T) {
	_, url := newStreamServer(t, parley.WithStreamWindow(8), parley.WithStreamBufferBytes(128<<10))
	grants := grantsWhileDrained(t, url, 8, strings.Repeat("x", 8<<10))
	for _, g := range grants {
		if g != 4 {
			t.Fatalf("grants %v, want 4 each: no growth with 8 KiB items", grants)
		}
	}
}

// grantsWhileDrained opens the echo stream on url with a raw client and
// sends 40 items of text one at a time, each echoed before the next goes,
// so that the server's queue is empty whenever it grants credit; it
// returns the server's grants. window is what the server's Welcome must
// announce.
func grantsWhileDrained(t *testing.T, url string, window uint32, text string) []uint32 {
	t.Helper()
	p := dialRaw(t, url, 0, &parleyv1.Hello{StreamWindow: 1 << 20})
	if w := p.welcome.GetStreamWindow(); w != window {
		t.Fatalf("welcome announces a window of %d, want %d", w, window)
	}
	p.write(t, &parleyv1.Frame{Kind: &parleyv1.Frame_Call{Call: &parleyv1.Call{Id: 1, Method: echoesSpec.Procedure}}})
	credit, sent := int(window), 0
	var grants []uint32
	for sent < 40 {
		if credit == 0 {
			t.Fatalf("out of credit after %d items (grants %v)", sent, grants)
		}
		item, _ := proto.Marshal(&e2ev1.EchoRequest{Text: fmt.Sprint(sent, text)})
		p.write(t, &parleyv1.Frame{Kind: &parleyv1.Frame_Item{Item: &parleyv1.StreamItem{Id: 1, Body: &parleyv1.StreamItem_Payload{Payload: item}}}})
		sent++
		credit--
		for echoed := false; !echoed; {
			f := p.read(t)
			switch {
			case f.GetCredit() != nil:
				grants = append(grants, f.GetCredit().GetItems())
				credit += int(f.GetCredit().GetItems())
			case f.GetItem() != nil:
				echoed = true
			default:
				t.Fatalf("unexpected frame %v", f)
			}
		}
	}
	if len(grants) < 3 {
		t.Fatalf("grants %v after %d items, want one every 4", grants, sent)
	}
	return grants
}

// TestShutdownPastItsDeadlineClosesGoingAway: a stream still running when
// Shutdown's context ends (its handler waits for credit the client never
// grants) has its connection closed with 1001 going away, not cut.
func TestShutdownPastItsDeadlineClosesGoingAway(t *testing.T) {
	srv := parley.NewServer()
	srv.Register(parley.NewServerStreamMethod(countSpec, func(ctx context.Context, req *e2ev1.SleepRequest, s *parley.ServerStream[e2ev1.EchoResponse]) error {
		for i := range int(req.GetMs()) {
			if err := s.Send(&e2ev1.EchoResponse{Text: fmt.Sprint(i)}); err != nil {
				return err
			}
		}
		return nil
	}))
	hs := httptest.NewServer(srv)
	t.Cleanup(hs.Close)
	p := dialRaw(t, "ws"+strings.TrimPrefix(hs.URL, "http")+"/", 0, &parleyv1.Hello{StreamWindow: 2})
	req, _ := proto.Marshal(&e2ev1.SleepRequest{Ms: 100})
	p.write(t, &parleyv1.Frame{Kind: &parleyv1.Frame_Call{Call: &parleyv1.Call{Id: 1, Method: countSpec.Procedure, Body: &parleyv1.Call_Payload{Payload: req}}}})
	for range 2 { // the window; then the handler waits for credit
		if p.read(t).GetItem() == nil {
			t.Fatal("want the window's items first")
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := srv.Shutdown(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Shutdown: %v, want the context's deadline", err)
	}
	if code := p.closeCode(t); code != websocket.CloseGoingAway {
		t.Fatalf("closed with %d, want 1001 going away", code)
	}
}

// TestStreamCallReusingAnIDInFlightIsRefused: a Call that opens a stream
// with the id of a call or stream still running on the connection is
// refused with invalid_argument, as a unary Call is, and the call already
// running goes on. It used to replace the first one's bookkeeping, so
// that whichever handler ended second found none and crashed the server
// (a nil dereference in runStream, outside any recover): found by a raw
// client sending a Call id twice.
func TestStreamCallReusingAnIDInFlightIsRefused(t *testing.T) {
	started := make(chan string, 10)
	release := make(chan struct{})
	blockSpec := &parley.MethodSpec{Procedure: "/test.Streams/Block"}
	srv := parley.NewServer()
	srv.Register(parley.NewBidiStreamMethod(echoesSpec, func(ctx context.Context, s *parley.BidiStream[e2ev1.EchoRequest, e2ev1.EchoResponse]) error {
		started <- "echoes"
		for {
			req, err := s.Recv()
			if err != nil {
				return err
			}
			if err := s.Send(&e2ev1.EchoResponse{Text: req.GetText()}); err != nil {
				return err
			}
		}
	}))
	srv.Register(parley.NewUnaryMethod(blockSpec, func(ctx context.Context, r *e2ev1.EchoRequest) (*e2ev1.EchoResponse, error) {
		started <- "block"
		select {
		case <-release:
		case <-ctx.Done():
		}
		return &e2ev1.EchoResponse{Text: r.GetText()}, nil
	}))
	srv.Register(parley.NewUnaryMethod(unarySpec, func(ctx context.Context, r *e2ev1.EchoRequest) (*e2ev1.EchoResponse, error) {
		return &e2ev1.EchoResponse{Text: r.GetText()}, nil
	}))
	p := dialRaw(t, serveWS(t, srv), 0, nil)
	call := func(id uint64, method string, req proto.Message) {
		t.Helper()
		c := &parleyv1.Call{Id: id, Method: method}
		if req != nil {
			b, _ := proto.Marshal(req)
			c.Body = &parleyv1.Call_Payload{Payload: b}
		}
		p.write(t, &parleyv1.Frame{Kind: &parleyv1.Frame_Call{Call: c}})
	}
	wantRefused := func(id uint64) {
		t.Helper()
		for {
			f := p.read(t)
			if e := f.GetError(); e != nil && e.GetId() == id {
				if e.GetCode() != parleyv1.Code_CODE_INVALID_ARGUMENT || !strings.Contains(e.GetMessage(), "already in flight") {
					t.Fatalf("call id %d reused: got %v, want invalid_argument, already in flight", id, e)
				}
				return
			}
			if f.GetReply() != nil || f.GetError() != nil {
				t.Fatalf("call id %d reused: got %v, want its refusal", id, f)
			}
		}
	}

	// A stream, then a second stream with its id.
	call(1, echoesSpec.Procedure, nil)
	if got := <-started; got != "echoes" {
		t.Fatal(got)
	}
	call(1, echoesSpec.Procedure, nil)
	wantRefused(1)
	// A unary call, then a stream with its id.
	call(3, blockSpec.Procedure, &e2ev1.EchoRequest{Text: "block"})
	if got := <-started; got != "block" {
		t.Fatal(got)
	}
	call(3, echoesSpec.Procedure, nil)
	wantRefused(3)

	// The first stream still works, and both end as they should.
	item, _ := proto.Marshal(&e2ev1.EchoRequest{Text: "still here"})
	p.write(t, &parleyv1.Frame{Kind: &parleyv1.Frame_Item{Item: &parleyv1.StreamItem{Id: 1, Body: &parleyv1.StreamItem_Payload{Payload: item}}}})
	var echoed proto.Message = &e2ev1.EchoResponse{}
	if it := p.read(t).GetItem(); it.GetId() != 1 || proto.Unmarshal(it.GetPayload(), echoed) != nil || echoed.(*e2ev1.EchoResponse).GetText() != "still here" {
		t.Fatalf("the first stream after its id was reused: got item %v, want its echo", it)
	}
	p.write(t, &parleyv1.Frame{Kind: &parleyv1.Frame_Cancel{Cancel: &parleyv1.Cancel{Id: 1}}})
	close(release)
	if r := p.read(t).GetReply(); r.GetId() != 3 {
		t.Fatalf("got %v, want the reply to call 3", r)
	}
	// The server is still up: a new call on the same socket is answered.
	call(5, unarySpec.Procedure, &e2ev1.EchoRequest{Text: "alive"})
	if r := p.read(t).GetReply(); r.GetId() != 5 {
		t.Fatalf("got %v, want the reply to call 5", r)
	}
}
