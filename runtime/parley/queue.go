package parley

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"slices"
	"sync"
	"syscall"
	"time"
)

// bufPool recycles encoded frames between the goroutines that encode them
// and the writer that sends them.
var bufPool = sync.Pool{New: func() any { b := make([]byte, 0, 512); return &b }}

func getBuf() *[]byte { return bufPool.Get().(*[]byte) }

// headPool recycles the buffers of event heads (see appendEventHead): an
// event's payload is shared by its recipients, and each queued delivery
// holds only its head. Taken from bufPool, whose buffers grow with the
// largest frames a process sends, a head of ~60 bytes could pin up to
// 64 KiB per queued event, far beyond what the send queue's bound counts.
// A head longer than headCap grows out of its buffer and goes to bufPool.
const headCap = 128

var headPool = sync.Pool{New: func() any { b := make([]byte, 0, headCap); return &b }}

func getHead() *[]byte { return headPool.Get().(*[]byte) }

// putBuf returns a buffer from getBuf or getHead to its pool (bufPool's
// never have headCap: they start larger and only grow).
func putBuf(b *[]byte) {
	switch c := cap(*b); {
	case c == headCap:
		*b = (*b)[:0]
		headPool.Put(b)
		return
	case c > 64<<10:
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
	// noOwner: a push never makes the pusher the writer, because the
	// writer waits for more frames first (WithWriteDelay) or because the
	// socket cannot be written without waiting (TLS).
	noOwner bool
}

func newSendQueue(maxBytes int, startWriter func(), noOwner bool) *sendQueue {
	return &sendQueue{maxBytes: maxBytes, space: make(chan struct{}), startWriter: startWriter, noOwner: noOwner}
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

// outFrame is an encoded frame waiting to be written: b, a pooled buffer
// that returns to bufPool once written, then tail, bytes shared with other
// connections (an event's payload), which are only read.
type outFrame struct {
	b    *[]byte
	tail []byte
	ping bool // a WebSocket ping control frame; b is nil
}

// size is what the frame counts against the queue's bound.
func (f *outFrame) size() int {
	if f.b == nil {
		return 0
	}
	return len(*f.b) + len(f.tail)
}

// push queues b, a pooled buffer. With block set it waits for room until
// ctx ends; otherwise a full queue returns errSlowConsumer. On success the
// queue owns b; on failure the caller still does.
func (q *sendQueue) push(ctx context.Context, b *[]byte, block bool) error {
	return q.pushFrame(ctx, outFrame{b: b}, block)
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
// the endpoint's writeOwned (unless noOwner).
func (q *sendQueue) pushOwning(ctx context.Context, b *[]byte, block bool) (own bool, err error) {
	start, err := q.pushLocked(ctx, outFrame{b: b}, block)
	q.mu.Unlock()
	if start && q.noOwner {
		go q.startWriter()
		return false, err
	}
	return start, err
}

// pushHanded is a non-blocking push of f that leaves starting a writer to
// the caller: when it reports start, the caller holds the writer role and
// must see that a writer runs (the Server's flusher takes it).
func (q *sendQueue) pushHanded(f outFrame) (start bool, err error) {
	start, err = q.pushLocked(context.Background(), f, false)
	q.mu.Unlock()
	return start, err
}

// pushLocked queues f and reports whether a writer must start; it returns
// with q.mu held.
func (q *sendQueue) pushLocked(ctx context.Context, f outFrame, block bool) (start bool, err error) {
	size := f.size()
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
	q.bytes += size
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
// frames a whole batch of messages into one buffer and writes it at once,
// so that a batch leaves in one system call rather than one per message:
// on loopback, syscalls dominate a message's cost. It frames the messages
// itself (writeFrames) rather than through gorilla/websocket's NextWriter,
// which would copy each message into a pooled buffer of its own first;
// gorilla still writes the control frames (pongs, close) through Write.
// All writes hold mu, so bytes never interleave.
type batchConn struct {
	net.Conn
	raw      syscall.RawConn // for writes that must not wait; nil if the conn has none (TLS)
	mu       sync.Mutex
	buf      []byte         // framed bytes not yet written, in *bufp while writing
	bufp     *[]byte        // the pooled buffer buf came from; nil when idle
	deadline time.Time      // the write deadline last set on Conn
	reader   *readAheadConn // reads, in blocks

	// tryWrite's callback and its results, kept here so that it
	// allocates nothing; guarded by mu.
	writeFn func(fd uintptr) bool
	wn      int
	werr    error
}

func newBatchConn(c net.Conn) *batchConn {
	bc := &batchConn{Conn: c}
	if sc, ok := c.(syscall.Conn); ok {
		if raw, err := sc.SyscallConn(); err == nil {
			bc.raw = raw
		}
	}
	bc.writeFn = bc.rawWrite
	bc.reader = newReadAhead(c, bc.raw)
	return bc
}

// Read reads through the read-ahead block (see readAheadConn).
func (c *batchConn) Read(p []byte) (int, error) { return c.reader.Read(p) }

// maxBatchBytes bounds what a waiting writer buffers before it writes.
const maxBatchBytes = 256 << 10

// batchPool recycles the buffers batches are framed into: a busy
// connection's grow to its batches' size and are reused at that size (up
// to 4*maxBatchBytes); an idle connection holds none.
var batchPool = sync.Pool{New: func() any { b := make([]byte, 0, 4096); return &b }}

// Write writes p at once, after any bytes a non-waiting write left.
func (c *batchConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.buf) == 0 {
		return c.Conn.Write(p)
	}
	c.buf = append(c.buf, p...)
	if err := c.writeBuffered(); err != nil {
		return 0, err
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

// writeFrames frames each message of batch as one WebSocket message with
// the given opcode (a client masks them, a server does not), releases
// their buffers and clears batch. With wait set it then writes everything,
// waiting for the socket up to the write deadline. Without, it writes what
// the socket takes at once and reports whether bytes stay buffered, for a
// waiting write to finish (see tryWrite).
func (c *batchConn) writeFrames(batch []outFrame, opcode byte, mask, wait bool) (buffered bool, err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for i, f := range batch {
		if err == nil {
			if c.bufp == nil {
				c.bufp = batchPool.Get().(*[]byte)
				c.buf = (*c.bufp)[:0] // buf is empty whenever bufp is nil
				if need := framedSize(batch[i:]); cap(c.buf) < need {
					// One allocation of the size the batch needs, not a
					// chain of doublings up to it.
					c.buf = make([]byte, 0, need)
				}
			}
			if f.ping {
				c.buf = appendWSFrame(c.buf, opPing, nil, nil, mask)
			} else {
				c.buf = appendWSFrame(c.buf, opcode, *f.b, f.tail, mask)
			}
			if wait && len(c.buf) >= maxBatchBytes {
				err = c.writeBuffered()
			}
		}
		if f.b != nil {
			putBuf(f.b)
		}
		batch[i] = outFrame{}
	}
	if err != nil {
		return false, err
	}
	if wait || c.raw == nil {
		return false, c.writeBuffered()
	}
	return c.tryWrite()
}

// framedSize is the buffer that framing batch takes: up to maxBatchBytes
// and the frame that crosses it (the most a waiting write buffers).
func framedSize(batch []outFrame) int {
	n := 0
	for _, f := range batch {
		if n >= maxBatchBytes {
			break
		}
		n += f.size() + maxWSHeader
	}
	return n
}

// maxWSHeader is the longest WebSocket frame header: opcode, length and
// masking key.
const maxWSHeader = 14

// writeBuffered writes the buffer, waiting for the socket.
func (c *batchConn) writeBuffered() error {
	if len(c.buf) == 0 {
		c.resetBuf()
		return nil
	}
	_, err := c.Conn.Write(c.buf)
	c.resetBuf()
	return err
}

// resetBuf gives the emptied buffer back to the pool: an idle connection
// holds none, whatever its last batch was.
func (c *batchConn) resetBuf() {
	if c.bufp != nil && cap(c.buf) <= 4*maxBatchBytes {
		*c.bufp = c.buf[:0]
		batchPool.Put(c.bufp)
	}
	c.buf, c.bufp = nil, nil
}

// tryWrite writes what the socket takes of the buffer without waiting;
// the rest stays buffered, first in line. c.mu is held.
//
// A write deadline that has passed fails a raw write before it is tried,
// however much room the socket has. Only waiting writes move the deadline
// (extendWriteDeadline), and a connection whose writes all went out at
// once may not have had one for longer than the write timeout: its
// deadline, set by the handshake or the last waiting write, says nothing
// about the socket now. The bytes then stay buffered for the writer
// goroutine, which renews the deadline and writes them.
func (c *batchConn) tryWrite() (buffered bool, err error) {
	if err := c.raw.Write(c.writeFn); err != nil {
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return len(c.buf) > 0, nil
		}
		return len(c.buf) > 0, err // the connection is closed
	}
	n, werr := c.wn, c.werr
	c.werr = nil
	if werr == syscall.EAGAIN || werr == syscall.EINTR {
		n, werr = 0, nil
	}
	if werr != nil {
		return len(c.buf) > 0, werr
	}
	if n == len(c.buf) {
		c.resetBuf()
		return false, nil
	}
	c.buf = c.buf[:copy(c.buf, c.buf[n:])]
	return true, nil
}

// rawWrite is tryWrite's callback: one write, and never wait.
func (c *batchConn) rawWrite(fd uintptr) bool {
	c.wn, c.werr = syscall.Write(int(fd), c.buf)
	return true
}

// opPing is the WebSocket ping opcode; data messages use the codec's
// message type, which is its opcode.
const opPing = 9

// appendWSFrame appends one unfragmented WebSocket frame (RFC 6455 §5.2)
// whose payload is p followed by tail; a client masks it with a fresh key,
// as the RFC requires, a server does not.
func appendWSFrame(b []byte, opcode byte, p, tail []byte, mask bool) []byte {
	b = append(b, 0x80|opcode) // FIN: every message is one frame
	var maskBit byte
	if mask {
		maskBit = 0x80
	}
	switch n := len(p) + len(tail); {
	case n < 126:
		b = append(b, maskBit|byte(n))
	case n <= 0xFFFF:
		b = append(b, maskBit|126, byte(n>>8), byte(n))
	default:
		b = append(b, maskBit|127)
		b = binary.BigEndian.AppendUint64(b, uint64(n))
	}
	if !mask {
		return append(append(b, p...), tail...)
	}
	key := rand.Uint32()
	b = binary.LittleEndian.AppendUint32(b, key)
	start := len(b)
	b = slices.Grow(b, len(p)+len(tail))[:start+len(p)+len(tail)]
	key = maskCopy(b[start:], p, key)
	maskCopy(b[start+len(p):], tail, key)
	return b
}

// maskCopy copies src to dst XORed with the masking key, whose first byte
// is key's lowest, in one pass; dst may be src. It returns the key rotated
// for the byte after src, to mask a message in parts.
func maskCopy(dst, src []byte, key uint32) uint32 {
	dst = dst[:len(src)]
	k := uint64(key) | uint64(key)<<32
	i := 0
	for ; i+32 <= len(src); i += 32 {
		d, s := dst[i:i+32], src[i:i+32]
		binary.LittleEndian.PutUint64(d[0:], binary.LittleEndian.Uint64(s[0:])^k)
		binary.LittleEndian.PutUint64(d[8:], binary.LittleEndian.Uint64(s[8:])^k)
		binary.LittleEndian.PutUint64(d[16:], binary.LittleEndian.Uint64(s[16:])^k)
		binary.LittleEndian.PutUint64(d[24:], binary.LittleEndian.Uint64(s[24:])^k)
	}
	for ; i+8 <= len(src); i += 8 {
		binary.LittleEndian.PutUint64(dst[i:], binary.LittleEndian.Uint64(src[i:])^k)
	}
	for ; i < len(src); i++ {
		dst[i] = src[i] ^ byte(key>>(8*(i%4)))
	}
	r := uint(len(src)%4) * 8
	return key>>r | key<<(32-r)
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
	w.conn = newBatchConn(c)
	return w.conn, rw, nil
}

// discard drops every queued frame; the connection is being aborted.
func (q *sendQueue) discard() {
	q.mu.Lock()
	for _, f := range q.frames {
		if f.b != nil {
			putBuf(f.b)
		}
	}
	clear(q.frames)
	q.frames = q.frames[:0]
	q.bytes = 0
	q.mu.Unlock()
}
