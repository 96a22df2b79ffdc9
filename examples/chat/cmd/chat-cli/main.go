// Command chat-cli is a terminal client for the chat example: it dials the
// chat server, joins a room, posts each line read from stdin and prints
// the events the server pushes.
//
//	go run ./examples/chat/cmd/chat-cli -user ada [-room lobby] [-url ws://127.0.0.1:8080/parley]
//
// Lines starting with '/' are commands: /join ROOM, /leave, /rooms,
// /kick USER [REASON], /quit. Everything else is posted to the current
// room. When someone kicks you, the server asks first (ConfirmLeave): the
// CLI accepts, unless started with -stay.
package main

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"sync"

	chatv1 "github.com/parleyrpc/parley/examples/chat/gen/chat/v1"
	"github.com/parleyrpc/parley/examples/chat/gen/chat/v1/chatv1parley"
	"github.com/parleyrpc/parley/runtime/parley"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdin, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "chat-cli:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, in io.Reader, out io.Writer) error {
	fs := flag.NewFlagSet("chat-cli", flag.ContinueOnError)
	url := fs.String("url", "ws://127.0.0.1:8080/parley", "the chat server's Parley URL")
	user := fs.String("user", "", "your name (signs in with the development token dev-<name>)")
	room := fs.String("room", "lobby", "the room to join first")
	stay := fs.Bool("stay", false, "decline when someone kicks you")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *user == "" {
		return errors.New("-user is required")
	}

	c := &cli{out: out, user: *user, stay: *stay}
	conn, err := parley.Dial(ctx, *url,
		parley.WithHelloMetadata(map[string]string{"authorization": "Bearer dev-" + *user}),
		// Registered before the socket opens, so that no event is missed,
		// not even one the server pushes as the client connects.
		parley.WithHandlers(func(r parley.Registrar) { chatv1parley.RegisterChatEventsHandler(r, c) }),
	)
	if err != nil {
		return err
	}
	defer conn.Close()
	c.chat = chatv1parley.NewChatServiceClient(conn)
	if err := c.join(ctx, *room); err != nil {
		return err
	}

	lines := make(chan string)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(in)
		for sc.Scan() {
			lines <- sc.Text()
		}
	}()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-conn.Done():
			return fmt.Errorf("connection closed: %w", conn.Err())
		case line, ok := <-lines:
			if !ok {
				return nil
			}
			quit, err := c.command(ctx, strings.TrimSpace(line))
			if err != nil {
				c.printf("! %v", err)
			}
			if quit {
				return nil
			}
		}
	}
}

// cli prints events and runs commands. It implements
// chatv1parley.ChatEventsHandler.
type cli struct {
	chat chatv1parley.ChatServiceClient
	user string
	stay bool

	mu   sync.Mutex // guards out and room
	out  io.Writer
	room string
}

func (c *cli) printf(format string, args ...any) {
	c.mu.Lock()
	defer c.mu.Unlock()
	fmt.Fprintf(c.out, format+"\n", args...)
}

func (c *cli) currentRoom() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.room
}

func (c *cli) join(ctx context.Context, room string) error {
	res, err := c.chat.Join(ctx, &chatv1.JoinRequest{Room: room})
	if err != nil {
		return err
	}
	c.mu.Lock()
	c.room = room
	c.mu.Unlock()
	var who []string
	for _, m := range res.GetMembers() {
		state := "offline"
		if m.GetOnline() {
			state = "online"
		}
		who = append(who, m.GetUser()+" ("+state+")")
	}
	c.printf("* joined %s: %s", room, strings.Join(who, ", "))
	for _, m := range res.GetHistory() {
		c.MessagePosted(ctx, m)
	}
	return nil
}

// command runs one line of input; it reports whether to quit.
func (c *cli) command(ctx context.Context, line string) (quit bool, err error) {
	if line == "" {
		return false, nil
	}
	if !strings.HasPrefix(line, "/") {
		_, err := c.chat.Post(ctx, &chatv1.PostRequest{Room: c.currentRoom(), Text: line, ClientMessageId: newID()})
		return false, err
	}
	verb, rest, _ := strings.Cut(line[1:], " ")
	rest = strings.TrimSpace(rest)
	switch verb {
	case "quit", "q":
		return true, nil
	case "join":
		return false, c.join(ctx, rest)
	case "leave":
		_, err := c.chat.Leave(ctx, &chatv1.LeaveRequest{Room: c.currentRoom()})
		return false, err
	case "rooms":
		res, err := c.chat.ListRooms(ctx, &chatv1.ListRoomsRequest{})
		if err != nil {
			return false, err
		}
		for _, r := range res.GetRooms() {
			mark := " "
			if r.GetJoined() {
				mark = "*"
			}
			noun := "members"
			if r.GetMembers() == 1 {
				noun = "member"
			}
			c.printf("%s %s: %d %s, %d online", mark, r.GetName(), r.GetMembers(), noun, r.GetOnline())
		}
		return false, nil
	case "kick":
		who, reason, _ := strings.Cut(rest, " ")
		res, err := c.chat.Kick(ctx, &chatv1.KickRequest{Room: c.currentRoom(), User: who, Reason: reason})
		if err != nil {
			return false, err
		}
		if !res.GetRemoved() {
			c.printf("* %s declined: %s", who, res.GetMessage())
		}
		return false, nil
	}
	return false, fmt.Errorf("unknown command /%s (try /join ROOM, /leave, /rooms, /kick USER [REASON], /quit)", verb)
}

func newID() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// MessagePosted implements chatv1parley.ChatEventsHandler.
func (c *cli) MessagePosted(_ context.Context, m *chatv1.ChatMessage) {
	c.printf("[%s] %s: %s", m.GetRoom(), m.GetUser(), m.GetText())
}

// UserJoined implements chatv1parley.ChatEventsHandler.
func (c *cli) UserJoined(_ context.Context, ev *chatv1.UserJoinedEvent) {
	c.printf("* %s joined %s", ev.GetUser(), ev.GetRoom())
}

// UserLeft implements chatv1parley.ChatEventsHandler.
func (c *cli) UserLeft(_ context.Context, ev *chatv1.UserLeftEvent) {
	who := ev.GetUser()
	if who == c.user {
		who = "you"
	}
	if ev.GetReason() == "kicked" {
		c.printf("* %s left %s (kicked by %s)", who, ev.GetRoom(), ev.GetBy())
		return
	}
	c.printf("* %s left %s", who, ev.GetRoom())
}

// Typing implements chatv1parley.ChatEventsHandler.
func (c *cli) Typing(_ context.Context, ev *chatv1.TypingEvent) {
	if ev.GetTyping() {
		c.printf("* %s is typing in %s…", ev.GetUser(), ev.GetRoom())
	}
}

// PresenceChanged implements chatv1parley.ChatEventsHandler.
func (c *cli) PresenceChanged(_ context.Context, ev *chatv1.PresenceChangedEvent) {
	state := "offline"
	if ev.GetOnline() {
		state = "online"
	}
	c.printf("* %s is %s", ev.GetUser(), state)
}

// ConfirmLeave implements chatv1parley.ChatEventsHandler: the server asks
// before removing this user from a room.
func (c *cli) ConfirmLeave(_ context.Context, req *chatv1.ConfirmLeaveRequest) (*chatv1.ConfirmLeaveResponse, error) {
	reason := req.GetReason()
	if reason == "" {
		reason = "no reason given"
	}
	if c.stay {
		c.printf("* %s asked you to leave %s (%s); staying (-stay)", req.GetBy(), req.GetRoom(), reason)
		return &chatv1.ConfirmLeaveResponse{Accept: false, Message: c.user + " would rather stay"}, nil
	}
	c.printf("* %s asked you to leave %s (%s); leaving", req.GetBy(), req.GetRoom(), reason)
	return &chatv1.ConfirmLeaveResponse{Accept: true}, nil
}
