package e2e_test

// A new user's trial of Parley's server-push side from Go: events to every
// kind of target, rooms, presence, authentication and interceptors, over
// real loopback WebSockets with the generated clients, in both encodings,
// used the ways a demanding user uses them (and misuses them). Each test
// asserts what the README promises.

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	e2ev1 "github.com/parleyrpc/parley/internal/e2e/gen/e2e/v1"
	"github.com/parleyrpc/parley/internal/e2e/gen/e2e/v1/e2ev1parley"
	"github.com/parleyrpc/parley/runtime/parley"
	"google.golang.org/protobuf/proto"
)

// The trial's own server methods (payloads are e2e messages).
var (
	// evWhoSpec answers "connID user" of the calling connection.
	evWhoSpec = &parley.MethodSpec{Procedure: "/trial.Events/Who"}
	// evJoinSpec puts the caller in the room named in Text.
	evJoinSpec = &parley.MethodSpec{Procedure: "/trial.Events/Join"}
	// evLeaveSpec takes the caller out of the room named in Text.
	evLeaveSpec = &parley.MethodSpec{Procedure: "/trial.Events/Leave"}
	// evDoSpec runs the test's do hook.
	evDoSpec = &parley.MethodSpec{Procedure: "/trial.Events/Do"}
	// evStreamWhoSpec streams one item: "connID user" of the caller.
	evStreamWhoSpec = &parley.MethodSpec{Procedure: "/trial.Events/StreamWho", Kind: parley.StreamServer}
)

// evTrial is a server for the trial: it authenticates every connection as
// the "user" of its Hello metadata (unless the test sets its own hook),
// and records presence transitions.
type evTrial struct {
	srv *parley.Server
	url string
	pub *e2ev1parley.ClientEventsPublisher
	// stop shuts the server down and closes its listener (once; Cleanup
	// does it too).
	stop func()

	// do is what the Do method runs (setDo).
	doMu sync.Mutex
	do   func(ctx context.Context, req *e2ev1.EchoRequest) (*e2ev1.EchoResponse, error)

	presMu   sync.Mutex
	presence []string      // "on:user" and "off:user", in the order the hooks ran
	presMore chan struct{} // a 1-buffered signal that presence grew

	barrierSeq atomic.Int32
}

func authByMetadata(_ context.Context, r *parley.AuthRequest) (*parley.Principal, error) {
	return &parley.Principal{UserID: r.Metadata["user"], Claims: map[string]any{"header": r.HTTP.Header.Get("X-Trial")}}, nil
}

// newEvTrial starts a trial server; opts come after the defaults (an
// authenticate hook and presence hooks), so a test may replace them.
func newEvTrial(t *testing.T, opts ...parley.ServerOption) *evTrial {
	t.Helper()
	fx := &evTrial{presMore: make(chan struct{}, 1)}
	all := append([]parley.ServerOption{
		parley.WithAuthenticate(authByMetadata),
		parley.WithPresenceHooks(func(u string) { fx.note("on:" + u) }, func(u string) { fx.note("off:" + u) }),
	}, opts...)
	fx.srv = parley.NewServer(all...)
	fx.pub = e2ev1parley.NewClientEventsPublisher(fx.srv)
	who := func(ctx context.Context) string {
		peer, ok := parley.PeerFromContext(ctx)
		if !ok {
			return "no peer"
		}
		p, ok := parley.PrincipalFromContext(ctx)
		if !ok {
			return peer.ID() + " -"
		}
		return peer.ID() + " " + p.UserID
	}
	fx.srv.Register(
		parley.NewUnaryMethod(evWhoSpec, func(ctx context.Context, _ *e2ev1.EchoRequest) (*e2ev1.EchoResponse, error) {
			return &e2ev1.EchoResponse{Text: who(ctx)}, nil
		}),
		parley.NewUnaryMethod(evJoinSpec, func(ctx context.Context, r *e2ev1.EchoRequest) (*e2ev1.EchoResponse, error) {
			peer, _ := parley.PeerFromContext(ctx)
			if err := peer.Join(ctx, r.GetText()); err != nil {
				return nil, err
			}
			return &e2ev1.EchoResponse{Text: peer.ID()}, nil
		}),
		parley.NewUnaryMethod(evLeaveSpec, func(ctx context.Context, r *e2ev1.EchoRequest) (*e2ev1.EchoResponse, error) {
			peer, _ := parley.PeerFromContext(ctx)
			if err := peer.Leave(ctx, r.GetText()); err != nil {
				return nil, err
			}
			return &e2ev1.EchoResponse{Text: strings.Join(peer.Rooms(), ",")}, nil
		}),
		parley.NewUnaryMethod(evDoSpec, func(ctx context.Context, r *e2ev1.EchoRequest) (*e2ev1.EchoResponse, error) {
			fx.doMu.Lock()
			do := fx.do
			fx.doMu.Unlock()
			if do == nil {
				return nil, parley.NewError(parley.CodeUnimplemented, "no do hook")
			}
			return do(ctx, r)
		}),
		parley.NewServerStreamMethod(evStreamWhoSpec, func(ctx context.Context, _ *e2ev1.EchoRequest, s *parley.ServerStream[e2ev1.EchoResponse]) error {
			return s.Send(&e2ev1.EchoResponse{Text: who(ctx)})
		}),
	)
	hs := httptest.NewServer(fx.srv)
	fx.url = "ws" + strings.TrimPrefix(hs.URL, "http")
	var once sync.Once
	fx.stop = func() {
		once.Do(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			if err := fx.srv.Shutdown(ctx); err != nil {
				t.Errorf("Shutdown: %v", err)
			}
			hs.Close()
		})
	}
	t.Cleanup(fx.stop)
	return fx
}

// setDo sets what the Do method runs.
func (fx *evTrial) setDo(do func(ctx context.Context, req *e2ev1.EchoRequest) (*e2ev1.EchoResponse, error)) {
	fx.doMu.Lock()
	fx.do = do
	fx.doMu.Unlock()
}

func (fx *evTrial) note(s string) {
	fx.presMu.Lock()
	fx.presence = append(fx.presence, s)
	fx.presMu.Unlock()
	select {
	case fx.presMore <- struct{}{}:
	default:
	}
}

// presenceOf returns the transitions the hooks saw for user.
func (fx *evTrial) presenceOf(user string) []string {
	fx.presMu.Lock()
	defer fx.presMu.Unlock()
	var out []string
	for _, p := range fx.presence {
		if _, u, _ := strings.Cut(p, ":"); u == user {
			out = append(out, p)
		}
	}
	return out
}

// waitPresence waits (at most 5 s) until the hooks saw n transitions of
// user, and returns them.
func (fx *evTrial) waitPresence(t *testing.T, user string, n int) []string {
	t.Helper()
	deadline := time.After(5 * time.Second)
	for {
		if got := fx.presenceOf(user); len(got) >= n {
			return got
		}
		select {
		case <-fx.presMore:
		case <-deadline:
			t.Fatalf("presence of %s: %v, want %d transitions", user, fx.presenceOf(user), n)
		}
	}
}

// evClient is a client of the trial that records the Tick events it
// handles.
type evClient struct {
	conn *parley.Conn
	id   string
	user string

	mu      sync.Mutex
	seqs    []int32
	arrived chan struct{} // a 1-buffered signal that seqs grew
	onTick  func(ctx context.Context, ev *e2ev1.TickEvent)
}

func (c *evClient) Tick(ctx context.Context, ev *e2ev1.TickEvent) {
	if c.onTick != nil {
		c.onTick(ctx, ev)
	}
	c.mu.Lock()
	c.seqs = append(c.seqs, ev.GetSeq())
	c.mu.Unlock()
	select {
	case c.arrived <- struct{}{}:
	default:
	}
}

func (c *evClient) Confirm(context.Context, *e2ev1.ConfirmRequest) (*e2ev1.ConfirmResponse, error) {
	return &e2ev1.ConfirmResponse{Answer: c.id}, nil
}

// dialEv connects a client as user (none when ""), learns its connection
// id, and closes it at the test's end.
func (fx *evTrial) dialEv(t *testing.T, user string, opts ...parley.ClientOption) *evClient {
	t.Helper()
	c, err := fx.tryDial(user, nil, opts...)
	if err != nil {
		t.Fatalf("Dial as %q: %v", user, err)
	}
	t.Cleanup(func() { _ = c.conn.Close() })
	return c
}

func (fx *evTrial) tryDial(user string, onTick func(context.Context, *e2ev1.TickEvent), opts ...parley.ClientOption) (*evClient, error) {
	c := &evClient{user: user, arrived: make(chan struct{}, 1), onTick: onTick}
	if user != "" {
		opts = append([]parley.ClientOption{parley.WithHelloMetadata(map[string]string{"user": user})}, opts...)
	}
	// Handlers registered before the socket opens: no event is missed.
	opts = append(opts, parley.WithHandlers(func(r parley.Registrar) { e2ev1parley.RegisterClientEventsHandler(r, c) }))
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	conn, err := parley.Dial(ctx, fx.url, opts...)
	if err != nil {
		return nil, err
	}
	c.conn = conn
	var res e2ev1.EchoResponse
	if err := conn.Invoke(ctx, evWhoSpec, &e2ev1.EchoRequest{}, &res); err != nil {
		_ = conn.Close()
		return nil, err
	}
	c.id, _, _ = strings.Cut(res.GetText(), " ")
	return c, nil
}

func (c *evClient) call(t *testing.T, spec *parley.MethodSpec, text string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var res e2ev1.EchoResponse
	if err := c.conn.Invoke(ctx, spec, &e2ev1.EchoRequest{Text: text}, &res); err != nil {
		t.Fatalf("%s(%q): %v", spec.Procedure, text, err)
	}
	return res.GetText()
}

func (c *evClient) join(t *testing.T, room string) { t.Helper(); c.call(t, evJoinSpec, room) }

// take returns the seqs received so far and forgets them.
func (c *evClient) take() []int32 {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := c.seqs
	c.seqs = nil
	return out
}

// waitN waits (at most 10 s) until n events arrived.
func (c *evClient) waitN(t *testing.T, n int) {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		c.mu.Lock()
		got := len(c.seqs)
		c.mu.Unlock()
		if got >= n {
			return
		}
		select {
		case <-c.arrived:
		case <-deadline:
			t.Fatalf("client %s: %d events, want %d", c.id, got, n)
		}
	}
}

// barrier publishes a marker (a negative seq) to c's own connection and
// waits for it. Each connection gets its events in publish order, so
// every event published to c before it has arrived then; it returns those
// (and forgets them).
func (fx *evTrial) barrier(t *testing.T, c *evClient) []int32 {
	t.Helper()
	mark := -fx.barrierSeq.Add(1)
	if err := fx.pub.Tick(context.Background(), parley.ToConn(c.id), &e2ev1.TickEvent{Seq: mark}); err != nil {
		t.Fatalf("barrier: %v", err)
	}
	deadline := time.After(10 * time.Second)
	for {
		c.mu.Lock()
		if i := slices.Index(c.seqs, mark); i >= 0 {
			before := slices.Clone(c.seqs[:i])
			c.seqs = slices.Delete(c.seqs, 0, i+1)
			c.mu.Unlock()
			return slices.DeleteFunc(before, func(s int32) bool { return s < 0 })
		}
		c.mu.Unlock()
		select {
		case <-c.arrived:
		case <-deadline:
			t.Fatalf("client %s: barrier %d never arrived", c.id, mark)
		}
	}
}

// eventually polls cond (the README promises eventual behaviour: the
// server learns of a close asynchronously) until it holds, for at most 5 s.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within 5s", what)
		}
		time.Sleep(5 * time.Millisecond) // polling, bounded by the deadline
	}
}

func membersOf(t *testing.T, srv *parley.Server, room string) []string {
	t.Helper()
	ms, err := srv.Members(context.Background(), room)
	if err != nil {
		t.Fatalf("Members(%q): %v", room, err)
	}
	ids := make([]string, len(ms))
	for i, m := range ms {
		ids[i] = m.ConnID
	}
	return ids
}

func isOnline(t *testing.T, srv *parley.Server, user string) bool {
	t.Helper()
	on, err := srv.IsOnline(context.Background(), user)
	if err != nil {
		t.Fatalf("IsOnline(%q): %v", user, err)
	}
	return on
}

// TestTrialEventTargets: every kind of target, with and without Except,
// reaches exactly the connections the README says: ToUser all of a
// user's devices (one in a room, one not), ToRoom only the room's, and a
// target with nobody in it nobody, without an error.
func TestTrialEventTargets(t *testing.T) {
	for _, enc := range encodings {
		t.Run(enc.name, func(t *testing.T) {
			base := runtime.NumGoroutine()
			fx := newEvTrial(t)
			a1 := fx.dialEv(t, "ann", enc.opts...) // ann's phone, in the room
			a2 := fx.dialEv(t, "ann", enc.opts...) // ann's laptop, not
			b := fx.dialEv(t, "bob", enc.opts...)  // in the room
			c := fx.dialEv(t, "cat", enc.opts...)  // in no room
			anon := fx.dialEv(t, "", enc.opts...)  // no user
			a1.join(t, "lobby")
			b.join(t, "lobby")
			all := []*evClient{a1, a2, b, c, anon}
			ctx := context.Background()
			cases := []struct {
				target parley.Target
				want   []*evClient
			}{
				{parley.ToConn(a1.id), []*evClient{a1}},
				{parley.ToConn(a1.id).Except(a1.id), nil},
				{parley.ToConn(a1.id).Except(b.id), []*evClient{a1}},
				{parley.ToUser("ann"), []*evClient{a1, a2}},
				{parley.ToUser("ann").Except(a1.id), []*evClient{a2}},
				{parley.ToRoom("lobby"), []*evClient{a1, b}},
				{parley.ToRoom("lobby").Except(b.id), []*evClient{a1}},
				{parley.ToAll(), all},
				{parley.ToAll().Except(c.id), []*evClient{a1, a2, b, anon}},
				{parley.ToAll().Except(""), all}, // an empty Except excepts nobody
				// Nobody there: no error, nothing delivered.
				{parley.ToRoom("empty"), nil},
				{parley.ToUser("nobody"), nil},
				{parley.ToConn("no-such-conn"), nil},
				{parley.ToUser(""), nil}, // anonymous connections are nobody's
				{parley.ToConn(""), nil},
			}
			for i, tc := range cases {
				seq := int32(i + 1)
				if err := fx.pub.Tick(ctx, tc.target, &e2ev1.TickEvent{Seq: seq}); err != nil {
					t.Fatalf("Tick to %v: %v", tc.target, err)
				}
			}
			for _, cl := range all {
				var want []int32
				for i, tc := range cases {
					if slices.Contains(tc.want, cl) {
						want = append(want, int32(i+1))
					}
				}
				if got := fx.barrier(t, cl); !slices.Equal(got, want) {
					t.Errorf("client %s (user %q) got %v, want %v", cl.id, cl.user, got, want)
				}
			}
			// The zero Target is refused, not sent to nobody silently.
			err := fx.pub.Tick(ctx, parley.Target{}, &e2ev1.TickEvent{Seq: 99})
			wantCode(t, err, parley.CodeInvalidArgument)
			for _, cl := range all {
				_ = cl.conn.Close()
			}
			eventually(t, "everyone offline", func() bool {
				return !isOnline(t, fx.srv, "ann") && !isOnline(t, fx.srv, "bob") && !isOnline(t, fx.srv, "cat")
			})
			if got := membersOf(t, fx.srv, "lobby"); len(got) != 0 {
				t.Errorf("lobby after everyone closed: %v", got)
			}
			fx.stop()
			waitGoroutines(t, base)
		})
	}
}

// checkStreams checks that got holds, for each publisher p in 0..n-1,
// exactly the seqs p*stride+1 .. p*stride+per in that order: each
// publisher's events arrived, once each, in the order it published them.
func checkStreams(t *testing.T, who string, got []int32, n, per int, stride int32) {
	t.Helper()
	next := make([]int32, n)
	for _, s := range got {
		p := int((s - 1) / stride)
		if p < 0 || p >= n {
			t.Errorf("%s: unexpected event %d", who, s)
			return
		}
		if want := int32(p)*stride + next[p] + 1; s != want {
			t.Errorf("%s: publisher %d's event %d arrived where %d was due (lost, duplicated or reordered)", who, p, s, want)
			return
		}
		next[p]++
	}
	for p, k := range next {
		if int(k) != per {
			t.Errorf("%s: %d of publisher %d's %d events arrived", who, k, p, per)
		}
	}
}

// TestTrialEventOrderManyPublishers: many goroutines publish at once, to
// everyone, to a room, to users, while a handler publishes to its own
// connection; every connection (of both encodings together) gets every
// event once, each publisher's in its publish order.
func TestTrialEventOrderManyPublishers(t *testing.T) {
	base := runtime.NumGoroutine()
	fx := newEvTrial(t)
	const stride = 100000
	const per = 200
	fx.setDo(func(ctx context.Context, r *e2ev1.EchoRequest) (*e2ev1.EchoResponse, error) {
		// Publish from inside a handler: to the caller's own connection.
		peer, _ := parley.PeerFromContext(ctx)
		for i := range int32(r.GetRepeat()) {
			if err := fx.pub.Tick(ctx, parley.ToConn(peer.ID()), &e2ev1.TickEvent{Seq: 9*stride + i + 1}); err != nil {
				return nil, err
			}
		}
		return &e2ev1.EchoResponse{}, nil
	})
	var clients []*evClient
	for i := range 6 {
		c := fx.dialEv(t, fmt.Sprintf("u%d", i%3), encodings[i%2].opts...)
		c.join(t, "room")
		clients = append(clients, c)
	}
	ctx := context.Background()
	targets := []parley.Target{parley.ToAll(), parley.ToRoom("room"), parley.ToUser("u0"), parley.ToUser("u1"), parley.ToUser("u2"), parley.ToAll()}
	var wg sync.WaitGroup
	for p, target := range targets {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range int32(per) {
				if err := fx.pub.Tick(ctx, target, &e2ev1.TickEvent{Seq: int32(p)*stride + i + 1}); err != nil {
					t.Errorf("publisher %d: %v", p, err)
					return
				}
			}
		}()
	}
	for _, c := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			defer cancel()
			var res e2ev1.EchoResponse
			if err := c.conn.Invoke(ctx, evDoSpec, &e2ev1.EchoRequest{Repeat: per}, &res); err != nil {
				t.Errorf("Do: %v", err)
			}
		}()
	}
	wg.Wait()
	for i, c := range clients {
		got := fx.barrier(t, c)
		// Targets 0..5 reach every client (ToUser only its user's), and
		// the handler's burst (publisher 9) its own connection.
		var mine []int32
		for _, s := range got {
			p := int((s - 1) / stride)
			if p == 9 || p == 0 || p == 1 || p == 5 || p == 2+i%3 {
				mine = append(mine, s)
			} else {
				t.Errorf("client %d (user u%d) got event %d of publisher %d", i, i%3, s, p)
			}
		}
		// Renumber so that checkStreams sees publishers 0..4: all, room,
		// own user, all, handler.
		remap := map[int]int32{0: 0, 1: 1, 2 + i%3: 2, 5: 3, 9: 4}
		for k, s := range mine {
			p := int((s - 1) / stride)
			mine[k] = remap[p]*stride + (s-1)%stride + 1
		}
		checkStreams(t, fmt.Sprintf("client %d", i), mine, 5, per, stride)
	}
	for _, c := range clients {
		_ = c.conn.Close()
	}
	fx.stop()
	waitGoroutines(t, base)
}

// TestTrialRooms: Join and Leave from handlers, joining twice (one
// membership, one copy of each event), leaving a room never joined (no
// error), Rooms, and a connection closing in several rooms: its
// memberships go, Members says so, and its events stop.
func TestTrialRooms(t *testing.T) {
	for _, enc := range encodings {
		t.Run(enc.name, func(t *testing.T) {
			fx := newEvTrial(t)
			a := fx.dialEv(t, "ann", enc.opts...)
			b := fx.dialEv(t, "bob", enc.opts...)
			a.join(t, "r1")
			a.join(t, "r1") // twice
			a.join(t, "r2")
			a.join(t, "r3")
			b.join(t, "r1")
			if got, want := membersOf(t, fx.srv, "r1"), slices.Sorted(slices.Values([]string{a.id, b.id})); !slices.Equal(got, want) {
				t.Errorf("Members(r1) = %v, want %v", got, want)
			}
			ms, _ := fx.srv.Members(context.Background(), "r1")
			for _, m := range ms {
				if want := map[string]string{a.id: "ann", b.id: "bob"}[m.ConnID]; m.UserID != want {
					t.Errorf("member %s has user %q, want %q", m.ConnID, m.UserID, want)
				}
			}
			if err := fx.pub.Tick(context.Background(), parley.ToRoom("r1"), &e2ev1.TickEvent{Seq: 1}); err != nil {
				t.Fatal(err)
			}
			if got := fx.barrier(t, a); !slices.Equal(got, []int32{1}) {
				t.Errorf("joined twice, got %v, want [1] once", got)
			}
			// Leaving a room not joined: no error, nothing changes.
			if rooms := a.call(t, evLeaveSpec, "never"); rooms != "r1,r2,r3" {
				t.Errorf("rooms after leaving one never joined: %q", rooms)
			}
			if rooms := a.call(t, evLeaveSpec, "r2"); rooms != "r1,r3" {
				t.Errorf("rooms after leaving r2: %q", rooms)
			}
			if got := membersOf(t, fx.srv, "r2"); len(got) != 0 {
				t.Errorf("Members(r2) after its only member left: %v", got)
			}
			if err := fx.pub.Tick(context.Background(), parley.ToRoom("r2"), &e2ev1.TickEvent{Seq: 2}); err != nil {
				t.Fatal(err)
			}
			if got := fx.barrier(t, a); len(got) != 0 {
				t.Errorf("got %v from a room it left", got)
			}
			// Leaving twice is fine too.
			if rooms := a.call(t, evLeaveSpec, "r2"); rooms != "r1,r3" {
				t.Errorf("rooms after leaving r2 again: %q", rooms)
			}
			// The server API: Join/Leave by connection id; an unknown one
			// is not_found.
			ctx := context.Background()
			if err := fx.srv.Join(ctx, b.id, "r3"); err != nil {
				t.Fatal(err)
			}
			wantCode(t, fx.srv.Join(ctx, "no-such-conn", "r3"), parley.CodeNotFound)
			wantCode(t, fx.srv.Leave(ctx, "no-such-conn", "r3"), parley.CodeNotFound)
			if p, ok := fx.srv.Peer(b.id); !ok || !slices.Equal(p.Rooms(), []string{"r1", "r3"}) {
				t.Errorf("b's rooms: %v, %v", p, ok)
			}
			// a closes while in r1 and r3: it leaves them.
			if err := a.conn.Close(); err != nil {
				t.Fatal(err)
			}
			eventually(t, "a out of its rooms", func() bool {
				return slices.Equal(membersOf(t, fx.srv, "r1"), []string{b.id}) && slices.Equal(membersOf(t, fx.srv, "r3"), []string{b.id})
			})
			if _, ok := fx.srv.Peer(a.id); ok {
				t.Error("Peer(a) still found after it closed")
			}
			if err := fx.pub.Tick(ctx, parley.ToRoom("r1"), &e2ev1.TickEvent{Seq: 3}); err != nil {
				t.Fatal(err)
			}
			if got := fx.barrier(t, b); !slices.Equal(got, []int32{1, 3}) {
				t.Errorf("b got %v, want [1 3]", got)
			}
		})
	}
}

// TestTrialBigRoom: a room of many members (both encodings) gets every
// event once, in order, and Members lists them all, sorted.
func TestTrialBigRoom(t *testing.T) {
	base := runtime.NumGoroutine()
	fx := newEvTrial(t)
	const n, events = 120, 30
	clients := make([]*evClient, n)
	var wg sync.WaitGroup
	for i := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := fx.tryDial(fmt.Sprintf("u%d", i), nil, encodings[i%2].opts...)
			if err != nil {
				t.Errorf("Dial: %v", err)
				return
			}
			clients[i] = c
			var res e2ev1.EchoResponse
			if err := c.conn.Invoke(context.Background(), evJoinSpec, &e2ev1.EchoRequest{Text: "big"}, &res); err != nil {
				t.Errorf("Join: %v", err)
			}
		}()
	}
	wg.Wait()
	defer func() {
		for _, c := range clients {
			if c != nil {
				_ = c.conn.Close()
			}
		}
	}()
	if t.Failed() {
		return
	}
	ms := membersOf(t, fx.srv, "big")
	if len(ms) != n || !slices.IsSorted(ms) {
		t.Fatalf("Members(big): %d members, sorted %v; want %d, sorted", len(ms), slices.IsSorted(ms), n)
	}
	for i := range int32(events) {
		if err := fx.pub.Tick(context.Background(), parley.ToRoom("big"), &e2ev1.TickEvent{Seq: i + 1}); err != nil {
			t.Fatal(err)
		}
	}
	for i, c := range clients {
		c.waitN(t, events)
		if got := c.take(); len(got) != events || !slices.IsSorted(got) || got[0] != 1 {
			t.Fatalf("client %d got %v", i, got)
		}
	}
	for _, c := range clients {
		_ = c.conn.Close()
	}
	eventually(t, "the big room empty", func() bool { return len(membersOf(t, fx.srv, "big")) == 0 })
	fx.stop()
	waitGoroutines(t, base)
}

// TestTrialMembersWhileComingAndGoing: Members, called again and again
// while connections join, leave and close, always returns a sorted list
// without duplicates; once they are all gone the room is empty.
func TestTrialMembersWhileComingAndGoing(t *testing.T) {
	fx := newEvTrial(t)
	stop := make(chan struct{})
	var polls atomic.Int64
	pollDone := make(chan struct{})
	go func() {
		defer close(pollDone)
		for {
			select {
			case <-stop:
				return
			default:
			}
			ms, err := fx.srv.Members(context.Background(), "busy")
			if err != nil {
				t.Errorf("Members: %v", err)
				return
			}
			ids := make([]string, len(ms))
			for i, m := range ms {
				ids[i] = m.ConnID
			}
			if !slices.IsSorted(ids) || len(slices.Compact(slices.Clone(ids))) != len(ids) {
				t.Errorf("Members(busy) = %v: not sorted, or with duplicates", ids)
				return
			}
			polls.Add(1)
		}
	}()
	var wg sync.WaitGroup
	for i := range 12 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for k := range 4 {
				c, err := fx.tryDial(fmt.Sprintf("u%d", i), nil, encodings[(i+k)%2].opts...)
				if err != nil {
					t.Errorf("Dial: %v", err)
					return
				}
				for _, spec := range []*parley.MethodSpec{evJoinSpec, evJoinSpec, evLeaveSpec, evJoinSpec} {
					var res e2ev1.EchoResponse
					if err := c.conn.Invoke(context.Background(), spec, &e2ev1.EchoRequest{Text: "busy"}, &res); err != nil {
						t.Errorf("%s: %v", spec.Procedure, err)
					}
				}
				_ = c.conn.Close() // closes while in the room
			}
		}()
	}
	wg.Wait()
	eventually(t, "the busy room empty", func() bool { return len(membersOf(t, fx.srv, "busy")) == 0 })
	close(stop)
	<-pollDone
	if polls.Load() == 0 {
		t.Error("Members never answered")
	}
}

// TestTrialJoinAsTheConnectionCloses: handlers that call peer.Join while
// their connection closes. A Join either fails with not_found or lands
// before the close; either way, once the connections are gone, the room
// must have no members left, and Join after the close fails not_found.
func TestTrialJoinAsTheConnectionCloses(t *testing.T) {
	fx := newEvTrial(t)
	var joined, refused atomic.Int64
	started := make(chan struct{}, 64)
	fx.setDo(func(ctx context.Context, r *e2ev1.EchoRequest) (*e2ev1.EchoResponse, error) {
		peer, _ := parley.PeerFromContext(ctx)
		started <- struct{}{}
		// Join again and again until the connection's session ends
		// (a unary handler's context ends with its session).
		for {
			err := peer.Join(context.Background(), r.GetText())
			if err != nil {
				if parley.CodeOf(err) != parley.CodeNotFound {
					t.Errorf("Join as the connection closes: %v, want not_found", err)
				}
				refused.Add(1)
				return nil, err
			}
			joined.Add(1)
			runtime.Gosched()
		}
	})
	const n = 120
	var wg sync.WaitGroup
	for i := range n {
		c, err := fx.tryDial(fmt.Sprintf("u%d", i%4), nil, encodings[i%2].opts...)
		if err != nil {
			t.Fatal(err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			var res e2ev1.EchoResponse
			_ = c.conn.Invoke(ctx, evDoSpec, &e2ev1.EchoRequest{Text: "race"}, &res) // ends with the close
		}()
		<-started
		_ = c.conn.Close()
	}
	wg.Wait()
	eventually(t, "every handler refused", func() bool { return refused.Load() == n })
	if got := membersOf(t, fx.srv, "race"); len(got) != 0 {
		t.Errorf("Members(race) after every member closed: %d stale members %v (%d joins)", len(got), got, joined.Load())
	}
}

// TestTrialPresenceManyDevices: a user with several devices connecting and
// dropping at once goes online once and offline once per round, in that
// order; IsOnline agrees; and devices coming and going at random leave
// an alternating on/off history that ends offline.
func TestTrialPresenceManyDevices(t *testing.T) {
	base := runtime.NumGoroutine()
	fx := newEvTrial(t)
	const devices = 5
	dialAll := func(user string) []*evClient {
		cs := make([]*evClient, devices)
		var wg sync.WaitGroup
		for i := range cs {
			wg.Add(1)
			go func() {
				defer wg.Done()
				c, err := fx.tryDial(user, nil, encodings[i%2].opts...)
				if err != nil {
					t.Errorf("Dial: %v", err)
					return
				}
				cs[i] = c
			}()
		}
		wg.Wait()
		if t.Failed() {
			t.FailNow()
		}
		return cs
	}
	closeAll := func(cs []*evClient) {
		var wg sync.WaitGroup
		for _, c := range cs {
			wg.Add(1)
			go func() { defer wg.Done(); _ = c.conn.Close() }()
		}
		wg.Wait()
	}
	for round := range 5 {
		cs := dialAll("dee")
		if !isOnline(t, fx.srv, "dee") {
			t.Fatal("IsOnline(dee) false with 5 devices connected")
		}
		got := fx.waitPresence(t, "dee", 2*round+1)
		closeAll(cs[:devices-1])
		if !isOnline(t, fx.srv, "dee") {
			t.Fatal("IsOnline(dee) false with one device left")
		}
		closeAll(cs[devices-1:])
		got = fx.waitPresence(t, "dee", 2*round+2)
		if isOnline(t, fx.srv, "dee") {
			t.Fatal("IsOnline(dee) true once its offline hook ran")
		}
		want := slices.Repeat([]string{"on:dee", "off:dee"}, round+1)
		if !slices.Equal(got, want) {
			t.Fatalf("round %d: presence %v, want %v", round, got, want)
		}
	}
	// At random: devices of two users come and go concurrently.
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			user := []string{"eve", "fay"}[i%2]
			for k := range 6 {
				c, err := fx.tryDial(user, nil, encodings[(i+k)%2].opts...)
				if err != nil {
					t.Errorf("Dial: %v", err)
					return
				}
				_ = c.conn.Close()
			}
		}()
	}
	wg.Wait()
	for _, user := range []string{"eve", "fay"} {
		eventually(t, user+" offline", func() bool {
			p := fx.presenceOf(user)
			return !isOnline(t, fx.srv, user) && len(p) > 0 && p[len(p)-1] == "off:"+user
		})
		p := fx.presenceOf(user)
		for k, s := range p {
			if want := []string{"on:", "off:"}[k%2] + user; s != want {
				t.Fatalf("presence of %s: %v: transition %d is %s, want %s", user, p, k, s, want)
			}
		}
	}
	fx.stop()
	waitGoroutines(t, base)
}

// dropLinks cuts every link of the proxy (a dropped socket, no close).
func dropLinks(p *cutProxy) {
	p.mu.Lock()
	links := make([]*cutLink, 0, len(p.links))
	for l := range p.links {
		links = append(links, l)
	}
	p.mu.Unlock()
	for _, l := range links {
		l.drop()
	}
}

// TestTrialPresenceDoesNotFlapOnResume: a dropped socket whose client
// resumes its session keeps its user online (no offline, no second
// online), its rooms, and gets the events published meanwhile.
func TestTrialPresenceDoesNotFlapOnResume(t *testing.T) {
	for _, enc := range encodings {
		t.Run(enc.name, func(t *testing.T) {
			fx := newEvTrial(t)
			proxy := newCutProxy(t, strings.TrimPrefix(fx.url, "ws://"), func() cutPlan { return cutPlan{up: -1, down: -1} })
			t.Cleanup(proxy.close)
			resumed := make(chan parley.ConnState, 4)
			c := &evClient{user: "gus", arrived: make(chan struct{}, 1)}
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			opts := append([]parley.ClientOption{
				parley.WithHelloMetadata(map[string]string{"user": "gus"}),
				parley.WithReconnect(parley.Backoff{Initial: time.Millisecond, Max: 10 * time.Millisecond, Multiplier: 2}),
			}, enc.opts...)
			conn, err := parley.Dial(ctx, proxy.url(), opts...)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = conn.Close() })
			c.conn = conn
			e2ev1parley.RegisterClientEventsHandler(conn, c)
			conn.OnStateChange(func(st parley.ConnState) {
				if st.Status == parley.StatusOpen && st.Reconnected {
					resumed <- st
				}
			})
			c.id = c.call(t, evJoinSpec, "den")
			fx.waitPresence(t, "gus", 1)
			for round := range 3 {
				dropLinks(proxy)
				// Published while the socket may be down: the resumed
				// session replays it.
				if err := fx.pub.Tick(ctx, parley.ToRoom("den"), &e2ev1.TickEvent{Seq: int32(round + 1)}); err != nil {
					t.Fatal(err)
				}
				if st := waitFor(t, "reconnect", resumed); !st.Resumed {
					t.Fatalf("round %d: reconnected without resuming: %+v", round, st)
				}
				if got := fx.barrier(t, c); !slices.Equal(got, []int32{int32(round + 1)}) {
					t.Fatalf("round %d: got %v across the drop, want [%d]", round, got, round+1)
				}
			}
			if got := fx.presenceOf("gus"); !slices.Equal(got, []string{"on:gus"}) {
				t.Errorf("presence across resumed reconnects: %v, want [on:gus]", got)
			}
			if got := membersOf(t, fx.srv, "den"); !slices.Equal(got, []string{c.id}) {
				t.Errorf("Members(den) after resuming: %v, want [%s]", got, c.id)
			}
			_ = conn.Close()
			if got := fx.waitPresence(t, "gus", 2); !slices.Equal(got, []string{"on:gus", "off:gus"}) {
				t.Errorf("presence after Close: %v", got)
			}
		})
	}
}

// TestTrialPresenceHooksThatPanicOrBlock: a hook that panics is logged and
// the next runs; a hook that blocks holds up only the hooks after it, in
// order: connections, calls, events and IsOnline go on meanwhile, and the
// held hooks all run, in order, once it returns.
func TestTrialPresenceHooksThatPanicOrBlock(t *testing.T) {
	base := runtime.NumGoroutine()
	release := make(chan struct{})
	var fx *evTrial
	fx = newEvTrial(t, parley.WithPresenceHooks(func(u string) {
		fx.note("on:" + u)
		switch u {
		case "panicky":
			panic("online hook bug")
		case "stuck":
			<-release
		}
	}, func(u string) {
		fx.note("off:" + u)
		if u == "panicky" {
			panic("offline hook bug")
		}
	}))
	p := fx.dialEv(t, "panicky")
	_ = p.conn.Close()
	fx.waitPresence(t, "panicky", 2)
	s := fx.dialEv(t, "stuck")
	fx.waitPresence(t, "stuck", 1) // and now blocked in it
	// Everything else goes on while the hook blocks.
	others := make([]*evClient, 4)
	for i := range others {
		others[i] = fx.dialEv(t, fmt.Sprintf("o%d", i), encodings[i%2].opts...)
		if !isOnline(t, fx.srv, others[i].user) {
			t.Fatalf("IsOnline(%s) false while a hook blocks", others[i].user)
		}
	}
	for _, c := range others {
		if got := fx.barrier(t, c); len(got) != 0 {
			t.Fatalf("unexpected events %v", got)
		}
	}
	for _, c := range others[:2] {
		_ = c.conn.Close()
	}
	eventually(t, "o0 and o1 offline", func() bool {
		return !isOnline(t, fx.srv, "o0") && !isOnline(t, fx.srv, "o1")
	})
	if got := fx.presenceOf("o0"); len(got) != 0 {
		t.Fatalf("o0's hooks ran past a blocked hook: %v", got)
	}
	close(release)
	for i, c := range others {
		want := []string{"on:" + c.user}
		if i < 2 {
			want = append(want, "off:"+c.user)
		}
		if got := fx.waitPresence(t, c.user, len(want)); !slices.Equal(got, want) {
			t.Errorf("presence of %s: %v, want %v", c.user, got, want)
		}
	}
	// In the order the transitions happened: o0 online before o0 offline,
	// and the queued ones after stuck's.
	fx.presMu.Lock()
	all := slices.Clone(fx.presence)
	fx.presMu.Unlock()
	if i, j := slices.Index(all, "on:stuck"), slices.Index(all, "on:o0"); i < 0 || j < i {
		t.Errorf("presence order %v", all)
	}
	for _, c := range others[2:] {
		_ = c.conn.Close()
	}
	_ = s.conn.Close()
	fx.waitPresence(t, "stuck", 2)
	fx.stop()
	waitGoroutines(t, base)
}

// TestTrialAuth: the authenticate hook sees the upgrade's headers and the
// Hello's metadata; a refusal reaches the client with its code and
// message (unauthenticated for a plain error); a panicking hook refuses
// without taking the server down; handlers of unary and streaming calls
// read the principal, and client event handlers have none.
func TestTrialAuth(t *testing.T) {
	for _, enc := range encodings {
		t.Run(enc.name, func(t *testing.T) {
			var seenMu sync.Mutex
			var seen []string
			fx := newEvTrial(t, parley.WithAuthenticate(func(ctx context.Context, r *parley.AuthRequest) (*parley.Principal, error) {
				seenMu.Lock()
				seen = append(seen, r.HTTP.Header.Get("X-Trial")+"|"+r.Metadata["token"])
				seenMu.Unlock()
				switch r.Metadata["token"] {
				case "good":
					return &parley.Principal{UserID: "hal", Claims: map[string]any{"via": r.HTTP.Header.Get("X-Trial")}}, nil
				case "banned":
					return nil, parley.NewError(parley.CodePermissionDenied, "hal is banned")
				case "panic":
					panic("authenticate bug")
				case "nil":
					return nil, nil
				}
				return nil, errors.New("bad token for hal")
			}))
			dialAs := func(token string) (*parley.Conn, error) {
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				defer cancel()
				opts := append([]parley.ClientOption{
					parley.WithHelloMetadata(map[string]string{"token": token}),
					parley.WithHTTPHeader(http.Header{"X-Trial": {"hdr-" + token}}),
				}, enc.opts...)
				return parley.Dial(ctx, fx.url, opts...)
			}
			for _, tc := range []struct {
				token string
				code  parley.Code
				msg   string
			}{
				{"wrong", parley.CodeUnauthenticated, "bad token for hal"},
				{"banned", parley.CodePermissionDenied, "hal is banned"},
				{"nil", parley.CodeUnauthenticated, "not authenticated"},
				{"panic", parley.CodeInternal, "authentication failed"},
			} {
				conn, err := dialAs(tc.token)
				if err == nil {
					_ = conn.Close()
					t.Fatalf("token %q: connected", tc.token)
				}
				if parley.CodeOf(err) != tc.code || !strings.Contains(err.Error(), tc.msg) {
					t.Errorf("token %q: %v (code %v), want %v with %q", tc.token, err, parley.CodeOf(err), tc.code, tc.msg)
				}
			}
			conn, err := dialAs("good")
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			seenMu.Lock()
			if want := "hdr-good|good"; seen[len(seen)-1] != want {
				t.Errorf("the hook saw %q, want %q", seen[len(seen)-1], want)
			}
			seenMu.Unlock()
			var res e2ev1.EchoResponse
			if err := conn.Invoke(context.Background(), evWhoSpec, &e2ev1.EchoRequest{}, &res); err != nil || !strings.HasSuffix(res.GetText(), " hal") {
				t.Fatalf("unary handler's principal: %q, %v", res.GetText(), err)
			}
			connID, _, _ := strings.Cut(res.GetText(), " ")
			st, err := parley.CallServerStream[e2ev1.EchoResponse](context.Background(), conn, evStreamWhoSpec, &e2ev1.EchoRequest{})
			if err != nil {
				t.Fatal(err)
			}
			if item, err := st.Recv(); err != nil || item.GetText() != connID+" hal" {
				t.Errorf("stream handler's principal: %v, %v", item, err)
			}
			// Client event handlers: CallInfo says an event on the client;
			// no principal (that is the server's notion) and no peer.
			got := make(chan string, 1)
			e2ev1parley.RegisterClientEventsHandler(conn, &evClient{arrived: make(chan struct{}, 1), onTick: func(ctx context.Context, ev *e2ev1.TickEvent) {
				ci, ok := parley.CallInfoFromContext(ctx)
				_, hasP := parley.PrincipalFromContext(ctx)
				got <- fmt.Sprintf("%v %v %v %v %v", ok && ci.Event, ok && ci.Side == parley.SideClient, ok && ci.Spec.Procedure == e2ev1parley.ClientEventsTickProcedure, hasP, ok && ci.Peer == nil)
			}})
			if err := fx.pub.Tick(context.Background(), parley.ToUser("hal"), &e2ev1.TickEvent{Seq: 1}); err != nil {
				t.Fatal(err)
			}
			if s := waitFor(t, "event", got); s != "true true true false true" {
				t.Errorf("event handler's context: %s", s)
			}
		})
	}
}

// TestTrialSlowAuthenticate: a hook that honours its context is cut off at
// the server's handshake timeout and the client told so; one that ignores
// it holds only its own connection: the client gives up at its own
// handshake timeout while other clients connect, and nothing of it stays
// once the hook returns.
func TestTrialSlowAuthenticate(t *testing.T) {
	base := runtime.NumGoroutine()
	release := make(chan struct{})
	inHook := make(chan struct{}, 1)
	var fx *evTrial
	// A short resume window: a client that gave up on its handshake may
	// have had its Welcome written to the socket it then closed, and the
	// server cannot tell it from a client whose socket dropped just after:
	// the session waits for the window like any dropped one.
	fx = newEvTrial(t, parley.WithHandshakeTimeout(300*time.Millisecond), parley.WithResume(200*time.Millisecond, 64), parley.WithAuthenticate(func(ctx context.Context, r *parley.AuthRequest) (*parley.Principal, error) {
		switch r.Metadata["user"] {
		case "polite":
			<-ctx.Done()
			return nil, ctx.Err()
		case "rude":
			inHook <- struct{}{}
			<-release
		}
		return &parley.Principal{UserID: r.Metadata["user"]}, nil
	}))
	start := time.Now()
	_, err := fx.tryDial("polite", nil)
	if err == nil || time.Since(start) > 3*time.Second {
		t.Fatalf("a hook waiting for its context: %v after %v", err, time.Since(start))
	}
	// Not a refusal (unauthenticated would stop a reconnecting client for
	// good): the hook ran out of time, a reconnect may try again.
	if c := parley.CodeOf(err); c != parley.CodeDeadlineExceeded {
		t.Errorf("a hook cut off by the handshake timeout: %v (code %v)", err, c)
	}
	rude := make(chan error, 1)
	go func() {
		_, err := fx.tryDial("rude", nil, parley.WithHandshakeTimeout(300*time.Millisecond))
		rude <- err
	}()
	<-inHook
	other := fx.dialEv(t, "fine") // while the rude hook blocks
	if err := waitFor(t, "the rude client's dial", rude); err == nil {
		t.Fatal("connected through a hook that never returned")
	}
	close(release)
	if got := fx.barrier(t, other); len(got) != 0 {
		t.Fatalf("unexpected events %v", got)
	}
	eventually(t, "rude offline", func() bool { return !isOnline(t, fx.srv, "rude") })
	_ = other.conn.Close()
	fx.stop()
	waitGoroutines(t, base)
	// A connection that never was must not look like one.
	if got := fx.presenceOf("rude"); len(got) != 0 && !slices.Equal(got, []string{"on:rude", "off:rude"}) {
		t.Errorf("presence of a connection refused: %v", got)
	}
}

// TestTrialInterceptors: interceptors on both sides, in order; a server
// interceptor that refuses a call (the handler does not run), that reads
// and alters metadata, that panics (internal, the socket stays); server
// interceptors on Publish (an event refused is not sent); client
// interceptors on events (one dropped, one that panics: later events
// still run).
func TestTrialInterceptors(t *testing.T) {
	for _, enc := range encodings {
		t.Run(enc.name, func(t *testing.T) {
			var logMu sync.Mutex
			var log []string
			record := func(s string) { logMu.Lock(); log = append(log, s); logMu.Unlock() }
			takeLog := func() []string { logMu.Lock(); defer logMu.Unlock(); l := log; log = nil; return l }
			named := func(name string) parley.Interceptor {
				return func(next parley.UnaryFunc) parley.UnaryFunc {
					return func(ctx context.Context, req proto.Message) (proto.Message, error) {
						ci, _ := parley.CallInfoFromContext(ctx)
						kind := "call"
						if ci.Event {
							kind = "event"
						}
						method := ci.Spec.Procedure[strings.LastIndex(ci.Spec.Procedure, "/")+1:]
						record(fmt.Sprintf("%s>%s %s %s %s", name, ci.Side, kind, method, ci.Metadata["trace"]))
						res, err := next(ctx, req)
						record(name + "<")
						return res, err
					}
				}
			}
			guard := func(next parley.UnaryFunc) parley.UnaryFunc {
				return func(ctx context.Context, req proto.Message) (proto.Message, error) {
					ci, _ := parley.CallInfoFromContext(ctx)
					if ci.Side == parley.SideServer && !ci.Event {
						switch ci.Metadata["trace"] {
						case "deny":
							return nil, parley.NewError(parley.CodePermissionDenied, "denied by interceptor")
						case "boom":
							panic("interceptor bug")
						}
						ci.Metadata["trace"] += "+server" // the handler sees it
						if ci.Peer == nil {
							return nil, parley.NewError(parley.CodeInternal, "no peer in a server call's CallInfo")
						}
					}
					if ci.Event && ci.Side == parley.SideServer {
						if t, ok := req.(*e2ev1.TickEvent); ok && t.GetSeq() == 666 {
							return nil, parley.NewError(parley.CodeFailedPrecondition, "event refused")
						}
					}
					if ci.Event && ci.Side == parley.SideClient {
						switch req.(*e2ev1.TickEvent).GetSeq() {
						case 7:
							return nil, nil // dropped on the client
						case 13:
							panic("client event interceptor bug")
						}
					}
					return next(ctx, req)
				}
			}
			var handlerRan atomic.Int64
			fx := newEvTrial(t, parley.WithInterceptors(named("s1"), named("s2"), guard))
			fx.setDo(func(ctx context.Context, r *e2ev1.EchoRequest) (*e2ev1.EchoResponse, error) {
				handlerRan.Add(1)
				ci, _ := parley.CallInfoFromContext(ctx)
				record("handler " + ci.Metadata["trace"])
				return &e2ev1.EchoResponse{Text: ci.Metadata["trace"]}, nil
			})
			// The client adds metadata in its interceptor.
			setTrace := func(next parley.UnaryFunc) parley.UnaryFunc {
				return func(ctx context.Context, req proto.Message) (proto.Message, error) {
					ci, _ := parley.CallInfoFromContext(ctx)
					if r, ok := req.(*e2ev1.EchoRequest); ok && !ci.Event {
						ci.Metadata["trace"] = r.GetText()
					}
					return next(ctx, req)
				}
			}
			c := fx.dialEv(t, "ivy", append([]parley.ClientOption{parley.WithInterceptors(named("c1"), setTrace, named("c2"), guard)}, enc.opts...)...)
			takeLog()
			if got := c.call(t, evDoSpec, "t1"); got != "t1+server" {
				t.Errorf("the handler saw metadata %q, want t1+server", got)
			}
			want := []string{"c1>client call Do ", "c2>client call Do t1", "s1>server call Do t1", "s2>server call Do t1", "handler t1+server", "s2<", "s1<", "c2<", "c1<"}
			if got := takeLog(); !slices.Equal(got, want) {
				t.Errorf("interceptor order:\n got %q\nwant %q", got, want)
			}
			ctx := context.Background()
			var res e2ev1.EchoResponse
			before := handlerRan.Load()
			wantCode(t, c.conn.Invoke(ctx, evDoSpec, &e2ev1.EchoRequest{Text: "deny"}, &res), parley.CodePermissionDenied)
			err := c.conn.Invoke(ctx, evDoSpec, &e2ev1.EchoRequest{Text: "boom"}, &res)
			wantCode(t, err, parley.CodeInternal)
			if handlerRan.Load() != before {
				t.Error("the handler ran for a call an interceptor refused")
			}
			if got := c.call(t, evDoSpec, "after"); got != "after+server" {
				t.Errorf("a call after a panicking interceptor: %q", got)
			}
			// Events: server interceptors see Publish; client ones each
			// event before its handler.
			takeLog()
			for _, seq := range []int32{1, 7, 13, 666, 2} {
				err := fx.pub.Tick(ctx, parley.ToConn(c.id), &e2ev1.TickEvent{Seq: seq})
				if seq == 666 {
					wantCode(t, err, parley.CodeFailedPrecondition)
				} else if err != nil {
					t.Fatalf("Tick %d: %v", seq, err)
				}
			}
			if got := fx.barrier(t, c); !slices.Equal(got, []int32{1, 2}) {
				t.Errorf("events through the interceptors: %v, want [1 2]", got)
			}
			evLog := takeLog()
			if n := slices.Index(evLog, "s1>server event Tick "); n != 0 {
				t.Errorf("server interceptors on Publish: %q", evLog)
			}
			if !slices.Contains(evLog, "c1>client event Tick ") {
				t.Errorf("client interceptors on events: %q", evLog)
			}
		})
	}
}

// TestTrialEventMisuse: what a new user gets wrong. An event too large for
// a peer's max message size is not sent to it (the others get it) and the
// connection goes on, and resuming does not bring it back; a nil event
// goes as the empty message; huge room names and user ids work; Join
// after the connection closed is not_found; publishing on a stopped
// server returns at once and reaches nobody.
func TestTrialEventMisuse(t *testing.T) {
	for _, enc := range encodings {
		t.Run(enc.name, func(t *testing.T) {
			base := runtime.NumGoroutine()
			huge := strings.Repeat("h", 1<<20)
			fx := newEvTrial(t, parley.WithAuthenticate(func(ctx context.Context, r *parley.AuthRequest) (*parley.Principal, error) {
				if r.Metadata["user"] == "huge" {
					return &parley.Principal{UserID: huge}, nil
				}
				return authByMetadata(ctx, r)
			}))
			var lastPeer atomic.Pointer[parley.Peer]
			fx.setDo(func(ctx context.Context, r *e2ev1.EchoRequest) (*e2ev1.EchoResponse, error) {
				peer, _ := parley.PeerFromContext(ctx)
				lastPeer.Store(peer)
				return &e2ev1.EchoResponse{}, nil
			})
			small := fx.dialEv(t, "sam", append([]parley.ClientOption{parley.WithMaxMessageBytes(512)}, enc.opts...)...)
			big := fx.dialEv(t, "huge", enc.opts...)
			ctx := context.Background()
			small.join(t, "r")
			big.join(t, "r")
			// TickEvent has only a seq: a large event is one with a large
			// unknown field, which protobuf keeps (and JSON drops, so JSON
			// peers see it small): build it in protobuf's wire format.
			large := &e2ev1.TickEvent{Seq: 2}
			large.ProtoReflect().SetUnknown(append([]byte{0xfa, 0x01, 0x80, 0x08}, make([]byte, 1024)...)) // field 31, bytes, 1024 long
			for _, ev := range []*e2ev1.TickEvent{{Seq: 1}, large, {Seq: 3}} {
				if err := fx.pub.Tick(ctx, parley.ToRoom("r"), ev); err != nil {
					t.Fatal(err)
				}
			}
			wantSmall := []int32{1, 2, 3}
			if enc.name == "proto" {
				wantSmall = []int32{1, 3} // the large one is not sent to it
			}
			if got := fx.barrier(t, small); !slices.Equal(got, wantSmall) {
				t.Errorf("a peer with a 512-byte limit got %v, want %v", got, wantSmall)
			}
			if got := fx.barrier(t, big); !slices.Equal(got, []int32{1, 2, 3}) {
				t.Errorf("the other peer got %v, want [1 2 3]", got)
			}
			if st := small.conn.State(); st.Status != parley.StatusOpen {
				t.Errorf("after an event too large for it: %v", st.Status)
			}
			if got := small.call(t, evWhoSpec, ""); !strings.HasSuffix(got, " sam") {
				t.Errorf("a call after: %q", got)
			}
			// A nil event is the empty message.
			if err := fx.pub.Tick(ctx, parley.ToConn(small.id), nil); err != nil {
				t.Fatalf("Tick(nil): %v", err)
			}
			if got := fx.barrier(t, small); !slices.Equal(got, []int32{0}) {
				t.Errorf("a nil event arrived as %v, want [0]", got)
			}
			// Huge names: a 1 MiB room name, a 1 MiB user id.
			big.join(t, huge) // the name travels in the request: 1 MiB < 4 MiB
			if got := membersOf(t, fx.srv, huge); !slices.Equal(got, []string{big.id}) {
				t.Errorf("Members(huge room) = %v", got)
			}
			if !isOnline(t, fx.srv, huge) {
				t.Error("IsOnline(huge user id) false")
			}
			for i, target := range []parley.Target{parley.ToRoom(huge), parley.ToUser(huge), parley.ToAll().Except(huge)} {
				if err := fx.pub.Tick(ctx, target, &e2ev1.TickEvent{Seq: int32(10 + i)}); err != nil {
					t.Fatal(err)
				}
			}
			if got := fx.barrier(t, big); !slices.Equal(got, []int32{10, 11, 12}) {
				t.Errorf("events to a huge room and user: %v", got)
			}
			// Empty names: a room named "" is a room like another.
			small.join(t, "")
			if got := membersOf(t, fx.srv, ""); !slices.Equal(got, []string{small.id}) {
				t.Errorf("Members(\"\") = %v", got)
			}
			// Join through a Peer kept after its connection closed.
			small.call(t, evDoSpec, "")
			peer := lastPeer.Load()
			_ = small.conn.Close()
			eventually(t, "sam offline", func() bool { return !isOnline(t, fx.srv, "sam") })
			wantCode(t, peer.Join(ctx, "late"), parley.CodeNotFound)
			if err := peer.Leave(ctx, "late"); err != nil {
				t.Errorf("Leave after the close: %v", err)
			}
			if got := membersOf(t, fx.srv, "late"); len(got) != 0 {
				t.Errorf("Members(late) = %v after a Join on a closed connection", got)
			}
			if rooms := peer.Rooms(); len(rooms) != 0 {
				t.Errorf("a closed connection's Rooms() = %v", rooms)
			}
			// Publishing on a stopped server.
			_ = big.conn.Close()
			fx.stop()
			done := make(chan error, 1)
			go func() { done <- fx.pub.Tick(ctx, parley.ToAll(), &e2ev1.TickEvent{Seq: 99}) }()
			if err := waitFor(t, "Publish after Shutdown", done); err != nil {
				t.Errorf("Publish after Shutdown: %v, want nil (it reaches nobody here; other nodes' connections with a shared broker)", err)
			}
			waitGoroutines(t, base)
		})
	}
}

// TestTrialInterceptorAddingMetadataEverywhere: the README's interceptor
// works on both sides; one that adds metadata to whatever it sees (a
// trace id, the documented use) must not break the calls a client sent
// without metadata, nor events on either side.
func TestTrialInterceptorAddingMetadataEverywhere(t *testing.T) {
	for _, enc := range encodings {
		t.Run(enc.name, func(t *testing.T) {
			var seen sync.Map
			tracing := func(next parley.UnaryFunc) parley.UnaryFunc {
				return func(ctx context.Context, req proto.Message) (proto.Message, error) {
					ci, _ := parley.CallInfoFromContext(ctx)
					if _, ok := ci.Metadata["trace-id"]; !ok {
						ci.Metadata["trace-id"] = ci.Side.String()
					}
					seen.Store(fmt.Sprintf("%s event=%v", ci.Side, ci.Event), ci.Metadata["trace-id"])
					return next(ctx, req)
				}
			}
			fx := newEvTrial(t, parley.WithInterceptors(tracing))
			fx.setDo(func(ctx context.Context, r *e2ev1.EchoRequest) (*e2ev1.EchoResponse, error) {
				ci, _ := parley.CallInfoFromContext(ctx)
				return &e2ev1.EchoResponse{Text: ci.Metadata["trace-id"]}, nil
			})
			// A client without interceptors sends calls without metadata.
			plain := fx.dialEv(t, "pam", enc.opts...)
			if got := plain.call(t, evDoSpec, ""); got != "server" {
				t.Errorf("a call without metadata: the handler saw trace-id %q, want server", got)
			}
			traced := fx.dialEv(t, "ted", append([]parley.ClientOption{parley.WithInterceptors(tracing)}, enc.opts...)...)
			if got := traced.call(t, evDoSpec, ""); got != "client" {
				t.Errorf("a traced call: the handler saw trace-id %q, want client", got)
			}
			if err := fx.pub.Tick(context.Background(), parley.ToAll(), &e2ev1.TickEvent{Seq: 1}); err != nil {
				t.Fatalf("Publish through an interceptor adding metadata: %v", err)
			}
			for _, c := range []*evClient{plain, traced} {
				if got := fx.barrier(t, c); !slices.Equal(got, []int32{1}) {
					t.Errorf("client %s got %v, want [1]", c.user, got)
				}
			}
			for _, k := range []string{"server event=false", "server event=true", "client event=false", "client event=true"} {
				if _, ok := seen.Load(k); !ok {
					t.Errorf("the interceptor never saw a %s", k)
				}
			}
		})
	}
}

// TestTrialPresenceAcrossShutdown: connections opening while the server
// shuts down. Once Shutdown has returned and the sockets are gone, every
// user is offline, and each user's hooks alternate online, offline,
// ending offline: no connection caught mid-handshake is left online.
func TestTrialPresenceAcrossShutdown(t *testing.T) {
	for round := range 3 {
		fx := newEvTrial(t)
		const dialers = 24
		var wg sync.WaitGroup
		start := make(chan struct{})
		var opened atomic.Int64
		for i := range dialers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				for k := 0; ; k++ {
					c, err := fx.tryDial(fmt.Sprintf("s%d", i), nil, append([]parley.ClientOption{parley.WithoutReconnect()}, encodings[k%2].opts...)...)
					if err != nil {
						return // the server is shutting down
					}
					opened.Add(1)
					defer c.conn.Close()
				}
			}()
		}
		close(start)
		eventually(t, "connections opening", func() bool { return opened.Load() >= dialers })
		fx.stop()
		wg.Wait()
		for i := range dialers {
			user := fmt.Sprintf("s%d", i)
			if isOnline(t, fx.srv, user) {
				t.Errorf("round %d: %s online after Shutdown", round, user)
			}
			eventually(t, user+"'s hooks settled", func() bool {
				p := fx.presenceOf(user)
				return len(p)%2 == 0
			})
			for k, s := range fx.presenceOf(user) {
				if want := []string{"on:", "off:"}[k%2] + user; s != want {
					t.Fatalf("round %d: presence of %s: %v", round, user, fx.presenceOf(user))
				}
			}
		}
	}
}

// TestTrialSlowEventHandler: a client whose event handler stalls while
// the server publishes megabytes to it. The client stops reading, the
// server cuts it off as a slow consumer (4001) and it reconnects; once the
// handler resumes, the events it gets are in publish order without
// duplicates, and any it missed it was told about (a reconnect that did
// not resume). Others are not slowed down meanwhile.
func TestTrialSlowEventHandler(t *testing.T) {
	fx := newEvTrial(t, parley.WithSendQueueBytes(64<<10), parley.WithResume(5*time.Second, 64))
	fast := fx.dialEv(t, "fast")
	release := make(chan struct{})
	stalled := make(chan struct{})
	var once sync.Once
	c, err := fx.tryDial("slow", func(context.Context, *e2ev1.TickEvent) {
		once.Do(func() { close(stalled); <-release })
	}, parley.WithEventQueueBytes(1), parley.WithReconnect(parley.Backoff{Initial: time.Millisecond, Max: 10 * time.Millisecond, Multiplier: 2}))
	if err != nil {
		t.Fatal(err)
	}
	defer c.conn.Close()
	var stMu sync.Mutex
	var states []parley.ConnState
	c.conn.OnStateChange(func(st parley.ConnState) {
		stMu.Lock()
		states = append(states, st)
		stMu.Unlock()
	})
	ctx := context.Background()
	const n = 600
	for i := range int32(n) {
		ev := &e2ev1.TickEvent{Seq: i + 1}
		ev.ProtoReflect().SetUnknown(append([]byte{0xfa, 0x01, 0x80, 0x40}, make([]byte, 8192)...)) // field 31, 8 KiB
		if err := fx.pub.Tick(ctx, parley.ToUser("slow"), ev); err != nil {
			t.Fatal(err)
		}
		if i == 0 {
			<-stalled
		}
		if i%100 == 99 { // the others get theirs meanwhile
			if got := fx.barrier(t, fast); len(got) != 0 {
				t.Fatalf("fast got %v", got)
			}
		}
	}
	close(release)
	// Markers to the user until one arrives: an event published while the
	// client is between sessions goes to the old one, and is lost with it
	// (the client is told: it did not resume).
	mark := int32(n + 1)
	deadline := time.Now().Add(10 * time.Second)
	for {
		if err := fx.pub.Tick(ctx, parley.ToUser("slow"), &e2ev1.TickEvent{Seq: mark}); err != nil {
			t.Fatal(err)
		}
		c.mu.Lock()
		done := len(c.seqs) > 0 && c.seqs[len(c.seqs)-1] > n
		c.mu.Unlock()
		if done {
			break
		}
		if time.Now().After(deadline) {
			stMu.Lock()
			t.Fatalf("no marker arrived; got %d events; states %+v; client state %+v", len(c.seqs), states, c.conn.State())
		}
		select {
		case <-c.arrived:
		case <-time.After(20 * time.Millisecond): // polling, bounded by the deadline
		}
		mark++
	}
	got := c.take()
	stMu.Lock()
	defer stMu.Unlock()
	lost := false
	for _, st := range states {
		if st.Status == parley.StatusOpen && st.Reconnected && !st.Resumed {
			lost = true
		}
	}
	for i := 1; i < len(got); i++ {
		if got[i] <= got[i-1] {
			t.Fatalf("event %d after %d: duplicated or reordered", got[i], got[i-1])
		}
	}
	published := 0 // of the n published while the handler stalled
	for _, s := range got {
		if s <= n {
			published++
		}
	}
	if published != n && !lost {
		t.Errorf("%d of %d events arrived and the client was never told it missed some (states %v)", published, n, states)
	}
	t.Logf("slow handler: %d of %d events, %d state changes, told of a loss: %v", published, n, len(states), lost)
}

// TestTrialPresenceHooksPublish: the chat pattern, hooks that tell
// everyone a user came online or went offline, and greet the user. The
// watcher gets each user's notices in order (online before offline), and
// a user's first device gets its greeting, even when the hook runs before
// its socket is attached.
func TestTrialPresenceHooksPublish(t *testing.T) {
	for _, enc := range encodings {
		t.Run(enc.name, func(t *testing.T) {
			var fx *evTrial
			userNo := func(u string) int32 {
				var k int32
				fmt.Sscanf(u, "p%d", &k)
				return k
			}
			fx = newEvTrial(t, parley.WithPresenceHooks(func(u string) {
				ctx := context.Background()
				if u == "watcher" {
					return
				}
				if err := fx.pub.Tick(ctx, parley.ToUser("watcher"), &e2ev1.TickEvent{Seq: 1000 + userNo(u)}); err != nil {
					t.Errorf("publish from the online hook: %v", err)
				}
				if err := fx.pub.Tick(ctx, parley.ToUser(u), &e2ev1.TickEvent{Seq: 3000 + userNo(u)}); err != nil {
					t.Errorf("greeting from the online hook: %v", err)
				}
			}, func(u string) {
				if u == "watcher" {
					return
				}
				if err := fx.pub.Tick(context.Background(), parley.ToUser("watcher"), &e2ev1.TickEvent{Seq: 2000 + userNo(u)}); err != nil {
					t.Errorf("publish from the offline hook: %v", err)
				}
			}))
			w := fx.dialEv(t, "watcher", enc.opts...)
			const users = 10
			clients := make([]*evClient, users+1)
			var wg sync.WaitGroup
			for k := 1; k <= users; k++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					c, err := fx.tryDial(fmt.Sprintf("p%d", k), nil, enc.opts...)
					if err != nil {
						t.Errorf("Dial: %v", err)
						return
					}
					clients[k] = c
				}()
			}
			wg.Wait()
			if t.Failed() {
				t.FailNow()
			}
			for k, c := range clients[1:] {
				c.waitN(t, 1)
				if got := c.take(); got[0] != int32(3000+k+1) {
					t.Errorf("p%d's first event: %v, want its greeting", k+1, got)
				}
				_ = c.conn.Close()
			}
			w.waitN(t, 2*users)
			got := w.take()
			for k := 1; k <= users; k++ {
				on, off := slices.Index(got, int32(1000+k)), slices.Index(got, int32(2000+k))
				if on < 0 || off < on {
					t.Errorf("watcher's notices of p%d: online at %d, offline at %d in %v", k, on, off, got)
				}
			}
		})
	}
}

// TestTrialShutdownWaitsForOfflineHooks: a server shutting down ends every
// session, so its users go offline; an application that records presence
// (a database, a shared cache) must have seen every offline transition by
// the time Shutdown returns, or a process exiting after it leaves those
// users online for ever. A hook that never returns holds Shutdown only
// until its ctx ends.
func TestTrialShutdownWaitsForOfflineHooks(t *testing.T) {
	var fx *evTrial
	fx = newEvTrial(t, parley.WithPresenceHooks(func(u string) { fx.note("on:" + u) }, func(u string) {
		runtime.Gosched() // a hook that takes a moment, as a database write does
		fx.note("off:" + u)
	}))
	const users = 8
	for k := range users {
		fx.dialEv(t, fmt.Sprintf("z%d", k), encodings[k%2].opts...)
	}
	for k := range users {
		fx.waitPresence(t, fmt.Sprintf("z%d", k), 1)
	}
	fx.stop() // Shutdown: the clients are still connected
	for k := range users {
		u := fmt.Sprintf("z%d", k)
		if got := fx.presenceOf(u); !slices.Equal(got, []string{"on:" + u, "off:" + u}) {
			t.Errorf("when Shutdown returned, the hooks had seen %v of %s", got, u)
		}
	}

	// A hook that blocks: Shutdown returns at its ctx's end.
	release := make(chan struct{})
	defer close(release)
	fx2 := newEvTrial(t, parley.WithPresenceHooks(nil, func(string) { <-release }))
	fx2.dialEv(t, "stuck")
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if err := within(t, "Shutdown with a blocked hook", func() error { return fx2.srv.Shutdown(ctx) }); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Shutdown with an offline hook that never returns: %v, want context.DeadlineExceeded", err)
	}
}

// TestTrialPublishDuringShutdown: publishers that keep going while the
// server shuts down neither panic nor block; each client gets a prefix of
// each publisher's events, in order, without duplicates.
func TestTrialPublishDuringShutdown(t *testing.T) {
	base := runtime.NumGoroutine()
	fx := newEvTrial(t)
	var clients []*evClient
	for i := range 4 {
		clients = append(clients, fx.dialEv(t, fmt.Sprintf("q%d", i), encodings[i%2].opts...))
	}
	const stride = 1000000
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var published [3]atomic.Int32
	for p := range 3 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := int32(1); ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				start := time.Now()
				if err := fx.pub.Tick(context.Background(), parley.ToAll(), &e2ev1.TickEvent{Seq: int32(p)*stride + i}); err != nil {
					t.Errorf("Publish during Shutdown: %v", err)
					return
				}
				if d := time.Since(start); d > time.Second {
					t.Errorf("Publish took %v", d)
				}
				published[p].Store(i)
			}
		}()
	}
	eventually(t, "events flowing", func() bool { return published[2].Load() > 50 })
	fx.stop()
	close(stop)
	wg.Wait()
	for _, c := range clients {
		_ = c.conn.Close() // it would try to reconnect for ever
		next := [3]int32{1, 1, 1}
		for _, s := range c.take() {
			p, i := s/stride, s%stride
			if i != next[p] {
				t.Fatalf("client %s: publisher %d's event %d where %d was due", c.user, p, i, next[p])
			}
			next[p]++
		}
	}
	waitGoroutines(t, base)
}

// TestTrialServerCallsClientThroughInterceptors: a call the server makes
// to a client (peer.Invoke, through the generated ClientEventsClient) goes
// through the server's interceptors as an outgoing call and the client's
// as an incoming one, metadata included; a client interceptor refusing it
// reaches the server as its error.
func TestTrialServerCallsClientThroughInterceptors(t *testing.T) {
	for _, enc := range encodings {
		t.Run(enc.name, func(t *testing.T) {
			var logMu sync.Mutex
			var log []string
			seeing := func(name string) parley.Interceptor {
				return func(next parley.UnaryFunc) parley.UnaryFunc {
					return func(ctx context.Context, req proto.Message) (proto.Message, error) {
						ci, _ := parley.CallInfoFromContext(ctx)
						if !strings.HasSuffix(ci.Spec.Procedure, "/Confirm") {
							return next(ctx, req)
						}
						logMu.Lock()
						log = append(log, fmt.Sprintf("%s %s %q", name, ci.Side, ci.Metadata["asked-by"]))
						logMu.Unlock()
						if ci.Side == parley.SideServer {
							ci.Metadata["asked-by"] = "server"
						} else if req.(*e2ev1.ConfirmRequest).GetQuestion() == "refuse" {
							return nil, parley.NewError(parley.CodePermissionDenied, "not asking that")
						}
						return next(ctx, req)
					}
				}
			}
			fx := newEvTrial(t, parley.WithInterceptors(seeing("s")))
			fx.setDo(func(ctx context.Context, r *e2ev1.EchoRequest) (*e2ev1.EchoResponse, error) {
				peer, _ := parley.PeerFromContext(ctx)
				res, err := e2ev1parley.NewClientEventsClient(peer).Confirm(ctx, &e2ev1.ConfirmRequest{Question: r.GetText()})
				if err != nil {
					return &e2ev1.EchoResponse{Text: parley.CodeOf(err).String()}, nil
				}
				return &e2ev1.EchoResponse{Text: res.GetAnswer()}, nil
			})
			c := fx.dialEv(t, "kim", append([]parley.ClientOption{parley.WithInterceptors(seeing("c"))}, enc.opts...)...)
			if got := c.call(t, evDoSpec, "ok?"); got != c.id {
				t.Errorf("the client's answer: %q, want its id %q", got, c.id)
			}
			if got := c.call(t, evDoSpec, "refuse"); got != "permission_denied" {
				t.Errorf("a call the client's interceptor refused: %q", got)
			}
			logMu.Lock()
			defer logMu.Unlock()
			want := []string{`s server ""`, `c client "server"`, `s server ""`, `c client "server"`}
			if !slices.Equal(log, want) {
				t.Errorf("interceptors saw %q, want %q", log, want)
			}
		})
	}
}

// TestTrialEventsPushedAtConnect: events published the moment a client
// connects (here from the online hook, which may run before the socket is
// even attached) reach the handlers registered with WithHandlers, every
// time. (Registered with RegisterClientEventsHandler(conn, ...) after Dial
// returned, about 1 in 200 of these was dropped: the reader took the event
// before the handler was there.)
func TestTrialEventsPushedAtConnect(t *testing.T) {
	var fx *evTrial
	fx = newEvTrial(t, parley.WithPresenceHooks(func(u string) {
		if err := fx.pub.Tick(context.Background(), parley.ToUser(u), &e2ev1.TickEvent{Seq: 7}); err != nil {
			t.Errorf("greeting: %v", err)
		}
	}, nil))
	const n = 200
	clients := make([]*evClient, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := fx.tryDial(fmt.Sprintf("g%d", i), nil, encodings[i%2].opts...)
			if err != nil {
				t.Error(err)
				return
			}
			clients[i] = c
		}()
	}
	wg.Wait()
	for i, c := range clients {
		if c == nil {
			continue
		}
		if got := fx.barrier(t, c); !slices.Equal(got, []int32{7}) {
			t.Errorf("client g%d got %v before its barrier, want its greeting [7]", i, got)
		}
		_ = c.conn.Close()
	}
}

// TestTrialPublishInterceptorPanics: a server interceptor that panics on
// Publish panics in Publish's caller, as a client's interceptor does in
// its caller's call (the server recovers only what runs on its own
// goroutines: handlers and their interceptors); called from a handler,
// that handler's call fails internal. The server goes on serving.
func TestTrialPublishInterceptorPanics(t *testing.T) {
	fx := newEvTrial(t, parley.WithInterceptors(func(next parley.UnaryFunc) parley.UnaryFunc {
		return func(ctx context.Context, req proto.Message) (proto.Message, error) {
			if ev, ok := req.(*e2ev1.TickEvent); ok && ev.GetSeq() == 13 {
				panic("publish interceptor bug")
			}
			return next(ctx, req)
		}
	}))
	fx.setDo(func(ctx context.Context, r *e2ev1.EchoRequest) (*e2ev1.EchoResponse, error) {
		return &e2ev1.EchoResponse{}, fx.pub.Tick(ctx, parley.ToAll(), &e2ev1.TickEvent{Seq: 13})
	})
	c := fx.dialEv(t, "una")
	func() {
		defer func() {
			if r := recover(); r == nil {
				t.Error("Publish through a panicking interceptor returned")
			}
		}()
		_ = fx.pub.Tick(context.Background(), parley.ToAll(), &e2ev1.TickEvent{Seq: 13})
	}()
	var res e2ev1.EchoResponse
	wantCode(t, c.conn.Invoke(context.Background(), evDoSpec, &e2ev1.EchoRequest{}, &res), parley.CodeInternal)
	if err := fx.pub.Tick(context.Background(), parley.ToAll(), &e2ev1.TickEvent{Seq: 1}); err != nil {
		t.Fatal(err)
	}
	if got := fx.barrier(t, c); !slices.Equal(got, []int32{1}) {
		t.Errorf("after the panics: %v, want [1]", got)
	}
}

// TestTrialKickAUser: the README's way to keep a user out, peer.Close and
// a refusal in WithAuthenticate. The kicked device's session ends (its
// rooms go, no resume), its reconnect is refused and its connection
// closes for good with the refusal; the user's other device is untouched
// until it is kicked too, and then the user goes offline once.
func TestTrialKickAUser(t *testing.T) {
	for _, enc := range encodings {
		t.Run(enc.name, func(t *testing.T) {
			var banned sync.Map
			fx := newEvTrial(t, parley.WithAuthenticate(func(ctx context.Context, r *parley.AuthRequest) (*parley.Principal, error) {
				if _, ok := banned.Load(r.Metadata["user"]); ok {
					return nil, parley.NewError(parley.CodePermissionDenied, "banned")
				}
				return authByMetadata(ctx, r)
			}))
			opts := append([]parley.ClientOption{parley.WithReconnect(parley.Backoff{Initial: time.Millisecond, Max: 5 * time.Millisecond, Multiplier: 2})}, enc.opts...)
			phone := fx.dialEv(t, "vic", opts...)
			laptop := fx.dialEv(t, "vic", opts...)
			phone.join(t, "club")
			laptop.join(t, "club")
			banned.Store("vic", true)
			ctx := context.Background()
			p, ok := fx.srv.Peer(phone.id)
			if !ok {
				t.Fatal("no peer for the phone")
			}
			p.Close("kicked")
			waitFor(t, "the phone closed for good", phone.conn.Done())
			if c := parley.CodeOf(phone.conn.Err()); c != parley.CodePermissionDenied {
				t.Errorf("the kicked client ended with %v, want permission_denied", phone.conn.Err())
			}
			eventually(t, "the phone out of the club", func() bool { return slices.Equal(membersOf(t, fx.srv, "club"), []string{laptop.id}) })
			if !isOnline(t, fx.srv, "vic") {
				t.Error("vic offline while the laptop is still connected")
			}
			if err := fx.pub.Tick(ctx, parley.ToUser("vic"), &e2ev1.TickEvent{Seq: 1}); err != nil {
				t.Fatal(err)
			}
			if got := fx.barrier(t, laptop); !slices.Equal(got, []int32{1}) {
				t.Errorf("the laptop got %v, want [1]", got)
			}
			lp, _ := fx.srv.Peer(laptop.id)
			lp.Close("kicked")
			waitFor(t, "the laptop closed for good", laptop.conn.Done())
			if got := fx.waitPresence(t, "vic", 2); !slices.Equal(got, []string{"on:vic", "off:vic"}) {
				t.Errorf("presence of vic: %v", got)
			}
			if got := membersOf(t, fx.srv, "club"); len(got) != 0 {
				t.Errorf("Members(club) = %v", got)
			}
		})
	}
}

// TestTrialEventHandlerCallsTheServer: an event handler may call the
// server; during a burst of events beyond WithEventQueueBytes its reply
// waits behind the events, which wait for the handler: the call fails at
// its deadline, as documented, and the same call made on a goroutine of
// the handler's own gets its reply.
func TestTrialEventHandlerCallsTheServer(t *testing.T) {
	fx := newEvTrial(t, parley.WithSendQueueBytes(16<<20))
	outcome := make(chan string, 3)
	call := func(conn *parley.Conn, timeout time.Duration) string {
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		var res e2ev1.EchoResponse
		if err := conn.Invoke(ctx, evWhoSpec, &e2ev1.EchoRequest{}, &res); err != nil {
			return parley.CodeOf(err).String()
		}
		return "ok"
	}
	var c *evClient
	ready := make(chan struct{})
	burst := make(chan struct{}) // closed once event 2's burst is published
	c, err := fx.tryDial("ho", func(ctx context.Context, ev *e2ev1.TickEvent) {
		<-ready
		switch ev.GetSeq() {
		case 1: // alone: the reply comes
			outcome <- call(c.conn, 5*time.Second)
		case 2: // in line, 2,000 events queued before its reply
			<-burst
			outcome <- call(c.conn, 300*time.Millisecond)
		case 3: // on a goroutine
			go func() { outcome <- call(c.conn, 5*time.Second) }()
		}
	}, parley.WithEventQueueBytes(1))
	if err != nil {
		t.Fatal(err)
	}
	defer c.conn.Close()
	close(ready)
	ctx := context.Background()
	if err := fx.pub.Tick(ctx, parley.ToConn(c.id), &e2ev1.TickEvent{Seq: 1}); err != nil {
		t.Fatal(err)
	}
	if got := waitFor(t, "the call alone", outcome); got != "ok" {
		t.Errorf("a handler's call with no events behind it: %s", got)
	}
	for _, first := range []int32{2, 3} {
		for i := range int32(2000) {
			seq := first*10000 + i
			if i == 0 {
				seq = first
			}
			if err := fx.pub.Tick(ctx, parley.ToConn(c.id), &e2ev1.TickEvent{Seq: seq}); err != nil {
				t.Fatal(err)
			}
		}
		if first == 2 {
			close(burst)
		}
		want := map[int32]string{2: "deadline_exceeded", 3: "ok"}[first]
		if got := waitFor(t, "the handler's call", outcome); got != want {
			t.Errorf("event %d's call: %s, want %s", first, got, want)
		}
	}
}

// TestTrialPresenceDevicesDropping: devices whose sockets drop (no close)
// keep their sessions, and their user online, for the resume window;
// one that comes back resumes; once the other sessions' windows pass they
// are gone while the user stays online, and when the last device closes
// the user goes offline, once.
func TestTrialPresenceDevicesDropping(t *testing.T) {
	fx := newEvTrial(t, parley.WithResume(500*time.Millisecond, 64)) // long enough for a reconnect under load
	proxy := newCutProxy(t, strings.TrimPrefix(fx.url, "ws://"), func() cutPlan { return cutPlan{up: -1, down: -1} })
	t.Cleanup(proxy.close)
	dialVia := func(reconnect bool, k int) (*parley.Conn, string) {
		opts := append([]parley.ClientOption{parley.WithHelloMetadata(map[string]string{"user": "wes"})}, encodings[k%2].opts...)
		if reconnect {
			opts = append(opts, parley.WithReconnect(parley.Backoff{Initial: time.Millisecond, Max: 5 * time.Millisecond, Multiplier: 2}))
		} else {
			opts = append(opts, parley.WithoutReconnect())
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		conn, err := parley.Dial(ctx, proxy.url(), opts...)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = conn.Close() })
		var res e2ev1.EchoResponse
		if err := conn.Invoke(ctx, evWhoSpec, &e2ev1.EchoRequest{}, &res); err != nil {
			t.Fatal(err)
		}
		id, _, _ := strings.Cut(res.GetText(), " ")
		return conn, id
	}
	var gone []*parley.Conn
	var goneIDs []string
	for k := range 4 {
		c, id := dialVia(false, k)
		gone, goneIDs = append(gone, c), append(goneIDs, id)
	}
	back, _ := dialVia(true, 1)
	resumed := make(chan bool, 8)
	back.OnStateChange(func(st parley.ConnState) {
		if st.Status == parley.StatusOpen && st.Reconnected {
			resumed <- st.Resumed
		}
	})
	fx.waitPresence(t, "wes", 1)
	dropLinks(proxy) // all five drop at once
	for _, c := range gone {
		waitFor(t, "a dropped device closing", c.Done())
	}
	if !waitFor(t, "the device that comes back", resumed) {
		t.Fatal("the device that came back did not resume")
	}
	eventually(t, "the dropped sessions' windows passed", func() bool {
		for _, id := range goneIDs {
			if _, ok := fx.srv.Peer(id); ok {
				return false
			}
		}
		return true
	})
	if got := fx.presenceOf("wes"); !slices.Equal(got, []string{"on:wes"}) || !isOnline(t, fx.srv, "wes") {
		t.Fatalf("presence while one device remains: %v", got)
	}
	_ = back.Close()
	if got := fx.waitPresence(t, "wes", 2); !slices.Equal(got, []string{"on:wes", "off:wes"}) {
		t.Errorf("presence of wes: %v", got)
	}
	if isOnline(t, fx.srv, "wes") {
		t.Error("wes online after the last device closed")
	}
}
