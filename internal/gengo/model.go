package gengo

import (
	"errors"
	"fmt"
	"path"
	"slices"
	"time"

	"google.golang.org/protobuf/compiler/protogen"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/descriptorpb"

	parleyv1 "github.com/parleyrpc/parley/gen/parley/v1"
	"github.com/parleyrpc/parley/internal/editions"
	"github.com/parleyrpc/parley/internal/parleyopts"
)

// file is one generated Go file: the services of one proto file.
type file struct {
	proto *protogen.File
	// goPackageName is the generated package, "chatv1parley".
	goPackageName string
	// importPath is the generated package's import path,
	// "example.com/gen/chat/v1/chatv1parley".
	importPath protogen.GoImportPath
	// filename is where protogen writes the file,
	// "chat/v1/chatv1parley/chat.parley.go" (before paths= and module=).
	filename string
	// packageDoc is set on one file per generated package.
	packageDoc bool
	// aliases maps each imported message package to the name the file
	// refers to it by.
	aliases  map[protogen.GoImportPath]string
	services []*service
}

// side says which end of a connection implements a service.
type side int

const (
	// sideServer: clients call the service, the server implements it.
	sideServer side = iota
	// sideClient: the server calls the service, clients implement it
	// (events and server-to-client calls).
	sideClient
)

// service is one proto service and the identifiers generated for it.
type service struct {
	proto      *protogen.Service
	side       side
	deprecated bool
	names      serviceNames
	methods    []*method
}

// methodKind is the shape of a method's exchange.
type methodKind int

const (
	kindUnary methodKind = iota
	kindClientStreaming
	kindServerStreaming
	kindBidiStreaming
)

func (k methodKind) String() string {
	switch k {
	case kindUnary:
		return "unary"
	case kindClientStreaming:
		return "client-streaming"
	case kindServerStreaming:
		return "server-streaming"
	case kindBidiStreaming:
		return "bidirectional-streaming"
	}
	return fmt.Sprintf("methodKind(%d)", int(k))
}

// idempotency mirrors parley.Idempotency; render maps it to the runtime's
// constant.
type idempotency int

const (
	idempotencyUnknown idempotency = iota
	idempotencyNoSideEffects
	idempotencyIdempotent
)

// events returns the methods of a client-implemented service that are
// events: the server publishes them to a target and awaits no reply.
func (s *service) events() []*method {
	return slices.DeleteFunc(slices.Clone(s.methods), func(m *method) bool { return !m.event })
}

// calls returns the methods that are called and answered: every method of
// a server-implemented service, the non-events of a client-implemented one.
func (s *service) calls() []*method {
	return slices.DeleteFunc(slices.Clone(s.methods), func(m *method) bool { return m.event })
}

// method is one proto method and what the runtime needs to know about it.
type method struct {
	proto *protogen.Method
	kind  methodKind
	// event is set for a unary method of a client-implemented service that
	// returns google.protobuf.Empty: the server publishes it to a target
	// (one connection, a user, a room, everyone) and no reply comes back.
	event       bool
	deprecated  bool
	timeout     time.Duration
	idempotency idempotency
	names       methodNames
}

// buildModel returns the files to generate, with names decided. It
// refuses, with one error naming every offending service or method, any
// construct the generator cannot emit or whose options would mean nothing:
// streaming methods in services implemented by clients, an event with a
// timeout_ms, an implemented_by value that is neither SERVER nor CLIENT,
// and Parley options that do not read as the plugin's options.proto
// declares them (see parleyopts).
//
// Files of the request that are not generated but share a generated
// package with one that is (the other files of a proto package, imported
// by the one being generated, as when protoc is run once per file) are
// modelled too, for naming only: the identifiers of a package's services
// depend on every file of it, so generating one file alone must name them
// as generating the whole package does.
func buildModel(plugin *protogen.Plugin) ([]*file, error) {
	var (
		files     []*file
		errs      []error
		generated = map[protogen.GoImportPath]bool{}
	)
	for _, pf := range plugin.Files {
		if pf.Generate && len(pf.Services) > 0 {
			generated[newFile(pf).importPath] = true
		}
	}
	for _, pf := range plugin.Files {
		if len(pf.Services) == 0 {
			continue
		}
		f := newFile(pf)
		if !pf.Generate {
			if generated[f.importPath] {
				for _, ps := range pf.Services {
					s, _ := newService(ps) // its refusals are for its own generation
					f.services = append(f.services, s)
				}
				files = append(files, f)
			}
			continue
		}
		if err := refuseEdition(pf); err != nil {
			errs = append(errs, err)
			continue
		}
		for _, ps := range pf.Services {
			s, err := newService(ps)
			if err != nil {
				errs = append(errs, err)
				continue
			}
			f.services = append(f.services, s)
		}
		files = append(files, f)
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	nameFiles(plugin, files)
	return slices.DeleteFunc(files, func(f *file) bool { return !f.proto.Generate }), nil
}

// newFile places the generated file the way connect-go does: in a
// sub-package of the messages' package, named after it, so the message
// package never imports the transport.
func newFile(pf *protogen.File) *file {
	pkg := string(pf.GoPackageName) + "parley"
	return &file{
		proto:         pf,
		goPackageName: pkg,
		importPath:    protogen.GoImportPath(path.Join(string(pf.GoImportPath), pkg)),
		filename: path.Join(
			path.Dir(pf.GeneratedFilenamePrefix),
			pkg,
			path.Base(pf.GeneratedFilenamePrefix)+".parley.go",
		),
	}
}

// deprecation is what the notices of f's deprecated declarations name.
func (f *file) deprecation() deprecation {
	opts, _ := f.proto.Desc.Options().(*descriptorpb.FileOptions)
	return deprecation{path: f.proto.Desc.Path(), whole: opts.GetDeprecated()}
}

func newService(ps *protogen.Service) (*service, error) {
	opts := ps.Desc.Options().(*descriptorpb.ServiceOptions)
	s := &service{
		proto:      ps,
		deprecated: opts.GetDeprecated(),
	}
	var errs []error
	ext, err := parleyopts.Service(PluginName, opts)
	if err != nil {
		errs = append(errs, fmt.Errorf("%s: %s: %s %w", PluginName, ps.Desc.ParentFile().Path(), ps.Desc.FullName(), err))
	}
	switch by := ext.GetImplementedBy(); by {
	case parleyv1.Side_SIDE_UNSPECIFIED, parleyv1.Side_SERVER:
	case parleyv1.Side_CLIENT:
		s.side = sideClient
	default:
		// An open enum takes any number; a side this generator does
		// not know must not quietly become the default.
		errs = append(errs, fmt.Errorf("%s: %s: %s sets option (parley.v1.service).implemented_by = %d, which is not a side %s knows: want SERVER or CLIENT",
			PluginName, ps.Desc.ParentFile().Path(), ps.Desc.FullName(), int32(by), PluginName))
	}
	for _, pm := range ps.Methods {
		m, err := newMethod(pm)
		if err != nil {
			errs = append(errs, err)
		}
		if s.side == sideClient {
			if m.kind != kindUnary {
				errs = append(errs, refusal(pm, "is a "+m.kind.String()+" method in a service implemented by clients "+
					"(option (parley.v1.service).implemented_by = CLIENT); streaming methods in client-implemented services are not supported"))
			}
			m.event = m.kind == kindUnary && pm.Output.Desc.FullName() == emptyMessage
			if m.event && m.timeout > 0 {
				errs = append(errs, refusal(pm, fmt.Sprintf("is an event (it returns google.protobuf.Empty in a service implemented by clients) "+
					"and sets option (parley.v1.method).timeout_ms = %d; events are published without a reply or a deadline, so remove the option",
					m.timeout.Milliseconds())))
			}
		}
		s.methods = append(s.methods, m)
	}
	return s, errors.Join(errs...)
}

// emptyMessage is the response type that makes a method of a
// client-implemented service an event.
const emptyMessage protoreflect.FullName = "google.protobuf.Empty"

// messages returns the message types m's generated code refers to: an
// event's google.protobuf.Empty response never appears.
func (m *method) messages() []*protogen.Message {
	if m.event {
		return []*protogen.Message{m.proto.Input}
	}
	return []*protogen.Message{m.proto.Input, m.proto.Output}
}

// refuseEdition refuses a file of an edition the plugin does not know
// (see editions.Check), naming it.
func refuseEdition(pf *protogen.File) error {
	if err := editions.Check(PluginName, pf.Proto); err != nil {
		return fmt.Errorf("%s: %s: %w", PluginName, pf.Desc.Path(), err)
	}
	return nil
}

func refusal(pm *protogen.Method, why string) error {
	return fmt.Errorf("%s: %s: %s %s", PluginName, pm.Desc.ParentFile().Path(), pm.Desc.FullName(), why)
}

func newMethod(pm *protogen.Method) (*method, error) {
	mo := pm.Desc.Options().(*descriptorpb.MethodOptions)
	m := &method{
		proto:      pm,
		deprecated: mo.GetDeprecated(),
	}
	switch {
	case pm.Desc.IsStreamingClient() && pm.Desc.IsStreamingServer():
		m.kind = kindBidiStreaming
	case pm.Desc.IsStreamingClient():
		m.kind = kindClientStreaming
	case pm.Desc.IsStreamingServer():
		m.kind = kindServerStreaming
	}
	switch mo.GetIdempotencyLevel() {
	case descriptorpb.MethodOptions_NO_SIDE_EFFECTS:
		m.idempotency = idempotencyNoSideEffects
	case descriptorpb.MethodOptions_IDEMPOTENT:
		m.idempotency = idempotencyIdempotent
	}
	ext, err := parleyopts.Method(PluginName, mo)
	if err != nil {
		return m, refusal(pm, err.Error())
	}
	m.timeout = time.Duration(ext.GetTimeoutMs()) * time.Millisecond
	return m, nil
}
