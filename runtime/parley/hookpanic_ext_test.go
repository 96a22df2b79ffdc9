package parley_test

import (
	"context"
	"testing"
	"time"

	"github.com/parleyrpc/parley/runtime/parley"
)

// A presence hook that panics is the application's bug, like a handler
// that panics: it must not take the server down, nor stop the hooks after
// it.
func TestPresenceHookPanicDoesNotCrashTheServer(t *testing.T) {
	offline := make(chan string, 4)
	s := newEventServer(t,
		parley.WithAuthenticate(func(_ context.Context, r *parley.AuthRequest) (*parley.Principal, error) {
			return &parley.Principal{UserID: r.Metadata["user"]}, nil
		}),
		parley.WithPresenceHooks(func(user string) {
			if user == "buggy" {
				panic("online hook bug")
			}
		}, func(user string) {
			offline <- user
		}))
	ctx := context.Background()
	buggy, err := parley.Dial(ctx, s.url, parley.WithHelloMetadata(map[string]string{"user": "buggy"}))
	if err != nil {
		t.Fatal(err)
	}
	fine := dialT(t, s.url, parley.WithHelloMetadata(map[string]string{"user": "fine"}))
	if err := buggy.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case u := <-offline:
		if u != "buggy" {
			t.Fatalf("offline hook for %q, want buggy", u)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the offline hook never ran after the online hook panicked")
	}
	if on, err := s.srv.IsOnline(ctx, "fine"); err != nil || !on {
		t.Fatalf("IsOnline(fine) = %v, %v", on, err)
	}
	_ = fine
}

// Likewise a state watcher that panics on a client: the client goes on,
// and later states still reach the watchers.
func TestStateWatcherPanicDoesNotCrashTheClient(t *testing.T) {
	s := newEventServer(t)
	conn, err := parley.Dial(context.Background(), s.url)
	if err != nil {
		t.Fatal(err)
	}
	conn.OnStateChange(func(parley.ConnState) { panic("state watcher bug") })
	closed := make(chan struct{})
	conn.OnStateChange(func(st parley.ConnState) {
		if st.Status == parley.StatusClosed {
			close(closed)
		}
	})
	if err := conn.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-closed:
	case <-time.After(5 * time.Second):
		t.Fatal("the second watcher never saw closed")
	}
}
