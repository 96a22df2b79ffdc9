// Package fanout measures server-pushed events: one publisher, a room of N
// real WebSocket connections, deliveries per second and publish→receive
// latency; and the memory an idle connection costs.
//
// The file-descriptor hard limit on the benchmark machine is 20,000, so
// 10,000 connections cannot have both ends in one process: the server and
// the publisher run in the benchmark's process, the clients in a child
// process (the same binary, -mode clients) that it controls over stdin and
// stdout. That also separates the server's cost (CPU, memory) from the
// clients'.
package fanout

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"math/bits"
	"os"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"
	benchv1 "github.com/parleyrpc/parley/bench/gen/bench/v1"
	parleyv1 "github.com/parleyrpc/parley/gen/parley/v1"
	"github.com/parleyrpc/parley/runtime/parley"
	"google.golang.org/protobuf/proto"
)

// EventSpec is the event every connection receives, hand-written as
// generated code would declare it. Its message is benchv1.EchoRequest,
// whose data carries a header (see putHeader) and padding.
var EventSpec = &parley.MethodSpec{Procedure: "/bench.v1.Events/Posted"}

// The header at the start of every event's data: a marker (so a raw
// reader finds it in the frame without decoding it), the sequence number,
// the publish time (Unix ns, wall clock: publisher and readers are two
// processes on one machine) and whether the event is measured.
var marker = []byte("PLYBENCH")

const headerLen = 8 + 8 + 8 + 1

func putHeader(b []byte, seq uint64, at time.Time, measured bool) {
	copy(b, marker)
	binary.LittleEndian.PutUint64(b[8:], seq)
	binary.LittleEndian.PutUint64(b[16:], uint64(at.UnixNano()))
	b[24] = 0
	if measured {
		b[24] = 1
	}
}

func readHeader(b []byte) (seq uint64, at int64, measured, ok bool) {
	i := bytes.Index(b, marker)
	if i < 0 || len(b)-i < headerLen {
		return 0, 0, false, false
	}
	b = b[i:]
	return binary.LittleEndian.Uint64(b[8:]), int64(binary.LittleEndian.Uint64(b[16:])), b[24] == 1, true
}

// Histogram is a log-linear latency histogram: 8 sub-buckets per power of
// two of nanoseconds (≤ 12.5 % relative error). Safe for concurrent Add.
type Histogram struct {
	b [64 * 8]atomic.Uint64
}

func bucket(ns int64) int {
	if ns < 8 {
		return int(max(ns, 0))
	}
	v := uint64(ns)
	e := bits.Len64(v) - 1 // ≥ 3
	m := (v >> (e - 3)) & 7
	return (e-2)*8 + int(m)
}

// bucketHigh is the upper bound of bucket i, in ns.
func bucketHigh(i int) int64 {
	if i < 8 {
		return int64(i)
	}
	e := i/8 + 2
	m := uint64(i % 8)
	return int64(((8 + m + 1) << (e - 3)) - 1)
}

func (h *Histogram) Add(ns int64) { h.b[bucket(ns)].Add(1) }

// Merge adds counts (as Counts returns them).
func (h *Histogram) Merge(counts []uint64) {
	for i, c := range counts {
		h.b[i].Add(c)
	}
}

func (h *Histogram) Counts() []uint64 {
	out := make([]uint64, len(h.b))
	for i := range h.b {
		out[i] = h.b[i].Load()
	}
	return out
}

func (h *Histogram) Reset() {
	for i := range h.b {
		h.b[i].Store(0)
	}
}

// Quantile returns the upper bound of the bucket holding quantile q.
func (h *Histogram) Quantile(q float64) time.Duration {
	c := h.Counts()
	var total uint64
	for _, n := range c {
		total += n
	}
	if total == 0 {
		return 0
	}
	want := uint64(math.Ceil(q * float64(total)))
	var seen uint64
	for i, n := range c {
		seen += n
		if seen >= want {
			return time.Duration(bucketHigh(i))
		}
	}
	return time.Duration(bucketHigh(len(c) - 1))
}

// Count is the number of samples.
func (h *Histogram) Count() uint64 {
	var total uint64
	for _, n := range h.Counts() {
		total += n
	}
	return total
}

// ClientsMain is the child process: it opens n connections to url — raw
// gorilla/websocket readers that do Parley's Hello/Welcome handshake and
// then only read, or parley.Dial clients with an event handler — prints
// "conn <session id>" for each, then "ready <rss-before> <rss-after>", and
// counts events. Every event carries its sequence number; once all n
// connections received event seq it prints "done <seq>". On "report" on
// stdin it prints "hist <counts>" (latencies of measured events since the
// last report) and resets. It exits when stdin closes.
func ClientsMain(url string, n int, kind string) error {
	raiseFDLimit()
	out := bufio.NewWriter(os.Stdout)
	var outMu sync.Mutex
	println := func(format string, args ...any) {
		outMu.Lock()
		fmt.Fprintf(out, format+"\n", args...)
		out.Flush()
		outMu.Unlock()
	}
	rss0 := gcRSS()
	c := &clients{n: uint64(n), done: make(chan uint64, 4096), errCh: make(chan error, 16)}
	closers := make([]func(), n)
	ids := make([]string, n)
	var next atomic.Int64
	var wg sync.WaitGroup
	var errOnce sync.Once
	var dialErr error
	for range 32 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= n {
					return
				}
				var err error
				switch kind {
				case "raw":
					ids[i], closers[i], err = c.dialRaw(url)
				case "parley":
					ids[i], closers[i], err = c.dialParley(url)
				default:
					err = fmt.Errorf("unknown client kind %q (raw or parley)", kind)
				}
				if err != nil {
					errOnce.Do(func() { dialErr = fmt.Errorf("connection %d: %w", i, err) })
					return
				}
			}
		}()
	}
	wg.Wait()
	if dialErr != nil {
		return dialErr
	}
	rss1 := gcRSS()
	outMu.Lock()
	for _, id := range ids {
		fmt.Fprintf(out, "conn %s\n", id)
	}
	out.Flush()
	outMu.Unlock()
	println("ready %d %d %d", rss0, rss1, runtime.NumGoroutine())

	go func() {
		for seq := range c.done {
			println("done %d", seq)
		}
	}()
	go func() {
		for err := range c.errCh {
			println("error %v", err)
		}
	}()
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		switch in.Text() {
		case "report":
			counts := c.hist.Counts()
			c.hist.Reset()
			var b strings.Builder
			b.WriteString("hist")
			for _, x := range counts {
				b.WriteByte(' ')
				b.WriteString(strconv.FormatUint(x, 10))
			}
			println("%s", b.String())
		case "rss":
			println("rss %d", gcRSS())
		}
	}
	c.closing.Store(true)
	for _, cl := range closers {
		cl()
	}
	return nil
}

type clients struct {
	n       uint64
	hist    Histogram
	slots   [4096]atomic.Uint64 // receivers of seq, by seq % len
	done    chan uint64
	closing atomic.Bool
	errCh   chan error
}

func (c *clients) fail(err error) {
	if c.closing.Load() {
		return
	}
	select {
	case c.errCh <- err:
	default:
	}
}

// received counts one event on one connection.
func (c *clients) received(data []byte) {
	seq, at, measured, ok := readHeader(data)
	if !ok {
		return
	}
	if measured {
		c.hist.Add(time.Now().UnixNano() - at)
	}
	slot := &c.slots[seq%uint64(len(c.slots))]
	if slot.Add(1) == c.n {
		slot.Store(0)
		c.done <- seq
	}
}

func (c *clients) dialRaw(url string) (string, func(), error) {
	d := websocket.Dialer{Subprotocols: []string{parley.SubprotocolProto}, ReadBufferSize: 2048, WriteBufferSize: 512}
	ws, _, err := d.Dial(url, nil)
	if err != nil {
		return "", nil, err
	}
	hello, _ := proto.Marshal(&parleyv1.Frame{Kind: &parleyv1.Frame_Hello{Hello: &parleyv1.Hello{Agent: "parley-bench-raw"}}})
	if err := ws.WriteMessage(websocket.BinaryMessage, hello); err != nil {
		ws.Close()
		return "", nil, err
	}
	_, b, err := ws.ReadMessage()
	if err != nil {
		ws.Close()
		return "", nil, err
	}
	var f parleyv1.Frame
	if err := proto.Unmarshal(b, &f); err != nil || f.GetWelcome() == nil {
		ws.Close()
		return "", nil, fmt.Errorf("no welcome: %v %v", err, &f)
	}
	go func() {
		buf := make([]byte, 0, 2048)
		for {
			_, r, err := ws.NextReader()
			if err == nil {
				buf, err = readAll(r, buf[:0])
			}
			if err != nil {
				c.fail(err)
				return
			}
			c.received(buf)
		}
	}()
	return f.GetWelcome().GetSessionId(), func() { _ = ws.Close() }, nil
}

func (c *clients) dialParley(url string) (string, func(), error) {
	conn, err := parley.Dial(context.Background(), url)
	if err != nil {
		return "", nil, err
	}
	conn.Register(parley.NewEventMethod(EventSpec, func(_ context.Context, ev *benchv1.EchoRequest) {
		c.received(ev.GetData())
	}))
	go func() {
		<-conn.Done()
		if err := conn.Err(); err != nil && !errors.Is(err, io.EOF) {
			c.fail(err)
		}
	}()
	return conn.SessionID(), func() { _ = conn.Close() }, nil
}

func readAll(r io.Reader, b []byte) ([]byte, error) {
	for {
		if len(b) == cap(b) {
			b = append(b, 0)[:len(b)]
		}
		n, err := r.Read(b[len(b):cap(b)])
		b = b[:len(b)+n]
		if err != nil {
			if err == io.EOF {
				return b, nil
			}
			return b, err
		}
	}
}

// gcRSS collects garbage, returns freed memory to the OS, and reads the
// process's resident set size in bytes.
func gcRSS() int64 {
	runtime.GC()
	debug.FreeOSMemory()
	return RSS(os.Getpid())
}

// RSS reads a process's resident set size in bytes from /proc, or -1.
func RSS(pid int) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return -1
	}
	for line := range strings.Lines(string(b)) {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			f := strings.Fields(v)
			if len(f) >= 1 {
				kb, err := strconv.ParseInt(f[0], 10, 64)
				if err == nil {
					return kb << 10
				}
			}
		}
	}
	return -1
}
