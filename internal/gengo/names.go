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
//   - Two services whose identifiers collide anywhere in the generated
//     package (FooBar and foo_bar; Foo and UnimplementedFoo, whose server
//     interface is Foo's UnimplementedFooServer): the later service, in
//     file then declaration order, gets a trailing underscore on its base
//     name (FooBar_Client, UnimplementedFoo_Server), repeated until nothing
//     collides. The first keeps the names users expect.
//   - An imported message package whose name would be shadowed by a
//     generated identifier or a parameter (a package named req), or that
//     repeats another's name, gets a numeric suffix: req1.

// serviceNames are the identifiers generated for a service.
type serviceNames struct {
	// Base is the service's Go name after escaping: "ChatService".
	Base string
	// Name is the constant holding the service's full name.
	Name string
	// Client is the client interface; NewClient its constructor;
	// clientImpl the unexported type implementing it.
	Client, NewClient, clientImpl string
	// Server is the interface an application implements; Register the
	// function that registers it; Unimplemented the struct to embed.
	Server, Register, Unimplemented string
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
var localNames = []string{"c", "conn", "ctx", "err", "impl", "r", "req", "res"}

// Imports every generated file may use, by their own names. A message
// package with one of these names is renamed instead.
const (
	contextPackage = protogen.GoImportPath("context")
	timePackage    = protogen.GoImportPath("time")
	parleyPackage  = protogen.GoImportPath("github.com/parleyrpc/parley/runtime/parley")
)

var fixedImportNames = []string{"context", "time", "parley"}

func newServiceNames(base string) serviceNames {
	return serviceNames{
		Base:          base,
		Name:          base + "Name",
		Client:        base + "Client",
		NewClient:     "New" + base + "Client",
		clientImpl:    unexport(base) + "Client",
		Server:        base + "Server",
		Register:      "Register" + base + "Server",
		Unimplemented: "Unimplemented" + base + "Server",
	}
}

func (n serviceNames) all() []string {
	return []string{n.Name, n.Client, n.NewClient, n.clientImpl, n.Server, n.Register, n.Unimplemented}
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
		for seen[name] {
			name += "_"
		}
		seen[name] = true
		methodGoNames[i] = name
	}

	base := s.proto.GoName
	for {
		s.names = newServiceNames(base)
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
			add(m.proto.Input)
			add(m.proto.Output)
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
