package parley

import (
	"context"
	"fmt"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/parleyrpc/parley/internal/faultproxy"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

var postedSpec = &MethodSpec{Procedure: "/test.Events/Posted"}

// resumeRig is a server behind a fault proxy and a client whose events
// it records; beforeAttach runs once, between the handshake of the
// client's next reconnect (see reopened) and its socket attaching to the
// session.
type resumeRig struct {
	mu     sync.Mutex
	holdID string // the session whose next attach runs beforeAttach
	srv    *Server
	proxy  *faultproxy.Proxy
	conn   *Conn
	events chan string
	states chan ConnState
}

func newResumeRig(t *testing.T, opts []ServerOption, beforeAttach func(srv *Server, sessionID string)) *resumeRig {
	r := &resumeRig{srv: NewServer(opts...), events: make(chan string, 100), states: make(chan ConnState, 100)}
	testHookBeforeAttach = func(id string) {
		r.mu.Lock()
		run := id == r.holdID
		if run {
			r.holdID = ""
		}
		r.mu.Unlock()
		if run {
			beforeAttach(r.srv, id)
		}
	}
	hs := httptest.NewServer(r.srv)
	t.Cleanup(func() {
		hs.CloseClientConnections()
		hs.Close()
		_ = r.srv.Shutdown(context.Background())
		testHookBeforeAttach = nil
	})
	var err error
	if r.proxy, err = faultproxy.New(strings.TrimPrefix(hs.URL, "http://")); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = r.proxy.Close() })
	conn, err := Dial(context.Background(), "ws://"+r.proxy.Addr(), WithReconnect(Backoff{Initial: time.Millisecond, Max: 10 * time.Millisecond, Multiplier: 2}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	conn.Register(NewEventMethod(postedSpec, func(_ context.Context, v *wrapperspb.StringValue) { r.events <- v.GetValue() }))
	conn.OnStateChange(func(s ConnState) { r.states <- s })
	r.conn = conn
	// The socket is attached once an event reaches it: only then may the
	// hook wait for a reconnect.
	r.publish(t, "ready")
	r.eventsUntil(t, "ready")
	return r
}

func (r *resumeRig) publish(t *testing.T, text string) {
	t.Helper()
	if err := r.srv.Publish(context.Background(), ToAll(), postedSpec, wrapperspb.String(text)); err != nil {
		t.Error(err)
	}
}

// reopened drops the socket and returns the state the client reopens with.
func (r *resumeRig) reopened(t *testing.T) ConnState {
	t.Helper()
	r.mu.Lock()
	r.holdID = r.conn.SessionID()
	r.mu.Unlock()
	r.proxy.Drop()
	timeout := time.After(10 * time.Second)
	for {
		select {
		case s := <-r.states:
			if s.Status == StatusOpen && s.Reconnected {
				return s
			}
		case <-timeout:
			t.Fatal("the client did not reopen")
		}
	}
}

// eventsUntil returns the events received up to and including last.
func (r *resumeRig) eventsUntil(t *testing.T, last string) []string {
	t.Helper()
	var seen []string
	for {
		select {
		case v := <-r.events:
			seen = append(seen, v)
			if v == last {
				return seen
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("event %q never arrived; got %v", last, seen)
		}
	}
}

// TestResumeKeepsEventsPublishedBeforeAttach: a client resumes having
// missed nothing, and more events than the session's history holds are
// published between its handshake (which tells it resumed) and its socket
// attaching to the session (which replays what it missed). It must get
// them all. Found by a trial chat app, whose clients under a steady
// publisher and a flapping network, told they resumed, missed events:
// the handshake checked the history, and events published before the
// attach pushed missed ones out of it. A session that keeps no history
// (WithResume(window, 0)) keeps them too, until the socket attaches; it
// used to index its empty history and panic.
func TestResumeKeepsEventsPublishedBeforeAttach(t *testing.T) {
	for _, history := range []int{4, 0} {
		t.Run(fmt.Sprintf("history=%d", history), func(t *testing.T) {
			published := make(chan struct{})
			r := newResumeRig(t, []ServerOption{WithResume(time.Minute, history)}, func(srv *Server, _ string) {
				defer close(published)
				for i := 1; i <= 8; i++ {
					if err := srv.Publish(context.Background(), ToAll(), postedSpec, wrapperspb.String(strconv.Itoa(i))); err != nil {
						t.Error(err)
					}
				}
			})
			if s := r.reopened(t); !s.Resumed {
				t.Fatalf("not resumed: %+v", s)
			}
			<-published
			r.publish(t, "end")
			got := r.eventsUntil(t, "end")
			if want := []string{"1", "2", "3", "4", "5", "6", "7", "8", "end"}; !slices.Equal(got, want) {
				t.Fatalf("a client told it resumed got %v, want %v", got, want)
			}

			// Away again while an event is published: the events kept for
			// the attach must not pass for a history of the later ones.
			r.proxy.Refuse(true)
			r.proxy.Drop()
			r.publish(t, "gap")
			r.proxy.Refuse(false)
			timeout := time.After(10 * time.Second)
			for {
				select {
				case s := <-r.states:
					if s.Status != StatusOpen || !s.Reconnected {
						continue
					}
					if s.Resumed {
						r.eventsUntil(t, "gap") // told it resumed: it must get what it missed
					}
					return
				case <-timeout:
					t.Fatal("the client did not reopen")
				}
			}
		})
	}
}

// TestNewSessionKeepsEventsPublishedBeforeAttach: a new session is in the
// hub (rooms, users, everyone) from its handshake, before its socket
// attaches; an event published in between reaches the client, told it is
// connected, even when the server keeps no event history.
func TestNewSessionKeepsEventsPublishedBeforeAttach(t *testing.T) {
	for _, opts := range [][]ServerOption{{WithResume(time.Minute, 0)}, {WithResume(0, 0)}, nil} {
		srv := NewServer(opts...)
		registered, published := make(chan struct{}), make(chan struct{})
		testHookBeforeAttach = func(string) {
			if err := srv.Publish(context.Background(), ToAll(), postedSpec, wrapperspb.String("early")); err != nil {
				t.Error(err)
			}
			close(published)
			<-registered // the client can take events now
		}
		hs := httptest.NewServer(srv)
		conn, err := Dial(context.Background(), "ws"+strings.TrimPrefix(hs.URL, "http"))
		if err != nil {
			t.Fatal(err)
		}
		events := make(chan string, 10)
		conn.Register(NewEventMethod(postedSpec, func(_ context.Context, v *wrapperspb.StringValue) { events <- v.GetValue() }))
		close(registered)
		<-published // Dial returned at Welcome, perhaps before the hook ran
		if err := srv.Publish(context.Background(), ToAll(), postedSpec, wrapperspb.String("after")); err != nil {
			t.Fatal(err)
		}
		var got []string
		for len(got) == 0 || got[len(got)-1] != "after" {
			select {
			case v := <-events:
				got = append(got, v)
			case <-time.After(10 * time.Second):
				t.Fatalf("got %v", got)
			}
		}
		if !slices.Equal(got, []string{"early", "after"}) {
			t.Fatalf("%d options: got %v, want [early after]", len(opts), got)
		}
		_ = conn.Close()
		hs.CloseClientConnections()
		hs.Close()
		_ = srv.Shutdown(context.Background())
		testHookBeforeAttach = nil
	}
}

// TestResumeOfASessionEndedBeforeAttach: the session a client resumes is
// closed by the server (Peer.Close) between the handshake that told the
// client it resumed and its socket attaching. The client must not stay on
// the dead session (no rooms, no events): its socket is closed, and it
// comes back to a new session, told it did not resume.
func TestResumeOfASessionEndedBeforeAttach(t *testing.T) {
	r := newResumeRig(t, nil, func(srv *Server, id string) {
		if p, ok := srv.Peer(id); ok {
			p.Close("bye")
		}
	})
	if s := r.reopened(t); !s.Resumed {
		t.Fatalf("not resumed: %+v", s)
	}
	timeout := time.After(10 * time.Second)
	for open := false; !open; {
		select {
		case s := <-r.states:
			open = s.Status == StatusOpen && !s.Resumed
		case <-timeout:
			t.Fatal("the client stayed on the ended session")
		}
	}
	r.publish(t, "after")
	r.eventsUntil(t, "after")
}

// TestEventHistoryHoldsOnlyWhatAResumeCanReplay: a resume replays the
// events its client missed into the socket's send queue, and is refused
// when they would not fit (canResumeLocked). So a session keeps no more
// history than the send queue holds, whatever its count bound: here 3 of
// the 50 events of about 1 KB, with a 4 KiB queue and the default 512.
// Before, it kept all 50 (up to 512 events of up to 4 MiB each).
func TestEventHistoryHoldsOnlyWhatAResumeCanReplay(t *testing.T) {
	srv := NewServer(WithSendQueueBytes(4096))
	s := newSession(srv, nil)
	payload := make([]byte, 1000)
	for range 50 {
		s.deliverEvent(&eventData{method: postedSpec.Procedure, payload: payload})
	}
	s.mu.Lock()
	n, bytes := len(s.events), s.eventBytes
	s.mu.Unlock()
	if n != 3 || bytes > 4096 {
		t.Fatalf("the history holds %d events, %d bytes; want 3, at most 4096", n, bytes)
	}
	if !s.canResume(s.token, 47) {
		t.Error("a client that missed the last 3 events cannot resume")
	}
	if s.canResume(s.token, 46) {
		t.Error("a client that missed 4 events, more than its send queue holds, can resume")
	}
}
