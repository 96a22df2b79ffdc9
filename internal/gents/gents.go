// Package gents generates Parley's TypeScript clients: for each proto file
// with services, a <file>_parley.ts beside protoc-gen-es's <file>_pb.ts,
// holding one MethodSpec constant per method, and per service:
//
//   - for a service clients call, a typed client class, whose streaming
//     methods return an AsyncIterable (server streaming) or a call to send
//     into (client and bidirectional streaming);
//   - for a service clients implement (implemented_by = CLIENT), a
//     <Service>Subscriber class with one on<Event> method per event (a unary
//     method returning google.protobuf.Empty), and a <Service>Handler
//     interface with register<Service>Handler for the other methods, the
//     calls the server awaits a reply to. Streaming methods in such services
//     are refused.
//
// The message types come from the _pb files and are never re-declared.
//
// The plugin first builds a model of each output file (services, methods,
// every identifier and import), then renders it with the templates in
// github.com/parleyrpc/parley/templates.
package gents

import (
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/parleyrpc/parley/internal/editions"
	"github.com/parleyrpc/parley/internal/parleyopts"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protodesc"
	"google.golang.org/protobuf/types/descriptorpb"
	"google.golang.org/protobuf/types/pluginpb"
)

// PluginName and Version appear in every generated file's header.
const (
	PluginName = "protoc-gen-parley-ts"
	Version    = "v0.1.0"
)

// DefaultRuntimeImport is where generated code imports Connection,
// CallOptions, MethodSpec and the stream and handler functions from,
// unless the runtime_import option says otherwise.
const DefaultRuntimeImport = "@parleyrpc/runtime"

// protobufImport is protobuf-es's runtime, the home of MessageInitShape.
const protobufImport = "@bufbuild/protobuf"

// Options are the plugin's parameters, given as comma-separated key=value
// pairs (`opt:` in buf.gen.yaml).
type Options struct {
	// ImportExtension is the extension of relative imports: "none" (the
	// default, for bundlers), "js" (Node ESM) or "ts" (Deno, or TypeScript
	// with allowImportingTsExtensions). Same meaning as protoc-gen-es's
	// option, and it should be set to the same value.
	ImportExtension string
	// RuntimeImport is the module path of Parley's TypeScript runtime,
	// "@parleyrpc/runtime" by default. Set it to vendor the runtime or to
	// point at a fork. A relative path ("./vendor/parley/index.js") is
	// relative to the output root, as protoc-gen-es reads relative paths,
	// and each file imports it relative to itself.
	RuntimeImport string
}

// ParseOptions reads the plugin parameter. "target=ts" is accepted so one
// opt list can serve protoc-gen-es and this plugin; other targets are
// refused because only TypeScript is generated.
func ParseOptions(parameter string) (Options, error) {
	opts := Options{ImportExtension: "none", RuntimeImport: DefaultRuntimeImport}
	if parameter == "" {
		return opts, nil
	}
	for _, kv := range strings.Split(parameter, ",") {
		key, value, _ := strings.Cut(strings.TrimSpace(kv), "=")
		switch key {
		case "":
		case "import_extension":
			switch strings.TrimPrefix(value, ".") {
			case "none", "":
				opts.ImportExtension = "none"
			case "js":
				opts.ImportExtension = "js"
			case "ts":
				opts.ImportExtension = "ts"
			default:
				return opts, fmt.Errorf("invalid option import_extension=%q: want none, js or ts", value)
			}
		case "runtime_import":
			if value == "" {
				return opts, fmt.Errorf("invalid option runtime_import: want a module path, such as %s", DefaultRuntimeImport)
			}
			opts.RuntimeImport = value
		case "target":
			for _, t := range strings.Split(value, "+") {
				if t != "ts" {
					return opts, fmt.Errorf("invalid option target=%q: only ts is supported", value)
				}
			}
		default:
			return opts, fmt.Errorf("unknown option %q (known: import_extension, runtime_import, target)", key)
		}
	}
	return opts, nil
}

// Run reads a CodeGeneratorRequest from in and writes the
// CodeGeneratorResponse to out, as protoc and buf expect of a plugin.
func Run(in io.Reader, out io.Writer) error {
	b, err := io.ReadAll(in)
	if err != nil {
		return fmt.Errorf("%s: reading request: %w", PluginName, err)
	}
	// Parley's options stay undecoded, for parleyopts to read and, when a
	// copy of options.proto declares them otherwise, refuse by name.
	req, err := parleyopts.UnmarshalRequest(b)
	if err != nil {
		return fmt.Errorf("%s: parsing request: %w", PluginName, err)
	}
	b, err = proto.Marshal(Generate(req))
	if err != nil {
		return fmt.Errorf("%s: encoding response: %w", PluginName, err)
	}
	_, err = out.Write(b)
	return err
}

// Generate answers one request. Problems with the input are reported in
// the response's error field, as the plugin protocol asks. It declares the
// editions package's range (2024's option imports need nothing of us:
// Parley's options are read from their wire form).
func Generate(req *pluginpb.CodeGeneratorRequest) *pluginpb.CodeGeneratorResponse {
	resp := &pluginpb.CodeGeneratorResponse{
		SupportedFeatures: proto.Uint64(uint64(pluginpb.CodeGeneratorResponse_FEATURE_PROTO3_OPTIONAL |
			pluginpb.CodeGeneratorResponse_FEATURE_SUPPORTS_EDITIONS)),
		MinimumEdition: proto.Int32(int32(editions.Minimum)),
		MaximumEdition: proto.Int32(int32(editions.Maximum)),
	}
	files, err := generate(req)
	if err != nil {
		// One line per problem, each saying whose it is.
		resp.Error = proto.String(prefixLines(PluginName+": ", err.Error()))
		return resp
	}
	resp.File = files
	return resp
}

func generate(req *pluginpb.CodeGeneratorRequest) ([]*pluginpb.CodeGeneratorResponse_File, error) {
	opts, err := ParseOptions(req.GetParameter())
	if err != nil {
		return nil, err
	}
	reg, err := protodesc.NewFiles(&descriptorpb.FileDescriptorSet{File: req.GetProtoFile()})
	if err != nil {
		return nil, fmt.Errorf("reading descriptors: %w", err)
	}
	g := &generator{
		opts:      opts,
		parameter: req.GetParameter(),
		reg:       reg,
		raw:       map[string]*descriptorpb.FileDescriptorProto{},
		toGen:     map[string]bool{},
		esNames:   map[string]esFileNames{},
	}
	for _, f := range req.GetProtoFile() {
		g.raw[f.GetName()] = f
	}
	for _, name := range req.GetFileToGenerate() {
		g.toGen[name] = true
	}
	var out []*pluginpb.CodeGeneratorResponse_File
	for _, name := range req.GetFileToGenerate() {
		fd, err := reg.FindFileByPath(name)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
		m, err := g.buildFile(fd)
		if err != nil {
			return nil, errors.New(prefixLines(name+": ", err.Error()))
		}
		if m == nil {
			continue // no services, nothing to call
		}
		content, err := render(m)
		if err != nil {
			return nil, fmt.Errorf("%s: rendering: %w", name, err)
		}
		out = append(out, &pluginpb.CodeGeneratorResponse_File{
			Name:    proto.String(m.Name),
			Content: proto.String(content),
		})
	}
	return out, nil
}

// prefixLines puts prefix before every line of s: errors.Join writes one
// problem a line.
func prefixLines(prefix, s string) string {
	return prefix + strings.ReplaceAll(s, "\n", "\n"+prefix)
}
