// Package plugintest runs protoc plugins in-process on the proto cases in
// internal/testdata/cases, for the Go and TypeScript generators' golden
// tests.
//
// Request compiles a case with protocompile, keeping source info so proto
// comments reach the plugin as they would from protoc or buf, and returns
// the CodeGeneratorRequest protoc would send. No protoc, buf or subprocess
// is involved, which keeps golden tests fast and hermetic.
package plugintest

import (
	"context"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"

	"github.com/bufbuild/protocompile"
	"github.com/bufbuild/protocompile/protoutil"
	"google.golang.org/protobuf/compiler/protogen"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/descriptorpb"
	"google.golang.org/protobuf/types/pluginpb"
)

// root is the repository's root, found from this file's path so tests work
// from any package directory.
var root = func() string {
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		panic("plugintest: cannot locate the repository")
	}
	return filepath.Join(filepath.Dir(file), "..", "..")
}()

// Root returns the repository's root directory.
func Root() string { return root }

// CasesDir returns the directory holding one folder per case.
func CasesDir() string { return filepath.Join(root, "internal", "testdata", "cases") }

// Cases returns the names of the case folders, sorted.
func Cases() ([]string, error) {
	entries, err := os.ReadDir(CasesDir())
	if err != nil {
		return nil, err
	}
	var names []string
	for _, e := range entries {
		if e.IsDir() {
			names = append(names, e.Name())
		}
	}
	return names, nil
}

// Request compiles every .proto file of the named case and returns the
// request protoc would send a plugin asked to generate them all, with the
// given parameter (such as "paths=source_relative"). Imports resolve
// against the case folder, then the repository's proto/ folder (for
// parley/v1/options.proto), then the well-known types.
//
// The request goes through its wire form before it is returned, as it
// would on a plugin's stdin, so custom options decode against the
// extensions linked into the test binary just as they would in the plugin.
func Request(caseName, parameter string) (*pluginpb.CodeGeneratorRequest, error) {
	dir := filepath.Join(CasesDir(), caseName)
	var toGenerate []string
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(path, ".proto") {
			return err
		}
		rel, err := filepath.Rel(dir, path)
		toGenerate = append(toGenerate, filepath.ToSlash(rel))
		return err
	})
	if err != nil {
		return nil, err
	}
	if len(toGenerate) == 0 {
		return nil, fmt.Errorf("plugintest: case %s has no .proto files", caseName)
	}
	slices.Sort(toGenerate)

	compiler := protocompile.Compiler{
		Resolver: protocompile.WithStandardImports(&protocompile.SourceResolver{
			ImportPaths: []string{dir, filepath.Join(root, "proto")},
		}),
		SourceInfoMode: protocompile.SourceInfoStandard,
	}
	compiled, err := compiler.Compile(context.Background(), toGenerate...)
	if err != nil {
		return nil, fmt.Errorf("plugintest: compiling case %s: %w", caseName, err)
	}

	req := &pluginpb.CodeGeneratorRequest{
		FileToGenerate:  toGenerate,
		CompilerVersion: &pluginpb.Version{Major: proto.Int32(0), Minor: proto.Int32(0), Patch: proto.Int32(0), Suffix: proto.String("protocompile")},
	}
	if parameter != "" {
		req.Parameter = proto.String(parameter)
	}
	// protoc lists every file after its imports.
	seen := map[string]bool{}
	var add func(fd protoreflect.FileDescriptor)
	add = func(fd protoreflect.FileDescriptor) {
		if seen[fd.Path()] {
			return
		}
		seen[fd.Path()] = true
		imports := fd.Imports()
		for i := range imports.Len() {
			add(imports.Get(i).FileDescriptor)
		}
		req.ProtoFile = append(req.ProtoFile, protoutil.ProtoFromFileDescriptor(fd))
	}
	for _, fd := range compiled {
		add(fd)
	}

	b, err := proto.Marshal(req)
	if err != nil {
		return nil, err
	}
	out := new(pluginpb.CodeGeneratorRequest)
	if err := proto.Unmarshal(b, out); err != nil {
		return nil, err
	}
	return out, nil
}

// Run runs a protogen-based generator on req, as protogen.Options.Run would
// in a plugin's main, and returns its response. A generator's error is in
// the response's Error field, where protoc would find it.
func Run(req *pluginpb.CodeGeneratorRequest, opts protogen.Options, generate func(*protogen.Plugin) error) (*pluginpb.CodeGeneratorResponse, error) {
	plugin, err := opts.New(req)
	if err != nil {
		return nil, err
	}
	if err := generate(plugin); err != nil {
		plugin.Error(err)
	}
	return plugin.Response(), nil
}

// Editions returns the editions req's files to generate use, so a test can
// check the plugin declared support for them.
func Editions(req *pluginpb.CodeGeneratorRequest) []descriptorpb.Edition {
	generate := map[string]bool{}
	for _, name := range req.GetFileToGenerate() {
		generate[name] = true
	}
	var editions []descriptorpb.Edition
	for _, fd := range req.GetProtoFile() {
		if !generate[fd.GetName()] {
			continue
		}
		edition := fd.GetEdition()
		switch {
		case edition != descriptorpb.Edition_EDITION_UNKNOWN:
		case fd.GetSyntax() == "proto3":
			edition = descriptorpb.Edition_EDITION_PROTO3
		default:
			edition = descriptorpb.Edition_EDITION_PROTO2
		}
		if !slices.Contains(editions, edition) {
			editions = append(editions, edition)
		}
	}
	return editions
}
