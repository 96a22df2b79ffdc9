package parley

import (
	"context"

	"google.golang.org/protobuf/proto"
)

// Peer is the server's handle on one client connection. Handlers get theirs
// from PeerFromContext; through it the server calls methods the client
// implements (generated NewXClient(peer)) and manages the connection's
// rooms.
//
// A Peer is safe for concurrent use. It stays valid after the connection
// closes; calls on it then fail with CodeUnavailable.
type Peer struct {
	e         *endpoint
	id        string
	principal *Principal
	server    *Server
}

// ID identifies the connection among the server's connections; ToConn
// addresses it.
func (p *Peer) ID() string { return p.id }

// Principal returns who the connection authenticated as, or nil when the
// server has no authenticate hook.
func (p *Peer) Principal() *Principal { return p.principal }

// Invoke calls a method the client implements, awaiting its reply like any
// call: the deadline comes from ctx, else the method's timeout_ms, else
// DefaultCallTimeout.
func (p *Peer) Invoke(ctx context.Context, spec *MethodSpec, req, res proto.Message) error {
	return p.e.invoke(ctx, spec, req, res)
}

// NewStream opens a streaming call of a method the client implements.
func (p *Peer) NewStream(ctx context.Context, spec *MethodSpec) (*Stream, error) {
	return p.e.newStream(ctx, spec)
}

var _ Invoker = (*Peer)(nil)
