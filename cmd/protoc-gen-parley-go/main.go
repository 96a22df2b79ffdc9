// Command protoc-gen-parley-go is a protoc and buf plugin that generates
// Parley's Go clients and server interfaces for the services of proto
// files, and for services implemented by clients
// (`option (parley.v1.service).implemented_by = CLIENT`) the server's event
// publishers and clients and the client's handler interfaces. Messages come from protoc-gen-go; this plugin writes, for
// chat/v1/chat.proto with go_package example.com/gen/chat/v1;chatv1, the
// package example.com/gen/chat/v1/chatv1parley in
// chat/v1/chatv1parley/chat.parley.go.
//
// It takes protoc-gen-go's parameters: paths=import (the default) or
// paths=source_relative, module=PREFIX, and M<file>=<import path>.
//
// With buf, in buf.gen.yaml:
//
//	plugins:
//	  - local: protoc-gen-parley-go
//	    out: gen
//	    opt: paths=source_relative
package main

import (
	"fmt"
	"os"

	"google.golang.org/protobuf/compiler/protogen"

	"github.com/parleyrpc/parley/internal/gengo"
)

func main() {
	if len(os.Args) == 2 && (os.Args[1] == "--version" || os.Args[1] == "-version") {
		fmt.Println(gengo.PluginName, "v"+gengo.Version)
		return
	}
	if len(os.Args) > 1 {
		fmt.Fprintf(os.Stderr, "%s: unexpected argument %q; this program is a protoc plugin, run by protoc or buf\n",
			gengo.PluginName, os.Args[1])
		os.Exit(2)
	}
	// No parameters of our own yet: protogen handles paths=, module=, M,
	// annotate_code and the API-level ones, and hands us the rest.
	if err := gengo.Run(protogen.Options{ParamFunc: unknownOption}, os.Stdin, os.Stdout); err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", gengo.PluginName, err)
		os.Exit(1)
	}
}

// unknownOption refuses a parameter protogen did not take, naming it and
// the ones there are (main prints the error with the plugin's name).
func unknownOption(name, value string) error {
	return fmt.Errorf("unknown option %q (known: paths=import|source_relative, module=<prefix>, M<file>=<import path>, annotate_code)", name)
}
