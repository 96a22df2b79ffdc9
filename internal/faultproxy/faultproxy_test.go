package faultproxy

import (
	"bufio"
	"io"
	"net"
	"strings"
	"testing"
	"time"
)

// echoServer answers every line with its name and the line.
func echoServer(t *testing.T, name string) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				r := bufio.NewReader(c)
				for {
					line, err := r.ReadString('\n')
					if err != nil {
						return
					}
					if _, err := io.WriteString(c, name+":"+line); err != nil {
						return
					}
				}
			}()
		}
	}()
	return ln.Addr().String()
}

func roundTrip(t *testing.T, c net.Conn, r *bufio.Reader, msg string) (string, error) {
	t.Helper()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, msg+"\n"); err != nil {
		return "", err
	}
	line, err := r.ReadString('\n')
	return strings.TrimSuffix(line, "\n"), err
}

func TestProxy(t *testing.T) {
	a, b := echoServer(t, "a"), echoServer(t, "b")
	p, err := New(a)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()

	c, err := net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	r := bufio.NewReader(c)
	if got, err := roundTrip(t, c, r, "hi"); err != nil || got != "a:hi" {
		t.Fatalf("forward: %q %v", got, err)
	}

	// Delay.
	p.Delay(50 * time.Millisecond)
	start := time.Now()
	if got, err := roundTrip(t, c, r, "slow"); err != nil || got != "a:slow" {
		t.Fatalf("delayed: %q %v", got, err)
	}
	if d := time.Since(start); d < 100*time.Millisecond {
		t.Fatalf("round trip took %v with 50ms each way", d)
	}
	p.Delay(0)

	// Blackhole: nothing comes back, and the socket stays open.
	links := p.Blackhole()
	if len(links) != 1 {
		t.Fatalf("%d links", len(links))
	}
	_ = c.SetDeadline(time.Now().Add(100 * time.Millisecond))
	_, _ = io.WriteString(c, "lost\n")
	if _, err := r.ReadString('\n'); err == nil || !isTimeout(err) {
		t.Fatalf("blackholed read: %v, want a timeout", err)
	}
	select {
	case <-links[0].ServerGone():
		t.Fatal("the backend closed a blackholed link")
	default:
	}
	_ = c.Close()
	<-links[0].ClientGone()
	select {
	case <-links[0].ServerGone():
		t.Fatal("the client's close was passed on through a blackhole")
	default:
	}
	links[0].Drop()
	<-links[0].ServerGone()

	// A new backend for new links; Drop ends the old ones.
	c1, err := net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	r1 := bufio.NewReader(c1)
	if got, err := roundTrip(t, c1, r1, "x"); err != nil || got != "a:x" {
		t.Fatalf("%q %v", got, err)
	}
	p.SetBackend(b)
	c2, err := net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	r2 := bufio.NewReader(c2)
	if got, err := roundTrip(t, c2, r2, "y"); err != nil || got != "b:y" {
		t.Fatalf("%q %v", got, err)
	}
	if n := p.Drop(); n != 2 {
		t.Fatalf("dropped %d links, want 2", n)
	}
	if _, err := roundTrip(t, c1, r1, "z"); err == nil {
		t.Fatal("a dropped link still works")
	}

	// Refuse.
	p.Refuse(true)
	c3, err := net.Dial("tcp", p.Addr())
	if err == nil {
		_, err = roundTrip(t, c3, bufio.NewReader(c3), "no")
		_ = c3.Close()
	}
	if err == nil {
		t.Fatal("a refused connection worked")
	}
	p.Refuse(false)
	c4, err := net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c4.Close()
	if got, err := roundTrip(t, c4, bufio.NewReader(c4), "ok"); err != nil || got != "b:ok" {
		t.Fatalf("%q %v", got, err)
	}
	if p.Accepted() != 4 {
		t.Fatalf("accepted %d, want 4", p.Accepted())
	}
}

func isTimeout(err error) bool {
	ne, ok := err.(net.Error)
	return ok && ne.Timeout()
}
