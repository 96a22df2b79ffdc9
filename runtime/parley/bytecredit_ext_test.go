package parley_test

import (
	"context"
	"errors"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"google.golang.org/protobuf/proto"

	parleyv1 "github.com/parleyrpc/parley/gen/parley/v1"
	e2ev1 "github.com/parleyrpc/parley/internal/e2e/gen/e2e/v1"
	"github.com/parleyrpc/parley/runtime/parley"
)

// TestSenderKeepsToByteCredit: a server streaming 100 KB items to a client
// whose Hello sets a byte window of 250,000 sends three (the third
// overdraws), then waits in its fourth Send until Credit.bytes comes,
// though its item credit (64) lasts much longer. Before byte credit it
// sent on, and a reader pausing on large items had its stream ended
// resource_exhausted by its own stream buffer bound.
func TestSenderKeepsToByteCredit(t *testing.T) {
	entered := make(chan int, 100) // the index of each Send the handler enters
	srv := parley.NewServer()
	srv.Register(parley.NewServerStreamMethod(countSpec, func(ctx context.Context, req *e2ev1.SleepRequest, s *parley.ServerStream[e2ev1.EchoResponse]) error {
		text := strings.Repeat("x", 100_000)
		for i := range int(req.GetMs()) {
			entered <- i
			if err := s.Send(&e2ev1.EchoResponse{Text: text}); err != nil {
				return err
			}
		}
		return nil
	}))
	p := dialRaw(t, serveWS(t, srv)+"/", 0, &parleyv1.Hello{StreamWindow: 64, StreamWindowBytes: 250_000})
	if w := p.welcome.GetStreamWindowBytes(); w != parley.DefaultStreamWindowBytes {
		t.Fatalf("welcome announces a byte window of %d, want %d", w, parley.DefaultStreamWindowBytes)
	}
	req, _ := proto.Marshal(&e2ev1.SleepRequest{Ms: 10})
	p.write(t, &parleyv1.Frame{Kind: &parleyv1.Frame_Call{Call: &parleyv1.Call{Id: 1, Method: countSpec.Procedure, Body: &parleyv1.Call_Payload{Payload: req}}}})
	for i := range 3 {
		if p.read(t).GetItem() == nil {
			t.Fatalf("frame %d is not an item", i)
		}
	}
	for i := <-entered; i < 3; i = <-entered {
	}
	// The handler is in its fourth Send. A ping's pong comes back after
	// anything it queued before.
	p.write(t, &parleyv1.Frame{Kind: &parleyv1.Frame_Ping{Ping: &parleyv1.Ping{Nonce: 7}}})
	for f := p.read(t); f.GetPong() == nil; f = p.read(t) {
		if f.GetItem() != nil {
			t.Fatal("a fourth item came beyond the byte credit")
		}
	}
	p.write(t, &parleyv1.Frame{Kind: &parleyv1.Frame_Credit{Credit: &parleyv1.Credit{Id: 1, Bytes: 1 << 20}}})
	if p.read(t).GetItem() == nil {
		t.Fatal("no fourth item after Credit.bytes")
	}
}

// itemsServer scripts a server whose Welcome sets a byte window of bytes
// (0: none): it reads the client's Call, writes items of call 1 with
// payloads of about the given sizes, and then runs then on the socket.
// It returns the URL and each item frame's length.
func itemsServer(t *testing.T, bytes uint32, sizes []int, then func(ws *websocket.Conn)) (url string, frames []int) {
	t.Helper()
	var items [][]byte
	for i, n := range sizes {
		payload, _ := proto.Marshal(&e2ev1.EchoResponse{Text: strings.Repeat(string(rune('a'+i)), n)})
		b, _ := proto.Marshal(&parleyv1.Frame{Kind: &parleyv1.Frame_Item{Item: &parleyv1.StreamItem{Id: 1, Body: &parleyv1.StreamItem_Payload{Payload: payload}}}})
		items = append(items, b)
		frames = append(frames, len(b))
	}
	url = scriptedServer(t, &parleyv1.Welcome{StreamWindow: 64, StreamWindowBytes: bytes}, func(ws *websocket.Conn) {
		if _, _, err := ws.ReadMessage(); err != nil { // the Call
			return
		}
		for _, b := range items {
			if ws.WriteMessage(websocket.BinaryMessage, b) != nil {
				return
			}
		}
		then(ws)
	})
	return url, frames
}

// until reads frames until one satisfies ok, and returns it; nil if the
// socket ends first.
func until(ws *websocket.Conn, ok func(*parleyv1.Frame) bool) *parleyv1.Frame {
	for {
		_, data, err := ws.ReadMessage()
		if err != nil {
			return nil
		}
		f := new(parleyv1.Frame)
		if proto.Unmarshal(data, f) == nil && ok(f) {
			return f
		}
	}
}

// reply ends call 1 with an empty Reply, and reads on until the client
// closes (closing first could fail the client's writes before it reads
// what came).
func reply(ws *websocket.Conn) {
	b, _ := proto.Marshal(&parleyv1.Frame{Kind: &parleyv1.Frame_Reply{Reply: &parleyv1.Reply{Id: 1}}})
	if ws.WriteMessage(websocket.BinaryMessage, b) == nil {
		until(ws, func(*parleyv1.Frame) bool { return false })
	}
}

// recvAll receives a stream's items until it ends, and returns how many
// came and how it ended.
func recvAll(ss *parley.ServerStreamClient[e2ev1.EchoResponse]) (int, error) {
	for n := 0; ; n++ {
		if _, err := ss.Recv(); err != nil {
			return n, err
		}
	}
}

// TestReceiverEnforcesByteCredit: a server that set a byte window of its
// own and sends items beyond the client's (three 60 KB items against
// 100,000 bytes, none read: the third comes with the credit used up) has
// the stream ended resource_exhausted, and told so with a Cancel; the
// items within credit are still read. A server that set no byte window, a
// peer from before byte credit, is held to items only.
func TestReceiverEnforcesByteCredit(t *testing.T) {
	sizes := []int{60_000, 60_000, 60_000}
	canceled := make(chan struct{})
	url, _ := itemsServer(t, 1<<20, sizes, func(ws *websocket.Conn) {
		if until(ws, func(f *parleyv1.Frame) bool { return f.GetCancel() != nil }) != nil {
			close(canceled)
		}
	})
	conn := dialT(t, url, parley.WithStreamWindowBytes(100_000))
	ss, err := parley.CallServerStream[e2ev1.EchoResponse](context.Background(), conn, countSpec, &e2ev1.SleepRequest{})
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-canceled:
	case <-time.After(10 * time.Second):
		t.Fatal("no Cancel from the client for items beyond its byte credit")
	}
	n, err := recvAll(ss)
	if parley.CodeOf(err) != parley.CodeResourceExhausted || !strings.Contains(err.Error(), "byte credit") || n != 2 {
		t.Fatalf("%d items, then %v; want the 2 within credit, then resource_exhausted beyond the byte credit", n, err)
	}

	url, _ = itemsServer(t, 0, sizes, reply)
	conn = dialT(t, url, parley.WithStreamWindowBytes(100_000))
	ss, err = parley.CallServerStream[e2ev1.EchoResponse](context.Background(), conn, countSpec, &e2ev1.SleepRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if n, err := recvAll(ss); !errors.Is(err, io.EOF) || n != 3 {
		t.Fatalf("from a server without a byte window: %d items, then %v; want 3, then io.EOF", n, err)
	}
}

// TestCreditGrantsTheBytesConsumed: a client with a byte window of 100,000
// grants credit once it has read half of it, 2 items of 30 KB here (the
// item window, 64, would wait for 32), and the grant carries exactly the
// two item frames' lengths. (The stream buffer bound, 300,000 bytes, is
// too small for either window to grow.)
func TestCreditGrantsTheBytesConsumed(t *testing.T) {
	credit := make(chan *parleyv1.Credit, 1)
	url, frames := itemsServer(t, 1<<20, []int{30_000, 30_000, 30_000}, func(ws *websocket.Conn) {
		f := until(ws, func(f *parleyv1.Frame) bool { return f.GetCredit() != nil })
		credit <- f.GetCredit()
		reply(ws)
	})
	conn := dialT(t, url, parley.WithStreamWindowBytes(100_000), parley.WithStreamBufferBytes(300_000))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second) // fails rather than hangs without a Credit
	defer cancel()
	ss, err := parley.CallServerStream[e2ev1.EchoResponse](ctx, conn, countSpec, &e2ev1.SleepRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if n, err := recvAll(ss); !errors.Is(err, io.EOF) || n != 3 {
		t.Fatalf("%d items, then %v; want 3, then io.EOF", n, err)
	}
	c := <-credit
	if c.GetItems() != 2 || c.GetBytes() != uint32(frames[0]+frames[1]) {
		t.Fatalf("Credit{items: %d, bytes: %d}, want {2, %d}", c.GetItems(), c.GetBytes(), frames[0]+frames[1])
	}
}

// TestPausedReaderOfLargeItemsKeepsItsStream: a server streams ten 600 KB
// items to a client that reads nothing until the handler is in its second
// Send (and a unary call has made the round trip), with a stream buffer
// bound of 2 MiB. Windows counting items alone let the server send on,
// four items past the bound, and the client's own bound ended the stream
// resource_exhausted though the server kept to its credit; with byte
// credit the server waits, and every item arrives. Both encodings.
func TestPausedReaderOfLargeItemsKeepsItsStream(t *testing.T) {
	entered := make(chan int, 100)
	srv := parley.NewServer()
	srv.Register(parley.NewServerStreamMethod(countSpec, func(ctx context.Context, req *e2ev1.SleepRequest, s *parley.ServerStream[e2ev1.EchoResponse]) error {
		text := strings.Repeat("x", 600_000)
		for i := range int(req.GetMs()) {
			entered <- i
			if err := s.Send(&e2ev1.EchoResponse{Text: text}); err != nil {
				return err
			}
		}
		return nil
	}))
	srv.Register(parley.NewUnaryMethod(unarySpec, func(ctx context.Context, r *e2ev1.EchoRequest) (*e2ev1.EchoResponse, error) {
		return &e2ev1.EchoResponse{Text: r.GetText()}, nil
	}))
	url := serveWS(t, srv)
	for _, opts := range [][]parley.ClientOption{nil, {parley.WithJSON()}} {
		conn := dialT(t, url, append(opts, parley.WithStreamBufferBytes(2<<20))...)
		ss, err := parley.CallServerStream[e2ev1.EchoResponse](context.Background(), conn, countSpec, &e2ev1.SleepRequest{Ms: 10})
		if err != nil {
			t.Fatal(err)
		}
		for i := <-entered; i < 1; i = <-entered {
		}
		if err := conn.Invoke(context.Background(), unarySpec, &e2ev1.EchoRequest{Text: "ping"}, new(e2ev1.EchoResponse)); err != nil {
			t.Fatal(err)
		}
		if n, err := recvAll(ss); !errors.Is(err, io.EOF) || n != 10 {
			t.Fatalf("%d items, then %v; want 10, then io.EOF", n, err)
		}
		for len(entered) > 0 {
			<-entered
		}
	}
}
