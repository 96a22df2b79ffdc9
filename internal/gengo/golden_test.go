package gengo_test

import (
	"bytes"
	"flag"
	"go/format"
	"io/fs"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"google.golang.org/protobuf/cmd/protoc-gen-go/internal_gengo"
	"google.golang.org/protobuf/compiler/protogen"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/descriptorpb"
	"google.golang.org/protobuf/types/pluginpb"

	"github.com/parleyrpc/parley/internal/gengo"
	"github.com/parleyrpc/parley/internal/plugintest"
)

var update = flag.Bool("update", false, "rewrite the golden files under testdata/ with the generator's current output")

// Files in a golden folder that are not generated code.
const (
	errorFile    = "error.txt"     // the error the plugin must report
	noOutputFile = "no-output.txt" // the plugin must write nothing
	noOutputText = "The plugin writes no file for this case.\n"
)

// request returns a case's request for the Go plugins. Cases written for
// the TypeScript generator may lack go_package; their files get an import
// path under example.com/gen from their directory, as an M parameter
// would give them.
func request(t *testing.T, caseName, parameter string) *pluginpb.CodeGeneratorRequest {
	t.Helper()
	req, err := plugintest.Request(caseName, parameter)
	if err != nil {
		t.Fatal(err)
	}
	params := []string{}
	if parameter != "" {
		params = append(params, parameter)
	}
	for _, fd := range req.GetProtoFile() {
		if fd.GetOptions().GetGoPackage() == "" && !strings.HasPrefix(fd.GetName(), "google/protobuf/") {
			params = append(params, "M"+fd.GetName()+"=example.com/gen/"+path.Dir(fd.GetName()))
		}
	}
	req.Parameter = proto.String(strings.Join(params, ","))
	return req
}

// generate runs the plugin on a case, the way buf runs it with
// paths=source_relative, and returns what a golden folder should hold.
func generate(t *testing.T, caseName string) (map[string]string, *pluginpb.CodeGeneratorResponse) {
	t.Helper()
	req := request(t, caseName, "paths=source_relative")
	resp, err := plugintest.Run(req, protogen.Options{}, gengo.Generate)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	switch {
	case resp.Error != nil:
		if len(resp.File) > 0 {
			t.Errorf("the plugin failed and still wrote %d files", len(resp.File))
		}
		got[errorFile] = resp.GetError() + "\n"
	case len(resp.File) == 0:
		got[noOutputFile] = noOutputText
	}
	for _, f := range resp.File {
		got[f.GetName()] = f.GetContent()
	}
	return got, resp
}

func TestGolden(t *testing.T) {
	cases, err := plugintest.Cases()
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range cases {
		t.Run(c, func(t *testing.T) {
			t.Parallel()
			got, _ := generate(t, c)
			goldenDir := filepath.Join("testdata", c, "golden")
			if *update {
				writeGolden(t, goldenDir, got)
				return
			}
			want := readGolden(t, goldenDir)
			for _, name := range sortedKeys(got, want) {
				g, gok := got[name]
				w, wok := want[name]
				switch {
				case !wok:
					t.Errorf("unexpected output %s (run go test ./internal/gengo -update to accept it):\n%s", name, g)
				case !gok:
					t.Errorf("missing output %s (run go test ./internal/gengo -update if that is intended)", name)
				case g != w:
					t.Errorf("%s differs from its golden file (- golden, + generated; run go test ./internal/gengo -update to accept):\n%s",
						name, lineDiff(w, g))
				}
			}
		})
	}
}

// TestOutputIsFormatted checks every generated Go file is gofmt'd.
func TestOutputIsFormatted(t *testing.T) {
	cases, err := plugintest.Cases()
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range cases {
		got, _ := generate(t, c)
		for name, content := range got {
			if !strings.HasSuffix(name, ".go") {
				continue
			}
			formatted, err := format.Source([]byte(content))
			if err != nil {
				t.Errorf("%s/%s does not parse: %v", c, name, err)
				continue
			}
			if !bytes.Equal(formatted, []byte(content)) {
				t.Errorf("%s/%s is not gofmt'd:\n%s", c, name, lineDiff(content, string(formatted)))
			}
		}
	}
}

// TestSupportedEditions checks the response declares support for every
// syntax and edition the cases use, so protoc and buf accept them.
func TestSupportedEditions(t *testing.T) {
	cases, err := plugintest.Cases()
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range cases {
		req := request(t, c, "")
		resp, err := plugintest.Run(req, protogen.Options{}, gengo.Generate)
		if err != nil {
			t.Fatal(err)
		}
		if resp.Error != nil {
			continue // a refused case: its golden error.txt says why
		}
		if resp.GetSupportedFeatures()&uint64(pluginpb.CodeGeneratorResponse_FEATURE_SUPPORTS_EDITIONS) == 0 {
			t.Errorf("%s: response does not declare editions support", c)
		}
		if resp.GetSupportedFeatures()&uint64(pluginpb.CodeGeneratorResponse_FEATURE_PROTO3_OPTIONAL) == 0 {
			t.Errorf("%s: response does not declare proto3 optional support", c)
		}
		for _, e := range plugintest.Editions(req) {
			if int32(e) < resp.GetMinimumEdition() || int32(e) > resp.GetMaximumEdition() {
				t.Errorf("%s: uses %v, outside the declared editions [%d, %d]", c, e, resp.GetMinimumEdition(), resp.GetMaximumEdition())
			}
		}
	}
}

// TestGoldenCompiles builds each case the way a user's module would: the
// messages from protoc-gen-go, Parley's output beside them, both under
// their go_package import paths in a module that uses this checkout's
// runtime. Then go vet must pass. Since TestGolden holds the same output
// equal to the golden files, this proves the golden files compile.
func TestGoldenCompiles(t *testing.T) {
	if testing.Short() {
		t.Skip("runs go vet")
	}
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go command:", err)
	}
	goSum, err := os.ReadFile(filepath.Join(plugintest.Root(), "go.sum"))
	if err != nil {
		t.Fatal(err)
	}
	cases, err := plugintest.Cases()
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range cases {
		t.Run(c, func(t *testing.T) {
			t.Parallel()
			req := request(t, c, "")
			parleyResp, err := plugintest.Run(req, protogen.Options{}, gengo.Generate)
			if err != nil {
				t.Fatal(err)
			}
			if parleyResp.Error != nil {
				t.Skip("the plugin refuses this case")
			}
			if len(parleyResp.File) == 0 {
				t.Skip("no Parley output")
			}
			goResp, err := plugintest.Run(req, protogen.Options{}, func(p *protogen.Plugin) error {
				p.SupportedFeatures = internal_gengo.SupportedFeatures
				p.SupportedEditionsMinimum = internal_gengo.SupportedEditionsMinimum
				p.SupportedEditionsMaximum = internal_gengo.SupportedEditionsMaximum
				for _, f := range p.Files {
					if f.Generate {
						internal_gengo.GenerateFile(p, f)
					}
				}
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			if goResp.Error != nil {
				t.Fatalf("protoc-gen-go: %s", goResp.GetError())
			}
			// From edition 2024 protoc-gen-go defaults to the opaque API:
			// messages without exported fields. Parley's code must build
			// against it, so make sure that is what it builds against.
			if slices.ContainsFunc(plugintest.Editions(req), func(e descriptorpb.Edition) bool { return e >= descriptorpb.Edition_EDITION_2024 }) &&
				!slices.ContainsFunc(goResp.File, func(f *pluginpb.CodeGeneratorResponse_File) bool {
					return strings.Contains(f.GetContent(), "xxx_hidden_")
				}) {
				t.Fatal("protoc-gen-go's messages for an edition 2024 case are not opaque (no xxx_hidden_ fields)")
			}

			// With paths=import every file lands under its import path, so
			// the module example.com lives in dir/example.com.
			dir := t.TempDir()
			for _, f := range append(goResp.File, parleyResp.File...) {
				writeFile(t, filepath.Join(dir, filepath.FromSlash(f.GetName())), f.GetContent())
			}
			modDir := filepath.Join(dir, "example.com")
			writeFile(t, filepath.Join(modDir, "go.mod"), "module example.com\n\ngo 1.26\n\n"+
				"require github.com/parleyrpc/parley v0.0.0\n\n"+
				"replace github.com/parleyrpc/parley => "+plugintest.Root()+"\n")
			writeFile(t, filepath.Join(modDir, "go.sum"), string(goSum))

			cmd := exec.Command(goTool, "vet", "./...")
			cmd.Dir = modDir
			cmd.Env = append(os.Environ(), "GOFLAGS=-mod=mod", "GOPROXY=off", "GOWORK=off", "GOTOOLCHAIN=local")
			if out, err := cmd.CombinedOutput(); err != nil {
				t.Fatalf("go vet ./... in the generated module: %v\n%s", err, out)
			}
		})
	}
}

func readGolden(t *testing.T, dir string) map[string]string {
	t.Helper()
	files := map[string]string{}
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(dir, path)
		files[filepath.ToSlash(rel)] = string(b)
		return err
	})
	if err != nil {
		t.Fatalf("reading golden files (run go test ./internal/gengo -update to create them): %v", err)
	}
	return files
}

func writeGolden(t *testing.T, dir string, files map[string]string) {
	t.Helper()
	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
	for name, content := range files {
		writeFile(t, filepath.Join(dir, filepath.FromSlash(name)), content)
	}
}

func writeFile(t *testing.T, name, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(name), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(name, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

func sortedKeys(maps ...map[string]string) []string {
	var keys []string
	for _, m := range maps {
		for k := range m {
			if !slices.Contains(keys, k) {
				keys = append(keys, k)
			}
		}
	}
	slices.Sort(keys)
	return keys
}

// TestOptionImportNotSent runs the edition 2024 case, whose file takes
// Parley's options through `import option`, without options.proto in the
// request: a compiler need not send a file only imported for its options.
// The options are read from their wire form, so the output must not change.
func TestOptionImportNotSent(t *testing.T) {
	want, _ := generate(t, "edition2024")
	req := request(t, "edition2024", "paths=source_relative")
	n := len(req.ProtoFile)
	req.ProtoFile = slices.DeleteFunc(req.ProtoFile, func(f *descriptorpb.FileDescriptorProto) bool {
		return f.GetName() == "parley/v1/options.proto"
	})
	if len(req.ProtoFile) != n-1 {
		t.Fatal("the request did not hold parley/v1/options.proto")
	}
	resp, err := plugintest.Run(req, protogen.Options{}, gengo.Generate)
	if err != nil {
		t.Fatal(err)
	}
	if resp.Error != nil {
		t.Fatal(resp.GetError())
	}
	if len(resp.File) != len(want) {
		t.Fatalf("%d files, want %d", len(resp.File), len(want))
	}
	for _, f := range resp.File {
		if f.GetContent() != want[f.GetName()] {
			t.Errorf("%s differs without options.proto in the request:\n%s", f.GetName(), lineDiff(want[f.GetName()], f.GetContent()))
		}
	}
}

// TestOneFileAtATime generates each file of every case alone, as protoc
// run once per file does: the file to generate and, in the request, only
// the files it imports, directly or not. Its output must be what
// generating the whole case writes for it (the package doc on one file
// only, the same identifiers), so that files generated apart still build
// into one package. A file whose package has an earlier file with services
// that it does not import is skipped: nothing in its request tells the
// plugin about that file.
func TestOneFileAtATime(t *testing.T) {
	cases, err := plugintest.Cases()
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range cases {
		t.Run(c, func(t *testing.T) {
			want, full := generate(t, c)
			if full.Error != nil || len(full.File) == 0 {
				t.Skip("the plugin refuses this case or writes nothing")
			}
			req := request(t, c, "paths=source_relative")
			byName := map[string]*descriptorpb.FileDescriptorProto{}
			for _, fd := range req.GetProtoFile() {
				byName[fd.GetName()] = fd
			}
			for _, name := range req.GetFileToGenerate() {
				deps := map[string]bool{}
				var visit func(string)
				visit = func(n string) {
					if deps[n] {
						return
					}
					deps[n] = true
					for _, d := range byName[n].GetDependency() {
						visit(d)
					}
				}
				visit(name)
				if earlierSiblingNotImported(req, name, deps) {
					continue
				}
				one := proto.Clone(req).(*pluginpb.CodeGeneratorRequest)
				one.FileToGenerate = []string{name}
				one.ProtoFile = slices.DeleteFunc(one.ProtoFile, func(fd *descriptorpb.FileDescriptorProto) bool { return !deps[fd.GetName()] })
				resp, err := plugintest.Run(one, protogen.Options{}, gengo.Generate)
				if err != nil {
					t.Fatal(err)
				}
				if resp.Error != nil {
					t.Fatalf("%s alone: %s", name, resp.GetError())
				}
				for _, f := range resp.File {
					if w, ok := want[f.GetName()]; !ok {
						t.Errorf("%s alone: unexpected output %s", name, f.GetName())
					} else if f.GetContent() != w {
						t.Errorf("%s alone: %s differs from the whole case's (- whole, + alone):\n%s", name, f.GetName(), lineDiff(w, f.GetContent()))
					}
				}
			}
		})
	}
}

// earlierSiblingNotImported reports whether a file with services precedes
// name in req and has its Go package without being among deps.
func earlierSiblingNotImported(req *pluginpb.CodeGeneratorRequest, name string, deps map[string]bool) bool {
	goPackage := func(fd *descriptorpb.FileDescriptorProto) string {
		if p := fd.GetOptions().GetGoPackage(); p != "" {
			importPath, _, _ := strings.Cut(p, ";")
			return importPath
		}
		return path.Dir(fd.GetName())
	}
	var mine string
	for _, fd := range req.GetProtoFile() {
		if fd.GetName() == name {
			mine = goPackage(fd)
		}
	}
	for _, fd := range req.GetProtoFile() {
		if fd.GetName() == name {
			return false
		}
		if len(fd.GetService()) > 0 && !deps[fd.GetName()] && goPackage(fd) == mine {
			return true
		}
	}
	return false
}
