package parley

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"
	parleyv1 "github.com/parleyrpc/parley/gen/parley/v1"
	"google.golang.org/protobuf/proto"
)

// Status is where a client connection is in its life.
type Status uint8

const (
	// StatusConnecting: the first dial is under way.
	StatusConnecting Status = iota
	// StatusOpen: a socket is up and calls flow.
	StatusOpen
	// StatusReconnecting: the socket dropped; the client is waiting to
	// dial again or dialling. Calls made now wait, within their deadline.
	StatusReconnecting
	// StatusClosed: Close was called, or reconnecting gave up. Final.
	StatusClosed
)

func (s Status) String() string {
	switch s {
	case StatusConnecting:
		return "connecting"
	case StatusOpen:
		return "open"
	case StatusReconnecting:
		return "reconnecting"
	case StatusClosed:
		return "closed"
	}
	return "unknown"
}

// ConnState is a client connection's state, as OnStateChange reports it.
type ConnState struct {
	Status Status
	// Resumed, when Open after a reconnect, says the server resumed the
	// session: same principal and rooms, missed events replayed, calls in
	// flight answered exactly once. When false after a reconnect, the
	// server started a new session: rooms must be re-joined and state
	// resynced.
	Resumed bool
	// Reconnected is set when Open was reached by reconnecting.
	Reconnected bool
	// Attempt and Delay describe the next dial while Reconnecting.
	Attempt int
	Delay   time.Duration
	// Err is why the socket dropped (Reconnecting) or the connection
	// closed (Closed).
	Err error
}

// Backoff is the reconnection policy: the delay before attempt n is drawn
// uniformly from [0, min(Max, Initial·Multiplier^(n-1))] ("full jitter"),
// so that many clients losing one server come back spread out.
type Backoff struct {
	// Initial is the cap of the first delay (DefaultBackoff: 100ms).
	Initial time.Duration
	// Max caps every delay (DefaultBackoff: 10s).
	Max time.Duration
	// Multiplier grows the cap per attempt (DefaultBackoff: 2).
	Multiplier float64
	// MaxAttempts gives up after that many failed dials in a row; 0 never
	// gives up. Giving up closes the connection to new calls; calls sent
	// on a socket the server is draining (GoAway) still get their answers.
	MaxAttempts int
}

// DefaultBackoff is the reconnection policy of clients that set none.
var DefaultBackoff = Backoff{Initial: 100 * time.Millisecond, Max: 10 * time.Second, Multiplier: 2}

func (b Backoff) delay(attempt int) time.Duration {
	ceil := float64(b.Initial)
	for i := 1; i < attempt && ceil < float64(b.Max); i++ {
		ceil *= b.Multiplier
	}
	ceil = min(ceil, float64(b.Max))
	if ceil <= 0 {
		return 0
	}
	return time.Duration(rand.Int64N(int64(ceil) + 1))
}

// Conn is a client's connection to a Parley server: one WebSocket at a
// time that carries any number of concurrent calls, streams and events.
// Generated clients are built on it (NewChatServiceClient(conn)).
//
// When the socket drops, Conn dials again by itself (see Backoff) and asks
// the server to resume its session. Calls made meanwhile wait for the new
// socket within their deadline. Calls in flight at the drop are sent again
// when that is safe: idempotent methods always, others only into a resumed
// session, where the server answers each call id exactly once; otherwise
// they fail with CodeUnavailable. Open streams end with CodeUnavailable.
//
// A Conn is safe for concurrent use by any number of goroutines. It owns a
// supervisor goroutine and, per socket, a reader and a writer; Close stops
// and waits for them all.
type Conn struct {
	url   string
	cfg   config
	codec codec

	callSeq   atomic.Uint64 // call ids, across sockets
	lastEvent atomic.Uint64 // the last session event offset seen

	mu       sync.Mutex
	cur      *endpoint     // the socket calls go to; nil while reconnecting
	up       chan struct{} // closed while cur is usable; replaced when it is not
	gone     chan struct{} // closed when cur stops being the socket calls go to
	state    ConnState
	watchers map[int]func(ConnState)
	nextW    int
	welcome  *parleyv1.Welcome
	closed   bool
	closeErr error
	closedCh chan struct{} // closed when closed is set
	notify   hookRunner    // runs state watchers in order

	// closeCalled is closed by the first Close. Sockets left draining after
	// a GoAway finish their calls even when reconnecting gives up, unless
	// Close cuts them short.
	closeCalled chan struct{}
	closeOnce   sync.Once

	// resending counts calls lost with their socket that may be sent
	// again with their id (into the session, if it resumes), until each
	// has a call slot on a new socket or is sent no more; resent is
	// closed when it falls to 0. New calls wait for them (waitResends).
	resending int
	resent    chan struct{}

	local methodTable // handlers for the server's calls and events

	// events runs event handlers for every socket of the connection, in
	// arrival order; stopEvents ends its context when the Conn closes.
	events     *eventRunner
	stopEvents context.CancelFunc

	wake chan struct{} // cap 1: the supervisor should reconnect now
	done chan struct{} // closed when the supervisor and every socket ended
}

// Dial connects to the Parley server at url (ws:// or wss://) and completes
// the handshake. ctx bounds this first dial only; an error here is final
// (reconnection starts only once a connection was up).
func Dial(ctx context.Context, url string, opts ...ClientOption) (*Conn, error) {
	cfg := defaultConfig()
	for _, o := range opts {
		o.applyToClient(&cfg)
	}
	cd, ok := codecFor(cfg.subprotocol)
	if !ok {
		return nil, fmt.Errorf("parley: unknown subprotocol %q", cfg.subprotocol)
	}
	c := &Conn{
		url: url, cfg: cfg, codec: cd,
		up:       make(chan struct{}),
		watchers: make(map[int]func(ConnState)),
		wake:     make(chan struct{}, 1),
		done:     make(chan struct{}),
		closedCh: make(chan struct{}),
		notify:   hookRunner{what: "state watcher", log: cfg.logger},

		closeCalled: make(chan struct{}),
	}
	evctx, stopEvents := context.WithCancel(context.Background())
	handle := chain(func(ctx context.Context, req proto.Message) (proto.Message, error) {
		ci, _ := CallInfoFromContext(ctx)
		return ci.method.call(ctx, req)
	}, cfg.interceptors)
	c.events, c.stopEvents = newEventRunner(evctx, handle, cfg.logger, &c.lastEvent, cfg.eventQueue), stopEvents
	for _, register := range cfg.register {
		register(c)
	}
	e, welcome, err := c.dial(ctx)
	if err != nil {
		stopEvents()
		return nil, err
	}
	c.attach(e, welcome, false)
	go c.supervise(e)
	return c, nil
}

// dial opens one socket and completes the handshake, resuming the session
// of the last Welcome if there was one.
func (c *Conn) dial(ctx context.Context) (*endpoint, *parleyv1.Welcome, error) {
	var bc *batchConn
	netDialer := &net.Dialer{}
	dialer := websocket.Dialer{
		ReadBufferSize:   clientHandshakeBuffer, // reads the upgrade response; frames are read by readMessage
		WriteBufferSize:  4096,
		WriteBufferPool:  writeBufferPool,
		Subprotocols:     []string{c.cfg.subprotocol},
		HandshakeTimeout: c.cfg.handshakeTimeout,
		NetDialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			nc, err := netDialer.DialContext(ctx, network, addr)
			if err != nil {
				return nil, err
			}
			bc = newBatchConn(nc)
			return bc, nil
		},
		// For wss, the batchConn goes over TLS, not under it: the writer
		// writes frames into it, and they must be encrypted.
		NetDialTLSContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			nc, err := netDialer.DialContext(ctx, network, addr)
			if err != nil {
				return nil, err
			}
			cfg := c.cfg.tls.Clone()
			if cfg == nil {
				cfg = &tls.Config{}
			}
			if cfg.ServerName == "" {
				cfg.ServerName, _, _ = net.SplitHostPort(addr)
			}
			tc := tls.Client(nc, cfg)
			if err := tc.HandshakeContext(ctx); err != nil {
				_ = nc.Close()
				return nil, err
			}
			bc = newBatchConn(tc)
			return bc, nil
		},
	}
	hctx, cancel := context.WithTimeout(ctx, c.cfg.handshakeTimeout)
	defer cancel()
	ws, resp, err := dialer.DialContext(hctx, c.url, c.cfg.header)
	if err != nil {
		return nil, nil, dialError(err, resp)
	}
	if ws.Subprotocol() != c.cfg.subprotocol {
		_ = ws.Close()
		return nil, nil, Errorf(CodeUnavailable, "%s is not a Parley server: it did not accept subprotocol %s", c.url, c.cfg.subprotocol)
	}
	e := newEndpoint(ws, bc, c.codec, SideClient, &c.cfg)
	e.callSeq, e.events = &c.callSeq, c.events
	hello, err := c.hello(hctx)
	if err != nil {
		_ = ws.Close()
		return nil, nil, err
	}
	welcome, err := clientHandshake(hctx, e, hello)
	if err != nil {
		_ = ws.Close()
		return nil, nil, err
	}
	if n := welcome.GetMaxInFlight(); n > 0 {
		e.sem = make(chan struct{}, n)
	}
	if w := welcome.GetStreamWindow(); w > 0 {
		e.peerWindow = w
	}
	e.peerWindowBytes = welcome.GetStreamWindowBytes()
	if n := welcome.GetMaxMessageBytes(); n > 0 {
		e.sendMax = min(e.sendMax, int(n))
	}
	e.methods = c.local.lookup
	e.onGoAway = c.reconnectNow
	return e, welcome, nil
}

// hello builds the Hello: fresh credentials, and what resuming needs.
func (c *Conn) hello(ctx context.Context) (*parleyv1.Hello, error) {
	md := make(map[string]string, len(c.cfg.metadata)+1)
	for k, v := range c.cfg.metadata {
		md[k] = v
	}
	if c.cfg.token != nil {
		tok, err := c.cfg.token(ctx)
		if err != nil {
			return nil, Errorf(CodeUnauthenticated, "getting a token: %w", err)
		}
		md["authorization"] = "Bearer " + tok
	}
	h := &parleyv1.Hello{Metadata: md, Agent: agent, StreamWindow: c.cfg.streamWindow, StreamWindowBytes: c.cfg.streamWinBytes, MaxMessageBytes: limitOnWire(c.cfg.maxMessageBytes)}
	c.mu.Lock()
	if w := c.welcome; w != nil && w.GetResumeToken() != "" {
		h.SessionId, h.ResumeToken = w.GetSessionId(), w.GetResumeToken()
		h.Offsets = map[string]uint64{sessionTopic: c.lastEvent.Load()}
	}
	c.mu.Unlock()
	return h, nil
}

func dialError(err error, resp *http.Response) error {
	if resp == nil {
		return Errorf(CodeUnavailable, "dial: %w", err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, maxDialErrorBody+1))
	code := CodeUnavailable
	switch resp.StatusCode {
	case http.StatusUnauthorized:
		code = CodeUnauthenticated
	case http.StatusForbidden:
		code = CodePermissionDenied
	case http.StatusBadRequest:
		code = CodeInvalidArgument
	}
	return Errorf(code, "dial: HTTP %d: %s", resp.StatusCode, dialErrorBody(resp.StatusCode, body))
}

// maxDialErrorBody bounds how much of a refused upgrade's response body a
// dial error quotes.
const maxDialErrorBody = 256

// dialErrorBody is the part of a refused upgrade's response body a dial
// error quotes: without the trailing newline http.Error adds (nor other
// surrounding space), at most maxDialErrorBody bytes (a longer body is cut
// and marked with "…"; ToValidUTF8 drops a rune the cut split), or the
// status text when the body is empty.
func dialErrorBody(status int, body []byte) string {
	cut := len(body) > maxDialErrorBody
	if cut {
		body = body[:maxDialErrorBody]
	}
	s := strings.TrimSpace(strings.ToValidUTF8(string(body), ""))
	if cut {
		s += "…"
	}
	if s == "" {
		s = http.StatusText(status)
	}
	return s
}

func clientHandshake(ctx context.Context, e *endpoint, hello *parleyv1.Hello) (*parleyv1.Welcome, error) {
	b, err := e.codec.appendFrame(nil, &frame{kind: kindHello, hello: hello}, nil)
	if err != nil {
		return nil, err
	}
	deadline := time.Now().Add(e.cfg.handshakeTimeout)
	if dl, ok := ctx.Deadline(); ok && dl.Before(deadline) {
		deadline = dl
	}
	_ = e.ws.SetWriteDeadline(deadline)
	if err := e.ws.WriteMessage(e.codec.messageType(), b); err != nil {
		return nil, Errorf(CodeUnavailable, "sending hello: %w", err)
	}
	_ = e.ws.SetReadDeadline(deadline)
	typ, data, err := e.readMessage(nil)
	if err != nil {
		return nil, Errorf(CodeUnavailable, "awaiting welcome: %w", err)
	}
	var f frame
	if typ != e.codec.messageType() {
		return nil, Errorf(CodeInternal, "awaiting welcome: got a %s message on %s", messageTypeName(typ), e.codec.subprotocol())
	}
	if err := e.codec.decodeFrame(data, &f); err != nil {
		return nil, Errorf(CodeInternal, "awaiting welcome: %v", err)
	}
	switch f.kind {
	case kindWelcome:
		return f.welcome, nil
	case kindError:
		return nil, &Error{code: f.code, message: f.message, details: f.details}
	}
	return nil, Errorf(CodeInternal, "awaiting welcome: got a %v frame", f.kind)
}

// attach makes e the socket calls go to and starts it.
func (c *Conn) attach(e *endpoint, welcome *parleyv1.Welcome, reconnected bool) {
	e.sessionID = welcome.GetSessionId()
	c.events.setSession(e.sessionID, welcome.GetResumed())
	e.start()
	go e.readLoop()
	c.mu.Lock()
	c.cur, c.welcome = e, welcome
	c.gone = make(chan struct{})
	close(c.up)
	st := ConnState{Status: StatusOpen, Resumed: welcome.GetResumed(), Reconnected: reconnected}
	c.setStateLocked(st)
	c.mu.Unlock()
}

// reconnectNow asks the supervisor to move to a new socket (after a
// GoAway: calls already sent finish on the old one).
func (c *Conn) reconnectNow() {
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

// supervise owns the sockets: when the current one drops (or the server
// says GoAway) it dials again with backoff, until Close or giving up.
func (c *Conn) supervise(e *endpoint) {
	defer close(c.done)
	// old holds sockets left after a GoAway, draining the calls already
	// sent on them; the supervisor waits for them before it ends. Close
	// cuts their drain short; giving up reconnecting does not, since the
	// server still answers what they carry. Events stop first: a socket's
	// reader may wait for room in the event queue (WithEventQueueBytes),
	// and closing the queue lets it go.
	var old []*endpoint
	defer func() {
		closeErr := c.closeErrNow()
		c.stopEvents()
		c.events.close()
		for _, o := range old {
			select {
			case <-o.done:
			case <-c.closeCalled:
				o.closeByClient(closeErr)
				<-o.done
			}
		}
	}()
	for {
		var cause error
		select {
		case <-e.done:
			cause = e.closeErrNow()
		case <-c.closedCh:
			old = append(old, e)
			return
		case <-c.wake:
			if c.cfg.reconnect == nil {
				continue // the socket drains its calls; then it closes
			}
			cause = NewError(CodeUnavailable, "the server is going away")
			old = slices.DeleteFunc(old, func(o *endpoint) bool {
				select {
				case <-o.done:
					return true
				default:
					return false
				}
			})
			old = append(old, e) // it drains its calls and closes by itself
		}
		c.mu.Lock()
		if c.closed {
			c.mu.Unlock()
			return
		}
		c.cur = nil
		close(c.gone)
		c.up = make(chan struct{})
		c.mu.Unlock()
		if c.cfg.reconnect == nil {
			c.finish(cause)
			return
		}
		next, welcome, err := c.redial(cause)
		if err != nil {
			c.finish(err)
			return
		}
		c.attach(next, welcome, true)
		e = next
	}
}

// redial dials until it succeeds, Close is called, or the policy gives up.
func (c *Conn) redial(cause error) (*endpoint, *parleyv1.Welcome, error) {
	b := *c.cfg.reconnect
	for attempt := 1; ; attempt++ {
		d := b.delay(attempt)
		c.mu.Lock()
		if c.closed {
			c.mu.Unlock()
			return nil, nil, c.closeErrNow()
		}
		c.setStateLocked(ConnState{Status: StatusReconnecting, Attempt: attempt, Delay: d, Err: cause})
		c.mu.Unlock()
		t := time.NewTimer(d)
		select {
		case <-t.C:
		case <-c.closedCh:
			t.Stop()
			return nil, nil, c.closeErrNow()
		}
		ctx, cancel := context.WithCancel(context.Background())
		stopWatch := watchClose(c.closedCh, cancel)
		e, welcome, err := c.dial(ctx)
		stopWatch()
		cancel()
		if err == nil {
			c.mu.Lock()
			closed := c.closed
			c.mu.Unlock()
			if closed {
				_ = e.ws.Close()
				return nil, nil, c.closeErrNow()
			}
			return e, welcome, nil
		}
		cause = err
		c.cfg.logger.Info("parley: reconnect failed", "attempt", attempt, "err", err)
		if code := CodeOf(err); code == CodeUnauthenticated || code == CodePermissionDenied {
			return nil, nil, err // retrying will not help
		}
		if b.MaxAttempts > 0 && attempt >= b.MaxAttempts {
			return nil, nil, Errorf(CodeUnavailable, "gave up reconnecting after %d attempts: %v", attempt, err)
		}
	}
}

// watchClose calls cancel if closed is closed before the returned stop
// function is called.
func watchClose(closed <-chan struct{}, cancel func()) (stop func()) {
	done := make(chan struct{})
	go func() {
		select {
		case <-closed:
			cancel()
		case <-done:
		}
	}()
	return func() { close(done) }
}

func (c *Conn) closeErrNow() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.closeErr
}

// finish closes the connection for good, from the supervisor.
func (c *Conn) finish(err error) {
	c.mu.Lock()
	if !c.closed {
		c.closed, c.closeErr = true, err
		close(c.closedCh)
	}
	c.setStateLocked(ConnState{Status: StatusClosed, Err: c.closeErr})
	c.mu.Unlock()
}

func (e *endpoint) closeErrNow() error {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.closeErr
}

// setStateLocked records and announces a state; c.mu is held. Watchers run
// on their own goroutine, in order.
func (c *Conn) setStateLocked(st ConnState) {
	c.state = st
	for _, w := range c.watchers {
		c.notify.run(func() { w(st) })
	}
}

// State returns the connection's current state.
func (c *Conn) State() ConnState {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.state
}

// OnStateChange calls fn with every later state change, in order, on a
// goroutine of its own (a panic in fn is logged and the next call runs).
// After a reconnect, a state with Resumed false tells the application its
// session is new: re-join rooms and resync. It returns a function that
// stops the calls.
func (c *Conn) OnStateChange(fn func(ConnState)) (unsubscribe func()) {
	c.mu.Lock()
	defer c.mu.Unlock()
	id := c.nextW
	c.nextW++
	c.watchers[id] = fn
	return func() {
		c.mu.Lock()
		delete(c.watchers, id)
		c.mu.Unlock()
	}
}

// endpoint waits for a usable socket until ctx ends or the deadline.
func (c *Conn) endpoint(ctx context.Context, deadline <-chan time.Time) (*endpoint, error) {
	for {
		c.mu.Lock()
		e, up, closed := c.cur, c.up, c.closed
		closeErr := c.closeErr
		c.mu.Unlock()
		if closed {
			if closeErr == nil {
				closeErr = NewError(CodeCanceled, "the connection was closed by Close")
			}
			return nil, closeErr
		}
		if e != nil {
			return e, nil
		}
		select {
		case <-up:
		case <-c.closedCh:
		case <-ctx.Done():
			return nil, asError(ctx.Err())
		case <-deadline:
			return nil, NewError(CodeDeadlineExceeded, "deadline exceeded waiting for the connection to come back")
		}
	}
}

// Invoke calls a method and decodes its reply into res. Its deadline is
// ctx's, else the method's timeout_ms, else the connection's call timeout
// (DefaultCallTimeout); it covers waiting for a socket, queueing behind the
// server's in-flight limit and any re-send after a reconnect. At the
// deadline Invoke returns CodeDeadlineExceeded and tells the server to
// cancel the call; a reply arriving later is dropped.
func (c *Conn) Invoke(ctx context.Context, spec *MethodSpec, req, res proto.Message) error {
	if len(c.cfg.interceptors) == 0 {
		return c.invoke(ctx, spec, req, res, nil) // no method value to allocate
	}
	return intercepted(ctx, c.cfg.interceptors, SideClient, spec, req, res, c.invoke)
}

func (c *Conn) invoke(ctx context.Context, spec *MethodSpec, req, res proto.Message, md map[string]string) error {
	start := time.Now()
	c.mu.Lock()
	e, sess := c.cur, c.welcome.GetSessionId()
	if c.resending > 0 {
		e = nil // the slow path waits for the re-sends first
	}
	c.mu.Unlock()
	var sent uint64
	var lastErr error
	if e != nil {
		// The id is chosen here, not by the round trip, so that a call
		// lost with its socket can be re-sent with it: the session it
		// went to knows it by that id and runs it at most once.
		id := e.nextID()
		err := e.roundTripID(ctx, spec, req, res, md, id, nil)
		if err == nil || !retryable(err) || c.cfg.reconnect == nil {
			return err
		}
		if errors.Is(err, errConnLost) {
			if lostInGoAway(e, id) && spec.Idempotency == IdempotencyUnknown {
				return lostAfterGoAway(err)
			}
			if !goneAway(e) {
				sent, lastErr = id, err
			}
		}
	}
	return c.invokeAcross(ctx, start, spec, req, res, md, e, sent, sess, lastErr)
}

// resendAdd counts a call lost with its socket that may be sent again
// with its id.
func (c *Conn) resendAdd() {
	c.mu.Lock()
	if c.resending == 0 {
		c.resent = make(chan struct{})
	}
	c.resending++
	c.mu.Unlock()
}

// resendDone uncounts a call resendAdd counted: it has its call slot on a
// new socket, or is not sent again with its id.
func (c *Conn) resendDone() {
	c.mu.Lock()
	if c.resending--; c.resending == 0 {
		close(c.resent)
	}
	c.mu.Unlock()
}

// waitResends waits until no call lost with a socket waits to be sent
// again with its id. A new call waits for them so that it cannot reach the
// server first: the session remembers a bounded number of outcomes
// (2 × max_in_flight + 16), and new calls finishing ahead of a re-send
// could push its outcome out, so that it ran again.
func (c *Conn) waitResends(ctx context.Context) error {
	c.mu.Lock()
	n, resent := c.resending, c.resent
	c.mu.Unlock()
	if n == 0 {
		return nil
	}
	select {
	case <-resent:
		return nil
	case <-ctx.Done():
		return asError(ctx.Err())
	}
}

func retryable(err error) bool {
	return errors.Is(err, errNotSent) || errors.Is(err, errConnLost)
}

// invokeAcross is the slow path: no socket, or the call's socket dropped.
// It waits for the next socket and sends the call there when safe. The
// call's deadline counts from start, when Invoke was called.
//
// id is the call's id if it was sent on first and may have run (the
// socket dropped with it in flight), sess the session it was sent in, and
// lastErr why it was lost; else 0, "" and nil.
func (c *Conn) invokeAcross(ctx context.Context, start time.Time, spec *MethodSpec, req, res proto.Message, md map[string]string, first *endpoint, id uint64, sess string, lastErr error) error {
	if _, ok := ctx.Deadline(); !ok {
		timeout := spec.Timeout
		if timeout <= 0 {
			timeout = c.cfg.callTimeout
		}
		var cancel context.CancelFunc
		ctx, cancel = context.WithDeadline(ctx, start.Add(timeout))
		defer cancel()
	}
	// pending: the call is counted in c.resending, from when it may need
	// re-sending with its id (id != 0) until it has its slot or does not.
	pending := false
	slotTaken := func() {
		if pending {
			c.resendDone()
			pending = false
		}
	}
	defer slotTaken()
	for {
		if id != 0 && !pending {
			pending = true
			c.resendAdd()
		}
		e, err := c.endpoint(ctx, nil)
		if err != nil {
			return err
		}
		c.mu.Lock()
		current, gone, welcome := c.cur == e, c.gone, c.welcome
		c.mu.Unlock()
		if !current {
			continue // replaced meanwhile
		}
		if e == first {
			// The socket that failed the call is still current: wait for
			// the supervisor to replace it (after a GoAway, the old one
			// may drain its calls for a while).
			select {
			case <-gone:
			case <-e.done:
			case <-c.closedCh:
			case <-ctx.Done():
				return asError(ctx.Err())
			}
			continue
		}
		first = e
		sendID := uint64(0)
		if id != 0 {
			// The call may have run. Idempotent methods may simply run
			// again; others only go to the session they were sent in,
			// resumed, which answers the id once.
			switch {
			case welcome.GetSessionId() == sess && sess != "":
				sendID = id
			case spec.Idempotency == IdempotencyUnknown:
				return &Error{code: CodeUnavailable, message: "the connection dropped with the call in flight and the session could not be resumed: " + lastErr.Error(), wrapped: lastErr}
			}
		}
		onSlot := slotTaken
		if sendID == 0 {
			// A new call, or one that may simply run again: it goes after
			// the re-sends.
			slotTaken()
			onSlot = nil
			if err := c.waitResends(ctx); err != nil {
				return err
			}
			sendID = e.nextID()
		}
		err = e.roundTripID(ctx, spec, req, res, md, sendID, onSlot)
		switch {
		case err == nil || !retryable(err):
			return err
		case errors.Is(err, errConnLost) && lostInGoAway(e, sendID) && spec.Idempotency == IdempotencyUnknown:
			return lostAfterGoAway(err)
		case errors.Is(err, errConnLost) && !goneAway(e):
			id, sess, lastErr = sendID, welcome.GetSessionId(), err
		}
		// Otherwise this send never ran, or ran in a session that ended
		// (idempotent: it runs again); an earlier one (id) may have.
	}
}

// goneAway reports whether the server sent GoAway on e. Its session then
// cannot resume: a call lost with e is never answered by re-sending its id.
func goneAway(e *endpoint) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.goneAway != ""
}

// lostInGoAway reports whether call id, lost with socket e, was accepted
// before the server's GoAway: it may have run (its handler held the
// server's Shutdown past its deadline, say), and the session, which the
// GoAway ended, will not resume to answer it.
func lostInGoAway(e *endpoint, id uint64) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.goneAway != "" && id <= e.goAwayID
}

// lostAfterGoAway is the error of a call that is not idempotent, lost
// with a socket the server sent GoAway on before answering it: it fails
// at once, as waiting for a resumed session would wait until its deadline.
func lostAfterGoAway(err error) error {
	return &Error{code: CodeUnavailable, message: "the server went away and closed the connection with the call in flight; its session cannot be resumed: " + err.Error(), wrapped: err}
}

// NewStream opens a streaming call on the current socket, waiting for one
// within ctx's deadline, else the method's timeout, which then covers the
// whole stream from now. Streams do not survive a reconnect: they end with
// CodeUnavailable.
func (c *Conn) NewStream(ctx context.Context, spec *MethodSpec) (*Stream, error) {
	ctx, stopTimer := streamTimeout(ctx, spec)
	for {
		e, err := c.endpoint(ctx, nil)
		if err != nil {
			stopTimer()
			return nil, err
		}
		c.mu.Lock()
		current, gone := c.cur == e, c.gone
		c.mu.Unlock()
		if !current {
			continue // replaced meanwhile
		}
		s, err := e.newStream(ctx, spec, stopTimer)
		if !errors.Is(err, errSocketGone) || c.cfg.reconnect == nil {
			return s, err
		}
		// The socket is closing or going away, and nothing was sent on
		// it: the stream opens on the next one, within its deadline, as a
		// call waits for a socket.
		select {
		case <-gone:
		case <-c.closedCh:
		case <-ctx.Done():
			stopTimer()
			return nil, asError(ctx.Err())
		}
	}
}

// Register adds handlers for methods the server calls on this client:
// events and calls of services marked `implemented_by = CLIENT`. Generated
// RegisterXHandler functions call it. Events that arrive for a method with
// no handler are dropped (logged at debug level); calls get
// CodeUnimplemented: the server may push events as soon as Dial's socket
// is open, before Register runs, so register in WithHandlers to have every
// event. Handlers survive reconnects. Registering a procedure twice
// panics.
func (c *Conn) Register(methods ...*Method) { c.local.add(methods...) }

var (
	_ Invoker   = (*Conn)(nil)
	_ Registrar = (*Conn)(nil)
)

// SessionID returns the session id the server assigned; it stays the same
// across resumed reconnects.
func (c *Conn) SessionID() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.welcome.GetSessionId()
}

// Done is closed when the connection has closed for good and its
// goroutines ended. After reconnecting gave up, that includes a socket the
// server sent GoAway on finishing the calls already sent on it.
func (c *Conn) Done() <-chan struct{} { return c.done }

// Err returns why the connection closed for good, or nil while it is open
// or reconnecting.
func (c *Conn) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.closed {
		return nil
	}
	return c.closeErr
}

// Close closes the connection and stops reconnecting. Calls still pending
// fail with CodeCanceled. It waits (at most about a second) for the server
// to acknowledge the close, and for the connection's goroutines to end.
// An event handler still running sees its context cancelled, and Close
// waits for it to return: a handler that blocks without watching its
// context (say, sending on a channel nobody reads any more) holds Close
// until it returns, so that no handler runs after Close. Called from one of
// the connection's own event handlers, Close cannot wait for that handler:
// it returns without waiting, the handler's context cancelled, and Done is
// closed once the handler has returned.
func (c *Conn) Close() error {
	c.closeOnce.Do(func() { close(c.closeCalled) })
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		c.waitDone()
		return nil
	}
	c.closed, c.closeErr = true, NewError(CodeCanceled, "the connection was closed by Close")
	close(c.closedCh)
	c.setStateLocked(ConnState{Status: StatusClosed, Err: c.closeErr})
	e := c.cur
	c.mu.Unlock()
	if e != nil {
		e.closeByClient(c.closeErr)
	}
	c.reconnectNow() // wake the supervisor if it waits on a GoAway
	c.waitDone()
	return nil
}

// waitDone waits for the connection's goroutines to end, unless the caller
// is one of its event handlers, which they wait for: then it does at once
// what the supervisor would, cancelling the handler's context and dropping
// the events queued behind it, so that no handler starts after Close.
func (c *Conn) waitDone() {
	if c.events.calledFromHandler() {
		c.stopEvents()
		c.events.stop()
		return
	}
	<-c.done
}

// closeByClient fails pending calls with err and closes the socket.
func (e *endpoint) closeByClient(err error) {
	e.mu.Lock()
	if e.closeErr == nil {
		e.closeErr = err
	}
	pending := e.pending
	e.pending = make(map[uint64]*pendingCall)
	e.mu.Unlock()
	for _, pc := range pending {
		pc.done <- err
	}
	e.closeWith(closeNormal, "")
}
