package parley

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"math/rand/v2"
	"net"
	"net/http"
	"sync"
	"time"
)

// bufPool recycles encoded frames between the goroutines that encode them
// and the writer that sends them.
var bufPool = sync.Pool{New: func() any { b := make([]byte, 0, 512); return &b }}

func getBuf() *[]byte { return bufPool.Get().(*[]byte) }

func putBuf(b *[]byte) {
	if cap(*b) > 64<<10 {
		return // do not pin large buffers
	}
	*b = (*b)[:0]
	bufPool.Put(b)
}

// errQueueClosed is returned by pushes after the connection began closing.
var errQueueClosed = errors.New("parley: connection closed")

// errSlowConsumer is returned by a non-blocking push when the queue is full.
var errSlowConsumer = errors.New("parley: send queue full")

// sendQueue holds encoded frames waiting for the connection's writer. It is
// bounded in bytes: a blocking push waits for room, a non-blocking one
// fails. A frame larger than the bound is accepted into an empty queue, so
// that any frame can be sent.
//
// Any goroutine may push; only the writer takes. All fields are guarded by
// mu.
//
// The writer runs only while there is something to write: the push that
// finds the queue without one starts it (startWriter), and it exits once
// the queue is empty, so an idle connection costs no goroutine.
type sendQueue struct {
	mu          sync.Mutex
	frames      []outFrame
	bytes       int
	maxBytes    int
	closed      bool
	writing     bool          // a writer goroutine runs
	finished    bool          // the last writer ran; no more start
	space       chan struct{} // closed (and replaced) when the writer takes and pushes wait
	waiters     int           // blocked pushes
	startWriter func()
	delayed     bool // the writer waits for more frames first (WithWriteDelay)
}

func newSendQueue(maxBytes int, startWriter func(), delayed bool) *sendQueue {
	return &sendQueue{maxBytes: maxBytes, space: make(chan struct{}), startWriter: startWriter, delayed: delayed}
}

// kickLocked reports whether the caller must start a writer; q.mu is held.
func (q *sendQueue) kickLocked() bool {
	if q.writing || q.finished {
		return false
	}
	q.writing = true
	return true
}

// idle lets the writer exit when there is nothing left to do.
func (q *sendQueue) idle() bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	if len(q.frames) == 0 && !q.closed {
		q.writing = false
		return true
	}
	return false
}

// finish records that the last writer ran.
func (q *sendQueue) finish() {
	q.mu.Lock()
	q.finished, q.writing = true, false
	q.mu.Unlock()
}

// outFrame is an encoded frame waiting to be written. A pooled frame
// returns to bufPool once written; a shared one (an event encoded once for
// many connections) is only read.
type outFrame struct {
	b      *[]byte
	pooled bool
	ping   bool // a WebSocket ping control frame; b is nil
}

// push queues b, a pooled buffer. With block set it waits for room until
// ctx ends; otherwise a full queue returns errSlowConsumer. On success the
// queue owns b; on failure the caller still does.
func (q *sendQueue) push(ctx context.Context, b *[]byte, block bool) error {
	return q.pushFrame(ctx, outFrame{b: b, pooled: true}, block)
}

func (q *sendQueue) pushFrame(ctx context.Context, f outFrame, block bool) error {
	start, err := q.pushLocked(ctx, f, block)
	q.mu.Unlock()
	if start {
		go q.startWriter()
	}
	return err
}

// pushOwning is push for a goroutine that can write itself: when no writer
// runs, it becomes the writer instead of starting one, and must then call
// the endpoint's writeOwned. With a write delay configured it never does:
// a writer goroutine waits for more frames, the caller should not.
func (q *sendQueue) pushOwning(ctx context.Context, b *[]byte, block bool) (own bool, err error) {
	start, err := q.pushLocked(ctx, outFrame{b: b, pooled: true}, block)
	q.mu.Unlock()
	if start && q.delayed {
		go q.startWriter()
		return false, err
	}
	return start, err
}

// pushLocked queues f and reports whether a writer must start; it returns
// with q.mu held.
func (q *sendQueue) pushLocked(ctx context.Context, f outFrame, block bool) (start bool, err error) {
	b := f.b
	size := 0
	if b != nil {
		size = len(*b)
	}
	q.mu.Lock()
	for !q.closed && q.bytes > 0 && q.bytes+size > q.maxBytes {
		if !block {
			return false, errSlowConsumer
		}
		space := q.space
		q.waiters++
		q.mu.Unlock()
		select {
		case <-space:
		case <-ctx.Done():
			q.mu.Lock()
			q.waiters--
			return false, ctx.Err()
		}
		q.mu.Lock()
		q.waiters--
	}
	if q.closed {
		return false, errQueueClosed
	}
	q.frames = append(q.frames, f)
	if b != nil {
		q.bytes += len(*b)
	}
	return q.kickLocked(), nil
}

// take moves every queued frame into batch (reusing its storage) and
// reports whether the queue is closed.
func (q *sendQueue) take(batch []outFrame) ([]outFrame, bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	batch = append(batch[:0], q.frames...)
	clear(q.frames)
	q.frames = q.frames[:0]
	q.bytes = 0
	if q.waiters > 0 {
		close(q.space)
		q.space = make(chan struct{})
	}
	return batch, q.closed
}

// close stops new pushes; frames already queued are still taken.
func (q *sendQueue) close() {
	q.mu.Lock()
	if !q.closed {
		q.closed = true
		close(q.space) // wakes blocked pushes, which then see closed
		q.space = make(chan struct{})
	}
	start := q.kickLocked() // a writer sends the close frame
	q.mu.Unlock()
	if start {
		go q.startWriter()
	}
}

// batchConn is the network connection under the WebSocket. The writer
// brackets each batch of frames with begin and flush, so that a batch
// leaves in as few system calls as it fits in, rather than one per frame:
// on loopback, syscalls dominate a call's cost. Outside a batch (the
// handshake, control frames sent by the reader), writes go straight through.
// All writes hold mu, so a flush never interleaves with a direct write.
//
// The writer frames its data messages itself (writeMessage) rather than
// through gorilla/websocket's NextWriter, which would copy each message
// into a pooled buffer of its own before copying it into buf; gorilla
// still writes the control frames (pongs, close) through Write.
type batchConn struct {
	net.Conn
	mu       sync.Mutex
	batching bool
	buf      []byte
	deadline time.Time      // the write deadline last set on Conn; guarded by mu
	reader   *readAheadConn // reads, in blocks
}

// Read reads through the read-ahead block (see readAheadConn).
func (c *batchConn) Read(p []byte) (int, error) {
	if c.reader == nil {
		c.reader = newReadAhead(c.Conn)
	}
	return c.reader.Read(p)
}

// maxBatchBytes bounds what a batch buffers before it writes.
const maxBatchBytes = 256 << 10

func (c *batchConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.batching {
		return c.Conn.Write(p)
	}
	c.buf = append(c.buf, p...)
	if len(c.buf) >= maxBatchBytes {
		if err := c.writeBuffered(); err != nil {
			return 0, err
		}
	}
	return len(p), nil
}

// SetWriteDeadline records the deadline, so that extendWriteDeadline knows
// what the connection holds whoever set it (gorilla sets its own for the
// control frames it writes).
func (c *batchConn) SetWriteDeadline(t time.Time) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.deadline = t
	return c.Conn.SetWriteDeadline(t)
}

// extendWriteDeadline makes sure the next writes have at least d/2 and at
// most d to complete. Setting a deadline re-arms a runtime timer, so under
// load it is set once per d/2, not once per batch.
func (c *batchConn) extendWriteDeadline(d time.Duration) {
	now := time.Now()
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.deadline.Sub(now) >= d/2 {
		return
	}
	c.deadline = now.Add(d)
	_ = c.Conn.SetWriteDeadline(c.deadline)
}

// writeMessage appends one unfragmented WebSocket frame (RFC 6455 §5.2)
// with the given opcode and payload; a client masks it with a fresh key,
// as the RFC requires, a server does not.
func (c *batchConn) writeMessage(opcode byte, p []byte, mask bool) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.buf = appendWSFrame(c.buf, opcode, p, mask)
	if !c.batching || len(c.buf) >= maxBatchBytes {
		return c.writeBuffered()
	}
	return nil
}

// WebSocket opcodes the writer frames itself.
const (
	opText   = 1
	opBinary = 2
	opPing   = 9
)

func appendWSFrame(b []byte, opcode byte, p []byte, mask bool) []byte {
	b = append(b, 0x80|opcode) // FIN: every message is one frame
	var maskBit byte
	if mask {
		maskBit = 0x80
	}
	switch n := len(p); {
	case n < 126:
		b = append(b, maskBit|byte(n))
	case n <= 0xFFFF:
		b = append(b, maskBit|126, byte(n>>8), byte(n))
	default:
		b = append(b, maskBit|127)
		b = binary.BigEndian.AppendUint64(b, uint64(n))
	}
	if !mask {
		return append(b, p...)
	}
	key := rand.Uint32()
	b = binary.LittleEndian.AppendUint32(b, key)
	start := len(b)
	b = append(b, p...)
	maskBytes(key, b[start:])
	return b
}

// maskBytes XORs p with the masking key, whose first byte is key's lowest,
// eight bytes at a time.
func maskBytes(key uint32, p []byte) {
	k := uint64(key) | uint64(key)<<32
	i := 0
	for ; i+8 <= len(p); i += 8 {
		binary.LittleEndian.PutUint64(p[i:], binary.LittleEndian.Uint64(p[i:])^k)
	}
	for ; i < len(p); i++ {
		p[i] ^= byte(key >> (8 * (i % 4)))
	}
}

func (c *batchConn) begin() {
	c.mu.Lock()
	c.batching = true
	c.mu.Unlock()
}

func (c *batchConn) flush() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.batching = false
	return c.writeBuffered()
}

func (c *batchConn) writeBuffered() error {
	if len(c.buf) == 0 {
		return nil
	}
	_, err := c.Conn.Write(c.buf)
	if cap(c.buf) > 4*maxBatchBytes {
		c.buf = nil
	} else {
		c.buf = c.buf[:0]
	}
	return err
}

// hijackWriter lets the server put a batchConn under gorilla/websocket's
// connection: the upgrader hijacks through it and gets the wrapped conn.
type hijackWriter struct {
	http.ResponseWriter
	conn *batchConn
}

func (w *hijackWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	h, ok := w.ResponseWriter.(http.Hijacker)
	if !ok {
		return nil, nil, errors.New("parley: the http.ResponseWriter cannot be hijacked (HTTP/2 is not supported for WebSocket upgrades)")
	}
	c, rw, err := h.Hijack()
	if err != nil {
		return nil, nil, err
	}
	w.conn = &batchConn{Conn: c}
	return w.conn, rw, nil
}

// discard drops every queued frame; the connection is being aborted.
func (q *sendQueue) discard() {
	q.mu.Lock()
	for _, f := range q.frames {
		if f.pooled && f.b != nil {
			putBuf(f.b)
		}
	}
	clear(q.frames)
	q.frames = q.frames[:0]
	q.bytes = 0
	q.mu.Unlock()
}
