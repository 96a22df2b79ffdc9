package parley

import (
	"sync"
	"testing"
	"time"
)

// TestWorkerPool checks the call workers' promises: a call never waits
// for a busy worker, idle workers run the next calls, and they end once
// idle for workerIdle.
func TestWorkerPool(t *testing.T) {
	const n = 16
	var (
		mu      sync.Mutex
		started int
		all     = make(chan struct{}) // closed when n jobs run at once
		release = make(chan struct{})
		done    sync.WaitGroup
	)
	p := &workerPool{run: func(callJob) {
		defer done.Done()
		mu.Lock()
		if started++; started%n == 0 {
			close(all)
		}
		mu.Unlock()
		<-release
	}}
	idle := func() int {
		p.mu.Lock()
		defer p.mu.Unlock()
		return len(p.idle)
	}
	waitIdle := func(want int) {
		t.Helper()
		for deadline := time.Now().Add(10 * time.Second); idle() != want; {
			if time.Now().After(deadline) {
				t.Fatalf("%d idle workers, want %d", idle(), want)
			}
			time.Sleep(time.Millisecond) // polling a condition, with a deadline
		}
	}
	burst := func() {
		t.Helper()
		done.Add(n)
		for range n {
			p.submit(callJob{})
		}
		select {
		case <-all:
		case <-time.After(10 * time.Second):
			mu.Lock()
			defer mu.Unlock()
			t.Fatalf("%d of %d calls run at once: a call waited for a busy worker", started%n, n)
		}
	}

	burst()
	if got := idle(); got != 0 {
		t.Fatalf("%d idle workers while %d calls run", got, n)
	}
	close(release)
	done.Wait()
	waitIdle(n) // each call's goroutine became a worker

	// The next burst runs on those workers: it takes every idle one.
	all, release = make(chan struct{}), make(chan struct{})
	burst()
	if got := idle(); got != 0 {
		t.Fatalf("%d idle workers left while %d calls run: calls started goroutines beside idle workers", got, n)
	}
	close(release)
	done.Wait()

	// Idle for workerIdle, they end, and so does the reaper.
	waitIdle(0)
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(time.Millisecond) {
		p.mu.Lock()
		reaping := p.reaping
		p.mu.Unlock()
		if !reaping {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the reaper still runs with no idle worker")
		}
	}
}
