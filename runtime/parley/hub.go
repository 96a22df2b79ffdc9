package parley

import (
	"context"
	"errors"
	"fmt"
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

// hub is a Server's registry of its own connections: by id, by user and by
// room. It delivers events the broker hands it to the connections a target
// reaches, and reports presence transitions to the application's hooks.
// mu guards the maps; presenceMu serializes presence updates so the hooks
// see a user's transitions in the order they happened.
type hub struct {
	s *Server

	mu        sync.RWMutex
	conns     map[string]*endpoint
	users     map[string]map[*endpoint]struct{}
	rooms     map[string]map[*endpoint]struct{}
	connRooms map[*endpoint]map[string]struct{}

	presenceMu sync.Mutex
	hooks      hookRunner
}

func newHub(s *Server) *hub {
	return &hub{
		s:         s,
		conns:     make(map[string]*endpoint),
		users:     make(map[string]map[*endpoint]struct{}),
		rooms:     make(map[string]map[*endpoint]struct{}),
		connRooms: make(map[*endpoint]map[string]struct{}),
	}
}

// add registers a connection after its handshake.
func (h *hub) add(e *endpoint) {
	h.mu.Lock()
	h.conns[e.peer.id] = e
	user := e.peer.userID()
	if user != "" {
		if h.users[user] == nil {
			h.users[user] = make(map[*endpoint]struct{})
		}
		h.users[user][e] = struct{}{}
	}
	h.mu.Unlock()
	if user == "" {
		return
	}
	h.presenceMu.Lock()
	defer h.presenceMu.Unlock()
	first, err := h.s.broker.Online(context.Background(), user, e.peer.id)
	if err != nil {
		h.s.cfg.logger.Error("parley: broker: recording presence", "user", user, "err", err)
		return
	}
	if first && h.s.cfg.onOnline != nil {
		h.hooks.run(func() { h.s.cfg.onOnline(user) })
	}
}

// remove unregisters a closed connection: it leaves its rooms, and its
// user may go offline.
func (h *hub) remove(e *endpoint) {
	ctx := context.Background()
	h.mu.Lock()
	delete(h.conns, e.peer.id)
	user := e.peer.userID()
	if user != "" {
		delete(h.users[user], e)
		if len(h.users[user]) == 0 {
			delete(h.users, user)
		}
	}
	rooms := h.connRooms[e]
	delete(h.connRooms, e)
	for room := range rooms {
		delete(h.rooms[room], e)
		if len(h.rooms[room]) == 0 {
			delete(h.rooms, room)
		}
	}
	h.mu.Unlock()
	for room := range rooms {
		if err := h.s.broker.Leave(ctx, room, e.peer.member()); err != nil {
			h.s.cfg.logger.Error("parley: broker: leaving a room", "room", room, "err", err)
		}
	}
	if user == "" {
		return
	}
	h.presenceMu.Lock()
	defer h.presenceMu.Unlock()
	last, err := h.s.broker.Offline(ctx, user, e.peer.id)
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

func (h *hub) join(ctx context.Context, e *endpoint, room string) error {
	h.mu.Lock()
	if _, live := h.conns[e.peer.id]; !live {
		h.mu.Unlock()
		return Errorf(CodeNotFound, "join %q: connection %s: %w", room, e.peer.id, errNoConn)
	}
	if h.rooms[room] == nil {
		h.rooms[room] = make(map[*endpoint]struct{})
	}
	h.rooms[room][e] = struct{}{}
	if h.connRooms[e] == nil {
		h.connRooms[e] = make(map[string]struct{})
	}
	h.connRooms[e][room] = struct{}{}
	h.mu.Unlock()
	return h.s.broker.Join(ctx, room, e.peer.member())
}

func (h *hub) leave(ctx context.Context, e *endpoint, room string) error {
	h.mu.Lock()
	delete(h.rooms[room], e)
	if len(h.rooms[room]) == 0 {
		delete(h.rooms, room)
	}
	delete(h.connRooms[e], room)
	h.mu.Unlock()
	return h.s.broker.Leave(ctx, room, e.peer.member())
}

func (h *hub) roomsOf(e *endpoint) []string {
	h.mu.RLock()
	defer h.mu.RUnlock()
	rooms := make([]string, 0, len(h.connRooms[e]))
	for r := range h.connRooms[e] {
		rooms = append(rooms, r)
	}
	slices.Sort(rooms)
	return rooms
}

func (h *hub) conn(id string) *endpoint {
	h.mu.RLock()
	defer h.mu.RUnlock()
	return h.conns[id]
}

func (h *hub) userConns(user string) []*endpoint {
	h.mu.RLock()
	defer h.mu.RUnlock()
	out := make([]*endpoint, 0, len(h.users[user]))
	for e := range h.users[user] {
		out = append(out, e)
	}
	return out
}

// deliver sends an event from the broker to this node's connections that
// its target reaches. The frame is encoded once per subprotocol and shared.
func (h *hub) deliver(ev *BrokerEvent) {
	enc := eventEncoder{ev: ev, log: h.s.cfg}
	send := func(e *endpoint) {
		if e.peer.id == ev.Target.except {
			return
		}
		b, err := enc.frame(e.codec)
		if err != nil {
			return
		}
		e.pushEvent(b)
	}
	h.mu.RLock()
	defer h.mu.RUnlock()
	switch ev.Target.kind {
	case targetConn:
		if e := h.conns[ev.Target.id]; e != nil {
			send(e)
		}
	case targetUser:
		for e := range h.users[ev.Target.id] {
			send(e)
		}
	case targetRoom:
		for e := range h.rooms[ev.Target.id] {
			send(e)
		}
	case targetAll:
		for _, e := range h.conns {
			send(e)
		}
	}
}

// eventEncoder encodes one event's frame lazily, once per encoding.
type eventEncoder struct {
	ev          *BrokerEvent
	log         config
	binary, txt *[]byte
	err         error
}

func (c *eventEncoder) frame(cd codec) (*[]byte, error) {
	if c.err != nil {
		return nil, c.err
	}
	f := frame{kind: kindEvent, method: c.ev.Method, hasPayload: true, payload: c.ev.Payload}
	if _, isJSON := cd.(jsonCodec); !isJSON {
		if c.binary == nil {
			b, err := cd.appendFrame(nil, &f, nil)
			if err != nil {
				c.err = err
				return nil, err
			}
			c.binary = &b
		}
		return c.binary, nil
	}
	if c.txt == nil {
		// JSON peers need the message's type to render its protojson.
		msg, err := newEventMessage(c.ev.Method)
		if err == nil {
			err = proto.Unmarshal(c.ev.Payload, msg)
		}
		if err == nil {
			f.payload, err = protojson.Marshal(msg)
		}
		var b []byte
		if err == nil {
			b, err = cd.appendFrame(nil, &f, nil)
		}
		if err != nil {
			c.err = err
			c.log.logger.Error("parley: encoding an event for JSON clients", "method", c.ev.Method, "err", err)
			return nil, err
		}
		c.txt = &b
	}
	return c.txt, nil
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

// pushEvent queues a shared event frame without waiting: a connection
// whose queue is full is a slow consumer and is closed, so that publishers
// and the other connections never wait for it.
func (e *endpoint) pushEvent(b *[]byte) {
	err := e.q.pushFrame(e.ctx, outFrame{b: b}, false)
	if errors.Is(err, errSlowConsumer) {
		e.log.Warn("parley: closing a slow consumer", "conn", e.peer.id, "send_queue_bytes", e.cfg.sendQueueBytes)
		e.abort(CloseSlowConsumer, fmt.Sprintf("slow consumer: more than %d bytes queued", e.cfg.sendQueueBytes))
	}
}

// hookRunner calls presence hooks one at a time, in order, on a goroutine
// of its own, which exists only while hooks are queued.
type hookRunner struct {
	mu      sync.Mutex
	queue   []func()
	running bool
	wg      sync.WaitGroup
}

func (r *hookRunner) run(fn func()) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.queue = append(r.queue, fn)
	if !r.running {
		r.running = true
		r.wg.Add(1)
		go r.loop()
	}
}

func (r *hookRunner) loop() {
	defer r.wg.Done()
	for {
		r.mu.Lock()
		if len(r.queue) == 0 {
			r.running = false
			r.mu.Unlock()
			return
		}
		fn := r.queue[0]
		r.queue = r.queue[1:]
		r.mu.Unlock()
		fn()
	}
}
