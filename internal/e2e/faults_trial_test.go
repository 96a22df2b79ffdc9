package e2e_test

// A fault trial of the runtime's promises, as an outside tester runs it:
// real Go clients (both encodings) against the real server over loopback,
// through a proxy that cuts each connection after a random number of bytes
// in one direction (mid-handshake, right after Welcome, mid-frame, during a
// replay) or stalls one direction of it (a half-open socket), while calls,
// streams and events to every kind of target run.

import (
	"context"
	"errors"
	"fmt"
	"io"
	mathrand "math/rand/v2"
	"net"
	"net/http/httptest"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/parleyrpc/parley/internal/e2e"
	e2ev1 "github.com/parleyrpc/parley/internal/e2e/gen/e2e/v1"
	"github.com/parleyrpc/parley/internal/e2e/gen/e2e/v1/e2ev1parley"
	"github.com/parleyrpc/parley/runtime/parley"
)

// cutPlan is what a cutProxy does to one link: after up bytes from the
// client (down bytes from the server) it forwards exactly that many and
// then cuts the link, or, with stall, stops forwarding that direction
// while both sockets stay open. A negative count never triggers.
type cutPlan struct {
	up, down int64
	stall    bool
}

// cutProxy forwards TCP connections to a backend, each under a plan.
type cutProxy struct {
	ln      net.Listener
	backend string
	plan    func() cutPlan // called per accepted link

	mu    sync.Mutex
	links map[*cutLink]struct{}
	cuts  int // links cut or stalled by their plan
	wg    sync.WaitGroup
}

type cutLink struct {
	client, server net.Conn
	once           sync.Once
}

func (l *cutLink) drop() {
	l.once.Do(func() {
		_ = l.client.Close()
		_ = l.server.Close()
	})
}

func newCutProxy(t *testing.T, backend string, plan func() cutPlan) *cutProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &cutProxy{ln: ln, backend: backend, plan: plan, links: make(map[*cutLink]struct{})}
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			p.wg.Add(1)
			go p.serve(c)
		}
	}()
	return p
}

func (p *cutProxy) url() string { return "ws://" + p.ln.Addr().String() }

func (p *cutProxy) cutCount() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.cuts
}

func (p *cutProxy) serve(client net.Conn) {
	defer p.wg.Done()
	server, err := net.Dial("tcp", p.backend)
	if err != nil {
		_ = client.Close()
		return
	}
	l := &cutLink{client: client, server: server}
	plan := p.plan()
	p.mu.Lock()
	p.links[l] = struct{}{}
	p.mu.Unlock()
	var both sync.WaitGroup
	both.Add(2)
	go func() { defer both.Done(); p.pipe(l, client, server, plan.up, plan.stall) }()
	go func() { defer both.Done(); p.pipe(l, server, client, plan.down, plan.stall) }()
	both.Wait()
	p.mu.Lock()
	delete(p.links, l)
	p.mu.Unlock()
}

// pipe copies src to dst until src ends or budget bytes went (budget < 0:
// no limit). At the budget it cuts the link, or with stall reads and
// discards src from then on, passing nothing on, its end included.
func (p *cutProxy) pipe(l *cutLink, src, dst net.Conn, budget int64, stall bool) {
	buf := make([]byte, 16<<10)
	stalled := false
	for {
		n, err := src.Read(buf)
		if n > 0 && !stalled {
			chunk := buf[:n]
			hit := budget >= 0 && int64(n) >= budget
			if hit {
				chunk = buf[:budget]
			}
			if len(chunk) > 0 {
				if _, werr := dst.Write(chunk); werr != nil {
					err = werr
				}
			}
			if budget >= 0 {
				budget -= int64(len(chunk))
			}
			if hit {
				p.mu.Lock()
				p.cuts++
				p.mu.Unlock()
				if !stall {
					l.drop()
					return
				}
				stalled = true
			}
		}
		if err != nil {
			if !stalled {
				l.drop()
			}
			return
		}
	}
}

// close stops accepting, drops every link and waits for the goroutines.
func (p *cutProxy) close() {
	_ = p.ln.Close()
	p.mu.Lock()
	links := make([]*cutLink, 0, len(p.links))
	for l := range p.links {
		links = append(links, l)
	}
	p.mu.Unlock()
	for _, l := range links {
		l.drop()
	}
	p.wg.Wait()
}

var (
	trialWorkSpec = &parley.MethodSpec{Procedure: "/trial.Trial/Work"}
	trialJoinSpec = &parley.MethodSpec{Procedure: "/trial.Trial/Join"}
)

// runCounter counts the runs of unary handlers per request text.
type runCounter struct {
	mu   sync.Mutex
	runs map[string]int
}

func (r *runCounter) add(text string) {
	r.mu.Lock()
	r.runs[text]++
	r.mu.Unlock()
}

func (r *runCounter) of(text string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.runs[text]
}

func (r *runCounter) twice() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for k, n := range r.runs {
		if n > 1 {
			out = append(out, fmt.Sprintf("%s ran %d times", k, n))
		}
	}
	return out
}

// trialClient is one client of the trial and what it saw.
type trialClient struct {
	name string
	user string
	room string
	conn *parley.Conn
	id   string // its Peer.ID, from Join

	mu        sync.Mutex
	seqs      []int32
	notResume bool // a reconnect opened a new session
	marker    chan struct{}
	markerSeq int32
}

func (c *trialClient) Tick(_ context.Context, ev *e2ev1.TickEvent) {
	c.mu.Lock()
	c.seqs = append(c.seqs, ev.GetSeq())
	mark := ev.GetSeq() == c.markerSeq
	c.mu.Unlock()
	if mark {
		close(c.marker)
	}
}

func (c *trialClient) Confirm(context.Context, *e2ev1.ConfirmRequest) (*e2ev1.ConfirmResponse, error) {
	return &e2ev1.ConfirmResponse{Answer: c.name}, nil
}

// waitGoroutines waits, bounded, for the goroutine count to fall to at
// most base.
func waitGoroutines(t *testing.T, base int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for runtime.NumGoroutine() > base {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			n := runtime.Stack(buf, true)
			t.Fatalf("%d goroutines, want at most %d (the baseline); stacks:\n%s", runtime.NumGoroutine(), base, buf[:n])
		}
		runtime.Gosched()
		time.Sleep(10 * time.Millisecond) // polling, bounded by the deadline
	}
}

// TestFaultTrial runs clients through random cuts and stalls while they
// call, stream and receive events; then checks every promise.
func TestFaultTrial(t *testing.T) {
	base := runtime.NumGoroutine()
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	rng := mathrand.New(mathrand.NewPCG(seed, 7))
	var rngMu sync.Mutex

	runs := &runCounter{runs: make(map[string]int)}
	srv := parley.NewServer(
		parley.WithAuthenticate(func(_ context.Context, req *parley.AuthRequest) (*parley.Principal, error) {
			return &parley.Principal{UserID: req.Metadata["user"]}, nil
		}),
		parley.WithKeepalive(150*time.Millisecond, 300*time.Millisecond),
		parley.WithMaxInFlight(64),
	)
	srv.Register(
		parley.NewUnaryMethod(trialWorkSpec, func(ctx context.Context, r *e2ev1.EchoRequest) (*e2ev1.EchoResponse, error) {
			runs.add(r.GetText())
			return &e2ev1.EchoResponse{Text: r.GetText()}, nil
		}),
		parley.NewUnaryMethod(trialJoinSpec, func(ctx context.Context, r *e2ev1.EchoRequest) (*e2ev1.EchoResponse, error) {
			peer, _ := parley.PeerFromContext(ctx)
			if err := peer.Join(ctx, r.GetText()); err != nil {
				return nil, err
			}
			return &e2ev1.EchoResponse{Text: peer.ID()}, nil
		}),
	)
	e2ev1parley.RegisterStreamServiceServer(srv, &e2e.StreamService{})
	pub := e2ev1parley.NewClientEventsPublisher(srv)
	hs := httptest.NewServer(srv)

	var faulty atomic.Bool
	proxy := newCutProxy(t, strings.TrimPrefix(hs.URL, "http://"), func() cutPlan {
		if !faulty.Load() {
			return cutPlan{up: -1, down: -1}
		}
		rngMu.Lock()
		defer rngMu.Unlock()
		// Where: in the handshake (an upgrade is ~250 bytes each way, Hello
		// and Welcome under 200), just after it, or in the traffic.
		at := func() int64 {
			switch rng.IntN(3) {
			case 0:
				return rng.Int64N(600)
			case 1:
				return 300 + rng.Int64N(3000)
			}
			return rng.Int64N(200_000)
		}
		p := cutPlan{up: -1, down: -1, stall: rng.IntN(5) == 0}
		if rng.IntN(2) == 0 {
			p.up = at()
		} else {
			p.down = at()
		}
		return p
	})
	defer func() {
		proxy.close()
		hs.Close()
		waitGoroutines(t, base)
	}()

	const nClients = 6
	clients := make([]*trialClient, nClients)
	for i := range clients {
		c := &trialClient{name: fmt.Sprintf("c%d", i), user: fmt.Sprintf("u%d", i/2), room: fmt.Sprintf("r%d", i%2), marker: make(chan struct{})}
		opts := []parley.ClientOption{
			parley.WithHelloMetadata(map[string]string{"user": c.user}),
			parley.WithKeepalive(150*time.Millisecond, 300*time.Millisecond),
			parley.WithReconnect(parley.Backoff{Initial: 5 * time.Millisecond, Max: 40 * time.Millisecond, Multiplier: 2}),
			parley.WithHandshakeTimeout(time.Second),
		}
		if i%2 == 1 {
			opts = append(opts, parley.WithJSON())
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		conn, err := parley.Dial(ctx, proxy.url(), opts...)
		cancel()
		if err != nil {
			t.Fatalf("Dial: %v", err)
		}
		c.conn = conn
		defer conn.Close()
		e2ev1parley.RegisterClientEventsHandler(conn, c)
		conn.OnStateChange(func(st parley.ConnState) {
			if st.Status == parley.StatusOpen && st.Reconnected && !st.Resumed {
				c.mu.Lock()
				c.notResume = true
				c.mu.Unlock()
			}
		})
		var res e2ev1.EchoResponse
		if err := conn.Invoke(context.Background(), trialJoinSpec, &e2ev1.EchoRequest{Text: c.room}, &res); err != nil {
			t.Fatalf("Join: %v", err)
		}
		c.id = res.GetText()
		clients[i] = c
	}

	faulty.Store(true)
	stop := make(chan struct{})
	var wg sync.WaitGroup

	// A dropper: every few tens of milliseconds one link is cut at once,
	// so that every client keeps reconnecting through planned faults.
	wg.Add(1)
	go func() {
		defer wg.Done()
		tick := time.NewTicker(60 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			proxy.mu.Lock()
			var victim *cutLink
			for l := range proxy.links {
				victim = l
				break
			}
			if victim != nil {
				proxy.cuts++
			}
			proxy.mu.Unlock()
			if victim != nil {
				victim.drop()
			}
		}
	}()

	// The publisher: events to every kind of target, recording who
	// should get each.
	want := make([][]int32, nClients)
	const nEvents = 3000
	wg.Add(1)
	go func() {
		defer wg.Done()
		tick := time.NewTicker(time.Millisecond)
		defer tick.Stop()
		for seq := int32(1); seq <= nEvents; seq++ {
			<-tick.C
			rngMu.Lock()
			k, j := rng.IntN(4), rng.IntN(nClients)
			rngMu.Unlock()
			var target parley.Target
			var to func(c *trialClient) bool
			switch k {
			case 0:
				target, to = parley.ToAll(), func(*trialClient) bool { return true }
			case 1:
				room := clients[j].room
				target, to = parley.ToRoom(room), func(c *trialClient) bool { return c.room == room }
			case 2:
				user := clients[j].user
				target, to = parley.ToUser(user), func(c *trialClient) bool { return c.user == user }
			case 3:
				id := clients[j].id
				target, to = parley.ToConn(id), func(c *trialClient) bool { return c.id == id }
			}
			if seq%7 == 0 { // and some with an exception
				target = target.Except(clients[j].id)
				inner := to
				to = func(c *trialClient) bool { return c.id != clients[j].id && inner(c) }
			}
			for i, c := range clients {
				if to(c) {
					want[i] = append(want[i], seq)
				}
			}
			if err := pub.Tick(context.Background(), target, &e2ev1.TickEvent{Seq: seq}); err != nil {
				t.Errorf("publish %d: %v", seq, err)
			}
		}
	}()

	// Callers: unary calls, some cancelled or with short deadlines.
	var calls, okCalls, failedCalls atomic.Int64
	var codesMu sync.Mutex
	codes := map[parley.Code]int{}
	for _, c := range clients {
		for g := range 3 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for k := 0; ; k++ {
					select {
					case <-stop:
						return
					default:
					}
					text := fmt.Sprintf("%s-%d-%d", c.name, g, k)
					ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
					if k%5 == 4 {
						time.AfterFunc(time.Duration(k%300)*time.Microsecond, cancel)
					}
					var res e2ev1.EchoResponse
					start := time.Now()
					err := c.conn.Invoke(ctx, trialWorkSpec, &e2ev1.EchoRequest{Text: text}, &res)
					cancel()
					calls.Add(1)
					if el := time.Since(start); el > 4*time.Second {
						t.Errorf("call %s settled after %v, past its 3s deadline", text, el)
					}
					if err == nil {
						okCalls.Add(1)
						if res.GetText() != text {
							t.Errorf("call %s got the reply of %s", text, res.GetText())
						}
						if n := runs.of(text); n != 1 {
							t.Errorf("call %s succeeded but ran %d times", text, n)
						}
						continue
					}
					failedCalls.Add(1)
					code := parley.CodeOf(err)
					codesMu.Lock()
					codes[code]++
					codesMu.Unlock()
					switch code {
					case parley.CodeUnavailable, parley.CodeCanceled, parley.CodeDeadlineExceeded:
					default:
						t.Errorf("call %s: unexpected %v", text, err)
					}
				}
			}()
		}
	}

	// Streamers: server streams and bidi streams; items in order, ends
	// with the right code.
	var streams, streamsOK atomic.Int64
	for _, c := range clients {
		sc := e2ev1parley.NewStreamServiceClient(c.conn)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for k := 0; ; k++ {
				select {
				case <-stop:
					return
				default:
				}
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				streams.Add(1)
				if k%2 == 0 {
					const n = 300
					st, err := sc.Count(ctx, &e2ev1.CountRequest{From: 0, Count: n})
					if err != nil {
						cancel()
						if code := parley.CodeOf(err); code != parley.CodeUnavailable {
							t.Errorf("Count: %v", err)
						}
						continue
					}
					var got int32
					for {
						item, err := st.Recv()
						if errors.Is(err, io.EOF) {
							if got != n {
								t.Errorf("Count ended after %d items, want %d", got, n)
							} else {
								streamsOK.Add(1)
							}
							break
						}
						if err != nil {
							if code := parley.CodeOf(err); code != parley.CodeUnavailable {
								t.Errorf("Count after %d items: %v", got, err)
							}
							break
						}
						if item.GetN() != got {
							t.Errorf("Count item %d, want %d", item.GetN(), got)
						}
						got++
					}
				} else {
					st, err := sc.Echo(ctx)
					if err != nil {
						cancel()
						if code := parley.CodeOf(err); code != parley.CodeUnavailable {
							t.Errorf("Echo: %v", err)
						}
						continue
					}
					const n = 50
					var fail error
					for i := range n {
						if err := st.Send(&e2ev1.EchoItem{Text: fmt.Sprint(i)}); err != nil {
							fail = err
							break
						}
						item, err := st.Recv()
						if err != nil {
							fail = err
							break
						}
						if item.GetText() != fmt.Sprint(i) {
							t.Errorf("Echo item %q, want %d", item.GetText(), i)
						}
					}
					if fail == nil {
						_ = st.CloseSend()
						if _, err := st.Recv(); !errors.Is(err, io.EOF) {
							fail = err
						} else {
							streamsOK.Add(1)
						}
					}
					if fail != nil && !errors.Is(fail, io.EOF) {
						if code := parley.CodeOf(fail); code != parley.CodeUnavailable {
							t.Errorf("Echo: %v", fail)
						}
					}
				}
				cancel()
			}
		}()
	}

	// Let the faults run while the publisher publishes.
	trialEnd := time.Now().Add(4 * time.Second)
	for time.Now().Before(trialEnd) {
		time.Sleep(50 * time.Millisecond) // the trial's running time, not a synchronisation
	}
	faulty.Store(false)
	// Links with faults planned may still be open: cut them all now, so
	// that every client ends on a clean link.
	proxy.mu.Lock()
	for l := range proxy.links {
		l.drop()
	}
	proxy.mu.Unlock()
	close(stop)
	wg.Wait()

	// A marker to everyone: once each client has it, it has everything
	// published before it.
	const marker = nEvents + 1
	for _, c := range clients {
		c.mu.Lock()
		c.markerSeq = marker
		c.mu.Unlock()
	}
	for i := range want {
		want[i] = append(want[i], marker)
	}
	if err := pub.Tick(context.Background(), parley.ToAll(), &e2ev1.TickEvent{Seq: marker}); err != nil {
		t.Fatal(err)
	}
	for _, c := range clients {
		select {
		case <-c.marker:
		case <-time.After(10 * time.Second):
			c.mu.Lock()
			n := len(c.seqs)
			c.mu.Unlock()
			t.Fatalf("%s: no marker event within 10s (state %v, %d events)", c.name, c.conn.State(), n)
		}
	}

	resumedAll := 0
	for i, c := range clients {
		c.mu.Lock()
		seqs, notResume := append([]int32(nil), c.seqs...), c.notResume
		c.mu.Unlock()
		for k := 1; k < len(seqs); k++ {
			if seqs[k] <= seqs[k-1] {
				t.Errorf("%s: event %d after %d: duplicated or out of order", c.name, seqs[k], seqs[k-1])
				break
			}
		}
		if notResume {
			continue
		}
		resumedAll++
		if fmt.Sprint(seqs) != fmt.Sprint(want[i]) {
			missing := diff(want[i], seqs)
			extra := diff(seqs, want[i])
			t.Errorf("%s (always resumed): got %d events, want %d; missing %v; extra %v", c.name, len(seqs), len(want[i]), head(missing), head(extra))
		}
	}
	if d := runs.twice(); len(d) > 0 {
		t.Errorf("non-idempotent calls ran more than once: %v", head(d))
	}
	t.Logf("%d links cut or stalled; %d calls (%d ok, %d failed: %v); %d streams (%d whole); %d of %d clients resumed every time",
		proxy.cutCount(), calls.Load(), okCalls.Load(), failedCalls.Load(), codes, streams.Load(), streamsOK.Load(), resumedAll, nClients)
	if proxy.cutCount() < 20 {
		t.Errorf("only %d faults injected; the trial proves little", proxy.cutCount())
	}

	// Everything closes: clients, then a graceful shutdown.
	for _, c := range clients {
		if err := c.conn.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
		if err := c.conn.Close(); err != nil { // twice is harmless
			t.Errorf("second Close: %v", err)
		}
		var res e2ev1.EchoResponse
		err := c.conn.Invoke(context.Background(), trialWorkSpec, &e2ev1.EchoRequest{Text: "after-close-" + c.name}, &res)
		if parley.CodeOf(err) != parley.CodeCanceled {
			t.Errorf("call after Close: %v, want canceled", err)
		}
		if runs.of("after-close-"+c.name) != 0 {
			t.Errorf("a call made after Close ran")
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(ctx); err != nil {
		t.Errorf("Shutdown: %v", err)
	}
}

func diff[T comparable](a, b []T) []T {
	in := make(map[T]bool, len(b))
	for _, x := range b {
		in[x] = true
	}
	var out []T
	for _, x := range a {
		if !in[x] {
			out = append(out, x)
		}
	}
	return out
}

func head[T any](s []T) []T {
	if len(s) > 20 {
		return s[:20]
	}
	return s
}

// TestBlockedHandlerEndsWithItsSession: a handler that would block for a
// minute, its client gone: closed by Close, dropped past the resume window,
// or the server shutting down. Each time the handler's context must end,
// and every call must settle.
func TestBlockedHandlerEndsWithItsSession(t *testing.T) {
	base := runtime.NumGoroutine()
	srv := parley.NewServer(parley.WithResume(300*time.Millisecond, 64))
	echo := &e2e.EchoService{}
	e2ev1parley.RegisterEchoServiceServer(srv, echo)
	hs := httptest.NewServer(srv)
	proxy := newCutProxy(t, strings.TrimPrefix(hs.URL, "http://"), func() cutPlan { return cutPlan{up: -1, down: -1} })
	defer func() {
		proxy.close()
		hs.Close()
		waitGoroutines(t, base)
	}()
	observer, obs := dial(t, "ws://"+strings.TrimPrefix(hs.URL, "http://"))
	outcome := func(token string) string {
		t.Helper()
		res, err := obs.Outcome(context.Background(), &e2ev1.OutcomeRequest{Token: token})
		if err != nil {
			t.Fatalf("Outcome(%s): %v", token, err)
		}
		return res.GetOutcome()
	}
	start := func(t *testing.T, conn *parley.Conn, token string) chan error {
		errc := make(chan error, 1)
		go func() {
			_, err := e2ev1parley.NewEchoServiceClient(conn).Sleep(context.Background(), &e2ev1.SleepRequest{Ms: 60_000, Token: token})
			errc <- err
		}()
		select {
		case <-echo.Started(token):
		case err := <-errc:
			t.Fatalf("Sleep(%s) ended before it started on the server: %v", token, err)
		case <-time.After(5 * time.Second):
			t.Fatalf("Sleep(%s) did not start on the server within 5s", token)
		}
		return errc
	}
	settled := func(t *testing.T, errc chan error, want parley.Code) {
		t.Helper()
		select {
		case err := <-errc:
			wantCode(t, err, want)
		case <-time.After(5 * time.Second):
			t.Fatal("the call did not settle within 5s")
		}
	}

	t.Run("Close", func(t *testing.T) {
		conn, _ := dial(t, proxy.url())
		errc := start(t, conn, "close")
		_ = conn.Close()
		settled(t, errc, parley.CodeCanceled)
		if got := outcome("close"); got != "canceled" {
			t.Fatalf("handler ended %q, want canceled", got)
		}
	})
	t.Run("dropped past the resume window", func(t *testing.T) {
		conn, _ := dial(t, proxy.url(), parley.WithoutReconnect())
		errc := start(t, conn, "dropped")
		proxy.mu.Lock()
		for l := range proxy.links {
			l.drop()
		}
		proxy.mu.Unlock()
		settled(t, errc, parley.CodeUnavailable)
		if got := outcome("dropped"); got != "canceled" {
			t.Fatalf("handler ended %q, want canceled", got)
		}
	})
	t.Run("Shutdown", func(t *testing.T) {
		conn, _ := dial(t, proxy.url())
		errc := start(t, conn, "shutdown")
		ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
		defer cancel()
		_ = observer.Close() // Outcome cannot be asked of a server shutting down
		_ = srv.Shutdown(ctx)
		settled(t, errc, parley.CodeUnavailable)
		res, err := echo.Outcome(context.Background(), &e2ev1.OutcomeRequest{Token: "shutdown"})
		if err != nil {
			t.Fatal(err)
		}
		if got := res.GetOutcome(); got != "canceled" {
			t.Fatalf("handler ended %q, want canceled", got)
		}
	})
}

// TestShutdownUnderTraffic shuts the server down while clients (both
// encodings) call, stream and receive events: every call and stream
// settles with a reply or unavailable, no call runs twice, events stay in
// order without duplicates, and everything's goroutines end.
func TestShutdownUnderTraffic(t *testing.T) {
	base := runtime.NumGoroutine()
	runs := &runCounter{runs: make(map[string]int)}
	srv := parley.NewServer()
	srv.Register(parley.NewUnaryMethod(trialWorkSpec, func(ctx context.Context, r *e2ev1.EchoRequest) (*e2ev1.EchoResponse, error) {
		runs.add(r.GetText())
		t := time.NewTimer(time.Duration(len(r.GetText())%20) * time.Millisecond)
		defer t.Stop()
		select {
		case <-t.C:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		return &e2ev1.EchoResponse{Text: r.GetText()}, nil
	}))
	e2ev1parley.RegisterStreamServiceServer(srv, &e2e.StreamService{})
	pub := e2ev1parley.NewClientEventsPublisher(srv)
	hs := httptest.NewServer(srv)
	url := "ws" + strings.TrimPrefix(hs.URL, "http")
	defer func() {
		hs.Close()
		waitGoroutines(t, base)
	}()

	var wg sync.WaitGroup
	var calls, ok atomic.Int64
	clients := make([]*trialClient, 4)
	for i := range clients {
		c := &trialClient{name: fmt.Sprintf("c%d", i), marker: make(chan struct{}), markerSeq: -1}
		opts := []parley.ClientOption{parley.WithReconnect(parley.Backoff{Initial: 5 * time.Millisecond, Max: 20 * time.Millisecond, Multiplier: 2, MaxAttempts: 3})}
		if i%2 == 1 {
			opts = append(opts, parley.WithJSON())
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		conn, err := parley.Dial(ctx, url, opts...)
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		c.conn = conn
		e2ev1parley.RegisterClientEventsHandler(conn, c)
		clients[i] = c
		for g := range 4 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for k := 0; ; k++ {
					text := fmt.Sprintf("%s-%d-%d", c.name, g, k)
					ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
					start := time.Now()
					var res e2ev1.EchoResponse
					err := conn.Invoke(ctx, trialWorkSpec, &e2ev1.EchoRequest{Text: text}, &res)
					cancel()
					calls.Add(1)
					if time.Since(start) > 5*time.Second {
						t.Errorf("call %s took %v", text, time.Since(start))
					}
					if err == nil {
						ok.Add(1)
						continue
					}
					if code := parley.CodeOf(err); code != parley.CodeUnavailable && code != parley.CodeCanceled {
						t.Errorf("call %s: %v", text, err)
					}
					if conn.Err() != nil || parley.CodeOf(err) == parley.CodeCanceled {
						return
					}
				}
			}()
		}
		sc := e2ev1parley.NewStreamServiceClient(conn)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for conn.Err() == nil {
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				st, err := sc.Count(ctx, &e2ev1.CountRequest{Count: 100, DelayMs: 1})
				if err == nil {
					var n int32
					for {
						item, err2 := st.Recv()
						if err2 != nil {
							err = err2
							break
						}
						if item.GetN() != n {
							t.Errorf("stream item %d, want %d", item.GetN(), n)
						}
						n++
					}
					if errors.Is(err, io.EOF) && n != 100 {
						t.Errorf("stream ended after %d items", n)
					}
				}
				cancel()
				if err != nil && !errors.Is(err, io.EOF) {
					if code := parley.CodeOf(err); code != parley.CodeUnavailable && code != parley.CodeCanceled {
						t.Errorf("stream: %v", err)
					}
					if conn.Err() == nil {
						time.Sleep(time.Millisecond) // a stream fails at once while the socket is down
					}
				}
			}
		}()
	}
	pubStop := make(chan struct{})
	pubDone := make(chan struct{})
	go func() {
		defer close(pubDone)
		tick := time.NewTicker(time.Millisecond)
		defer tick.Stop()
		for seq := int32(1); ; seq++ {
			select {
			case <-pubStop:
				return
			case <-tick.C:
			}
			_ = pub.Tick(context.Background(), parley.ToAll(), &e2ev1.TickEvent{Seq: seq})
		}
	}()
	// Shut down once traffic flows.
	deadline := time.Now().Add(10 * time.Second)
	for ok.Load() < 200 {
		if time.Now().After(deadline) {
			t.Fatal("no traffic")
		}
		time.Sleep(5 * time.Millisecond)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := srv.Shutdown(ctx); err != nil {
		t.Errorf("Shutdown: %v (its calls and streams take 100ms at most)", err)
	}
	close(pubStop)
	<-pubDone
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("calls or streams still running 10s after Shutdown")
	}
	for _, c := range clients {
		c.mu.Lock()
		seqs := c.seqs
		c.mu.Unlock()
		for k := 1; k < len(seqs); k++ {
			if seqs[k] <= seqs[k-1] {
				t.Fatalf("%s: event %d after %d", c.name, seqs[k], seqs[k-1])
			}
		}
		select {
		case <-c.conn.Done():
		case <-time.After(5 * time.Second):
			t.Fatalf("%s: not closed 5s after the server went away for good (state %v)", c.name, c.conn.State())
		}
	}
	if d := runs.twice(); len(d) > 0 {
		t.Errorf("calls ran twice: %v", head(d))
	}
	t.Logf("%d calls, %d ok", calls.Load(), ok.Load())
}

// TestStreamMisuse uses streams the ways a user plausibly gets wrong:
// receiving after the end, sending after CloseSend or after the end,
// closing twice, CloseAndRecv twice, streams on a closed connection.
// Each must return an error (or io.EOF) at once, never hang or panic.
func TestStreamMisuse(t *testing.T) {
	srv := parley.NewServer()
	e2ev1parley.RegisterStreamServiceServer(srv, &e2e.StreamService{})
	hs := httptest.NewServer(srv)
	defer hs.Close()
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
	}()
	url := "ws" + strings.TrimPrefix(hs.URL, "http")
	for _, enc := range encodings {
		t.Run(enc.name, func(t *testing.T) {
			conn, _ := dial(t, url, enc.opts...)
			sc := e2ev1parley.NewStreamServiceClient(conn)
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			settles := func(what string, f func() error) error {
				t.Helper()
				errc := make(chan error, 1)
				go func() { errc <- f() }()
				select {
				case err := <-errc:
					return err
				case <-time.After(3 * time.Second):
					t.Fatalf("%s: still blocked after 3s", what)
					return nil
				}
			}

			count, err := sc.Count(ctx, &e2ev1.CountRequest{Count: 2})
			if err != nil {
				t.Fatal(err)
			}
			for range 2 {
				if _, err := count.Recv(); err != nil {
					t.Fatal(err)
				}
			}
			for range 3 {
				if err := settles("Recv after the end", func() error { _, err := count.Recv(); return err }); !errors.Is(err, io.EOF) {
					t.Fatalf("Recv after the end: %v, want io.EOF", err)
				}
			}
			_ = settles("Close after the end", count.Close)
			_ = settles("Close twice", count.Close)

			sum, err := sc.Sum(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if err := sum.Send(&e2ev1.SumRequest{Value: 4}); err != nil {
				t.Fatal(err)
			}
			res, err := sum.CloseAndRecv()
			if err != nil || res.GetSum() != 4 {
				t.Fatalf("CloseAndRecv: %v, %v", res, err)
			}
			if err := settles("CloseAndRecv twice", func() error { _, err := sum.CloseAndRecv(); return err }); err == nil {
				t.Fatal("CloseAndRecv twice: no error")
			}
			if err := settles("Send after the end", func() error { return sum.Send(&e2ev1.SumRequest{Value: 1}) }); err == nil {
				t.Fatal("Send after the end: no error")
			}

			bidi, err := sc.Echo(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if err := bidi.Send(&e2ev1.EchoItem{Text: "a"}); err != nil {
				t.Fatal(err)
			}
			if err := bidi.CloseSend(); err != nil {
				t.Fatal(err)
			}
			_ = settles("CloseSend twice", bidi.CloseSend)
			if err := settles("Send after CloseSend", func() error { return bidi.Send(&e2ev1.EchoItem{Text: "b"}) }); err == nil {
				t.Fatal("Send after CloseSend: no error")
			}
			if item, err := bidi.Recv(); err != nil || item.GetText() != "a" {
				t.Fatalf("Recv: %v, %v", item, err)
			}
			if err := settles("Recv at the end", func() error { _, err := bidi.Recv(); return err }); !errors.Is(err, io.EOF) {
				t.Fatalf("Recv at the end: %v, want io.EOF", err)
			}

			// A stream open when the connection closes ends, and so does
			// every use of it after.
			open, err := sc.Echo(ctx)
			if err != nil {
				t.Fatal(err)
			}
			_ = conn.Close()
			if err := settles("Recv on a closed connection", func() error { _, err := open.Recv(); return err }); parley.CodeOf(err) != parley.CodeCanceled {
				t.Fatalf("Recv after Close: %v, want canceled", err)
			}
			if err := settles("Send on a closed connection", func() error { return open.Send(&e2ev1.EchoItem{}) }); err == nil {
				t.Fatal("Send after Close: no error")
			}
			_ = settles("Close on a closed connection", open.Close)
			if err := settles("Count on a closed connection", func() error { _, err := sc.Count(ctx, &e2ev1.CountRequest{Count: 1}); return err }); parley.CodeOf(err) != parley.CodeCanceled {
				t.Fatalf("a stream after Close: %v, want canceled", err)
			}
		})
	}
}
