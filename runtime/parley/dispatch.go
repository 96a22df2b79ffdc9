package parley

import (
	"fmt"
	"sync"

	"google.golang.org/protobuf/proto"
)

// eventRunner runs a client's event handlers one at a time, in the order
// the events arrived, on a goroutine of its own: the reader never waits for
// a handler, so a handler may itself make calls on the connection. The
// goroutine exists only while events are queued.
type eventRunner struct {
	e       *endpoint
	mu      sync.Mutex
	queue   []queuedEvent
	running bool
	closed  bool
}

type queuedEvent struct {
	m   *Method
	req proto.Message
	ci  *CallInfo
}

func (r *eventRunner) push(ev queuedEvent) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return
	}
	r.queue = append(r.queue, ev)
	if !r.running {
		r.running = true
		r.e.handlers.Add(1)
		go r.run()
	}
}

func (r *eventRunner) run() {
	defer r.e.handlers.Done()
	for {
		r.mu.Lock()
		if len(r.queue) == 0 || r.closed {
			r.queue = nil
			r.running = false
			r.mu.Unlock()
			return
		}
		ev := r.queue[0]
		r.queue[0] = queuedEvent{}
		r.queue = r.queue[1:]
		r.mu.Unlock()
		r.e.runEvent(ev)
	}
}

// close drops queued events once the connection is gone.
func (r *eventRunner) close() {
	r.mu.Lock()
	r.closed = true
	r.mu.Unlock()
}

// acceptEvent decodes an event and queues it for its handler.
func (e *endpoint) acceptEvent(f *frame) {
	var m *Method
	if e.methods != nil {
		m = e.methods(f.procedure())
	}
	if f.topic == sessionTopic && f.offset > e.lastEvent.Load() && (m == nil || !m.event) {
		e.lastEvent.Store(f.offset) // seen, even if nobody handles it
	}
	if m == nil || !m.event {
		e.log.Debug("parley: event dropped: no handler", "side", e.side, "method", string(f.procedure()))
		return
	}
	if f.topic == sessionTopic && f.offset > 0 {
		// Events replayed after a reconnect may overlap what arrived
		// before the drop: each offset is handled once.
		if f.offset <= e.lastEvent.Load() {
			return
		}
		e.lastEvent.Store(f.offset)
	}
	req := m.newReq()
	if f.hasPayload {
		if err := e.codec.unmarshal(f.payload, req); err != nil {
			e.log.Warn("parley: event dropped: undecodable payload", "method", m.spec.Procedure, "err", err)
			return
		}
	}
	e.events.push(queuedEvent{m: m, req: req, ci: &CallInfo{Spec: m.spec, Side: e.side, Event: true, method: m}})
}

func (e *endpoint) runEvent(ev queuedEvent) {
	defer func() {
		if r := recover(); r != nil {
			e.log.Error("parley: event handler panicked", "method", ev.m.spec.Procedure, "panic", fmt.Sprint(r))
		}
	}()
	ctx := withCallInfo(e.ctx, ev.ci)
	if _, err := e.handle(ctx, ev.req); err != nil {
		e.log.Warn("parley: event handler failed", "method", ev.m.spec.Procedure, "err", err)
	}
}

// lookupLocal finds a handler a client registered.
func (e *endpoint) lookupLocal(procedure []byte) *Method {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.local[string(procedure)]
}
