package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"

	"github.com/gorilla/websocket"
	"github.com/parleyrpc/parley/internal/e2e"
	"github.com/parleyrpc/parley/internal/e2e/gen/e2e/v1/e2ev1parley"
	"github.com/parleyrpc/parley/runtime/parley"
)

// runTSServers serves the TypeScript client benchmark (bench/ts): Parley's
// internal/e2e.EchoService on parley.NewServer, and a bare gorilla echo
// (each binary message written back from the read loop), both on httptest
// servers in this process. It prints "parley <url>" and "gorilla <url>",
// then serves until stdin closes.
func runTSServers() error {
	srv := parley.NewServer()
	e2ev1parley.RegisterEchoServiceServer(srv, &e2e.EchoService{})
	ps := httptest.NewServer(srv)
	defer ps.Close()
	up := websocket.Upgrader{}
	gs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ws, err := up.Upgrade(w, r, nil)
		if err != nil {
			return
		}
		defer ws.Close()
		buf := make([]byte, 0, 4096)
		for {
			typ, rd, err := ws.NextReader()
			if err != nil {
				return
			}
			buf = buf[:0]
			for {
				if len(buf) == cap(buf) {
					buf = append(buf, 0)[:len(buf)]
				}
				n, err := rd.Read(buf[len(buf):cap(buf)])
				buf = buf[:len(buf)+n]
				if err == io.EOF {
					break
				}
				if err != nil {
					return
				}
			}
			if err := ws.WriteMessage(typ, buf); err != nil {
				return
			}
		}
	}))
	defer gs.Close()
	fmt.Printf("parley ws%s/\ngorilla ws%s/\n", strings.TrimPrefix(ps.URL, "http"), strings.TrimPrefix(gs.URL, "http"))
	_, _ = io.Copy(io.Discard, os.Stdin)
	_ = srv.Shutdown(context.Background())
	return nil
}
