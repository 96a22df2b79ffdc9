package parley

import (
	"context"

	"google.golang.org/protobuf/proto"
)

// targetKind says who a Target addresses.
type targetKind uint8

const (
	targetConn targetKind = iota + 1
	targetUser
	targetRoom
	targetAll
)

// Target names the connections an event goes to: one connection, every
// connection of one user, every member of a room, or everyone, optionally
// except one connection (typically the sender's).
type Target struct {
	kind   targetKind
	id     string
	except string
}

// ToConn addresses one connection, by Peer.ID.
func ToConn(connID string) Target { return Target{kind: targetConn, id: connID} }

// ToUser addresses every connection of a user (all their devices), by
// Principal.UserID.
func ToUser(userID string) Target { return Target{kind: targetUser, id: userID} }

// ToRoom addresses every connection in a room.
func ToRoom(room string) Target { return Target{kind: targetRoom, id: room} }

// ToAll addresses every connection.
func ToAll() Target { return Target{kind: targetAll} }

// Except returns the target without the connection connID, typically the
// sender's own: ToRoom("lobby").Except(peer.ID()).
func (t Target) Except(connID string) Target {
	t.except = connID
	return t
}

// String describes the target for logs: "room:lobby", "user:ada except c1".
func (t Target) String() string {
	var s string
	switch t.kind {
	case targetConn:
		s = "conn:" + t.id
	case targetUser:
		s = "user:" + t.id
	case targetRoom:
		s = "room:" + t.id
	case targetAll:
		s = "all"
	default:
		s = "nobody"
	}
	if t.except != "" {
		s += " except " + t.except
	}
	return s
}

// Publisher sends events: invocations of methods of a service marked
// `implemented_by = CLIENT` that return google.protobuf.Empty. A *Server is
// one. Generated publishers (NewChatEventsPublisher) are built on it.
type Publisher interface {
	// Publish sends event to every connection target addresses. It does
	// not wait for delivery; each connection receives its events in the
	// order they were published.
	Publish(ctx context.Context, target Target, spec *MethodSpec, event proto.Message) error
}

// NewEventMethod returns the Method that runs fn for events of spec, on a
// client. Generated RegisterXHandler functions call it. A panic in fn is
// logged and does not affect the connection.
func NewEventMethod[Req any, PReq protoMessage[Req]](spec *MethodSpec, fn func(context.Context, PReq)) *Method {
	return &Method{
		spec:   spec,
		event:  true,
		newReq: func() proto.Message { return PReq(new(Req)) },
		call: func(ctx context.Context, req proto.Message) (proto.Message, error) {
			fn(ctx, req.(PReq))
			return nil, nil
		},
	}
}

// Principal is who a connection authenticated as.
type Principal struct {
	// UserID identifies the user. Events ToUser(UserID) reach every
	// connection with this principal, and presence is tracked per UserID.
	UserID string
	// Claims carries whatever else the authenticate hook learned.
	Claims map[string]any
}

func (p *Principal) userID() string {
	if p == nil {
		return ""
	}
	return p.UserID
}

// PrincipalFromContext returns the principal of the connection a handler
// serves, if the server authenticates.
func PrincipalFromContext(ctx context.Context) (*Principal, bool) {
	if p, ok := PeerFromContext(ctx); ok && p.principal != nil {
		return p.principal, true
	}
	return nil, false
}

// PeerFromContext returns the connection a server handler serves.
func PeerFromContext(ctx context.Context) (*Peer, bool) {
	ci, ok := CallInfoFromContext(ctx)
	if !ok || ci.Peer == nil {
		return nil, false
	}
	return ci.Peer, true
}
