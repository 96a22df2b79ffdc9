package gents

import (
	"errors"
	"fmt"
	"path"
	"sort"
	"strings"

	parleyv1 "github.com/parleyrpc/parley/gen/parley/v1"
	"github.com/parleyrpc/parley/internal/editions"
	"github.com/parleyrpc/parley/internal/parleyopts"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/descriptorpb"
)

// fileModel is everything one <file>_parley.ts says, with every identifier
// decided; the template only lays it out.
type fileModel struct {
	Name     string // output path, chat/v1/chat_parley.ts
	Preamble string // header comment lines, without a trailing newline
	Imports  []importStmt
	Services []serviceModel
	// Identifiers of imported names, as this file spells them (aliased
	// when a local declaration or another import took the name); empty
	// when the file does not need the name.
	MessageInitShape, CallOptions, Connection, MethodSpec string
	ClientStreamCall, BidiStreamCall                      string
	// The runtime's free functions for streams, events and server->client calls,
	// value imports as the file spells them; empty when the file does not
	// call them. (They are functions rather than Connection methods so that
	// an app making only unary calls does not bundle them.)
	ServerStream, ClientStream, BidiStream, Handle, OnEvent string
}

type importStmt struct {
	TypeOnly bool
	From     string
	Names    []importName
}

type importName struct{ Name, Alias string }

// Clause is the text between the braces: "A, B as B$1".
func (s importStmt) Clause() string {
	parts := make([]string, len(s.Names))
	for i, n := range s.Names {
		parts[i] = n.Name
		if n.Alias != n.Name {
			parts[i] += " as " + n.Alias
		}
	}
	return strings.Join(parts, ", ")
}

// serviceModel is one service with methods. A service clients call gets a
// client class; a service clients implement (implemented_by = CLIENT) gets
// a subscriber class for its events and a handler interface, with its
// registration function, for its calls, each only if it has any.
type serviceModel struct {
	FullName   string
	ClientSide bool // implemented_by = CLIENT
	Methods    []methodModel

	ClientName string // ChatServiceClient; "" for a client-side service
	ClientDoc  string // JSDoc text, one line per element, no comment markers

	SubscriberName string // ChatEventsSubscriber; "" without events
	SubscriberDoc  string

	HandlerName  string // ChatEventsHandler; "" without calls
	RegisterName string // registerChatEventsHandler
	HandlerDoc   string
	RegisterDoc  string
}

type methodModel struct {
	FullName  string // chat.v1.ChatService.Join
	Procedure string // /chat.v1.ChatService/Join
	SpecName  string // ChatServiceJoinSpec
	Kind      string // MethodSpec.kind: "" (unary), "server_streaming", ...
	// Event: a unary method of a client-side service returning
	// google.protobuf.Empty, which the server publishes. Handled: any other
	// method of a client-side service, which the server calls and a
	// handler answers. Neither: a method of a service clients call.
	Event, Handled bool
	// LocalName is the client's or the handler's method (join), or the
	// subscriber's for an event (onMessagePosted).
	LocalName string
	// Member is LocalName as the handler interface declares it: quoted
	// where the bare name means something else in an interface ("new").
	Member     string
	Input      messageRef
	Output     messageRef
	TimeoutMs  uint32 // 0: none set
	Idempotent bool
	SpecDoc    string
	Doc        string
}

// messageRef names a message as this file spells it.
type messageRef struct {
	Schema string // JoinRequestSchema: a value
	Shape  string // JoinRequest: a type
}

// generator holds what is shared by the files of one request.
type generator struct {
	opts      Options
	parameter string
	reg       *protoregistry.Files
	raw       map[string]*descriptorpb.FileDescriptorProto
	toGen     map[string]bool
	esNames   map[string]esFileNames
}

// wktImportPaths is protobuf-es's wktPublicImportPaths: the well-known types
// ship with @bufbuild/protobuf and are imported from there.
var wktImportPaths = map[string]string{
	"google/protobuf/compiler/plugin.proto":        "@bufbuild/protobuf/wkt",
	"google/protobuf/any.proto":                    "@bufbuild/protobuf/wkt",
	"google/protobuf/api.proto":                    "@bufbuild/protobuf/wkt/google/protobuf/api_pb.js",
	"google/protobuf/c_sharp_features.proto":       "@bufbuild/protobuf/wkt/google/protobuf/c_sharp_features_pb.js",
	"google/protobuf/cpp_features.proto":           "@bufbuild/protobuf/wkt/google/protobuf/cpp_features_pb.js",
	"google/protobuf/cpp_file_options.proto":       "@bufbuild/protobuf/wkt/google/protobuf/cpp_file_options_pb.js",
	"google/protobuf/cpp_options.proto":            "@bufbuild/protobuf/wkt/google/protobuf/cpp_options_pb.js",
	"google/protobuf/descriptor.proto":             "@bufbuild/protobuf/wkt",
	"google/protobuf/duration.proto":               "@bufbuild/protobuf/wkt",
	"google/protobuf/empty.proto":                  "@bufbuild/protobuf/wkt",
	"google/protobuf/field_mask.proto":             "@bufbuild/protobuf/wkt",
	"google/protobuf/go_features.proto":            "@bufbuild/protobuf/wkt/google/protobuf/go_features_pb.js",
	"google/protobuf/java_features.proto":          "@bufbuild/protobuf/wkt/google/protobuf/java_features_pb.js",
	"google/protobuf/json_enumvalue_options.proto": "@bufbuild/protobuf/wkt/google/protobuf/json_enumvalue_options_pb.js",
	"google/protobuf/json_options.proto":           "@bufbuild/protobuf/wkt/google/protobuf/json_options_pb.js",
	"google/protobuf/source_context.proto":         "@bufbuild/protobuf/wkt/google/protobuf/source_context_pb.js",
	"google/protobuf/struct.proto":                 "@bufbuild/protobuf/wkt",
	"google/protobuf/timestamp.proto":              "@bufbuild/protobuf/wkt",
	"google/protobuf/type.proto":                   "@bufbuild/protobuf/wkt/google/protobuf/type_pb.js",
	"google/protobuf/wrappers.proto":               "@bufbuild/protobuf/wkt",
}

// imports collects the names a file imports, in order of first use, so the
// import block reads in the order the file needs things.
type imports struct {
	order []string // module paths
	byMod map[string]map[string]*importUse
	names []*importUse // in order of first use
}

type importUse struct {
	from, name string
	value      bool // used as a value somewhere: needs a value import
	alias      string
}

func (im *imports) use(from, name string, value bool) *importUse {
	if im.byMod == nil {
		im.byMod = map[string]map[string]*importUse{}
	}
	mod, ok := im.byMod[from]
	if !ok {
		mod = map[string]*importUse{}
		im.byMod[from] = mod
		im.order = append(im.order, from)
	}
	u, ok := mod[name]
	if !ok {
		u = &importUse{from: from, name: name}
		mod[name] = u
		im.names = append(im.names, u)
	}
	u.value = u.value || value
	return u
}

// statements returns one type-only and one value import per module, as
// protoplugin writes them, names sorted.
func (im *imports) statements() []importStmt {
	var out []importStmt
	for _, from := range im.order {
		var types, values []importName
		for _, u := range im.names {
			if u.from != from {
				continue
			}
			n := importName{Name: u.name, Alias: u.alias}
			if u.value {
				values = append(values, n)
			} else {
				types = append(types, n)
			}
		}
		for _, s := range []importStmt{{TypeOnly: true, From: from, Names: types}, {From: from, Names: values}} {
			if len(s.Names) == 0 {
				continue
			}
			sort.Slice(s.Names, func(i, j int) bool { return s.Names[i].Name < s.Names[j].Name })
			out = append(out, s)
		}
	}
	return out
}

// buildFile models the output for one proto file, or returns nil when the
// file declares no methods. A service without methods gets no client: it
// would have nothing to call.
func (g *generator) buildFile(fd protoreflect.FileDescriptor) (*fileModel, error) {
	if !hasMethods(fd) {
		return nil, nil
	}
	if err := editions.Check(PluginName, g.raw[fd.Path()]); err != nil {
		return nil, err
	}
	if err := refuseUnsupported(fd); err != nil {
		return nil, err
	}
	base := strings.TrimSuffix(fd.Path(), ".proto")
	m := &fileModel{Name: base + "_parley.ts", Preamble: g.preamble(fd)}

	// Our own declarations claim their names first; imports are aliased
	// around them, as protoplugin does.
	top := newScope(globalsWeUse, unbindable)
	var services []protoreflect.ServiceDescriptor // those modelled, in order
	for i := 0; i < fd.Services().Len(); i++ {
		sd := fd.Services().Get(i)
		if sd.Methods().Len() == 0 {
			continue
		}
		services = append(services, sd)
		m.Services = append(m.Services, buildService(fd, sd, top))
	}

	// The runtime's names come first, so the import block starts with them
	// and they keep their names when a message is named alike. Each is
	// imported only if the file spells it.
	var need struct {
		initShape, callOptions, connection     bool
		clientStreamCall, bidiStreamCall       bool
		serverStream, clientStream, bidiStream bool
		handle, onEvent                        bool
	}
	for _, s := range m.Services {
		need.connection = true
		for _, meth := range s.Methods {
			switch {
			case meth.Event:
				need.onEvent = true
			case meth.Handled:
				need.initShape = true
				need.handle = true
			default:
				need.callOptions = true
				switch meth.Kind {
				case kindUnary:
					need.initShape = true
				case kindServerStreaming:
					need.initShape = true
					need.serverStream = true
				case kindClientStreaming:
					need.clientStreamCall = true
					need.clientStream = true
				case kindBidiStreaming:
					need.bidiStreamCall = true
					need.bidiStream = true
				}
			}
		}
	}
	var im imports
	runtimeName := func(from, name string, needed, value bool) *importUse {
		if !needed {
			return &importUse{}
		}
		return im.use(from, name, value)
	}
	rt := runtimeImportFrom(m.Name, g.opts.RuntimeImport)
	mis := runtimeName(protobufImport, "MessageInitShape", need.initShape, false)
	bidiStreamCall := runtimeName(rt, "BidiStreamCall", need.bidiStreamCall, false)
	callOptions := runtimeName(rt, "CallOptions", need.callOptions, false)
	clientStreamCall := runtimeName(rt, "ClientStreamCall", need.clientStreamCall, false)
	connection := runtimeName(rt, "Connection", need.connection, false)
	methodSpec := runtimeName(rt, "MethodSpec", true, false)
	bidiStream := runtimeName(rt, "bidiStream", need.bidiStream, true)
	clientStream := runtimeName(rt, "clientStream", need.clientStream, true)
	handle := runtimeName(rt, "handle", need.handle, true)
	onEvent := runtimeName(rt, "onEvent", need.onEvent, true)
	serverStream := runtimeName(rt, "serverStream", need.serverStream, true)

	// A message reference is filled in once every import has its alias.
	// Every schema is a value of some spec; a shape is imported only when
	// a signature spells it.
	type messageUse struct {
		ref           *messageRef
		schema, shape *importUse
	}
	var uses []messageUse
	useMessage := func(ref *messageRef, md protoreflect.MessageDescriptor, shape bool) {
		from := g.importPath(m.Name, md.ParentFile())
		names := g.namesOf(md.ParentFile())
		u := messageUse{ref: ref, schema: im.use(from, names.schema[md.FullName()], true), shape: &importUse{}}
		if shape {
			u.shape = im.use(from, names.shape[md.FullName()], false)
		}
		uses = append(uses, u)
	}
	// Message references are resolved once every method sits in its final
	// place (appending moves structs), then aliased.
	for si := range m.Services {
		sd := services[si]
		for mi := range m.Services[si].Methods {
			md := sd.Methods().Get(mi)
			meth := &m.Services[si].Methods[mi]
			inShape, outShape := meth.shapesSpelled()
			useMessage(&meth.Input, md.Input(), inShape)
			useMessage(&meth.Output, md.Output(), outShape)
		}
	}
	for _, u := range im.names {
		u.alias = top.alias(u.name)
	}
	for _, u := range uses {
		u.ref.Schema, u.ref.Shape = u.schema.alias, u.shape.alias
	}
	m.MessageInitShape, m.CallOptions, m.Connection, m.MethodSpec = mis.alias, callOptions.alias, connection.alias, methodSpec.alias
	m.ClientStreamCall, m.BidiStreamCall = clientStreamCall.alias, bidiStreamCall.alias
	m.ServerStream, m.ClientStream, m.BidiStream, m.Handle, m.OnEvent = serverStream.alias, clientStream.alias, bidiStream.alias, handle.alias, onEvent.alias
	m.Imports = im.statements()
	return m, nil
}

// buildService models one service with methods, declaring its names in top.
func buildService(fd protoreflect.FileDescriptor, sd protoreflect.ServiceDescriptor, top *scope) serviceModel {
	svcID := esIdentifier(sd)
	s := serviceModel{
		FullName:   string(sd.FullName()),
		ClientSide: serviceOptions(sd).GetImplementedBy() == parleyv1.Side_CLIENT,
	}
	// A file deprecated as a whole deprecates its services, as
	// protoc-gen-es marks them in the _pb.ts beside this file.
	serviceDeprecated := isDeprecated(sd.Options()) || isDeprecated(fd.Options())
	serviceDoc := jsDocText(fd, sd, "service "+string(sd.FullName()), serviceDeprecated)
	var events, calls int
	for j := 0; j < sd.Methods().Len(); j++ {
		if s.ClientSide && isEvent(sd.Methods().Get(j)) {
			events++
		} else {
			calls++
		}
	}
	// The service's own declarations come before its specs, in the order
	// the file declares them.
	switch {
	case !s.ClientSide:
		s.ClientName = top.declare(svcID + "Client")
		s.ClientDoc = serviceDoc
	default:
		if events > 0 {
			s.SubscriberName = top.declare(svcID + "Subscriber")
			s.SubscriberDoc = subscriberDoc(s.FullName, serviceDoc)
		}
		if calls > 0 {
			s.HandlerName = top.declare(svcID + "Handler")
			s.RegisterName = top.declare("register" + svcID + "Handler")
			s.HandlerDoc = handlerDoc(s, serviceDoc)
			s.RegisterDoc = registerDoc(s, serviceDoc)
		}
	}
	members := newMemberScope() // the client's or the handler's
	subscriber := newMemberScope()
	for j := 0; j < sd.Methods().Len(); j++ {
		md := sd.Methods().Get(j)
		mo := methodOptions(md)
		meth := methodModel{
			FullName:   string(md.FullName()),
			Procedure:  "/" + string(sd.FullName()) + "/" + string(md.Name()),
			SpecName:   top.declare(svcID + upperFirst(string(md.Name())) + "Spec"),
			Kind:       kindOf(md),
			TimeoutMs:  mo.parley.GetTimeoutMs(),
			Idempotent: mo.idempotent,
		}
		from := "rpc " + string(md.FullName())
		switch {
		case s.ClientSide && isEvent(md):
			meth.Event = true
			meth.LocalName = subscriber.declare("on" + upperFirst(string(md.Name())))
			meth.Doc = jsDocText(fd, md, from, mo.deprecated, eventUsage())
		case s.ClientSide:
			meth.Handled = true
			meth.LocalName = members.declare(esMethodLocalName(string(md.Name())))
			meth.Member = interfaceMember(meth.LocalName)
			meth.Doc = jsDocText(fd, md, from, mo.deprecated, handledUsage(fd, md))
		default:
			meth.LocalName = members.declare(esMethodLocalName(string(md.Name())))
			meth.Doc = jsDocText(fd, md, from, mo.deprecated, streamUsage(meth))
		}
		// A deprecated service's specs are deprecated too, as the Go
		// generator's procedure constants are.
		meth.SpecDoc = specDoc(meth, mo.deprecated || serviceDeprecated)
		s.Methods = append(s.Methods, meth)
	}
	return s
}

// shapesSpelled reports whether m's generated signatures spell its input's
// and output's shape types (its schemas are always spelled, by its spec).
func (m *methodModel) shapesSpelled() (input, output bool) {
	switch {
	case m.Event:
		return true, false
	case m.Handled:
		return true, true
	}
	switch m.Kind {
	case kindUnary, kindServerStreaming:
		return true, true
	}
	return false, false // ClientStreamCall and BidiStreamCall take schemas
}

// The kinds of a method, as MethodSpec.kind spells them; a unary spec
// leaves kind out.
const (
	kindUnary           = ""
	kindServerStreaming = "server_streaming"
	kindClientStreaming = "client_streaming"
	kindBidiStreaming   = "bidi_streaming"
)

func kindOf(md protoreflect.MethodDescriptor) string {
	switch {
	case md.IsStreamingClient() && md.IsStreamingServer():
		return kindBidiStreaming
	case md.IsStreamingClient():
		return kindClientStreaming
	case md.IsStreamingServer():
		return kindServerStreaming
	}
	return kindUnary
}

// emptyMessage is the response type that makes a unary method of a
// client-implemented service an event: the server publishes it and clients
// send no reply. (internal/gengo decides alike.)
const emptyMessage protoreflect.FullName = "google.protobuf.Empty"

func isEvent(md protoreflect.MethodDescriptor) bool {
	return kindOf(md) == kindUnary && md.Output().FullName() == emptyMessage
}

// refuseUnsupported names every service and method this plugin cannot
// generate, or whose Parley options would mean nothing: the streaming
// methods of services implemented by clients, events with a timeout_ms,
// an implemented_by that is neither SERVER nor CLIENT, and Parley options
// that do not read as the plugin's options.proto declares them (see
// parleyopts). (internal/gengo refuses the same.)
func refuseUnsupported(fd protoreflect.FileDescriptor) error {
	var errs []error
	for i := 0; i < fd.Services().Len(); i++ {
		sd := fd.Services().Get(i)
		so, err := parleyopts.Service(PluginName, sd.Options().(*descriptorpb.ServiceOptions))
		if err != nil {
			errs = append(errs, fmt.Errorf("%s %w", sd.FullName(), err))
		}
		for j := 0; j < sd.Methods().Len(); j++ {
			md := sd.Methods().Get(j)
			if _, err := parleyopts.Method(PluginName, md.Options().(*descriptorpb.MethodOptions)); err != nil {
				errs = append(errs, fmt.Errorf("%s %w", md.FullName(), err))
			}
		}
		switch by := so.GetImplementedBy(); by {
		case parleyv1.Side_CLIENT:
		case parleyv1.Side_SIDE_UNSPECIFIED, parleyv1.Side_SERVER:
			continue
		default:
			// An open enum takes any number; a side this generator does
			// not know must not quietly become the default.
			errs = append(errs, fmt.Errorf("%s sets option (parley.v1.service).implemented_by = %d, which is not a side %s knows: want SERVER or CLIENT",
				sd.FullName(), int32(by), PluginName))
			continue
		}
		for j := 0; j < sd.Methods().Len(); j++ {
			md := sd.Methods().Get(j)
			var kind string
			switch kindOf(md) {
			case kindBidiStreaming:
				kind = "a bidirectional-streaming"
			case kindClientStreaming:
				kind = "a client-streaming"
			case kindServerStreaming:
				kind = "a server-streaming"
			default:
				if ms := methodOptions(md).parley.GetTimeoutMs(); isEvent(md) && ms > 0 {
					errs = append(errs, fmt.Errorf("%s is an event (it returns google.protobuf.Empty in a service implemented by clients) "+
						"and sets option (parley.v1.method).timeout_ms = %d; events are published without a reply or a deadline, so remove the option",
						md.FullName(), ms))
				}
				continue
			}
			errs = append(errs, fmt.Errorf("%s is %s method in a service implemented by clients "+
				"(option (parley.v1.service).implemented_by = CLIENT); streaming methods in client-implemented services are not supported",
				md.FullName(), kind))
		}
	}
	return errors.Join(errs...)
}

// namesOf returns protoc-gen-es's identifiers for the declarations of fd.
func (g *generator) namesOf(fd protoreflect.FileDescriptor) esFileNames {
	n, ok := g.esNames[fd.Path()]
	if !ok {
		n = computeESNames(fd)
		g.esNames[fd.Path()] = n
	}
	return n
}

// importPath is the module a file importing from fd's _pb file names: a
// well-known type's public path, else the _pb file relative to the
// importer, with the configured extension (protoplugin's generateFilePath,
// makeImportPathRelative and rewriteImportPath).
func (g *generator) importPath(importer string, fd protoreflect.FileDescriptor) string {
	if p, ok := wktImportPaths[fd.Path()]; ok && !g.toGen[fd.Path()] {
		return p
	}
	target := strings.TrimSuffix(fd.Path(), ".proto") + "_pb"
	rel := relPath(path.Dir(importer), target)
	switch g.opts.ImportExtension {
	case "js":
		rel += ".js"
	case "ts":
		rel += ".ts"
	}
	return rel
}

// runtimeImportFrom is the runtime_import module as the file at importer
// spells it: a package name as it is; a relative path ("./vendor/parley.js")
// relative to the output root, as protoc-gen-es reads relative paths, so it
// is rewritten relative to each importing file.
func runtimeImportFrom(importer, module string) string {
	if !strings.HasPrefix(module, "./") && !strings.HasPrefix(module, "../") {
		return module
	}
	return relPath(path.Dir(importer), path.Clean(module))
}

// relPath is target relative to dir, always starting with ./ or ../.
func relPath(dir, target string) string {
	a := strings.Split(dir, "/")
	if dir == "." || dir == "" {
		a = nil
	}
	b := strings.Split(target, "/")
	n := 0
	for n < len(a) && n < len(b)-1 && a[n] == b[n] {
		n++
	}
	var parts []string
	for range a[n:] {
		parts = append(parts, "..")
	}
	parts = append(parts, b[n:]...)
	rel := strings.Join(parts, "/")
	if !strings.HasPrefix(rel, "../") {
		rel = "./" + rel
	}
	return rel
}

type methodOpts struct {
	parley     *parleyv1.MethodOptions
	idempotent bool
	deprecated bool
}

// methodOptions reads a method's options. The Parley option is empty when
// it does not read, which refuseUnsupported has refused before.
func methodOptions(md protoreflect.MethodDescriptor) methodOpts {
	opts := md.Options().(*descriptorpb.MethodOptions)
	mo := methodOpts{deprecated: opts.GetDeprecated()}
	switch opts.GetIdempotencyLevel() {
	case descriptorpb.MethodOptions_IDEMPOTENT, descriptorpb.MethodOptions_NO_SIDE_EFFECTS:
		mo.idempotent = true
	}
	mo.parley, _ = parleyopts.Method(PluginName, opts)
	return mo
}

// serviceOptions reads a service's Parley option, empty when it does not
// read, which refuseUnsupported has refused before.
func serviceOptions(sd protoreflect.ServiceDescriptor) *parleyv1.ServiceOptions {
	so, _ := parleyopts.Service(PluginName, sd.Options().(*descriptorpb.ServiceOptions))
	return so
}

func isDeprecated(opts proto.Message) bool {
	switch o := opts.(type) {
	case *descriptorpb.ServiceOptions:
		return o.GetDeprecated()
	case *descriptorpb.MethodOptions:
		return o.GetDeprecated()
	case *descriptorpb.FileOptions:
		return o.GetDeprecated()
	}
	return false
}

func upperFirst(s string) string {
	if s == "" {
		return s
	}
	return strings.ToUpper(s[:1]) + s[1:]
}

func hasMethods(fd protoreflect.FileDescriptor) bool {
	for i := 0; i < fd.Services().Len(); i++ {
		if fd.Services().Get(i).Methods().Len() > 0 {
			return true
		}
	}
	return false
}
