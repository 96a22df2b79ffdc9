package gengo

import (
	"fmt"
	"go/token"
	"path"
	"unicode"

	"google.golang.org/protobuf/compiler/protogen"
)

// This file decides every identifier the generated code declares or
// imports under. It is the only place that escapes names: render uses what
// it finds in serviceNames, methodNames and file.aliases as they are.
//
// The rules:
//   - Generated identifiers derive from protogen's Go names, which are
//     CamelCase and exported, so they are never Go keywords. Unexported
//     ones always end in a suffix (chatServiceClient, chatServiceJoinSpec),
//     so they are never keywords or predeclared identifiers either.
//   - Two methods of a service with the same Go name (get_item, GetItem):
//     the later one gets a trailing underscore, GetItem_.
//   - A method named like one that go vet's stdmethods check holds to a
//     standard signature whatever its receiver (MarshalJSON, ReadByte,
//     GobEncode, ...; see vetCheckedMethods) gets a trailing underscore,
//     MarshalJSON_, so that the generated package passes go vet.
//   - Two services whose identifiers collide anywhere in the generated
//     package (FooBar and foo_bar; Foo and UnimplementedFoo, whose server
//     interface is Foo's UnimplementedFooServer; client-implemented Foo
//     and NewFoo, whose publisher is Foo's NewFooPublisher): the later
//     service, in file then declaration order, gets a trailing underscore
//     on its base name (FooBar_Client, UnimplementedFoo_Server,
//     NewFoo_Publisher), repeated until nothing collides. The first keeps
//     the names users expect. A service reserves every identifier its side
//     may declare (all), whether or not it declares it.
//   - Method names never collide with the generated types' own members:
//     those are unexported (the client's conn, the publisher's p), and
//     method names are exported.
//   - An imported message package whose name would be shadowed by a
//     generated identifier or a parameter (a package named req), or that
//     repeats another's name, gets a numeric suffix: req1.

// serviceNames are the identifiers generated for a service. Which of them
// a service declares depends on its side (all reserves them).
type serviceNames struct {
	// Base is the service's Go name after escaping: "ChatService".
	Base string
	// Name is the constant holding the service's full name.
	Name string
	// Client is the client interface; NewClient its constructor;
	// clientImpl the unexported type implementing it. A client-implemented
	// service's client calls its non-event methods on one connection.
	Client, NewClient, clientImpl string

	// Server-implemented services only:
	// Server is the interface an application implements; Register the
	// function that registers it; Unimplemented the struct to embed.
	Server, Register, Unimplemented string

	// Client-implemented services only:
	// Publisher is the struct that sends the service's events, NewPublisher
	// its constructor; Handler is the interface a client application
	// implements, RegisterHandler the function that registers it on a
	// connection, UnimplementedHandler the struct to embed.
	Publisher, NewPublisher, Handler, RegisterHandler, UnimplementedHandler string

	side side
}

// methodNames are the identifiers generated for a method.
type methodNames struct {
	// Method is the Go method's name in the client and server interfaces.
	Method string
	// Procedure is the constant holding the method's procedure.
	Procedure string
	// spec is the unexported *parley.MethodSpec variable.
	spec string
}

// Identifiers the generated functions use for parameters, receivers and
// locals, which would shadow an import of the same name.
var localNames = []string{"c", "conn", "ctx", "err", "event", "h", "impl", "p", "r", "req", "res", "target"}

// Imports every generated file may use, by their own names. A message
// package with one of these names is renamed instead.
const (
	contextPackage = protogen.GoImportPath("context")
	timePackage    = protogen.GoImportPath("time")
	parleyPackage  = protogen.GoImportPath("github.com/parleyrpc/parley/runtime/parley")
)

var fixedImportNames = []string{"context", "time", "parley"}

func newServiceNames(base string, sd side) serviceNames {
	n := serviceNames{
		Base:       base,
		Name:       base + "Name",
		Client:     base + "Client",
		NewClient:  "New" + base + "Client",
		clientImpl: unexport(base) + "Client",
		side:       sd,
	}
	switch sd {
	case sideServer:
		n.Server = base + "Server"
		n.Register = "Register" + base + "Server"
		n.Unimplemented = "Unimplemented" + base + "Server"
	case sideClient:
		n.Publisher = base + "Publisher"
		n.NewPublisher = "New" + base + "Publisher"
		n.Handler = base + "Handler"
		n.RegisterHandler = "Register" + base + "Handler"
		n.UnimplementedHandler = "Unimplemented" + base + "Handler"
	}
	return n
}

// all returns the package-level identifiers the service may declare. A
// client-implemented service reserves its client and its publisher even
// when it has no calls or no events, so that adding a method to a service
// never renames another service's identifiers.
func (n serviceNames) all() []string {
	ids := []string{n.Name, n.Client, n.NewClient, n.clientImpl}
	switch n.side {
	case sideServer:
		ids = append(ids, n.Server, n.Register, n.Unimplemented)
	case sideClient:
		ids = append(ids, n.Publisher, n.NewPublisher, n.Handler, n.RegisterHandler, n.UnimplementedHandler)
	}
	return ids
}

func newMethodNames(service, method string) methodNames {
	return methodNames{
		Method:    method,
		Procedure: service + method + "Procedure",
		spec:      unexport(service) + method + "Spec",
	}
}

// nameFiles decides the identifiers of every service and method in files,
// and each file's import names. Files that share a generated package share
// one namespace, so they are named together, in request order.
func nameFiles(plugin *protogen.Plugin, files []*file) {
	packages := map[protogen.GoImportPath][]*file{}
	var order []protogen.GoImportPath
	for _, f := range files {
		if _, ok := packages[f.importPath]; !ok {
			order = append(order, f.importPath)
		}
		packages[f.importPath] = append(packages[f.importPath], f)
	}
	for _, importPath := range order {
		pkgFiles := packages[importPath]
		pkgFiles[0].packageDoc = true
		declared := map[string]bool{}
		for _, f := range pkgFiles {
			for _, s := range f.services {
				nameService(s, declared)
			}
		}
		for _, f := range pkgFiles {
			f.aliases = importNames(plugin, f, declared)
		}
	}
}

// nameService names s and its methods so that none of their package-level
// identifiers is already in declared, then adds them to it.
func nameService(s *service, declared map[string]bool) {
	methodGoNames := make([]string, len(s.methods))
	seen := map[string]bool{}
	for i, m := range s.methods {
		name := m.proto.GoName
		if vetCheckedMethods[name] {
			name += "_"
		}
		for seen[name] {
			name += "_"
		}
		seen[name] = true
		methodGoNames[i] = name
	}

	base := s.proto.GoName
	for {
		s.names = newServiceNames(base, s.side)
		ids := s.names.all()
		for i, m := range s.methods {
			m.names = newMethodNames(base, methodGoNames[i])
			ids = append(ids, m.names.Procedure, m.names.spec)
		}
		if !anyDeclared(ids, declared) {
			for _, id := range ids {
				declared[id] = true
			}
			return
		}
		base += "_"
	}
}

// vetCheckedMethods are the method names go vet's stdmethods analyzer
// holds to a standard library signature (json.Marshaler's MarshalJSON,
// io.ByteReader's ReadByte, ...) on any type. Its other names (Seek, Scan,
// Format, ReadFrom, WriteTo, Is, As, Unwrap) are checked only when their
// first parameter or their receiver matches the standard one, which a
// Parley method's never does.
var vetCheckedMethods = map[string]bool{
	"GobDecode": true, "GobEncode": true,
	"MarshalJSON": true, "UnmarshalJSON": true,
	"MarshalXML": true, "UnmarshalXML": true,
	"ReadByte": true, "UnreadByte": true, "WriteByte": true,
	"ReadRune": true, "UnreadRune": true,
}

// anyDeclared reports whether any of ids is in declared or repeats another
// of ids.
func anyDeclared(ids []string, declared map[string]bool) bool {
	seen := map[string]bool{}
	for _, id := range ids {
		if declared[id] || seen[id] {
			return true
		}
		seen[id] = true
	}
	return false
}

// importNames names f's message packages: by their Go package name where
// that is free, else with a numeric suffix. Packages are named in the order
// f's methods first use them, so the first keeps its name.
func importNames(plugin *protogen.Plugin, f *file, declared map[string]bool) map[protogen.GoImportPath]string {
	taken := map[string]bool{}
	for _, name := range localNames {
		taken[name] = true
	}
	for _, name := range fixedImportNames {
		taken[name] = true
	}
	aliases := map[protogen.GoImportPath]string{}
	add := func(msg *protogen.Message) {
		importPath := msg.GoIdent.GoImportPath
		if _, ok := aliases[importPath]; ok {
			return
		}
		name := path.Base(string(importPath))
		if pf, ok := plugin.FilesByPath[msg.Desc.ParentFile().Path()]; ok {
			name = string(pf.GoPackageName)
		}
		alias := name
		for i := 1; taken[alias] || declared[alias] || !isValidIdentifier(alias); i++ {
			alias = fmt.Sprintf("%s%d", name, i)
		}
		taken[alias] = true
		aliases[importPath] = alias
	}
	for _, s := range f.services {
		for _, m := range s.methods {
			for _, msg := range m.messages() {
				add(msg)
			}
		}
	}
	return aliases
}

// isValidIdentifier reports whether name can name an import: an
// identifier that is neither a keyword nor a predeclared identifier (which
// an import may shadow legally, but confusingly).
func isValidIdentifier(name string) bool {
	if !token.IsIdentifier(name) || name == "_" {
		return false
	}
	return !predeclared[name]
}

// predeclared holds Go's predeclared identifiers.
var predeclared = map[string]bool{}

func init() {
	for _, name := range []string{
		"any", "append", "bool", "byte", "cap", "clear", "close", "comparable", "complex",
		"complex64", "complex128", "copy", "delete", "error", "false", "float32", "float64",
		"imag", "int", "int8", "int16", "int32", "int64", "iota", "len", "make", "max", "min",
		"new", "nil", "panic", "print", "println", "real", "recover", "rune", "string", "true",
		"uint", "uint8", "uint16", "uint32", "uint64", "uintptr",
	} {
		predeclared[name] = true
	}
}

// unexport lower-cases an exported Go name's leading capital, or its
// leading acronym: ChatService → chatService, URLService → urlService.
func unexport(name string) string {
	runes := []rune(name)
	upper := 0
	for upper < len(runes) && unicode.IsUpper(runes[upper]) {
		upper++
	}
	// In URLService the S starts the next word and stays upper-case.
	if upper > 1 && upper < len(runes) && unicode.IsLower(runes[upper]) {
		upper--
	}
	if upper == 0 {
		upper = 1
	}
	for i := range upper {
		runes[i] = unicode.ToLower(runes[i])
	}
	return string(runes)
}
