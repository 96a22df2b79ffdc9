package parley_test

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	parleyv1 "github.com/parleyrpc/parley/gen/parley/v1"
	e2ev1 "github.com/parleyrpc/parley/internal/e2e/gen/e2e/v1"
	"github.com/parleyrpc/parley/runtime/parley"
)

// TestCallMetadataOverTheLimit: a call's metadata lives as long as its
// handler runs, and a map of many short entries takes several times its
// encoded size (128 calls in flight with 4 MiB of it each held 3.2 GB);
// beyond WithMaxMetadataBytes the call is refused and the socket stays.
func TestCallMetadataOverTheLimit(t *testing.T) {
	const limit = 1024
	srv := parley.NewServer(parley.WithMaxMetadataBytes(limit))
	srv.Register(parley.NewUnaryMethod(echoSpec, func(ctx context.Context, r *e2ev1.EchoRequest) (*e2ev1.EchoResponse, error) {
		return &e2ev1.EchoResponse{Text: r.Text}, nil
	}))
	p := dialRaw(t, serveWS(t, srv), 0, nil)
	call := func(id uint64, md map[string]string) *parleyv1.Frame {
		p.write(t, &parleyv1.Frame{Kind: &parleyv1.Frame_Call{Call: &parleyv1.Call{Id: id, Method: echoSpec.Procedure, Metadata: md}}})
		return p.read(t)
	}
	if f := call(1, map[string]string{"k": strings.Repeat("v", limit)}); f.GetError().GetCode() != parleyv1.Code_CODE_RESOURCE_EXHAUSTED || f.GetError().GetId() != 1 {
		t.Fatalf("a call with %d bytes of metadata, the limit %d: got %v, want resource_exhausted", limit+1, limit, f)
	}
	if f := call(3, map[string]string{"k": strings.Repeat("v", limit-1)}); f.GetReply().GetId() != 3 {
		t.Fatalf("a call with metadata at the limit: got %v, want its reply", f)
	}
}

// TestHelloMetadataOverTheLimit: a Hello's metadata is held while the
// authenticate hook runs, for any number of handshakes at once.
func TestHelloMetadataOverTheLimit(t *testing.T) {
	const limit = 1024
	srv := parley.NewServer(parley.WithMaxMetadataBytes(limit))
	url := serveWS(t, srv)
	d := websocket.Dialer{Subprotocols: []string{parley.SubprotocolProto}}
	ws, _, err := d.Dial(url, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ws.Close()
	p := &rawPeer{ws: ws}
	p.write(t, &parleyv1.Frame{Kind: &parleyv1.Frame_Hello{Hello: &parleyv1.Hello{Metadata: map[string]string{"authorization": strings.Repeat("x", limit)}}}})
	if f := p.read(t); f.GetError().GetCode() != parleyv1.Code_CODE_RESOURCE_EXHAUSTED {
		t.Fatalf("a hello with more than %d bytes of metadata: got %v, want resource_exhausted", limit, f)
	}
	if code := p.closeCode(t); code != websocket.CloseMessageTooBig {
		t.Fatalf("closed with %d, want %d", code, websocket.CloseMessageTooBig)
	}
}

// TestHelloOverItsSizeLimitIsRefusedUnread: a Hello is decoded before
// authentication, and a map of many short entries takes several times its
// encoded size, so a server reads a Hello of at most twice
// WithMaxMetadataBytes plus 4 KiB (6 KiB here), whatever it holds: a
// larger one is refused with 1009 before it is read, even if its metadata
// would be within the limit (here it has none, and a long agent). Before,
// any Hello up to the 4 MiB message limit was read and decoded: 20 at once
// peaked at 801 MB.
func TestHelloOverItsSizeLimitIsRefusedUnread(t *testing.T) {
	const limit = 1024
	url := serveWS(t, parley.NewServer(parley.WithMaxMetadataBytes(limit)))
	hello := func(agent int) *rawPeer {
		d := websocket.Dialer{Subprotocols: []string{parley.SubprotocolProto}}
		ws, _, err := d.Dial(url, nil)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ws.Close() })
		p := &rawPeer{ws: ws}
		p.write(t, &parleyv1.Frame{Kind: &parleyv1.Frame_Hello{Hello: &parleyv1.Hello{Agent: strings.Repeat("a", agent)}}})
		return p
	}
	if f := hello(5000).read(t); f.GetWelcome() == nil {
		t.Fatalf("a 5 KB hello: got %v, want welcome", f)
	}
	if code := hello(7000).closeCode(t); code != websocket.CloseMessageTooBig {
		t.Fatalf("a 7 KB hello: closed with %d, want %d", code, websocket.CloseMessageTooBig)
	}
}

// TestHandshakesAreBounded: with WithMaxHandshakes(1), a socket that
// upgraded and has not sent its Hello takes the one place: a second
// request waits for it and gets in once the first handshake completes. A
// third, while the second holds the place, waits half the handshake
// timeout (1 s) and is answered 503 with Retry-After, before any upgrade.
func TestHandshakesAreBounded(t *testing.T) {
	url := serveWS(t, parley.NewServer(parley.WithMaxHandshakes(1), parley.WithHandshakeTimeout(2*time.Second)))
	d := websocket.Dialer{Subprotocols: []string{parley.SubprotocolProto}}
	type dialed struct {
		p    *rawPeer
		resp *http.Response
		err  error
	}
	dial := func() dialed {
		ws, resp, err := d.Dial(url, nil)
		if err != nil {
			return dialed{resp: resp, err: err}
		}
		t.Cleanup(func() { ws.Close() })
		return dialed{p: &rawPeer{ws: ws}, resp: resp}
	}
	hello := func(p *rawPeer) {
		t.Helper()
		p.write(t, &parleyv1.Frame{Kind: &parleyv1.Frame_Hello{Hello: &parleyv1.Hello{}}})
		if f := p.read(t); f.GetWelcome() == nil {
			t.Fatalf("got %v, want welcome", f)
		}
	}
	first := dial()
	if first.err != nil {
		t.Fatal(first.err)
	}
	waiting := make(chan dialed, 1)
	go func() { waiting <- dial() }()
	hello(first.p)
	second := <-waiting
	if second.err != nil {
		t.Fatalf("a second handshake, queued behind the first: %v", second.err)
	}
	third := dial()
	if third.err == nil || third.resp == nil || third.resp.StatusCode != http.StatusServiceUnavailable || third.resp.Header.Get("Retry-After") == "" {
		t.Fatalf("a third handshake while the second runs: %v, %+v; want 503 with Retry-After", third.err, third.resp)
	}
	hello(second.p)
}

// TestUnboundedHandshakesStillAnswer: WithMaxHandshakes(0) sets no bound,
// and a request refused before its handshake (here, the server shutting
// down) is still answered. Releasing a place that was never taken used to
// block the handler for ever on the absent bound's nil channel.
func TestUnboundedHandshakesStillAnswer(t *testing.T) {
	srv := parley.NewServer(parley.WithMaxHandshakes(0))
	url := serveWS(t, srv)
	if err := srv.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	d := websocket.Dialer{Subprotocols: []string{parley.SubprotocolProto}, HandshakeTimeout: 5 * time.Second}
	_, resp, err := d.Dial(url, nil)
	if err == nil || resp == nil || resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("a handshake during shutdown: %v, %+v; want 503", err, resp)
	}
}
