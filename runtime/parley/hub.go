package parley

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
)

// CloseSlowConsumer is the WebSocket close code of a connection whose send
// queue overflowed (see WithSendQueueBytes): it did not read its events
// fast enough. The others are unaffected.
const CloseSlowConsumer = 4001

// CloseWriteTimeout is the close code of a connection a write to which
// took longer than the write timeout (see WithWriteTimeout).
const CloseWriteTimeout = closeWriteTimeout

// hub is a Server's registry of its sessions: by id, by user and by room.
// It delivers events the broker hands it to the sessions a target reaches,
// and reports presence transitions to the application's hooks. Sessions,
// not sockets, are members: a client that reconnects and resumes keeps its
// rooms and does not flap offline. mu guards the maps; presenceMu
// serializes presence updates so the hooks see a user's transitions in the
// order they happened. A session's roomsMu (taken before the hub's mu, never
// after) orders its joins, leaves and removal, each with its broker call, so
// that the broker's members agree with the hub's: a Join racing the
// session's end either lands before it (and the end leaves the room) or
// fails with not_found, and never records a member the broker keeps for
// ever.
type hub struct {
	s *Server

	mu        sync.RWMutex
	sessions  map[string]*session
	users     map[string]map[*session]struct{}
	rooms     map[string]map[*session]struct{}
	roomsOfSn map[*session][]string // a session's rooms, sorted; few per session, so a slice

	presenceMu sync.Mutex
	hooks      hookRunner
}

func newHub(s *Server) *hub {
	return &hub{
		s:         s,
		sessions:  make(map[string]*session),
		users:     make(map[string]map[*session]struct{}),
		rooms:     make(map[string]map[*session]struct{}),
		roomsOfSn: make(map[*session][]string),
		hooks:     hookRunner{what: "presence hook", log: s.cfg.logger},
	}
}

// add registers a new session.
func (h *hub) add(sn *session) {
	h.mu.Lock()
	h.sessions[sn.id] = sn
	user := sn.peer.userID()
	if user != "" {
		if h.users[user] == nil {
			h.users[user] = make(map[*session]struct{})
		}
		h.users[user][sn] = struct{}{}
	}
	h.mu.Unlock()
	if user == "" {
		return
	}
	h.presenceMu.Lock()
	defer h.presenceMu.Unlock()
	first, err := h.s.broker.Online(context.Background(), user, sn.id)
	if err != nil {
		h.s.cfg.logger.Error("parley: broker: recording presence", "user", user, "err", err)
		return
	}
	if first && h.s.cfg.onOnline != nil {
		h.hooks.run(func() { h.s.cfg.onOnline(user) })
	}
}

// remove unregisters an ended session: it leaves its rooms, and its user
// may go offline.
func (h *hub) remove(sn *session) {
	ctx := context.Background()
	sn.roomsMu.Lock()
	h.mu.Lock()
	if h.sessions[sn.id] != sn {
		h.mu.Unlock()
		sn.roomsMu.Unlock()
		return
	}
	delete(h.sessions, sn.id)
	user := sn.peer.userID()
	if user != "" {
		delete(h.users[user], sn)
		if len(h.users[user]) == 0 {
			delete(h.users, user)
		}
	}
	rooms := h.roomsOfSn[sn]
	delete(h.roomsOfSn, sn)
	for _, room := range rooms {
		delete(h.rooms[room], sn)
		if len(h.rooms[room]) == 0 {
			delete(h.rooms, room)
		}
	}
	h.mu.Unlock()
	for _, room := range rooms {
		if err := h.s.broker.Leave(ctx, room, sn.peer.member()); err != nil {
			h.s.cfg.logger.Error("parley: broker: leaving a room", "room", room, "err", err)
		}
	}
	sn.roomsMu.Unlock()
	if user == "" {
		return
	}
	h.presenceMu.Lock()
	defer h.presenceMu.Unlock()
	last, err := h.s.broker.Offline(ctx, user, sn.id)
	if err != nil {
		h.s.cfg.logger.Error("parley: broker: recording presence", "user", user, "err", err)
		return
	}
	if last && h.s.cfg.onOffline != nil {
		h.hooks.run(func() { h.s.cfg.onOffline(user) })
	}
}

// errNoConn is returned when a room operation names an unknown connection.
var errNoConn = errors.New("no such connection")

func (h *hub) join(ctx context.Context, sn *session, room string) error {
	sn.roomsMu.Lock()
	defer sn.roomsMu.Unlock()
	h.mu.Lock()
	if h.sessions[sn.id] != sn {
		h.mu.Unlock()
		return Errorf(CodeNotFound, "join %q: connection %s: %w", room, sn.id, errNoConn)
	}
	if h.rooms[room] == nil {
		h.rooms[room] = make(map[*session]struct{})
	}
	h.rooms[room][sn] = struct{}{}
	if rooms := h.roomsOfSn[sn]; !slices.Contains(rooms, room) {
		i, _ := slices.BinarySearch(rooms, room)
		h.roomsOfSn[sn] = slices.Insert(rooms, i, room)
	}
	h.mu.Unlock()
	return h.s.broker.Join(ctx, room, sn.peer.member())
}

func (h *hub) leave(ctx context.Context, sn *session, room string) error {
	sn.roomsMu.Lock()
	defer sn.roomsMu.Unlock()
	h.mu.Lock()
	delete(h.rooms[room], sn)
	if len(h.rooms[room]) == 0 {
		delete(h.rooms, room)
	}
	if rooms := h.roomsOfSn[sn]; len(rooms) > 0 {
		if i, ok := slices.BinarySearch(rooms, room); ok {
			rooms = slices.Delete(rooms, i, i+1)
		}
		if len(rooms) == 0 {
			delete(h.roomsOfSn, sn)
		} else {
			h.roomsOfSn[sn] = rooms
		}
	}
	h.mu.Unlock()
	return h.s.broker.Leave(ctx, room, sn.peer.member())
}

func (h *hub) roomsOf(sn *session) []string {
	h.mu.RLock()
	defer h.mu.RUnlock()
	return append([]string{}, h.roomsOfSn[sn]...)
}

func (h *hub) session(id string) *session {
	h.mu.RLock()
	defer h.mu.RUnlock()
	return h.sessions[id]
}

func (h *hub) userSessions(user string) []*session {
	h.mu.RLock()
	defer h.mu.RUnlock()
	out := make([]*session, 0, len(h.users[user]))
	for sn := range h.users[user] {
		out = append(out, sn)
	}
	return out
}

// deliver hands an event from the broker to this node's sessions that its
// target reaches.
func (h *hub) deliver(bev *BrokerEvent) {
	ev := &eventData{method: bev.Method, payload: bev.Payload, log: h.s.cfg.logger}
	// Collect the recipients under the lock, deliver outside it, so that
	// joins and leaves never wait for a large room's fan-out.
	rs := recipientsPool.Get().(*[]*session)
	list := (*rs)[:0]
	h.mu.RLock()
	switch bev.Target.kind {
	case targetConn:
		if sn := h.sessions[bev.Target.id]; sn != nil {
			list = append(list, sn)
		}
	case targetUser:
		for sn := range h.users[bev.Target.id] {
			list = append(list, sn)
		}
	case targetRoom:
		for sn := range h.rooms[bev.Target.id] {
			list = append(list, sn)
		}
	case targetAll:
		for _, sn := range h.sessions {
			list = append(list, sn)
		}
	}
	h.mu.RUnlock()
	for _, sn := range list {
		if sn.id != bev.Target.except {
			sn.deliverEvent(ev)
		}
	}
	clear(list)
	*rs = list[:0]
	recipientsPool.Put(rs)
}

var recipientsPool = sync.Pool{New: func() any { return new([]*session) }}

// eventData is one published event, shared by every session it reaches.
// Its protojson form, for JSON clients, is made once, on first need.
type eventData struct {
	method  string
	payload []byte // protobuf
	log     *slog.Logger

	jsonOnce sync.Once
	json     []byte
	jsonErr  error
}

// payloadFor returns the payload in a codec's encoding.
func (d *eventData) payloadFor(cd codec) ([]byte, error) {
	if _, isJSON := cd.(jsonCodec); !isJSON {
		return d.payload, nil
	}
	d.jsonOnce.Do(func() {
		// JSON peers need the message's type to render its protojson.
		msg, err := newEventMessage(d.method)
		if err == nil {
			err = proto.Unmarshal(d.payload, msg)
		}
		if err == nil {
			d.json, err = protojson.Marshal(msg)
		}
		d.jsonErr = err
	})
	return d.json, d.jsonErr
}

// pushEvent queues an event frame without waiting: a connection whose
// queue is full is a slow consumer and is closed, so that publishers and
// the other connections never wait for it. (Its session survives: the
// client may resume and get the events it missed, if they still fit the
// session's buffer.)
func (e *endpoint) pushEvent(f outFrame) {
	var err error
	if e.flush == nil {
		err = e.q.pushFrame(e.ctx, f, false)
	} else {
		var start bool
		if start, err = e.q.pushHanded(f); start {
			e.flush.add(e)
		}
	}
	if err != nil {
		putBuf(f.b)
	}
	if errors.Is(err, errSlowConsumer) {
		e.log.Warn("parley: closing a slow consumer", "conn", e.peer.id, "send_queue_bytes", e.cfg.sendQueueBytes)
		e.abort(CloseSlowConsumer, fmt.Sprintf("slow consumer: more than %d bytes queued", e.cfg.sendQueueBytes))
	}
}

// hookRunner calls presence hooks one at a time, in order, on a goroutine
// of its own, which exists only while hooks are queued. A hook that panics
// is logged (what names the hooks) and the next one runs: the application's
// bug must not take the process down. The queue is not bounded: it holds a
// hook per transition while one blocks (documented on WithPresenceHooks),
// as bounding it would lose transitions or hold up handshakes. mu guards
// the fields below it.
type hookRunner struct {
	what string
	log  *slog.Logger

	mu      sync.Mutex
	queue   []func()
	running bool
	idle    chan struct{} // closed when the running goroutine exits
}

func (r *hookRunner) run(fn func()) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.queue = append(r.queue, fn)
	if !r.running {
		r.running = true
		r.idle = make(chan struct{})
		go r.loop(r.idle)
	}
}

// wait returns once no hook is queued or running, or with ctx's error when
// it ends first.
func (r *hookRunner) wait(ctx context.Context) error {
	for {
		r.mu.Lock()
		running, idle := r.running, r.idle
		r.mu.Unlock()
		if !running {
			return nil
		}
		select {
		case <-idle:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

func (r *hookRunner) loop(idle chan struct{}) {
	for {
		r.mu.Lock()
		if len(r.queue) == 0 {
			r.running = false
			close(idle)
			r.mu.Unlock()
			return
		}
		fn := r.queue[0]
		r.queue = r.queue[1:]
		r.mu.Unlock()
		r.call(fn)
	}
}

func (r *hookRunner) call(fn func()) {
	defer func() {
		if rec := recover(); rec != nil && r.log != nil {
			r.log.Error("parley: "+r.what+" panicked", "panic", fmt.Sprint(rec))
		}
	}()
	fn()
}

// newEventMessage returns an empty input message of a procedure, found in
// the global registry that generated code registers with.
func newEventMessage(procedure string) (proto.Message, error) {
	svc, method, ok := strings.Cut(strings.TrimPrefix(procedure, "/"), "/")
	if !ok {
		return nil, fmt.Errorf("malformed procedure %q", procedure)
	}
	d, err := protoregistry.GlobalFiles.FindDescriptorByName(protoreflect.FullName(svc))
	if err != nil {
		return nil, err
	}
	sd, ok := d.(protoreflect.ServiceDescriptor)
	if !ok {
		return nil, fmt.Errorf("%s is not a service", svc)
	}
	md := sd.Methods().ByName(protoreflect.Name(method))
	if md == nil {
		return nil, fmt.Errorf("%s has no method %s", svc, method)
	}
	mt, err := protoregistry.GlobalTypes.FindMessageByName(md.Input().FullName())
	if err != nil {
		return nil, err
	}
	return mt.New().Interface(), nil
}
