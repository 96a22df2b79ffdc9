package e2e_test

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	mathrand "math/rand/v2"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"go.uber.org/goleak"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/known/structpb"

	parleyv1 "github.com/parleyrpc/parley/gen/parley/v1"
	"github.com/parleyrpc/parley/internal/e2e"
	e2ev1 "github.com/parleyrpc/parley/internal/e2e/gen/e2e/v1"
	"github.com/parleyrpc/parley/internal/e2e/gen/e2e/v1/e2ev1parley"
	"github.com/parleyrpc/parley/runtime/parley"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// server is a Parley server on a real loopback socket.
type server struct {
	*parley.Server
	url  string
	http *httptest.Server
}

func startServer(t *testing.T, opts ...parley.ServerOption) *server {
	t.Helper()
	srv := parley.NewServer(opts...)
	e2ev1parley.RegisterEchoServiceServer(srv, &e2e.EchoService{})
	hs := httptest.NewServer(srv)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
		hs.Close()
	})
	return &server{Server: srv, url: "ws" + strings.TrimPrefix(hs.URL, "http"), http: hs}
}

func dial(t *testing.T, url string, opts ...parley.ClientOption) (*parley.Conn, e2ev1parley.EchoServiceClient) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	conn, err := parley.Dial(ctx, url, opts...)
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return conn, e2ev1parley.NewEchoServiceClient(conn)
}

var encodings = []struct {
	name string
	opts []parley.ClientOption
}{
	{"proto", nil},
	{"json", []parley.ClientOption{parley.WithJSON()}},
}

func wantCode(t *testing.T, err error, code parley.Code) {
	t.Helper()
	if got := parley.CodeOf(err); got != code {
		t.Fatalf("got error %v (code %v), want code %v", err, got, code)
	}
}

// TestConcurrentCallsOneSocket sends 10,000 calls at once over one socket;
// an interceptor makes handlers finish in random order. Every caller must
// get its own reply.
func TestConcurrentCallsOneSocket(t *testing.T) {
	shuffle := func(next parley.UnaryFunc) parley.UnaryFunc {
		return func(ctx context.Context, req proto.Message) (proto.Message, error) {
			time.Sleep(time.Duration(mathrand.IntN(2000)) * time.Microsecond)
			return next(ctx, req)
		}
	}
	srv := startServer(t, parley.WithInterceptors(shuffle), parley.WithMaxInFlight(1000))
	for _, enc := range encodings {
		t.Run(enc.name, func(t *testing.T) {
			n := 10_000
			if enc.name == "json" {
				n = 2_000 // JSON is for debugging; keep -race runs quick
			}
			_, client := dial(t, srv.url, enc.opts...)
			var wg sync.WaitGroup
			var wrong atomic.Int64
			for i := range n {
				wg.Add(1)
				go func() {
					defer wg.Done()
					text := fmt.Sprintf("call %d", i)
					res, err := client.Echo(context.Background(), &e2ev1.EchoRequest{Text: text, Data: binary.LittleEndian.AppendUint64(nil, uint64(i))})
					if err != nil {
						t.Errorf("call %d: %v", i, err)
						return
					}
					if res.GetText() != text || binary.LittleEndian.Uint64(res.GetData()) != uint64(i) {
						wrong.Add(1)
					}
				}()
			}
			wg.Wait()
			if wrong.Load() > 0 {
				t.Fatalf("%d of %d callers got someone else's reply", wrong.Load(), n)
			}
		})
	}
}

// TestDeadlineReachesHandler checks the handler's context carries the
// caller's deadline: from the caller's context, and from the method's
// timeout_ms when the caller sets none.
func TestDeadlineReachesHandler(t *testing.T) {
	srv := startServer(t)
	for _, enc := range encodings {
		t.Run(enc.name, func(t *testing.T) {
			_, client := dial(t, srv.url, enc.opts...)
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			res, err := client.Sleep(ctx, &e2ev1.SleepRequest{Ms: 1})
			if err != nil {
				t.Fatal(err)
			}
			if d := res.GetDeadlineMs(); d < 1500 || d > 2000 {
				t.Fatalf("handler saw a deadline %d ms away, want about 2000", d)
			}
			res, err = client.SleepWithDefault(context.Background(), &e2ev1.SleepRequest{Ms: 1})
			if err != nil {
				t.Fatal(err)
			}
			if d := res.GetDeadlineMs(); d < 200 || d > 300 {
				t.Fatalf("handler saw a deadline %d ms away, want about 300 (the method's timeout_ms)", d)
			}
		})
	}
}

// TestClientGivingUpCancelsHandler checks that a caller's deadline or
// cancellation ends the handler's context, and that the caller gets the
// right code at once.
func TestClientGivingUpCancelsHandler(t *testing.T) {
	srv := startServer(t)
	for _, enc := range encodings {
		t.Run(enc.name, func(t *testing.T) {
			_, client := dial(t, srv.url, enc.opts...)

			// The method's default deadline (300 ms) expires.
			token := "default-" + enc.name
			start := time.Now()
			_, err := client.SleepWithDefault(context.Background(), &e2ev1.SleepRequest{Ms: 10_000, Token: token})
			wantCode(t, err, parley.CodeDeadlineExceeded)
			if el := time.Since(start); el > 2*time.Second {
				t.Fatalf("deadline_exceeded after %v, want about 300ms", el)
			}
			out, err := client.Outcome(context.Background(), &e2ev1.OutcomeRequest{Token: token})
			if err != nil {
				t.Fatal(err)
			}
			if out.GetOutcome() != "deadline_exceeded" {
				t.Fatalf("handler ended with %q, want deadline_exceeded", out.GetOutcome())
			}

			// The caller cancels: the cancel frame reaches the handler long
			// before any deadline.
			token = "cancel-" + enc.name
			ctx, cancel := context.WithCancel(context.Background())
			errc := make(chan error, 1)
			go func() {
				_, err := client.Sleep(ctx, &e2ev1.SleepRequest{Ms: 10_000, Token: token})
				errc <- err
			}()
			// Cancel once the handler runs: Outcome blocks until it ends,
			// so start it after a call that proves the Sleep was sent.
			time.AfterFunc(50*time.Millisecond, cancel)
			wantCode(t, <-errc, parley.CodeCanceled)
			out, err = client.Outcome(context.Background(), &e2ev1.OutcomeRequest{Token: token})
			if err != nil {
				t.Fatal(err)
			}
			if out.GetOutcome() != "canceled" {
				t.Fatalf("handler ended with %q, want canceled", out.GetOutcome())
			}
		})
	}
}

// TestErrorsKeepTheSocket checks handler errors, panics, unknown methods
// and undecodable payloads each answer the call and leave the socket open.
func TestErrorsKeepTheSocket(t *testing.T) {
	srv := startServer(t)
	for _, enc := range encodings {
		t.Run(enc.name, func(t *testing.T) {
			conn, client := dial(t, srv.url, enc.opts...)
			for code := parley.CodeCanceled; code <= parley.CodeUnauthenticated; code++ {
				_, err := client.Fail(context.Background(), &e2ev1.FailRequest{Code: code.String(), Message: "because " + code.String()})
				wantCode(t, err, code)
				var perr *parley.Error
				if !errors.As(err, &perr) || perr.Message() != "because "+code.String() {
					t.Fatalf("got %v, want message %q", err, "because "+code.String())
				}
			}
			_, err := client.Panic(context.Background(), &emptypb.Empty{})
			wantCode(t, err, parley.CodeInternal)

			unknown := &parley.MethodSpec{Procedure: "/e2e.v1.EchoService/Nope"}
			err = conn.Invoke(context.Background(), unknown, &emptypb.Empty{}, &emptypb.Empty{})
			wantCode(t, err, parley.CodeUnimplemented)

			// A request that cannot be encoded (invalid UTF-8 in a proto3
			// string) is the caller's error and never leaves.
			_, err = client.Echo(context.Background(), &e2ev1.EchoRequest{Text: "bad \xff"})
			wantCode(t, err, parley.CodeInvalidArgument)

			res, err := client.Echo(context.Background(), &e2ev1.EchoRequest{Text: "still here"})
			if err != nil || res.GetText() != "still here" {
				t.Fatalf("socket unusable after errors: %v", err)
			}
		})
	}
}

// rawConn is a WebSocket to the server that speaks frames by hand.
func rawConn(t *testing.T, url, subprotocol string) *websocket.Conn {
	t.Helper()
	d := websocket.Dialer{Subprotocols: []string{subprotocol}}
	ws, _, err := d.Dial(url, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ws.Close() })
	hello, _ := proto.Marshal(&parleyv1.Frame{Kind: &parleyv1.Frame_Hello{Hello: &parleyv1.Hello{}}})
	typ := websocket.BinaryMessage
	if subprotocol == parley.SubprotocolJSON {
		typ, hello = websocket.TextMessage, []byte(`{"hello":{}}`)
	}
	if err := ws.WriteMessage(typ, hello); err != nil {
		t.Fatal(err)
	}
	if _, _, err := ws.ReadMessage(); err != nil { // welcome
		t.Fatal(err)
	}
	return ws
}

// readFrame reads one frame from a raw socket, in either encoding.
func readFrame(t *testing.T, ws *websocket.Conn) *parleyv1.Frame {
	t.Helper()
	_ = ws.SetReadDeadline(time.Now().Add(5 * time.Second))
	typ, data, err := ws.ReadMessage()
	if err != nil {
		t.Fatal(err)
	}
	f := new(parleyv1.Frame)
	if typ == websocket.TextMessage {
		err = protojson.Unmarshal(data, f)
	} else {
		err = proto.Unmarshal(data, f)
	}
	if err != nil {
		t.Fatal(err)
	}
	return f
}

// closeCode reads until the server closes the socket and returns its code.
func closeCode(t *testing.T, ws *websocket.Conn) int {
	t.Helper()
	_ = ws.SetReadDeadline(time.Now().Add(5 * time.Second))
	for {
		_, _, err := ws.ReadMessage()
		if err == nil {
			continue
		}
		var ce *websocket.CloseError
		if !errors.As(err, &ce) {
			t.Fatalf("socket ended without a close frame: %v", err)
		}
		return ce.Code
	}
}

// TestGarbageFrames checks that frames the server cannot decode close that
// socket with a protocol error, and nothing else is disturbed.
func TestGarbageFrames(t *testing.T) {
	srv := startServer(t)
	_, bystander := dial(t, srv.url)
	random := make([]byte, 512)
	_, _ = rand.Read(random)
	call, _ := proto.Marshal(&parleyv1.Frame{Kind: &parleyv1.Frame_Call{Call: &parleyv1.Call{Id: 1, Method: e2ev1parley.EchoServiceEchoProcedure}}})
	jsonBody, _ := proto.Marshal(&parleyv1.Frame{Kind: &parleyv1.Frame_Call{Call: &parleyv1.Call{
		Id: 1, Method: e2ev1parley.EchoServiceEchoProcedure, Body: &parleyv1.Call_Json{Json: structpb.NewStringValue("hi")},
	}}})
	cases := []struct {
		name        string
		subprotocol string
		typ         int
		data        []byte
		want        int
	}{
		{"random bytes", parley.SubprotocolProto, websocket.BinaryMessage, append([]byte{0xff}, random...), websocket.CloseProtocolError},
		{"truncated protobuf", parley.SubprotocolProto, websocket.BinaryMessage, call[:len(call)-3], websocket.CloseProtocolError},
		{"text on proto", parley.SubprotocolProto, websocket.TextMessage, []byte(`{"call":{}}`), websocket.CloseUnsupportedData},
		{"binary on json", parley.SubprotocolJSON, websocket.BinaryMessage, call, websocket.CloseUnsupportedData},
		{"json body on proto", parley.SubprotocolProto, websocket.BinaryMessage, jsonBody, websocket.CloseProtocolError},
		{"invalid json", parley.SubprotocolJSON, websocket.TextMessage, []byte(`{"call":`), websocket.CloseProtocolError},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ws := rawConn(t, srv.url, tc.subprotocol)
			if err := ws.WriteMessage(tc.typ, tc.data); err != nil {
				t.Fatal(err)
			}
			if got := closeCode(t, ws); got != tc.want {
				t.Fatalf("close code %d, want %d", got, tc.want)
			}
			if _, err := bystander.Echo(context.Background(), &e2ev1.EchoRequest{Text: "ok"}); err != nil {
				t.Fatalf("another connection broke: %v", err)
			}
		})
	}

	// A JSON payload of the wrong shape answers only that call.
	js := rawConn(t, srv.url, parley.SubprotocolJSON)
	if err := js.WriteMessage(websocket.TextMessage, []byte(`{"call":{"id":"1","method":"/e2e.v1.EchoService/Echo","json":{"text":5}}}`)); err != nil {
		t.Fatal(err)
	}
	if _, data, err := js.ReadMessage(); err != nil || !strings.Contains(string(data), "CODE_INVALID_ARGUMENT") {
		t.Fatalf("got %s, %v; want an invalid_argument error", data, err)
	}

	// An undecodable payload inside a well-formed frame answers only that
	// call.
	ws := rawConn(t, srv.url, parley.SubprotocolProto)
	bad, _ := proto.Marshal(&parleyv1.Frame{Kind: &parleyv1.Frame_Call{Call: &parleyv1.Call{
		Id: 1, Method: e2ev1parley.EchoServiceEchoProcedure, Body: &parleyv1.Call_Payload{Payload: []byte{0x0a, 0xff}},
	}}})
	if err := ws.WriteMessage(websocket.BinaryMessage, bad); err != nil {
		t.Fatal(err)
	}
	_, data, err := ws.ReadMessage()
	if err != nil {
		t.Fatal(err)
	}
	var f parleyv1.Frame
	if err := proto.Unmarshal(data, &f); err != nil {
		t.Fatal(err)
	}
	if f.GetError().GetId() != 1 || f.GetError().GetCode() != parleyv1.Code_CODE_INVALID_ARGUMENT {
		t.Fatalf("got %v, want invalid_argument for call 1", &f)
	}
}

// TestMessageOverLimit sends a frame header announcing a 1 GiB message and
// no payload: the server must close with 1009 at once, which it can only do
// without waiting for (or allocating) the payload.
func TestMessageOverLimit(t *testing.T) {
	srv := startServer(t, parley.WithMaxMessageBytes(64<<10))
	ws := rawConn(t, srv.url, parley.SubprotocolProto)
	header := []byte{0x82, 0x80 | 127}                    // FIN, binary; masked, 64-bit length
	header = binary.BigEndian.AppendUint64(header, 1<<30) // 1 GiB
	header = append(header, 1, 2, 3, 4)                   // masking key
	if _, err := ws.NetConn().Write(header); err != nil {
		t.Fatal(err)
	}
	if got := closeCode(t, ws); got != websocket.CloseMessageTooBig {
		t.Fatalf("close code %d, want 1009", got)
	}
}

// TestUpgradeRefusals checks the origin check and subprotocol negotiation.
func TestUpgradeRefusals(t *testing.T) {
	srv := startServer(t)
	status := func(origin, subprotocol string) int {
		d := websocket.Dialer{Subprotocols: []string{subprotocol}}
		h := http.Header{}
		if origin != "" {
			h.Set("Origin", origin)
		}
		ws, resp, err := d.Dial(srv.url, h)
		if err == nil {
			_ = ws.Close()
			return http.StatusSwitchingProtocols
		}
		if resp == nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if got := status("https://evil.example", parley.SubprotocolProto); got != http.StatusForbidden {
		t.Errorf("cross-origin upgrade: status %d, want 403", got)
	}
	if got := status(srv.http.URL, parley.SubprotocolProto); got != http.StatusSwitchingProtocols {
		t.Errorf("same-origin upgrade: status %d, want 101", got)
	}
	if got := status("", "chat.v2"); got != http.StatusBadRequest {
		t.Errorf("unknown subprotocol: status %d, want 400", got)
	}
	_, err := parley.Dial(context.Background(), srv.url, parley.WithHTTPHeader(http.Header{"Origin": {"https://evil.example"}}))
	wantCode(t, err, parley.CodePermissionDenied)

	allowed := startServer(t, parley.WithAllowedOrigins("https://app.example"))
	d := websocket.Dialer{Subprotocols: []string{parley.SubprotocolProto}}
	ws, _, err := d.Dial(allowed.url, http.Header{"Origin": {"https://app.example"}})
	if err != nil {
		t.Fatalf("allowed origin refused: %v", err)
	}
	_ = ws.Close()
}

// TestShutdownDrains checks Shutdown lets calls in flight finish, refuses
// new ones with unavailable, and closes sockets with 1001.
func TestShutdownDrains(t *testing.T) {
	const n = 20
	running := make(chan struct{}, n)
	signal := func(next parley.UnaryFunc) parley.UnaryFunc {
		return func(ctx context.Context, req proto.Message) (proto.Message, error) {
			running <- struct{}{}
			return next(ctx, req)
		}
	}
	srv := startServer(t, parley.WithInterceptors(signal))
	// Without reconnecting, the client shows the server's side of it.
	conn, client := dial(t, srv.url, parley.WithoutReconnect())
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := client.Sleep(context.Background(), &e2ev1.SleepRequest{Ms: 300})
			errs <- err
		}()
	}
	for range n {
		<-running
	}

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Errorf("call in flight during Shutdown failed: %v", err)
		}
	}
	<-conn.Done()
	if err := conn.Err(); !strings.Contains(fmt.Sprint(err), "1001") {
		t.Fatalf("connection closed with %v, want 1001", err)
	}
	_, err := client.Echo(context.Background(), &e2ev1.EchoRequest{})
	wantCode(t, err, parley.CodeUnavailable)
}

// TestGoAwayRefusesNewCalls checks that once the server said GoAway, a new
// call fails with unavailable instead of running, while one in flight
// finishes.
func TestGoAwayRefusesNewCalls(t *testing.T) {
	running := make(chan struct{}, 1)
	signal := func(next parley.UnaryFunc) parley.UnaryFunc {
		return func(ctx context.Context, req proto.Message) (proto.Message, error) {
			if _, ok := req.(*e2ev1.SleepRequest); ok {
				running <- struct{}{}
			}
			return next(ctx, req)
		}
	}
	srv := startServer(t, parley.WithInterceptors(signal))
	conn, client := dial(t, srv.url, parley.WithoutReconnect())
	errc := make(chan error, 1)
	go func() {
		_, err := client.Sleep(context.Background(), &e2ev1.SleepRequest{Ms: 500})
		errc <- err
	}()
	<-running
	done := make(chan error, 1)
	go func() { done <- srv.Shutdown(context.Background()) }()
	// Until the socket closes, new calls fail fast with unavailable, either
	// refused by the client after GoAway or by the draining server.
	for {
		_, err := client.Echo(context.Background(), &e2ev1.EchoRequest{})
		if err == nil {
			select {
			case <-conn.Done():
				t.Fatal("connection closed but a call succeeded")
			default:
				continue // GoAway not seen yet
			}
		}
		wantCode(t, err, parley.CodeUnavailable)
		break
	}
	if err := <-errc; err != nil {
		t.Fatalf("call in flight failed: %v", err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// TestUnknownFrameKinds: a frame kind from a newer peer is answered with
// invalid_argument when it has an id and ignored otherwise (frame.proto's
// compatibility rule); the socket stays open either way. A frame with no
// member at all is still a protocol error.
func TestUnknownFrameKinds(t *testing.T) {
	srv := startServer(t)
	for _, tc := range []struct {
		subprotocol       string
		typ               int
		withID, withoutID []byte
		ping, empty       []byte
	}{
		{parley.SubprotocolProto, websocket.BinaryMessage,
			[]byte{0xa2, 0x01, 0x02, 0x08, 0x05}, []byte{0xa2, 0x01, 0x00}, // field 20 {id: 5}; field 20 {}
			[]byte{0x62, 0x02, 0x08, 0x07}, []byte{}}, // ping{nonce: 7}
		{parley.SubprotocolJSON, websocket.TextMessage,
			[]byte(`{"futureKind":{"id":"5"}}`), []byte(`{"futureKind":{}}`),
			[]byte(`{"ping":{"nonce":"7"}}`), []byte(`{}`)},
	} {
		t.Run(tc.subprotocol, func(t *testing.T) {
			ws := rawConn(t, srv.url, tc.subprotocol)
			read := func() *parleyv1.Frame { return readFrame(t, ws) }
			for _, msg := range [][]byte{tc.withoutID, tc.withID, tc.ping} {
				if err := ws.WriteMessage(tc.typ, msg); err != nil {
					t.Fatal(err)
				}
			}
			// In order: the Error for the kind with an id, nothing for the
			// one without, then the Pong.
			if e := read().GetError(); e.GetId() != 5 || e.GetCode() != parleyv1.Code_CODE_INVALID_ARGUMENT {
				t.Fatalf("got %v, want invalid_argument for id 5", e)
			}
			if p := read().GetPong(); p.GetNonce() != 7 {
				t.Fatalf("got %v, want the pong: the unknown kinds must leave the socket open", p)
			}
			if err := ws.WriteMessage(tc.typ, tc.empty); err != nil {
				t.Fatal(err)
			}
			if code := closeCode(t, ws); code != websocket.CloseProtocolError {
				t.Fatalf("a frame with no kind: closed with %d, want 1002", code)
			}
		})
	}
}

// TestCallIDs: a client call with an even id is answered with
// invalid_argument for that id and the socket stays open; an id reused for
// another method is refused; id 0 is a protocol error: Error with id 0,
// which concerns the connection, then a 1002 close.
func TestCallIDs(t *testing.T) {
	srv := startServer(t)
	ws := rawConn(t, srv.url, parley.SubprotocolProto)
	send := func(f *parleyv1.Frame) {
		t.Helper()
		b, _ := proto.Marshal(f)
		if err := ws.WriteMessage(websocket.BinaryMessage, b); err != nil {
			t.Fatal(err)
		}
	}
	read := func() *parleyv1.Frame { return readFrame(t, ws) }
	call := func(id uint64) *parleyv1.Frame {
		return &parleyv1.Frame{Kind: &parleyv1.Frame_Call{Call: &parleyv1.Call{Id: id, Method: e2ev1parley.EchoServiceEchoProcedure}}}
	}
	send(call(2))
	send(&parleyv1.Frame{Kind: &parleyv1.Frame_Ping{Ping: &parleyv1.Ping{Nonce: 7}}})
	if e := read().GetError(); e.GetId() != 2 || e.GetCode() != parleyv1.Code_CODE_INVALID_ARGUMENT || !strings.Contains(e.GetMessage(), "odd") {
		t.Fatalf("got %v, want invalid_argument for id 2 naming odd ids", e)
	}
	if read().GetPong().GetNonce() != 7 {
		t.Fatal("the socket did not stay open after an even id")
	}
	// Id 1 answered; the same id again for the same method is taken for
	// a re-send and gets the stored reply; for another method it is a
	// reused id, refused, never answered with the first call's reply.
	echo, _ := proto.Marshal(&e2ev1.EchoRequest{Text: "first"})
	for range 2 {
		send(&parleyv1.Frame{Kind: &parleyv1.Frame_Call{Call: &parleyv1.Call{Id: 1, Method: e2ev1parley.EchoServiceEchoProcedure, Body: &parleyv1.Call_Payload{Payload: echo}}}})
		var res e2ev1.EchoResponse
		if r := read().GetReply(); r.GetId() != 1 || proto.Unmarshal(r.GetPayload(), &res) != nil || res.GetText() != "first" {
			t.Fatalf("got %v, want call 1's reply", r)
		}
	}
	send(&parleyv1.Frame{Kind: &parleyv1.Frame_Call{Call: &parleyv1.Call{Id: 1, Method: e2ev1parley.EchoServiceSleepProcedure}}})
	if e := read().GetError(); e.GetId() != 1 || e.GetCode() != parleyv1.Code_CODE_INVALID_ARGUMENT || !strings.Contains(e.GetMessage(), "reuses") {
		t.Fatalf("got %v, want invalid_argument for the reused id", e)
	}
	send(call(0))
	if e := read().GetError(); e == nil || e.GetId() != 0 || e.GetCode() != parleyv1.Code_CODE_INVALID_ARGUMENT {
		t.Fatalf("got %v, want invalid_argument with id 0", e)
	}
	if code := closeCode(t, ws); code != websocket.CloseProtocolError {
		t.Fatalf("closed with %d after a call with id 0, want 1002", code)
	}
}

// TestProtocolMisuse: mistakes a client written by hand could make get a
// clear answer: a body in the Call of a method that streams its requests
// is refused for that call; a second Hello is an Error about the
// connection (id 0), then a 1002 close.
func TestProtocolMisuse(t *testing.T) {
	srv := startServer(t)
	e2ev1parley.RegisterStreamServiceServer(srv.Server, &e2e.StreamService{})
	ws := rawConn(t, srv.url, parley.SubprotocolProto)
	send := func(f *parleyv1.Frame) {
		t.Helper()
		b, _ := proto.Marshal(f)
		if err := ws.WriteMessage(websocket.BinaryMessage, b); err != nil {
			t.Fatal(err)
		}
	}
	body, _ := proto.Marshal(&e2ev1.SumRequest{Value: 1})
	send(&parleyv1.Frame{Kind: &parleyv1.Frame_Call{Call: &parleyv1.Call{Id: 1, Method: e2ev1parley.StreamServiceSumProcedure, Body: &parleyv1.Call_Payload{Payload: body}}}})
	if e := readFrame(t, ws).GetError(); e.GetId() != 1 || e.GetCode() != parleyv1.Code_CODE_INVALID_ARGUMENT || !strings.Contains(e.GetMessage(), "stream items") {
		t.Fatalf("got %v, want invalid_argument for call 1 saying to send stream items", e)
	}
	send(&parleyv1.Frame{Kind: &parleyv1.Frame_Hello{Hello: &parleyv1.Hello{}}})
	if e := readFrame(t, ws).GetError(); e == nil || e.GetId() != 0 || !strings.Contains(e.GetMessage(), "after the handshake") {
		t.Fatalf("got %v, want an Error with id 0 about the second hello", e)
	}
	if code := closeCode(t, ws); code != websocket.CloseProtocolError {
		t.Fatalf("closed with %d after a second hello, want 1002", code)
	}
}
