package parley

import (
	"context"
	"sync"
	"time"

	"google.golang.org/protobuf/proto"
)

// Idempotency says whether a method may safely run more than once, from the
// proto's `option idempotency_level`.
type Idempotency uint8

const (
	// IdempotencyUnknown is the default: running the method twice may
	// cause harm, so it is never retried blindly.
	IdempotencyUnknown Idempotency = iota
	// IdempotencyNoSideEffects marks a method that changes nothing.
	IdempotencyNoSideEffects
	// IdempotencyIdempotent marks a method whose repeated calls have the
	// effect of one.
	IdempotencyIdempotent
)

// StreamKind is the shape of a method's exchange, from `stream` in the
// proto.
type StreamKind uint8

const (
	// StreamNone is a unary method: one request, one response.
	StreamNone StreamKind = iota
	// StreamClient is client streaming: many requests, one response.
	StreamClient
	// StreamServer is server streaming: one request, many responses.
	StreamServer
	// StreamBidi is bidirectional streaming: many of each, interleaved.
	StreamBidi
)

func (k StreamKind) String() string {
	switch k {
	case StreamNone:
		return "unary"
	case StreamClient:
		return "client streaming"
	case StreamServer:
		return "server streaming"
	case StreamBidi:
		return "bidirectional streaming"
	}
	return "unknown"
}

// streamsRequests reports whether requests come as stream items.
func (k StreamKind) streamsRequests() bool { return k == StreamClient || k == StreamBidi }

// streamsResponses reports whether responses come as stream items.
func (k StreamKind) streamsResponses() bool { return k == StreamServer || k == StreamBidi }

// MethodSpec describes a method to the runtime. Generated code declares one
// per method; it is read-only once built.
type MethodSpec struct {
	// Procedure is the method's full name, "/chat.v1.ChatService/Join".
	Procedure string
	// Timeout is the deadline a call gets when its context has none, from
	// `option (parley.v1.method).timeout_ms`. Zero means the connection's
	// default.
	Timeout time.Duration
	// Idempotency comes from `option idempotency_level`.
	Idempotency Idempotency
	// Kind is the method's streaming kind.
	Kind StreamKind
}

// Invoker calls methods on a peer. A client's *Conn is one, calling the
// server; a server's *Peer is one, calling that client. Generated clients
// are built on it.
type Invoker interface {
	// Invoke calls spec's unary method with req and decodes the reply into
	// res. It returns an error for which CodeOf gives the call's code.
	Invoke(ctx context.Context, spec *MethodSpec, req, res proto.Message) error
	// NewStream opens a call of spec's streaming method. Generated code
	// wraps it in a typed stream (CallServerStream, CallClientStream,
	// CallBidiStream).
	NewStream(ctx context.Context, spec *MethodSpec) (*Stream, error)
}

// Registrar is where generated code registers a service's methods: a
// *Server for services clients call, a client's *Conn for services the
// server calls (`implemented_by = CLIENT`).
type Registrar interface {
	// Register adds methods. Registering a procedure twice panics, as
	// http.ServeMux does for a pattern.
	Register(methods ...*Method)
}

// UnaryFunc is a unary call as interceptors see it: on the server, the
// handler; on the client, the round trip.
type UnaryFunc func(ctx context.Context, req proto.Message) (proto.Message, error)

// Interceptor wraps a UnaryFunc with behaviour of its own (logging, auth
// checks, metrics). The same interceptor works on both sides; it learns
// which side and which method from CallInfoFromContext. Interceptors given
// as [a, b, c] run a first, then b, then c, then the call.
type Interceptor func(next UnaryFunc) UnaryFunc

// Method is a method's implementation, ready to register. Build one with
// NewUnaryMethod.
type Method struct {
	spec   *MethodSpec
	newReq func() proto.Message // unary methods and events
	call   UnaryFunc            // unary methods and events
	// stream runs a streaming method; its result is the response a
	// client-streaming method sends in Reply, else nil.
	stream func(ctx context.Context, s *Stream) (proto.Message, error)
	event  bool // an event: the peer expects no reply
}

// Spec returns the method's description.
func (m *Method) Spec() *MethodSpec { return m.spec }

// protoMessage is a pointer to a generated message type T.
type protoMessage[T any] interface {
	*T
	proto.Message
}

// NewUnaryMethod returns the Method that runs fn for calls of spec.
// Generated registration functions call it; fn is the method of the
// application's implementation, such as impl.Join.
func NewUnaryMethod[Req, Res any, PReq protoMessage[Req], PRes protoMessage[Res]](
	spec *MethodSpec, fn func(context.Context, PReq) (PRes, error),
) *Method {
	return &Method{
		spec:   spec,
		newReq: func() proto.Message { return PReq(new(Req)) },
		call: func(ctx context.Context, req proto.Message) (proto.Message, error) {
			res, err := fn(ctx, req.(PReq))
			if err != nil {
				return nil, err
			}
			if res == nil {
				return nil, NewError(CodeInternal, spec.Procedure+" returned a nil response and no error")
			}
			return res, nil
		},
	}
}

// chain applies interceptors to fn so that the first runs outermost.
func chain(fn UnaryFunc, interceptors []Interceptor) UnaryFunc {
	for i := len(interceptors) - 1; i >= 0; i-- {
		fn = interceptors[i](fn)
	}
	return fn
}

// methodTable holds the methods a side implements, by procedure: a
// Server's for its clients, a Conn's for its server. It is safe for
// concurrent use; lookups take the name as read, without copying it.
type methodTable struct {
	mu      sync.RWMutex
	methods map[string]*Method
}

// add registers methods, panicking on a procedure registered twice, as
// http.ServeMux does for a pattern.
func (t *methodTable) add(methods ...*Method) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.methods == nil {
		t.methods = make(map[string]*Method)
	}
	for _, m := range methods {
		if _, dup := t.methods[m.spec.Procedure]; dup {
			panic("parley: " + m.spec.Procedure + " registered twice")
		}
		t.methods[m.spec.Procedure] = m
	}
}

// lookup finds the method of a procedure, or nil.
func (t *methodTable) lookup(procedure []byte) *Method {
	t.mu.RLock()
	defer t.mu.RUnlock()
	return t.methods[string(procedure)]
}
