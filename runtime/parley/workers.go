package parley

import (
	"sync"
	"time"
)

// workerIdle is how long a call worker waits for another call before it
// ends. A process taking fewer calls than that gains nothing from keeping
// one: it starts a goroutine per call, as it would without workers.
const workerIdle = 100 * time.Millisecond

// callJob is one incoming call for a worker to run.
type callJob struct {
	e *endpoint
	c *callCtx
}

// callWorkers runs the incoming calls that do not run inline on their
// connection's reader (runInline) on goroutines that outlive one call.
//
// A new goroutine starts with a small stack (the average the garbage
// collector found, which a server's parked readers keep small), and a
// handler with its answer's encoding needs more: each call on a fresh
// goroutine grew its stack by copying it, a fifth of a busy server's CPU
// with many calls in flight. A worker keeps its grown stack from call to
// call, until a collection shrinks it, which the next call undoes once.
//
// The pool is the package's, shared by every Server and Client. A call
// never waits for a busy worker: without an idle one it gets a goroutine
// of its own, which becomes a worker once its call is done. Idle workers
// are a stack, so the busiest stay warm and the rest age at its bottom,
// where the reaper ends those idle for workerIdle; it runs only while
// there are idle workers. So there are never more workers than calls ran
// at once in the last moments, and none in an idle process.
var callWorkers = workerPool{run: func(j callJob) { j.e.runCall(j.c) }}

type workerPool struct {
	run func(callJob) // runs one call

	mu      sync.Mutex
	idle    []*worker // idle workers, the longest idle first
	reaping bool      // a reaper goroutine runs
}

// worker is one idle-or-busy goroutine of the pool. jobs carries its next
// call, or is closed by the reaper to end it; idleSince is guarded by the
// pool's mu.
type worker struct {
	jobs      chan callJob
	idleSince time.Time
}

// runCallAsync runs c on an idle worker, or on a new one.
func (e *endpoint) runCallAsync(c *callCtx) { callWorkers.submit(callJob{e, c}) }

// submit runs j on an idle worker, or on a new one.
func (p *workerPool) submit(j callJob) {
	p.mu.Lock()
	if n := len(p.idle); n > 0 {
		w := p.idle[n-1]
		p.idle[n-1] = nil
		p.idle = p.idle[:n-1]
		p.mu.Unlock()
		w.jobs <- j // buffered, and w waits for it: never blocks
		return
	}
	p.mu.Unlock()
	go p.work(&worker{jobs: make(chan callJob, 1)}, j)
}

// work runs j and then the calls handed to w until the reaper ends it.
func (p *workerPool) work(w *worker, j callJob) {
	for ok := true; ok; j, ok = <-w.jobs {
		p.run(j)
		j = callJob{} // hold nothing of the call while idle
		p.mu.Lock()
		w.idleSince = time.Now()
		p.idle = append(p.idle, w)
		start := !p.reaping
		p.reaping = true
		p.mu.Unlock()
		if start {
			go p.reap()
		}
	}
}

// reap ends the workers idle for workerIdle, every workerIdle, until none
// is idle.
func (p *workerPool) reap() {
	t := time.NewTicker(workerIdle)
	defer t.Stop()
	for range t.C {
		p.mu.Lock()
		cutoff := time.Now().Add(-workerIdle)
		n := 0
		for n < len(p.idle) && p.idle[n].idleSince.Before(cutoff) {
			close(p.idle[n].jobs)
			n++
		}
		p.idle = append(p.idle[:0], p.idle[n:]...)
		clear(p.idle[len(p.idle):cap(p.idle)])
		done := len(p.idle) == 0
		if done {
			p.reaping = false
		}
		p.mu.Unlock()
		if done {
			return
		}
	}
}
