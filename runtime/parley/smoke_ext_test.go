package parley_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"go.uber.org/goleak"
	"google.golang.org/protobuf/proto"

	parleyv1 "github.com/parleyrpc/parley/gen/parley/v1"
	e2ev1 "github.com/parleyrpc/parley/internal/e2e/gen/e2e/v1"
	"github.com/parleyrpc/parley/runtime/parley"
)

var echoSpec = &parley.MethodSpec{Procedure: "/e2e.v1.EchoService/Echo"}

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func TestSmoke(t *testing.T) {
	srv := parley.NewServer()
	srv.Register(parley.NewUnaryMethod(echoSpec, func(ctx context.Context, r *e2ev1.EchoRequest) (*e2ev1.EchoResponse, error) {
		return &e2ev1.EchoResponse{Text: r.Text}, nil
	}))
	hs := httptest.NewServer(srv)
	defer hs.Close()
	url := "ws" + strings.TrimPrefix(hs.URL, "http")
	for _, opts := range [][]parley.ClientOption{nil, {parley.WithJSON()}} {
		conn, err := parley.Dial(context.Background(), url, opts...)
		if err != nil {
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		start := time.Now()
		for i := range 1000 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				res := new(e2ev1.EchoResponse)
				if err := conn.Invoke(context.Background(), echoSpec, &e2ev1.EchoRequest{Text: "hi" + string(rune('a'+i%26))}, res); err != nil {
					t.Error(err)
					return
				}
				if res.Text != "hi"+string(rune('a'+i%26)) {
					t.Errorf("got %q", res.Text)
				}
			}()
		}
		wg.Wait()
		t.Log(time.Since(start))
		if err := conn.Close(); err != nil {
			t.Fatal(err)
		}
	}
	if err := srv.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
}

// TestFrameLengths echoes messages across every WebSocket length encoding
// (7-bit, 16-bit and 64-bit lengths) and every tail length of the client's
// 8-byte masking loop: both writers frame messages themselves, and
// gorilla/websocket's reader on the other side must read each one intact.
func TestFrameLengths(t *testing.T) {
	srv := parley.NewServer(parley.WithMaxMessageBytes(1 << 20))
	srv.Register(parley.NewUnaryMethod(echoSpec, func(ctx context.Context, r *e2ev1.EchoRequest) (*e2ev1.EchoResponse, error) {
		return &e2ev1.EchoResponse{Text: r.Text}, nil
	}))
	hs := httptest.NewServer(srv)
	t.Cleanup(hs.Close)
	t.Cleanup(func() { _ = srv.Shutdown(context.Background()) })
	url := "ws" + strings.TrimPrefix(hs.URL, "http")
	var sizes []int
	for _, edge := range []int{0, 126, 1 << 16} {
		for n := max(0, edge-20); n <= edge+20; n++ {
			sizes = append(sizes, n)
		}
	}
	sizes = append(sizes, 300_000)
	for _, opts := range [][]parley.ClientOption{nil, {parley.WithJSON()}} {
		conn, err := parley.Dial(context.Background(), url, append(opts, parley.WithMaxMessageBytes(1<<20))...)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = conn.Close() }) // before the server's shutdown
		for _, n := range sizes {
			text := strings.Repeat(string(rune('a'+n%26)), n)
			res := new(e2ev1.EchoResponse)
			if err := conn.Invoke(context.Background(), echoSpec, &e2ev1.EchoRequest{Text: text}, res); err != nil {
				t.Fatalf("%d bytes: %v", n, err)
			}
			if res.Text != text {
				t.Fatalf("%d bytes: echoed %d bytes that differ", n, len(res.Text))
			}
		}
	}
}

// TestDeadlineWhileTheSocketIsFull: a caller whose call the peer does not
// read still gets deadline_exceeded at its deadline. (The caller writes its
// own call when no write is in progress; it must never wait for the socket
// to do so.)
func TestDeadlineWhileTheSocketIsFull(t *testing.T) {
	release := make(chan struct{})
	url := scriptedServer(t, &parleyv1.Welcome{SessionId: "s", MaxInFlight: 16}, func(*websocket.Conn) {
		<-release // and read nothing more: the client's socket fills up
	})
	// A long write timeout: a caller held by the socket would return
	// after it, not at its deadline. A message limit above the request's
	// size (the server advertises none): it is sent, not refused.
	conn := dialT(t, url, parley.WithoutReconnect(), parley.WithWriteTimeout(time.Minute), parley.WithMaxMessageBytes(64<<20))
	t.Cleanup(func() { close(release) }) // first: the server lets go, then conn closes
	big := strings.Repeat("x", 32<<20)   // more than loopback's socket buffers take
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	err := conn.Invoke(ctx, echoSpec, &e2ev1.EchoRequest{Text: big}, new(e2ev1.EchoResponse))
	if parley.CodeOf(err) != parley.CodeDeadlineExceeded {
		t.Fatalf("got %v, want deadline_exceeded", err)
	}
	// Encoding and framing 32 MiB takes the caller a while under -race on
	// a loaded machine (2-3 s seen); waiting on the socket would take the
	// minute of the write timeout.
	if took := time.Since(start); took > 15*time.Second {
		t.Fatalf("the call returned %v after it began, for a 300ms deadline", took)
	}
}

// TestBlockedCallDoesNotBlockTheConnection: a call that arrives alone runs
// on the connection's reader (saving a goroutine hand-off); while it
// blocks, a stand-in reads, so a second call on the same connection runs
// and answers, and the first sees the second's effect.
func TestBlockedCallDoesNotBlockTheConnection(t *testing.T) {
	waitSpec := &parley.MethodSpec{Procedure: "/test.Block/Wait"}
	openSpec := &parley.MethodSpec{Procedure: "/test.Block/Open"}
	gate, started := make(chan struct{}), make(chan struct{})
	srv := parley.NewServer()
	srv.Register(
		parley.NewUnaryMethod(waitSpec, func(ctx context.Context, r *e2ev1.EchoRequest) (*e2ev1.EchoResponse, error) {
			close(started)
			select {
			case <-gate:
				return &e2ev1.EchoResponse{Text: "opened"}, nil
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		}),
		parley.NewUnaryMethod(openSpec, func(ctx context.Context, r *e2ev1.EchoRequest) (*e2ev1.EchoResponse, error) {
			close(gate)
			return &e2ev1.EchoResponse{Text: "open"}, nil
		}),
	)
	hs := httptest.NewServer(srv)
	t.Cleanup(hs.Close)
	t.Cleanup(func() { _ = srv.Shutdown(context.Background()) })
	conn := dialT(t, "ws"+strings.TrimPrefix(hs.URL, "http"))
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	waited := make(chan error, 1)
	go func() {
		res := new(e2ev1.EchoResponse)
		err := conn.Invoke(ctx, waitSpec, &e2ev1.EchoRequest{}, res)
		if err == nil && res.GetText() != "opened" {
			err = fmt.Errorf("wait answered %q", res.GetText())
		}
		waited <- err
	}()
	<-started // Wait runs, alone on the connection: on its reader
	if err := conn.Invoke(ctx, openSpec, &e2ev1.EchoRequest{}, new(e2ev1.EchoResponse)); err != nil {
		t.Fatalf("open, while wait blocks: %v", err)
	}
	if err := <-waited; err != nil {
		t.Fatal(err)
	}
}

// TestTLS: over wss:// the client frames its messages into the TLS
// connection, not under it, and the server does the same; calls and
// streams of every size work in both codecs.
func TestTLS(t *testing.T) {
	srv := parley.NewServer()
	srv.Register(parley.NewUnaryMethod(echoSpec, func(ctx context.Context, r *e2ev1.EchoRequest) (*e2ev1.EchoResponse, error) {
		return &e2ev1.EchoResponse{Text: r.Text}, nil
	}))
	hs := httptest.NewTLSServer(srv)
	t.Cleanup(hs.Close)
	t.Cleanup(func() { _ = srv.Shutdown(context.Background()) })
	roots := x509.NewCertPool()
	roots.AddCert(hs.Certificate())
	url := "wss" + strings.TrimPrefix(hs.URL, "https")

	if _, err := parley.Dial(context.Background(), url, parley.WithoutReconnect()); parley.CodeOf(err) != parley.CodeUnavailable {
		t.Fatalf("dial without trusting the test certificate: %v, want unavailable", err)
	}
	for _, opts := range [][]parley.ClientOption{nil, {parley.WithJSON()}} {
		conn := dialT(t, url, append(opts, parley.WithTLSConfig(&tls.Config{RootCAs: roots}))...)
		var wg sync.WaitGroup
		for _, n := range []int{0, 100, 70_000, 1 << 20} {
			for range 4 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					text := strings.Repeat("s", n)
					res := new(e2ev1.EchoResponse)
					if err := conn.Invoke(context.Background(), echoSpec, &e2ev1.EchoRequest{Text: text}, res); err != nil || res.Text != text {
						t.Errorf("%d bytes over TLS: %d bytes back, %v", n, len(res.GetText()), err)
					}
				}()
			}
		}
		wg.Wait()
	}
}

// TestDialErrorQuotesTheBodyTrimmed: a refused upgrade's error quotes the
// response body without http.Error's trailing newline, bounded, or the
// status text when there is no body.
func TestDialErrorQuotesTheBodyTrimmed(t *testing.T) {
	srv := parley.NewServer()
	hs := httptest.NewServer(srv)
	t.Cleanup(hs.Close)
	if err := srv.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	_, err := parley.Dial(context.Background(), "ws"+strings.TrimPrefix(hs.URL, "http"))
	if got, want := fmt.Sprint(err), "unavailable: dial: HTTP 503: parley: server is shutting down"; got != want {
		t.Errorf("dialing a server that is shutting down: %q, want %q", got, want)
	}

	for _, tc := range []struct {
		name, body, want string
	}{
		{"empty", "", "unavailable: dial: HTTP 503: Service Unavailable"},
		{"space", " \r\n\t", "unavailable: dial: HTTP 503: Service Unavailable"},
		{"long", strings.Repeat("é", 1000) + "\n", "unavailable: dial: HTTP 503: " + strings.Repeat("é", 128) + "…"},
		{"split rune", "x" + strings.Repeat("é", 1000), "unavailable: dial: HTTP 503: x" + strings.Repeat("é", 127) + "…"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				w.WriteHeader(http.StatusServiceUnavailable)
				_, _ = w.Write([]byte(tc.body))
			}))
			defer hs.Close()
			_, err := parley.Dial(context.Background(), "ws"+strings.TrimPrefix(hs.URL, "http"))
			if got := fmt.Sprint(err); got != tc.want {
				t.Errorf("dial error %q, want %q", got, tc.want)
			}
		})
	}
}

// serveWS serves srv on a loopback test server until the test ends (then
// shuts it down, waiting up to 10 s for its handlers) and returns the
// WebSocket URL to dial.
func serveWS(t *testing.T, srv *parley.Server) string {
	t.Helper()
	hs := httptest.NewServer(srv)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
		hs.Close()
	})
	return "ws" + strings.TrimPrefix(hs.URL, "http")
}

// scriptedServer serves a raw WebSocket peer speaking parley.v1+proto
// until the test ends: it reads the client's Hello, answers with welcome,
// then runs script on the socket, which it closes when script returns. It
// returns the URL to dial.
func scriptedServer(t *testing.T, welcome *parleyv1.Welcome, script func(ws *websocket.Conn)) string {
	t.Helper()
	up := websocket.Upgrader{Subprotocols: []string{parley.SubprotocolProto}}
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ws, err := up.Upgrade(w, r, nil)
		if err != nil {
			return
		}
		defer ws.Close()
		if _, _, err := ws.ReadMessage(); err != nil { // Hello
			return
		}
		b, _ := proto.Marshal(&parleyv1.Frame{Kind: &parleyv1.Frame_Welcome{Welcome: welcome}})
		if err := ws.WriteMessage(websocket.BinaryMessage, b); err != nil {
			return
		}
		script(ws)
	}))
	t.Cleanup(hs.Close)
	return "ws" + strings.TrimPrefix(hs.URL, "http")
}
