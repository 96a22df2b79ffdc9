// Package plugintest runs protoc plugins in-process on the proto cases in
// internal/testdata/cases, for the Go and TypeScript generators' golden
// tests.
//
// Request compiles a case with protocompile's experimental compiler, the
// one buf generate uses (it knows edition 2024, which protocompile's older
// Compiler refuses), keeping source info so proto comments reach the
// plugin as they would from protoc or buf, and returns
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

	"github.com/bufbuild/protocompile/experimental/fdp"
	"github.com/bufbuild/protocompile/experimental/incremental"
	"github.com/bufbuild/protocompile/experimental/incremental/queries"
	"github.com/bufbuild/protocompile/experimental/ir"
	"github.com/bufbuild/protocompile/experimental/report"
	"github.com/bufbuild/protocompile/experimental/source"
	"google.golang.org/protobuf/compiler/protogen"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/descriptorpb"
	"google.golang.org/protobuf/types/pluginpb"

	"github.com/parleyrpc/parley/internal/parleyopts"
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
// The request goes through its wire form before it is returned, and is
// decoded as the plugins decode their stdin (parleyopts.UnmarshalRequest),
// so options reach the generators just as they would in the plugins.
func Request(caseName, parameter string) (*pluginpb.CodeGeneratorRequest, error) {
	return RequestDir(filepath.Join(CasesDir(), caseName), parameter)
}

// RequestDir is Request for the .proto files under any folder dir, laid
// out under their import paths.
func RequestDir(dir, parameter string) (*pluginpb.CodeGeneratorRequest, error) {
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
		return nil, fmt.Errorf("plugintest: %s has no .proto files", dir)
	}
	slices.Sort(toGenerate)

	// The compiler buf generate uses (buf 1.75 builds images with
	// protocompile's experimental compiler, which knows edition 2024), with
	// the source info buf sends a plugin.
	var opts fdp.Options
	opts.Apply(fdp.IncludeSourceCodeInfo(true), fdp.GenerateExtraOptionLocations(true))
	results, diags, err := incremental.Run(context.Background(), incremental.New(), queries.FDS{
		Opener: &source.Openers{
			&source.FS{FS: os.DirFS(dir)},
			&source.FS{FS: os.DirFS(filepath.Join(root, "proto"))},
			source.WKTs(),
		},
		Session:   new(ir.Session),
		Workspace: source.NewWorkspace(toGenerate...),
		Options:   opts,
	})
	if err == nil && len(results) == 1 {
		err = results[0].Fatal
	}
	if err != nil {
		return nil, fmt.Errorf("plugintest: compiling %s: %w", dir, err)
	}
	if diags != nil {
		text, errs, _ := report.Renderer{}.RenderString(diags)
		if errs > 0 {
			return nil, fmt.Errorf("plugintest: compiling %s:\n%s", dir, text)
		}
	}
	// protoc lists every file after its imports, as the compiler does.
	req := &pluginpb.CodeGeneratorRequest{
		FileToGenerate:  toGenerate,
		ProtoFile:       results[0].Value.GetFile(),
		CompilerVersion: &pluginpb.Version{Major: proto.Int32(0), Minor: proto.Int32(0), Patch: proto.Int32(0), Suffix: proto.String("protocompile")},
	}
	if parameter != "" {
		req.Parameter = proto.String(parameter)
	}

	b, err := proto.Marshal(req)
	if err != nil {
		return nil, err
	}
	return parleyopts.UnmarshalRequest(b)
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
