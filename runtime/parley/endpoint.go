package parley

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"
	"google.golang.org/protobuf/proto"
)

// Close codes Parley uses besides the standard ones.
const (
	closeNormal       = websocket.CloseNormalClosure
	closeGoingAway    = websocket.CloseGoingAway
	closeProtocol     = websocket.CloseProtocolError
	closeUnsupported  = websocket.CloseUnsupportedData
	closeWriteTimeout = 4000 // the peer did not take our writes in time
)

// closeGrace is how long a closing side waits for the peer to answer its
// close frame before it drops the TCP connection.
const closeGrace = time.Second

// errPeerCanceled is the cause of a handler context the peer cancelled.
var errPeerCanceled = errors.New("parley: call canceled by the caller")

// endpoint is one end of a Parley WebSocket, server or client: it runs the
// handlers of calls the peer makes and correlates the calls this side makes.
//
// Goroutines: one reader at a time runs readLoop: the owner (the server's
// serveConn, or the goroutine Dial starts), or a stand-in it handed
// reading to while it ran a call itself (runInline); the last reader tears
// down and runs afterRead. One writer at a time holds the queue's writing
// flag: a writer goroutine the queue starts (writeLoop), a caller or
// handler that queued a frame when none wrote (writeOwned), or the
// Server's flusher; none of the last two waits for the socket. Incoming
// calls run in a goroutine each (or on the reader, alone), tracked by
// handlers, whose context ends no later than the session. done is closed
// once the reader and writer have both finished.
//
// Any goroutine may call invoke and closeWith. mu guards pending, running,
// inFlight, draining, lastAccepted and closeErr.
type endpoint struct {
	ws    *websocket.Conn
	bc    *batchConn
	codec codec
	side  Side
	cfg   *config
	log   *slog.Logger

	// methods finds the implementation of an incoming call, or nil.
	methods    func(procedure []byte) *Method
	peer       *Peer    // the server's handle on this connection; nil on clients
	sess       *session // the session this socket serves; nil on clients
	resumeFrom uint64   // the last event offset the client saw, when resuming
	sessionID  string   // client: the session this socket joined
	// peerSaidBye is set by the reader before it ends when the peer closed
	// with 1000 or 1001: a deliberate goodbye, not a drop.
	peerSaidBye bool
	events      *eventRunner // runs a client's event handlers in order
	handle      UnaryFunc    // the interceptor chain ending in the method

	ctx    context.Context // ends when the socket closes
	cancel context.CancelCauseFunc

	q     *sendQueue
	batch []outFrame // the writer's batch, reused
	flush *flusher   // writes the server's events; nil on clients
	// unflushed is set when the flusher left bytes the socket did not
	// take in the connection's buffer, for the writer to write first.
	// Only the goroutine holding the writer role touches it.
	unflushed bool
	callSeq   *atomic.Uint64 // shared by a client's successive sockets
	// goAwayID is the GoAway's last accepted id: calls above it that the
	// server refused were never run.
	goAwayID uint64
	onGoAway func()        // client: start reconnecting
	sem      chan struct{} // bounds outgoing calls; nil for no bound
	// sendMax is the largest message this side sends on the socket: its
	// own WithMaxMessageBytes, lowered to the peer's advertised limit
	// (Hello or Welcome max_message_bytes) when it set one. Set before the
	// socket starts, then only read.
	sendMax int
	// readMax is the largest message this side reads: its
	// WithMaxMessageBytes, and less during a server's handshake (see
	// helloLimit). Only the reader touches it.
	readMax int
	// windowBudget is the items stream windows may still grow by (see
	// streamWindowGrowth).
	windowBudget atomic.Int64
	// aliveAt is when the read deadline was last moved (see alive); only
	// the reader touches it.
	aliveAt time.Time
	// streamBuf is the bytes of stream items received and not yet read,
	// all streams together (see WithStreamBufferBytes).
	streamBuf   atomic.Int64
	liveStreams atomic.Int64 // streams registered and not finished

	mu          sync.Mutex
	pending     map[uint64]*pendingCall
	streams     map[uint64]*stream // open streams, both directions
	openStreams int                // streams the peer opened
	peerWindow  uint32             // the peer's stream window: our initial credit
	// peerWindowBytes is the peer's byte window per stream, our initial
	// byte credit; 0: the peer sets none (and, being from before byte
	// credit, does not keep to ours either).
	peerWindowBytes uint32
	running         map[uint64]*incomingCall
	inFlight        int
	draining        bool   // refuse new incoming calls with unavailable
	goneAway        string // the peer sent GoAway with this reason
	lastAccepted    uint64
	closing         atomic.Bool // set under mu, read without it (isClosing: every message)
	closeCode       int         // the close frame's code, once closing
	closeReason     string      // and its reason
	closeErr        error       // why outgoing calls fail once closed

	pingTimer *time.Timer // guarded by mu
	afterRead func()      // run by the last reader once the endpoint is done; set before reading
	rhdr      [8]byte     // readMessage's scratch for frame headers; the reader's
	// reader, inlineSince, standIn and standInArmed hand reading over
	// while the reader runs a call (see runInline). The reader creates
	// standIn.
	reader       atomic.Uint64
	inlineSince  atomic.Int64 // when the call running inline began, in Unix ns
	standIn      *time.Timer
	standInArmed atomic.Bool
	handlers     sync.WaitGroup
	readerDone   chan struct{}
	writerExited chan struct{}
	done         chan struct{}
}

func newEndpoint(ws *websocket.Conn, bc *batchConn, c codec, side Side, cfg *config) *endpoint {
	ctx, cancel := context.WithCancelCause(context.Background())
	e := &endpoint{
		ws: ws, bc: bc, codec: c, side: side, cfg: cfg, log: cfg.logger,
		callSeq: new(atomic.Uint64),
		ctx:     ctx, cancel: cancel,

		pending:      make(map[uint64]*pendingCall),
		streams:      make(map[uint64]*stream),
		peerWindow:   DefaultStreamWindow,
		running:      make(map[uint64]*incomingCall),
		readerDone:   make(chan struct{}),
		writerExited: make(chan struct{}),
		done:         make(chan struct{}),
		sendMax:      cfg.maxMessageBytes,
		readMax:      cfg.maxMessageBytes,
	}
	e.windowBudget.Store(int64(cfg.streamWindow) * (streamWindowGrowth - 1))
	e.q = newSendQueue(cfg.sendQueueBytes, e.writeLoop, cfg.writeDelay > 0 || bc.raw == nil)
	e.handle = chain(func(ctx context.Context, req proto.Message) (proto.Message, error) {
		ci, _ := CallInfoFromContext(ctx)
		return ci.method.call(ctx, req)
	}, cfg.interceptors)
	return e
}

// nextID returns a fresh call id: odd for clients, even for servers.
func (e *endpoint) nextID() uint64 {
	n := e.callSeq.Add(1)
	if e.side == SideClient {
		return 2*n - 1
	}
	return 2 * n
}

// start launches the writer. The caller then runs readLoop.
func (e *endpoint) start() {
	e.alive()
	e.bc.reader.onData = e.readProgress
	e.mu.Lock()
	e.pingTimer = time.AfterFunc(e.cfg.pingInterval, e.ping)
	e.mu.Unlock()
}

// alive moves the read deadline to a keepalive period from now: the peer
// is dead if nothing comes from it (not a pong, not a byte) for that long.
// Only the reader calls it, once the handshake is done.
func (e *endpoint) alive() {
	e.aliveAt = time.Now()
	_ = e.ws.SetReadDeadline(e.aliveAt.Add(e.cfg.pingInterval + e.cfg.pongTimeout))
}

// readProgress is the read-ahead's onData: bytes from the peer show it is
// alive as a pong does, so a message that takes longer than the keepalive
// period to arrive over a slow link (with the peer's pong queued behind
// it) does not look like a dead peer. Re-arming the deadline costs a timer
// update, so it is moved at most every half period.
func (e *endpoint) readProgress() {
	if time.Since(e.aliveAt) >= (e.cfg.pingInterval+e.cfg.pongTimeout)/2 {
		e.alive()
	}
}

// ping queues a WebSocket ping and schedules the next.
func (e *endpoint) ping() {
	if e.q.pushFrame(e.ctx, outFrame{ping: true}, false) != nil {
		return // closing
	}
	e.mu.Lock()
	if !e.closing.Load() {
		e.pingTimer.Reset(e.cfg.pingInterval)
	}
	e.mu.Unlock()
}

// writeLoop sends queued frames in batches. The queue starts it when a
// frame arrives and none runs (or a goroutine that wrote without waiting
// hands over to it); it exits when the queue is empty, so idle connections
// have no writer. Only the goroutine holding the writer role (the queue's
// writing flag) writes, and it alone touches e.batch and e.unflushed. The
// last writer, which finds the queue closed (or fails a write), sends the
// close frame, drops the connection and closes writerExited.
func (e *endpoint) writeLoop() {
	if d := e.cfg.writeDelay; d > 0 {
		time.Sleep(d) // gather more frames for the first write (WithWriteDelay)
	}
	for spins := 0; ; {
		// Let the goroutines woken with this one (handlers answering the
		// same read, callers sending at once) queue their frames too, so
		// that one write carries them all.
		runtime.Gosched()
		var closed bool
		e.batch, closed = e.q.take(e.batch)
		if len(e.batch) > 0 || e.unflushed {
			spins = 0
			e.unflushed = false
			if err := e.writeBatch(e.batch); err != nil {
				code := closeNormal
				if errors.Is(err, errWriteTimeout) {
					code = closeWriteTimeout
				}
				e.writeFailed(err, code)
				return
			}
		}
		if closed {
			e.mu.Lock()
			code, reason := e.closeCode, e.closeReason
			e.mu.Unlock()
			msg := websocket.FormatCloseMessage(code, reason)
			if err := e.ws.WriteControl(websocket.CloseMessage, msg, time.Now().Add(e.cfg.writeTimeout)); err == nil {
				// Wait for the peer's close frame, which ends the reader.
				t := time.NewTimer(closeGrace)
				select {
				case <-e.readerDone:
				case <-t.C:
				}
				t.Stop()
			}
			e.lastWriter()
			return
		}
		// Linger a moment for more (a reply usually follows the request
		// just read), then exit if there is nothing.
		if spins++; spins > 2 && e.q.idle() {
			return
		}
	}
}

// writeFrames frames batch for this side (see batchConn.writeFrames).
func (e *endpoint) writeFrames(batch []outFrame, wait bool) (buffered bool, err error) {
	return e.bc.writeFrames(batch, byte(e.codec.messageType()), e.side == SideClient, wait)
}

func (e *endpoint) writeFailed(err error, code int) {
	e.log.Warn("parley: write failed", "side", e.side, "err", err, "close_code", code)
	e.fail(fmt.Errorf("parley: write: %w", err))
	e.lastWriter()
}

// maxOwnedBatches is how many batches a goroutine that became the writer
// by pushing (writeOwned) writes before it hands over to a writer
// goroutine, so that a caller or handler is not kept writing for others.
const maxOwnedBatches = 4

// writeOwned writes in the calling goroutine, which a push made the writer
// (see sendQueue.pushOwning): a handler that just queued its reply, or a
// caller that just queued its call, sends it itself rather than waking a
// writer goroutine to do it, which saves a goroutine hand-off per message
// when calls come one at a time. Frames queued meanwhile go out in the same
// batches. It never waits for the socket (a caller's deadline must not wait
// on it): what the socket does not take at once, and anything after
// maxOwnedBatches, is left to a writer goroutine.
//
// Before each batch it yields, as writeLoop does, so that goroutines woken
// with it queue their frames into the same write. A handler's reply skips
// the first yield when nothing else is at work on the connection
// (yieldFirst false, see alone): there is nobody to wait for, and the yield
// wakes an idle thread (a futex call) to find nothing. Across processes
// that cost a client at one call in flight about as much as the call (Go
// and Node clients, 4-38 % more calls/s without it; bench/RESULTS.md).
// Callers keep it: with client and server in one process it is the
// server's reply that the woken thread finds.
func (e *endpoint) writeOwned(yieldFirst bool) {
	for i := range maxOwnedBatches {
		if i > 0 || yieldFirst {
			runtime.Gosched()
		}
		if !e.writeQueued() {
			return
		}
	}
	go e.writeLoop()
}

// alone reports whether no call runs or awaits an answer on e and no
// stream is open: nothing else may be about to queue a frame.
func (e *endpoint) alone() bool {
	e.mu.Lock()
	n := e.inFlight + len(e.pending)
	e.mu.Unlock()
	return n == 0 && e.liveStreams.Load() == 0
}

// writeQueued writes what the queue holds without waiting for the socket,
// for the goroutine holding the writer role without being the writer
// goroutine (writeOwned, the Server's flusher). It reports whether more
// frames came meanwhile, the role still held; otherwise the role is given
// up, or handed to a writer goroutine that finishes what the socket did
// not take, or closes the connection.
func (e *endpoint) writeQueued() (more bool) {
	var closed bool
	e.batch, closed = e.q.take(e.batch)
	buffered, err := e.writeFrames(e.batch, false)
	switch {
	case err != nil:
		e.writeFailed(err, closeNormal)
		return false
	case buffered || closed:
		e.unflushed = buffered
		go e.writeLoop()
		return false
	}
	return !e.q.idle()
}

// lastWriter ends writing for good: the connection is dropped, which also
// unblocks a reader whose peer never answers the close.
func (e *endpoint) lastWriter() {
	e.q.finish()
	e.q.discard()
	_ = e.bc.Conn.Close()
	close(e.writerExited)
}

var errWriteTimeout = errors.New("write timed out")

func (e *endpoint) writeBatch(batch []outFrame) error {
	e.bc.extendWriteDeadline(e.cfg.writeTimeout)
	_, err := e.writeFrames(batch, true)
	if err != nil && isTimeout(err) {
		return fmt.Errorf("%w: %v", errWriteTimeout, err)
	}
	return err
}

func isTimeout(err error) bool {
	var t interface{ Timeout() bool }
	return errors.As(err, &t) && t.Timeout()
}

// readLoop reads and dispatches frames until the socket fails or closes,
// then tears the endpoint down. The first frame has been read already
// (Hello or Welcome). A reader that runs a call itself may hand reading
// over to a stand-in (see runInline); it then returns at once, and the
// stand-in's readLoop tears down.
func (e *endpoint) readLoop() {
	gen := e.reader.Load() >> 1
	var err error
	for {
		// A message buffer (when the message is not read in place) and
		// the decoded frame come from pools only while a message is read
		// and dispatched, so an idle connection holds neither.
		var buf *[]byte
		typ, msg, rerr := e.readMessage(&buf)
		if rerr != nil {
			if buf != nil {
				putBuf(buf)
			}
			err = rerr
			break
		}
		f := framePool.Get().(*frame)
		e.handleMessage(typ, msg, f)
		*f = frame{}
		framePool.Put(f)
		if buf != nil {
			putBuf(buf)
		}
		if e.reader.Load()>>1 != gen {
			return // a stand-in reads now
		}
	}
	var ce *websocket.CloseError
	if errors.As(err, &ce) && (ce.Code == closeNormal || ce.Code == closeGoingAway) {
		e.peerSaidBye = true // the client is done: its session need not wait
	}
	e.fail(err)
	close(e.readerDone)
	<-e.writerExited
	close(e.done)
	if e.afterRead != nil {
		e.afterRead()
	}
}

// inlineBudget is how long the reader runs a call itself before a
// stand-in takes over reading (see runInline).
const inlineBudget = time.Millisecond

// runInline runs a call on the reader's goroutine, which read it: when no
// other call runs, handing it to another goroutine (and the wake-up of an
// idle thread that comes with it) would cost more than most handlers do; a process
// serving calls one at a time spends most of its time in such wake-ups.
// If the handler is still running after inlineBudget, a stand-in reader
// takes over (checkInline), so a slow handler holds up the connection's
// other frames by a millisecond or two at most; one that calls the peer
// hands reading over at once (needReader). This goroutine then finishes
// its call and leaves reading to the stand-in.
//
// e.reader holds the reader's generation times two, plus one while the
// reader runs a call: finishing and a stand-in's start race on it, and a
// stand-in is a new generation. The stand-in timer is not stopped after
// each call (a timer set or stopped sooner than the poller's next wake-up
// costs a thread wake-up); it fires at most once per inlineBudget while
// calls run inline, and is armed again only by the next inline call.
func (e *endpoint) runInline(c *callCtx) {
	gen := e.reader.Load() >> 1
	e.inlineSince.Store(time.Now().UnixNano())
	e.reader.Store(gen<<1 | 1)
	if e.standInArmed.CompareAndSwap(false, true) {
		if e.standIn == nil {
			e.standIn = time.AfterFunc(inlineBudget, e.checkInline)
		} else {
			e.standIn.Reset(inlineBudget)
		}
	}
	e.runCall(c)
	e.reader.CompareAndSwap(gen<<1|1, gen<<1)
}

// checkInline is the stand-in timer's: if the reader has run one call
// for inlineBudget, its goroutine becomes the reader.
func (e *endpoint) checkInline() {
	e.standInArmed.Store(false)
	v := e.reader.Load()
	if v&1 == 0 {
		return // no call runs inline; the next one arms the timer
	}
	if left := inlineBudget - time.Duration(time.Now().UnixNano()-e.inlineSince.Load()); left > 0 {
		if e.standInArmed.CompareAndSwap(false, true) {
			e.standIn.Reset(left)
		}
		return
	}
	if e.takeReading(v) {
		e.readLoop()
	}
}

// takeReading makes the calling goroutine the next reader generation, if
// the reader still runs a call as v says.
func (e *endpoint) takeReading(v uint64) bool {
	return v&1 == 1 && e.reader.CompareAndSwap(v, (v>>1+1)<<1)
}

// needReader hands reading over to a new goroutine at once if the reader
// runs a call: whoever is about to wait for the peer needs the socket
// read, and the call running inline may be the one waiting.
func (e *endpoint) needReader() {
	if e.takeReading(e.reader.Load()) {
		go e.readLoop()
	}
}

// framePool holds the frames readers decode messages into.
var framePool = sync.Pool{New: func() any { return new(frame) }}

// handleMessage decodes and dispatches one message. Nothing may keep data
// after it returns: the buffer goes back to the pool.
func (e *endpoint) handleMessage(typ int, data []byte, f *frame) {
	if e.isClosing() {
		return // drain until the peer acknowledges our close
	}
	if typ != e.codec.messageType() {
		e.closeWith(closeUnsupported, fmt.Sprintf("%s carries %s messages", e.codec.subprotocol(), messageTypeName(e.codec.messageType())))
		return
	}
	if err := e.codec.decodeFrame(data, f); err != nil {
		e.log.Warn("parley: undecodable frame", "side", e.side, "err", err)
		e.closeWith(closeProtocol, truncateReason(err.Error()))
		return
	}
	f.size = len(data)
	e.dispatch(f)
}

func messageTypeName(t int) string {
	if t == websocket.TextMessage {
		return "text"
	}
	return "binary"
}

// truncateReason fits a close reason into a control frame (123 bytes).
func truncateReason(s string) string {
	if len(s) > 120 {
		return s[:120]
	}
	return s
}

// isClosing reports whether the endpoint began closing. The reader asks it
// of every message, without taking mu, which the handlers' and streams'
// goroutines take too.
func (e *endpoint) isClosing() bool { return e.closing.Load() }

// dispatch handles one frame. It runs on the reader goroutine and must not
// block on the network.
func (e *endpoint) dispatch(f *frame) {
	switch f.kind {
	case kindCall:
		e.acceptCall(f)
	case kindReply, kindError:
		e.mu.Lock()
		s := e.streams[f.id]
		e.mu.Unlock()
		if s != nil && s.caller {
			s.complete(f)
			return
		}
		e.complete(f)
	case kindItem, kindEnd, kindCredit:
		e.mu.Lock()
		s := e.streams[f.id]
		e.mu.Unlock()
		if s == nil {
			return // a stream that already ended
		}
		switch f.kind {
		case kindItem:
			s.deliver(f.payload, f.size)
		case kindEnd:
			if !s.caller {
				s.endRecv()
			}
		case kindCredit:
			s.addCredit(f.items, f.bytes)
		}
	case kindCancel:
		if !e.cancelIncoming(f.id, f.code) && e.sess != nil {
			e.sess.cancelCall(f.id, f.code) // a call that came on an earlier socket
		}
	case kindPing:
		e.send(&frame{kind: kindPong, nonce: f.nonce}, nil)
	case kindPong:
	case kindGoAway:
		e.mu.Lock()
		e.goneAway = f.message
		if e.goneAway == "" {
			e.goneAway = "going away"
		}
		e.goAwayID = f.id
		e.mu.Unlock()
		e.log.Info("parley: peer is going away", "side", e.side, "reason", f.message)
		if e.onGoAway != nil {
			e.onGoAway()
		}
	case kindUnknown:
		// A kind from a newer peer (kinds are only added within v1):
		// answered when it has an id, else ignored (frame.proto's
		// compatibility rule).
		if f.id != 0 {
			e.sendError(f.id, Errorf(CodeInvalidArgument, "frame kind %s is not known to this %s", f.message, e.side))
		}
	case kindHello, kindWelcome:
		e.violation(f.kind.String() + " after the handshake")
	case kindEvent:
		e.acceptEvent(f)
	default:
		e.log.Debug("parley: unknown frame kind ignored", "side", e.side, "kind", f.kind)
	}
}

// acceptCall starts a handler for an incoming call, or answers it with an
// error at once.
func (e *endpoint) acceptCall(f *frame) {
	peerParity := uint64(0) // a server's peer sends odd ids
	if e.side == SideServer {
		peerParity = 1
	}
	if f.id == 0 {
		e.violation("a call with id 0: call ids start at 1")
		return
	}
	if f.id%2 != peerParity {
		e.sendError(f.id, Errorf(CodeInvalidArgument, "call id %d has the wrong parity: %s calls use %s ids", f.id, peerSide(e.side), map[uint64]string{0: "even", 1: "odd"}[peerParity]))
		return
	}
	if n := metadataBytes(f.metadata); n > e.cfg.maxMetadataBytes {
		e.sendError(f.id, Errorf(CodeResourceExhausted, "the call's metadata is %d bytes, the limit %d", n, e.cfg.maxMetadataBytes))
		return
	}
	var m *Method
	if e.methods != nil {
		m = e.methods(f.procedure())
	}
	if m == nil {
		e.sendError(f.id, Errorf(CodeUnimplemented, "method %q is not implemented", f.procedure()))
		return
	}
	if m.event {
		e.sendError(f.id, Errorf(CodeInvalidArgument, "%s is an event: it is published, not called", m.spec.Procedure))
		return
	}
	if m.stream != nil {
		ci := &CallInfo{Spec: m.spec, Side: e.side, ID: f.id, Metadata: interceptedMetadata(f.metadata, e.cfg.interceptors), Peer: e.peer, method: m}
		e.mu.Lock()
		draining := e.draining
		e.mu.Unlock()
		if draining {
			e.refuseNotRun(f.id, "server is shutting down")
			return
		}
		e.acceptStream(f, m, ci)
		return
	}
	req := m.newReq()
	if f.hasPayload {
		if err := e.codec.unmarshal(f.payload, req); err != nil {
			e.sendError(f.id, Errorf(CodeInvalidArgument, "decoding the request of %s: %v", m.spec.Procedure, err))
			return
		}
	}
	e.mu.Lock()
	switch {
	case e.draining:
		e.mu.Unlock()
		e.refuseNotRun(f.id, "server is shutting down")
		return
	case e.inFlight >= e.cfg.maxInFlight:
		e.mu.Unlock()
		e.sendError(f.id, Errorf(CodeResourceExhausted, "more than %d calls in flight on this connection", e.cfg.maxInFlight))
		return
	case e.running[f.id] != nil:
		e.mu.Unlock()
		e.sendError(f.id, Errorf(CodeInvalidArgument, "call id %d is already in flight", f.id))
		return
	}
	parent := e.ctx
	if e.sess != nil {
		parent = e.sess.ctx // calls outlive the socket when the session resumes
	}
	c := &callCtx{ci: CallInfo{Spec: m.spec, Side: e.side, ID: f.id, Metadata: interceptedMetadata(f.metadata, e.cfg.interceptors), Peer: e.peer, method: m}, parent: parent, req: req}
	if f.timeoutMs > 0 {
		c.hasDeadline, c.deadline = true, time.Now().Add(time.Duration(f.timeoutMs)*time.Millisecond)
	}
	e.running[f.id] = &incomingCall{call: c, hasDeadline: c.hasDeadline}
	e.inFlight++
	e.lastAccepted = max(e.lastAccepted, f.id)
	// Added under mu, with draining checked: Shutdown waits for handlers
	// only once draining is set, so no Add can race its Wait.
	e.handlers.Add(1)
	// Alone: no other call runs, and no more bytes wait in the read-ahead
	// (a burst of calls runs concurrently, and its replies share writes).
	alone := e.inFlight == 1 && !e.bc.reader.buffered()
	e.mu.Unlock()
	if e.sess != nil && !e.sess.claimCall(e, f.id, m.spec.Procedure) {
		// A call re-sent after a reconnect that ran (or runs) already.
		e.mu.Lock()
		delete(e.running, f.id)
		e.inFlight--
		e.mu.Unlock()
		e.handlers.Done()
		return
	}
	if alone {
		e.runInline(c)
		return
	}
	e.runCallAsync(c)
}

// violation answers a well-formed frame the protocol forbids after the
// handshake as the handshake's own refusals are answered: an Error with id
// 0, which concerns the connection, then the close (1002).
func (e *endpoint) violation(reason string) {
	e.sendError(0, NewError(CodeInvalidArgument, reason))
	e.closeWith(closeProtocol, truncateReason(reason))
}

// cancelIncoming handles the caller giving up on call id; it reports
// whether the call runs on this socket.
func (e *endpoint) cancelIncoming(id uint64, why Code) bool {
	e.mu.Lock()
	c := e.running[id]
	if c != nil {
		c.abandoned = true
		if c.call == nil && !c.slotFreed {
			c.slotFreed = true
			e.openStreams--
		}
	}
	e.mu.Unlock()
	// A caller that gave up at the deadline leaves the handler to its own
	// copy of that deadline, so it sees deadline_exceeded.
	if c != nil && (why != CodeDeadlineExceeded || !c.hasDeadline) {
		c.cancel(errPeerCanceled)
	}
	return c != nil
}

func peerSide(s Side) Side {
	if s == SideServer {
		return SideClient
	}
	return SideServer
}

// runCall runs one incoming call and sends its outcome.
func (e *endpoint) runCall(c *callCtx) {
	if w := e.runCallAndAnswer(c); w != nil {
		w.writeOwned(!w.alone())
	}
}

// runCallAndAnswer runs one incoming call and queues its outcome; it
// returns the endpoint whose writer the caller must then be, if the
// answer made it so (see writeOwned). The handler is Done before that
// write: Shutdown waits for answers to be queued, not written.
func (e *endpoint) runCallAndAnswer(c *callCtx) *endpoint {
	defer e.handlers.Done()
	id := c.ci.ID
	res, err := e.callSafely(c, &c.ci, c.req)
	// Free the call's slot before answering: the client reuses it as soon
	// as the answer arrives.
	e.mu.Lock()
	abandoned := e.running[id].abandoned
	delete(e.running, id)
	e.inFlight--
	e.mu.Unlock()
	c.cancel(context.Canceled)
	var perr *Error
	if err != nil {
		perr = asError(err)
	}
	if e.sess != nil {
		return e.sess.finishCall(id, res, perr, abandoned)
	}
	if abandoned || e.ctx.Err() != nil {
		return nil // the caller is gone; the wire stays quiet for this id
	}
	if w, _ := e.sendOutcome(id, c.ci.Spec.Procedure, res, perr, true); w {
		return e
	}
	return nil
}

func (e *endpoint) callSafely(ctx context.Context, ci *CallInfo, req proto.Message) (res proto.Message, err error) {
	defer func() {
		if r := recover(); r != nil {
			e.log.Error("parley: handler panicked", "method", ci.Spec.Procedure, "panic", r, "stack", string(debug.Stack()))
			res, err = nil, Errorf(CodeInternal, "%s panicked", ci.Spec.Procedure)
		}
	}()
	return e.handle(ctx, req)
}

// send encodes f (with msg as its payload, if non-nil) and queues it,
// waiting for room in the send queue. Whether an oversized outcome was
// replaced matters to sessions only (sendOutcome).
func (e *endpoint) send(f *frame, msg proto.Message) { e.sendOwning(f, msg, false) }

// sendOwning is send; with own set, a writer that must start is left to
// the caller, and sendOwning reports true: the caller must call writeOwned.
// A Reply or Error larger than the socket's send limit (sendMax) is not
// sent: an Error(resource_exhausted) saying so goes instead, and is
// returned as replaced (f.method, when set, names the call in it).
func (e *endpoint) sendOwning(f *frame, msg proto.Message, own bool) (writer bool, replaced *Error) {
	b := getBuf()
	var err error
	*b, err = e.appendFrame((*b)[:0], f, msg)
	if err != nil {
		putBuf(b)
		if f.kind == kindReply {
			ef := errorFrame(f.id, Errorf(CodeInternal, "encoding the response: %v", err))
			ef.method = f.method
			return e.sendOwning(ef, nil, own)
		}
		e.log.Error("parley: encoding a frame", "kind", f.kind, "err", err)
		return false, nil
	}
	if len(*b) > e.sendMax && (f.kind == kindReply || f.kind == kindError) {
		*b, replaced = e.replaceOversized((*b)[:0], f, len(*b))
	}
	if own {
		writer, err = e.q.pushOwning(e.ctx, b, true)
	} else {
		err = e.q.push(e.ctx, b, true)
	}
	if err != nil {
		putBuf(b)
	}
	return writer, replaced
}

// errTooLarge marks a message this side did not send because its encoding
// is larger than the socket's send limit.
var errTooLarge = errors.New("parley: message larger than the send limit")

// tooLarge is the error for a message of n bytes, over the send limit:
// what names it ("/pkg.Svc/M: the request").
func (e *endpoint) tooLarge(what string, n int) *Error {
	return &Error{code: CodeResourceExhausted, message: fmt.Sprintf("%s is %d bytes, the limit %d", what, n, e.sendMax), wrapped: errTooLarge}
}

// replaceOversized encodes into b, in place of the Reply or Error f whose
// encoding was n bytes, over the send limit, the Error(resource_exhausted)
// that goes instead: the peer would close the socket on the real one (1009)
// and, resuming, ask for it again. Should even that not fit (a limit of a
// few bytes), the Error goes without its message.
func (e *endpoint) replaceOversized(b []byte, f *frame, n int) ([]byte, *Error) {
	what := "the response"
	if f.kind == kindError {
		what = "the " + f.code.String() + " error"
	}
	if f.method != "" {
		what = f.method + ": " + what
	}
	err := e.tooLarge(what, n)
	e.log.Warn("parley: a call's outcome is larger than the peer accepts; resource_exhausted goes instead", "side", e.side, "method", f.method, "id", f.id, "bytes", n, "limit", e.sendMax)
	ef := errorFrame(f.id, err)
	b, _ = e.appendFrame(b, ef, nil)
	if len(b) > e.sendMax {
		ef.message = ""
		b, _ = e.appendFrame(b[:0], ef, nil)
	}
	return b, err
}

// refuseNotRun answers a call the server will not run (it is shutting
// down), telling the caller it may send it again elsewhere.
func (e *endpoint) refuseNotRun(id uint64, message string) {
	e.send(&frame{kind: kindError, id: id, code: CodeUnavailable, message: message, notRun: true}, nil)
}

func (e *endpoint) sendError(id uint64, err *Error) {
	e.send(errorFrame(id, err), nil)
}

// appendFrame appends f, with msg as its payload if non-nil, in the
// connection's encoding. Binary, the default, is called directly so that
// f can stay on its caller's stack: through the codec interface every
// frame sent (~250 bytes) escaped to the heap, once per reply, stream
// item, credit and event recipient. JSON encodes a copy.
func (e *endpoint) appendFrame(b []byte, f *frame, msg proto.Message) ([]byte, error) {
	if bc, ok := e.codec.(binaryCodec); ok {
		return bc.appendFrame(b, f, msg)
	}
	fc := *f
	return e.codec.appendFrame(b, &fc, msg)
}

// errorFrame is the Error frame answering call id with err.
func errorFrame(id uint64, err *Error) *frame {
	return &frame{kind: kindError, id: id, code: err.code, message: err.message, details: err.details}
}

// closeWith starts a graceful close: frames already queued are sent, then a
// close frame with code and reason. Calls still pending fail.
func (e *endpoint) closeWith(code int, reason string) {
	e.mu.Lock()
	if e.closing.Load() {
		e.mu.Unlock()
		return
	}
	e.closing.Store(true)
	e.closeCode, e.closeReason = code, reason
	if e.closeErr == nil {
		e.closeErr = NewError(CodeUnavailable, closeMessage(code, reason))
	}
	e.mu.Unlock()
	e.q.close()
}

// abort closes at once: frames still queued are dropped, and the close
// frame goes out next.
func (e *endpoint) abort(code int, reason string) {
	e.q.discard()
	e.closeWith(code, reason)
	e.q.discard()
}

func closeMessage(code int, reason string) string {
	if reason == "" {
		return fmt.Sprintf("connection closed (%d)", code)
	}
	return fmt.Sprintf("connection closed (%d %s)", code, reason)
}

// fail tears the endpoint down after the socket ended: handlers' contexts
// are cancelled and pending calls fail.
func (e *endpoint) fail(cause error) {
	e.mu.Lock()
	if e.closeErr == nil {
		e.closeErr = &Error{code: CodeUnavailable, message: describeClose(cause), wrapped: errConnLost}
	}
	closeErr := e.closeErr
	e.closing.Store(true)
	pending := e.pending
	e.pending = make(map[uint64]*pendingCall)
	streams := e.streams
	e.streams = make(map[uint64]*stream)
	if e.pingTimer != nil {
		e.pingTimer.Stop()
	}
	goneAway, goAwayID := e.goneAway != "", e.goAwayID
	e.mu.Unlock()
	e.q.close()
	e.cancel(closeErr)
	_ = e.bc.Conn.Close()
	// Above the GoAway's last accepted id, the server never ran a call or
	// stream (its refusal may not have made it out before the close).
	outcome := func(id uint64) error {
		if goneAway && id > goAwayID {
			return &Error{code: CodeUnavailable, message: asError(closeErr).message, wrapped: errNotSent}
		}
		return closeErr
	}
	for id, pc := range pending {
		pc.done <- outcome(id)
	}
	for id, s := range streams {
		if s.caller {
			s.finish(outcome(id))
		} else {
			s.finish(closeErr)
		}
	}

}

func describeClose(err error) string {
	var ce *websocket.CloseError
	if errors.As(err, &ce) {
		return closeMessage(ce.Code, ce.Text)
	}
	if err == nil {
		return "connection closed"
	}
	return "connection lost: " + err.Error()
}

// incomingCall is a call the peer made that a handler is running. Its
// fields are guarded by endpoint.mu.
type incomingCall struct {
	call        *callCtx                // a unary call
	cancelFn    context.CancelCauseFunc // a stream
	hasDeadline bool
	abandoned   bool // the caller sent Cancel: send nothing more
	// slotFreed: a stream the caller cancelled no longer counts against
	// WithMaxStreams, though its handler may still be returning; the
	// caller, which freed its own count when it cancelled, may already be
	// opening the next stream.
	slotFreed bool
}

func (c *incomingCall) cancel(err error) {
	if c.call != nil {
		c.call.cancel(context.Canceled)
		return
	}
	c.cancelFn(err)
}

// pendingCall is an outgoing call awaiting its outcome. The reader or a
// teardown sends exactly one value on done, after removing the call from
// endpoint.pending; whoever removes it owns that send.
type pendingCall struct {
	res   proto.Message
	done  chan error
	timer *time.Timer // the call's default deadline, reused across calls
	frame frame       // the Call frame, kept here so it does not escape
}

var pendingPool = sync.Pool{New: func() any { return &pendingCall{done: make(chan error, 1)} }}

// arm starts the call's deadline timer.
func (pc *pendingCall) arm(d time.Duration) <-chan time.Time {
	if pc.timer == nil {
		pc.timer = time.NewTimer(d)
	} else {
		pc.timer.Reset(d)
	}
	return pc.timer.C
}

// release returns a finished call to the pool.
func (pc *pendingCall) release() {
	if pc.timer != nil {
		pc.timer.Stop()
	}
	pc.res = nil
	pc.frame = frame{}
	pendingPool.Put(pc)
}

// callError is the outcome an Error frame f gives the call or stream it
// answers: an unknown code reads as CodeUnknown, and a refusal by a
// server going away (not_run, or unavailable above its GoAway's last
// accepted id) is marked errNotSent: the call never ran.
func (e *endpoint) callError(f *frame) *Error {
	code := f.code
	if code < minCode || code > maxCode {
		code = CodeUnknown
	}
	err := &Error{code: code, message: f.message, details: f.details}
	e.mu.Lock()
	if f.notRun || code == CodeUnavailable && e.goneAway != "" && f.id > e.goAwayID {
		err.wrapped = errNotSent
	}
	e.mu.Unlock()
	return err
}

// complete delivers a reply or error to its pending call. A reply for an id
// no longer pending (the caller gave up) is dropped.
func (e *endpoint) complete(f *frame) {
	e.mu.Lock()
	pc := e.pending[f.id]
	delete(e.pending, f.id)
	e.mu.Unlock()
	if pc == nil {
		return
	}
	if f.kind == kindError {
		pc.done <- e.callError(f)
		return
	}
	var err error
	if f.hasPayload {
		if uerr := e.codec.unmarshal(f.payload, pc.res); uerr != nil {
			err = Errorf(CodeInternal, "decoding the response: %v", uerr)
		}
	}
	pc.done <- err
}

// invoke calls a method on the peer: the Invoker of both sides.
func (e *endpoint) invoke(ctx context.Context, spec *MethodSpec, req, res proto.Message) error {
	if len(e.cfg.interceptors) == 0 {
		return e.roundTrip(ctx, spec, req, res, nil) // no method value to allocate
	}
	return intercepted(ctx, e.cfg.interceptors, e.side, spec, req, res, e.roundTrip)
}

// intercepted makes an outgoing call through the interceptors: they see
// the call's CallInfo and may add metadata, which send then carries.
func intercepted(ctx context.Context, interceptors []Interceptor, side Side, spec *MethodSpec, req, res proto.Message,
	send func(ctx context.Context, spec *MethodSpec, req, res proto.Message, md map[string]string) error,
) error {
	ci := &CallInfo{Spec: spec, Side: side, Metadata: map[string]string{}}
	call := chain(func(ctx context.Context, req proto.Message) (proto.Message, error) {
		if err := send(ctx, spec, req, res, ci.Metadata); err != nil {
			return nil, err
		}
		return res, nil
	}, interceptors)
	_, err := call(withCallInfo(ctx, ci), req)
	return err
}

func (e *endpoint) roundTrip(ctx context.Context, spec *MethodSpec, req, res proto.Message, md map[string]string) error {
	return e.roundTripID(ctx, spec, req, res, md, 0, nil)
}

// roundTripID makes a call with the given id, or a fresh one when id is 0.
// A client re-sends a call into a resumed session with its first id, so the
// server recognises it and runs it at most once. onSlot, if not nil, runs
// once the call has its slot among the peer's max_in_flight.
func (e *endpoint) roundTripID(ctx context.Context, spec *MethodSpec, req, res proto.Message, md map[string]string, id uint64, onSlot func()) error {
	if err := ctx.Err(); err != nil {
		return asError(err)
	}
	// The deadline: the context's, else the method's, else the default.
	var timeout time.Duration
	dl, hasDeadline := ctx.Deadline()
	if hasDeadline {
		timeout = time.Until(dl)
	} else if timeout = spec.Timeout; timeout <= 0 {
		timeout = e.cfg.callTimeout
	}
	if timeout <= 0 {
		return NewError(CodeDeadlineExceeded, "deadline exceeded before the call was sent")
	}
	pc := pendingPool.Get().(*pendingCall)
	defer pc.release()
	var timerC <-chan time.Time
	if !hasDeadline {
		timerC = pc.arm(timeout)
	}
	if e.sem != nil {
		select {
		case e.sem <- struct{}{}:
			defer func() { <-e.sem }()
		case <-ctx.Done():
			return asError(ctx.Err())
		case <-timerC:
			return NewError(CodeDeadlineExceeded, "deadline exceeded waiting for a free call slot")
		}
	}
	if onSlot != nil {
		onSlot()
	}

	if id == 0 {
		id = e.nextID()
	}
	pc.res = res
	pc.frame = frame{kind: kindCall, id: id, method: spec.Procedure, hasPayload: true, timeoutMs: uint32(min(timeout.Milliseconds()+1, 1<<32-1)), metadata: md}
	b := getBuf()
	var err error
	*b, err = e.codec.appendFrame((*b)[:0], &pc.frame, req)
	switch {
	case err != nil:
		// The caller's request cannot be sent as it is (a proto2 required
		// field unset, invalid UTF-8 in a string): its fault, as in TS.
		putBuf(b)
		return Errorf(CodeInvalidArgument, "encoding the request of %s: %v", spec.Procedure, err)
	case len(*b) > e.sendMax:
		// The peer would close the socket on it (1009), and a client
		// would send it again after resuming: it fails here, unsent.
		n := len(*b)
		putBuf(b)
		return e.tooLarge(spec.Procedure+": the request", n)
	}
	e.mu.Lock()
	if e.closeErr != nil || e.goneAway != "" {
		err := notSent(e.closeErr, e.goneAway)
		e.mu.Unlock()
		putBuf(b)
		return err
	}
	e.pending[id] = pc
	e.mu.Unlock()

	var own bool
	if own, err = e.q.pushOwning(ctx, b, true); err != nil {
		err = asError(err)
	} else if own {
		e.writeOwned(true) // the reply cannot come before the call is out
	}
	if err != nil {
		putBuf(b)
		if !e.abandon(id, pc, CodeCanceled) {
			err = <-pc.done
		}
		if errors.Is(err, errQueueClosed) {
			e.mu.Lock()
			err = notSent(e.closeErr, e.goneAway)
			e.mu.Unlock()
		}
		return err
	}

	e.needReader()
	select {
	case err = <-pc.done:
	case <-ctx.Done():
		err = asError(ctx.Err())
		if !e.abandon(id, pc, CodeOf(err)) {
			err = <-pc.done
		}
	case <-timerC:
		err = NewError(CodeDeadlineExceeded, fmt.Sprintf("%s did not answer within %v", spec.Procedure, timeout))
		if !e.abandon(id, pc, CodeDeadlineExceeded) {
			err = <-pc.done
		}
	}
	return err
}

// sendCancel tells the peer the caller gave up on id, without waiting: if
// the queue is full or closed, the peer sees the deadline or the close
// itself.
func (e *endpoint) sendCancel(id uint64, why Code) {
	b := getBuf()
	*b, _ = e.appendFrame((*b)[:0], &frame{kind: kindCancel, id: id, code: why}, nil)
	if e.q.push(e.ctx, b, false) != nil {
		putBuf(b)
	}
}

// errNotSent marks a call that never reached the peer's handler (the
// socket was closing, or the server was going away): safe to send again
// on a new socket. errConnLost marks a call whose socket dropped while it
// was in flight: it may or may not have run.
var (
	errNotSent  = errors.New("parley: call not sent")
	errConnLost = errors.New("parley: connection lost")
	// errSocketGone marks a stream not opened because its socket was
	// closing or going away (newStream).
	errSocketGone = errors.New("parley: socket closing")
)

func notSent(closeErr error, goneAway string) *Error {
	msg := "server is going away: " + goneAway
	if closeErr != nil {
		msg = closeErr.Error()
	}
	return &Error{code: CodeUnavailable, message: msg, wrapped: errNotSent}
}

// abandon removes a call the caller gives up on and tells the peer. It
// reports false when the outcome is already on its way, which the caller
// must then receive.
func (e *endpoint) abandon(id uint64, pc *pendingCall, why Code) bool {
	e.mu.Lock()
	if e.pending[id] != pc {
		e.mu.Unlock()
		return false
	}
	delete(e.pending, id)
	e.mu.Unlock()
	e.sendCancel(id, why)
	return true
}
