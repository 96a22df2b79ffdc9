package parley_test

import (
	"context"
	"errors"
	"fmt"
	"net/http/httptest"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	e2ev1 "github.com/parleyrpc/parley/internal/e2e/gen/e2e/v1"
	"github.com/parleyrpc/parley/internal/faultproxy"
	"github.com/parleyrpc/parley/runtime/parley"
)

// Reconnection and session resumption, with the faults on real sockets: a
// faultproxy sits between every client and the server.

var (
	// workSpec is not idempotent: it must never run twice for one call.
	workSpec = &parley.MethodSpec{Procedure: "/test.Resume/Work"}
	// readSpec is idempotent: it may run again after a drop.
	readSpec = &parley.MethodSpec{Procedure: "/test.Resume/Read", Idempotency: parley.IdempotencyIdempotent}
)

// fastBackoff keeps tests quick: reconnects within tens of milliseconds.
var fastBackoff = parley.WithReconnect(parley.Backoff{Initial: 5 * time.Millisecond, Max: 50 * time.Millisecond, Multiplier: 2})

// work records the runs of Work and Read handlers: how many times each
// request (by its text) ran, and lets a test hold them until released.
type work struct {
	mu      sync.Mutex
	runs    map[string]int
	gate    chan struct{} // handlers wait for it to close; nil: no wait
	started chan string
	served  atomic.Int64 // calls answered
}

func newWork() *work {
	return &work{runs: make(map[string]int), started: make(chan string, 10_000)}
}

// hold makes handlers started from now on wait for the returned release.
func (w *work) hold() (release func()) {
	gate := make(chan struct{})
	w.mu.Lock()
	w.gate = gate
	w.mu.Unlock()
	var once sync.Once
	return func() {
		once.Do(func() {
			w.mu.Lock()
			w.gate = nil
			w.mu.Unlock()
			close(gate)
		})
	}
}

func (w *work) runsOf(text string) int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.runs[text]
}

func (w *work) handler(ctx context.Context, r *e2ev1.EchoRequest) (*e2ev1.EchoResponse, error) {
	w.mu.Lock()
	w.runs[r.GetText()]++
	gate := w.gate
	w.mu.Unlock()
	w.started <- r.GetText()
	if gate != nil {
		select {
		case <-gate:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	w.served.Add(1)
	return &e2ev1.EchoResponse{Text: r.GetText()}, nil
}

// waitStarted waits for n handlers to start.
func (w *work) waitStarted(t *testing.T, n int) {
	t.Helper()
	timeout := time.After(10 * time.Second)
	for range n {
		select {
		case <-w.started:
		case <-timeout:
			t.Fatalf("fewer than %d handlers started", n)
		}
	}
}

// backend is one parley.Server on its own HTTP listener.
type backend struct {
	srv  *parley.Server
	hs   *httptest.Server
	work *work
}

func newBackend(t *testing.T, opts ...parley.ServerOption) *backend {
	t.Helper()
	b := &backend{srv: parley.NewServer(opts...), work: newWork()}
	b.srv.Register(
		parley.NewUnaryMethod(workSpec, b.work.handler),
		parley.NewUnaryMethod(readSpec, b.work.handler),
		parley.NewUnaryMethod(joinSpec, func(ctx context.Context, r *e2ev1.EchoRequest) (*e2ev1.EchoResponse, error) {
			peer, _ := parley.PeerFromContext(ctx)
			if err := peer.Join(ctx, r.GetText()); err != nil {
				return nil, err
			}
			return &e2ev1.EchoResponse{Text: peer.ID()}, nil
		}),
	)
	b.hs = httptest.NewServer(b.srv)
	t.Cleanup(b.stop)
	return b
}

var stopOnce sync.Map

// stop shuts the server down, at once if calls hang.
func (b *backend) stop() {
	if _, done := stopOnce.LoadOrStore(b, true); done {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_ = b.srv.Shutdown(ctx)
	b.hs.CloseClientConnections()
	b.hs.Close()
}

func (b *backend) addr() string { return strings.TrimPrefix(b.hs.URL, "http://") }

// rig is a backend behind a fault proxy.
type rig struct {
	*backend
	proxy *faultproxy.Proxy
	url   string // the proxy's, for clients
}

func newRig(t *testing.T, opts ...parley.ServerOption) *rig {
	t.Helper()
	p, err := faultproxy.New("127.0.0.1:1")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Close() }) // last: after clients and servers
	b := newBackend(t, opts...)
	p.SetBackend(b.addr())
	return &rig{backend: b, proxy: p, url: "ws://" + p.Addr()}
}

// states records a connection's state changes.
type states struct {
	mu   sync.Mutex
	seen []parley.ConnState
	at   []time.Time
	next int // waitFor looks from here
	more chan struct{}
}

func watch(c *parley.Conn) *states {
	s := &states{more: make(chan struct{}, 1)}
	c.OnStateChange(func(st parley.ConnState) {
		s.mu.Lock()
		s.seen = append(s.seen, st)
		s.at = append(s.at, time.Now())
		s.mu.Unlock()
		select {
		case s.more <- struct{}{}:
		default:
		}
	})
	return s
}

// waitFor returns the first state after the last one waitFor returned that
// satisfies ok, and when it was reported.
func (s *states) waitFor(t *testing.T, what string, ok func(parley.ConnState) bool) (parley.ConnState, time.Time) {
	t.Helper()
	timeout := time.After(15 * time.Second)
	for {
		s.mu.Lock()
		for ; s.next < len(s.seen); s.next++ {
			if ok(s.seen[s.next]) {
				st, at := s.seen[s.next], s.at[s.next]
				s.next++
				s.mu.Unlock()
				return st, at
			}
		}
		s.mu.Unlock()
		select {
		case <-s.more:
		case <-timeout:
			s.mu.Lock()
			defer s.mu.Unlock()
			t.Fatalf("no %s state within 15s; states: %+v", what, s.seen)
		}
	}
}

func (s *states) all() []parley.ConnState {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.seen)
}

func isReopened(st parley.ConnState) bool { return st.Status == parley.StatusOpen && st.Reconnected }

func isReconnecting(st parley.ConnState) bool { return st.Status == parley.StatusReconnecting }

// eventLog is a client that records the numbered events it receives.
type eventLog struct {
	conn *parley.Conn
	mu   sync.Mutex
	got  []int
	hi   atomic.Int64 // the highest number seen
	end  chan struct{}
	more chan struct{}
}

func newEventLog(t *testing.T, url string, opts ...parley.ClientOption) *eventLog {
	l := &eventLog{conn: dialT(t, url, opts...), end: make(chan struct{}), more: make(chan struct{}, 1)}
	l.hi.Store(-1)
	l.conn.Register(parley.NewEventMethod(postedSpec, func(_ context.Context, ev *e2ev1.EchoRequest) {
		if ev.GetText() == "end" {
			close(l.end)
			return
		}
		n, _ := strconv.Atoi(ev.GetText())
		l.mu.Lock()
		l.got = append(l.got, n)
		l.mu.Unlock()
		if int64(n) > l.hi.Load() {
			l.hi.Store(int64(n))
		}
		select {
		case l.more <- struct{}{}:
		default:
		}
	}))
	return l
}

// waitHi waits until event n (or a later one) arrived.
func (l *eventLog) waitHi(t *testing.T, n int, deadline time.Time) bool {
	for l.hi.Load() < int64(n) {
		select {
		case <-l.more:
		case <-time.After(time.Until(deadline)):
			return false
		}
	}
	return true
}

// tally counts, of events 0..n-1, those lost, those delivered more than
// once, and those delivered out of order.
func (l *eventLog) tally(n int) (lost, dup, disorder int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	seen := make([]int, n)
	prev := -1
	for _, g := range l.got {
		if g >= 0 && g < n {
			seen[g]++
		}
		if g <= prev {
			disorder++
		}
		prev = g
	}
	for _, c := range seen {
		switch {
		case c == 0:
			lost++
		case c > 1:
			dup += c - 1
		}
	}
	return lost, dup, disorder
}

// publishThroughDrops publishes n events to one client while dropping its
// socket drops times, spread over the burst, and reports what the client
// lost or got twice. The publisher runs at most window events ahead of the
// client, so that the session's replay buffer (DefaultResumeEvents) holds
// every event a drop can make it miss.
func publishThroughDrops(t *testing.T, n, drops int) (lost, dup, disorder int) {
	r := newRig(t)
	l := newEventLog(t, r.url, fastBackoff)
	st := watch(l.conn)
	id := l.conn.SessionID()
	const window = 200
	deadline := time.Now().Add(40 * time.Second)

	pubErr := make(chan error, 1)
	go func() {
		ctx := context.Background()
		for i := range n {
			if i >= window && !l.waitHi(t, i-window, deadline) {
				pubErr <- fmt.Errorf("stalled: event %d never arrived", i-window)
				return
			}
			if err := r.srv.Publish(ctx, parley.ToConn(id), postedSpec, &e2ev1.EchoRequest{Text: strconv.Itoa(i)}); err != nil {
				pubErr <- err
				return
			}
		}
		pubErr <- r.srv.Publish(ctx, parley.ToConn(id), postedSpec, &e2ev1.EchoRequest{Text: "end"})
	}()
	for k := 1; k <= drops; k++ {
		if !l.waitHi(t, k*n/(drops+1), deadline) {
			lost, dup, disorder := l.tally(n)
			t.Fatalf("before drop %d: event %d never arrived (so far: %d lost, %d duplicated, %d out of order)", k, k*n/(drops+1), lost, dup, disorder)
		}
		r.proxy.Drop()
		if st, _ := st.waitFor(t, "reopened", isReopened); !st.Resumed {
			t.Fatalf("drop %d: the session was not resumed: %+v", k, st)
		}
	}
	if err := <-pubErr; err != nil {
		t.Fatal(err)
	}
	select {
	case <-l.end:
	case <-time.After(time.Until(deadline)):
		t.Fatal("the last event never arrived")
	}
	return l.tally(n)
}

// TestEventsSurviveDrops: the socket drops mid-burst a few times; after
// each resume every event arrives exactly once, in order.
func TestEventsSurviveDrops(t *testing.T) {

	const n = 2000
	lost, dup, disorder := publishThroughDrops(t, n, 5)
	if lost+dup+disorder > 0 {
		t.Fatalf("of %d events across 5 drops: %d lost, %d duplicated, %d out of order", n, lost, dup, disorder)
	}
}

// TestEventsAcross100Drops measures events lost and duplicated across 100
// forced drops (the goal: zero of each).
func TestEventsAcross100Drops(t *testing.T) {
	if testing.Short() {
		t.Skip("100 drops take a few seconds")
	}

	const n, drops = 10_000, 100
	start := time.Now()
	lost, dup, disorder := publishThroughDrops(t, n, drops)
	t.Logf("%d events across %d forced drops: %d lost, %d duplicated, %d out of order (%v)", n, drops, lost, dup, disorder, time.Since(start).Round(time.Millisecond))
	if lost+dup+disorder > 0 {
		t.Fatalf("%d lost, %d duplicated, %d out of order", lost, dup, disorder)
	}
}

// callResult is what one caller got.
type callResult struct {
	text string
	err  error
}

// callMany starts n calls, alternately Work (not idempotent) and Read
// (idempotent), with texts prefix0..; the results arrive on the channel,
// indexed.
func callMany(conn *parley.Conn, prefix string, n int) []chan callResult {
	out := make([]chan callResult, n)
	for i := range n {
		out[i] = make(chan callResult, 2)
		spec := workSpec
		if i%2 == 1 {
			spec = readSpec
		}
		go func() {
			res := new(e2ev1.EchoResponse)
			err := conn.Invoke(context.Background(), spec, &e2ev1.EchoRequest{Text: fmt.Sprintf("%s%d", prefix, i)}, res)
			out[i] <- callResult{text: res.GetText(), err: err}
		}()
	}
	return out
}

func collect(t *testing.T, results []chan callResult) []callResult {
	t.Helper()
	out := make([]callResult, len(results))
	timeout := time.After(20 * time.Second)
	for i, ch := range results {
		select {
		case out[i] = <-ch:
		case <-timeout:
			t.Fatalf("call %d never returned", i)
		}
	}
	return out
}

// TestCallsInFlightAcrossResume: 100 calls in flight, half idempotent, when
// the socket drops; the session resumes. Every handler ran exactly once
// and every caller got its own answer, once — whether the handlers finish
// while the client is away or after it is back.
func TestCallsInFlightAcrossResume(t *testing.T) {
	for _, finishWhileAway := range []bool{false, true} {
		t.Run(fmt.Sprintf("finishWhileAway=%v", finishWhileAway), func(t *testing.T) {
			r := newRig(t)
			conn := dialT(t, r.url, fastBackoff)
			st := watch(conn)
			release := r.work.hold()
			defer release()
			const n = 100
			results := callMany(conn, "c", n)
			r.work.waitStarted(t, n)

			if finishWhileAway {
				r.proxy.Refuse(true)
			}
			r.proxy.Drop()
			if finishWhileAway {
				st.waitFor(t, "reconnecting", isReconnecting)
				release()
				waitUntil(t, func() bool { return r.work.served.Load() == n })
				r.proxy.Refuse(false)
			}
			if s, _ := st.waitFor(t, "reopened", isReopened); !s.Resumed {
				t.Fatalf("not resumed: %+v", s)
			}
			release()
			for i, res := range collect(t, results) {
				want := fmt.Sprintf("c%d", i)
				if res.err != nil || res.text != want {
					t.Errorf("call %d: %q, %v; want %q", i, res.text, res.err, want)
				}
				if runs := r.work.runsOf(want); runs != 1 {
					t.Errorf("call %d (%s) ran %d times", i, []string{"work", "read"}[i%2], runs)
				}
			}
			// Exactly one answer each: nothing more is pending, and the
			// connection still works.
			res := new(e2ev1.EchoResponse)
			if err := conn.Invoke(context.Background(), workSpec, &e2ev1.EchoRequest{Text: "after"}, res); err != nil || res.GetText() != "after" {
				t.Fatalf("a call after the resume: %q, %v", res.GetText(), err)
			}
		})
	}
}

// TestNotResumable: the client stays away past the resume window. It is
// told (Open, Reconnected, not Resumed); its non-idempotent calls in
// flight fail unavailable, its idempotent ones are sent again and succeed.
func TestNotResumable(t *testing.T) {

	const window = 200 * time.Millisecond
	r := newRig(t, parley.WithResume(window, parley.DefaultResumeEvents))
	conn := dialT(t, r.url, fastBackoff)
	st := watch(conn)
	release := r.work.hold()
	defer release()
	const n = 20
	results := callMany(conn, "n", n)
	r.work.waitStarted(t, n)

	id := conn.SessionID()
	r.proxy.Refuse(true)
	r.proxy.Drop()
	dropped := time.Now()
	waitUntil(t, func() bool { _, ok := r.srv.Peer(id); return !ok })
	if waited := time.Since(dropped); waited < window {
		t.Errorf("the session ended %v after the drop, within the %v window", waited, window)
	}
	r.proxy.Refuse(false)
	s, _ := st.waitFor(t, "reopened", isReopened)
	if s.Resumed || s.Status != parley.StatusOpen || !s.Reconnected {
		t.Fatalf("after the window: %+v, want Open, Reconnected, not Resumed", s)
	}
	if conn.SessionID() == id {
		t.Fatal("same session id after a failed resume")
	}
	release()
	for i, res := range collect(t, results) {
		text := fmt.Sprintf("n%d", i)
		if i%2 == 0 { // Work: not idempotent
			if parley.CodeOf(res.err) != parley.CodeUnavailable {
				t.Errorf("work call %d: %q, %v; want unavailable", i, res.text, res.err)
			}
			if runs := r.work.runsOf(text); runs != 1 {
				t.Errorf("work call %d ran %d times", i, runs)
			}
			continue
		}
		if res.err != nil || res.text != text {
			t.Errorf("read call %d: %q, %v; want %q", i, res.text, res.err, text)
		}
	}
}

// TestBlackholeDetectedByKeepalive: the socket stops carrying anything,
// both ways, while staying open. Both sides notice within the keepalive
// bound (ping interval + pong timeout); the client reconnects and resumes
// through the proxy, whose new links forward.
func TestBlackholeDetectedByKeepalive(t *testing.T) {
	const ping, pong = 100 * time.Millisecond, 200 * time.Millisecond
	const bound = ping + pong
	r := newRig(t, parley.WithKeepalive(ping, pong))
	conn := dialT(t, r.url, fastBackoff, parley.WithKeepalive(ping, pong))
	st := watch(conn)
	res := new(e2ev1.EchoResponse)
	if err := conn.Invoke(context.Background(), readSpec, &e2ev1.EchoRequest{Text: "before"}, res); err != nil {
		t.Fatal(err)
	}
	links := r.proxy.Blackhole()
	if len(links) != 1 {
		t.Fatalf("%d links", len(links))
	}
	start := time.Now()
	_, clientNoticed := st.waitFor(t, "reconnecting", isReconnecting)
	select {
	case <-links[0].ServerGone():
	case <-time.After(10 * time.Second):
		t.Fatal("the server never closed the blackholed socket")
	}
	serverNoticed := time.Now()
	c, s := clientNoticed.Sub(start), serverNoticed.Sub(start)
	t.Logf("blackhole noticed by the client after %v, by the server after %v (bound %v)", c.Round(time.Millisecond), s.Round(time.Millisecond), bound)
	slack := 250 * time.Millisecond // scheduling under -race
	if c > bound+slack || s > bound+slack {
		t.Errorf("noticed after %v (client) and %v (server), beyond the %v bound", c, s, bound)
	}
	if st, _ := st.waitFor(t, "reopened", isReopened); !st.Resumed {
		t.Fatalf("not resumed after the blackhole: %+v", st)
	}
	if err := conn.Invoke(context.Background(), readSpec, &e2ev1.EchoRequest{Text: "after"}, res); err != nil || res.GetText() != "after" {
		t.Fatalf("after: %q %v", res.GetText(), err)
	}
}

// TestServerRestart: the server dies and another starts behind the same
// address. Clients retry with growing, jittered delays while it is down,
// come back with resumed = false, and resync (re-join their room).
func TestServerRestart(t *testing.T) {
	r := newRig(t)
	const clients = 20
	b := parley.Backoff{Initial: 10 * time.Millisecond, Max: 80 * time.Millisecond, Multiplier: 2}
	ls := make([]*eventLog, clients)
	sts := make([]*states, clients)
	for i := range ls {
		ls[i] = newEventLog(t, r.url, parley.WithReconnect(b))
		sts[i] = watch(ls[i].conn)
		if err := ls[i].conn.Invoke(context.Background(), joinSpec, &e2ev1.EchoRequest{Text: "lobby"}, new(e2ev1.EchoResponse)); err != nil {
			t.Fatal(err)
		}
	}
	// The server goes down hard: connections drop, new ones are refused.
	r.proxy.Refuse(true)
	r.proxy.Drop()
	r.backend.stop()
	for i, st := range sts {
		// Backoff: the attempts' delays stay within their growing caps.
		for attempt := 1; attempt <= 4; attempt++ {
			s, _ := st.waitFor(t, "reconnecting", isReconnecting)
			ceil := min(b.Max, b.Initial<<(s.Attempt-1))
			if s.Attempt != attempt || s.Delay < 0 || s.Delay > ceil {
				t.Fatalf("client %d: attempt %d: %+v, want attempt %d with a delay within %v", i, attempt, s, attempt, ceil)
			}
		}
	}
	b2 := newBackend(t)
	r.proxy.SetBackend(b2.addr())
	r.proxy.Refuse(false)
	for i, st := range sts {
		s, _ := st.waitFor(t, "reopened", isReopened)
		if s.Resumed {
			t.Fatalf("client %d resumed a session on a new server: %+v", i, s)
		}
		// Resync: a new session has no rooms.
		if err := ls[i].conn.Invoke(context.Background(), joinSpec, &e2ev1.EchoRequest{Text: "lobby"}, new(e2ev1.EchoResponse)); err != nil {
			t.Fatal(err)
		}
	}
	if err := b2.srv.Publish(context.Background(), parley.ToRoom("lobby"), postedSpec, &e2ev1.EchoRequest{Text: "end"}); err != nil {
		t.Fatal(err)
	}
	for i, l := range ls {
		select {
		case <-l.end:
		case <-time.After(10 * time.Second):
			t.Fatalf("client %d missed the event after resyncing", i)
		}
	}
}

// TestThousandClientsComeBack: 1,000 clients lose the server at once (it
// restarts) and come back with the default backoff. Their first attempts
// are spread over the backoff window, and all are back. Logs the time for
// all of them to be back.
func TestThousandClientsComeBack(t *testing.T) {
	if testing.Short() {
		t.Skip("1,000 clients")
	}
	r := newRig(t)
	const clients = 1000
	type back struct {
		delay time.Duration // of the first attempt
		at    time.Time     // when it was open again
	}
	backs := make(chan back, clients)
	conns := make([]*parley.Conn, clients)
	var wg sync.WaitGroup
	for i := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			conns[i] = dialT(t, r.url) // DefaultBackoff
			var first time.Duration
			var once sync.Once
			conns[i].OnStateChange(func(st parley.ConnState) {
				switch {
				case st.Status == parley.StatusReconnecting && st.Attempt == 1:
					first = st.Delay
				case isReopened(st):
					once.Do(func() { backs <- back{delay: first, at: time.Now()} })
				}
			})
		}()
	}
	wg.Wait()
	b2 := newBackend(t)
	r.proxy.SetBackend(b2.addr())
	start := time.Now()
	r.proxy.Drop()
	r.backend.stop()

	var delays, times []time.Duration
	timeout := time.After(60 * time.Second)
	for range clients {
		select {
		case b := <-backs:
			delays = append(delays, b.delay)
			times = append(times, b.at.Sub(start))
		case <-timeout:
			t.Fatalf("%d of %d clients back within 60s", len(times), clients)
		}
	}
	slices.Sort(delays)
	slices.Sort(times)
	pct := func(d []time.Duration, p int) time.Duration { return d[(len(d)-1)*p/100].Round(time.Millisecond) }
	window := parley.DefaultBackoff.Initial
	t.Logf("%d clients back %v after the restart (p10 %v, p50 %v, p90 %v); first-attempt delays p10 %v, p50 %v, p90 %v, max %v (window %v)",
		clients, pct(times, 100), pct(times, 10), pct(times, 50), pct(times, 90),
		pct(delays, 10), pct(delays, 50), pct(delays, 90), pct(delays, 100), window)
	// Spread: about a tenth of the delays in each tenth of the window.
	for decile := range 10 {
		lo, hi := window*time.Duration(decile)/10, window*time.Duration(decile+1)/10
		n := 0
		for _, d := range delays {
			if d >= lo && (d < hi || decile == 9 && d <= hi) {
				n++
			}
		}
		if n < clients/20 || n > clients/5 {
			t.Errorf("%d of %d first attempts in [%v, %v): not spread over the window", n, clients, lo, hi)
		}
	}
	if times[len(times)/10] > window/2 && times[len(times)-1]-times[0] < window/2 {
		t.Errorf("reconnections bunched: %v to %v", times[0], times[len(times)-1])
	}
}

// TestGoAwayUnderLoad: server A shuts down (GoAway) while clients call it
// non-stop; new connections reach server B. No call fails: those A had
// accepted finish there, the others go to B.
func TestGoAwayUnderLoad(t *testing.T) {
	r := newRig(t)
	const clients = 20
	conns := make([]*parley.Conn, clients)
	sts := make([]*states, clients)
	for i := range conns {
		conns[i] = dialT(t, r.url, fastBackoff)
		sts[i] = watch(conns[i])
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var calls, failures atomic.Int64
	var firstErr atomic.Value
	for i, conn := range conns {
		for g := range 4 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for k := 0; ; k++ {
					select {
					case <-stop:
						return
					default:
					}
					spec := workSpec
					if k%2 == 1 {
						spec = readSpec
					}
					text := fmt.Sprintf("%d/%d/%d", i, g, k)
					res := new(e2ev1.EchoResponse)
					err := conn.Invoke(context.Background(), spec, &e2ev1.EchoRequest{Text: text}, res)
					calls.Add(1)
					if err == nil && res.GetText() != text {
						err = fmt.Errorf("got %q", res.GetText())
					}
					if err != nil {
						failures.Add(1)
						firstErr.CompareAndSwap(nil, fmt.Errorf("call %s: %w", text, err))
					}
				}
			}()
		}
	}
	waitUntil(t, func() bool { return r.work.served.Load() >= 500 })
	b2 := newBackend(t)
	r.proxy.SetBackend(b2.addr())
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := r.srv.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	for _, st := range sts {
		st.waitFor(t, "reopened", isReopened)
	}
	waitUntil(t, func() bool { return b2.work.served.Load() >= 500 })
	close(stop)
	wg.Wait()
	t.Logf("%d calls: %d answered by A, %d by B, %d failed", calls.Load(), r.work.served.Load(), b2.work.served.Load(), failures.Load())
	if failures.Load() > 0 {
		t.Fatalf("%d calls failed; the first: %v", failures.Load(), firstErr.Load())
	}
}

// TestPresenceDoesNotFlap: a user whose socket drops and resumes within
// the window is not reported offline and online again; once the window
// passes with the user away, offline is reported.
func TestPresenceDoesNotFlap(t *testing.T) {
	const window = 300 * time.Millisecond
	var mu sync.Mutex
	var hooks []string
	more := make(chan struct{}, 100)
	hook := func(what string) func(string) {
		return func(user string) {
			mu.Lock()
			hooks = append(hooks, what+" "+user)
			mu.Unlock()
			more <- struct{}{}
		}
	}
	// waitHook waits for the n-th hook call that is want (the first by
	// default).
	waitHook := func(want string, n ...int) []string {
		t.Helper()
		times := 1
		if len(n) > 0 {
			times = n[0]
		}
		timeout := time.After(10 * time.Second)
		for {
			mu.Lock()
			got := slices.Clone(hooks)
			mu.Unlock()
			if len(slices.DeleteFunc(slices.Clone(got), func(h string) bool { return h != want })) >= times {
				return got
			}
			select {
			case <-more:
			case <-timeout:
				t.Fatalf("no %q hook; hooks: %q", want, got)
			}
		}
	}
	r := newRig(t,
		parley.WithResume(window, parley.DefaultResumeEvents),
		parley.WithAuthenticate(func(_ context.Context, req *parley.AuthRequest) (*parley.Principal, error) {
			return &parley.Principal{UserID: req.Metadata["user"]}, nil
		}),
		parley.WithPresenceHooks(hook("online"), hook("offline")))
	as := func(user string) parley.ClientOption {
		return parley.WithHelloMetadata(map[string]string{"user": user})
	}
	ada := dialT(t, r.url, fastBackoff, as("ada"))
	st := watch(ada)
	waitHook("online ada")
	for range 5 {
		r.proxy.Drop()
		if s, _ := st.waitFor(t, "reopened", isReopened); !s.Resumed {
			t.Fatalf("not resumed: %+v", s)
		}
	}
	// Hooks run in order: once bob's online hook ran, any flap of ada's
	// would have been reported before it.
	dialT(t, r.url, as("bob"))
	if got := waitHook("online bob"); !slices.Equal(got, []string{"online ada", "online bob"}) {
		t.Fatalf("hooks after 5 resumed drops: %q", got)
	}
	if on, _ := r.srv.IsOnline(context.Background(), "ada"); !on {
		t.Fatal("ada is not online")
	}
	// Away for longer than the window: offline.
	r.proxy.Refuse(true)
	dropped := time.Now() // before the drops: the server may see them at once
	for _, l := range r.proxy.Links() {
		l.Drop() // ada's and bob's
	}
	waitHook("offline ada")
	if away := time.Since(dropped); away < window {
		t.Fatalf("offline reported %v after the drop, within the %v window", away, window)
	}
	r.proxy.Refuse(false)
	if s, _ := st.waitFor(t, "reopened", isReopened); s.Resumed {
		t.Fatalf("resumed after the window: %+v", s)
	}
	waitHook("online ada", 2) // hooks run after the handshake, perhaps after the client heard Welcome
	mu.Lock()
	defer mu.Unlock()
	if n := len(slices.DeleteFunc(slices.Clone(hooks), func(h string) bool { return !strings.HasSuffix(h, " ada") })); n != 3 {
		t.Fatalf("ada's hooks: %q, want online, offline, online", hooks)
	}
}

// TestTokenOnReconnect: the token function is called for every dial, so a
// reconnect authenticates afresh; a refusal on reconnect ends the
// connection with unauthenticated.
func TestTokenOnReconnect(t *testing.T) {
	var refuse atomic.Bool
	var mu sync.Mutex
	var seen []string
	r := newRig(t, parley.WithAuthenticate(func(_ context.Context, req *parley.AuthRequest) (*parley.Principal, error) {
		tok := strings.TrimPrefix(req.Metadata["authorization"], "Bearer ")
		mu.Lock()
		seen = append(seen, tok)
		mu.Unlock()
		if refuse.Load() {
			return nil, parley.NewError(parley.CodeUnauthenticated, "token revoked")
		}
		return &parley.Principal{UserID: "ada"}, nil
	}))
	var n atomic.Int32
	conn := dialT(t, r.url, fastBackoff, parley.WithToken(func(context.Context) (string, error) {
		return fmt.Sprintf("tok-%d", n.Add(1)), nil
	}))
	st := watch(conn)
	for range 2 {
		r.proxy.Drop()
		if s, _ := st.waitFor(t, "reopened", isReopened); !s.Resumed {
			t.Fatalf("not resumed: %+v", s)
		}
	}
	mu.Lock()
	got := slices.Clone(seen)
	mu.Unlock()
	if !slices.Equal(got, []string{"tok-1", "tok-2", "tok-3"}) {
		t.Fatalf("tokens the server saw: %q, want a fresh one per dial", got)
	}
	refuse.Store(true)
	r.proxy.Drop()
	s, _ := st.waitFor(t, "closed", func(s parley.ConnState) bool { return s.Status == parley.StatusClosed })
	if parley.CodeOf(s.Err) != parley.CodeUnauthenticated || !strings.Contains(s.Err.Error(), "token revoked") {
		t.Fatalf("closed with %v, want unauthenticated: token revoked", s.Err)
	}
	select {
	case <-conn.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("the connection did not end")
	}
	if parley.CodeOf(conn.Err()) != parley.CodeUnauthenticated {
		t.Fatalf("Err: %v", conn.Err())
	}
	err := conn.Invoke(context.Background(), readSpec, &e2ev1.EchoRequest{Text: "x"}, new(e2ev1.EchoResponse))
	if parley.CodeOf(err) != parley.CodeUnauthenticated {
		t.Fatalf("a call after the refusal: %v, want unauthenticated", err)
	}
}

// TestResumeBufferMemory measures what the resume buffers cost per
// session at the default settings: sessions whose client is away, each
// holding DefaultResumeEvents events of 100 bytes, published to each
// session alone (ToConn: a payload per session) or to all (one payload
// shared by every session).
func TestResumeBufferMemory(t *testing.T) {
	if testing.Short() {
		t.Skip("measurement")
	}
	r := newRig(t)
	const sessions = 200
	ids := make([]string, sessions)
	for i := range ids {
		c := dialT(t, r.url, parley.WithoutReconnect())
		ids[i] = c.SessionID()
	}
	r.proxy.Drop() // the sessions wait for their clients
	for _, id := range ids {
		waitUntil(t, func() bool { p, ok := r.srv.Peer(id); return ok && p != nil })
	}
	payload := strings.Repeat("x", 100)
	heap := func() uint64 {
		runtime.GC()
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		return ms.HeapAlloc
	}
	ctx := context.Background()
	before := heap()
	for range parley.DefaultResumeEvents {
		if err := r.srv.Publish(ctx, parley.ToAll(), postedSpec, &e2ev1.EchoRequest{Text: payload}); err != nil {
			t.Fatal(err)
		}
	}
	shared := heap()
	for _, id := range ids {
		for range parley.DefaultResumeEvents {
			if err := r.srv.Publish(ctx, parley.ToConn(id), postedSpec, &e2ev1.EchoRequest{Text: payload}); err != nil {
				t.Fatal(err)
			}
		}
	}
	own := heap()
	perShared := float64(int64(shared)-int64(before)) / sessions
	perOwn := float64(int64(own)-int64(before)) / sessions
	t.Logf("resume buffer per session, %d events of 100 B (default window %v): %.1f KiB when the events are published to all (payloads shared), %.1f KiB when each session has its own",
		parley.DefaultResumeEvents, parley.DefaultResumeWindow, perShared/1024, perOwn/1024)
}

var (
	_ = errors.New
	_ = runtime.GC
)

// TestBigReplay: while the client is away, it misses more event bytes than
// a connection's send queue holds (but fewer events than the session
// keeps). It is told it cannot resume (resumed = false) rather than loop
// resuming and being cut off as a slow consumer.
func TestBigReplay(t *testing.T) {
	r := newRig(t, parley.WithSendQueueBytes(256<<10))
	l := newEventLog(t, r.url, fastBackoff)
	st := watch(l.conn)
	id := l.conn.SessionID()
	r.proxy.Refuse(true)
	r.proxy.Drop()
	st.waitFor(t, "reconnecting", isReconnecting)
	waitUntil(t, func() bool { return len(r.proxy.Links()) == 0 })
	const n = 500 // 500 × 8 KiB: 4 MiB to replay
	big := strings.Repeat("x", 8<<10)
	for i := range n {
		if err := r.srv.Publish(context.Background(), parley.ToConn(id), postedSpec, &e2ev1.EchoRequest{Text: strconv.Itoa(i), Data: []byte(big)}); err != nil {
			t.Fatal(err)
		}
	}
	r.proxy.Refuse(false)
	// 4 MiB of missed events cannot fit a 256 KiB send queue: the server
	// refuses to resume rather than cut the new socket off as a slow
	// consumer, and the client is told.
	s, _ := st.waitFor(t, "reopened", isReopened)
	if s.Resumed {
		t.Fatalf("resumed a session whose replay cannot fit the send queue: %+v", s)
	}
}

// TestSlowLinkIsNotADeadPeer: a reply or a request that takes longer than the keepalive
// period to cross a slow link, with the peer's pong queued behind it, does
// not make either side take the other for dead: bytes arriving count as
// signs of life as pongs do.
func TestSlowLinkIsNotADeadPeer(t *testing.T) {
	const ping, pong = 100 * time.Millisecond, 200 * time.Millisecond
	bigSpec := &parley.MethodSpec{Procedure: "/test.Slow/Big"}
	srv := parley.NewServer(parley.WithKeepalive(ping, pong))
	srv.Register(parley.NewUnaryMethod(bigSpec, func(ctx context.Context, r *e2ev1.EchoRequest) (*e2ev1.EchoResponse, error) {
		if r.GetText() == "upload" {
			return &e2ev1.EchoResponse{Text: fmt.Sprint(len(r.GetData()))}, nil
		}
		return &e2ev1.EchoResponse{Text: r.GetText(), Data: make([]byte, 1<<20)}, nil
	}))
	hs := httptest.NewServer(srv)
	t.Cleanup(func() {
		_ = srv.Shutdown(context.Background())
		hs.Close()
	})
	p, err := faultproxy.New(strings.TrimPrefix(hs.URL, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Close() })
	conn := dialT(t, "ws://"+p.Addr(), fastBackoff, parley.WithKeepalive(ping, pong))
	// 32 KiB per 20 ms: 1 MiB takes about 650 ms, more than twice the
	// 300 ms a side waits for a pong.
	p.Delay(20 * time.Millisecond)
	start := time.Now()
	res := new(e2ev1.EchoResponse)
	if err := conn.Invoke(context.Background(), bigSpec, &e2ev1.EchoRequest{Text: "big"}, res); err != nil {
		t.Fatal(err)
	}
	took := time.Since(start)
	if len(res.GetData()) != 1<<20 {
		t.Fatalf("got %d bytes", len(res.GetData()))
	}
	if took < ping+pong {
		t.Fatalf("the reply took %v, not longer than the keepalive period: the link is not slow enough to test anything", took)
	}
	if n := p.Accepted(); n != 1 {
		t.Fatalf("%d connections: the slow reply was taken for a dead peer (reply took %v)", n, took)
	}
	// The other way: this side's ping waits behind its own 1 MiB request,
	// but the server's pings keep coming, and so do its bytes.
	if err := conn.Invoke(context.Background(), bigSpec, &e2ev1.EchoRequest{Text: "upload", Data: make([]byte, 1<<20)}, res); err != nil {
		t.Fatal(err)
	}
	if res.GetText() != fmt.Sprint(1<<20) {
		t.Fatalf("the server got %s bytes", res.GetText())
	}
	if n := p.Accepted(); n != 1 {
		t.Fatalf("%d connections: the slow request was taken for a dead peer", n)
	}
}

// TestStreamWaitingForTheConnectionHasTheMethodsDeadline: a stream opened
// while the client reconnects, with no deadline of its own, waits for the
// socket only until its method's timeout, as a unary call does (and as the
// TypeScript client's streams do). NewStream used to wait for the socket
// with no bound at all: against a server that stays down, for ever.
func TestStreamWaitingForTheConnectionHasTheMethodsDeadline(t *testing.T) {
	r := newRig(t)
	conn := dialT(t, r.url, fastBackoff)
	st := watch(conn)
	r.proxy.Refuse(true)
	r.proxy.Drop()
	st.waitFor(t, "reconnecting", isReconnecting)
	const timeout = 100 * time.Millisecond
	for _, kind := range []parley.StreamKind{parley.StreamServer, parley.StreamBidi} {
		spec := &parley.MethodSpec{Procedure: "/test.Streams/Down", Kind: kind, Timeout: timeout}
		start := time.Now()
		opened := make(chan error, 1)
		go func() {
			s, err := conn.NewStream(context.Background(), spec)
			if err == nil {
				_ = s.Close()
			}
			opened <- err
		}()
		select {
		case err := <-opened:
			if parley.CodeOf(err) != parley.CodeDeadlineExceeded {
				t.Fatalf("%v stream while reconnecting: got %v, want deadline_exceeded", kind, err)
			}
			if took := time.Since(start); took < timeout {
				t.Fatalf("%v stream failed after %v, before the method's timeout of %v", kind, took, timeout)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("%v stream of a method with a %v timeout still waiting for the connection after 10s", kind, timeout)
		}
	}
}

// TestGivingUpAfterGoAwayLetsTheOldSocketDrain: a client whose reconnect
// policy gives up while the server drains after GoAway still gets the
// answers of the calls it sent before: the draining socket finishes them
// (the connection is closed to new calls), and Done waits for it. Close
// then cuts a drain short.
func TestGivingUpAfterGoAwayLetsTheOldSocketDrain(t *testing.T) {
	r := newRig(t)
	conn := dialT(t, r.url, parley.WithReconnect(parley.Backoff{Initial: time.Millisecond, Max: 2 * time.Millisecond, Multiplier: 2, MaxAttempts: 2}))
	st := watch(conn)
	release := r.work.hold()
	defer release()
	res := make(chan error, 2)
	for _, text := range []string{"a", "b"} {
		go func() {
			out := new(e2ev1.EchoResponse)
			err := conn.Invoke(context.Background(), workSpec, &e2ev1.EchoRequest{Text: text}, out)
			if err == nil && out.GetText() != text {
				err = fmt.Errorf("got %q, want %q", out.GetText(), text)
			}
			res <- err
		}()
	}
	r.work.waitStarted(t, 2)
	r.proxy.SetBackend("127.0.0.1:1") // every redial fails
	shutdown := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		shutdown <- r.srv.Shutdown(ctx)
	}()
	closed, _ := st.waitFor(t, "closed", func(s parley.ConnState) bool { return s.Status == parley.StatusClosed })
	if !strings.Contains(closed.Err.Error(), "gave up reconnecting") {
		t.Fatalf("closed with %v, want giving up", closed.Err)
	}
	if err := conn.Invoke(context.Background(), workSpec, &e2ev1.EchoRequest{Text: "late"}, new(e2ev1.EchoResponse)); parley.CodeOf(err) != parley.CodeUnavailable {
		t.Fatalf("a call after giving up: %v, want unavailable", err)
	}
	select {
	case <-conn.Done():
		t.Fatal("Done closed while the old socket still drains two calls")
	default:
	}
	release()
	for range 2 {
		if err := <-res; err != nil {
			t.Fatalf("a call sent before the GoAway: %v, want its answer", err)
		}
	}
	<-conn.Done()
	if err := <-shutdown; err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
}

// TestStreamsOpenedWhileReconnectingWait: a stream opened while the
// client's socket is dropping waits for the next socket, within its
// deadline, as a call does. (A client or bidi stream sends its Call in
// NewStream, and still fails if its socket closes during that send.) NewStream used to fail at once with
// unavailable on a socket that had closed but was not yet replaced, so a
// caller retrying in a loop spun through thousands of failures a second
// (a fault trial counted 16,000-24,000 in 7 s).
func TestStreamsOpenedWhileReconnectingWait(t *testing.T) {
	r := newRig(t)
	conn := dialT(t, r.url, fastBackoff)
	st := watch(conn)
	stop := make(chan struct{})
	failed := make(chan error, 1)
	var opened atomic.Int64
	go func() {
		defer close(failed)
		for {
			select {
			case <-stop:
				return
			default:
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			s, err := conn.NewStream(ctx, countSpec) // its Call goes with the request, at the first SendMsg
			if err != nil {
				cancel()
				failed <- err
				return
			}
			_ = s.Close()
			cancel()
			opened.Add(1)
		}
	}()
	for range 20 {
		r.proxy.Drop()
		st.waitFor(t, "reopened", isReopened)
	}
	close(stop)
	if err := <-failed; err != nil {
		t.Fatalf("opening a stream across reconnects (%d opened): %v", opened.Load(), err)
	}
}
