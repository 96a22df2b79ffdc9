package parley

import (
	"context"
	"errors"
	"io"
	"sync"

	"google.golang.org/protobuf/proto"
)

// Stream is one streaming call as the runtime sees it, untyped: the typed
// streams below wrap it. Either side's Stream sends with SendMsg and
// receives with RecvMsg; items flow under credit (see WithStreamWindow), so
// a fast sender waits for a slow receiver instead of filling its memory.
//
// One goroutine may send while another receives; neither SendMsg nor
// RecvMsg may be called from two goroutines at once.
//
// A caller ends a stream by reading it to its end (io.EOF or an error), by
// Close, or by ending its context. A stream dropped without any of these
// stays open until the handler returns: a handler still sending waits for
// credit (with its goroutine, its WithMaxStreams slot, and up to a window
// of items queued on the caller) until the context ends or the socket
// closes.
type Stream struct {
	s *stream
}

// Context returns the stream's context: it carries the call's deadline and
// ends when the call does, on either side.
func (s *Stream) Context() context.Context { return s.s.ctx }

// SendMsg sends one item, waiting for credit. It returns io.EOF when the
// peer ended the call; the call's outcome then comes from RecvMsg (or
// CloseAndRecv). Once the stream's context has ended (cancelled, past its
// deadline) it sends nothing and returns io.EOF or the context's error.
func (s *Stream) SendMsg(m proto.Message) error { return s.s.send(m) }

// RecvMsg receives one item into m. It returns io.EOF when the peer ended
// its direction cleanly, or the call's error.
func (s *Stream) RecvMsg(m proto.Message) error { return s.s.recv(m) }

// CloseSend ends this side's direction (half-close). Only callers use it.
func (s *Stream) CloseSend() error { return s.s.closeSend() }

// Close abandons the call: the peer is told to cancel it. Calling Close
// after the call ended is harmless.
func (s *Stream) Close() error { s.s.abandon(CodeCanceled); return nil }

// ServerStreamClient is the caller's end of a server-streaming call.
//
// A call that a server going away refused unrun (sent after its GoAway)
// opens again on the next socket, within the same deadline, as a unary
// call is sent again: its one request went in the call, so nothing is
// lost. Once a response has arrived the call ran, and it never opens
// again.
type ServerStreamClient[Res any] struct {
	mu     sync.Mutex // guards s and closed, for Close from another goroutine
	s      *Stream
	closed bool

	// Used by Recv alone: reopen opens the call again after a refusal,
	// nil once a response came; stop releases the method's timeout.
	reopen func() (*Stream, error)
	stop   context.CancelFunc
}

// Recv returns the next response, io.EOF after the last, or the call's
// error.
func (c *ServerStreamClient[Res]) Recv() (*Res, error) {
	for {
		res, err := recvTyped[Res](c.stream())
		if err == nil {
			c.reopen = nil
			return res, nil
		}
		if c.reopen == nil || !errors.Is(err, errNotSent) {
			c.stop()
			return nil, err
		}
		s, err := c.reopen()
		if err != nil {
			c.stop()
			return nil, err
		}
		c.mu.Lock()
		c.s = s
		closed := c.closed
		c.mu.Unlock()
		if closed {
			_ = s.Close()
		}
	}
}

func (c *ServerStreamClient[Res]) stream() *Stream {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.s
}

// Close stops the stream early; the server's handler sees its context
// cancelled.
func (c *ServerStreamClient[Res]) Close() error {
	c.mu.Lock()
	c.closed = true
	s := c.s
	c.mu.Unlock()
	c.stop()
	return s.Close()
}

// Context returns the stream's context (that of the call opened again,
// once it was).
func (c *ServerStreamClient[Res]) Context() context.Context { return c.stream().Context() }

// ClientStreamClient is the caller's end of a client-streaming call.
type ClientStreamClient[Req, Res any] struct{ s *Stream }

// Send sends one request, waiting for credit. It returns io.EOF if the
// server already ended the call; CloseAndRecv then returns its outcome.
func (c *ClientStreamClient[Req, Res]) Send(req *Req) error {
	return c.s.SendMsg(any(req).(proto.Message))
}

// CloseAndRecv ends the requests and waits for the response.
func (c *ClientStreamClient[Req, Res]) CloseAndRecv() (*Res, error) {
	if err := c.s.CloseSend(); err != nil {
		return nil, err
	}
	res, err := recvTyped[Res](c.s)
	if err != nil {
		return nil, err
	}
	return res, nil
}

// Close abandons the call.
func (c *ClientStreamClient[Req, Res]) Close() error { return c.s.Close() }

// Context returns the stream's context.
func (c *ClientStreamClient[Req, Res]) Context() context.Context { return c.s.Context() }

// BidiStreamClient is the caller's end of a bidirectional-streaming call.
// One goroutine may Send while another Recvs.
type BidiStreamClient[Req, Res any] struct{ s *Stream }

// Send sends one request, waiting for credit. It returns io.EOF if the
// server already ended the call; Recv then returns its outcome.
func (c *BidiStreamClient[Req, Res]) Send(req *Req) error {
	return c.s.SendMsg(any(req).(proto.Message))
}

// CloseSend ends the requests; responses keep coming.
func (c *BidiStreamClient[Req, Res]) CloseSend() error { return c.s.CloseSend() }

// Recv returns the next response, io.EOF after the last, or the call's
// error.
func (c *BidiStreamClient[Req, Res]) Recv() (*Res, error) { return recvTyped[Res](c.s) }

// Close abandons the call.
func (c *BidiStreamClient[Req, Res]) Close() error { return c.s.Close() }

// Context returns the stream's context.
func (c *BidiStreamClient[Req, Res]) Context() context.Context { return c.s.Context() }

// ServerStream is the handler's end of a server-streaming call.
type ServerStream[Res any] struct{ s *Stream }

// Send sends one response, waiting for credit.
func (s *ServerStream[Res]) Send(res *Res) error { return s.s.SendMsg(any(res).(proto.Message)) }

// ClientStream is the handler's end of a client-streaming call.
type ClientStream[Req any] struct{ s *Stream }

// Recv returns the next request, or io.EOF after the last.
func (s *ClientStream[Req]) Recv() (*Req, error) { return recvTyped[Req](s.s) }

// BidiStream is the handler's end of a bidirectional-streaming call. One
// goroutine may Send while another Recvs.
type BidiStream[Req, Res any] struct{ s *Stream }

// Recv returns the next request, or io.EOF after the last.
func (s *BidiStream[Req, Res]) Recv() (*Req, error) { return recvTyped[Req](s.s) }

// Send sends one response, waiting for credit.
func (s *BidiStream[Req, Res]) Send(res *Res) error { return s.s.SendMsg(any(res).(proto.Message)) }

func recvTyped[T any](s *Stream) (*T, error) {
	m := new(T)
	if err := s.RecvMsg(any(m).(proto.Message)); err != nil {
		return nil, err
	}
	return m, nil
}

// CallServerStream opens a server-streaming call with req. Generated
// clients call it.
func CallServerStream[Res any, PRes protoMessage[Res]](ctx context.Context, conn Invoker, spec *MethodSpec, req proto.Message) (*ServerStreamClient[Res], error) {
	// The method's timeout covers the call, opened again or not.
	ctx, stop := streamTimeout(ctx, spec)
	open := func() (*Stream, error) {
		for {
			// Refused before its request went out: again, on the next
			// socket (NewStream waits for one; never the same).
			s, err := openServerStream[Res, PRes](ctx, conn, spec, req)
			if !errors.Is(err, errNotSent) {
				return s, err
			}
		}
	}
	s, err := open()
	if err != nil {
		stop()
		return nil, err
	}
	return &ServerStreamClient[Res]{s: s, reopen: open, stop: stop}, nil
}

// openServerStream opens a server-streaming call and sends its request.
func openServerStream[Res any, PRes protoMessage[Res]](ctx context.Context, conn Invoker, spec *MethodSpec, req proto.Message) (*Stream, error) {
	s, err := conn.NewStream(ctx, spec)
	if err != nil {
		return nil, err
	}
	if err := s.SendMsg(req); err != nil {
		if errors.Is(err, io.EOF) {
			// The call ended before its request went out (its context
			// ended, or its socket closed): its outcome is RecvMsg's.
			if rerr := s.RecvMsg(PRes(new(Res))); rerr != nil && !errors.Is(rerr, io.EOF) {
				err = rerr
			}
		}
		_ = s.Close()
		return nil, err
	}
	if err := s.CloseSend(); err != nil {
		_ = s.Close()
		return nil, err
	}
	return s, nil
}

// CallClientStream opens a client-streaming call. Generated clients call
// it.
func CallClientStream[Req, Res any, PReq protoMessage[Req], PRes protoMessage[Res]](ctx context.Context, conn Invoker, spec *MethodSpec) (*ClientStreamClient[Req, Res], error) {
	s, err := conn.NewStream(ctx, spec)
	if err != nil {
		return nil, err
	}
	return &ClientStreamClient[Req, Res]{s: s}, nil
}

// CallBidiStream opens a bidirectional-streaming call. Generated clients
// call it.
func CallBidiStream[Req, Res any, PReq protoMessage[Req], PRes protoMessage[Res]](ctx context.Context, conn Invoker, spec *MethodSpec) (*BidiStreamClient[Req, Res], error) {
	s, err := conn.NewStream(ctx, spec)
	if err != nil {
		return nil, err
	}
	return &BidiStreamClient[Req, Res]{s: s}, nil
}

// NewServerStreamMethod returns the Method that runs fn for calls of a
// server-streaming spec.
func NewServerStreamMethod[Req, Res any, PReq protoMessage[Req], PRes protoMessage[Res]](
	spec *MethodSpec, fn func(context.Context, PReq, *ServerStream[Res]) error,
) *Method {
	return &Method{spec: spec, stream: func(ctx context.Context, s *Stream) (proto.Message, error) {
		req := PReq(new(Req))
		if err := s.RecvMsg(req); err != nil {
			if CodeOf(err) != CodeInvalidArgument {
				// The call ended before the handler read its request
				// (deadline, cancellation): that is its outcome.
				return nil, err
			}
			return nil, Errorf(CodeInvalidArgument, "%s: reading the request: %v", spec.Procedure, err)
		}
		return nil, fn(ctx, req, &ServerStream[Res]{s: s})
	}}
}

// NewClientStreamMethod returns the Method that runs fn for calls of a
// client-streaming spec.
func NewClientStreamMethod[Req, Res any, PReq protoMessage[Req], PRes protoMessage[Res]](
	spec *MethodSpec, fn func(context.Context, *ClientStream[Req]) (PRes, error),
) *Method {
	return &Method{spec: spec, stream: func(ctx context.Context, s *Stream) (proto.Message, error) {
		res, err := fn(ctx, &ClientStream[Req]{s: s})
		if err != nil {
			return nil, err
		}
		if res == nil {
			return nil, NewError(CodeInternal, spec.Procedure+" returned a nil response and no error")
		}
		return res, nil
	}}
}

// NewBidiStreamMethod returns the Method that runs fn for calls of a
// bidirectional-streaming spec.
func NewBidiStreamMethod[Req, Res any, PReq protoMessage[Req], PRes protoMessage[Res]](
	spec *MethodSpec, fn func(context.Context, *BidiStream[Req, Res]) error,
) *Method {
	return &Method{spec: spec, stream: func(ctx context.Context, s *Stream) (proto.Message, error) {
		return nil, fn(ctx, &BidiStream[Req, Res]{s: s})
	}}
}
