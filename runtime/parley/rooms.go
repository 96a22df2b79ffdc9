package parley

import (
	"context"
	"errors"

	"google.golang.org/protobuf/proto"
)

// Publish sends an event to every connection target reaches, through the
// broker (so, with a shared broker, on every node). Each connection gets
// its events in publish order; one whose send queue is full is closed with
// CloseSlowConsumer rather than slowing the others. Generated publishers
// (NewChatEventsPublisher(server)) call it. Server interceptors see the
// event with CallInfo.Event set, on the caller's goroutine: a panic in one
// reaches the caller (in a handler, its call fails with CodeInternal), as
// a client interceptor's reaches the caller of its call. A target with
// nobody in it is no error; neither is publishing after Shutdown: the
// event reaches no connection of this server (with a shared broker, other
// nodes' still get it).
func (s *Server) Publish(ctx context.Context, target Target, spec *MethodSpec, event proto.Message) error {
	if target.kind == 0 {
		return NewError(CodeInvalidArgument, "parley: Publish needs a target (ToConn, ToUser, ToRoom or ToAll)")
	}
	if len(s.cfg.interceptors) == 0 {
		return s.publish(ctx, target, spec, event)
	}
	ci := &CallInfo{Spec: spec, Side: SideServer, Event: true, Metadata: map[string]string{}}
	call := chain(func(ctx context.Context, ev proto.Message) (proto.Message, error) {
		return nil, s.publish(ctx, target, spec, ev)
	}, s.cfg.interceptors)
	_, err := call(withCallInfo(ctx, ci), event)
	return err
}

func (s *Server) publish(ctx context.Context, target Target, spec *MethodSpec, event proto.Message) error {
	payload, err := proto.Marshal(event)
	if err != nil {
		return Errorf(CodeInternal, "encoding event %s: %v", spec.Procedure, err)
	}
	return s.broker.Publish(ctx, &BrokerEvent{Target: target, Method: spec.Procedure, Payload: payload})
}

// Peer returns the connection with the given id, if it is connected to this
// server.
func (s *Server) Peer(connID string) (*Peer, bool) {
	sn := s.hub.session(connID)
	if sn == nil {
		return nil, false
	}
	return sn.peer, true
}

// Join puts connection connID in room. See Peer.Join.
func (s *Server) Join(ctx context.Context, connID, room string) error {
	sn := s.hub.session(connID)
	if sn == nil {
		return Errorf(CodeNotFound, "join %q: no connection %s on this server", room, connID)
	}
	return s.hub.join(ctx, sn, room)
}

// Leave takes connection connID out of room.
func (s *Server) Leave(ctx context.Context, connID, room string) error {
	sn := s.hub.session(connID)
	if sn == nil {
		return Errorf(CodeNotFound, "leave %q: no connection %s on this server", room, connID)
	}
	return s.hub.leave(ctx, sn, room)
}

// JoinUser puts every current connection of userID on this server in room.
func (s *Server) JoinUser(ctx context.Context, userID, room string) error {
	var errs []error
	for _, sn := range s.hub.userSessions(userID) {
		errs = append(errs, s.hub.join(ctx, sn, room))
	}
	return errors.Join(errs...)
}

// LeaveUser takes every connection of userID on this server out of room.
func (s *Server) LeaveUser(ctx context.Context, userID, room string) error {
	var errs []error
	for _, sn := range s.hub.userSessions(userID) {
		errs = append(errs, s.hub.leave(ctx, sn, room))
	}
	return errors.Join(errs...)
}

// Members lists a room's members (across the cluster, with a shared
// broker), ordered by connection id.
func (s *Server) Members(ctx context.Context, room string) ([]Member, error) {
	return s.broker.Members(ctx, room)
}

// IsOnline reports whether userID has a connection (across the cluster,
// with a shared broker).
func (s *Server) IsOnline(ctx context.Context, userID string) (bool, error) {
	return s.broker.IsOnline(ctx, userID)
}

var _ Publisher = (*Server)(nil)
