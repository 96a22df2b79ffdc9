// Command chat-server serves the chat example: the browser page at / and
// chat.v1.ChatService over Parley at /parley, on the in-process broker.
//
//	go run ./examples/chat/cmd/chat-server            # http://127.0.0.1:8080/
//	go run ./examples/chat/cmd/chat-server -addr :9000
//
// Open the printed URL in two browser windows (each asks for a name; the
// page signs in with the development token "dev-<name>"), or talk from a
// terminal with go run ./examples/chat/cmd/chat-cli -user ada.
package main

import (
	"context"
	"flag"
	"fmt"
	"io/fs"
	"log"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/parleyrpc/parley/examples/chat/server"
	"github.com/parleyrpc/parley/runtime/parley"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:8080", "address to listen on")
	verbose := flag.Bool("v", false, "log every call and event")
	webDir := flag.String("web", "", "serve the page from this directory instead of the copy built into the binary (for development)")
	flag.Parse()

	var opts []parley.ServerOption
	if *verbose {
		opts = append(opts, parley.WithLogger(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))))
	}
	chat := server.New(opts...)
	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		log.Fatal(err)
	}
	var page fs.FS
	if *webDir != "" {
		page = os.DirFS(*webDir)
	}
	hs := &http.Server{Handler: chat.Handler(page), ReadHeaderTimeout: 10 * time.Second}
	go func() {
		if err := hs.Serve(ln); err != http.ErrServerClosed {
			log.Fatal(err)
		}
	}()
	host := ln.Addr().String()
	fmt.Printf("chat: open http://%s/ (Parley at ws://%s/parley); Ctrl-C stops\n", host, host)

	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGINT, syscall.SIGTERM)
	<-stop
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = chat.Parley().Shutdown(ctx)
	_ = hs.Shutdown(ctx)
}
