package main

import (
	"bytes"
	"context"
	"io"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	chatv1 "github.com/parleyrpc/parley/examples/chat/gen/chat/v1"
	"github.com/parleyrpc/parley/examples/chat/gen/chat/v1/chatv1parley"
	"github.com/parleyrpc/parley/examples/chat/server"
	"github.com/parleyrpc/parley/runtime/parley"
)

// syncBuffer is an io.Writer the test reads while the CLI writes.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func waitFor(t *testing.T, out *syncBuffer, want string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !strings.Contains(out.String(), want) {
		if time.Now().After(deadline) {
			t.Fatalf("output lacks %q:\n%s", want, out.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestCLI(t *testing.T) {
	chat := server.New()
	hs := httptest.NewServer(chat.Handler(nil))
	defer hs.Close()
	url := "ws" + strings.TrimPrefix(hs.URL, "http") + "/parley"
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	// bob, a plain Go client, is in the lobby first.
	conn, err := parley.Dial(ctx, url, parley.WithHelloMetadata(map[string]string{"authorization": "Bearer dev-bob"}))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	bob := chatv1parley.NewChatServiceClient(conn)
	if _, err := bob.Join(ctx, &chatv1.JoinRequest{Room: "lobby"}); err != nil {
		t.Fatal(err)
	}

	in, typed := io.Pipe()
	out := &syncBuffer{}
	done := make(chan error, 1)
	go func() { done <- run(ctx, []string{"-url", url, "-user", "ada", "-stay"}, in, out) }()

	waitFor(t, out, "* joined lobby: ada (online), bob (online)")
	io.WriteString(typed, "hello from the terminal\n")
	waitFor(t, out, "[lobby] ada: hello from the terminal")
	if _, err := bob.Post(ctx, &chatv1.PostRequest{Room: "lobby", Text: "hi ada"}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, out, "[lobby] bob: hi ada")

	// -stay declines a kick.
	res, err := bob.Kick(ctx, &chatv1.KickRequest{Room: "lobby", User: "ada", Reason: "testing"})
	if err != nil {
		t.Fatal(err)
	}
	if res.GetRemoved() || res.GetMessage() != "ada would rather stay" {
		t.Fatalf("kick: %v", res)
	}
	waitFor(t, out, "* bob asked you to leave lobby (testing); staying (-stay)")

	io.WriteString(typed, "/rooms\n")
	waitFor(t, out, "* lobby: 2 members, 2 online")
	io.WriteString(typed, "/nonsense\n")
	waitFor(t, out, "! unknown command /nonsense")
	io.WriteString(typed, "/quit\n")
	if err := <-done; err != nil {
		t.Fatalf("run: %v", err)
	}
}
