// Command e2eserver serves e2e.v1.EchoService, StreamService, PushService
// and EventService for the Node and browser tests; with -auth it
// authenticates connections with e2e.Authenticate, and -resume-window sets
// how long sessions wait to be resumed. It listens on 127.0.0.1 on a free
// port (or -addr), prints its WebSocket URL as the first line on stdout,
// serves static files from -static at / when given, and exits when stdin
// closes or on SIGINT/SIGTERM.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/parleyrpc/parley/internal/e2e"
	"github.com/parleyrpc/parley/internal/e2e/gen/e2e/v1/e2ev1parley"
	"github.com/parleyrpc/parley/runtime/parley"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:0", "address to listen on")
	static := flag.String("static", "", "directory to serve at / (for browser tests)")
	auth := flag.Bool("auth", false, "authenticate connections with e2e.Authenticate")
	resume := flag.Duration("resume-window", parley.DefaultResumeWindow, "how long a dropped session waits to be resumed")
	flag.Parse()

	opts := []parley.ServerOption{parley.WithAllowedOrigins("*"), parley.WithResume(*resume, parley.DefaultResumeEvents)}
	if *auth {
		opts = append(opts, parley.WithAuthenticate(e2e.Authenticate))
	}
	srv := parley.NewServer(opts...)
	e2ev1parley.RegisterEchoServiceServer(srv, &e2e.EchoService{})
	e2ev1parley.RegisterStreamServiceServer(srv, &e2e.StreamService{})
	e2ev1parley.RegisterPushServiceServer(srv, &e2e.PushService{Events: e2ev1parley.NewClientEventsPublisher(srv)})
	e2ev1parley.RegisterEventServiceServer(srv, &e2e.EventService{Notes: e2ev1parley.NewNotesPublisher(srv)})
	mux := http.NewServeMux()
	mux.Handle("/parley", srv)
	if *static != "" {
		mux.Handle("/", http.FileServer(http.Dir(*static)))
	}
	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("ws://%s/parley\n", ln.Addr())
	hs := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = hs.Serve(ln) }()

	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGINT, syscall.SIGTERM)
	stdinClosed := make(chan struct{})
	go func() {
		_, _ = io.Copy(io.Discard, os.Stdin)
		close(stdinClosed)
	}()
	select {
	case <-stop:
	case <-stdinClosed:
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = srv.Shutdown(ctx)
	_ = hs.Shutdown(ctx)
}
