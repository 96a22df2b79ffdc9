package main

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strings"
	"time"

	"github.com/parleyrpc/parley/bench/fanout"
	"github.com/parleyrpc/parley/bench/stream"
)

var (
	streamsFlag *string
	streamImpl  *string
	streamProcs *string
	roomsFlag   *string
	eventsFlag  *string
	windowFlag  *string
	writeDelay  *time.Duration
	clientFlag  *string
	idleConns   *int
	idleClient  *string
	memProfile  *string
	childURL    *string
	childN      *int
	fanDuration *time.Duration
)

func registerModeFlags() {
	streamsFlag = flag.String("streams", "1,64", "stream mode: concurrent streams, comma-separated")
	streamImpl = flag.String("stream-impl", strings.Join(stream.Names, ","), "stream mode: targets")
	streamProcs = flag.String("stream-procs", "2,1", "stream mode: processes, comma-separated: 2 runs the servers in a child process, 1 in this one")
	roomsFlag = flag.String("rooms", "1000,10000", "fanout mode: connections per room, comma-separated")
	eventsFlag = flag.String("events", "100,1024", "fanout mode: event data sizes in bytes, comma-separated")
	windowFlag = flag.String("window", "8,64", "fanout mode: events the publisher may be ahead of the slowest connection, comma-separated (each a run)")
	writeDelay = flag.Duration("write-delay", 0, "fanout mode: the server's parley.WithWriteDelay (0 = default)")
	clientFlag = flag.String("client", "raw", "fanout mode: clients, raw (gorilla readers) or parley (parley.Dial); with -mode clients, the kind to open")
	fanDuration = flag.Duration("fanout-duration", 2*time.Second, "fanout mode: measured time per case")
	idleConns = flag.Int("idle-conns", 10000, "idle mode: connections")
	memProfile = flag.String("memprofile", "", "idle mode: write the server's heap profile, taken with the connections open, to this file")
	idleClient = flag.String("idle-client", "parley", "idle mode: clients, parley or raw")
	childURL = flag.String("url", "", "clients mode (internal): server URL")
	childN = flag.Int("n", 0, "clients mode (internal): connections")
}

func flagSet(name string) bool {
	set := false
	flag.Visit(func(f *flag.Flag) { set = set || f.Name == name })
	return set
}

func runMode(mode string, duration, warmup time.Duration, count int, payloads string, payloadSet bool) error {
	switch mode {
	case "clients":
		return fanout.ClientsMain(*childURL, *childN, *clientFlag)
	case "ts-servers":
		return runTSServers()
	case "stream-servers":
		return stream.ServeChild(os.Stdin, os.Stdout, strings.Split(*streamImpl, ","))
	case "stream", "fanout", "idle", "all":
	default:
		return fmt.Errorf("unknown -mode %q (unary, stream, fanout, idle or all)", mode)
	}
	w := bufio.NewWriter(os.Stdout)
	defer w.Flush()
	machine(w)
	fmt.Fprintf(w, "Load average (1/5/15 min) at start: %s\n\n", loadavg())
	fmt.Fprintf(w, "Command: `cd bench && go run ./cmd/parley-bench%s`\n\n", quoteArgs(os.Args[1:]))
	if mode == "stream" || mode == "all" {
		if !payloadSet {
			payloads = "1024"
		}
		if err := runStream(w, duration, warmup, count, payloads); err != nil {
			return err
		}
	}
	if mode == "fanout" || mode == "all" {
		if err := runFanout(w, warmup); err != nil {
			return err
		}
	}
	if mode == "idle" || mode == "all" {
		if err := runIdle(w); err != nil {
			return err
		}
	}
	fmt.Fprintf(w, "Load average (1/5/15 min) at end: %s\n", loadavg())
	return nil
}

func runStream(w *bufio.Writer, duration, warmup time.Duration, count int, payloads string) error {
	concs, err := ints(*streamsFlag)
	if err != nil {
		return err
	}
	sizes, err := ints(payloads)
	if err != nil {
		return err
	}
	procs, err := ints(*streamProcs)
	if err != nil {
		return err
	}
	names := strings.Split(*streamImpl, ",")
	ctx := context.Background()
	type key struct {
		name           string
		procs, c, size int
	}
	rounds := map[key][]stream.Result{}
	for _, p := range procs {
		ts, stop, err := streamTargets(ctx, p, names)
		if err != nil {
			return err
		}
		for round := range count {
			for _, c := range concs {
				for _, size := range sizes {
					// Each round reverses the last one's order, so that
					// neither target always runs in the other's wake.
					order := slices.Clone(ts)
					if round%2 == 1 {
						slices.Reverse(order)
					}
					for _, t := range order {
						r, err := stream.Run(ctx, t, c, size, warmup, duration)
						if err != nil {
							stop()
							return err
						}
						fmt.Fprintf(os.Stderr, "round %d: stream %-7s procs=%d streams=%-3d %5d B  %9.0f msgs/s  %5.2f CPU µs/msg  %5.1f allocs/msg  min share %.2f\n",
							round+1, t.Name, p, c, size, r.PerSec(), float64(r.CPUPerMsg().Nanoseconds())/1e3, r.AllocsPerMsg(), r.MinShare)
						k := key{t.Name, p, c, size}
						rounds[k] = append(rounds[k], r)
					}
				}
			}
		}
		stop() // a layout's servers do not idle beside the next one's
	}
	median := func(k key) (stream.Result, bool) {
		rs := slices.Clone(rounds[k])
		if len(rs) == 0 {
			return stream.Result{}, false
		}
		slices.SortFunc(rs, func(a, b stream.Result) int {
			switch {
			case a.PerSec() < b.PerSec():
				return -1
			case a.PerSec() > b.PerSec():
				return 1
			}
			return 0
		})
		return rs[len(rs)/2], true
	}
	fmt.Fprintf(w, "### Streaming: bidirectional echo over one connection\n\n")
	fmt.Fprintf(w, "Each stream has a sender goroutine sending items as fast as flow control allows and a receiver goroutine counting the echoes; the server handler echoes each item as it arrives. msgs/s counts echoes received (each item crossed the socket twice). Default flow control on both (Parley: %d-item stream window; grpc-go: HTTP/2 windows with BDP estimation). processes: 2 runs both servers in a child process, as a deployment does; 1 runs them in the client's process, where each side's garbage collections and goroutines share one Go runtime with the other's. %v measured after %v warm-up", 64, duration, warmup)
	if count > 1 {
		fmt.Fprintf(w, ", median of %d rounds (the targets run back to back in each round, in the order reversed every other round); vs grpc is the median of the rounds' ratios, with their range", count)
	}
	fmt.Fprint(w, ". CPU µs/msg (user+system, getrusage), allocs/msg and B/msg are client's and server's together, per echo. min share: the slowest stream's share of an even split.\n\n")
	fmt.Fprintln(w, "| implementation | processes | streams | item | msgs/s | vs grpc | MB/s echoed | CPU µs/msg | allocs/msg | B/msg | min share |")
	fmt.Fprintln(w, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
	for _, p := range procs {
		for _, c := range concs {
			for _, size := range sizes {
				for _, name := range names {
					r, ok := median(key{name, p, c, size})
					if !ok {
						continue
					}
					vs := "—"
					if name != "grpc" {
						vs = pairedRatio(rounds[key{name, p, c, size}], rounds[key{"grpc", p, c, size}])
					}
					fmt.Fprintf(w, "| %s | %d | %d | %s | %.0f | %s | %.1f | %.2f | %.1f | %.0f | %.2f |\n",
						name, p, c, sizeName(size), r.PerSec(), vs, r.PerSec()*float64(size)/1e6, float64(r.CPUPerMsg().Nanoseconds())/1e3, r.AllocsPerMsg(), r.BytesPerMsg(), r.MinShare)
				}
			}
		}
	}
	fmt.Fprintln(w)
	w.Flush()
	return nil
}

// pairedRatio compares a target with grpc round by round: each round ran
// the two back to back, so their ratio is measured under one state of the
// machine, while a shared VM's speed can change by half between rounds (a
// one-process run of the same binary measured 396k and 676k msgs/s for
// the same case, minutes apart). It gives the median of the rounds'
// ratios, and their range when there is more than one.
func pairedRatio(a, grpc []stream.Result) string {
	var ratios []float64
	for i := range min(len(a), len(grpc)) {
		if g := grpc[i].PerSec(); g > 0 {
			ratios = append(ratios, a[i].PerSec()/g)
		}
	}
	if len(ratios) == 0 {
		return "—"
	}
	slices.Sort(ratios)
	m := ratios[len(ratios)/2]
	if len(ratios)%2 == 0 {
		m = (ratios[len(ratios)/2-1] + m) / 2
	}
	if len(ratios) == 1 {
		return fmt.Sprintf("%.2f×", m)
	}
	return fmt.Sprintf("%.2f× (%.2f–%.2f)", m, ratios[0], ratios[len(ratios)-1])
}

// streamTargets dials each named stream target with its server in this
// process (procs 1) or all of them in a child process (procs 2); stop
// closes them and their servers.
func streamTargets(ctx context.Context, procs int, names []string) (ts []*stream.Target, stop func(), err error) {
	switch procs {
	case 1:
		stop = func() {
			for _, t := range ts {
				t.Close()
			}
		}
		for _, name := range names {
			t, err := stream.New(ctx, name)
			if err != nil {
				stop()
				return nil, nil, err
			}
			ts = append(ts, t)
		}
		return ts, stop, nil
	case 2:
		self, err := os.Executable()
		if err != nil {
			return nil, nil, err
		}
		args := []string{"-mode", "stream-servers", "-stream-impl", strings.Join(names, ",")}
		if prof := flag.Lookup("cpuprofile").Value.String(); prof != "" {
			// The servers' own profile, beside the client's.
			args = append(args, "-cpuprofile", prof+".servers")
		}
		cmd := exec.Command(self, args...)
		cmd.Stderr = os.Stderr
		return stream.SpawnServers(ctx, cmd, names)
	}
	return nil, nil, fmt.Errorf("-stream-procs: %d processes (want 1 or 2)", procs)
}

func runFanout(w *bufio.Writer, warmup time.Duration) error {
	rooms, err := ints(*roomsFlag)
	if err != nil {
		return err
	}
	sizes, err := ints(*eventsFlag)
	if err != nil {
		return err
	}
	windows, err := ints(*windowFlag)
	if err != nil {
		return err
	}
	var rs []fanout.Result
	var o fanout.Options
	for _, window := range windows {
		o = fanout.Options{Rooms: rooms, Sizes: sizes, Warmup: max(warmup, 500*time.Millisecond), Duration: *fanDuration, Window: window, Client: *clientFlag, WriteDelay: *writeDelay}
		r, err := fanout.Run(o, func(f string, a ...any) { fmt.Fprintf(os.Stderr, f+"\n", a...) })
		if err != nil {
			return err
		}
		rs = append(rs, r...)
	}
	fmt.Fprintf(w, "### Fan-out: one publisher, one room (write delay %v)\n\n", *writeDelay)
	fmt.Fprintf(w, "Server and publisher in this process (parley.NewServer on a plain http.Server, default options: 1 MiB send queue per connection); the room's clients in a child process (%s), because the machine's open-files hard limit (%d) cannot hold both ends of 10,000 sockets in one process. The publisher calls Server.Publish(ToRoom) in a loop, at most `window` events ahead of the slowest connection (paced, not flooded: a flood would only fill send queues and cut connections off as slow consumers; the child reports each event once every connection has it). The more events may be in flight, the more each write carries, and the longer each waits. Each event's data carries its publish time (wall clock); latency is publish → the client's read of it, over every delivery in the window. %v measured per case after %v warm-up. CPU µs/delivery from /proc/<pid>/stat (10 ms ticks).\n\n",
		clientDesc(*clientFlag), fanout.FDLimit(), *fanDuration, o.Warmup)
	fmt.Fprintln(w, "| window | room | event data | deliveries/s | events/s | p50 | p99 | max | server CPU µs/delivery | clients CPU µs/delivery | server allocs/event | server writes/delivery |")
	fmt.Fprintln(w, "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
	for _, r := range rs {
		fmt.Fprintf(w, "| %d | %d | %s | %.0f | %.0f | %s | %s | %s | %.2f | %.2f | %.0f | %.2f |\n",
			r.Window, r.Conns, sizeName(r.Size), r.PerSec(), float64(r.Events)/r.Elapsed.Seconds(), dur(r.P50), dur(r.P99), dur(r.Max),
			float64(r.ServerCPU.Microseconds())/float64(r.Deliveries), float64(r.ClientCPU.Microseconds())/float64(r.Deliveries),
			float64(r.ServerMallocs)/float64(r.Events), float64(r.ServerWrites)/float64(r.Deliveries))
	}
	fmt.Fprintln(w)
	w.Flush()
	return nil
}

func clientDesc(kind string) string {
	if kind == "raw" {
		return "raw gorilla/websocket readers that do the Hello/Welcome handshake and then only read, finding the event's header in the frame's bytes without decoding it"
	}
	return "parley.Dial clients with an event handler"
}

func runIdle(w *bufio.Writer) error {
	r, err := fanout.RunIdle(*idleConns, *idleClient, time.Second, *memProfile)
	if err != nil {
		return err
	}
	kib := func(a, b int64) string { return fmt.Sprintf("%.1f KiB", float64(b-a)/float64(r.Conns)/1024) }
	ukib := func(a, b uint64) string { return kib(int64(a), int64(b)) }
	fmt.Fprintf(w, "### Memory per idle connection\n\n")
	fmt.Fprintf(w, "%d idle connections (%s clients in a child process), each through the handshake and joined to one room; the server's process measured before and after (after runtime.GC and debug.FreeOSMemory, 1 s after the last connection). RSS counts user-space memory only; the kernel's socket buffers are not in it.\n\n", r.Conns, r.ClientKind)
	fmt.Fprintln(w, "| side | RSS before | RSS after | RSS / conn | Go heap in use / conn | goroutine stacks / conn | goroutines / conn |")
	fmt.Fprintln(w, "|---|---:|---:|---:|---:|---:|---:|")
	fmt.Fprintf(w, "| server (parley.Server, incl. session, hub and room state) | %.1f MiB | %.1f MiB | %s | %s | %s | %.2f |\n",
		float64(r.ServerRSS0)/(1<<20), float64(r.ServerRSS1)/(1<<20), kib(r.ServerRSS0, r.ServerRSS1),
		ukib(r.ServerHeap0, r.ServerHeap1), ukib(r.ServerStack0, r.ServerStack1),
		float64(r.ServerGoroutines1-r.ServerGoroutines0)/float64(r.Conns))
	fmt.Fprintf(w, "| client (%s, for reference) | %.1f MiB | %.1f MiB | %s | | | %.2f |\n\n",
		r.ClientKind, float64(r.ClientRSS0)/(1<<20), float64(r.ClientRSS1)/(1<<20), kib(r.ClientRSS0, r.ClientRSS1),
		float64(r.ClientGoroutines)/float64(r.Conns))
	w.Flush()
	return nil
}
