package server_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	chatv1 "github.com/parleyrpc/parley/examples/chat/gen/chat/v1"
	"github.com/parleyrpc/parley/examples/chat/gen/chat/v1/chatv1parley"
	"github.com/parleyrpc/parley/examples/chat/server"
	"github.com/parleyrpc/parley/runtime/parley"
	"google.golang.org/protobuf/proto"
)

// client is one signed-in Go client recording every event it gets.
type client struct {
	chatv1parley.ChatServiceClient
	conn   *parley.Conn
	user   string
	events chan proto.Message
	// confirm answers ConfirmLeave; nil accepts.
	confirm func(*chatv1.ConfirmLeaveRequest) *chatv1.ConfirmLeaveResponse
}

func (c *client) MessagePosted(_ context.Context, m *chatv1.ChatMessage)             { c.events <- m }
func (c *client) UserJoined(_ context.Context, ev *chatv1.UserJoinedEvent)           { c.events <- ev }
func (c *client) UserLeft(_ context.Context, ev *chatv1.UserLeftEvent)               { c.events <- ev }
func (c *client) Typing(_ context.Context, ev *chatv1.TypingEvent)                   { c.events <- ev }
func (c *client) PresenceChanged(_ context.Context, ev *chatv1.PresenceChangedEvent) { c.events <- ev }
func (c *client) ConfirmLeave(_ context.Context, req *chatv1.ConfirmLeaveRequest) (*chatv1.ConfirmLeaveResponse, error) {
	c.events <- req
	if c.confirm != nil {
		return c.confirm(req), nil
	}
	return &chatv1.ConfirmLeaveResponse{Accept: true}, nil
}

func startServer(t *testing.T) string {
	t.Helper()
	chat := server.New()
	hs := httptest.NewServer(chat.Handler(nil))
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = chat.Parley().Shutdown(ctx)
		hs.Close()
	})
	return "ws" + strings.TrimPrefix(hs.URL, "http") + "/parley"
}

func dial(t *testing.T, url, user string, handle bool) *client {
	t.Helper()
	conn, err := parley.Dial(context.Background(), url, parley.WithHelloMetadata(map[string]string{"authorization": "Bearer dev-" + user}))
	if err != nil {
		t.Fatalf("dial as %s: %v", user, err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	c := &client{ChatServiceClient: chatv1parley.NewChatServiceClient(conn), conn: conn, user: user, events: make(chan proto.Message, 256)}
	if handle {
		chatv1parley.RegisterChatEventsHandler(conn, c)
	}
	return c
}

// expect waits for an event of type T for which match holds, skipping
// others.
func expect[T proto.Message](t *testing.T, c *client, what string, match func(T) bool) T {
	t.Helper()
	timeout := time.After(5 * time.Second)
	for {
		select {
		case m := <-c.events:
			if ev, ok := m.(T); ok && match(ev) {
				return ev
			}
		case <-timeout:
			t.Fatalf("%s: no %s within 5s", c.user, what)
		}
	}
}

// expectNone fails if an event of type T matching arrives within d.
func expectNone[T proto.Message](t *testing.T, c *client, what string, d time.Duration, match func(T) bool) {
	t.Helper()
	timeout := time.After(d)
	for {
		select {
		case m := <-c.events:
			if ev, ok := m.(T); ok && match(ev) {
				t.Fatalf("%s: unexpected %s: %v", c.user, what, ev)
			}
		case <-timeout:
			return
		}
	}
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestAuthRefused(t *testing.T) {
	url := startServer(t)
	for _, md := range []map[string]string{
		nil,
		{"authorization": "Bearer prod-ada"},
		{"authorization": "dev-ada"},
		{"authorization": "Bearer dev-"},
		{"authorization": "Bearer dev-a b"},
	} {
		_, err := parley.Dial(context.Background(), url, parley.WithHelloMetadata(md))
		if parley.CodeOf(err) != parley.CodeUnauthenticated {
			t.Errorf("metadata %v: got %v, want unauthenticated", md, err)
		}
	}
	// A non-browser client may send the token as a header instead.
	conn, err := parley.Dial(context.Background(), url, parley.WithHTTPHeader(http.Header{"Authorization": {"Bearer dev-ada"}}))
	if err != nil {
		t.Fatalf("token in a header: %v", err)
	}
	_ = conn.Close()
}

func TestTwoClientsTalk(t *testing.T) {
	url := startServer(t)
	ctx := ctxT(t)
	ada := dial(t, url, "ada", true)
	if _, err := ada.Post(ctx, &chatv1.PostRequest{Room: "lobby", Text: "anyone?"}); parley.CodeOf(err) != parley.CodeFailedPrecondition {
		t.Fatalf("post before join: got %v, want failed_precondition", err)
	}
	if _, err := ada.Join(ctx, &chatv1.JoinRequest{Room: "Not A Room"}); parley.CodeOf(err) != parley.CodeInvalidArgument {
		t.Fatalf("join with a bad name: got %v, want invalid_argument", err)
	}
	res, err := ada.Join(ctx, &chatv1.JoinRequest{Room: "lobby"})
	if err != nil {
		t.Fatal(err)
	}
	if got := fmt.Sprint(res.GetMembers()); len(res.GetMembers()) != 1 || res.GetMembers()[0].GetUser() != "ada" || !res.GetMembers()[0].GetOnline() {
		t.Fatalf("members after ada joined: %s", got)
	}

	bob := dial(t, url, "bob", true)
	expect(t, ada, "bob online", func(ev *chatv1.PresenceChangedEvent) bool { return ev.GetUser() == "bob" && ev.GetOnline() })
	res, err = bob.Join(ctx, &chatv1.JoinRequest{Room: "lobby"})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.GetMembers()) != 2 || res.GetMembers()[0].GetUser() != "ada" || res.GetMembers()[1].GetUser() != "bob" {
		t.Fatalf("members after bob joined: %v", res.GetMembers())
	}
	expect(t, ada, "bob joined", func(ev *chatv1.UserJoinedEvent) bool { return ev.GetUser() == "bob" && ev.GetRoom() == "lobby" })

	// Each sees the other's message, and their own.
	if _, err := ada.Post(ctx, &chatv1.PostRequest{Room: "lobby", Text: "hi bob"}); err != nil {
		t.Fatal(err)
	}
	for _, c := range []*client{ada, bob} {
		expect(t, c, "ada's message", func(m *chatv1.ChatMessage) bool { return m.GetUser() == "ada" && m.GetText() == "hi bob" })
	}
	if _, err := bob.Post(ctx, &chatv1.PostRequest{Room: "lobby", Text: "hi ada"}); err != nil {
		t.Fatal(err)
	}
	for _, c := range []*client{ada, bob} {
		expect(t, c, "bob's message", func(m *chatv1.ChatMessage) bool { return m.GetUser() == "bob" && m.GetText() == "hi ada" })
	}

	// Post is idempotent by client_message_id: a retry posts nothing new.
	first, err := ada.Post(ctx, &chatv1.PostRequest{Room: "lobby", Text: "once", ClientMessageId: "m1"})
	if err != nil {
		t.Fatal(err)
	}
	again, err := ada.Post(ctx, &chatv1.PostRequest{Room: "lobby", Text: "once", ClientMessageId: "m1"})
	if err != nil {
		t.Fatal(err)
	}
	if first.GetMessage().GetId() != again.GetMessage().GetId() {
		t.Fatalf("retried post got id %d, first %d", again.GetMessage().GetId(), first.GetMessage().GetId())
	}
	expect(t, bob, "the message", func(m *chatv1.ChatMessage) bool { return m.GetText() == "once" })
	expectNone(t, bob, "a second copy", 200*time.Millisecond, func(m *chatv1.ChatMessage) bool { return m.GetText() == "once" })

	// Another room is isolated.
	carol := dial(t, url, "carol", true)
	if _, err := carol.Join(ctx, &chatv1.JoinRequest{Room: "random"}); err != nil {
		t.Fatal(err)
	}
	if _, err := carol.Post(ctx, &chatv1.PostRequest{Room: "random", Text: "elsewhere"}); err != nil {
		t.Fatal(err)
	}
	expectNone(t, ada, "a message from another room", 200*time.Millisecond, func(m *chatv1.ChatMessage) bool { return m.GetRoom() != "lobby" })

	rooms, err := ada.ListRooms(ctx, &chatv1.ListRoomsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if got := fmt.Sprint(rooms.GetRooms()); len(rooms.GetRooms()) != 2 ||
		rooms.GetRooms()[0].GetName() != "lobby" || rooms.GetRooms()[0].GetMembers() != 2 || rooms.GetRooms()[0].GetOnline() != 2 || !rooms.GetRooms()[0].GetJoined() ||
		rooms.GetRooms()[1].GetName() != "random" || rooms.GetRooms()[1].GetJoined() {
		t.Fatalf("rooms: %s", got)
	}

	// A newcomer gets the history.
	res, err = carol.Join(ctx, &chatv1.JoinRequest{Room: "lobby"})
	if err != nil {
		t.Fatal(err)
	}
	if h := res.GetHistory(); len(h) != 3 || h[0].GetText() != "hi bob" || h[2].GetText() != "once" {
		t.Fatalf("history: %v", h)
	}

	// Presence: bob goes offline, stays a member, and everyone hears it.
	_ = bob.conn.Close()
	expect(t, ada, "bob offline", func(ev *chatv1.PresenceChangedEvent) bool { return ev.GetUser() == "bob" && !ev.GetOnline() })
	res, err = carol.Join(ctx, &chatv1.JoinRequest{Room: "lobby"})
	if err != nil {
		t.Fatal(err)
	}
	if got := fmt.Sprint(res.GetMembers()); !strings.Contains(got, `user:"bob"`) || strings.Contains(got, `user:"bob" online:true`) {
		t.Fatalf("members with bob offline: %s", got)
	}

	// Leave: the room hears it, and the leaver gets no more messages.
	if _, err := ada.Leave(ctx, &chatv1.LeaveRequest{Room: "lobby"}); err != nil {
		t.Fatal(err)
	}
	expect(t, carol, "ada left", func(ev *chatv1.UserLeftEvent) bool { return ev.GetUser() == "ada" && ev.GetReason() == "left" })
	if _, err := carol.Post(ctx, &chatv1.PostRequest{Room: "lobby", Text: "bye ada"}); err != nil {
		t.Fatal(err)
	}
	expectNone(t, ada, "a message after leaving", 200*time.Millisecond, func(m *chatv1.ChatMessage) bool { return m.GetText() == "bye ada" })
	if _, err := ada.Leave(ctx, &chatv1.LeaveRequest{Room: "lobby"}); parley.CodeOf(err) != parley.CodeNotFound {
		t.Fatalf("leaving twice: got %v, want not_found", err)
	}
}

func TestKickAsksFirst(t *testing.T) {
	url := startServer(t)
	ctx := ctxT(t)
	ada := dial(t, url, "ada", true)
	bob := dial(t, url, "bob", true)
	bobPhone := dial(t, url, "bob", true) // a second device of the same user
	for _, c := range []*client{ada, bob, bobPhone} {
		if _, err := c.Join(ctx, &chatv1.JoinRequest{Room: "lobby"}); err != nil {
			t.Fatal(err)
		}
	}

	// One of bob's devices declines: bob stays.
	bobPhone.confirm = func(*chatv1.ConfirmLeaveRequest) *chatv1.ConfirmLeaveResponse {
		return &chatv1.ConfirmLeaveResponse{Accept: false, Message: "busy"}
	}
	res, err := ada.Kick(ctx, &chatv1.KickRequest{Room: "lobby", User: "bob", Reason: "spam"})
	if err != nil {
		t.Fatal(err)
	}
	if res.GetRemoved() || res.GetMessage() != "busy" {
		t.Fatalf("kick declined: got %v", res)
	}
	// (bob's other device may not have been asked: the first refusal
	// cancels the questions still pending.)
	ask := expect(t, bobPhone, "ConfirmLeave", func(r *chatv1.ConfirmLeaveRequest) bool { return true })
	if ask.GetBy() != "ada" || ask.GetRoom() != "lobby" || ask.GetReason() != "spam" {
		t.Fatalf("ConfirmLeave: %v", ask)
	}

	// Both accept: bob is out, on both devices, and the room hears it.
	bobPhone.confirm = nil
	res, err = ada.Kick(ctx, &chatv1.KickRequest{Room: "lobby", User: "bob"})
	if err != nil {
		t.Fatal(err)
	}
	if !res.GetRemoved() {
		t.Fatalf("kick accepted: got %v", res)
	}
	for _, c := range []*client{bob, bobPhone} {
		expect(t, c, "ConfirmLeave", func(r *chatv1.ConfirmLeaveRequest) bool { return r.GetReason() == "" })
	}
	for _, c := range []*client{ada, bob, bobPhone} {
		expect(t, c, "bob kicked", func(ev *chatv1.UserLeftEvent) bool {
			return ev.GetUser() == "bob" && ev.GetReason() == "kicked" && ev.GetBy() == "ada"
		})
	}
	if _, err := bob.Post(ctx, &chatv1.PostRequest{Room: "lobby", Text: "still here?"}); parley.CodeOf(err) != parley.CodeFailedPrecondition {
		t.Fatalf("post after being kicked: got %v, want failed_precondition", err)
	}

	// A client without a ConfirmLeave handler answers unimplemented,
	// which does not object.
	dave := dial(t, url, "dave", false)
	if _, err := dave.Join(ctx, &chatv1.JoinRequest{Room: "lobby"}); err != nil {
		t.Fatal(err)
	}
	if res, err := ada.Kick(ctx, &chatv1.KickRequest{Room: "lobby", User: "dave"}); err != nil || !res.GetRemoved() {
		t.Fatalf("kick a client without a handler: %v, %v", res, err)
	}

	// Errors: not a member, yourself, offline.
	if _, err := ada.Kick(ctx, &chatv1.KickRequest{Room: "lobby", User: "zed"}); parley.CodeOf(err) != parley.CodeNotFound {
		t.Fatalf("kick a non-member: got %v", err)
	}
	if _, err := ada.Kick(ctx, &chatv1.KickRequest{Room: "lobby", User: "ada"}); parley.CodeOf(err) != parley.CodeInvalidArgument {
		t.Fatalf("kick yourself: got %v", err)
	}
	erin := dial(t, url, "erin", true)
	if _, err := erin.Join(ctx, &chatv1.JoinRequest{Room: "lobby"}); err != nil {
		t.Fatal(err)
	}
	_ = erin.conn.Close()
	expect(t, ada, "erin offline", func(ev *chatv1.PresenceChangedEvent) bool { return ev.GetUser() == "erin" && !ev.GetOnline() })
	if _, err := ada.Kick(ctx, &chatv1.KickRequest{Room: "lobby", User: "erin"}); parley.CodeOf(err) != parley.CodeFailedPrecondition {
		t.Fatalf("kick an offline user: got %v", err)
	}
}

func TestTyping(t *testing.T) {
	url := startServer(t)
	ctx := ctxT(t)
	ada := dial(t, url, "ada", true)
	bob := dial(t, url, "bob", true)
	for _, c := range []*client{ada, bob} {
		if _, err := c.Join(ctx, &chatv1.JoinRequest{Room: "lobby"}); err != nil {
			t.Fatal(err)
		}
	}
	adaStream, err := ada.TypingStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	bobStream, err := bob.TypingStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	recv := func(s *parley.BidiStreamClient[chatv1.TypingStreamRequest, chatv1.TypingStreamResponse], want string) {
		t.Helper()
		res, err := s.Recv()
		if err != nil {
			t.Fatalf("typing stream: %v", err)
		}
		if got := res.GetRoom() + ":" + strings.Join(res.GetUsers(), ","); got != want {
			t.Fatalf("typing stream: got %q, want %q", got, want)
		}
	}

	// Unary SetTyping: events to the others, updates on every stream.
	if _, err := bob.SetTyping(ctx, &chatv1.SetTypingRequest{Room: "lobby", Typing: true}); err != nil {
		t.Fatal(err)
	}
	expect(t, ada, "bob typing", func(ev *chatv1.TypingEvent) bool { return ev.GetUser() == "bob" && ev.GetTyping() })
	recv(adaStream, "lobby:bob")
	recv(bobStream, "lobby:bob")

	// The stream both ways: ada types, bob sees it on his stream.
	if err := adaStream.Send(&chatv1.TypingStreamRequest{Room: "lobby", Typing: true}); err != nil {
		t.Fatal(err)
	}
	recv(bobStream, "lobby:ada,bob")
	recv(adaStream, "lobby:ada,bob")
	expect(t, bob, "ada typing", func(ev *chatv1.TypingEvent) bool { return ev.GetUser() == "ada" && ev.GetTyping() })

	// Posting stops typing.
	if _, err := bob.Post(ctx, &chatv1.PostRequest{Room: "lobby", Text: "done"}); err != nil {
		t.Fatal(err)
	}
	recv(adaStream, "lobby:ada")
	recv(bobStream, "lobby:ada")

	// Closing ada's stream clears what it set.
	if err := adaStream.CloseSend(); err != nil {
		t.Fatal(err)
	}
	if _, err := adaStream.Recv(); !errors.Is(err, io.EOF) {
		t.Fatalf("typing stream after CloseSend: got %v, want io.EOF", err)
	}
	recv(bobStream, "lobby:")

	// A room the connection did not join ends the stream.
	if err := bobStream.Send(&chatv1.TypingStreamRequest{Room: "elsewhere", Typing: true}); err != nil {
		t.Fatal(err)
	}
	if _, err := bobStream.Recv(); parley.CodeOf(err) != parley.CodeFailedPrecondition {
		t.Fatalf("typing in a room not joined: got %v, want failed_precondition", err)
	}
}

func TestServesThePage(t *testing.T) {
	url := startServer(t)
	base := "http" + strings.TrimSuffix(strings.TrimPrefix(url, "ws"), "/parley")
	for path, want := range map[string]string{
		"/":          "<title>Parley chat</title>",
		"/app.js":    "Code generated by examples/chat/web/build.mjs",
		"/style.css": "#members",
	} {
		res, err := http.Get(base + path)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(res.Body)
		res.Body.Close()
		if res.StatusCode != http.StatusOK || !strings.Contains(string(body), want) {
			t.Errorf("GET %s: %d, body without %q", path, res.StatusCode, want)
		}
	}
}
