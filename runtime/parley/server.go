package parley

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"math"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/gorilla/websocket"
	parleyv1 "github.com/parleyrpc/parley/gen/parley/v1"
)

// writeBufferPool lends gorilla/websocket its frame buffers only while a
// message is written, for every connection of the process.
var writeBufferPool = &sync.Pool{}

// agent names this implementation in Hello and Welcome.
const agent = "parley-go/" + Version

// Server serves Parley connections. It is an http.Handler: mount it on a
// mux at the path clients dial. Register every service before serving.
//
// A Server is safe for concurrent use. ServeHTTP upgrades and completes the
// handshake, then hands the connection to a reader goroutine of its own,
// which with one writer goroutine and a goroutine per call in flight (the
// package's call workers, reused from call to call)
// serves it; the connection's goroutines end when it does, the workers
// once idle, and Shutdown waits for the calls.
type Server struct {
	cfg      config
	upgrader websocket.Upgrader
	broker   Broker
	hub      *hub
	// waiting counts what the sessions waiting to be resumed hold
	// (WithResumeMemory).
	waiting *waitingSessions

	methods methodTable
	flusher flusher // writes events (not with WithWriteDelay)
	// handshakes has a place for each handshake that may run at once
	// (WithMaxHandshakes); nil for no bound. A request holds one from
	// before its upgrade to the end of its Hello/Welcome exchange.
	handshakes chan struct{}

	mu           sync.Mutex
	conns        map[*endpoint]struct{}
	shuttingDown bool
	served       sync.WaitGroup // one per ServeHTTP past the upgrade
}

// NewServer returns a Server with the given options.
func NewServer(opts ...ServerOption) *Server {
	s := &Server{
		cfg:   defaultConfig(),
		conns: make(map[*endpoint]struct{}),
	}
	for _, o := range opts {
		o.applyToServer(&s.cfg)
	}
	if s.cfg.maxHandshakes > 0 {
		s.handshakes = make(chan struct{}, s.cfg.maxHandshakes)
	}
	s.broker = s.cfg.broker
	if s.broker == nil {
		s.broker = NewLocalBroker()
	}
	s.hub = newHub(s)
	limit := s.cfg.resumeMemory
	if limit <= 0 {
		limit = math.MaxInt
	}
	s.waiting = newWaitingSessions(limit)
	if err := s.broker.Subscribe(s.hub.deliver); err != nil {
		s.cfg.logger.Error("parley: subscribing to the broker", "err", err)
	}
	s.upgrader = websocket.Upgrader{
		// Parley reads frames itself (readMessage) and writes data frames
		// itself: gorilla's buffers serve only the control frames it
		// writes, so they are as small as it allows.
		ReadBufferSize:   minGorillaBuffer,
		WriteBufferSize:  4096,
		WriteBufferPool:  writeBufferPool,
		HandshakeTimeout: s.cfg.handshakeTimeout,
		CheckOrigin:      s.checkOrigin,
		Subprotocols:     []string{SubprotocolProto, SubprotocolJSON},
		Error: func(w http.ResponseWriter, _ *http.Request, status int, reason error) {
			http.Error(w, "parley: "+reason.Error(), status)
		},
	}
	return s
}

// Register adds methods; generated RegisterXServer functions call it.
// Registering a procedure twice panics.
func (s *Server) Register(methods ...*Method) { s.methods.add(methods...) }

// checkOrigin accepts non-browser clients (no Origin), same-origin pages
// and the origins WithAllowedOrigins lists.
func (s *Server) checkOrigin(r *http.Request) bool {
	origin := r.Header.Get("Origin")
	if origin == "" {
		return true
	}
	u, err := url.Parse(origin)
	if err != nil {
		return false
	}
	if strings.EqualFold(u.Host, r.Host) {
		return true
	}
	for _, allowed := range s.cfg.allowedOrigins {
		if allowed == "*" || strings.EqualFold(strings.TrimSuffix(allowed, "/"), origin) {
			return true
		}
	}
	return false
}

// ServeHTTP upgrades the request to a WebSocket and serves it until it
// closes.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if !websocket.IsWebSocketUpgrade(r) {
		w.Header().Set("Upgrade", "websocket")
		http.Error(w, "parley: this endpoint speaks WebSocket (subprotocols "+SubprotocolProto+", "+SubprotocolJSON+")", http.StatusUpgradeRequired)
		return
	}
	offered := websocket.Subprotocols(r)
	i := slices.IndexFunc(offered, func(p string) bool { _, ok := codecFor(p); return ok })
	if i < 0 {
		http.Error(w, fmt.Sprintf("parley: unsupported subprotocol %q; offer %s or %s", offered, SubprotocolProto, SubprotocolJSON), http.StatusBadRequest)
		return
	}
	c, _ := codecFor(offered[i])
	leave, ok := s.enterHandshake(w, r)
	if !ok {
		return
	}
	defer leave() // if the handshake did not run
	s.mu.Lock()
	if s.shuttingDown {
		s.mu.Unlock()
		http.Error(w, "parley: server is shutting down", http.StatusServiceUnavailable)
		return
	}
	s.served.Add(1)
	s.mu.Unlock()
	handedOff := false
	defer func() {
		if !handedOff {
			s.served.Done()
		}
	}()

	up := s.upgrader
	up.Subprotocols = []string{c.subprotocol()}
	hw := &hijackWriter{ResponseWriter: w}
	ws, err := up.Upgrade(hw, r, nil)
	if err != nil {
		return // the upgrader answered the request
	}
	e := newEndpoint(ws, hw.conn, c, SideServer, &s.cfg)
	e.methods = s.methods.lookup
	if s.cfg.writeDelay == 0 && hw.conn.raw != nil {
		e.flush = &s.flusher
	}
	err = s.handshake(e, r)
	leave()
	if err != nil {
		s.cfg.logger.Info("parley: handshake failed", "remote", r.RemoteAddr, "err", err)
		_ = ws.Close()
		return
	}

	// The connection gets a goroutine of its own and ServeHTTP returns, so
	// that net/http lets go of the request and its buffers: an idle
	// connection then costs only what Parley keeps.
	handedOff = true
	go s.serveConn(e)
}

// enterHandshake takes a place for a handshake (WithMaxHandshakes). Each
// holds a socket and a Hello before authentication, so their number is
// bounded, and a flood of them cannot take the server's memory; a request
// beyond the bound waits, holding only its HTTP connection, for half the
// handshake timeout at most, then is answered 503 with Retry-After. It
// reports whether the handshake may go on (false once it answered the
// request, or the request was cancelled) and returns leave, which gives
// the place back; calls after the first do nothing.
func (s *Server) enterHandshake(w http.ResponseWriter, r *http.Request) (leave func(), ok bool) {
	if s.handshakes == nil {
		return func() {}, true
	}
	held := true
	leave = func() {
		if held {
			held = false
			<-s.handshakes
		}
	}
	select {
	case s.handshakes <- struct{}{}:
		return leave, true
	default:
	}
	wait := time.NewTimer(s.cfg.handshakeTimeout / 2)
	defer wait.Stop()
	select {
	case s.handshakes <- struct{}{}:
		return leave, true
	case <-r.Context().Done():
	case <-wait.C:
		w.Header().Set("Retry-After", "1")
		http.Error(w, fmt.Sprintf("parley: more than %d handshakes in progress (WithMaxHandshakes); retry later", s.cfg.maxHandshakes), http.StatusServiceUnavailable)
	}
	return nil, false
}

// testHookBeforeAttach, set by tests, runs between a connection's
// handshake and its attaching to its session, with the session's id.
var testHookBeforeAttach func(sessionID string)

// serveConn runs a connection after its handshake: it reads until the
// connection closes (or hands reading over to a stand-in, see
// endpoint.runInline); the last reader then calls connEnded.
func (s *Server) serveConn(e *endpoint) {
	s.mu.Lock()
	if s.shuttingDown {
		e.draining = true
		e.closeWith(closeGoingAway, "server shutting down")
	}
	s.conns[e] = struct{}{}
	s.mu.Unlock()
	if testHookBeforeAttach != nil {
		testHookBeforeAttach(e.sess.id)
	}
	e.sess.attach(e, e.resumeFrom)
	e.start()
	// The last reader ends the connection: this goroutine, or a stand-in
	// if this one went on running a call (see endpoint.runInline).
	e.afterRead = func() { s.connEnded(e) }
	e.readLoop()
}

// connEnded cleans up after a connection whose reader and writer ended.
func (s *Server) connEnded(e *endpoint) {
	defer s.served.Done()
	// The resume window starts now, not when this socket's handlers end:
	// they run on the session's context, which only ends with the session.
	s.mu.Lock()
	resumable := !s.shuttingDown && !e.peerSaidBye
	s.mu.Unlock()
	e.sess.detach(e, resumable)
	e.handlers.Wait()
	s.mu.Lock()
	delete(s.conns, e)
	s.mu.Unlock()
}

// handshake reads Hello, authenticates, and answers Welcome.
func (s *Server) handshake(e *endpoint, r *http.Request) error {
	_ = e.ws.SetReadDeadline(time.Now().Add(s.cfg.handshakeTimeout))
	e.readMax = min(e.readMax, helloLimit(s.cfg.maxMetadataBytes))
	typ, data, err := e.readMessage(nil)
	e.readMax = s.cfg.maxMessageBytes
	if err != nil {
		return err
	}
	var f frame
	if typ != e.codec.messageType() {
		err = fmt.Errorf("%s carries %s messages", e.codec.subprotocol(), messageTypeName(e.codec.messageType()))
	} else if err = e.codec.decodeFrame(data, &f); err == nil && f.kind != kindHello {
		err = fmt.Errorf("the first frame must be hello, not %v", f.kind)
	}
	if err != nil {
		s.refuse(e, NewError(CodeInvalidArgument, err.Error()), closeProtocol)
		return err
	}
	if n := metadataBytes(f.hello.GetMetadata()) + offsetsBytes(f.hello.GetOffsets()); n > s.cfg.maxMetadataBytes {
		err := Errorf(CodeResourceExhausted, "the hello's metadata and offsets are %d bytes, the limit %d", n, s.cfg.maxMetadataBytes)
		s.refuse(e, err, websocket.CloseMessageTooBig)
		return err
	}
	if w := f.hello.GetStreamWindow(); w > 0 {
		e.peerWindow = w
	}
	e.peerWindowBytes = f.hello.GetStreamWindowBytes()
	if n := f.hello.GetMaxMessageBytes(); n > 0 {
		e.sendMax = min(e.sendMax, int(n))
	}
	var principal *Principal
	if s.cfg.authenticate != nil {
		ctx, cancel := context.WithTimeout(r.Context(), s.cfg.handshakeTimeout)
		principal, err = s.authenticate(ctx, r, f.hello.GetMetadata())
		cancel()
		if err != nil {
			perr := asError(err)
			if CodeOf(err) == CodeUnknown {
				perr = NewError(CodeUnauthenticated, err.Error())
			}
			s.refuse(e, perr, websocket.ClosePolicyViolation)
			return err
		}
	}
	// Resume the session the client names, if it is alive, the token is
	// right, no event it missed was dropped, and the principal is the same.
	var sess *session
	var lastOffset uint64
	if id := f.hello.GetSessionId(); id != "" && s.cfg.resumeWindow > 0 {
		if old := s.hub.session(id); old != nil {
			lastOffset = f.hello.GetOffsets()[sessionTopic]
			if old.peer.userID() == principal.userID() && old.reserve(e, f.hello.GetResumeToken(), lastOffset) {
				sess = old
			} else if old.canResume(f.hello.GetResumeToken(), old.offsetNow()) {
				old.end() // its owner moved on to a new session
			}
		}
	}
	resumed := sess != nil
	if !resumed {
		sess = newSession(s, principal)
		lastOffset = 0
		// Events published to it between here and its socket attaching
		// (after Welcome) are kept for the socket, whatever the history
		// bound, as for a resuming socket: its client, told it is
		// connected, must not miss them.
		sess.hold(e)
		s.hub.add(sess)
	}
	e.sess, e.peer = sess, sess.peer
	e.resumeFrom = lastOffset
	w := &parleyv1.Welcome{
		SessionId:         sess.id,
		Resumed:           resumed,
		MaxMessageBytes:   limitOnWire(s.cfg.maxMessageBytes),
		MaxInFlight:       uint32(s.cfg.maxInFlight),
		PingIntervalMs:    uint32(s.cfg.pingInterval.Milliseconds()),
		Agent:             agent,
		StreamWindow:      s.cfg.streamWindow,
		StreamWindowBytes: s.cfg.streamWinBytes,
		MaxStreams:        uint32(s.cfg.maxStreams),
	}
	if s.cfg.resumeWindow > 0 {
		w.ResumeToken = sess.token
		w.ResumeWindowMs = uint32(s.cfg.resumeWindow.Milliseconds())
	}
	b, err := e.codec.appendFrame(nil, &frame{kind: kindWelcome, welcome: w}, nil)
	if err == nil {
		_ = e.ws.SetWriteDeadline(time.Now().Add(s.cfg.writeTimeout))
		err = e.ws.WriteMessage(e.codec.messageType(), b)
	}
	switch {
	case err == nil:
	case resumed:
		sess.release(e)
	default:
		sess.end() // no socket will ever attach to it
	}
	return err
}

// helloLimit is the largest Hello a server reads, for a metadata limit of
// maxMetadata bytes: twice that (a map entry's tags and lengths take a few
// bytes besides its key and value) and 4 KiB for the other fields. A map
// of many short entries takes several times its encoded size once decoded,
// and a Hello is decoded before authentication: a larger one is refused
// unread (1009), whatever it holds.
func helloLimit(maxMetadata int) int {
	return 2*max(maxMetadata, 0) + 4<<10
}

// offsetsBytes is what a Hello's offsets count against
// WithMaxMetadataBytes.
func offsetsBytes(offsets map[string]uint64) int {
	n := 0
	for k := range offsets {
		n += len(k) + 8
	}
	return n
}

// refuse answers a failed handshake with a connection-level error and a
// close frame.
func (s *Server) refuse(e *endpoint, err *Error, closeCode int) {
	b, encErr := e.codec.appendFrame(nil, &frame{kind: kindError, code: err.code, message: err.message}, nil)
	deadline := time.Now().Add(s.cfg.writeTimeout)
	_ = e.ws.SetWriteDeadline(deadline)
	if encErr == nil {
		_ = e.ws.WriteMessage(e.codec.messageType(), b)
	}
	_ = e.ws.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(closeCode, truncateReason(err.message)), deadline)
}

// authenticate runs the hook, turning a panic or a missing principal into
// a refusal.
func (s *Server) authenticate(ctx context.Context, r *http.Request, md map[string]string) (p *Principal, err error) {
	defer func() {
		if rec := recover(); rec != nil {
			s.cfg.logger.Error("parley: authenticate hook panicked", "panic", fmt.Sprint(rec))
			p, err = nil, NewError(CodeInternal, "authentication failed")
		}
	}()
	p, err = s.cfg.authenticate(ctx, &AuthRequest{HTTP: r, Metadata: md})
	if err == nil && p == nil {
		err = NewError(CodeUnauthenticated, "not authenticated")
	}
	return p, err
}

func newSessionID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// Shutdown stops the server gracefully: it refuses new connections, sends
// GoAway to every client, answers new calls with unavailable, waits for
// calls in flight to finish, then closes every socket with 1001 (going
// away), ends every session (also those waiting to be resumed) and waits
// for the presence hooks queued (the offline ones that brings about), so
// that what they record is complete when it returns. If ctx ends first,
// the connections with calls still running are closed as going away too
// (1001, what they had queued dropped), so their clients fail those calls
// with unavailable; Shutdown waits at most a second for those close
// handshakes, cancels the handlers' contexts and returns ctx's error. Handlers that ignore their context may still be
// running then.
//
// Shutdown does not stop the http.Server the Server is mounted on.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.shuttingDown = true
	conns := make([]*endpoint, 0, len(s.conns))
	for e := range s.conns {
		conns = append(conns, e)
	}
	s.mu.Unlock()

	var drained sync.WaitGroup
	for _, e := range conns {
		e.goAway("server shutting down")
		drained.Add(1)
		go func() {
			defer drained.Done()
			e.handlers.Wait()
			e.closeWith(closeGoingAway, "server shutting down")
		}()
	}
	all := make(chan struct{})
	go func() {
		drained.Wait()
		s.served.Wait()
		close(all)
	}()
	select {
	case <-all:
		s.endSessions()
		return s.hub.hooks.wait(ctx)
	case <-ctx.Done():
	}
	defer s.endSessions()
	// Calls still running: close their connections as going away (1001),
	// dropping what is queued, so their clients fail those calls with
	// unavailable (and may re-send them elsewhere) rather than see the
	// socket cut; wait for the close handshakes no longer than closeGrace.
	// (conns holds them all: no connection is accepted once shutting down,
	// and closing one that has closed already does nothing.)
	for _, e := range conns {
		e.abort(closeGoingAway, "server shut down before its calls finished")
	}
	grace := time.NewTimer(closeGrace)
	defer grace.Stop()
	for _, e := range conns {
		select {
		case <-e.writerExited:
			continue
		case <-grace.C:
		}
		for _, e := range conns {
			e.fail(errors.New("server shut down before its calls finished"))
		}
		break
	}
	return ctx.Err()
}

// endSessions ends every session, including those waiting for their
// client to resume: a server going away cannot honour them.
func (s *Server) endSessions() {
	s.hub.mu.RLock()
	sessions := make([]*session, 0, len(s.hub.sessions))
	for _, sn := range s.hub.sessions {
		sessions = append(sessions, sn)
	}
	s.hub.mu.RUnlock()
	for _, sn := range sessions {
		sn.end()
	}
}

// goAway refuses new calls and tells the client.
func (e *endpoint) goAway(reason string) {
	b := getBuf()
	e.mu.Lock()
	defer e.mu.Unlock()
	e.draining = true
	// Queued under the lock, so that GoAway precedes every refusal the
	// draining causes: the client then knows those calls never ran.
	*b, _ = e.codec.appendFrame((*b)[:0], &frame{kind: kindGoAway, message: reason, id: e.lastAccepted}, nil)
	if e.q.push(e.ctx, b, false) != nil {
		putBuf(b)
	}
}
