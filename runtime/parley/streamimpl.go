package parley

import (
	"context"
)

// stream is the state of one streaming call on an endpoint.
type stream struct {
	e    *endpoint
	id   uint64
	spec *MethodSpec
	ctx  context.Context
}

func (s *stream) send(m interface{}) error { return NewError(CodeUnimplemented, "streams are not implemented yet") }
func (s *stream) recv(m interface{}) error { return NewError(CodeUnimplemented, "streams are not implemented yet") }
func (s *stream) closeSend() error         { return nil }
func (s *stream) abandon(Code)             {}

func (e *endpoint) newStream(ctx context.Context, spec *MethodSpec) (*Stream, error) {
	return nil, NewError(CodeUnimplemented, "streams are not implemented yet")
}

// register adds local handlers to a client endpoint.
func (e *endpoint) register(methods ...*Method) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.local == nil {
		e.local = make(map[string]*Method)
	}
	for _, m := range methods {
		if _, dup := e.local[m.spec.Procedure]; dup {
			panic("parley: " + m.spec.Procedure + " registered twice")
		}
		e.local[m.spec.Procedure] = m
	}
}
