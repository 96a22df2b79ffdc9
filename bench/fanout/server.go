package fanout

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"runtime"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	benchv1 "github.com/parleyrpc/parley/bench/gen/bench/v1"
	"github.com/parleyrpc/parley/runtime/parley"
)

// raiseFDLimit lifts the soft limit on open files to the hard one.
func raiseFDLimit() {
	var l syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l); err == nil && l.Cur < l.Max {
		l.Cur = l.Max
		_ = syscall.Setrlimit(syscall.RLIMIT_NOFILE, &l)
	}
}

// FDLimit is the soft limit on open files, after raising it.
func FDLimit() uint64 {
	raiseFDLimit()
	var l syscall.Rlimit
	_ = syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l)
	return l.Cur
}

// server is a Parley server on a loopback listener, served by a plain
// http.Server (as an application would mount it).
type server struct {
	srv *parley.Server
	hs  *http.Server
	url string
}

func newServer(opts ...parley.ServerOption) (*server, error) {
	raiseFDLimit()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	srv := parley.NewServer(opts...)
	hs := &http.Server{Handler: srv, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = hs.Serve(ln) }()
	return &server{srv: srv, hs: hs, url: "ws://" + ln.Addr().String() + "/"}, nil
}

func (s *server) close() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_ = s.srv.Shutdown(ctx)
	_ = s.hs.Shutdown(ctx)
}

// child is the clients process.
type child struct {
	cmd       *exec.Cmd
	stdin     io.WriteCloser
	lines     chan string // every line but "done" and "error"
	completed atomic.Uint64
	progress  chan struct{} // cap 1: completed moved
	failed    chan string
}

func startChild(url string, n int, kind string) (*child, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(exe, "-mode", "clients", "-url", url, "-n", strconv.Itoa(n), "-client", kind)
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	c := &child{cmd: cmd, stdin: stdin, lines: make(chan string, 1024), progress: make(chan struct{}, 1), failed: make(chan string, 1)}
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			line := sc.Text()
			switch {
			case strings.HasPrefix(line, "done "):
				seq, _ := strconv.ParseUint(line[5:], 10, 64)
				if seq > c.completed.Load() {
					c.completed.Store(seq)
				}
				select {
				case c.progress <- struct{}{}:
				default:
				}
			case strings.HasPrefix(line, "error "):
				select {
				case c.failed <- line[6:]:
				default:
				}
			default:
				c.lines <- line
			}
		}
		close(c.lines)
	}()
	return c, nil
}

// line returns the next control line.
func (c *child) line(timeout time.Duration) (string, error) {
	select {
	case l, ok := <-c.lines:
		if !ok {
			return "", errors.New("clients process exited")
		}
		return l, nil
	case msg := <-c.failed:
		return "", fmt.Errorf("a client connection failed: %s", msg)
	case <-time.After(timeout):
		return "", fmt.Errorf("no answer from the clients process within %v", timeout)
	}
}

// waitFor waits until every connection received event seq.
func (c *child) waitFor(seq uint64, timeout time.Duration) error {
	var deadline <-chan time.Time
	for c.completed.Load() < seq {
		if deadline == nil {
			deadline = time.After(timeout)
		}
		select {
		case <-c.progress:
		case msg := <-c.failed:
			return fmt.Errorf("a client connection failed: %s", msg)
		case <-deadline:
			return fmt.Errorf("event %d not delivered to every connection within %v (completed %d)", seq, timeout, c.completed.Load())
		}
	}
	return nil
}

func (c *child) send(cmd string) error {
	_, err := io.WriteString(c.stdin, cmd+"\n")
	return err
}

func (c *child) stop() {
	_ = c.stdin.Close()
	done := make(chan struct{})
	go func() { _ = c.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(15 * time.Second):
		_ = c.cmd.Process.Kill()
		<-done
	}
}

// connect starts the clients process with n connections and joins each to
// room. It returns the child and the ready line's fields.
func (s *server) connect(n int, kind, room string) (*child, []string, error) {
	c, err := startChild(s.url, n, kind)
	if err != nil {
		return nil, nil, err
	}
	ctx := context.Background()
	for {
		l, err := c.line(2 * time.Minute)
		if err != nil {
			c.stop()
			return nil, nil, err
		}
		if id, ok := strings.CutPrefix(l, "conn "); ok {
			if room != "" {
				if err := s.srv.Join(ctx, id, room); err != nil {
					c.stop()
					return nil, nil, err
				}
			}
			continue
		}
		if f, ok := strings.CutPrefix(l, "ready "); ok {
			return c, strings.Fields(f), nil
		}
		c.stop()
		return nil, nil, fmt.Errorf("unexpected line from the clients process: %q", l)
	}
}

// Options configure a fan-out run.
type Options struct {
	// WriteDelay is the server's parley.WithWriteDelay (0: the default).
	WriteDelay time.Duration
	Rooms      []int // connections per room
	Sizes      []int // event data bytes
	Warmup     time.Duration
	Duration   time.Duration
	// Window is how many events the publisher may have published beyond
	// the last one every connection received. Fan-out is paced, not
	// flooded: a flooded send queue would cut connections off as slow
	// consumers, and latency would only measure the flood.
	Window int
	Client string // "raw" or "parley"
}

// Result is one measured fan-out case.
type Result struct {
	Conns, Size     int
	Events          uint64
	Deliveries      uint64
	Elapsed         time.Duration
	P50, P99, Max   time.Duration
	Samples         uint64
	ServerCPU       time.Duration // the server process's CPU time in the window
	ClientCPU       time.Duration // the clients process's
	ServerMallocs   uint64
	Window          int
	ClientKind      string
	ServerGoroutine int
	ServerWrites    int64 // write system calls of the server process
}

func (r Result) PerSec() float64 { return float64(r.Deliveries) / r.Elapsed.Seconds() }

// Run measures fan-out for every room size and event size.
func Run(o Options, logf func(string, ...any)) ([]Result, error) {
	var opts []parley.ServerOption
	if o.WriteDelay > 0 {
		opts = append(opts, parley.WithWriteDelay(o.WriteDelay))
	}
	s, err := newServer(opts...)
	if err != nil {
		return nil, err
	}
	defer s.close()
	var results []Result
	var seq uint64
	for _, n := range o.Rooms {
		t0 := time.Now()
		c, _, err := s.connect(n, o.Client, "room")
		if err != nil {
			return nil, fmt.Errorf("connecting %d clients: %w", n, err)
		}
		logf("fanout: %d %s connections up and in the room in %v", n, o.Client, time.Since(t0).Round(time.Millisecond))
		c.completed.Store(seq) // this room's clients start at the next event
		for _, size := range o.Sizes {
			r, err := s.runCase(c, n, size, &seq, o)
			if err != nil {
				c.stop()
				return nil, err
			}
			logf("fanout: %6d conns %5d B: %9.0f deliveries/s (%d events) p50 %v p99 %v max %v; server CPU %.2f µs/delivery, clients %.2f µs/delivery",
				n, size, r.PerSec(), r.Events, r.P50, r.P99, r.Max,
				float64(r.ServerCPU.Microseconds())/float64(r.Deliveries), float64(r.ClientCPU.Microseconds())/float64(r.Deliveries))
			results = append(results, r)
		}
		c.stop()
		// Let the server notice the closed connections before the next room.
		time.Sleep(500 * time.Millisecond)
	}
	return results, nil
}

func (s *server) runCase(c *child, n, size int, seq *uint64, o Options) (Result, error) {
	ctx := context.Background()
	data := make([]byte, max(size, headerLen))
	ev := &benchv1.EchoRequest{Data: data}
	target := parley.ToRoom("room")
	window := uint64(max(o.Window, 1))
	publish := func(measured bool) error {
		next := *seq + 1
		if next > window {
			if err := c.waitFor(next-window, 30*time.Second); err != nil {
				return err
			}
		}
		putHeader(data, next, time.Now(), measured)
		if err := s.srv.Publish(ctx, target, EventSpec, ev); err != nil {
			return err
		}
		*seq = next
		return nil
	}
	// Warm up, then drop the warm-up's latencies.
	for end := time.Now().Add(o.Warmup); time.Now().Before(end); {
		if err := publish(false); err != nil {
			return Result{}, err
		}
	}
	if err := c.waitFor(*seq, 30*time.Second); err != nil {
		return Result{}, err
	}
	if err := c.send("report"); err != nil {
		return Result{}, err
	}
	if _, err := c.line(10 * time.Second); err != nil {
		return Result{}, err
	}

	runtime.GC()
	var m0, m1 runtime.MemStats
	runtime.ReadMemStats(&m0)
	first := *seq + 1
	sc0, cc0 := cpuTime(os.Getpid()), cpuTime(c.cmd.Process.Pid)
	w0 := writeSyscalls()
	t0 := time.Now()
	for end := t0.Add(o.Duration); time.Now().Before(end); {
		if err := publish(true); err != nil {
			return Result{}, err
		}
	}
	last := *seq
	if err := c.waitFor(last, 30*time.Second); err != nil {
		return Result{}, err
	}
	elapsed := time.Since(t0)
	sc1, cc1 := cpuTime(os.Getpid()), cpuTime(c.cmd.Process.Pid)
	w1 := writeSyscalls()
	runtime.ReadMemStats(&m1)
	goroutines := runtime.NumGoroutine()

	if err := c.send("report"); err != nil {
		return Result{}, err
	}
	l, err := c.line(10 * time.Second)
	if err != nil {
		return Result{}, err
	}
	f, ok := strings.CutPrefix(l, "hist ")
	if !ok {
		return Result{}, fmt.Errorf("want a histogram, got %q", l)
	}
	var h Histogram
	var counts []uint64
	for _, x := range strings.Fields(f) {
		v, _ := strconv.ParseUint(x, 10, 64)
		counts = append(counts, v)
	}
	h.Merge(counts)
	events := last - first + 1
	return Result{
		Conns: n, Size: size, Events: events, Deliveries: events * uint64(n), Elapsed: elapsed,
		P50: h.Quantile(0.50), P99: h.Quantile(0.99), Max: h.Quantile(1), Samples: h.Count(),
		ServerCPU: sc1 - sc0, ClientCPU: cc1 - cc0,
		ServerMallocs: m1.Mallocs - m0.Mallocs, Window: int(window), ClientKind: o.Client,
		ServerGoroutine: goroutines, ServerWrites: w1 - w0,
	}, nil
}

// writeSyscalls is the process's write system calls so far (syscw of
// /proc/self/io), or 0.
func writeSyscalls() int64 {
	b, err := os.ReadFile("/proc/self/io")
	if err != nil {
		return 0
	}
	for line := range strings.Lines(string(b)) {
		if v, ok := strings.CutPrefix(line, "syscw:"); ok {
			n, _ := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
			return n
		}
	}
	return 0
}

// cpuTime is a process's user+system CPU time from /proc/<pid>/stat.
func cpuTime(pid int) time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	s := string(b)
	if i := strings.LastIndexByte(s, ')'); i >= 0 {
		s = s[i+2:]
	}
	f := strings.Fields(s)
	// After the command: state is field 3, utime 14, stime 15 (1-based).
	if len(f) < 13 {
		return 0
	}
	u, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(u+st) * (time.Second / 100) // USER_HZ is 100 on Linux
}

// IdleResult is the memory cost of idle connections.
type IdleResult struct {
	Conns                                int
	ClientKind                           string
	ServerRSS0, ServerRSS1               int64
	ServerHeap0, ServerHeap1             uint64 // HeapInuse
	ServerStack0, ServerStack1           uint64 // StackInuse
	ServerGoroutines0, ServerGoroutines1 int
	ClientRSS0, ClientRSS1               int64
	ClientGoroutines                     int
}

// PerConn is the server process's RSS delta per connection.
func (r IdleResult) PerConn() float64 { return float64(r.ServerRSS1-r.ServerRSS0) / float64(r.Conns) }

// RunIdle opens n idle connections from the clients process, each joined
// to a room, and measures the server process's memory before and after.
// With memprofile set, it writes the server's heap profile there while the
// connections are open.
func RunIdle(n int, kind string, settle time.Duration, memprofile string) (IdleResult, error) {
	s, err := newServer()
	if err != nil {
		return IdleResult{}, err
	}
	defer s.close()
	// Warm the server's code paths (and its heap's size classes) with one
	// connection first, so the delta is the connections' own.
	c, _, err := s.connect(1, kind, "idle")
	if err != nil {
		return IdleResult{}, err
	}
	c.stop()
	time.Sleep(200 * time.Millisecond)

	r := IdleResult{Conns: n, ClientKind: kind}
	var ms runtime.MemStats
	r.ServerRSS0 = gcRSS()
	runtime.ReadMemStats(&ms)
	r.ServerHeap0, r.ServerStack0, r.ServerGoroutines0 = ms.HeapInuse, ms.StackInuse, runtime.NumGoroutine()
	c, ready, err := s.connect(n, kind, "idle")
	if err != nil {
		return IdleResult{}, err
	}
	defer c.stop()
	time.Sleep(settle)
	r.ServerRSS1 = gcRSS()
	runtime.ReadMemStats(&ms)
	r.ServerHeap1, r.ServerStack1, r.ServerGoroutines1 = ms.HeapInuse, ms.StackInuse, runtime.NumGoroutine()
	if memprofile != "" {
		f, err := os.Create(memprofile)
		if err != nil {
			return IdleResult{}, err
		}
		defer f.Close()
		if err := pprof.Lookup("heap").WriteTo(f, 0); err != nil {
			return IdleResult{}, err
		}
	}
	if len(ready) >= 3 {
		r.ClientRSS0, _ = strconv.ParseInt(ready[0], 10, 64)
		r.ClientRSS1, _ = strconv.ParseInt(ready[1], 10, 64)
		r.ClientGoroutines, _ = strconv.Atoi(ready[2])
	}
	return r, nil
}
