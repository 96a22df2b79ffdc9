package main

import (
	"bytes"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/descriptorpb"
	"google.golang.org/protobuf/types/pluginpb"

	parleyv1 "github.com/parleyrpc/parley/gen/parley/v1"
	"github.com/parleyrpc/parley/internal/plugintest"
)

// TestPlugin runs the built plugin as protoc and buf do: a request on
// stdin, a response on stdout.
func TestPlugin(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the plugin")
	}
	bin := filepath.Join(t.TempDir(), "protoc-gen-parley-go")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}

	// plugin runs the plugin on a golden case's request, as protoc does.
	plugin := func(t *testing.T, caseName, parameter string) (stdout, stderr []byte, err error) {
		t.Helper()
		req, err := plugintest.Request(caseName, parameter)
		if err != nil {
			t.Fatal(err)
		}
		in, err := proto.Marshal(req)
		if err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(bin)
		cmd.Stdin = bytes.NewReader(in)
		var errOut bytes.Buffer
		cmd.Stderr = &errOut
		stdout, err = cmd.Output()
		return stdout, errOut.Bytes(), err
	}
	run := func(t *testing.T, caseName, parameter string) *pluginpb.CodeGeneratorResponse {
		t.Helper()
		out, _, err := plugin(t, caseName, parameter)
		if err != nil {
			t.Fatalf("plugin: %v", err)
		}
		resp := new(pluginpb.CodeGeneratorResponse)
		if err := proto.Unmarshal(out, resp); err != nil {
			t.Fatal(err)
		}
		return resp
	}

	t.Run("plain", func(t *testing.T) {
		resp := run(t, "plain", "paths=source_relative")
		if resp.Error != nil {
			t.Fatal(resp.GetError())
		}
		if len(resp.File) != 1 || resp.File[0].GetName() != "chat/v1/chatv1parley/chat.parley.go" {
			t.Fatalf("files: %v", resp.File)
		}
		if !strings.Contains(resp.File[0].GetContent(), "Timeout:   5 * time.Second,") {
			t.Error("timeout_ms did not reach the output")
		}
	})
	t.Run("module", func(t *testing.T) {
		resp := run(t, "plain", "module=example.com/gen")
		if len(resp.File) != 1 || resp.File[0].GetName() != "chat/v1/chatv1parley/chat.parley.go" {
			t.Fatalf("files: %v", resp.File)
		}
	})
	t.Run("streaming", func(t *testing.T) {
		resp := run(t, "streaming", "")
		if resp.Error != nil {
			t.Fatal(resp.GetError())
		}
		if len(resp.File) != 1 || !strings.Contains(resp.File[0].GetContent(), "Kind:      parley.StreamServer,") {
			t.Errorf("no server-streaming spec in %v", resp.File)
		}
	})
	t.Run("clientside", func(t *testing.T) {
		resp := run(t, "clientside", "")
		if resp.Error != nil {
			t.Fatal(resp.GetError())
		}
		if len(resp.File) != 1 || !strings.Contains(resp.File[0].GetContent(), "func RegisterChatEventsHandler(r parley.Registrar, h ChatEventsHandler) {") {
			t.Errorf("no handler registration in %v", resp.File)
		}
	})
	t.Run("clientstreaming", func(t *testing.T) {
		resp := run(t, "clientstreaming", "")
		want := "protoc-gen-parley-go: chat/v1/chat.proto: chat.v1.ChatEvents.Watch is a server-streaming method in a service implemented by clients"
		if !strings.Contains(resp.GetError(), want) {
			t.Errorf("error %q, want it to contain %q", resp.GetError(), want)
		}
		if len(resp.File) != 0 {
			t.Errorf("wrote %d files despite refusing", len(resp.File))
		}
	})
	t.Run("options that are not Parley's", func(t *testing.T) {
		// A copy of options.proto declaring (parley.v1.service) as a string:
		// its bytes do not decode as Parley's ServiceOptions. The plugin must
		// name the service, not fail to read the request.
		req, err := plugintest.Request("plain", "")
		if err != nil {
			t.Fatal(err)
		}
		opts := req.GetProtoFile()[len(req.GetProtoFile())-1].GetService()[0].GetOptions()
		if opts == nil {
			opts = new(descriptorpb.ServiceOptions)
			req.GetProtoFile()[len(req.GetProtoFile())-1].GetService()[0].Options = opts
		}
		raw := protowire.AppendTag(nil, protowire.Number(parleyv1.E_Service.Field), protowire.BytesType)
		raw = protowire.AppendBytes(raw, []byte("CLIENT"))
		opts.ProtoReflect().SetUnknown(append(opts.ProtoReflect().GetUnknown(), raw...))
		in, err := proto.Marshal(req)
		if err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(bin)
		cmd.Stdin = bytes.NewReader(in)
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("plugin: %v", err)
		}
		resp := new(pluginpb.CodeGeneratorResponse)
		if err := proto.Unmarshal(out, resp); err != nil {
			t.Fatal(err)
		}
		want := "protoc-gen-parley-go: chat/v1/chat.proto: chat.v1.ChatService sets option (parley.v1.service), which does not decode as Parley's parley.v1.ServiceOptions"
		if !strings.HasPrefix(resp.GetError(), want) {
			t.Errorf("error %q, want it to start with %q", resp.GetError(), want)
		}
	})
	t.Run("unknown option", func(t *testing.T) {
		// protoc-gen-parley-ts's options given to the Go plugin by mistake.
		_, stderr, err := plugin(t, "plain", "paths=source_relative,import_extension=js")
		if err == nil {
			t.Fatal("the plugin accepted an unknown option")
		}
		want := `protoc-gen-parley-go: unknown option "import_extension" (known: paths=import|source_relative, module=<prefix>, M<file>=<import path>, annotate_code)`
		if got := strings.TrimSpace(string(stderr)); got != want {
			t.Errorf("stderr %q, want %q", got, want)
		}
	})
	t.Run("version", func(t *testing.T) {
		out, err := exec.Command(bin, "--version").Output()
		if err != nil || string(out) != "protoc-gen-parley-go v0.1.0\n" {
			t.Errorf("--version: %q, %v", out, err)
		}
	})
}
