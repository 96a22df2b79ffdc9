// Package echo holds the three unary-echo targets the benchmark compares —
// Parley, raw gorilla/websocket, grpc-go — and the load runner that measures
// them. Each target serves and calls in this one process over loopback.
package echo

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"

	"github.com/gorilla/websocket"
	benchv1 "github.com/parleyrpc/parley/bench/gen/bench/v1"
	"github.com/parleyrpc/parley/internal/e2e"
	e2ev1 "github.com/parleyrpc/parley/internal/e2e/gen/e2e/v1"
	"github.com/parleyrpc/parley/internal/e2e/gen/e2e/v1/e2ev1parley"
	"github.com/parleyrpc/parley/runtime/parley"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// CallFunc makes one echo call of the payload it was built for.
type CallFunc func(ctx context.Context) error

// Target is a running server plus one client connection to it.
type Target struct {
	Name string
	// NewCaller returns the call one worker repeats. Each worker gets its
	// own, so it may reuse its request; all share the one connection.
	NewCaller func(payload []byte) CallFunc
	Close     func()
}

// Names lists the targets in the order they are reported.
var Names = []string{"parley", "gorilla", "grpc"}

// New starts the named target.
func New(ctx context.Context, name string) (*Target, error) {
	switch name {
	case "parley":
		return NewParley(ctx)
	case "gorilla":
		return NewGorilla(ctx)
	case "grpc":
		return NewGRPC(ctx)
	}
	return nil, fmt.Errorf("unknown target %q (want one of %s)", name, strings.Join(Names, ", "))
}

var errShortEcho = errors.New("echo: reply does not match the request")

// NewParley serves internal/e2e.EchoService with parley.NewServer on an
// httptest server and dials it once with the default (binary) subprotocol;
// callers use the generated client.
func NewParley(ctx context.Context) (*Target, error) {
	srv := parley.NewServer()
	e2ev1parley.RegisterEchoServiceServer(srv, &e2e.EchoService{})
	hs := httptest.NewServer(srv)
	conn, err := parley.Dial(ctx, "ws"+strings.TrimPrefix(hs.URL, "http")+"/")
	if err != nil {
		hs.Close()
		return nil, err
	}
	client := e2ev1parley.NewEchoServiceClient(conn)
	return &Target{
		Name: "parley",
		NewCaller: func(payload []byte) CallFunc {
			req := &e2ev1.EchoRequest{Data: payload}
			return func(ctx context.Context) error {
				res, err := client.Echo(ctx, req)
				if err != nil {
					return err
				}
				if len(res.GetData()) != len(payload) {
					return errShortEcho
				}
				return nil
			}
		},
		Close: func() {
			_ = conn.Close()
			_ = srv.Shutdown(context.Background())
			hs.Close()
		},
	}, nil
}

// NewGorilla is the floor: a bare gorilla/websocket echo. The server echoes
// each binary message in its read loop. The client is the minimal honest
// multiplexer: callers share the one socket through a mutex-protected
// writer, and a reader goroutine hands each reply to its caller by the
// 8-byte id that prefixes every message.
func NewGorilla(ctx context.Context) (*Target, error) {
	up := websocket.Upgrader{}
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ws, err := up.Upgrade(w, r, nil)
		if err != nil {
			return
		}
		defer ws.Close()
		buf := make([]byte, 0, 4096)
		for {
			typ, rd, err := ws.NextReader()
			if err != nil {
				return
			}
			if buf, err = readAll(rd, buf[:0]); err != nil {
				return
			}
			if err := ws.WriteMessage(typ, buf); err != nil {
				return
			}
		}
	}))
	ws, _, err := websocket.DefaultDialer.DialContext(ctx, "ws"+strings.TrimPrefix(hs.URL, "http")+"/", nil)
	if err != nil {
		hs.Close()
		return nil, err
	}
	m := &wsMux{ws: ws, pending: make(map[uint64]*wsCall), done: make(chan struct{})}
	go m.readLoop()
	return &Target{
		Name: "gorilla",
		NewCaller: func(payload []byte) CallFunc {
			c := &wsCall{msg: make([]byte, 8+len(payload)), reply: make([]byte, 0, 8+len(payload)), done: make(chan error, 1)}
			copy(c.msg[8:], payload)
			return func(ctx context.Context) error { return m.call(ctx, c) }
		},
		Close: func() {
			m.wmu.Lock()
			_ = ws.WriteMessage(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseNormalClosure, ""))
			m.wmu.Unlock()
			_ = ws.Close()
			<-m.done
			hs.Close()
		},
	}, nil
}

type wsMux struct {
	ws  *websocket.Conn
	wmu sync.Mutex

	mu      sync.Mutex
	nextID  uint64
	pending map[uint64]*wsCall
	done    chan struct{}
}

type wsCall struct {
	msg   []byte // id, then payload
	reply []byte
	done  chan error
}

func (m *wsMux) call(ctx context.Context, c *wsCall) error {
	m.mu.Lock()
	m.nextID++
	id := m.nextID
	m.pending[id] = c
	m.mu.Unlock()
	binary.LittleEndian.PutUint64(c.msg, id)
	m.wmu.Lock()
	err := m.ws.WriteMessage(websocket.BinaryMessage, c.msg)
	m.wmu.Unlock()
	if err != nil {
		m.mu.Lock()
		delete(m.pending, id)
		m.mu.Unlock()
		return err
	}
	select {
	case err = <-c.done:
	case <-ctx.Done():
		return ctx.Err() // the benchmark never cancels mid-call
	}
	if err == nil && len(c.reply) != len(c.msg) {
		err = errShortEcho
	}
	return err
}

func (m *wsMux) readLoop() {
	defer close(m.done)
	buf := make([]byte, 0, 4096)
	for {
		_, rd, err := m.ws.NextReader()
		if err == nil {
			buf, err = readAll(rd, buf[:0])
		}
		if err == nil && len(buf) < 8 {
			err = errShortEcho
		}
		if err != nil {
			m.mu.Lock()
			for id, c := range m.pending {
				delete(m.pending, id)
				c.done <- err
			}
			m.mu.Unlock()
			return
		}
		id := binary.LittleEndian.Uint64(buf)
		m.mu.Lock()
		c := m.pending[id]
		delete(m.pending, id)
		m.mu.Unlock()
		if c != nil {
			c.reply = append(c.reply[:0], buf...)
			c.done <- nil
		}
	}
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

// NewGRPC is the peer: grpc-go unary calls over one HTTP/2 connection (one
// ClientConn, which opens one transport to its one address).
func NewGRPC(ctx context.Context) (*Target, error) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	gs := grpc.NewServer()
	benchv1.RegisterEchoServiceServer(gs, grpcEcho{})
	go func() { _ = gs.Serve(lis) }()
	cc, err := grpc.NewClient("passthrough:///"+lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		gs.Stop()
		return nil, err
	}
	client := benchv1.NewEchoServiceClient(cc)
	return &Target{
		Name: "grpc",
		NewCaller: func(payload []byte) CallFunc {
			req := &benchv1.EchoRequest{Data: payload}
			return func(ctx context.Context) error {
				res, err := client.Echo(ctx, req)
				if err != nil {
					return err
				}
				if len(res.GetData()) != len(payload) {
					return errShortEcho
				}
				return nil
			}
		},
		Close: func() {
			_ = cc.Close()
			gs.Stop()
		},
	}, nil
}

type grpcEcho struct {
	benchv1.UnimplementedEchoServiceServer
}

// Echo returns its request, as internal/e2e.EchoService.Echo does.
func (grpcEcho) Echo(_ context.Context, req *benchv1.EchoRequest) (*benchv1.EchoResponse, error) {
	return &benchv1.EchoResponse{Text: req.GetText(), Data: req.GetData()}, nil
}
