package parley

import "context"

// Side is one end of a connection.
type Side uint8

const (
	// SideClient is the end that dialled.
	SideClient Side = iota + 1
	// SideServer is the end that accepted.
	SideServer
)

func (s Side) String() string {
	switch s {
	case SideClient:
		return "client"
	case SideServer:
		return "server"
	}
	return "unknown"
}

// CallInfo describes a call to interceptors and handlers.
type CallInfo struct {
	// Spec is the method called.
	Spec *MethodSpec
	// Side is where this code runs: SideServer in a handler or a server
	// interceptor, SideClient in a client interceptor.
	Side Side
	// ID is the call's id on the wire; 0 in client interceptors, which run
	// before an id is assigned.
	ID uint64
	// Metadata is the call's request metadata. Client interceptors may add
	// to it (it goes with the call); handlers read what the client sent,
	// and what server interceptors added. Interceptors never see it nil,
	// so one that adds to it works on every call and event; events carry
	// no metadata, so theirs starts empty and what is added goes nowhere.
	Metadata map[string]string
	// Peer is the connection a server handler serves; nil on clients.
	Peer *Peer
	// Event is set when the call is an event: published by the server
	// (Server.Publish) or handled by a client. Events have no response.
	Event bool

	method *Method // the local implementation, for incoming calls
}

type callInfoKey struct{}

// CallInfoFromContext returns the call a handler or interceptor serves.
func CallInfoFromContext(ctx context.Context) (*CallInfo, bool) {
	ci, ok := ctx.Value(callInfoKey{}).(*CallInfo)
	return ci, ok
}

// interceptedMetadata is md, or an empty map when md is nil and
// interceptors will see it (see CallInfo.Metadata).
func interceptedMetadata(md map[string]string, interceptors []Interceptor) map[string]string {
	if md == nil && len(interceptors) > 0 {
		return map[string]string{}
	}
	return md
}

func withCallInfo(ctx context.Context, ci *CallInfo) context.Context {
	return context.WithValue(ctx, callInfoKey{}, ci)
}
