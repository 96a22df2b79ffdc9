package parley

import (
	"container/list"
	"sync"
)

// DefaultResumeMemory bounds what the sessions waiting for their clients
// to resume them hold, all together (see WithResumeMemory).
const DefaultResumeMemory = 256 << 20

// sessionOverhead is what a session waiting to be resumed counts against
// WithResumeMemory besides its events and replies: its own structures
// (session, peer, maps, timer, context: about 1 KiB of heap, measured over
// 1,000 waiting sessions) and its share of the hub's maps, with room to
// spare.
const sessionOverhead = 2 << 10

// waitingSessions is a Server's account of the sessions waiting for their
// clients to resume them: detached from their socket, with no socket about
// to attach, not ended. Each counts what it holds for the resume (its kept
// events and replies, and sessionOverhead); when together they hold more
// than the limit, the sessions that have waited longest are ended, as if
// their resume window had passed, until the rest fit. A session that holds
// more than the limit alone is ended too.
//
// A session counts itself in (put) and out (remove) with its own mu held;
// mu here is taken after a session's, never before, so an ended session is
// ended on a goroutine of its own (end takes the session's mu), which ends
// when end returns.
type waitingSessions struct {
	limit int

	mu    sync.Mutex
	order *list.List // of *waiter, longest waiting first
	// at is each waiting session's place in order; nil for a session taken
	// out to be ended, until it counts itself out (remove), so that what
	// it keeps meanwhile (an event delivered before its end runs) does not
	// put it back in line.
	at    map[*session]*list.Element
	total int // what the sessions in order hold together
}

// waiter is a session in line and what it counts.
type waiter struct {
	s    *session
	held int
}

func newWaitingSessions(limit int) *waitingSessions {
	return &waitingSessions{limit: limit, order: list.New(), at: make(map[*session]*list.Element)}
}

// put counts s, waiting, as holding n bytes: at the back of the line if
// it was not waiting, in its place otherwise. Sessions over the limit are
// then taken out and ended.
func (w *waitingSessions) put(s *session, n int) {
	w.mu.Lock()
	e, ok := w.at[s]
	if ok && e == nil {
		w.mu.Unlock()
		return // being ended
	}
	if !ok {
		e = w.order.PushBack(&waiter{s: s})
		w.at[s] = e
	}
	wt := e.Value.(*waiter)
	w.total += n + sessionOverhead - wt.held
	wt.held = n + sessionOverhead
	var over []*session
	for w.total > w.limit && w.order.Len() > 0 {
		old := w.order.Remove(w.order.Front()).(*waiter)
		w.total -= old.held
		w.at[old.s] = nil
		over = append(over, old.s)
	}
	w.mu.Unlock()
	for _, old := range over {
		go old.evict(w.limit)
	}
}

// remove counts s out: it is no longer waiting (a socket attached or is
// about to, or it ended).
func (w *waitingSessions) remove(s *session) {
	w.mu.Lock()
	if e := w.at[s]; e != nil {
		w.total -= w.order.Remove(e).(*waiter).held
	}
	delete(w.at, s)
	w.mu.Unlock()
}

// count returns how many sessions wait and what they hold together.
func (w *waitingSessions) count() (sessions, bytes int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.order.Len(), w.total
}
