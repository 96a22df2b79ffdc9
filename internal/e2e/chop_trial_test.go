package e2e_test

// A trial of the runtime's own WebSocket frame reader (runtime/parley,
// wsread.go and readahead.go: both the server and the Go client read frames
// themselves) through a link that splits the byte stream anywhere: inside a
// frame's header, its extended length, its mask key or its payload, and
// across messages. Real TCP does this under load, behind proxies and on
// slow links; loopback rarely does.

import (
	"bytes"
	"context"
	"fmt"
	"io"
	mathrand "math/rand/v2"
	"net"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/parleyrpc/parley/internal/e2e"
	e2ev1 "github.com/parleyrpc/parley/internal/e2e/gen/e2e/v1"
	"github.com/parleyrpc/parley/internal/e2e/gen/e2e/v1/e2ev1parley"
	"github.com/parleyrpc/parley/runtime/parley"
)

// chopProxy forwards each TCP connection to backend, writing what it reads
// in pieces: mostly 1 to 7 bytes, sometimes up to 3 KB, each its own write
// on a socket without Nagle, pausing now and then so that the reader at the
// other end sees them as separate reads.
type chopProxy struct {
	ln      net.Listener
	backend string
	wg      sync.WaitGroup

	mu    sync.Mutex
	conns []net.Conn
}

func newChopProxy(t *testing.T, backend string) *chopProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &chopProxy{ln: ln, backend: backend}
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		for {
			client, err := ln.Accept()
			if err != nil {
				return
			}
			server, err := net.Dial("tcp", backend)
			if err != nil {
				_ = client.Close()
				continue
			}
			p.mu.Lock()
			p.conns = append(p.conns, client, server)
			p.mu.Unlock()
			p.wg.Add(2)
			go p.pipe(client, server)
			go p.pipe(server, client)
		}
	}()
	t.Cleanup(func() {
		_ = ln.Close()
		p.mu.Lock()
		for _, c := range p.conns {
			_ = c.Close()
		}
		p.mu.Unlock()
		p.wg.Wait()
	})
	return p
}

func (p *chopProxy) url() string { return "ws://" + p.ln.Addr().String() }

// pipe copies src to dst in pieces until src ends, then closes dst.
func (p *chopProxy) pipe(src, dst net.Conn) {
	defer p.wg.Done()
	defer func() { _ = dst.Close() }()
	rnd := mathrand.New(mathrand.NewPCG(uint64(time.Now().UnixNano()), 7))
	buf := make([]byte, 32<<10)
	pieces := 0
	for {
		n, err := src.Read(buf)
		for chunk := buf[:n]; len(chunk) > 0; {
			size := 1 + rnd.IntN(7)
			if rnd.IntN(5) == 0 {
				size = 1 + rnd.IntN(3000)
			}
			size = min(size, len(chunk))
			if _, werr := dst.Write(chunk[:size]); werr != nil {
				return
			}
			chunk = chunk[size:]
			// Give the reader the piece on its own now and then. The pause
			// shapes the link; no test outcome waits on it.
			if pieces++; pieces%8 == 0 {
				time.Sleep(50 * time.Microsecond)
			}
		}
		if err != nil {
			return
		}
	}
}

// TestChoppedLinkTrial runs calls of every size class a WebSocket frame
// header distinguishes (7-bit, 16-bit and 64-bit lengths, and their edges),
// concurrent calls, a bidi stream and server events through a chopProxy,
// in both encodings: every reply, item and event must arrive intact.
func TestChoppedLinkTrial(t *testing.T) {
	srv := parley.NewServer()
	e2ev1parley.RegisterEchoServiceServer(srv, &e2e.EchoService{})
	e2ev1parley.RegisterStreamServiceServer(srv, &e2e.StreamService{})
	e2ev1parley.RegisterPushServiceServer(srv, &e2e.PushService{Events: e2ev1parley.NewClientEventsPublisher(srv)})
	hs := httptest.NewServer(srv)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
		hs.Close()
	})
	proxy := newChopProxy(t, hs.Listener.Addr().String())

	// Sizes of the data field around the frame header's length classes
	// (125 / 126, 65535 / 65536) once the frame's own bytes are added.
	sizes := []int{0, 1, 100, 110, 117, 118, 119, 120, 121, 125, 126, 127, 200, 4000, 4096, 65400, 65500, 65520, 65535, 65536, 65537, 70000, 300000}
	for _, enc := range encodings {
		t.Run(enc.name, func(t *testing.T) {
			ticks := make(chan int32, 64)
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			conn, err := parley.Dial(ctx, proxy.url(), append([]parley.ClientOption{parley.WithoutReconnect()}, enc.opts...)...)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			e2ev1parley.RegisterClientEventsHandler(conn, tickCollector(ticks))
			echo := e2ev1parley.NewEchoServiceClient(conn)

			for _, n := range sizes {
				data := bytes.Repeat([]byte{byte(n)}, n)
				res, err := echo.Echo(ctx, &e2ev1.EchoRequest{Text: fmt.Sprint(n), Data: data})
				if err != nil {
					t.Fatalf("echo of %d bytes: %v", n, err)
				}
				if res.GetText() != fmt.Sprint(n) || !bytes.Equal(res.GetData(), data) {
					t.Fatalf("echo of %d bytes came back as %q with %d bytes", n, res.GetText(), len(res.GetData()))
				}
			}

			// Concurrent calls: messages of several sizes interleave on the
			// chopped link in both directions.
			var wg sync.WaitGroup
			errs := make(chan error, 64)
			for g := range 16 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for i := range 10 {
						n := sizes[(g*10+i)%len(sizes)] % 20000
						text := fmt.Sprintf("%d/%d", g, i)
						res, err := echo.Echo(ctx, &e2ev1.EchoRequest{Text: text, Data: make([]byte, n)})
						if err == nil && (res.GetText() != text || len(res.GetData()) != n) {
							err = fmt.Errorf("call %s got %q with %d bytes", text, res.GetText(), len(res.GetData()))
						}
						if err != nil {
							errs <- err
							return
						}
					}
				}()
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				t.Fatal(err)
			}

			// A bidi stream of items of growing size.
			stream, err := e2ev1parley.NewStreamServiceClient(conn).Echo(ctx)
			if err != nil {
				t.Fatal(err)
			}
			for i := range 40 {
				text := string(bytes.Repeat([]byte{'a' + byte(i%26)}, i*i*7))
				if err := stream.Send(&e2ev1.EchoItem{Text: text}); err != nil {
					t.Fatalf("send %d: %v", i, err)
				}
				got, err := stream.Recv()
				if err != nil || got.GetText() != text {
					t.Fatalf("item %d: got %d bytes, %v; want %d bytes", i, len(got.GetText()), err, len(text))
				}
			}
			if err := stream.CloseSend(); err != nil {
				t.Fatal(err)
			}
			if _, err := stream.Recv(); err != io.EOF {
				t.Fatalf("after CloseSend: %v, want io.EOF", err)
			}

			// Events pushed by the server, in order.
			if _, err := e2ev1parley.NewPushServiceClient(conn).Subscribe(ctx, &e2ev1.SubscribeRequest{Count: 30}); err != nil {
				t.Fatal(err)
			}
			for want := int32(1); want <= 30; want++ {
				select {
				case got := <-ticks:
					if got != want {
						t.Fatalf("tick %d arrived where %d was due", got, want)
					}
				case <-ctx.Done():
					t.Fatalf("tick %d did not arrive", want)
				}
			}
			if st := conn.State(); st.Status != parley.StatusOpen || st.Reconnected {
				t.Fatalf("the connection is %+v after the trial; it must have stayed open on its first socket", st)
			}
		})
	}
}

// tickCollector implements ClientEvents, passing each Tick's seq on.
type tickCollector chan int32

func (c tickCollector) Tick(_ context.Context, ev *e2ev1.TickEvent) { c <- ev.GetSeq() }

func (c tickCollector) Confirm(context.Context, *e2ev1.ConfirmRequest) (*e2ev1.ConfirmResponse, error) {
	return &e2ev1.ConfirmResponse{}, nil
}
