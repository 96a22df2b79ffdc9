package e2e

import (
	"context"
	"strings"
	"time"

	e2ev1 "github.com/parleyrpc/parley/internal/e2e/gen/e2e/v1"
	"github.com/parleyrpc/parley/internal/e2e/gen/e2e/v1/e2ev1parley"
	"github.com/parleyrpc/parley/runtime/parley"
	"google.golang.org/protobuf/types/known/emptypb"
)

// EventService implements e2e.v1.EventService: events to every kind of
// target, rooms, and the caller's principal.
type EventService struct {
	Notes *e2ev1parley.NotesPublisher
}

// Join puts the caller in a room.
func (s *EventService) Join(ctx context.Context, req *e2ev1.JoinRoomRequest) (*emptypb.Empty, error) {
	peer, ok := parley.PeerFromContext(ctx)
	if !ok {
		return nil, parley.NewError(parley.CodeInternal, "no peer")
	}
	return &emptypb.Empty{}, peer.Join(ctx, req.GetRoom())
}

// Publish publishes req.Count notes to the target it names, after req.DelayMs.
func (s *EventService) Publish(ctx context.Context, req *e2ev1.PublishRequest) (*e2ev1.PublishResponse, error) {
	peer, ok := parley.PeerFromContext(ctx)
	if !ok {
		return nil, parley.NewError(parley.CodeInternal, "no peer")
	}
	var target parley.Target
	switch req.GetTarget() {
	case "conn":
		target = parley.ToConn(peer.ID())
	case "user":
		user := req.GetUser()
		if pr := peer.Principal(); user == "" && pr != nil {
			user = pr.UserID
		}
		target = parley.ToUser(user)
	case "room":
		target = parley.ToRoom(req.GetRoom())
	case "all":
		target = parley.ToAll()
	default:
		return nil, parley.Errorf(parley.CodeInvalidArgument, "unknown target %q", req.GetTarget())
	}
	if req.GetExceptSelf() {
		target = target.Except(peer.ID())
	}
	if d := req.GetDelayMs(); d > 0 {
		t := time.NewTimer(time.Duration(d) * time.Millisecond)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return nil, ctx.Err()
		}
	}
	for i := range req.GetCount() {
		if err := s.Notes.Note(ctx, target, &e2ev1.NoteEvent{Tag: req.GetTag(), Seq: i + 1}); err != nil {
			return nil, err
		}
	}
	return &e2ev1.PublishResponse{Published: req.GetCount()}, nil
}

// Whoami reports the caller.
func (s *EventService) Whoami(ctx context.Context, _ *emptypb.Empty) (*e2ev1.WhoamiResponse, error) {
	peer, ok := parley.PeerFromContext(ctx)
	if !ok {
		return nil, parley.NewError(parley.CodeInternal, "no peer")
	}
	res := &e2ev1.WhoamiResponse{ConnId: peer.ID()}
	if p := peer.Principal(); p != nil {
		res.User = p.UserID
		res.Metadata, _ = p.Claims["metadata"].(map[string]string)
	}
	return res, nil
}

// Authenticate is the e2e server's authenticate hook (with -auth): it
// accepts every connection as the user its Hello metadata "user" names
// ("anonymous" without one), keeping the metadata in the claims, and
// refuses a bearer token that starts with "deny", naming it.
func Authenticate(_ context.Context, req *parley.AuthRequest) (*parley.Principal, error) {
	if tok, ok := strings.CutPrefix(req.Metadata["authorization"], "Bearer "); ok && strings.HasPrefix(tok, "deny") {
		return nil, parley.Errorf(parley.CodeUnauthenticated, "e2e: token %q is refused", tok)
	}
	user := req.Metadata["user"]
	if user == "" {
		user = "anonymous"
	}
	return &parley.Principal{UserID: user, Claims: map[string]any{"metadata": req.Metadata}}, nil
}
