package gents_test

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/pluginpb"

	"github.com/parleyrpc/parley/internal/gents"
	"github.com/parleyrpc/parley/internal/plugintest"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

const (
	// sharedCases are the proto cases every generator is tested on.
	sharedCases = "../testdata/cases"
	// tsCases are cases about TypeScript only (names TypeScript spells),
	// laid out like the shared ones; their goldens sit beside the shared
	// cases' in testdata/<case>/.
	tsCases    = "testdata/tscases"
	goldenRoot = "testdata"
	// errorFile holds the plugin's error in the golden dir of a case the
	// plugin must refuse.
	errorFile = "error.txt"
)

// repoRoot is where node_modules lives.
const repoRoot = "../.."

func nodeTool(t *testing.T, name string) string {
	t.Helper()
	p, err := filepath.Abs(filepath.Join(repoRoot, "node_modules", ".bin", name))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(p); err != nil {
		t.Fatalf("%s is missing: run `npm ci` in the repository root to install the TypeScript tools (%v)", p, err)
	}
	return p
}

// caseDirs maps each case's name to its folder: the shared cases, then
// the TypeScript-only ones.
func caseDirs(t *testing.T) map[string]string {
	t.Helper()
	dirs := map[string]string{}
	for _, root := range []string{sharedCases, tsCases} {
		entries, err := os.ReadDir(root)
		if err != nil {
			t.Fatalf("reading the cases: %v", err)
		}
		for _, e := range entries {
			if !e.IsDir() {
				continue
			}
			if _, dup := dirs[e.Name()]; dup {
				t.Fatalf("case %s is both in %s and in %s", e.Name(), sharedCases, tsCases)
			}
			dirs[e.Name()] = filepath.Join(root, e.Name())
		}
	}
	if len(dirs) == 0 {
		t.Fatalf("no cases in %s", sharedCases)
	}
	return dirs
}

// TestGolden generates each shared case with protoc-gen-parley-ts and with
// protoc-gen-es (so every golden dir type-checks on its own) and compares
// the output with testdata/<case>/. go test -update rewrites it.
func TestGolden(t *testing.T) {
	esPlugin := nodeTool(t, "protoc-gen-es")
	for name, dir := range caseDirs(t) {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			req := buildRequest(t, dir)
			got := map[string]string{}
			resp := runParley(t, req, "")
			if resp.Error != nil {
				got[errorFile] = resp.GetError() + "\n"
			} else {
				for _, f := range resp.GetFile() {
					got[f.GetName()] = f.GetContent()
				}
				// protoc-gen-es also generates the dependencies outside
				// @bufbuild/protobuf (parley/v1/options.proto), which a _pb
				// file imports, as buf's include_imports would.
				esReq := proto.CloneOf(req)
				esReq.FileToGenerate = nil
				for _, f := range req.GetProtoFile() {
					if !strings.HasPrefix(f.GetName(), "google/protobuf/") {
						esReq.FileToGenerate = append(esReq.FileToGenerate, f.GetName())
					}
				}
				es := runPlugin(t, esPlugin, esReq, "target=ts")
				if es.Error != nil {
					t.Fatalf("protoc-gen-es: %s", es.GetError())
				}
				for _, f := range es.GetFile() {
					got[f.GetName()] = f.GetContent()
				}
			}
			compareGolden(t, filepath.Join(goldenRoot, name), got)
		})
	}
}

// TestGoldenTypeCheck runs tsc in strict mode over every golden case, with
// a stand-in for @parleyrpc/runtime that declares exactly its public API.
func TestGoldenTypeCheck(t *testing.T) {
	tsc := nodeTool(t, "tsc")
	cmd := exec.Command(tsc, "--noEmit", "-p", "tsconfig.json")
	cmd.Dir = goldenRoot
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("tsc --noEmit over %s: %v\n%s", goldenRoot, err, out)
	}
}

// TestGoldenRuns bundles testdata/smoke.ts, which drives golden clients,
// subscribers and handlers against a recording Connection, and runs it in
// Node. The bundle takes testdata/smoke-runtime.ts for @parleyrpc/runtime:
// the runtime's functions the golden code calls (serverStream, handle...)
// pass their arguments on to the recorder.
func TestGoldenRuns(t *testing.T) {
	esbuild := nodeTool(t, "esbuild")
	node, err := exec.LookPath("node")
	if err != nil {
		t.Fatalf("node is not on PATH: %v", err)
	}
	bundle := filepath.Join(t.TempDir(), "smoke.mjs")
	runtime, err := filepath.Abs(filepath.Join(goldenRoot, "smoke-runtime.ts"))
	if err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(esbuild, filepath.Join(goldenRoot, "smoke.ts"), "--bundle", "--format=esm",
		"--platform=node", "--log-level=warning", "--alias:@parleyrpc/runtime="+runtime,
		"--outfile="+bundle).CombinedOutput()
	if err != nil {
		t.Fatalf("esbuild: %v\n%s", err, out)
	}
	out, err = exec.Command(node, bundle).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "smoke ok") {
		t.Fatalf("node %s: %v\n%s", bundle, err, out)
	}
}

// TestGoldenParses compiles every golden _parley.ts file on its own with
// esbuild, as bundlers (esbuild, Vite) and Babel-based tools read them:
// stricter than tsc about what a module may bind, such as an import named
// eval.
func TestGoldenParses(t *testing.T) {
	esbuild := nodeTool(t, "esbuild")
	var files []string
	err := filepath.WalkDir(goldenRoot, func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() && strings.HasSuffix(p, "_parley.ts") {
			files = append(files, p)
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(files) == 0 {
		t.Fatalf("no _parley.ts files under %s", goldenRoot)
	}
	args := append([]string{"--format=esm", "--log-level=warning", "--outdir=" + t.TempDir()}, files...)
	if out, err := exec.Command(esbuild, args...).CombinedOutput(); err != nil {
		t.Fatalf("esbuild: %v\n%s", err, out)
	}
}

func runParley(t *testing.T, req *pluginpb.CodeGeneratorRequest, parameter string) *pluginpb.CodeGeneratorResponse {
	t.Helper()
	req = proto.CloneOf(req)
	req.Parameter = proto.String(parameter)
	// Through the wire format, as the plugin sees a request from buf.
	in, err := proto.Marshal(req)
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if err := gents.Run(bytes.NewReader(in), &out); err != nil {
		t.Fatal(err)
	}
	resp := &pluginpb.CodeGeneratorResponse{}
	if err := proto.Unmarshal(out.Bytes(), resp); err != nil {
		t.Fatal(err)
	}
	return resp
}

func runPlugin(t *testing.T, plugin string, req *pluginpb.CodeGeneratorRequest, parameter string) *pluginpb.CodeGeneratorResponse {
	t.Helper()
	req = proto.CloneOf(req)
	req.Parameter = proto.String(parameter)
	in, err := proto.Marshal(req)
	if err != nil {
		t.Fatal(err)
	}
	var stdout, stderr bytes.Buffer
	cmd := exec.Command(plugin)
	cmd.Stdin = bytes.NewReader(in)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("%s: %v\n%s", plugin, err, stderr.Bytes())
	}
	resp := &pluginpb.CodeGeneratorResponse{}
	if err := proto.Unmarshal(stdout.Bytes(), resp); err != nil {
		t.Fatal(err)
	}
	return resp
}

// buildRequest compiles every .proto under dir, keeping comments, with
// dir, proto/ and the well-known types on the import path, as buf would;
// the request generates the case's files and carries all their
// dependencies.
func buildRequest(t *testing.T, dir string) *pluginpb.CodeGeneratorRequest {
	t.Helper()
	req, err := plugintest.RequestDir(dir, "")
	if err != nil {
		t.Fatal(err)
	}
	return req
}

// compareGolden diffs got against the files under dir, or rewrites dir
// with -update.
func compareGolden(t *testing.T, dir string, got map[string]string) {
	t.Helper()
	if *update {
		if err := os.RemoveAll(dir); err != nil {
			t.Fatal(err)
		}
		for name, content := range got {
			p := filepath.Join(dir, filepath.FromSlash(name))
			if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		return
	}
	want := map[string]string{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(p)
		rel, _ := filepath.Rel(dir, p)
		want[filepath.ToSlash(rel)] = string(b)
		return err
	})
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		t.Fatal(err)
	}
	for name := range union(got, want) {
		g, inGot := got[name]
		w, inWant := want[name]
		switch {
		case !inWant:
			t.Errorf("%s: generated but not in %s (run go test -update)", name, dir)
		case !inGot:
			t.Errorf("%s: in %s but no longer generated (run go test -update)", name, dir)
		case g != w:
			t.Errorf("%s differs from %s (run go test -update):\n%s", name, dir, diff(w, g))
		}
	}
}

func union(a, b map[string]string) map[string]bool {
	u := map[string]bool{}
	for k := range a {
		u[k] = true
	}
	for k := range b {
		u[k] = true
	}
	return u
}

// diff shows the first differing lines with a little context.
func diff(want, got string) string {
	w, g := strings.Split(want, "\n"), strings.Split(got, "\n")
	i := 0
	for i < len(w) && i < len(g) && w[i] == g[i] {
		i++
	}
	var b strings.Builder
	from := max(0, i-3)
	for j := from; j < i; j++ {
		fmt.Fprintf(&b, "  %s\n", w[j])
	}
	for j := i; j < min(len(w), i+8); j++ {
		fmt.Fprintf(&b, "- %s\n", w[j])
	}
	for j := i; j < min(len(g), i+8); j++ {
		fmt.Fprintf(&b, "+ %s\n", g[j])
	}
	return b.String()
}
