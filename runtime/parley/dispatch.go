package parley

import (
	"context"
	"fmt"
	"log/slog"
	"reflect"
	"runtime"
	"sync"
	"sync/atomic"

	"google.golang.org/protobuf/proto"
)

// eventRunner runs a client's event handlers one at a time, in the order
// the events arrived, on a goroutine of its own: the reader never waits for
// a handler, so a handler may itself make calls on the connection. The
// goroutine exists only while events are queued.
//
// A client's runner belongs to its Conn, not to one socket: events received
// before a socket drops still run after it, and the replay on the next
// socket continues after the last one received, so none is lost or run
// twice. last (shared with the Conn) is the offset of the last session
// event queued; mu guards it together with the queue.
//
// The queue holds at most limit bytes of payloads (and always one event):
// push, on a reader goroutine, waits for room (WithEventQueueBytes).
type eventRunner struct {
	ctx    context.Context // the handlers' context: the Conn's (or the socket's)
	handle UnaryFunc       // the interceptor chain ending in the handler
	log    *slog.Logger
	last   *atomic.Uint64
	limit  int

	mu      sync.Mutex
	session string // the session whose offsets last counts
	queue   []queuedEvent
	bytes   int        // the queued events' payload bytes
	space   *sync.Cond // on mu: signalled when the runner takes an event, broadcast on close
	waiting int        // pushes waiting for space
	running bool
	closed  bool
	wg      sync.WaitGroup // the runner goroutine
}

type queuedEvent struct {
	m    *Method
	req  proto.Message
	ci   *CallInfo
	size int // its payload's bytes
}

func newEventRunner(ctx context.Context, handle UnaryFunc, log *slog.Logger, last *atomic.Uint64, limit int) *eventRunner {
	r := &eventRunner{ctx: ctx, handle: handle, log: log, last: last, limit: limit}
	r.space = sync.NewCond(&r.mu)
	return r
}

// setSession makes session the one whose offsets count; a new session
// (not resumed) numbers its events from 1 again.
func (r *eventRunner) setSession(session string, resumed bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !resumed || session != r.session {
		r.last.Store(0)
	}
	r.session = session
}

// admit decides whether a session event with this offset, from a socket of
// the given session, is new, and records it as received. Offset 0 is an
// event outside any session topic; an event from an older session (a socket
// still draining after GoAway) is new and counts nothing.
func (r *eventRunner) admit(session string, offset uint64) bool {
	if offset == 0 {
		return true
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if session != r.session {
		return true
	}
	if offset <= r.last.Load() {
		return false // replayed after a reconnect, and already received
	}
	r.last.Store(offset)
	return true
}

// push queues ev, first waiting while the queue holds events and ev would
// take it past its limit.
func (r *eventRunner) push(ev queuedEvent) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for !r.closed && len(r.queue) > 0 && r.bytes+ev.size > r.limit {
		r.waiting++
		r.space.Wait()
		r.waiting--
	}
	if r.closed {
		return
	}
	r.queue = append(r.queue, ev)
	r.bytes += ev.size
	if !r.running {
		r.running = true
		r.wg.Add(1)
		go r.run()
	}
}

func (r *eventRunner) run() {
	defer r.wg.Done()
	for {
		r.mu.Lock()
		if len(r.queue) == 0 || r.closed {
			r.queue, r.bytes = nil, 0
			r.running = false
			r.mu.Unlock()
			return
		}
		ev := r.queue[0]
		r.queue[0] = queuedEvent{}
		r.queue = r.queue[1:]
		r.bytes -= ev.size
		r.space.Signal()
		r.mu.Unlock()
		r.runEvent(ev)
	}
}

// runEventName is runEvent's name as runtime frames report it.
var runEventName = runtime.FuncForPC(reflect.ValueOf((*eventRunner).runEvent).Pointer()).Name()

// calledFromHandler reports whether the calling goroutine may be running
// one of r's handlers: r runs one, and runEvent is on the caller's stack.
// Conn.Close asks, because it cannot wait for the handler that called it.
// (A handler of another connection calling Close while r runs one also
// answers true; Close then does not wait for r's handler, but Done still
// does.) Only Close pays for the stack walk, not each event.
func (r *eventRunner) calledFromHandler() bool {
	r.mu.Lock()
	running := r.running
	r.mu.Unlock()
	if !running {
		return false
	}
	pcs := make([]uintptr, 128)
	for {
		n := runtime.Callers(2, pcs)
		if n < len(pcs) {
			pcs = pcs[:n]
			break
		}
		pcs = make([]uintptr, 2*len(pcs))
	}
	frames := runtime.CallersFrames(pcs)
	for {
		f, more := frames.Next()
		if f.Function == runEventName {
			return true
		}
		if !more {
			return false
		}
	}
}

// close drops queued events and waits for the handler running, if any.
func (r *eventRunner) close() {
	r.stop()
	r.wg.Wait()
}

// stop drops queued events and takes no more, without waiting for the
// handler running.
func (r *eventRunner) stop() {
	r.mu.Lock()
	r.closed = true
	r.space.Broadcast()
	r.mu.Unlock()
}

func (r *eventRunner) runEvent(ev queuedEvent) {
	defer func() {
		if rec := recover(); rec != nil {
			r.log.Error("parley: event handler panicked", "method", ev.m.spec.Procedure, "panic", fmt.Sprint(rec))
		}
	}()
	if _, err := r.handle(withCallInfo(r.ctx, ev.ci), ev.req); err != nil {
		r.log.Warn("parley: event handler failed", "method", ev.m.spec.Procedure, "err", err)
	}
}

// acceptEvent decodes an event and queues it for its handler.
func (e *endpoint) acceptEvent(f *frame) {
	var m *Method
	if e.methods != nil {
		m = e.methods(f.procedure())
	}
	if e.events == nil {
		e.log.Debug("parley: event dropped: servers take none", "method", string(f.procedure()))
		return
	}
	var offset uint64
	if f.topic == sessionTopic {
		offset = f.offset
	}
	if !e.events.admit(e.sessionID, offset) {
		return
	}
	if m == nil || !m.event {
		e.log.Debug("parley: event dropped: no handler", "side", e.side, "method", string(f.procedure()))
		return
	}
	req := m.newReq()
	if f.hasPayload {
		if err := e.codec.unmarshal(f.payload, req); err != nil {
			e.log.Warn("parley: event dropped: undecodable payload", "method", m.spec.Procedure, "err", err)
			return
		}
	}
	ci := &CallInfo{Spec: m.spec, Side: e.side, Event: true, Metadata: interceptedMetadata(nil, e.cfg.interceptors), method: m}
	e.events.push(queuedEvent{m: m, req: req, ci: ci, size: len(f.payload)})
}
