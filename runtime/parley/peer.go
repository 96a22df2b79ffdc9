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
// A Peer stands for the client's session, which outlives a socket when the
// client reconnects and resumes: calls made through it go to whichever
// socket the session has, and fail with CodeUnavailable while it has none.
// A Peer is safe for concurrent use.
type Peer struct {
	sess      *session
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
	e := p.sess.endpoint()
	if e == nil {
		return NewError(CodeUnavailable, "the client is disconnected")
	}
	return e.invoke(ctx, spec, req, res)
}

// NewStream opens a streaming call of a method the client implements.
func (p *Peer) NewStream(ctx context.Context, spec *MethodSpec) (*Stream, error) {
	e := p.sess.endpoint()
	if e == nil {
		return nil, NewError(CodeUnavailable, "the client is disconnected")
	}
	return e.newStream(ctx, spec, nil)
}

var _ Invoker = (*Peer)(nil)

func (p *Peer) userID() string { return p.principal.userID() }

func (p *Peer) member() Member { return Member{ConnID: p.id, UserID: p.userID()} }

// Join puts the connection in room: events ToRoom(room) reach it until it
// leaves or closes. Only the server decides membership, typically in an
// RPC handler; clients cannot join by themselves.
func (p *Peer) Join(ctx context.Context, room string) error {
	return p.server.hub.join(ctx, p.sess, room)
}

// Leave takes the connection out of room.
func (p *Peer) Leave(ctx context.Context, room string) error {
	return p.server.hub.leave(ctx, p.sess, room)
}

// Rooms lists the rooms the connection is in, sorted.
func (p *Peer) Rooms() []string { return p.server.hub.roomsOf(p.sess) }

// Close ends the session and closes its socket with a normal close and the
// given reason; the client cannot resume it. A client that reconnects by
// itself then opens a new session, authenticated afresh: to keep a user
// out, refuse them in WithAuthenticate too.
func (p *Peer) Close(reason string) {
	e := p.sess.endpoint()
	p.sess.end()
	if e != nil {
		e.closeWith(closeNormal, reason)
	}
}
