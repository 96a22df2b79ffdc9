package parley

import (
	"runtime"
	"sync"
)

// flushChunk is how many connections a flusher takes off the list at once;
// a list longer than that starts another flusher, up to GOMAXPROCS.
const flushChunk = 64

// flusher writes the events a Server fans out. A push that finds a
// connection without a writer (see sendQueue) hands the connection to the
// flusher instead of starting a writer goroutine for it: a room of
// thousands would otherwise wake thousands of goroutines per event, each
// to write one. A flusher goroutine goes down the list writing each
// connection's queue without waiting for its socket; while it works
// through a large room the publisher queues more events, so each write
// carries more of them the busier the server is. A connection whose
// socket does not take everything at once gets a writer goroutine of its
// own, which waits for it (up to the write timeout): a slow reader never
// holds up the others.
//
// A listed connection's queue has its writing flag set, so it is listed
// at most once and the list is bounded by the number of connections. The
// flusher goroutines exist only while the list is not empty; mu guards
// the fields below it.
type flusher struct {
	mu      sync.Mutex
	list    []*endpoint // listed connections from list[head], oldest first
	head    int
	running int // flusher goroutines
}

// add lists e, whose queue the caller just made writing, and starts a
// flusher goroutine if none runs or the list has grown long.
func (f *flusher) add(e *endpoint) {
	f.mu.Lock()
	f.list = append(f.list, e)
	start := f.running == 0 || len(f.list)-f.head > flushChunk*f.running && f.running < runtime.GOMAXPROCS(0)
	if start {
		f.running++
	}
	f.mu.Unlock()
	if start {
		go f.run()
	}
}

// run flushes listed connections until the list is empty.
func (f *flusher) run() {
	var chunk []*endpoint
	for {
		// Let the publisher (and the pushes it makes) run first, so that
		// the connections taken have more queued.
		runtime.Gosched()
		f.mu.Lock()
		if len(f.list) == 0 { // the rest moves up once head passes the middle: head < len unless empty
			f.running--
			f.mu.Unlock()
			return
		}
		n := min(len(f.list)-f.head, flushChunk)
		chunk = append(chunk[:0], f.list[f.head:f.head+n]...)
		clear(f.list[f.head : f.head+n])
		f.head += n
		if f.head > len(f.list)/2 { // move the rest to the front, so the list does not grow
			m := copy(f.list, f.list[f.head:])
			clear(f.list[m:])
			f.list, f.head = f.list[:m], 0
		}
		f.mu.Unlock()
		for i, e := range chunk {
			if e.writeQueued() {
				f.mu.Lock()
				f.list = append(f.list, e) // more came while it wrote
				f.mu.Unlock()
			}
			chunk[i] = nil
		}
	}
}
