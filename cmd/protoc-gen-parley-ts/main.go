// Command protoc-gen-parley-ts is a protoc/buf plugin that generates
// Parley's TypeScript clients: <file>_parley.ts beside protoc-gen-es's
// <file>_pb.ts, with client classes (unary and streaming methods), event
// subscribers and call handlers. Options (opt: in buf.gen.yaml):
//
//	import_extension=none|js|ts   extension of relative imports (default none)
//	runtime_import=<module>       where the runtime is imported from (default @parleyrpc/runtime);
//	                              a relative path (./vendor/parley/index.js) is relative to out
//	target=ts                     accepted, so protoc-gen-es's option list can be reused
//
// See internal/gents for what it generates.
package main

import (
	"fmt"
	"os"

	"github.com/parleyrpc/parley/internal/gents"
)

func main() {
	if len(os.Args) > 1 {
		switch os.Args[1] {
		case "--version", "-version":
			fmt.Println(gents.PluginName, gents.Version)
			return
		}
		fmt.Fprintf(os.Stderr, "%s: a protoc plugin: run it through buf generate or protoc, not by hand\n", gents.PluginName)
		os.Exit(2)
	}
	if err := gents.Run(os.Stdin, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
