// Command parley-bench compares unary echo over one connection on loopback:
// Parley, a raw gorilla/websocket echo (the floor) and grpc-go over one
// HTTP/2 connection (the peer), side by side in one run. It prints a
// markdown table with the machine and the command.
//
//	cd bench && go run ./cmd/parley-bench [-duration 1s] [-warmup 300ms] [-count 3]
//
// Server and client run in this one process, so allocations per call count
// both sides (and the harness, which allocates next to nothing while
// measuring), and both sides share the machine's cores.
package main

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"runtime"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/parleyrpc/parley/bench/echo"
)

func main() {
	var (
		duration   = flag.Duration("duration", time.Second, "measured time per case")
		warmup     = flag.Duration("warmup", 300*time.Millisecond, "unmeasured warm-up before each case")
		count      = flag.Int("count", 3, "rounds; each row reports the round with the median calls/s")
		conc       = flag.String("c", "1,64", "concurrent callers, comma-separated")
		payloads   = flag.String("payload", "16,1024", "payload sizes in bytes, comma-separated")
		targets    = flag.String("impl", strings.Join(echo.Names, ","), "targets, comma-separated: "+strings.Join(echo.Names, ", "))
		cpuprofile = flag.String("cpuprofile", "", "write a CPU profile of the whole run to this file (stream mode with servers in a child process: theirs to this file + \".servers\")")
		mode       = flag.String("mode", "unary", "what to measure: unary, stream, fanout, idle, or all (each in turn)")
	)
	registerModeFlags()
	flag.Parse()
	concs, err := ints(*conc)
	check(err)
	sizes, err := ints(*payloads)
	check(err)
	names := strings.Split(*targets, ",")

	if *cpuprofile != "" {
		f, err := os.Create(*cpuprofile)
		check(err)
		check(pprof.StartCPUProfile(f))
		defer pprof.StopCPUProfile()
	}
	if *mode != "unary" {
		check(runMode(*mode, *duration, *warmup, *count, *payloads, flagSet("payload")))
		return
	}

	ctx := context.Background()
	type key struct {
		target  string
		c, size int
	}
	rounds := map[key][]echo.Result{}
	// Every target runs for the whole benchmark (idle when not measured), and
	// each case runs the targets back to back, so that a change in the
	// machine's load hits them alike.
	var ts []*echo.Target
	for _, name := range names {
		t, err := echo.New(ctx, name)
		check(err)
		defer t.Close()
		ts = append(ts, t)
	}
	load0 := loadavg()
	for round := range *count {
		for _, c := range concs {
			for _, size := range sizes {
				for _, t := range ts {
					r, err := echo.Run(ctx, t, c, size, *warmup, *duration)
					check(err)
					reads, writes := r.SyscallsPerCall()
					fmt.Fprintf(os.Stderr, "round %d: %-8s c=%-3d %5d B  %8.0f calls/s  p50 %-10v p99 %-10v %5.1f allocs/call  %.2f reads/call  %.2f writes/call\n",
						round+1, t.Name, c, size, r.CallsPerSec(), r.P50, r.P99, r.AllocsPerCall(), reads, writes)
					k := key{t.Name, c, size}
					rounds[k] = append(rounds[k], r)
				}
			}
		}
	}
	load1 := loadavg()
	median := func(k key) (echo.Result, bool) {
		rs := slices.Clone(rounds[k])
		if len(rs) == 0 {
			return echo.Result{}, false
		}
		slices.SortFunc(rs, func(a, b echo.Result) int {
			switch {
			case a.CallsPerSec() < b.CallsPerSec():
				return -1
			case a.CallsPerSec() > b.CallsPerSec():
				return 1
			}
			return 0
		})
		return rs[len(rs)/2], true
	}

	w := bufio.NewWriter(os.Stdout)
	defer w.Flush()
	machine(w)
	fmt.Fprintf(w, "Load average (1/5/15 min) at start: %s; at end: %s\n\n", load0, load1)
	fmt.Fprintf(w, "Command: `cd bench && go run ./cmd/parley-bench%s`\n\n", quoteArgs(os.Args[1:]))
	fmt.Fprintf(w, "Unary echo over one connection on loopback; client and server in one process; %v measured per case after %v warm-up", *duration, *warmup)
	if *count > 1 {
		fmt.Fprintf(w, "; median of %d rounds by calls/s", *count)
	}
	fmt.Fprint(w, ". allocs/call, B/call and syscalls/call are the whole process's — client and server together — over the measured window: runtime.MemStats Mallocs and TotalAlloc deltas, and read/write system calls from /proc/self/io, each ÷ calls.\n\n")
	fmt.Fprintln(w, "| implementation | callers | payload | calls/s | vs grpc | vs gorilla | p50 | p99 | allocs/call | B/call | reads/call | writes/call |")
	fmt.Fprintln(w, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
	for _, c := range concs {
		for _, size := range sizes {
			for _, name := range names {
				r, ok := median(key{name, c, size})
				if !ok {
					continue
				}
				ratio := func(other string) string {
					o, ok := median(key{other, c, size})
					if !ok || other == name {
						return "—"
					}
					return fmt.Sprintf("%.2f×", r.CallsPerSec()/o.CallsPerSec())
				}
				reads, writes := r.SyscallsPerCall()
				fmt.Fprintf(w, "| %s | %d | %s | %.0f | %s | %s | %s | %s | %.1f | %.0f | %.2f | %.2f |\n",
					name, c, sizeName(size), r.CallsPerSec(), ratio("grpc"), ratio("gorilla"),
					dur(r.P50), dur(r.P99), r.AllocsPerCall(), r.BytesPerCall(), reads, writes)
			}
		}
	}
}

func machine(w io.Writer) {
	model := "unknown"
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for line := range strings.Lines(string(b)) {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				model = strings.TrimSpace(v)
				break
			}
		}
	}
	kernel := ""
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		kernel = ", Linux " + strings.TrimSpace(string(b))
	}
	fmt.Fprintf(w, "Machine: %s, %d cores (GOMAXPROCS %d), %s %s/%s%s\n\n",
		model, runtime.NumCPU(), runtime.GOMAXPROCS(0), runtime.Version(), runtime.GOOS, runtime.GOARCH, kernel)
}

func loadavg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "unknown"
	}
	return strings.Join(f[:3], " ")
}

func dur(d time.Duration) string {
	switch {
	case d >= time.Millisecond:
		return fmt.Sprintf("%.2f ms", float64(d)/float64(time.Millisecond))
	default:
		return fmt.Sprintf("%.1f µs", float64(d)/float64(time.Microsecond))
	}
}

func sizeName(n int) string {
	if n >= 1024 && n%1024 == 0 {
		return fmt.Sprintf("%d KiB", n/1024)
	}
	return fmt.Sprintf("%d B", n)
}

func quoteArgs(args []string) string {
	var b strings.Builder
	for _, a := range args {
		b.WriteByte(' ')
		if strings.ContainsAny(a, " \t'\"$") {
			b.WriteString(strconv.Quote(a))
		} else {
			b.WriteString(a)
		}
	}
	return b.String()
}

func ints(s string) ([]int, error) {
	var out []int
	for f := range strings.SplitSeq(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil {
			return nil, fmt.Errorf("%q: %w", s, err)
		}
		out = append(out, n)
	}
	return out, nil
}

func check(err error) {
	if err != nil {
		fmt.Fprintln(os.Stderr, "parley-bench:", err)
		os.Exit(1)
	}
}
