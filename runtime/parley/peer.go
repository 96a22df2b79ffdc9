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

func (p *Peer) userID() string {
	if p.principal == nil {
		return ""
	}
	return p.principal.UserID
}

func (p *Peer) member() Member { return Member{ConnID: p.id, UserID: p.userID()} }

// Join puts the connection in room: events ToRoom(room) reach it until it
// leaves or closes. Only the server decides membership, typically in an
// RPC handler; clients cannot join by themselves.
func (p *Peer) Join(ctx context.Context, room string) error { return p.server.hub.join(ctx, p.e, room) }

// Leave takes the connection out of room.
func (p *Peer) Leave(ctx context.Context, room string) error {
	return p.server.hub.leave(ctx, p.e, room)
}

// Rooms lists the rooms the connection is in, sorted.
func (p *Peer) Rooms() []string { return p.server.hub.roomsOf(p.e) }

// Close closes the connection with a normal close and the given reason.
func (p *Peer) Close(reason string) { p.e.closeWith(closeNormal, reason) }
