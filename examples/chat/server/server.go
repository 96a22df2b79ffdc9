// Package server is the chat example's server: chat.v1.ChatService over
// Parley, with rooms, presence, typing indicators and a server-to-client
// call (ChatEvents.ConfirmLeave, used by Kick), and the browser page.
//
// State lives in memory, in one process, on Parley's default in-process
// broker. Membership belongs to users: a user stays a member of a room
// while offline, until they leave or are kicked. Delivery belongs to
// connections: a connection receives a room's events once it called Join
// for that room (Peer.Join), until it closes.
package server

import (
	"context"
	"errors"
	"io"
	"io/fs"
	"log/slog"
	"net/http"
	"regexp"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	chatv1 "github.com/parleyrpc/parley/examples/chat/gen/chat/v1"
	"github.com/parleyrpc/parley/examples/chat/gen/chat/v1/chatv1parley"
	"github.com/parleyrpc/parley/examples/chat/web"
	"github.com/parleyrpc/parley/runtime/parley"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// Limits of the example.
const (
	// HistorySize is how many messages a room keeps for Join.
	HistorySize = 50
	// MaxTextLen is the longest message, in characters.
	MaxTextLen = 2000
	// TypingTimeout is how long a user stays typing after their last
	// typing = true.
	TypingTimeout = 5 * time.Second
	// dedupSize is how many client_message_ids a room remembers.
	dedupSize = 1000
)

var (
	nameRE = regexp.MustCompile(`^[A-Za-z0-9_-]{1,32}$`)
	roomRE = regexp.MustCompile(`^[a-z0-9_-]{1,32}$`)
)

// DevTokenPrefix starts a development token: "dev-ada" signs in as "ada".
const DevTokenPrefix = "dev-"

// Authenticate accepts development tokens: the hello metadata (or, for
// non-browser clients, the upgrade request's header) "authorization:
// Bearer dev-<name>" signs in as user <name> (1 to 32 letters, digits, '-'
// or '_'). Anything else is refused with unauthenticated. It stands in for
// a real check of a session cookie or a signed token.
func Authenticate(_ context.Context, req *parley.AuthRequest) (*parley.Principal, error) {
	auth := req.Metadata["authorization"]
	if auth == "" && req.HTTP != nil {
		auth = req.HTTP.Header.Get("Authorization")
	}
	if auth == "" {
		return nil, parley.NewError(parley.CodeUnauthenticated, `no token: send "authorization: Bearer dev-<name>" in the hello metadata`)
	}
	token, ok := strings.CutPrefix(auth, "Bearer ")
	if !ok {
		return nil, parley.NewError(parley.CodeUnauthenticated, `the authorization must be "Bearer <token>"`)
	}
	name, ok := strings.CutPrefix(token, DevTokenPrefix)
	if !ok || !nameRE.MatchString(name) {
		return nil, parley.NewError(parley.CodeUnauthenticated, `invalid token: this server accepts development tokens "dev-<name>", name of 1 to 32 letters, digits, '-' or '_'`)
	}
	return &parley.Principal{UserID: name}, nil
}

// Server implements chatv1parley.ChatServiceServer. Create one with New.
type Server struct {
	chatv1parley.UnimplementedChatServiceServer

	parley *parley.Server
	events *chatv1parley.ChatEventsPublisher
	log    *slog.Logger

	mu       sync.Mutex
	rooms    map[string]*room
	watchers map[*typingWatcher]struct{}
}

type room struct {
	name    string
	members map[string]struct{} // user ids
	history []*chatv1.ChatMessage
	lastID  uint64
	// posted remembers messages by user and client_message_id, for Post's
	// idempotency; order evicts the oldest beyond dedupSize.
	posted map[string]*chatv1.ChatMessage
	order  []string
	typing map[string]*typist // by user
}

type typist struct {
	expires time.Time
	timer   *time.Timer
}

// New returns a chat server. Extra options (a logger, allowed origins, a
// broker...) are passed on to its parley.Server.
func New(opts ...parley.ServerOption) *Server {
	s := &Server{
		rooms:    make(map[string]*room),
		watchers: make(map[*typingWatcher]struct{}),
		log:      slog.New(slog.DiscardHandler),
	}
	all := []parley.ServerOption{
		parley.WithAuthenticate(Authenticate),
		parley.WithPresenceHooks(s.online, s.offline),
	}
	s.parley = parley.NewServer(append(all, opts...)...)
	s.events = chatv1parley.NewChatEventsPublisher(s.parley)
	chatv1parley.RegisterChatServiceServer(s.parley, s)
	return s
}

// Parley returns the parley.Server, to mount at the path clients dial or
// to Shutdown.
func (s *Server) Parley() *parley.Server { return s.parley }

// Handler serves the browser page at / and Parley at /parley. The page
// comes from page, or when nil from the copy embedded in the binary
// (web.Static).
func (s *Server) Handler(page fs.FS) http.Handler {
	if page == nil {
		page = web.Static()
	}
	mux := http.NewServeMux()
	mux.Handle("/parley", s.parley)
	mux.Handle("/", http.FileServerFS(page))
	return mux
}

// caller returns the calling connection and its user.
func caller(ctx context.Context) (*parley.Peer, string, error) {
	peer, ok := parley.PeerFromContext(ctx)
	if !ok || peer.Principal() == nil {
		return nil, "", parley.NewError(parley.CodeUnauthenticated, "not signed in")
	}
	return peer, peer.Principal().UserID, nil
}

func checkRoom(name string) error {
	if !roomRE.MatchString(name) {
		return parley.Errorf(parley.CodeInvalidArgument, "room %q: names are 1 to 32 lowercase letters, digits, '-' or '_'", name)
	}
	return nil
}

// joined fails unless the connection joined the room.
func joined(peer *parley.Peer, name string) error {
	if err := checkRoom(name); err != nil {
		return err
	}
	if !slices.Contains(peer.Rooms(), name) {
		return parley.Errorf(parley.CodeFailedPrecondition, "join room %q first", name)
	}
	return nil
}

// Join implements chatv1parley.ChatServiceServer.
func (s *Server) Join(ctx context.Context, req *chatv1.JoinRequest) (*chatv1.JoinResponse, error) {
	peer, user, err := caller(ctx)
	if err != nil {
		return nil, err
	}
	if err := checkRoom(req.GetRoom()); err != nil {
		return nil, err
	}
	// Deliver the room's events to this connection first, then take the
	// snapshot: a message posted in between arrives both in the history
	// and as an event (clients drop the duplicate by id), never in neither.
	if err := peer.Join(ctx, req.GetRoom()); err != nil {
		return nil, err
	}
	s.mu.Lock()
	r := s.rooms[req.GetRoom()]
	if r == nil {
		r = &room{
			name:    req.GetRoom(),
			members: make(map[string]struct{}),
			posted:  make(map[string]*chatv1.ChatMessage),
			typing:  make(map[string]*typist),
		}
		s.rooms[r.name] = r
	}
	_, already := r.members[user]
	r.members[user] = struct{}{}
	members := sortedKeys(r.members)
	history := slices.Clone(r.history)
	if !already {
		s.publish(ctx, "UserJoined", s.events.UserJoined(ctx, parley.ToRoom(r.name).Except(peer.ID()),
			&chatv1.UserJoinedEvent{Room: r.name, User: user, Online: true}))
	}
	typing := sortedKeys(r.typing)
	s.mu.Unlock()

	res := &chatv1.JoinResponse{Room: req.GetRoom(), History: history}
	for _, m := range members {
		online, err := s.parley.IsOnline(ctx, m)
		if err != nil {
			return nil, err
		}
		res.Members = append(res.Members, &chatv1.Member{User: m, Online: online})
	}
	if len(typing) > 0 {
		s.notifyWatchers(peer.ID(), r.name, typing)
	}
	return res, nil
}

// Leave implements chatv1parley.ChatServiceServer.
func (s *Server) Leave(ctx context.Context, req *chatv1.LeaveRequest) (*chatv1.LeaveResponse, error) {
	_, user, err := caller(ctx)
	if err != nil {
		return nil, err
	}
	if err := checkRoom(req.GetRoom()); err != nil {
		return nil, err
	}
	if !s.remove(ctx, req.GetRoom(), user, &chatv1.UserLeftEvent{Reason: "left"}) {
		return nil, parley.Errorf(parley.CodeNotFound, "you are not a member of %q", req.GetRoom())
	}
	return &chatv1.LeaveResponse{}, nil
}

// remove takes user out of a room: everyone in the room (the user's own
// connections included) gets ev, then the user's connections leave the
// room. It reports whether the user was a member.
func (s *Server) remove(ctx context.Context, name, user string, ev *chatv1.UserLeftEvent) bool {
	s.mu.Lock()
	r := s.rooms[name]
	if r == nil {
		s.mu.Unlock()
		return false
	}
	if _, ok := r.members[user]; !ok {
		s.mu.Unlock()
		return false
	}
	delete(r.members, user)
	s.stopTypingLocked(ctx, r, user, "")
	ev.Room, ev.User = name, user
	s.publish(ctx, "UserLeft", s.events.UserLeft(ctx, parley.ToRoom(name), ev))
	s.mu.Unlock()
	if err := s.parley.LeaveUser(ctx, user, name); err != nil {
		s.log.Error("chat: leaving a room", "room", name, "user", user, "err", err)
	}
	return true
}

// Post implements chatv1parley.ChatServiceServer.
func (s *Server) Post(ctx context.Context, req *chatv1.PostRequest) (*chatv1.PostResponse, error) {
	peer, user, err := caller(ctx)
	if err != nil {
		return nil, err
	}
	if err := joined(peer, req.GetRoom()); err != nil {
		return nil, err
	}
	text := strings.TrimSpace(req.GetText())
	if text == "" || utf8.RuneCountInString(text) > MaxTextLen {
		return nil, parley.Errorf(parley.CodeInvalidArgument, "a message has 1 to %d characters", MaxTextLen)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	r := s.rooms[req.GetRoom()]
	if r == nil {
		return nil, parley.Errorf(parley.CodeFailedPrecondition, "join room %q first", req.GetRoom())
	}
	if _, member := r.members[user]; !member {
		return nil, parley.Errorf(parley.CodeFailedPrecondition, "you were removed from %q", r.name)
	}
	key := ""
	if id := req.GetClientMessageId(); id != "" {
		key = user + "\x00" + id
		if m, ok := r.posted[key]; ok {
			return &chatv1.PostResponse{Message: m}, nil
		}
	}
	r.lastID++
	m := &chatv1.ChatMessage{
		Id:              r.lastID,
		Room:            r.name,
		User:            user,
		Text:            text,
		SentAt:          timestamppb.Now(),
		ClientMessageId: req.GetClientMessageId(),
	}
	r.history = append(r.history, m)
	if n := len(r.history) - HistorySize; n > 0 {
		r.history = slices.Delete(r.history, 0, n)
	}
	if key != "" {
		r.posted[key] = m
		r.order = append(r.order, key)
		if len(r.order) > dedupSize {
			delete(r.posted, r.order[0])
			r.order = r.order[1:]
		}
	}
	s.stopTypingLocked(ctx, r, user, "")
	s.publish(ctx, "MessagePosted", s.events.MessagePosted(ctx, parley.ToRoom(r.name), m))
	return &chatv1.PostResponse{Message: m}, nil
}

// SetTyping implements chatv1parley.ChatServiceServer.
func (s *Server) SetTyping(ctx context.Context, req *chatv1.SetTypingRequest) (*chatv1.SetTypingResponse, error) {
	peer, user, err := caller(ctx)
	if err != nil {
		return nil, err
	}
	if err := joined(peer, req.GetRoom()); err != nil {
		return nil, err
	}
	s.setTyping(req.GetRoom(), user, req.GetTyping(), peer.ID())
	return &chatv1.SetTypingResponse{}, nil
}

// ListRooms implements chatv1parley.ChatServiceServer.
func (s *Server) ListRooms(ctx context.Context, _ *chatv1.ListRoomsRequest) (*chatv1.ListRoomsResponse, error) {
	_, user, err := caller(ctx)
	if err != nil {
		return nil, err
	}
	type snapshot struct {
		name    string
		members []string
	}
	s.mu.Lock()
	rooms := make([]snapshot, 0, len(s.rooms))
	for _, r := range s.rooms {
		rooms = append(rooms, snapshot{r.name, sortedKeys(r.members)})
	}
	s.mu.Unlock()
	sort.Slice(rooms, func(i, j int) bool { return rooms[i].name < rooms[j].name })
	res := &chatv1.ListRoomsResponse{}
	for _, r := range rooms {
		info := &chatv1.RoomInfo{Name: r.name, Members: uint32(len(r.members)), Joined: slices.Contains(r.members, user)}
		for _, m := range r.members {
			if online, err := s.parley.IsOnline(ctx, m); err != nil {
				return nil, err
			} else if online {
				info.Online++
			}
		}
		res.Rooms = append(res.Rooms, info)
	}
	return res, nil
}

// Kick implements chatv1parley.ChatServiceServer: it asks each of the
// user's connections in the room to confirm (ChatEvents.ConfirmLeave), at
// once, and removes the user unless one declines.
func (s *Server) Kick(ctx context.Context, req *chatv1.KickRequest) (*chatv1.KickResponse, error) {
	peer, user, err := caller(ctx)
	if err != nil {
		return nil, err
	}
	if err := joined(peer, req.GetRoom()); err != nil {
		return nil, err
	}
	target := req.GetUser()
	if target == user {
		return nil, parley.NewError(parley.CodeInvalidArgument, "to leave a room yourself, call Leave")
	}
	member := false
	s.mu.Lock()
	if r := s.rooms[req.GetRoom()]; r != nil {
		_, member = r.members[target]
	}
	s.mu.Unlock()
	if !member {
		return nil, parley.Errorf(parley.CodeNotFound, "%s is not a member of %q", target, req.GetRoom())
	}
	if online, err := s.parley.IsOnline(ctx, target); err != nil {
		return nil, err
	} else if !online {
		return nil, parley.Errorf(parley.CodeFailedPrecondition, "%s is offline: they can only be asked to leave while online", target)
	}
	members, err := s.parley.Members(ctx, req.GetRoom())
	if err != nil {
		return nil, err
	}
	ask := &chatv1.ConfirmLeaveRequest{Room: req.GetRoom(), By: user, Reason: req.GetReason()}
	type answer struct {
		res *chatv1.ConfirmLeaveResponse
		err error
	}
	answers := make(chan answer, len(members))
	asked := 0
	for _, m := range members {
		if m.UserID != target {
			continue
		}
		p, ok := s.parley.Peer(m.ConnID)
		if !ok {
			continue
		}
		asked++
		go func() {
			res, err := chatv1parley.NewChatEventsClient(p).ConfirmLeave(ctx, ask)
			answers <- answer{res, err}
		}()
	}
	// The first refusal ends Kick, and with it ctx, which cancels the
	// questions still pending on the user's other connections.
	for range asked {
		a := <-answers
		if a.err != nil {
			// No answer in time, no handler, a closed connection: the
			// client did not object.
			s.log.Info("chat: ConfirmLeave got no answer; removing anyway", "room", req.GetRoom(), "user", target, "err", a.err)
			continue
		}
		if !a.res.GetAccept() {
			return &chatv1.KickResponse{Removed: false, Message: a.res.GetMessage()}, nil
		}
	}
	removed := s.remove(ctx, req.GetRoom(), target, &chatv1.UserLeftEvent{Reason: "kicked", By: user})
	return &chatv1.KickResponse{Removed: removed}, nil
}

// online and offline are the presence hooks: everyone hears of it.
func (s *Server) online(user string) {
	ctx := context.Background()
	s.publish(ctx, "PresenceChanged", s.events.PresenceChanged(ctx, parley.ToAll(), &chatv1.PresenceChangedEvent{User: user, Online: true}))
}

func (s *Server) offline(user string) {
	ctx := context.Background()
	s.mu.Lock()
	for _, r := range s.rooms {
		s.stopTypingLocked(ctx, r, user, "")
	}
	s.mu.Unlock()
	s.publish(ctx, "PresenceChanged", s.events.PresenceChanged(ctx, parley.ToAll(), &chatv1.PresenceChangedEvent{User: user, Online: false}))
}

func (s *Server) publish(_ context.Context, what string, err error) {
	if err != nil {
		s.log.Error("chat: publishing", "event", what, "err", err)
	}
}

// setTyping records whether user is typing in a room; a change goes to
// the room as ChatEvents.Typing (except to exceptConn, the typist's own
// connection) and to every TypingStream of a connection in the room.
func (s *Server) setTyping(name, user string, typing bool, exceptConn string) {
	ctx := context.Background()
	s.mu.Lock()
	defer s.mu.Unlock()
	r := s.rooms[name]
	if r == nil {
		return
	}
	if !typing {
		s.stopTypingLocked(ctx, r, user, exceptConn)
		return
	}
	if _, member := r.members[user]; !member {
		return
	}
	if t := r.typing[user]; t != nil {
		t.expires = time.Now().Add(TypingTimeout)
		t.timer.Reset(TypingTimeout)
		return
	}
	t := &typist{expires: time.Now().Add(TypingTimeout)}
	t.timer = time.AfterFunc(TypingTimeout, func() { s.expireTyping(name, user, t) })
	r.typing[user] = t
	s.typingChangedLocked(ctx, r, user, true, exceptConn)
}

// expireTyping ends t unless it was refreshed meanwhile.
func (s *Server) expireTyping(name, user string, t *typist) {
	s.mu.Lock()
	defer s.mu.Unlock()
	r := s.rooms[name]
	if r == nil || r.typing[user] != t || time.Now().Before(t.expires) {
		return
	}
	s.stopTypingLocked(context.Background(), r, user, "")
}

func (s *Server) stopTypingLocked(ctx context.Context, r *room, user, exceptConn string) {
	t := r.typing[user]
	if t == nil {
		return
	}
	t.timer.Stop()
	delete(r.typing, user)
	s.typingChangedLocked(ctx, r, user, false, exceptConn)
}

func (s *Server) typingChangedLocked(ctx context.Context, r *room, user string, typing bool, exceptConn string) {
	target := parley.ToRoom(r.name)
	if exceptConn != "" {
		target = target.Except(exceptConn)
	}
	s.publish(ctx, "Typing", s.events.Typing(ctx, target, &chatv1.TypingEvent{Room: r.name, User: user, Typing: typing}))
	users := sortedKeys(r.typing)
	for w := range s.watchers {
		if slices.Contains(w.peer.Rooms(), r.name) {
			w.offer(r.name, users)
		}
	}
}

// notifyWatchers sends one connection's TypingStreams a room's typists.
func (s *Server) notifyWatchers(connID, name string, users []string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for w := range s.watchers {
		if w.peer.ID() == connID {
			w.offer(name, users)
		}
	}
}

// typingWatcher is one open TypingStream. Updates for a room coalesce:
// a stream that falls behind skips to the latest list instead of queueing
// every change.
type typingWatcher struct {
	peer *parley.Peer

	mu      sync.Mutex
	pending map[string][]string // room → typists, not yet sent
	order   []string            // rooms in pending, oldest change first
	wake    chan struct{}       // capacity 1
}

func (w *typingWatcher) offer(room string, users []string) {
	w.mu.Lock()
	if _, queued := w.pending[room]; !queued {
		w.order = append(w.order, room)
	}
	w.pending[room] = users
	w.mu.Unlock()
	select {
	case w.wake <- struct{}{}:
	default:
	}
}

func (w *typingWatcher) take() []*chatv1.TypingStreamResponse {
	w.mu.Lock()
	defer w.mu.Unlock()
	out := make([]*chatv1.TypingStreamResponse, 0, len(w.order))
	for _, room := range w.order {
		out = append(out, &chatv1.TypingStreamResponse{Room: room, Users: w.pending[room]})
	}
	clear(w.pending)
	w.order = w.order[:0]
	return out
}

// TypingStream implements chatv1parley.ChatServiceServer. The requests are
// read on a goroutine of their own while this one sends the updates; the
// stream ends cleanly when the client closes its side, with
// failed_precondition when it names a room it did not join.
func (s *Server) TypingStream(ctx context.Context, stream *parley.BidiStream[chatv1.TypingStreamRequest, chatv1.TypingStreamResponse]) error {
	peer, user, err := caller(ctx)
	if err != nil {
		return err
	}
	w := &typingWatcher{peer: peer, pending: make(map[string][]string), wake: make(chan struct{}, 1)}
	s.mu.Lock()
	s.watchers[w] = struct{}{}
	for _, name := range peer.Rooms() {
		if r := s.rooms[name]; r != nil && len(r.typing) > 0 {
			w.offer(name, sortedKeys(r.typing))
		}
	}
	s.mu.Unlock()

	typingIn := make(map[string]bool) // rooms where this stream set the user typing
	defer func() {
		s.mu.Lock()
		delete(s.watchers, w)
		s.mu.Unlock()
		for name := range typingIn {
			s.setTyping(name, user, false, peer.ID())
		}
	}()

	recvDone := make(chan error, 1)
	go func() {
		for {
			req, err := stream.Recv()
			if err != nil {
				if errors.Is(err, io.EOF) {
					err = nil
				}
				recvDone <- err
				return
			}
			if err := joined(peer, req.GetRoom()); err != nil {
				recvDone <- err
				return
			}
			s.setTyping(req.GetRoom(), user, req.GetTyping(), peer.ID())
			// typingIn is this goroutine's until recvDone, which every
			// return below waits for.
			if req.GetTyping() {
				typingIn[req.GetRoom()] = true
			} else {
				delete(typingIn, req.GetRoom())
			}
		}
	}()
	for {
		select {
		case err := <-recvDone:
			return err
		case <-ctx.Done():
			<-recvDone
			return ctx.Err()
		case <-w.wake:
			for _, res := range w.take() {
				if err := stream.Send(res); err != nil {
					<-recvDone
					return err
				}
			}
		}
	}
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
