// Package faultproxy is a TCP proxy for tests that puts faults between a
// client and a server on real sockets: drop every connection, blackhole
// them (keep the sockets open but forward nothing, either way), delay what
// they carry, refuse new connections, or point new connections at another
// backend (a restarted server).
//
// A Proxy listens on a loopback port; each accepted connection is a Link to
// the backend address current at accept time.
package faultproxy

import (
	"net"
	"sync"
	"time"
)

// Proxy forwards TCP connections from its listening address to a backend.
// Its methods are safe for concurrent use.
type Proxy struct {
	ln net.Listener

	mu       sync.Mutex
	backend  string
	refuse   bool
	delay    time.Duration
	links    map[*Link]struct{}
	accepted int
	closed   bool

	wg sync.WaitGroup // the accept loop and every link's goroutines
}

// New starts a proxy on 127.0.0.1 (a free port) that forwards to backend
// ("host:port").
func New(backend string) (*Proxy, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	p := &Proxy{ln: ln, backend: backend, links: make(map[*Link]struct{})}
	p.wg.Add(1)
	go p.accept()
	return p, nil
}

// Addr is the address clients dial ("127.0.0.1:port").
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// SetBackend points connections accepted from now on at addr; existing ones
// keep their backend.
func (p *Proxy) SetBackend(addr string) {
	p.mu.Lock()
	p.backend = addr
	p.mu.Unlock()
}

// Refuse makes the proxy close connections as soon as it accepts them (as
// a server that is down would refuse them), until Refuse(false).
func (p *Proxy) Refuse(on bool) {
	p.mu.Lock()
	p.refuse = on
	p.mu.Unlock()
}

// Delay holds every chunk of data, in both directions, for d before
// forwarding it, on current and future links. A link forwards one chunk at
// a time, so throughput drops too. Zero turns the delay off.
func (p *Proxy) Delay(d time.Duration) {
	p.mu.Lock()
	p.delay = d
	p.mu.Unlock()
}

func (p *Proxy) delayNow() time.Duration {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.delay
}

// Links returns the links open now (not dropped), in no order.
func (p *Proxy) Links() []*Link {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]*Link, 0, len(p.links))
	for l := range p.links {
		if !l.isDroppedNow() {
			out = append(out, l)
		}
	}
	return out
}

// Accepted is how many connections the proxy forwarded so far (refused ones
// excluded).
func (p *Proxy) Accepted() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.accepted
}

// Drop closes every open link, both sockets, at once, and returns how many
// there were. Peers see the TCP connection end with no WebSocket close.
func (p *Proxy) Drop() int {
	links := p.Links()
	for _, l := range links {
		l.Drop()
	}
	return len(links)
}

// Blackhole makes every open link stop forwarding, both ways, while its
// sockets stay open: what either peer sends is read and discarded, and a
// peer closing its socket is not passed on. Links accepted later forward
// normally. It returns the links it blackholed.
func (p *Proxy) Blackhole() []*Link {
	links := p.Links()
	for _, l := range links {
		l.Blackhole()
	}
	return links
}

// Close stops listening, drops every link and waits for the proxy's
// goroutines to end.
func (p *Proxy) Close() error {
	p.mu.Lock()
	p.closed = true
	p.mu.Unlock()
	err := p.ln.Close()
	p.Drop()
	p.wg.Wait()
	return err
}

func (p *Proxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		backend, refuse, closed := p.backend, p.refuse, p.closed
		p.mu.Unlock()
		if refuse || closed {
			_ = c.Close()
			continue
		}
		p.wg.Add(1)
		go p.serve(c, backend)
	}
}

func (p *Proxy) serve(client net.Conn, backend string) {
	defer p.wg.Done()
	server, err := net.DialTimeout("tcp", backend, 5*time.Second)
	if err != nil {
		_ = client.Close()
		return
	}
	l := &Link{
		p: p, client: client, server: server,
		clientGone: make(chan struct{}), serverGone: make(chan struct{}),
		dropped: make(chan struct{}),
	}
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		_ = client.Close()
		_ = server.Close()
		return
	}
	p.links[l] = struct{}{}
	p.accepted++
	p.mu.Unlock()
	var both sync.WaitGroup
	both.Add(2)
	go func() { defer both.Done(); l.pipe(client, server, l.clientGone) }()
	go func() { defer both.Done(); l.pipe(server, client, l.serverGone) }()
	both.Wait()
	p.mu.Lock()
	delete(p.links, l)
	p.mu.Unlock()
}

// Link is one proxied connection: a client socket and the backend socket
// it is forwarded to.
type Link struct {
	p              *Proxy
	client, server net.Conn

	mu         sync.Mutex
	blackholed bool
	isDropped  bool

	clientGone chan struct{} // the client's side ended (EOF or error)
	serverGone chan struct{} // the backend's side ended
	dropped    chan struct{} // Drop was called
}

// ClientGone is closed when the client's socket ended: the client closed
// it, or it failed, or the link was dropped.
func (l *Link) ClientGone() <-chan struct{} { return l.clientGone }

// ServerGone is closed when the backend's socket ended.
func (l *Link) ServerGone() <-chan struct{} { return l.serverGone }

// Blackhole stops this link forwarding, both ways; its sockets stay open.
func (l *Link) Blackhole() {
	l.mu.Lock()
	l.blackholed = true
	l.mu.Unlock()
}

func (l *Link) isDroppedNow() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.isDropped
}

func (l *Link) isBlackholed() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.blackholed
}

// Drop closes both sockets of the link.
func (l *Link) Drop() {
	l.mu.Lock()
	if !l.isDropped {
		l.isDropped = true
		close(l.dropped)
	}
	l.mu.Unlock()
	_ = l.client.Close()
	_ = l.server.Close()
}

// pipe copies from src to dst until src ends. gone is closed when src
// ended. Normally the end of one side closes the link; a blackholed link
// passes nothing on, the end of a side included, and stays until both
// sides ended or it is dropped.
func (l *Link) pipe(src, dst net.Conn, gone chan struct{}) {
	defer close(gone)
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 && !l.isBlackholed() {
			if d := l.p.delayNow(); d > 0 {
				t := time.NewTimer(d)
				select {
				case <-t.C:
				case <-l.dropped:
					t.Stop()
				}
			}
			if !l.isBlackholed() {
				if _, werr := dst.Write(buf[:n]); werr != nil {
					err = werr
				}
			}
		}
		if err != nil {
			break
		}
	}
	_ = src.Close()
	if l.isBlackholed() {
		return // the other side must not learn of it
	}
	_ = dst.Close()
}
