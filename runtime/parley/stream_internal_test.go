package parley

import (
	"context"
	"io"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/emptypb"
)

// TestServerStreamRequestAfterTheDeadline: a server-streaming call whose
// deadline passed before its handler read the request (it came in the
// Call, but the handler's goroutine started late, as under load) ends
// with deadline_exceeded, not invalid_argument: the client did nothing
// wrong. Found by a stress run of short-deadline Tail calls, some of
// which failed with "invalid_argument: ... reading the request:
// deadline_exceeded".
func TestServerStreamRequestAfterTheDeadline(t *testing.T) {
	spec := &MethodSpec{Procedure: "/test.Streams/Late", Kind: StreamServer}
	ran := false
	m := NewServerStreamMethod(spec, func(context.Context, *emptypb.Empty, *ServerStream[emptypb.Empty]) error {
		ran = true
		return nil
	})
	cfg := defaultConfig()
	ctx, cancel := context.WithDeadline(context.Background(), time.Now().Add(-time.Millisecond))
	defer cancel()
	s := &stream{
		e: &endpoint{cfg: &cfg}, spec: spec, ctx: ctx, window: cfg.streamWindow,
		notify: make(chan struct{}, 1), creditCh: make(chan struct{}, 1),
	}
	s.queue(nil, 0) // the request, as acceptStream queues it
	s.recvEnd, s.recvErr = true, io.EOF
	_, err := m.stream(ctx, &Stream{s: s})
	if CodeOf(err) != CodeDeadlineExceeded {
		t.Fatalf("request read after the deadline: got %v, want deadline_exceeded", err)
	}
	if ran {
		t.Fatal("the handler ran past its deadline")
	}
}
