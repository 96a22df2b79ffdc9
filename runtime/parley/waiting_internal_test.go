package parley

import (
	"context"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	parleyv1 "github.com/parleyrpc/parley/gen/parley/v1"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// waitingServer serves srv on loopback and returns its ws:// URL.
func waitingServer(t *testing.T, srv *Server) string {
	t.Helper()
	hs := httptest.NewServer(srv)
	t.Cleanup(func() {
		hs.CloseClientConnections()
		hs.Close()
		_ = srv.Shutdown(context.Background())
	})
	return "ws" + strings.TrimPrefix(hs.URL, "http")
}

// helloRaw opens a socket, sends hello and returns the socket and the
// server's Welcome.
func helloRaw(t *testing.T, url string, hello *parleyv1.Hello) (*websocket.Conn, *parleyv1.Welcome) {
	t.Helper()
	ws, _, err := (&websocket.Dialer{Subprotocols: []string{SubprotocolProto}}).Dial(url, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ws.Close() })
	b, _ := proto.Marshal(&parleyv1.Frame{Kind: &parleyv1.Frame_Hello{Hello: hello}})
	if err := ws.WriteMessage(websocket.BinaryMessage, b); err != nil {
		t.Fatal(err)
	}
	f := readRaw(t, ws)
	if f.GetWelcome() == nil {
		t.Fatalf("got %v, want a welcome", f)
	}
	return ws, f.GetWelcome()
}

func readRaw(t *testing.T, ws *websocket.Conn) *parleyv1.Frame {
	t.Helper()
	_ = ws.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, data, err := ws.ReadMessage()
	if err != nil {
		t.Fatal(err)
	}
	f := new(parleyv1.Frame)
	if err := proto.Unmarshal(data, f); err != nil {
		t.Fatal(err)
	}
	return f
}

// eventually waits up to 10 s for cond, which the server reaches by itself
// (it notices a dropped socket, ends a session on a goroutine).
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); time.Sleep(2 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("not within 10s: %s", what)
		}
	}
}

// dropWaiting opens a session and drops its socket without a close
// frame, so that the session waits to be resumed; it returns once the
// server counts it among the sessions waiting.
func dropWaiting(t *testing.T, srv *Server, url string) *parleyv1.Welcome {
	t.Helper()
	ws, w := helloRaw(t, url, &parleyv1.Hello{})
	sn := srv.hub.session(w.GetSessionId())
	_ = ws.UnderlyingConn().Close()
	eventually(t, "the dropped session waits", func() bool {
		sn.mu.Lock()
		defer sn.mu.Unlock()
		return sn.waiting
	})
	return w
}

func alive(srv *Server, id string) bool {
	_, ok := srv.Peer(id)
	return ok
}

// TestWaitingSessionsAreBoundedInMemory: sessions outlive their sockets
// for the resume window, so what they hold while they wait must be
// bounded all together (WithResumeMemory), not only per session. Past the
// bound, the sessions that have waited longest end, and their clients come
// back to new sessions; the others still resume, their events intact.
func TestWaitingSessionsAreBoundedInMemory(t *testing.T) {
	const limit = 70_000
	srv := NewServer(WithResumeMemory(limit))
	url := waitingServer(t, srv)

	var welcomes []*parleyv1.Welcome
	for range 5 {
		welcomes = append(welcomes, dropWaiting(t, srv, url))
	}
	if n, held := srv.waiting.count(); n != 5 || held != 5*sessionOverhead {
		t.Fatalf("5 sessions holding nothing wait, counted as %d sessions holding %d bytes; want 5 and %d", n, held, 5*sessionOverhead)
	}

	// Each session keeps the event for its client: about 22 KB each, 110
	// KB for the five, more than the limit.
	payload := strings.Repeat("x", 20_000)
	if err := srv.Publish(context.Background(), ToAll(), postedSpec, wrapperspb.String(payload)); err != nil {
		t.Fatal(err)
	}
	for _, w := range welcomes[:2] {
		eventually(t, "the sessions that waited longest end", func() bool { return !alive(srv, w.GetSessionId()) })
	}
	n, held := srv.waiting.count()
	if n != 3 || held > limit {
		t.Fatalf("%d sessions holding %d bytes wait; want 3 within %d", n, held, limit)
	}
	for _, w := range welcomes[2:] {
		if !alive(srv, w.GetSessionId()) {
			t.Fatalf("session %s ended; only the two that waited longest had to", w.GetSessionId())
		}
	}

	for i, w := range welcomes {
		ws, again := helloRaw(t, url, &parleyv1.Hello{SessionId: w.GetSessionId(), ResumeToken: w.GetResumeToken(), Offsets: map[string]uint64{sessionTopic: 0}})
		if want := i >= 2; again.GetResumed() != want {
			t.Fatalf("session %d: resumed %v, want %v", i, again.GetResumed(), want)
		}
		if again.GetResumed() {
			if ev := readRaw(t, ws).GetEvent(); ev.GetOffset() != 1 || len(ev.GetPayload()) < len(payload) {
				t.Fatalf("session %d: replay %v, want the event at offset 1", i, ev)
			}
		}
	}
	eventually(t, "attached sessions do not count", func() bool { n, held := srv.waiting.count(); return n == 0 && held == 0 })
}

// TestDroppingInALoopHoldsNoMoreThanTheBound: a client that opens sessions
// and drops their sockets in a loop leaves no more sessions waiting than
// the bound holds, whatever the resume window; the newest wait.
func TestDroppingInALoopHoldsNoMoreThanTheBound(t *testing.T) {
	srv := NewServer(WithResumeMemory(10 * sessionOverhead))
	url := waitingServer(t, srv)
	var welcomes []*parleyv1.Welcome
	for range 30 {
		welcomes = append(welcomes, dropWaiting(t, srv, url))
	}
	if n, _ := srv.waiting.count(); n != 10 {
		t.Fatalf("%d sessions wait, want the 10 the bound holds", n)
	}
	for i, w := range welcomes {
		if i < 20 {
			eventually(t, "an old session ends", func() bool { return !alive(srv, w.GetSessionId()) })
		} else if !alive(srv, w.GetSessionId()) {
			t.Fatalf("session %d of 30 ended; only the 20 oldest had to", i)
		}
	}
}

// TestSessionTakenOutToEndStaysOut: a session taken out of line to be
// ended, which keeps an event before its end runs, must not count itself
// back in at the end of the line, where it would push out the next
// session in its place (three sessions ended where two had to).
func TestSessionTakenOutToEndStaysOut(t *testing.T) {
	srv := NewServer()
	w := newWaitingSessions(2*sessionOverhead + 100)
	a, b, c := newSession(srv, nil), newSession(srv, nil), newSession(srv, nil)
	w.put(a, 0)
	w.put(b, 0)
	w.put(c, 0) // over: a, waiting longest, is taken out
	w.put(a, 50)
	if n, held := w.count(); n != 2 || held != 2*sessionOverhead {
		t.Fatalf("after a, taken out, kept more: %d sessions holding %d bytes; want b and c, %d", n, held, 2*sessionOverhead)
	}
	w.remove(a) // a ended
	w.put(a, 0) // and, say, a socket took it up and dropped it again
	if n, _ := w.count(); n != 2 {
		t.Fatalf("%d sessions wait; want 2", n)
	}
}
