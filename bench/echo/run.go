package echo

import (
	"context"
	"fmt"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Result is one measured case.
type Result struct {
	Target      string
	Concurrency int
	Payload     int
	Calls       int64
	Elapsed     time.Duration
	P50, P99    time.Duration
	Mallocs     uint64 // whole process, over the measured window
	Bytes       uint64 // TotalAlloc delta, same window
	// Reads and Writes count the whole process's read and write system
	// calls over the window (syscr and syscw of /proc/self/io; -1 where
	// that file is missing).
	Reads, Writes int64
}

// CallsPerSec is the throughput.
func (r Result) CallsPerSec() float64 { return float64(r.Calls) / r.Elapsed.Seconds() }

// AllocsPerCall is the whole process's allocations per call.
func (r Result) AllocsPerCall() float64 { return float64(r.Mallocs) / float64(r.Calls) }

// SyscallsPerCall is the whole process's reads and writes per call, or
// -1, -1 when unknown.
func (r Result) SyscallsPerCall() (reads, writes float64) {
	if r.Reads < 0 || r.Writes < 0 {
		return -1, -1
	}
	return float64(r.Reads) / float64(r.Calls), float64(r.Writes) / float64(r.Calls)
}

// BytesPerCall is the whole process's allocated bytes per call.
func (r Result) BytesPerCall() float64 { return float64(r.Bytes) / float64(r.Calls) }

// Run drives concurrency workers calling t with a payload of payloadSize
// bytes: warmup first (unmeasured), then duration measured. Latency is
// recorded per call into slices sized from the warm-up's rate, so the
// harness itself allocates (almost) nothing in the measured window.
func Run(ctx context.Context, t *Target, concurrency, payloadSize int, warmup, duration time.Duration) (Result, error) {
	payload := make([]byte, payloadSize)
	for i := range payload {
		payload[i] = byte(i)
	}
	callers := make([]CallFunc, concurrency)
	for i := range callers {
		callers[i] = t.NewCaller(payload)
	}

	// Warm up, and learn the rate to size the latency buffers.
	n, _, err := drive(ctx, callers, warmup, nil)
	if err != nil {
		return Result{}, fmt.Errorf("%s warm-up: %w", t.Name, err)
	}
	perWorker := int(float64(n)/warmup.Seconds()*duration.Seconds()*2)/concurrency + 1024
	lat := make([][]time.Duration, concurrency)
	for i := range lat {
		lat[i] = make([]time.Duration, 0, perWorker)
	}

	runtime.GC()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	r0, w0 := syscalls()
	calls, elapsed, err := drive(ctx, callers, duration, lat)
	r1, w1 := syscalls()
	runtime.ReadMemStats(&after)
	if err != nil {
		return Result{}, fmt.Errorf("%s: %w", t.Name, err)
	}

	all := make([]time.Duration, 0, calls)
	for _, l := range lat {
		all = append(all, l...)
	}
	slices.Sort(all)
	return Result{
		Target:      t.Name,
		Concurrency: concurrency,
		Payload:     payloadSize,
		Calls:       calls,
		Elapsed:     elapsed,
		P50:         percentile(all, 0.50),
		P99:         percentile(all, 0.99),
		Mallocs:     after.Mallocs - before.Mallocs,
		Bytes:       after.TotalAlloc - before.TotalAlloc,
		Reads:       sub(r1, r0),
		Writes:      sub(w1, w0),
	}, nil
}

// drive runs every caller in its own goroutine for d and returns how many
// calls completed. With lat non-nil, worker i appends each call's latency
// to lat[i] (never beyond its capacity).
func drive(ctx context.Context, callers []CallFunc, d time.Duration, lat [][]time.Duration) (int64, time.Duration, error) {
	var stop atomic.Bool
	var total atomic.Int64
	var firstErr error
	var errOnce sync.Once
	var wg sync.WaitGroup
	start := time.Now()
	for i, call := range callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var n int64
			var l []time.Duration
			if lat != nil {
				l = lat[i]
			}
			for !stop.Load() {
				t0 := time.Now()
				if err := call(ctx); err != nil {
					errOnce.Do(func() { firstErr = err })
					stop.Store(true)
					break
				}
				if lat != nil && len(l) < cap(l) {
					l = append(l, time.Since(t0))
				}
				n++
			}
			if lat != nil {
				lat[i] = l
			}
			total.Add(n)
		}()
	}
	timer := time.NewTimer(d)
	select {
	case <-timer.C:
	case <-ctx.Done():
	}
	stop.Store(true)
	wg.Wait()
	return total.Load(), time.Since(start), firstErr
}

func percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	return sorted[min(len(sorted)-1, int(float64(len(sorted))*p))]
}

// syscalls returns the process's read and write system call counts so far,
// or -1, -1.
func syscalls() (reads, writes int64) {
	b, err := os.ReadFile("/proc/self/io")
	if err != nil {
		return -1, -1
	}
	reads, writes = -1, -1
	for line := range strings.Lines(string(b)) {
		k, v, _ := strings.Cut(line, ":")
		n, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
		if err != nil {
			continue
		}
		switch k {
		case "syscr":
			reads = n
		case "syscw":
			writes = n
		}
	}
	return reads, writes
}

func sub(a, b int64) int64 {
	if a < 0 || b < 0 {
		return -1
	}
	return a - b
}
