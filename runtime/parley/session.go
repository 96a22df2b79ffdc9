package parley

import (
	"context"
	"crypto/subtle"
	"slices"
	"sync"
	"time"

	"google.golang.org/protobuf/proto"
)

// Defaults for session resumption; WithResume changes them.
const (
	// DefaultResumeWindow is how long a server keeps the session of a
	// dropped socket for its client to resume.
	DefaultResumeWindow = 2 * time.Minute
	// DefaultResumeEvents is how many recent events a session keeps to
	// replay after a reconnect, and no more than its send queue holds
	// (WithSendQueueBytes), where the replay goes. A client that missed
	// more cannot resume: it is told (resumed = false) and resyncs.
	DefaultResumeEvents = 512
	// DefaultResumeReplyBytes bounds the replies a session keeps, by
	// their protobuf size, for calls its client re-sends after a reconnect
	// (see WithResumeReplyBytes): as large as one message may be, so that
	// the latest reply is always kept.
	DefaultResumeReplyBytes = DefaultMaxMessageBytes
)

// sessionTopic is the Event.topic of events a session can replay.
const sessionTopic = "session"

// session is a client's state on a server beyond any one socket: its
// principal, its rooms, the events sent to it and the calls it made. A
// socket attaches to it after the handshake; when the socket drops, the
// session waits for the resume window, keeping its rooms and buffering its
// events, for the client to come back with its resume token.
//
// The session's context ends when the session does (not when a socket
// drops): handlers of its calls keep running across a reconnect. mu guards
// everything below it.
type session struct {
	srv    *Server
	id     string
	token  string
	peer   *Peer
	ctx    context.Context
	cancel context.CancelFunc
	// roomsMu orders the session's room joins and leaves and its removal
	// from the hub, each with its broker call (see hub).
	roomsMu sync.Mutex

	mu     sync.Mutex
	cur    *endpoint // the attached socket, nil while away
	expiry *time.Timer
	ended  bool
	offset uint64         // of the last event sent
	events []sessionEvent // the most recent events, oldest first
	// eventBytes is what replaying all of events would queue (replayBytes).
	eventBytes int
	running    map[uint64]runningCall
	replies    map[uint64]sessionReply
	order      []uint64 // ids in replies, oldest first
	// replyBytes is the size of the replies kept in replies; past
	// WithResumeReplyBytes, the oldest give way to errors (see keepReply).
	replyBytes int
	// resuming holds, for each socket told it resumed the session and not
	// attached yet, the offset its replay starts after: events keeps
	// every later event, whatever its bound, until the socket attaches.
	resuming map[*endpoint]uint64
	// waiting is whether the session counts itself among the server's
	// sessions waiting to be resumed (srv.waiting, WithResumeMemory): no
	// socket is attached or about to attach, and it has not ended.
	waiting bool
}

// sessionEvent is an event kept for replay.
type sessionEvent struct {
	offset uint64
	at     time.Time
	ev     *eventData
}

// sessionReply is a finished call's outcome, kept so that a call re-sent
// after a reconnect is answered without running twice.
type sessionReply struct {
	method string
	res    proto.Message
	size   int // res's protobuf size
	err    *Error
}

// runningCall is a call of the session running on socket e.
type runningCall struct {
	e      *endpoint
	method string
}

func newSession(srv *Server, principal *Principal) *session {
	ctx, cancel := context.WithCancel(context.Background())
	sess := &session{
		srv: srv, id: newSessionID(), token: newSessionID(),
		ctx: ctx, cancel: cancel,
		running: make(map[uint64]runningCall),
		replies: make(map[uint64]sessionReply),
	}
	sess.peer = &Peer{sess: sess, id: sess.id, server: srv, principal: principal}
	return sess
}

// offsetNow returns the offset of the last event sent.
func (s *session) offsetNow() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.offset
}

// endpoint returns the attached socket, or nil.
func (s *session) endpoint() *endpoint {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cur
}

// canResume reports whether a client that saw events up to lastOffset can
// resume: the session is alive and still holds every later event.
func (s *session) canResume(token string, lastOffset uint64) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.canResumeLocked(token, lastOffset)
}

// reserve is canResume for socket e, whose handshake then tells its client
// the session resumed: until e attaches (or release), the session keeps
// every event after lastOffset, and does not expire. The handshake writes
// Welcome before the socket attaches and replays; without the reservation
// events published meanwhile could push missed ones out of the bounded
// history, and a client told it resumed would silently miss them.
func (s *session) reserve(e *endpoint, token string, lastOffset uint64) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.canResumeLocked(token, lastOffset) {
		return false
	}
	s.holdLocked(e, lastOffset)
	return true
}

// hold reserves a new session for its first socket, e, as reserve does for
// a resuming one: until e attaches, every event published to the session
// is kept for it.
func (s *session) hold(e *endpoint) {
	s.mu.Lock()
	s.holdLocked(e, 0)
	s.mu.Unlock()
}

// holdLocked keeps every event after lastOffset for e until it attaches
// (or release). s.mu is held.
func (s *session) holdLocked(e *endpoint, lastOffset uint64) {
	s.stopWaitingLocked()
	if s.resuming == nil {
		s.resuming = make(map[*endpoint]uint64)
	}
	s.resuming[e] = lastOffset
}

// release undoes reserve for a socket whose handshake failed after it.
func (s *session) release(e *endpoint) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.resuming[e]; !ok {
		return
	}
	delete(s.resuming, e)
	if s.cur == nil && len(s.resuming) == 0 && !s.ended && s.expiry == nil {
		s.armExpiryLocked()
	}
}

func (s *session) canResumeLocked(token string, lastOffset uint64) bool {
	if s.ended || subtle.ConstantTimeCompare([]byte(token), []byte(s.token)) != 1 {
		return false
	}
	if lastOffset > s.offset {
		return false // the client saw events this session never sent
	}
	if lastOffset == s.offset {
		return true
	}
	if len(s.events) == 0 || s.events[0].offset > lastOffset+1 {
		return false // some missed events were dropped
	}
	// The replay goes into the new socket's bounded send queue at once: if
	// it cannot fit, the socket would be cut off as a slow consumer, so the
	// resume fails honestly instead.
	missed := 0
	for _, se := range s.events {
		if se.offset > lastOffset {
			missed += replayBytes(se)
		}
	}
	return missed <= s.srv.cfg.sendQueueBytes
}

// replayBytes is what an event counts against the send queue when it is
// replayed: its payload, its method and the frame around them.
func replayBytes(se sessionEvent) int {
	return len(se.ev.payload) + len(se.ev.method) + 32
}

// attach makes e the session's socket, closing a previous one still
// attached (a half-open socket the client gave up on), and replays the
// events after lastOffset. Events published meanwhile wait for the lock, so
// they follow the replay in order.
func (s *session) attach(e *endpoint, lastOffset uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.resuming, e)
	if s.ended {
		// Ended since the handshake (closed by the server, or by another
		// socket of its client that could not resume it): the client
		// must not believe it resumed. It comes back to a new session.
		e.abort(closeNormal, "session ended")
		return
	}
	if old := s.cur; old != nil && old != e {
		old.abort(closeNormal, "session resumed on another socket")
	}
	s.cur = e
	s.stopWaitingLocked()
	if s.expiry != nil {
		s.expiry.Stop()
		s.expiry = nil
	}
	for _, se := range s.events {
		if se.offset > lastOffset {
			s.sendEventLocked(e, se)
		}
	}
}

// detach notes that e closed. Unless another socket took over, the session
// ends after the resume window (at once when resumption is off or the
// server is shutting down).
func (s *session) detach(e *endpoint, resumable bool) {
	s.mu.Lock()
	if s.cur != e {
		s.mu.Unlock()
		return
	}
	s.cur = nil
	window := s.srv.cfg.resumeWindow
	if !resumable || window <= 0 {
		s.mu.Unlock()
		s.end()
		return
	}
	s.armExpiryLocked()
	s.mu.Unlock()
}

// armExpiryLocked ends the session after the resume window, unless a
// socket attaches or is about to (reserve) meanwhile. Until then the
// session waits, counted against WithResumeMemory, unless a socket is
// about to attach already.
func (s *session) armExpiryLocked() {
	if len(s.resuming) == 0 {
		s.waiting = true
		s.srv.waiting.put(s, s.heldLocked())
	}
	var t *time.Timer
	t = time.AfterFunc(s.srv.cfg.resumeWindow, func() {
		s.mu.Lock()
		expired := s.cur == nil && !s.ended && len(s.resuming) == 0
		if s.expiry == t {
			s.expiry = nil
		}
		s.mu.Unlock()
		if expired {
			s.end()
		}
	})
	s.expiry = t
}

// end destroys the session: it leaves its rooms, its user may go offline,
// and its calls' contexts are cancelled.
func (s *session) end() {
	s.mu.Lock()
	if s.ended {
		s.mu.Unlock()
		return
	}
	s.ended = true
	s.stopWaitingLocked()
	if s.expiry != nil {
		s.expiry.Stop()
	}
	s.events, s.eventBytes = nil, 0
	s.mu.Unlock()
	s.srv.hub.remove(s)
	s.cancel()
}

// evict ends s, which the server's waiting sessions let go of to stay
// within limit (WithResumeMemory), unless a socket took it up meanwhile.
func (s *session) evict(limit int) {
	s.mu.Lock()
	waiting := s.cur == nil && !s.ended && len(s.resuming) == 0
	s.mu.Unlock()
	if waiting {
		s.srv.cfg.logger.Warn("parley: a session waiting to be resumed ended early: the sessions waiting hold more than WithResumeMemory", "session", s.id, "limit", limit)
		s.end()
	}
}

// heldLocked is what s holds for a resume, besides its own structures:
// its kept events (as a replay counts them) and replies. s.mu is held.
func (s *session) heldLocked() int { return s.eventBytes + s.replyBytes }

// heldChangedLocked counts s again among the waiting sessions, if it
// waits, after its events or replies changed. s.mu is held.
func (s *session) heldChangedLocked() {
	if s.waiting {
		s.srv.waiting.put(s, s.heldLocked())
	}
}

// stopWaitingLocked counts s out of the waiting sessions: a socket
// attached or is about to, or it ended. s.mu is held.
func (s *session) stopWaitingLocked() {
	if s.waiting {
		s.waiting = false
		s.srv.waiting.remove(s)
	}
}

// deliverEvent numbers an event for this session, keeps it for replay and
// sends it to the attached socket, if any.
func (s *session) deliverEvent(ev *eventData) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ended {
		return
	}
	s.offset++
	se := sessionEvent{offset: s.offset, at: time.Now(), ev: ev}
	limit := s.srv.cfg.resumeEvents
	if limit > 0 || len(s.resuming) > 0 || len(s.events) > 0 {
		// Drop the oldest beyond the bound (all of them when the session
		// keeps none, and keeps these only for a socket about to attach),
		// and, while a socket is attached, those older than the resume
		// window: no client can still be missing them. But keep those a
		// socket about to attach will replay (events[i].offset is
		// events[0].offset+i; drop > 0 only while events holds some).
		drop := len(s.events)
		if limit > 0 {
			drop = max(0, len(s.events)+1-limit)
		}
		if s.cur != nil {
			horizon := se.at.Add(-s.srv.cfg.resumeWindow)
			for drop < len(s.events) && s.events[drop].at.Before(horizon) {
				drop++
			}
		}
		// And those no resume could replay: a client missing one would
		// miss it and every later event, more than its send queue holds
		// (canResumeLocked), so the history need not hold more than that.
		dropped := 0
		for _, old := range s.events[:drop] {
			dropped += replayBytes(old)
		}
		for drop < len(s.events) && s.eventBytes-dropped+replayBytes(se) > s.srv.cfg.sendQueueBytes {
			dropped += replayBytes(s.events[drop])
			drop++
		}
		for _, from := range s.resuming {
			if drop > 0 {
				drop = min(drop, max(0, int(int64(from)-int64(s.events[0].offset)+1)))
			}
		}
		if drop > 0 {
			for _, old := range s.events[:drop] {
				s.eventBytes -= replayBytes(old)
			}
			clear(s.events[:drop])
			s.events = s.events[drop:]
		}
		if limit > 0 || len(s.resuming) > 0 {
			s.events = append(s.events, se)
			s.eventBytes += replayBytes(se)
		}
		s.heldChangedLocked()
	}
	if s.cur != nil {
		s.sendEventLocked(s.cur, se)
	}
}

func (s *session) sendEventLocked(e *endpoint, se sessionEvent) {
	payload, err := se.ev.payloadFor(e.codec)
	if err != nil {
		e.log.Error("parley: encoding an event", "method", se.ev.method, "err", err)
		return
	}
	head := frame{kind: kindEvent, method: se.ev.method, hasPayload: true, payload: payload, topic: sessionTopic, offset: se.offset}
	if s.srv.cfg.resumeWindow <= 0 {
		head.topic, head.offset = "", 0
	}
	var out outFrame
	if _, isJSON := e.codec.(jsonCodec); isJSON {
		out.b = getBuf()
		*out.b, err = e.appendFrame((*out.b)[:0], &head, nil)
	} else {
		out = binaryEvent(&head)
	}
	b := out.b
	if err != nil {
		putBuf(b)
		return
	}
	if n := len(*b) + len(out.tail); n > e.sendMax {
		// The client would close the socket on it (1009) and get it
		// again on resuming: it is not sent. This runs once per event and
		// connection (a replay goes to another connection).
		putBuf(b)
		e.log.Warn("parley: event larger than the connection accepts not sent", "method", se.ev.method, "conn", s.id, "bytes", n, "limit", e.sendMax)
		return
	}
	e.pushEvent(out)
}

// binaryEvent is a binary Event frame for one connection: a head of its
// own, in a buffer from headPool, and after it the payload, which every
// recipient shares and nobody copies.
func binaryEvent(head *frame) outFrame {
	b := getHead()
	*b = appendEventHead((*b)[:0], head)
	return outFrame{b: b, tail: head.payload}
}

// claimCall decides what to do with an incoming call id: run it (true), or
// not, because it ran or is running already in this session (a call the
// client re-sent after a reconnect); a finished one is answered again. An
// id that an earlier call of another method had is the client reusing
// ids, which it must not: that call is answered invalid_argument, not with
// the other call's outcome.
//
// A new call is refused with resource_exhausted when WithMaxInFlight
// calls of the session run already, on any of its sockets: calls outlive
// the socket they came on, so a client that dropped and resumed its
// session again and again could otherwise run that many more each time.
// A client that keeps to max_in_flight counts the calls it re-sends, and
// the session runs those once, so it never meets this bound.
func (s *session) claimCall(e *endpoint, id uint64, method string) bool {
	s.mu.Lock()
	r, replied := s.replies[id]
	prior := r.method
	if !replied {
		prior = s.running[id].method
	}
	switch {
	case prior == "" && len(s.running) >= s.srv.cfg.maxInFlight:
		s.mu.Unlock()
		e.sendError(id, Errorf(CodeResourceExhausted, "more than %d calls in flight in this session", s.srv.cfg.maxInFlight))
	case prior == "":
		s.running[id] = runningCall{e: e, method: method}
		s.mu.Unlock()
		return true
	case prior != method:
		s.mu.Unlock()
		e.sendError(id, Errorf(CodeInvalidArgument, "call id %d was %s's earlier in this session: a client never reuses an id", id, prior))
	case replied:
		// Answered again, it is the most recent outcome: the client may
		// lose this answer too, and re-send the call once more.
		if i := slices.Index(s.order, id); i >= 0 {
			s.order = append(slices.Delete(s.order, i, i+1), id)
		}
		s.mu.Unlock()
		if _, replaced := e.sendOutcome(id, method, r.res, r.err, false); replaced != nil {
			s.replaced(id, method, replaced)
		}
	default:
		s.mu.Unlock()
	}
	return false
}

// finishCall records a call's outcome and queues it on the attached
// socket, which may not be the one the call came on; it returns that
// socket when the caller must write it (see endpoint.writeOwned).
func (s *session) finishCall(id uint64, res proto.Message, err *Error, abandoned bool) *endpoint {
	s.mu.Lock()
	method := s.running[id].method
	delete(s.running, id)
	if abandoned {
		s.mu.Unlock()
		return nil
	}
	s.keepReply(id, sessionReply{method: method, res: res, err: err})
	cur := s.cur
	s.mu.Unlock()
	if cur == nil {
		return nil
	}
	w, replaced := cur.sendOutcome(id, method, res, err, true)
	if replaced != nil {
		s.replaced(id, method, replaced)
	}
	if w {
		return cur
	}
	return nil
}

// keepReply keeps call id's outcome r for a re-sent call, as the most
// recent. s.mu is held.
//
// A client has at most max_in_flight calls unanswered, and re-sends those
// lost with a socket before any new call (a call answered again counts as
// recent), so twice that many recent outcomes cover every call it can
// re-send: older ones are forgotten. Replies are also bounded in bytes
// (WithResumeReplyBytes), or a client calling a method whose replies are
// large could make each session hold hundreds of them: past the bound,
// the oldest replies kept give way to a data_loss error, still answering
// a re-sent call without running it again.
func (s *session) keepReply(id uint64, r sessionReply) {
	if r.res != nil {
		r.size = proto.Size(r.res)
		s.replyBytes += r.size
	}
	s.replies[id] = r
	s.order = append(s.order, id)
	if limit := 2*s.srv.cfg.maxInFlight + 16; len(s.order) > limit {
		for _, old := range s.order[:len(s.order)-limit] {
			s.replyBytes -= s.replies[old].size
			delete(s.replies, old)
		}
		s.order = append(s.order[:0], s.order[len(s.order)-limit:]...)
	}
	for _, old := range s.order {
		if s.replyBytes <= s.srv.cfg.resumeReplies {
			break
		}
		if r := s.replies[old]; r.res != nil {
			s.replyBytes -= r.size
			s.replies[old] = sessionReply{method: r.method, err: Errorf(CodeDataLoss,
				"call %d ran, but its reply (%d bytes) was lost with the connection: the session keeps %d bytes of replies to re-send (WithResumeReplyBytes)",
				old, r.size, s.srv.cfg.resumeReplies)}
		}
	}
	s.heldChangedLocked()
}

// replaced records that call id's outcome was too large for its client
// and went as the error err instead: a re-sent call gets err too, and the
// session no longer holds the large outcome.
func (s *session) replaced(id uint64, method string, err *Error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if r, ok := s.replies[id]; ok && r.method == method {
		s.replyBytes -= r.size
		s.replies[id] = sessionReply{method: method, err: err}
		s.heldChangedLocked()
	}
}

// cancelCall cancels a call of this session running on any socket.
func (s *session) cancelCall(id uint64, code Code) {
	s.mu.Lock()
	e := s.running[id].e
	s.mu.Unlock()
	if e != nil {
		e.cancelIncoming(id, code)
	}
}

// sendOutcome queues the reply or error of call id, of method; own and
// replaced are as for sendOwning.
func (e *endpoint) sendOutcome(id uint64, method string, res proto.Message, err *Error, own bool) (writer bool, replaced *Error) {
	if err != nil {
		f := errorFrame(id, err)
		f.method = method
		return e.sendOwning(f, nil, own)
	}
	return e.sendOwning(&frame{kind: kindReply, id: id, method: method, hasPayload: true}, res, own)
}
