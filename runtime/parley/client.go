package parley

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"

	"github.com/gorilla/websocket"
	parleyv1 "github.com/parleyrpc/parley/gen/parley/v1"
	"google.golang.org/protobuf/proto"
)

// Conn is a client's connection to a Parley server: one WebSocket that
// carries any number of concurrent calls. Generated clients are built on it
// (NewChatServiceClient(conn)).
//
// A Conn is safe for concurrent use by any number of goroutines. It owns a
// reader and a writer goroutine, which end when the socket closes; Close
// waits for them.
type Conn struct {
	e       *endpoint
	welcome *parleyv1.Welcome
}

// Dial connects to the Parley server at url (ws:// or wss://) and completes
// the handshake. ctx bounds the dial and the handshake only.
func Dial(ctx context.Context, url string, opts ...ClientOption) (*Conn, error) {
	cfg := defaultConfig()
	for _, o := range opts {
		o.applyToClient(&cfg)
	}
	c, ok := codecFor(cfg.subprotocol)
	if !ok {
		return nil, fmt.Errorf("parley: unknown subprotocol %q", cfg.subprotocol)
	}
	var bc *batchConn
	netDialer := &net.Dialer{}
	dialer := websocket.Dialer{
		Subprotocols:     []string{cfg.subprotocol},
		HandshakeTimeout: cfg.handshakeTimeout,
		NetDialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			nc, err := netDialer.DialContext(ctx, network, addr)
			if err != nil {
				return nil, err
			}
			bc = &batchConn{Conn: nc}
			return bc, nil
		},
	}
	ws, resp, err := dialer.DialContext(ctx, url, cfg.header)
	if err != nil {
		return nil, dialError(err, resp)
	}
	if ws.Subprotocol() != cfg.subprotocol {
		_ = ws.Close()
		return nil, Errorf(CodeUnavailable, "%s is not a Parley server: it did not accept subprotocol %s", url, cfg.subprotocol)
	}
	e := newEndpoint(ws, bc, c, SideClient, &cfg)
	welcome, err := clientHandshake(ctx, e)
	if err != nil {
		_ = ws.Close()
		return nil, err
	}
	if n := welcome.GetMaxInFlight(); n > 0 {
		e.sem = make(chan struct{}, n)
	}
	if w := welcome.GetStreamWindow(); w > 0 {
		e.peerWindow = w
	}
	e.methods = e.lookupLocal
	e.start()
	go e.readLoop()
	return &Conn{e: e, welcome: welcome}, nil
}

func dialError(err error, resp *http.Response) error {
	if resp == nil {
		return Errorf(CodeUnavailable, "dial: %w", err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	code := CodeUnavailable
	switch resp.StatusCode {
	case http.StatusUnauthorized:
		code = CodeUnauthenticated
	case http.StatusForbidden:
		code = CodePermissionDenied
	case http.StatusBadRequest:
		code = CodeInvalidArgument
	}
	return Errorf(code, "dial: HTTP %d: %s", resp.StatusCode, body)
}

func clientHandshake(ctx context.Context, e *endpoint) (*parleyv1.Welcome, error) {
	hello := &parleyv1.Hello{Metadata: e.cfg.metadata, Agent: agent, StreamWindow: e.cfg.streamWindow}
	b, err := e.codec.appendFrame(nil, &frame{kind: kindHello, hello: hello}, nil)
	if err != nil {
		return nil, err
	}
	deadline := time.Now().Add(e.cfg.handshakeTimeout)
	if dl, ok := ctx.Deadline(); ok && dl.Before(deadline) {
		deadline = dl
	}
	_ = e.ws.SetWriteDeadline(deadline)
	if err := e.ws.WriteMessage(e.codec.messageType(), b); err != nil {
		return nil, Errorf(CodeUnavailable, "sending hello: %w", err)
	}
	_ = e.ws.SetReadDeadline(deadline)
	typ, data, err := e.ws.ReadMessage()
	if err != nil {
		return nil, Errorf(CodeUnavailable, "awaiting welcome: %w", err)
	}
	var f frame
	if typ != e.codec.messageType() {
		return nil, Errorf(CodeInternal, "awaiting welcome: got a %s message on %s", messageTypeName(typ), e.codec.subprotocol())
	}
	if err := e.codec.decodeFrame(data, &f); err != nil {
		return nil, Errorf(CodeInternal, "awaiting welcome: %v", err)
	}
	switch f.kind {
	case kindWelcome:
		return f.welcome, nil
	case kindError:
		return nil, &Error{code: f.code, message: f.message, details: f.details}
	}
	return nil, Errorf(CodeInternal, "awaiting welcome: got a %v frame", f.kind)
}

// Invoke calls a method and decodes its reply into res. Its deadline is
// ctx's, else the method's timeout_ms, else the connection's call timeout
// (DefaultCallTimeout). Calls beyond the server's in-flight limit wait for
// a free slot within that deadline. At the deadline Invoke returns
// CodeDeadlineExceeded and tells the server to cancel the call; a reply
// arriving later is dropped.
func (c *Conn) Invoke(ctx context.Context, spec *MethodSpec, req, res proto.Message) error {
	return c.e.invoke(ctx, spec, req, res)
}

// NewStream opens a streaming call. Generated clients wrap it in typed
// streams.
func (c *Conn) NewStream(ctx context.Context, spec *MethodSpec) (*Stream, error) {
	return c.e.newStream(ctx, spec)
}

// Register adds handlers for methods the server calls on this client:
// events and calls of services marked `implemented_by = CLIENT`. Generated
// RegisterXHandler functions call it. Events that arrive for a method with
// no handler are dropped (logged at debug level); calls get
// CodeUnimplemented. Registering a procedure twice panics.
func (c *Conn) Register(methods ...*Method) {
	c.e.register(methods...)
}

var (
	_ Invoker   = (*Conn)(nil)
	_ Registrar = (*Conn)(nil)
)

// SessionID returns the session id the server assigned.
func (c *Conn) SessionID() string { return c.welcome.GetSessionId() }

// Done is closed when the connection has closed and its goroutines ended.
func (c *Conn) Done() <-chan struct{} { return c.e.done }

// Err returns why the connection closed, or nil while it is open.
func (c *Conn) Err() error {
	c.e.mu.Lock()
	defer c.e.mu.Unlock()
	if !c.e.closing {
		return nil
	}
	return c.e.closeErr
}

// Close closes the connection. Calls still pending fail with CodeCanceled.
// It waits (at most about a second) for the server to acknowledge the
// close, and for the connection's goroutines to end.
func (c *Conn) Close() error {
	e := c.e
	e.mu.Lock()
	if e.closeErr == nil {
		e.closeErr = NewError(CodeCanceled, "the connection was closed by Close")
	}
	closeErr := e.closeErr
	pending := e.pending
	e.pending = make(map[uint64]*pendingCall)
	e.mu.Unlock()
	for _, pc := range pending {
		pc.done <- closeErr
	}
	e.closeWith(closeNormal, "")
	<-e.done
	var ce *Error
	if errors.As(closeErr, &ce) && ce.code == CodeCanceled {
		return nil
	}
	return closeErr
}
