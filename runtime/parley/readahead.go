package parley

import (
	"errors"
	"io"
	"net"
	"sync"
	"syscall"
)

// readAhead is how much a connection reads from the socket at once, and
// readAheadBig how much once a read filled its block: a busy stream then
// costs one system call per 64 KiB rather than per 4 KiB.
const (
	readAhead    = 4096
	readAheadBig = 64 << 10
)

var (
	readAheadPool    = sync.Pool{New: func() any { b := make([]byte, readAhead); return &b }}
	readAheadBigPool = sync.Pool{New: func() any { b := make([]byte, readAheadBig); return &b }}
)

// putBlock returns a block to its pool.
func putBlock(b *[]byte) {
	if len(*b) == readAheadBig {
		readAheadBigPool.Put(b)
		return
	}
	readAheadPool.Put(b)
}

// readAheadConn reads from its socket in blocks of readAhead bytes, so that
// small messages arriving back to back cost one system call, not one each;
// yet it holds a block only while it has unread bytes in it. Waiting for
// the socket to become readable holds none (the block is taken from a pool
// inside the raw read, after readiness), so an idle connection costs no
// read buffer. Only the connection's reader calls Read.
type readAheadConn struct {
	raw  syscall.RawConn // nil: the connection cannot be read raw; read through
	buf  *[]byte         // unread bytes buf[pos:end], or nil
	pos  int
	end  int
	conn net.Conn

	// held is a block whose last bytes take handed out in place: it goes
	// back to its pool at the next Read or take, by which time the reader
	// is done with the message.
	held *[]byte

	// The raw read's callback and its results, kept here so that a read
	// allocates nothing.
	readFn    func(fd uintptr) bool
	readBigFn func(fd uintptr) bool
	got       *[]byte
	n         int
	rerr      error
	big       bool // a recent read filled its block: take big ones

	// onData, when set (once the handshake is done, before reading goes
	// on), runs after each read from the socket that returned bytes.
	onData func()
}

// newReadAhead reads c, through raw when it is not nil.
func newReadAhead(c net.Conn, raw syscall.RawConn) *readAheadConn {
	r := &readAheadConn{conn: c, raw: raw}
	r.readFn, r.readBigFn = r.rawRead, r.rawReadBig
	return r
}

// rawRead runs inside RawConn.Read: once the socket is readable, it takes
// a block and reads into it. rawReadBig does the same with a big block,
// while reads fill their blocks.
func (r *readAheadConn) rawRead(fd uintptr) bool    { return r.readBlock(fd, &readAheadPool) }
func (r *readAheadConn) rawReadBig(fd uintptr) bool { return r.readBlock(fd, &readAheadBigPool) }

func (r *readAheadConn) readBlock(fd uintptr, pool *sync.Pool) bool {
	b := pool.Get().(*[]byte)
	r.n, r.rerr = syscall.Read(int(fd), *b)
	if errors.Is(r.rerr, syscall.EAGAIN) {
		pool.Put(b) // not readable yet: wait holding nothing
		return false
	}
	r.got = b
	if r.n > 0 && r.onData != nil {
		// Here rather than in Read: the reader parks in Read, and the
		// deeper its frame there, the larger an idle connection's stack.
		r.onData()
	}
	return true
}

// readDirect reads into p straight from the connection: p is as large as a
// block, or the connection cannot be read raw. It is Read's, apart so that
// Read's frame, on every idle reader's stack, stays small.
//
//go:noinline
func (r *readAheadConn) readDirect(p []byte) (int, error) {
	n, err := r.conn.Read(p)
	if n > 0 && r.onData != nil {
		r.onData()
	}
	return n, err
}

// buffered reports whether bytes read from the socket wait here unread.
// Only the connection's reader calls it.
func (r *readAheadConn) buffered() bool { return r.buf != nil }

// take returns the next n bytes in place, without a copy, if the current
// block holds them all; else nil. They stay valid until the next Read or
// take. Only the connection's reader calls it.
func (r *readAheadConn) take(n int) []byte {
	r.release()
	if r.buf == nil || n <= 0 || r.end-r.pos < n {
		return nil
	}
	p := (*r.buf)[r.pos : r.pos+n : r.pos+n]
	r.pos += n
	if r.pos == r.end {
		r.held, r.buf = r.buf, nil
	}
	return p
}

// release returns the block take last emptied to its pool.
func (r *readAheadConn) release() {
	if r.held != nil {
		putBlock(r.held)
		r.held = nil
	}
}

func (r *readAheadConn) Read(p []byte) (int, error) {
	r.release()
	if r.buf != nil {
		n := copy(p, (*r.buf)[r.pos:r.end])
		r.pos += n
		if r.pos == r.end {
			putBlock(r.buf)
			r.buf = nil
		}
		return n, nil
	}
	if r.raw == nil || len(p) >= readAhead {
		return r.readDirect(p)
	}
	fn := r.readFn
	if r.big {
		fn = r.readBigFn
	}
	if err := r.raw.Read(fn); err != nil { // a deadline or a closed connection
		return 0, err
	}
	b, n, rerr := r.got, r.n, r.rerr
	r.got, r.rerr = nil, nil
	r.big = n == len(*b) || r.big && n > readAheadBig/4
	if rerr != nil || n <= 0 {
		putBlock(b)
		if rerr == nil {
			rerr = io.EOF
		}
		return 0, rerr
	}
	m := copy(p, (*b)[:n])
	if m < n {
		r.buf, r.pos, r.end = b, m, n
	} else {
		putBlock(b)
	}
	return m, nil
}
