package parley

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"google.golang.org/protobuf/proto"
)

// DefaultStreamWindow is how many items a receiver accepts per stream
// before it grants more credit, and DefaultMaxStreams how many streams a
// server keeps open per connection. Options WithStreamWindow and
// WithMaxStreams change them.
const (
	DefaultStreamWindow = 64
	DefaultMaxStreams   = 100
)

// DefaultStreamWindowBytes is how many bytes of items a receiver accepts
// per stream before it grants more (WithStreamWindowBytes): 256 KiB, so
// that DefaultMaxStreams streams of items up to 64 KiB fit in
// DefaultStreamBufferBytes.
const DefaultStreamWindowBytes = 256 << 10

// streamWindowGrowth bounds how far receivers grow stream windows beyond
// the configured one while the application reads faster than items come
// (it waited for one since the last grant, or has drained the queue): a
// stream whose receiver waits on the network, rather than the other way
// round, is held back by credit round trips, not by its reader, so more
// credit costs no memory that is not used at once. A reader that falls
// behind never grows its window. All the streams of a connection share
// the extra items, streamWindowGrowth-1 windows' worth, so a connection
// buffers at most that many more items than its streams' windows.
//
// A window also grows only while, at the size of the largest item its
// stream has received, it stays within the stream's share of half the
// connection's WithStreamBufferBytes: growth alone never lets a sender
// that keeps to its credit take the connection past that bound, whatever
// its items' size, if the reader pauses.
//
// 64 windows, not 16: one stream of 1 KiB items on loopback carried
// 20-40 % more messages a second with the servers in their own process
// (8-13 % in one process) than with 15 windows' growth, where its window
// stopped at 1,024 items: less than arrive in a credit round trip at
// ~300k items a second in 256 KiB writes.
const streamWindowGrowth = 64

// stream is one streaming call on an endpoint, from either end: the caller
// (who opened it) or the callee (whose handler serves it).
//
// The reader goroutine fills the receive queue and grants send credit;
// the application's goroutines send and receive. Items are received only
// within the credit this side granted, so the queue never holds more than
// window items. mu guards every field below it.
type stream struct {
	e      *endpoint
	id     uint64
	spec   *MethodSpec
	caller bool
	ctx    context.Context
	cancel context.CancelCauseFunc
	window uint32 // the credit this side grants the peer; grows while drained (guarded by mu)
	// stop unregisters the caller's context watcher (set under mu, where
	// finish reads it); stopTimer releases the method's default deadline.
	stop      func() bool
	stopTimer context.CancelFunc

	// sendMu serializes senders so one item's credit and frame go together.
	sendMu sync.Mutex
	// item is the frame send encodes, kept here so that it is not
	// allocated per item; guarded by sendMu.
	item frame
	// sentBytes is the size of the item sent last, not yet taken from
	// byteCredit: the next send takes it under mu, which spares each item
	// a second lock. Guarded by sendMu.
	sentBytes int

	// The receiving goroutine (RecvMsg has one at a time) takes the queue
	// in batches: taken holds the items of the last batch, next is the
	// first it has not returned, and read counts those it returned since
	// it last told mu's side (see settle). They need no lock: only that
	// goroutine touches them, so each item costs it no lock, and the
	// reader, which queues items, no cache-line transfer.
	taken     []*[]byte
	next      int
	read      uint32
	readBytes int64 // the bytes of those read items
	readFrame int64 // their frames' bytes: what they cost in byte credit

	mu         sync.Mutex
	recvq      []*[]byte // received payloads (pooled copies), oldest first
	inTaken    uint32    // items moved to taken and not yet settled as consumed
	drop       bool      // the caller gave up: the items taken are dropped too
	recvEnd    bool      // nothing more will be queued
	recvErr    error     // returned once the queue is drained: io.EOF or the call's error
	consumed   uint32    // items consumed since the last Credit sent
	bufBytes   int64     // this stream's share of e.streamBuf: items queued or taken, not settled
	maxItem    int64     // the largest item received, in bytes (growWindow)
	starved    bool      // recv waited for an item since the last Credit sent
	waiting    bool      // recv waits for notify: deliver must wake it
	credit     int64     // items this side may still send
	byteCredit int64     // item bytes this side may still send, if the peer set a byte window (may be below 0: one item overdraws)
	byteWindow uint32    // the item bytes this side grants the peer; grows with window (0: none)
	// inBytes is the item bytes received and not yet granted back. A
	// peer that set a byte window of its own knows byte credit: it breaks
	// the rules by sending with inBytes at byteWindow.
	inBytes       int64
	consumedBytes int64 // item bytes consumed since the last Credit sent
	sendClosed    bool  // CloseSend was called
	done          bool  // the call is over; sends fail
	opened        bool  // the Call frame went out (callers only)
	notify        chan struct{}
	creditCh      chan struct{}
}

func wake(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}

// streamTimeout gives ctx the method's timeout when it has no deadline of
// its own; stop releases it (a no-op when ctx is unchanged).
func streamTimeout(ctx context.Context, spec *MethodSpec) (_ context.Context, stop context.CancelFunc) {
	if _, ok := ctx.Deadline(); !ok && spec.Timeout > 0 {
		return context.WithTimeout(ctx, spec.Timeout)
	}
	return ctx, func() {}
}

// newStream opens a streaming call from this side. stopTimer, if not nil,
// releases the method's timeout the caller already put on ctx (see
// streamTimeout); else newStream applies it.
//
// On a socket that is closing or going away it opens nothing and returns
// an error wrapping errSocketGone, leaving a stopTimer the caller passed
// running, so that the caller may try the next socket within the same
// deadline (see Conn.NewStream).
func (e *endpoint) newStream(ctx context.Context, spec *MethodSpec, stopTimer context.CancelFunc) (*Stream, error) {
	ownTimer := stopTimer == nil
	if ownTimer {
		ctx, stopTimer = streamTimeout(ctx, spec)
	}
	if spec.Kind == StreamNone {
		stopTimer()
		return nil, Errorf(CodeInternal, "%s is unary: use Invoke", spec.Procedure)
	}
	if err := ctx.Err(); err != nil {
		stopTimer()
		return nil, asError(err)
	}
	sctx, cancel := context.WithCancelCause(ctx)
	s := &stream{
		e: e, id: e.nextID(), spec: spec, caller: true,
		ctx: sctx, cancel: cancel, stopTimer: stopTimer,
		notify: make(chan struct{}, 1), creditCh: make(chan struct{}, 1),
	}
	s.initWindows()
	e.mu.Lock()
	if e.closeErr != nil || e.goneAway != "" {
		var err *Error
		if e.closeErr != nil {
			err = asError(e.closeErr)
		} else {
			err = Errorf(CodeUnavailable, "server is going away: %s", e.goneAway)
		}
		e.mu.Unlock()
		cancel(err)
		if ownTimer {
			stopTimer()
		}
		return nil, &Error{code: err.code, message: err.message, details: err.details, wrapped: errSocketGone}
	}
	e.streams[s.id] = s
	e.liveStreams.Add(1)
	e.mu.Unlock()
	e.needReader() // the stream's replies and credit must be read
	// The caller giving up (its ctx ending) abandons the call. The reader
	// may finish the stream meanwhile (its socket closing): stop is set
	// under mu, where finish reads it, and undone here if finish came
	// first.
	stop := context.AfterFunc(sctx, func() {
		code := CodeOf(context.Cause(sctx))
		if code == CodeUnknown {
			code = CodeCanceled
		}
		s.abandon(code)
	})
	s.mu.Lock()
	s.stop = stop
	finished := s.done
	s.mu.Unlock()
	if finished {
		stop()
	}
	if !spec.Kind.streamsRequests() {
		// The request travels in the Call frame: the first SendMsg opens.
		return &Stream{s: s}, nil
	}
	if err := s.open(nil); err != nil {
		return nil, err
	}
	return &Stream{s: s}, nil
}

// open sends the Call frame, with req as its payload when the request is
// not streamed.
func (s *stream) open(req proto.Message) error {
	s.mu.Lock()
	s.opened = true
	s.mu.Unlock()
	var timeoutMs uint32
	if dl, ok := s.ctx.Deadline(); ok {
		timeoutMs = uint32(max(1, min(time.Until(dl).Milliseconds()+1, 1<<32-1)))
	}
	f := frame{kind: kindCall, id: s.id, method: s.spec.Procedure, timeoutMs: timeoutMs, hasPayload: req != nil}
	if err := s.e.sendCtx(s.ctx, &f, req); err != nil {
		// The Call was not queued (too large, or the connection closing):
		// the peer never hears of this id, so no Cancel goes out for it.
		s.mu.Lock()
		s.opened = false
		s.mu.Unlock()
		s.abandon(CodeOf(err))
		return err
	}
	return nil
}

// send sends one item, waiting for credit.
func (s *stream) send(m proto.Message) error {
	s.sendMu.Lock()
	defer s.sendMu.Unlock()
	if s.caller && !s.spec.Kind.streamsRequests() {
		s.mu.Lock()
		opened, done := s.opened, s.done
		s.mu.Unlock()
		switch {
		case opened:
			return Errorf(CodeInternal, "%s takes one request", s.spec.Procedure)
		case done:
			return io.EOF // ended before its Call went out (see open)
		}
		return s.open(m)
	}
	if !s.caller && !s.spec.Kind.streamsResponses() {
		return Errorf(CodeInternal, "%s sends one response: return it from the handler", s.spec.Procedure)
	}
	for {
		s.mu.Lock()
		s.byteCredit -= int64(s.sentBytes)
		s.sentBytes = 0
		switch {
		case s.sendClosed:
			s.mu.Unlock()
			return Errorf(CodeInternal, "send after CloseSend on %s", s.spec.Procedure)
		case s.done:
			s.mu.Unlock()
			return io.EOF
		case s.ctx.Err() != nil:
			// Cancelled or past the deadline, the call not finished yet
			// (a caller's abandon runs after its context ends; a handler's
			// stream finishes when it returns): the item would go for a
			// call that is over, so it fails as a wait for credit would.
			s.mu.Unlock()
			return s.ctxErr()
		case s.credit > 0 && (s.e.peerWindowBytes == 0 || s.byteCredit > 0):
			s.credit--
			s.mu.Unlock()
			s.item = frame{kind: kindItem, id: s.id, method: s.spec.Procedure, hasPayload: true}
			n, err := s.e.sendSized(s.ctx, &s.item, m)
			if errors.Is(err, errTooLarge) {
				// Not sent: the stream goes on, with its credit.
				s.mu.Lock()
				s.credit++
				s.mu.Unlock()
			}
			s.sentBytes = n
			return err
		}
		s.mu.Unlock()
		select {
		case <-s.creditCh:
		case <-s.ctx.Done():
			return s.ctxErr()
		}
	}
}

func (s *stream) ctxErr() error {
	if cause := context.Cause(s.ctx); cause != nil {
		if _, ok := cause.(*Error); ok {
			return cause
		}
	}
	return asError(s.ctx.Err())
}

// recv receives one item into m.
func (s *stream) recv(m proto.Message) error {
	// The fast path: an item of the batch taken, while the call is live.
	// The context is checked as on the slow path: once it ends, the slow
	// path decides whether queued items still count.
	if s.next < len(s.taken) && s.ctx.Err() == nil {
		return s.recvTaken(m)
	}
	for {
		s.mu.Lock()
		items, bytes := s.settle()
		if s.drop {
			s.releaseTaken()
		}
		switch {
		case !s.done && s.ctx.Err() != nil:
			// Cancelled or past the deadline: what is queued no longer
			// matters. (A finished call's context ends too, but its queued
			// items are still delivered.)
			s.mu.Unlock()
			s.sendCredit(items, bytes)
			return s.ctxErr()
		case s.next == len(s.taken) && len(s.recvq) > 0:
			// Take the whole queue; the emptied batch's storage becomes
			// the queue's.
			clear(s.taken)
			s.taken, s.recvq, s.next = s.recvq, s.taken[:0], 0
			s.inTaken += uint32(len(s.taken))
		}
		if s.next < len(s.taken) {
			s.mu.Unlock()
			s.sendCredit(items, bytes)
			return s.recvTaken(m)
		}
		if s.recvEnd {
			err := s.recvErr
			s.mu.Unlock()
			s.sendCredit(items, bytes)
			return err
		}
		s.starved, s.waiting = true, true
		s.mu.Unlock()
		s.sendCredit(items, bytes)
		select {
		case <-s.notify:
		case <-s.ctx.Done():
		}
	}
}

// recvTaken receives the next item of the batch taken into m, granting
// credit first if, with it, half a window of items or bytes was consumed
// since the last grant. Only the receiving goroutine calls it (and settle,
// the only other writer of consumed and consumedBytes).
func (s *stream) recvTaken(m proto.Message) error {
	payload := s.takeNext()
	if s.consumed+s.read >= s.grantEvery() || s.consumedBytes+s.readFrame >= s.grantEveryBytes() {
		s.mu.Lock()
		items, bytes := s.settle()
		s.mu.Unlock()
		s.sendCredit(items, bytes)
	}
	return s.decode(payload, m)
}

// takeNext returns the next item of the batch taken. Only the receiving
// goroutine calls it.
func (s *stream) takeNext() *[]byte {
	item := s.taken[s.next]
	s.taken[s.next] = nil // released to the pool once decoded
	s.next++
	s.read++
	payload, frameBytes := itemOf(item)
	s.readBytes += int64(len(payload))
	s.readFrame += int64(frameBytes)
	return item
}

// grantEvery is how many items a receiver consumes between grants: half
// the configured window, also once the window has grown, so that a grown
// window refills in steady steps rather than in bursts of half its size,
// which left both ends idle in turn.
func (s *stream) grantEvery() uint32 { return max(1, s.e.cfg.streamWindow/2) }

// grantEveryBytes is how many item bytes a receiver consumes between
// grants, likewise: half the configured byte window (an item larger than
// that is granted back as soon as it is read). Without a byte window, bytes
// never call for a grant.
func (s *stream) grantEveryBytes() int64 {
	if s.byteWindow == 0 {
		return 1 << 62
	}
	return max(1, int64(s.e.cfg.streamWinBytes)/2)
}

// settle counts the items the receiving goroutine returned since it last
// settled as consumed, and returns the credit to grant for them, in items
// and in bytes, if it is time: every grantEvery items or grantEveryBytes
// bytes, plus each window's size when it doubles. s.mu is held; only the
// receiving goroutine calls it.
func (s *stream) settle() (items uint32, bytes uint32) {
	s.inTaken -= s.read
	s.consumed += s.read
	s.consumedBytes += s.readFrame
	s.read, s.readFrame = 0, 0
	if !s.done {
		s.bufBytes -= s.readBytes
		s.e.streamBuf.Add(-s.readBytes)
	}
	s.readBytes = 0
	if s.recvEnd || (s.consumed < s.grantEvery() && s.consumedBytes < s.grantEveryBytes()) {
		return 0, 0
	}
	items, s.consumed = s.consumed, 0
	if s.byteWindow > 0 {
		bytes = uint32(s.consumedBytes)
		s.inBytes -= s.consumedBytes
	}
	s.consumedBytes = 0
	if drained := s.next == len(s.taken) && len(s.recvq) == 0; s.starved || drained {
		// The reader waits for items, not the other way round: the peer
		// is likely waiting for credit.
		if s.e.growWindow(s.window, s.maxItem) {
			items += s.window
			s.window *= 2
		}
		if s.byteWindow > 0 && s.e.growByteWindow(s.byteWindow) {
			bytes += s.byteWindow
			s.byteWindow *= 2
		}
	}
	s.starved = false
	return items, bytes
}

// releaseTaken drops the items taken and not returned (the caller gave up
// on them). Only the receiving goroutine calls it, with s.mu held.
func (s *stream) releaseTaken() {
	for _, p := range s.taken[s.next:] {
		putBuf(p)
	}
	clear(s.taken)
	s.taken, s.next, s.inTaken = s.taken[:0], 0, 0
}

// sendCredit grants the peer items and bytes more, if either is not 0.
func (s *stream) sendCredit(items, bytes uint32) {
	if items > 0 || bytes > 0 {
		s.e.sendCtx(s.ctx, &frame{kind: kindCredit, id: s.id, items: items, bytes: bytes}, nil) //nolint:errcheck // a failed send ends the stream anyway
	}
}

// decode unmarshals a received item into m and releases its buffer.
func (s *stream) decode(item *[]byte, m proto.Message) error {
	payload, _ := itemOf(item)
	err := s.e.codec.unmarshal(payload, m) // copies what it keeps
	putBuf(item)
	if err == nil {
		return nil
	}
	err = Errorf(CodeInvalidArgument, "decoding a stream item of %s: %v", s.spec.Procedure, err)
	if !s.caller {
		return err
	}
	s.abandon(CodeCanceled)
	return err
}

// closeSend half-closes the caller's requests.
func (s *stream) closeSend() error {
	if !s.caller {
		return nil
	}
	if !s.spec.Kind.streamsRequests() {
		s.mu.Lock()
		opened := s.opened
		s.mu.Unlock()
		if !opened {
			return Errorf(CodeInternal, "%s needs its request before CloseSend", s.spec.Procedure)
		}
		return nil // the Call frame carried the one request
	}
	s.sendMu.Lock()
	defer s.sendMu.Unlock()
	s.mu.Lock()
	if s.sendClosed || s.done {
		s.mu.Unlock()
		return nil
	}
	s.sendClosed = true
	s.mu.Unlock()
	return s.e.sendCtx(s.ctx, &frame{kind: kindEnd, id: s.id}, nil)
}

// deliver queues a received item, whose frame was frameBytes long. It
// runs on the reader goroutine.
func (s *stream) deliver(payload []byte, frameBytes int) {
	s.mu.Lock()
	if s.recvEnd || s.done {
		s.mu.Unlock()
		return
	}
	if uint32(len(s.recvq))+s.inTaken+s.consumed >= s.window {
		s.mu.Unlock()
		s.violate(Errorf(CodeResourceExhausted, "the peer sent stream items beyond its credit on %s", s.spec.Procedure))
		return
	}
	if s.byteWindow > 0 && s.e.peerWindowBytes > 0 && s.inBytes >= int64(s.byteWindow) {
		s.mu.Unlock()
		s.violate(Errorf(CodeResourceExhausted, "the peer sent stream items beyond its byte credit on %s", s.spec.Procedure))
		return
	}
	s.inBytes += int64(frameBytes)
	n := int64(len(payload))
	s.maxItem = max(s.maxItem, n)
	if limit := s.e.cfg.streamBufBytes; s.e.streamBuf.Add(n) > limit {
		s.e.streamBuf.Add(-n)
		s.mu.Unlock()
		s.violate(Errorf(CodeResourceExhausted, "stream items received and not yet read would exceed %d bytes on this connection (WithStreamBufferBytes) on %s", limit, s.spec.Procedure))
		return
	}
	s.queue(payload, frameBytes)
	// Wake the receiver only if it waits: one that is busy finds the item
	// when it next looks, and a channel operation per item would cost the
	// reader a cache-line transfer each.
	waiting := s.waiting
	s.waiting = false
	s.mu.Unlock()
	if waiting {
		wake(s.notify)
	}
}

// initWindows sets a new stream's windows (what this side grants) and
// credit (what the peer granted) from the configuration and the peer's
// Hello or Welcome.
func (s *stream) initWindows() {
	e := s.e
	s.window, s.credit = e.cfg.streamWindow, int64(e.peerWindow)
	s.byteWindow, s.byteCredit = e.cfg.streamWinBytes, int64(e.peerWindowBytes)
}

// growByteWindow reports whether a stream may double its byte window from
// n bytes: while, doubled, each live stream's stays within its share of
// half the connection's stream buffer bytes, and within streamWindowGrowth
// configured windows (and 1 GiB, so that it fits Credit.bytes).
func (e *endpoint) growByteWindow(n uint32) bool {
	doubled := 2 * int64(n)
	return doubled*max(1, e.liveStreams.Load()) <= e.cfg.streamBufBytes/2 &&
		doubled <= min(int64(e.cfg.streamWinBytes)*streamWindowGrowth, 1<<30)
}

// growWindow reports whether a stream may double its window from n items,
// taking n from the connection's budget (see streamWindowGrowth), for
// items of at most maxItem bytes. Each live stream may grow to its share
// of the budget, and of half the connection's stream buffer bytes, so
// that a few fast streams do not take it all from the others.
func (e *endpoint) growWindow(n uint32, maxItem int64) bool {
	live := max(1, e.liveStreams.Load())
	total := int64(e.cfg.streamWindow) * (streamWindowGrowth - 1)
	doubled := 2 * int64(n)
	extra := doubled - int64(e.cfg.streamWindow) // beyond the configured window
	if extra*live > total || doubled*live > e.cfg.streamBufBytes/2/max(1, maxItem) {
		return false
	}
	if e.windowBudget.Add(-int64(n)) >= 0 {
		return true
	}
	e.windowBudget.Add(int64(n))
	return false
}

// queue appends a copy of a received payload to the receive queue and
// counts it as this stream's share of the connection's buffered bytes,
// which the caller has added to e.streamBuf. frameBytes is what it cost in
// byte credit: its frame's length for an item, 0 for the request or reply
// of a Call or Reply frame. s.mu is held (or s is not shared yet).
func (s *stream) queue(payload []byte, frameBytes int) {
	s.recvq = append(s.recvq, copyPayload(payload, frameBytes))
	s.bufBytes += int64(len(payload))
}

// copyPayload copies a received payload out of the read buffer, which is
// reused, into a pooled buffer that recv releases, after a 4-byte header
// holding frameBytes (itemOf splits them).
func copyPayload(p []byte, frameBytes int) *[]byte {
	b := getBuf()
	*b = binary.LittleEndian.AppendUint32((*b)[:0], uint32(frameBytes))
	*b = append(*b, p...)
	return b
}

// itemOf returns a queued item's payload and what it cost in byte credit.
func itemOf(b *[]byte) (payload []byte, frameBytes uint32) {
	return (*b)[4:], binary.LittleEndian.Uint32(*b)
}

// violate ends a stream whose peer broke the flow-control rules.
func (s *stream) violate(err *Error) {
	if s.caller {
		s.finish(err)
		s.abandonWire(CodeCanceled)
		return
	}
	s.e.mu.Lock()
	if c := s.e.running[s.id]; c != nil {
		c.abandoned = true
	}
	s.e.mu.Unlock()
	s.finish(err)
	s.e.sendError(s.id, err)
}

// endRecv marks the peer's direction ended (StreamEnd from a caller).
func (s *stream) endRecv() {
	s.mu.Lock()
	if !s.recvEnd {
		s.recvEnd, s.recvErr = true, io.EOF
	}
	s.mu.Unlock()
	wake(s.notify)
}

// addCredit grants this side more sends: items and bytes more.
func (s *stream) addCredit(items, bytes uint32) {
	s.mu.Lock()
	s.credit += int64(items)
	s.byteCredit += int64(bytes)
	s.mu.Unlock()
	wake(s.creditCh)
}

// complete ends a caller's stream with the callee's Reply or Error.
func (s *stream) complete(f *frame) {
	s.e.mu.Lock()
	delete(s.e.streams, s.id)
	s.e.mu.Unlock()
	s.mu.Lock()
	if f.kind == kindReply && f.hasPayload {
		s.e.streamBuf.Add(int64(len(f.payload))) // counted like an item until finish
		s.queue(f.payload, 0)
	}
	s.mu.Unlock()
	if f.kind == kindError {
		s.finish(s.e.callError(f))
	} else {
		s.finish(io.EOF)
	}
}

// finish records the call's outcome: receivers get err after the queued
// items, senders get io.EOF.
func (s *stream) finish(err error) {
	s.mu.Lock()
	if s.done {
		s.mu.Unlock()
		return
	}
	s.done = true
	if !s.recvEnd || err != io.EOF {
		s.recvEnd, s.recvErr = true, err
	}
	grown := s.window - s.e.cfg.streamWindow
	// Items still queued no longer count against the connection: no more
	// can come on this stream, and settle stops counting once done is set.
	s.e.streamBuf.Add(-s.bufBytes)
	s.bufBytes = 0
	stop := s.stop
	s.mu.Unlock()
	s.e.windowBudget.Add(int64(grown))
	s.e.liveStreams.Add(-1)
	if stop != nil {
		stop()
	}
	if s.stopTimer != nil {
		defer s.stopTimer()
	}
	wake(s.notify)
	wake(s.creditCh)
	if err == io.EOF {
		s.cancel(nil) // a finished call's context ends too
	} else {
		s.cancel(err)
	}
}

// abandon gives up a caller's stream: the peer is told, and local
// receivers get why.
func (s *stream) abandon(why Code) {
	if !s.caller {
		return
	}
	s.mu.Lock()
	done, opened := s.done, s.opened
	s.mu.Unlock()
	if done {
		return
	}
	s.e.mu.Lock()
	delete(s.e.streams, s.id)
	s.e.mu.Unlock()
	var err *Error
	if why == CodeDeadlineExceeded {
		err = Errorf(CodeDeadlineExceeded, "%s: deadline exceeded", s.spec.Procedure)
	} else {
		err = Errorf(why, "%s: the caller ended the stream", s.spec.Procedure)
	}
	if cause, ok := context.Cause(s.ctx).(*Error); ok {
		err = cause
	}
	s.mu.Lock()
	for _, p := range s.recvq {
		putBuf(p)
	}
	s.recvq = nil // the caller gave up: drop what it did not read
	s.drop = true
	s.mu.Unlock()
	s.finish(err)
	if opened {
		s.abandonWire(why)
	}
}

func (s *stream) abandonWire(why Code) {
	s.e.mu.Lock()
	delete(s.e.streams, s.id)
	s.e.mu.Unlock()
	s.e.sendCancel(s.id, why)
}

// acceptStream starts the handler of an incoming streaming call. It runs on
// the reader goroutine, after acceptCall's checks.
func (e *endpoint) acceptStream(f *frame, m *Method, ci *CallInfo) {
	// A request in the Call of a method that streams its requests is a
	// client's mistake (an empty payload field is not: Go writes one in
	// every Call).
	if m.spec.Kind.streamsRequests() && len(f.payload) > 0 {
		e.sendError(f.id, Errorf(CodeInvalidArgument, "%s streams its requests: send them as stream items, not in the call", m.spec.Procedure))
		return
	}
	e.mu.Lock()
	if e.draining {
		e.mu.Unlock()
		e.refuseNotRun(f.id, "server is shutting down")
		return
	}
	if e.openStreams >= e.cfg.maxStreams {
		e.mu.Unlock()
		e.sendError(f.id, Errorf(CodeResourceExhausted, "more than %d streams open on this connection", e.cfg.maxStreams))
		return
	}
	if e.running[f.id] != nil || e.streams[f.id] != nil {
		// As acceptCall refuses a unary Call: the call already running
		// keeps its id (replacing its entries would leave it none).
		e.mu.Unlock()
		e.sendError(f.id, Errorf(CodeInvalidArgument, "call id %d is already in flight", f.id))
		return
	}
	ctx, cancel := context.WithCancelCause(e.ctx)
	stopTimer := context.CancelFunc(func() {})
	if f.timeoutMs > 0 {
		ctx, stopTimer = context.WithTimeout(ctx, time.Duration(f.timeoutMs)*time.Millisecond)
	}
	s := &stream{
		e: e, id: f.id, spec: m.spec, ctx: withCallInfo(ctx, ci), cancel: cancel, stopTimer: stopTimer,
		notify: make(chan struct{}, 1), creditCh: make(chan struct{}, 1),
	}
	s.initWindows()
	if !m.spec.Kind.streamsRequests() {
		// The one request came in the Call frame; it counts like an item
		// until read.
		e.streamBuf.Add(int64(len(f.payload)))
		s.queue(f.payload, 0)
		s.recvEnd, s.recvErr = true, io.EOF
	}
	e.streams[f.id] = s
	e.liveStreams.Add(1)
	e.running[f.id] = &incomingCall{cancelFn: cancel, hasDeadline: f.timeoutMs > 0}
	e.openStreams++
	e.lastAccepted = max(e.lastAccepted, f.id)
	e.handlers.Add(1)
	e.mu.Unlock()
	go e.runStream(s, m, ci)
}

func (e *endpoint) runStream(s *stream, m *Method, ci *CallInfo) {
	defer e.handlers.Done()
	res, err := e.runStreamSafely(s.ctx, m, s, ci)
	e.mu.Lock()
	c := e.running[s.id]
	delete(e.running, s.id)
	delete(e.streams, s.id)
	if !c.slotFreed {
		e.openStreams--
	}
	e.mu.Unlock()
	abandoned := c.abandoned
	s.finish(io.EOF)
	if abandoned || e.ctx.Err() != nil {
		return
	}
	if err != nil {
		f := errorFrame(s.id, asError(err))
		f.method = s.spec.Procedure
		e.send(f, nil)
		return
	}
	e.send(&frame{kind: kindReply, id: s.id, method: s.spec.Procedure, hasPayload: res != nil}, res)
}

func (e *endpoint) runStreamSafely(ctx context.Context, m *Method, s *stream, ci *CallInfo) (res proto.Message, err error) {
	defer func() {
		if r := recover(); r != nil {
			e.log.Error("parley: handler panicked", "method", ci.Spec.Procedure, "panic", fmt.Sprint(r))
			res, err = nil, Errorf(CodeInternal, "%s panicked", ci.Spec.Procedure)
		}
	}()
	return m.stream(ctx, &Stream{s: s})
}

// sendCtx encodes and queues a frame, waiting for room until ctx ends. A
// Call or StreamItem larger than the socket's send limit is not sent: it
// fails with resource_exhausted (wrapping errTooLarge), naming f.method.
func (e *endpoint) sendCtx(ctx context.Context, f *frame, msg proto.Message) error {
	_, err := e.sendSized(ctx, f, msg)
	return err
}

// sendSized is sendCtx that also returns the size of the frame queued (0
// when none was).
func (e *endpoint) sendSized(ctx context.Context, f *frame, msg proto.Message) (int, error) {
	b := getBuf()
	var err error
	*b, err = e.appendFrame((*b)[:0], f, msg)
	if err != nil {
		putBuf(b)
		// Only a message can fail to encode: the application's to send.
		return 0, Errorf(CodeInvalidArgument, "encoding a %v frame: %v", f.kind, err)
	}
	n := len(*b)
	if n > e.sendMax && (f.kind == kindCall || f.kind == kindItem) {
		putBuf(b)
		what := ": the request"
		if f.kind == kindItem {
			what = ": a stream item"
		}
		return 0, e.tooLarge(f.method+what, n)
	}
	if err := e.q.push(ctx, b, true); err != nil {
		putBuf(b)
		if err == errQueueClosed {
			e.mu.Lock()
			defer e.mu.Unlock()
			if e.closeErr != nil {
				return 0, e.closeErr
			}
			return 0, NewError(CodeUnavailable, "connection closed")
		}
		return 0, asError(err)
	}
	return n, nil
}
