// Package templates holds the text/template sources protoc-gen-parley-ts
// renders, embedded so the plugin is one self-contained binary.
//
// client.ts.tmpl renders one <file>_parley.ts from the model built by
// internal/gents; it decides layout only, never a name.
package templates

import "embed"

// FS holds the TypeScript templates.
//
//go:embed *.ts.tmpl
var FS embed.FS
