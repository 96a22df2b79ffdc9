package gengo

import (
	"go/format"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/compiler/protogen"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/descriptorpb"
	"google.golang.org/protobuf/types/pluginpb"

	parleyv1 "github.com/parleyrpc/parley/gen/parley/v1"
	"github.com/parleyrpc/parley/internal/plugintest"
)

func buildCase(t *testing.T, caseName string) []*file {
	t.Helper()
	req, err := plugintest.Request(caseName, "paths=source_relative")
	if err != nil {
		t.Fatal(err)
	}
	plugin, err := protogen.Options{}.New(req)
	if err != nil {
		t.Fatal(err)
	}
	files, err := buildModel(plugin)
	if err != nil {
		t.Fatal(err)
	}
	return files
}

// TestModelReadsMethodOptions checks (parley.v1.method).timeout_ms and
// idempotency_level reach the model from a compiled proto, not only
// protoc's.
func TestModelReadsMethodOptions(t *testing.T) {
	files := buildCase(t, "plain")
	if len(files) != 1 || len(files[0].services) != 1 {
		t.Fatalf("got %d files, want one with one service", len(files))
	}
	f := files[0]
	if f.filename != "chat/v1/chatv1parley/chat.parley.go" || f.importPath != "example.com/gen/chat/v1/chatv1parley" || f.goPackageName != "chatv1parley" {
		t.Errorf("placed at %s, %s, package %s", f.filename, f.importPath, f.goPackageName)
	}
	want := map[string]struct {
		timeout     time.Duration
		idempotency idempotency
	}{
		"Join":    {5 * time.Second, idempotencyUnknown},
		"Post":    {0, idempotencyIdempotent},
		"History": {1500 * time.Millisecond, idempotencyNoSideEffects},
		"Leave":   {0, idempotencyUnknown},
	}
	for _, m := range f.services[0].methods {
		w := want[m.names.Method]
		if m.timeout != w.timeout || m.idempotency != w.idempotency || m.kind != kindUnary {
			t.Errorf("%s: timeout %v, idempotency %d, kind %v; want %v, %d, unary", m.names.Method, m.timeout, m.idempotency, m.kind, w.timeout, w.idempotency)
		}
	}
}

func TestRefusals(t *testing.T) {
	for caseName, want := range map[string]string{
		"clientstreaming": "protoc-gen-parley-go: chat/v1/chat.proto: chat.v1.ChatEvents.Watch is a server-streaming method in a service implemented by clients " +
			"(option (parley.v1.service).implemented_by = CLIENT); streaming methods in client-implemented services are not supported\n" +
			"protoc-gen-parley-go: chat/v1/chat.proto: chat.v1.ChatEvents.Talk is a bidirectional-streaming method in a service implemented by clients",
	} {
		req, err := plugintest.Request(caseName, "")
		if err != nil {
			t.Fatal(err)
		}
		resp, err := plugintest.Run(req, protogen.Options{}, Generate)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(resp.GetError(), want) {
			t.Errorf("%s: error %q does not contain %q", caseName, resp.GetError(), want)
		}
		if len(resp.File) != 0 {
			t.Errorf("%s: wrote %d files despite refusing", caseName, len(resp.File))
		}
	}
}

// TestModelReadsKindsAndEvents checks streaming kinds, sides and events
// reach the model: an event is a unary method of a client-implemented
// service returning google.protobuf.Empty, and nothing else is.
func TestModelReadsKindsAndEvents(t *testing.T) {
	files := buildCase(t, "mixed")
	if len(files) != 1 || len(files[0].services) != 2 {
		t.Fatalf("got %d files, want one with two services", len(files))
	}
	type want struct {
		kind  methodKind
		event bool
	}
	for i, w := range []struct {
		side    side
		methods map[string]want
	}{
		{sideServer, map[string]want{
			"Join": {kindUnary, false}, "Tail": {kindServerStreaming, false}, "Upload": {kindClientStreaming, false},
			"Chat": {kindBidiStreaming, false}, "Ping": {kindUnary, false},
		}},
		{sideClient, map[string]want{
			"MessagePosted": {kindUnary, true}, "ConfirmLeave": {kindUnary, false},
			"Kicked": {kindUnary, true}, "Status": {kindUnary, false},
		}},
	} {
		s := files[0].services[i]
		if s.side != w.side {
			t.Errorf("%s: side %d, want %d", s.names.Base, s.side, w.side)
		}
		if len(s.methods) != len(w.methods) {
			t.Errorf("%s: %d methods, want %d", s.names.Base, len(s.methods), len(w.methods))
		}
		for _, m := range s.methods {
			if got := (want{m.kind, m.event}); got != w.methods[m.names.Method] {
				t.Errorf("%s.%s: %+v, want %+v", s.names.Base, m.names.Method, got, w.methods[m.names.Method])
			}
		}
		if got := len(s.events()) + len(s.calls()); got != len(s.methods) {
			t.Errorf("%s: %d events and calls, want %d", s.names.Base, got, len(s.methods))
		}
	}
}

// TestClientServiceNames checks the identifiers of client-implemented
// services, and that derived names which collide are escaped on the later
// service.
func TestClientServiceNames(t *testing.T) {
	files := buildCase(t, "eventclash")
	got := map[string]serviceNames{}
	for _, s := range files[0].services {
		got[string(s.proto.Desc.Name())] = s.names
	}
	for service, want := range map[string][]string{
		"Alerts":              {"AlertsPublisher", "NewAlertsPublisher", "AlertsClient", "AlertsHandler", "RegisterAlertsHandler", "UnimplementedAlertsHandler"},
		"NewAlerts":           {"NewAlerts_Publisher", "NewNewAlerts_Publisher", "NewAlerts_Client", "NewAlerts_Handler", "RegisterNewAlerts_Handler", "UnimplementedNewAlerts_Handler"},
		"RegisterAlerts":      {"RegisterAlerts_Publisher", "NewRegisterAlerts_Publisher", "RegisterAlerts_Client", "RegisterAlerts_Handler", "RegisterRegisterAlerts_Handler", "UnimplementedRegisterAlerts_Handler"},
		"UnimplementedAlerts": {"UnimplementedAlerts_Publisher", "NewUnimplementedAlerts_Publisher", "UnimplementedAlerts_Client", "UnimplementedAlerts_Handler", "RegisterUnimplementedAlerts_Handler", "UnimplementedUnimplementedAlerts_Handler"},
		"RoomPublisher":       {"", "", "RoomPublisherClient", "", "", ""},
	} {
		n := got[service]
		if have := []string{n.Publisher, n.NewPublisher, n.Client, n.Handler, n.RegisterHandler, n.UnimplementedHandler}; !slices.Equal(have, want) {
			t.Errorf("%s: names %q, want %q", service, have, want)
		}
	}
	if aliases := files[0].aliases; aliases["example.com/gen/clash/v1/event"] != "event1" {
		t.Errorf("the message package event is imported as %q, want event1 (event is a parameter)", aliases["example.com/gen/clash/v1/event"])
	}
}

func TestUnexport(t *testing.T) {
	for in, want := range map[string]string{
		"ChatService": "chatService",
		"URLService":  "urlService",
		"URL":         "url",
		"X":           "x",
		"XFoo":        "xFoo",
		"FooBar_":     "fooBar_",
		"ÉtéService":  "étéService",
	} {
		if got := unexport(in); got != want {
			t.Errorf("unexport(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestProtoLines(t *testing.T) {
	long := strings.Repeat("word ", 30)
	c := protogen.Comments(" First line.\n\n\n " + long + "\n   indented code " + long + "\n")
	got := protoLines(c)
	if got[0] != "First line." || got[1] != "" || got[2] == "" {
		t.Errorf("paragraphs not kept: %q", got)
	}
	for _, line := range got {
		if len(line) > wrapColumn && !strings.HasPrefix(line, "  indented") {
			t.Errorf("line not wrapped: %q", line)
		}
	}
	if last := got[len(got)-1]; !strings.HasPrefix(last, "  indented code") {
		t.Errorf("indented line was changed: %q", last)
	}
}

// TestJavadocComments checks a /** ... */ comment loses the star protoc
// leaves from its opening, so its text is not a list item or a code block.
func TestJavadocComments(t *testing.T) {
	for c, want := range map[protogen.Comments][]string{
		"*\n Export writes.\n\n Its second paragraph.\n": {"Export writes.", "", "Its second paragraph."},
		"* Import reads. ":             {"Import reads."},
		" * a list item\n * another\n": {"* a list item", "* another"},
	} {
		if got := protoLines(c); !slices.Equal(got, want) {
			t.Errorf("protoLines(%q) = %q, want %q", c, got, want)
		}
	}
}

// TestDeprecatedParagraph checks a "Deprecated:" notice in a proto comment
// becomes a paragraph of its own, as Go's tools need, even when the proto
// writes it on the line after the text, and is not added twice.
func TestDeprecatedParagraph(t *testing.T) {
	for _, c := range []struct {
		comment protogen.Comments
		want    []string
	}{
		{" Clear deletes.\n Deprecated: use Purge.\n", []string{"Clear deletes.", "", "Deprecated: use Purge."}},
		{" Clear deletes.\n\n Deprecated: use Purge.\n", []string{"Clear deletes.", "", "Deprecated: use Purge."}},
		{" Clear deletes.\n", []string{"Clear deletes.", "", "Deprecated: Marked as deprecated in x.proto."}},
		{" Clear, not Deprecated: yet.\n", []string{"Clear, not Deprecated: yet.", "", "Deprecated: Marked as deprecated in x.proto."}},
	} {
		got := new(doc).proto(c.comment).deprecated(true, deprecation{path: "x.proto"}).lines
		if !slices.Equal(got, c.want) {
			t.Errorf("comment %q: got %q, want %q", c.comment, got, c.want)
		}
	}
}

// TestEmptyService checks a service without methods yields a client and a
// server with nothing in them, and no empty declaration blocks.
func TestEmptyService(t *testing.T) {
	req := &pluginpb.CodeGeneratorRequest{
		FileToGenerate: []string{"empty/v1/empty.proto"},
		ProtoFile: []*descriptorpb.FileDescriptorProto{{
			Name:    proto.String("empty/v1/empty.proto"),
			Package: proto.String("empty.v1"),
			Syntax:  proto.String("proto3"),
			Options: &descriptorpb.FileOptions{GoPackage: proto.String("example.com/gen/empty/v1;emptyv1")},
			Service: []*descriptorpb.ServiceDescriptorProto{{Name: proto.String("EmptyService")}},
		}},
	}
	resp, err := plugintest.Run(req, protogen.Options{}, Generate)
	if err != nil {
		t.Fatal(err)
	}
	if resp.Error != nil || len(resp.File) != 1 {
		t.Fatalf("error %q, %d files", resp.GetError(), len(resp.File))
	}
	src := resp.File[0].GetContent()
	if _, err := format.Source([]byte(src)); err != nil {
		t.Fatalf("output does not parse: %v\n%s", err, src)
	}
	for _, unwanted := range []string{"const ()", "var ()", "\"context\""} {
		if strings.Contains(src, unwanted) {
			t.Errorf("output contains %s:\n%s", unwanted, src)
		}
	}
	for _, wanted := range []string{"type EmptyServiceClient interface{}", "func RegisterEmptyServiceServer(r parley.Registrar, impl EmptyServiceServer) {"} {
		if !strings.Contains(src, wanted) {
			t.Errorf("output lacks %s:\n%s", wanted, src)
		}
	}
}

// TestEmptyClientService checks a client-implemented service without
// methods yields an empty handler side and neither publisher nor client.
func TestEmptyClientService(t *testing.T) {
	opts := &descriptorpb.ServiceOptions{}
	proto.SetExtension(opts, parleyv1.E_Service, &parleyv1.ServiceOptions{ImplementedBy: parleyv1.Side_CLIENT})
	req := &pluginpb.CodeGeneratorRequest{
		FileToGenerate: []string{"empty/v1/empty.proto"},
		ProtoFile: []*descriptorpb.FileDescriptorProto{{
			Name:    proto.String("empty/v1/empty.proto"),
			Package: proto.String("empty.v1"),
			Syntax:  proto.String("proto3"),
			Options: &descriptorpb.FileOptions{GoPackage: proto.String("example.com/gen/empty/v1;emptyv1")},
			Service: []*descriptorpb.ServiceDescriptorProto{{Name: proto.String("EmptyEvents"), Options: opts}},
		}},
	}
	resp, err := plugintest.Run(req, protogen.Options{}, Generate)
	if err != nil {
		t.Fatal(err)
	}
	if resp.Error != nil || len(resp.File) != 1 {
		t.Fatalf("error %q, %d files", resp.GetError(), len(resp.File))
	}
	src := resp.File[0].GetContent()
	if _, err := format.Source([]byte(src)); err != nil {
		t.Fatalf("output does not parse: %v\n%s", err, src)
	}
	for _, unwanted := range []string{"const ()", "var ()", "\"context\"", "Publisher", "EmptyEventsClient"} {
		if strings.Contains(src, unwanted) {
			t.Errorf("output contains %s:\n%s", unwanted, src)
		}
	}
	for _, wanted := range []string{"type EmptyEventsHandler interface{}", "func RegisterEmptyEventsHandler(r parley.Registrar, h EmptyEventsHandler) {", "type UnimplementedEmptyEventsHandler struct{}"} {
		if !strings.Contains(src, wanted) {
			t.Errorf("output lacks %s:\n%s", wanted, src)
		}
	}
}
