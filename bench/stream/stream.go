// Package stream measures streamed messages per second over one
// connection: a bidirectional echo stream on Parley and on grpc-go (one
// HTTP/2 connection), 1 and many concurrent streams. Each stream has a
// sender goroutine that sends as fast as flow control lets it and a
// receiver goroutine that counts the echoes; the server echoes every item
// as it receives it. The servers run in this process (New) or in another
// one (Serve in a child process, Dial here): in one process each side's
// garbage collections and goroutines share one Go runtime with the other
// side's, which no deployment does.
package stream

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http/httptest"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	benchv1 "github.com/parleyrpc/parley/bench/gen/bench/v1"
	"github.com/parleyrpc/parley/runtime/parley"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// Names lists the targets in the order they are reported.
var Names = []string{"parley", "grpc"}

// echoSpec is the Parley bidi method, hand-written as generated code would
// declare it; it uses the same messages as the grpc-go side.
var echoSpec = &parley.MethodSpec{Procedure: "/bench.v1.EchoService/EchoStream", Kind: parley.StreamBidi}

// Stream is one open echo stream, from the caller's side.
type Stream interface {
	Send(*benchv1.EchoRequest) error
	Recv() (*benchv1.EchoResponse, error)
	CloseSend() error
}

// Target is one client connection to a running server.
type Target struct {
	Name  string
	Open  func(ctx context.Context) (Stream, error)
	Close func()
	// Server, when the server runs in another process, reports that
	// process's counters, which Run adds to this process's.
	Server func() (Usage, error)
}

// Usage is a process's CPU time and allocation counters so far.
type Usage struct {
	CPU     time.Duration
	Mallocs uint64
	Bytes   uint64
}

// SelfUsage is this process's Usage.
func SelfUsage() Usage {
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return Usage{CPU: processCPU(), Mallocs: ms.Mallocs, Bytes: ms.TotalAlloc}
}

// New starts the named target's server in this process and dials it.
func New(ctx context.Context, name string) (*Target, error) {
	addr, stop, err := Serve(name)
	if err != nil {
		return nil, err
	}
	t, err := Dial(ctx, name, addr)
	if err != nil {
		stop()
		return nil, err
	}
	closeClient := t.Close
	t.Close = func() { closeClient(); stop() }
	return t, nil
}

// Serve starts the named target's echo server on loopback and returns the
// address to Dial and a function that stops it.
func Serve(name string) (addr string, stop func(), err error) {
	switch name {
	case "parley":
		srv := parley.NewServer()
		srv.Register(parley.NewBidiStreamMethod(echoSpec, func(ctx context.Context, s *parley.BidiStream[benchv1.EchoRequest, benchv1.EchoResponse]) error {
			return echo(s)
		}))
		hs := httptest.NewServer(srv)
		return "ws" + strings.TrimPrefix(hs.URL, "http") + "/", func() {
			_ = srv.Shutdown(context.Background())
			hs.Close()
		}, nil
	case "grpc":
		lis, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return "", nil, err
		}
		gs := grpc.NewServer()
		benchv1.RegisterEchoServiceServer(gs, grpcEcho{})
		go func() { _ = gs.Serve(lis) }()
		return lis.Addr().String(), gs.Stop, nil
	}
	return "", nil, fmt.Errorf("unknown stream target %q (want one of %s)", name, strings.Join(Names, ", "))
}

// Dial connects one client of the named target to a server Serve started:
// Parley dials once with default options (stream window
// DefaultStreamWindow items); grpc-go opens one ClientConn, which opens
// one HTTP/2 connection, with default options (HTTP/2 flow-control
// windows with BDP estimation).
func Dial(ctx context.Context, name, addr string) (*Target, error) {
	switch name {
	case "parley":
		conn, err := parley.Dial(ctx, addr)
		if err != nil {
			return nil, err
		}
		return &Target{
			Name: "parley",
			Open: func(ctx context.Context) (Stream, error) {
				return parley.CallBidiStream[benchv1.EchoRequest, benchv1.EchoResponse](ctx, conn, echoSpec)
			},
			Close: func() { _ = conn.Close() },
		}, nil
	case "grpc":
		cc, err := grpc.NewClient("passthrough:///"+addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			return nil, err
		}
		client := benchv1.NewEchoServiceClient(cc)
		return &Target{
			Name: "grpc",
			Open: func(ctx context.Context) (Stream, error) {
				return client.EchoStream(ctx)
			},
			Close: func() { _ = cc.Close() },
		}, nil
	}
	return nil, fmt.Errorf("unknown stream target %q (want one of %s)", name, strings.Join(Names, ", "))
}

type grpcEcho struct {
	benchv1.UnimplementedEchoServiceServer
}

func (grpcEcho) EchoStream(s grpc.BidiStreamingServer[benchv1.EchoRequest, benchv1.EchoResponse]) error {
	return echo(s)
}

// echo is both servers' handler: each item back as it comes.
func echo(s interface {
	Recv() (*benchv1.EchoRequest, error)
	Send(*benchv1.EchoResponse) error
}) error {
	for {
		req, err := s.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		if err := s.Send(&benchv1.EchoResponse{Data: req.Data}); err != nil {
			return err
		}
	}
}

// Result is one measured case.
type Result struct {
	Target   string
	Streams  int
	Payload  int
	Messages int64 // echoes received in the window
	Elapsed  time.Duration
	Mallocs  uint64
	Bytes    uint64
	CPU      time.Duration // user+system CPU time in the window, client and server processes
	// Processes is 1 when the server ran in the client's process, 2 when
	// it ran in its own.
	Processes int
	// MinShare is the slowest stream's share of the messages relative to an
	// even split (1 = perfectly fair), a check that no stream starves.
	MinShare float64
}

// PerSec is the throughput: echoed items received per second.
func (r Result) PerSec() float64 { return float64(r.Messages) / r.Elapsed.Seconds() }

// AllocsPerMsg is the allocations (client and server) per echoed item.
func (r Result) AllocsPerMsg() float64 { return float64(r.Mallocs) / float64(r.Messages) }

// BytesPerMsg is the bytes allocated (client and server) per echoed item.
func (r Result) BytesPerMsg() float64 { return float64(r.Bytes) / float64(r.Messages) }

type counter struct {
	n atomic.Int64
	_ [56]byte
}

// Run opens streams echo streams on t, sends payload-sized items on all of
// them for warmup (unmeasured) and then duration, and counts the echoes.
func Run(ctx context.Context, t *Target, streams, payloadSize int, warmup, duration time.Duration) (Result, error) {
	payload := make([]byte, payloadSize)
	for i := range payload {
		payload[i] = byte(i)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	counts := make([]counter, streams)
	var stop atomic.Bool
	var wg sync.WaitGroup
	var errOnce sync.Once
	var firstErr error
	fail := func(err error) {
		errOnce.Do(func() { firstErr = err })
		stop.Store(true)
	}
	for i := range streams {
		s, err := t.Open(ctx)
		if err != nil {
			return Result{}, fmt.Errorf("%s: opening stream %d: %w", t.Name, i, err)
		}
		wg.Add(2)
		go func() { // sender
			defer wg.Done()
			req := &benchv1.EchoRequest{Data: payload}
			for !stop.Load() {
				if err := s.Send(req); err != nil {
					fail(fmt.Errorf("%s send: %w", t.Name, err))
					return
				}
			}
			if err := s.CloseSend(); err != nil {
				fail(fmt.Errorf("%s CloseSend: %w", t.Name, err))
			}
		}()
		go func() { // receiver
			defer wg.Done()
			c := &counts[i].n
			for {
				res, err := s.Recv()
				if errors.Is(err, io.EOF) {
					return
				}
				if err != nil {
					fail(fmt.Errorf("%s recv: %w", t.Name, err))
					return
				}
				if len(res.Data) != payloadSize {
					fail(fmt.Errorf("%s: echo of %d bytes, want %d", t.Name, len(res.Data), payloadSize))
					return
				}
				c.Add(1)
			}
		}()
	}
	sum := func() (n int64, per []int64) {
		per = make([]int64, len(counts))
		for i := range counts {
			per[i] = counts[i].n.Load()
			n += per[i]
		}
		return n, per
	}
	usage := func() (Usage, error) {
		u := SelfUsage()
		if t.Server == nil {
			return u, nil
		}
		su, err := t.Server()
		return Usage{CPU: u.CPU + su.CPU, Mallocs: u.Mallocs + su.Mallocs, Bytes: u.Bytes + su.Bytes}, err
	}
	time.Sleep(warmup)
	runtime.GC()
	before, err := usage()
	if err != nil {
		return Result{}, err
	}
	n0, per0 := sum()
	t0 := time.Now()
	time.Sleep(duration)
	n1, per1 := sum()
	elapsed := time.Since(t0)
	after, err := usage()
	if err != nil {
		return Result{}, err
	}
	stop.Store(true)
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		return Result{}, fmt.Errorf("%s: streams did not end within 10 s of CloseSend", t.Name)
	}
	if firstErr != nil {
		return Result{}, firstErr
	}
	processes := 1
	if t.Server != nil {
		processes = 2
	}
	msgs := n1 - n0
	minShare := 1.0
	if msgs > 0 {
		for i := range per1 {
			share := float64(per1[i]-per0[i]) / (float64(msgs) / float64(streams))
			minShare = min(minShare, share)
		}
	}
	return Result{
		Target: t.Name, Streams: streams, Payload: payloadSize,
		Messages: msgs, Elapsed: elapsed,
		Mallocs: after.Mallocs - before.Mallocs, Bytes: after.Bytes - before.Bytes,
		CPU: after.CPU - before.CPU, MinShare: minShare, Processes: processes,
	}, nil
}

// processCPU is this process's user+system CPU time so far.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// CPUPerMsg is the CPU time (client and server) per echo: the
// cost of a message, which the machine's other load changes less than the
// throughput.
func (r Result) CPUPerMsg() time.Duration {
	if r.Messages == 0 {
		return 0
	}
	return r.CPU / time.Duration(r.Messages)
}
