package parley_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/emptypb"

	parleyv1 "github.com/parleyrpc/parley/gen/parley/v1"
	e2ev1 "github.com/parleyrpc/parley/internal/e2e/gen/e2e/v1"
	"github.com/parleyrpc/parley/runtime/parley"
)

var (
	postedSpec  = &parley.MethodSpec{Procedure: "/test.Events/Posted"}
	confirmSpec = &parley.MethodSpec{Procedure: "/test.Events/Confirm"}
	// joinSpec: the client asks to join the room named in Text; the
	// handler replies with the connection id.
	joinSpec   = &parley.MethodSpec{Procedure: "/test.Chat/Join"}
	whoamiSpec = &parley.MethodSpec{Procedure: "/test.Chat/WhoAmI"}
	askSpec    = &parley.MethodSpec{Procedure: "/test.Chat/AskBack"}
)

type eventServer struct {
	srv *parley.Server
	url string
}

func newEventServer(t *testing.T, opts ...parley.ServerOption) *eventServer {
	t.Helper()
	srv := parley.NewServer(opts...)
	srv.Register(
		parley.NewUnaryMethod(joinSpec, func(ctx context.Context, r *e2ev1.EchoRequest) (*e2ev1.EchoResponse, error) {
			peer, _ := parley.PeerFromContext(ctx)
			if err := peer.Join(ctx, r.GetText()); err != nil {
				return nil, err
			}
			return &e2ev1.EchoResponse{Text: peer.ID()}, nil
		}),
		parley.NewUnaryMethod(whoamiSpec, func(ctx context.Context, _ *emptypb.Empty) (*e2ev1.EchoResponse, error) {
			p, ok := parley.PrincipalFromContext(ctx)
			if !ok {
				return nil, parley.NewError(parley.CodeUnauthenticated, "no principal")
			}
			return &e2ev1.EchoResponse{Text: p.UserID}, nil
		}),
		// AskBack calls the client's Confirm and returns its answer.
		parley.NewUnaryMethod(askSpec, func(ctx context.Context, r *e2ev1.EchoRequest) (*e2ev1.EchoResponse, error) {
			peer, _ := parley.PeerFromContext(ctx)
			res := new(e2ev1.EchoResponse)
			if err := peer.Invoke(ctx, confirmSpec, r, res); err != nil {
				return nil, err
			}
			return res, nil
		}),
	)
	return &eventServer{srv: srv, url: serveWS(t, srv)}
}

// listener is a client that records the events it receives.
type listener struct {
	conn *parley.Conn
	id   string
	mu   sync.Mutex
	got  []string
	more chan struct{}
}

func listen(t *testing.T, url, room string, opts ...parley.ClientOption) *listener {
	t.Helper()
	l := &listener{conn: dialT(t, url, opts...), more: make(chan struct{}, 1)}
	l.conn.Register(parley.NewEventMethod(postedSpec, func(_ context.Context, ev *e2ev1.EchoRequest) {
		l.mu.Lock()
		l.got = append(l.got, ev.GetText())
		l.mu.Unlock()
		select {
		case l.more <- struct{}{}:
		default:
		}
	}))
	if room != "" {
		res := new(e2ev1.EchoResponse)
		if err := l.conn.Invoke(context.Background(), joinSpec, &e2ev1.EchoRequest{Text: room}, res); err != nil {
			t.Fatal(err)
		}
		l.id = res.GetText()
	}
	return l
}

// waitFor waits until n events arrived, or fails after 10 s.
func (l *listener) waitFor(t *testing.T, n int) []string {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		l.mu.Lock()
		if len(l.got) >= n {
			got := slices.Clone(l.got)
			l.mu.Unlock()
			return got
		}
		l.mu.Unlock()
		select {
		case <-l.more:
		case <-deadline:
			l.mu.Lock()
			defer l.mu.Unlock()
			t.Fatalf("got %d events, want %d", len(l.got), n)
		}
	}
}

// barrier publishes a marker to the listener's own connection and waits
// for it: every event published before it has then arrived.
func (l *listener) barrier(t *testing.T, s *eventServer) []string {
	t.Helper()
	marker := fmt.Sprintf("barrier-%d", time.Now().UnixNano())
	if err := s.srv.Publish(context.Background(), parley.ToConn(l.id), postedSpec, &e2ev1.EchoRequest{Text: marker}); err != nil {
		t.Fatal(err)
	}
	for {
		got := l.waitFor(t, 1)
		if i := slices.Index(got, marker); i >= 0 {
			l.mu.Lock()
			l.got = slices.Delete(l.got, i, i+1)
			l.mu.Unlock()
			return slices.Delete(got, i, i+1)
		}
		select {
		case <-l.more:
		case <-time.After(10 * time.Second):
			t.Fatal("barrier event never arrived")
		}
	}
}

func TestRoomFanOutExactlyOnceInOrder(t *testing.T) {
	s := newEventServer(t)
	const conns, events = 1000, 20
	ls := make([]*listener, conns)
	var wg sync.WaitGroup
	for i := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ls[i] = listen(t, s.url, "lobby")
		}()
	}
	wg.Wait()
	var want []string
	for i := range events {
		want = append(want, fmt.Sprint(i))
		if err := s.srv.Publish(context.Background(), parley.ToRoom("lobby"), postedSpec, &e2ev1.EchoRequest{Text: fmt.Sprint(i)}); err != nil {
			t.Fatal(err)
		}
	}
	for i, l := range ls {
		got := l.waitFor(t, events)
		if !slices.Equal(got, want) {
			t.Fatalf("listener %d got %v, want %v", i, got, want)
		}
	}
	// Exactly once: nothing more arrives before a later marker.
	if got := ls[0].barrier(t, s); len(got) != events {
		t.Fatalf("listener 0 got %d events in all, want %d", len(got), events)
	}
}

func TestTargets(t *testing.T) {
	users := map[string]string{"tok-ada": "ada", "tok-bob": "bob"}
	s := newEventServer(t, parley.WithAuthenticate(func(_ context.Context, r *parley.AuthRequest) (*parley.Principal, error) {
		u, ok := users[strings.TrimPrefix(r.Metadata["authorization"], "Bearer ")]
		if !ok {
			return nil, errors.New("unknown token")
		}
		return &parley.Principal{UserID: u}, nil
	}))
	as := func(tok string) parley.ClientOption {
		return parley.WithHelloMetadata(map[string]string{"authorization": "Bearer " + tok})
	}
	ada1, ada2, ada3 := listen(t, s.url, "a", as("tok-ada")), listen(t, s.url, "b", as("tok-ada")), listen(t, s.url, "a", as("tok-ada"))
	bob := listen(t, s.url, "a", as("tok-bob"))
	ctx := context.Background()
	publish := func(target parley.Target, text string) {
		t.Helper()
		if err := s.srv.Publish(ctx, target, postedSpec, &e2ev1.EchoRequest{Text: text}); err != nil {
			t.Fatal(err)
		}
	}
	publish(parley.ToUser("ada"), "to ada")
	publish(parley.ToRoom("a").Except(ada1.id), "room a except ada1")
	publish(parley.ToRoom("b"), "room b")
	publish(parley.ToConn(bob.id), "to bob's conn")
	publish(parley.ToAll(), "all")

	check := func(name string, l *listener, want ...string) {
		t.Helper()
		if got := l.barrier(t, s); !slices.Equal(got, want) {
			t.Errorf("%s got %q, want %q", name, got, want)
		}
	}
	check("ada1", ada1, "to ada", "all")
	check("ada2", ada2, "to ada", "room b", "all")
	check("ada3", ada3, "to ada", "room a except ada1", "all")
	check("bob", bob, "room a except ada1", "to bob's conn", "all")

	// Rooms and members are queryable; a closed connection leaves.
	ms, err := s.srv.Members(ctx, "a")
	if err != nil || len(ms) != 3 {
		t.Fatalf("members of a: %v, %v; want 3", ms, err)
	}
	if p, ok := s.srv.Peer(ada2.id); !ok || !slices.Equal(p.Rooms(), []string{"b"}) {
		t.Fatalf("ada2's rooms: %v", p.Rooms())
	}
	_ = bob.conn.Close()
	waitUntil(t, func() bool {
		ms, _ := s.srv.Members(ctx, "a")
		return len(ms) == 2
	})
	if on, _ := s.srv.IsOnline(ctx, "bob"); on {
		t.Fatal("bob still online after his only connection closed")
	}

	// The principal reaches handlers; a bad token is refused.
	res := new(e2ev1.EchoResponse)
	if err := ada1.conn.Invoke(ctx, whoamiSpec, &emptypb.Empty{}, res); err != nil || res.GetText() != "ada" {
		t.Fatalf("whoami: %v %v", res, err)
	}
	_, err = parley.Dial(ctx, s.url, as("nope"))
	var perr *parley.Error
	if !errors.As(err, &perr) || perr.Code() != parley.CodeUnauthenticated || !strings.Contains(perr.Message(), "unknown token") {
		t.Fatalf("bad token: %v, want unauthenticated with the server's message", err)
	}
}

func waitUntil(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not reached within 10s")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestPresenceUnderConcurrency connects and disconnects one user's
// connections from many goroutines: the hooks must alternate online and
// offline, and end offline.
func TestPresenceUnderConcurrency(t *testing.T) {
	var mu sync.Mutex
	var transitions []string
	hook := func(state string) func(string) {
		return func(user string) {
			mu.Lock()
			transitions = append(transitions, state)
			mu.Unlock()
		}
	}
	s := newEventServer(t,
		parley.WithAuthenticate(func(_ context.Context, r *parley.AuthRequest) (*parley.Principal, error) {
			return &parley.Principal{UserID: r.Metadata["user"]}, nil
		}),
		parley.WithPresenceHooks(hook("online"), hook("offline")))
	var wg sync.WaitGroup
	for range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 10 {
				c, err := parley.Dial(context.Background(), s.url, parley.WithHelloMetadata(map[string]string{"user": "ada"}))
				if err != nil {
					t.Error(err)
					return
				}
				_ = c.Close()
			}
		}()
	}
	wg.Wait()
	waitUntil(t, func() bool {
		on, _ := s.srv.IsOnline(context.Background(), "ada")
		mu.Lock()
		defer mu.Unlock()
		return !on && len(transitions) > 0 && transitions[len(transitions)-1] == "offline"
	})
	mu.Lock()
	defer mu.Unlock()
	for i, tr := range transitions {
		want := "online"
		if i%2 == 1 {
			want = "offline"
		}
		if tr != want {
			t.Fatalf("transition %d is %s, want %s: %v", i, tr, want, transitions)
		}
	}
}

// TestSlowConsumerIsCutOff: a client that stops reading is closed with
// CloseSlowConsumer once its bounded queue fills; the others get every
// event.
func TestSlowConsumerIsCutOff(t *testing.T) {
	s := newEventServer(t, parley.WithSendQueueBytes(64<<10))
	fast := listen(t, s.url, "r")
	// The slow client joins, then never reads.
	d := websocket.Dialer{Subprotocols: []string{parley.SubprotocolProto}, ReadBufferSize: 1024}
	ws, _, err := d.Dial(s.url, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ws.Close()
	write := func(f *parleyv1.Frame) {
		b, _ := proto.Marshal(f)
		if err := ws.WriteMessage(websocket.BinaryMessage, b); err != nil {
			t.Fatal(err)
		}
	}
	write(&parleyv1.Frame{Kind: &parleyv1.Frame_Hello{Hello: &parleyv1.Hello{}}})
	if _, _, err := ws.ReadMessage(); err != nil {
		t.Fatal(err)
	}
	req, _ := proto.Marshal(&e2ev1.EchoRequest{Text: "r"})
	write(&parleyv1.Frame{Kind: &parleyv1.Frame_Call{Call: &parleyv1.Call{Id: 1, Method: joinSpec.Procedure, Body: &parleyv1.Call_Payload{Payload: req}}}})
	if _, _, err := ws.ReadMessage(); err != nil { // the join's reply
		t.Fatal(err)
	}

	const n = 20_000
	big := strings.Repeat("x", 1024)
	for i := range n {
		if err := s.srv.Publish(context.Background(), parley.ToRoom("r"), postedSpec, &e2ev1.EchoRequest{Text: fmt.Sprint(i), Data: []byte(big)}); err != nil {
			t.Fatal(err)
		}
		if i%16 == 15 {
			fast.waitFor(t, i+1) // pace the publisher to the fast reader
		}
	}
	if got := fast.waitFor(t, n); len(got) != n || got[n-1] != fmt.Sprint(n-1) {
		t.Fatalf("the fast client got %d events", len(got))
	}
	// Now the slow client reads: some events, then the close.
	var received int
	for {
		_, _, err := ws.ReadMessage()
		if err == nil {
			received++
			continue
		}
		var ce *websocket.CloseError
		if !errors.As(err, &ce) || ce.Code != parley.CloseSlowConsumer {
			t.Fatalf("after %d events: %v, want close %d", received, err, parley.CloseSlowConsumer)
		}
		break
	}
	if received >= n {
		t.Fatalf("slow client received all %d events; it should have been cut off", received)
	}
	t.Logf("slow client got %d of %d events before the cut-off", received, n)
}

// TestServerCallsClient: the server awaits a reply from a client-side
// handler; a client without the handler answers unimplemented; a panicking
// event handler leaves the connection working.
func TestServerCallsClient(t *testing.T) {
	s := newEventServer(t)
	conn := dialT(t, s.url)
	ctx := context.Background()
	res := new(e2ev1.EchoResponse)
	err := conn.Invoke(ctx, askSpec, &e2ev1.EchoRequest{Text: "sure?"}, res)
	if parley.CodeOf(err) != parley.CodeUnimplemented {
		t.Fatalf("without a handler: %v, want unimplemented", err)
	}
	conn.Register(parley.NewUnaryMethod(confirmSpec, func(_ context.Context, r *e2ev1.EchoRequest) (*e2ev1.EchoResponse, error) {
		return &e2ev1.EchoResponse{Text: "yes: " + r.GetText()}, nil
	}))
	if err := conn.Invoke(ctx, askSpec, &e2ev1.EchoRequest{Text: "sure?"}, res); err != nil || res.GetText() != "yes: sure?" {
		t.Fatalf("got %v, %v", res, err)
	}

	var calls atomic.Int32
	l := listen(t, s.url, "p")
	l.conn.Register(parley.NewEventMethod(&parley.MethodSpec{Procedure: "/test.Events/Boom"}, func(context.Context, *e2ev1.EchoRequest) {
		calls.Add(1)
		panic("boom")
	}))
	_ = s.srv.Publish(ctx, parley.ToConn(l.id), &parley.MethodSpec{Procedure: "/test.Events/Boom"}, &e2ev1.EchoRequest{})
	_ = s.srv.Publish(ctx, parley.ToConn(l.id), postedSpec, &e2ev1.EchoRequest{Text: "after"})
	if got := l.waitFor(t, 1); got[0] != "after" || calls.Load() != 1 {
		t.Fatalf("after a panicking handler: %v (%d calls)", got, calls.Load())
	}
}

// TestInterceptorOrder: interceptors run in the order given, outermost
// first, on both sides, for calls and events.
func TestInterceptorOrder(t *testing.T) {
	var mu sync.Mutex
	var trace []string
	rec := func(name string) parley.Interceptor {
		return func(next parley.UnaryFunc) parley.UnaryFunc {
			return func(ctx context.Context, req proto.Message) (proto.Message, error) {
				ci, _ := parley.CallInfoFromContext(ctx)
				mu.Lock()
				trace = append(trace, fmt.Sprintf("%s:%s:%s>", ci.Side, name, ci.Spec.Procedure))
				mu.Unlock()
				res, err := next(ctx, req)
				mu.Lock()
				trace = append(trace, fmt.Sprintf("<%s:%s", ci.Side, name))
				mu.Unlock()
				return res, err
			}
		}
	}
	s := newEventServer(t, parley.WithInterceptors(rec("a"), rec("b")))
	l := listen(t, s.url, "", parley.WithInterceptors(rec("x"), rec("y")))
	mu.Lock()
	trace = nil
	mu.Unlock()
	res := new(e2ev1.EchoResponse)
	if err := l.conn.Invoke(context.Background(), joinSpec, &e2ev1.EchoRequest{Text: "i"}, res); err != nil {
		t.Fatal(err)
	}
	l.id = res.GetText()
	mu.Lock()
	got := strings.Join(trace, " ")
	trace = nil
	mu.Unlock()
	want := "client:x:/test.Chat/Join> client:y:/test.Chat/Join> server:a:/test.Chat/Join> server:b:/test.Chat/Join> <server:b <server:a <client:y <client:x"
	if got != want {
		t.Fatalf("call trace:\n got %s\nwant %s", got, want)
	}
	if err := s.srv.Publish(context.Background(), parley.ToConn(l.id), postedSpec, &e2ev1.EchoRequest{Text: "e"}); err != nil {
		t.Fatal(err)
	}
	l.waitFor(t, 1)
	waitUntil(t, func() bool { mu.Lock(); defer mu.Unlock(); return len(trace) == 8 })
	// The two sides run concurrently; each side's order is fixed.
	var server, client []string
	mu.Lock()
	for _, step := range trace {
		if strings.Contains(step, "server:") {
			server = append(server, step)
		} else {
			client = append(client, step)
		}
	}
	mu.Unlock()
	if got, want := strings.Join(server, " "), "server:a:/test.Events/Posted> server:b:/test.Events/Posted> <server:b <server:a"; got != want {
		t.Fatalf("server event trace:\n got %s\nwant %s", got, want)
	}
	if got, want := strings.Join(client, " "), "client:x:/test.Events/Posted> client:y:/test.Events/Posted> <client:y <client:x"; got != want {
		t.Fatalf("client event trace:\n got %s\nwant %s", got, want)
	}
}

var _ = http.StatusOK

// TestEventLargerThanTheSocketBuffer: an event the socket cannot take in
// one write arrives whole, with nothing published after it to push it
// out (the server writes events without waiting for the socket, and must
// finish a write the socket took only part of).
func TestEventLargerThanTheSocketBuffer(t *testing.T) {
	s := newEventServer(t, parley.WithMaxMessageBytes(32<<20))
	l := listen(t, s.url, "big", parley.WithMaxMessageBytes(32<<20))
	big := bytes.Repeat([]byte("0123456789abcdef"), 1<<20) // 16 MiB
	for i := range 3 {
		if err := s.srv.Publish(context.Background(), parley.ToRoom("big"), postedSpec, &e2ev1.EchoRequest{Text: fmt.Sprint(i), Data: big}); err != nil {
			t.Fatal(err)
		}
		if got := l.waitFor(t, i+1); got[i] != fmt.Sprint(i) {
			t.Fatalf("event %d arrived as %q", i, got[i])
		}
	}
}
