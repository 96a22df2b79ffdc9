// Package web holds the chat example's browser page: src/main.ts, bundled
// by esbuild (`make generate`, which runs build.mjs) into static/app.js,
// checked in so that `go run ./examples/chat/cmd/chat-server` works on a
// fresh clone without Node.
package web

import (
	"embed"
	"io/fs"
)

//go:embed static
var static embed.FS

// Static returns the page's files: index.html, style.css and app.js.
func Static() fs.FS {
	sub, err := fs.Sub(static, "static")
	if err != nil {
		panic(err)
	}
	return sub
}
