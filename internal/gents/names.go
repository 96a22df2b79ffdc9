package gents

import (
	"fmt"
	"regexp"
	"strings"

	"google.golang.org/protobuf/reflect/protoreflect"
)

// This file decides every identifier the plugin writes. Names of things
// protoc-gen-es declares (message schemas and shapes) are recomputed with
// its rules, so an import names exactly what the _pb file exports; names we
// declare ourselves and the aliases of our imports are made unique in one
// scope per output file, and class members in one scope per class.

// reservedIdentifiers are the names protobuf-es will not use for an
// identifier (@bufbuild/protoplugin safe-identifier.ts), extended by the
// globals our output refers to, so that a message named Promise cannot shadow
// the one in a method's return type.
var reservedIdentifiers = setOf(
	// ECMAScript 2015 keywords
	"break", "case", "catch", "class", "const", "continue", "debugger",
	"default", "delete", "do", "else", "export", "extends", "false",
	"finally", "for", "function", "if", "import", "in", "instanceof", "new",
	"null", "return", "super", "switch", "this", "throw", "true", "try",
	"typeof", "var", "void", "while", "with", "yield",
	// ECMAScript 2015 future reserved keywords
	"enum", "implements", "interface", "let", "package", "private",
	"protected", "public", "static",
	// Class name cannot be 'Object' when targeting ES5 with module CommonJS
	"Object",
	// TypeScript keywords that cannot be used for types
	"bigint", "number", "boolean", "string", "object",
	// Identifiers reserved for the runtime, so we can generate legible code
	"globalThis", "Uint8Array", "Partial",
)

// globalsWeUse are global names the generated code spells; a declaration or
// import may not take them. (protoc-gen-es does not know about them, so
// they are not part of esSafeIdentifier.)
var globalsWeUse = setOf("Promise", "AsyncIterable", "AbortSignal", "Record")

// unbindable are names a module cannot bind, though protoc-gen-es exports
// type names spelled so: eval and arguments in strict code, await in a
// module. An import of one of them is aliased (eval as eval$1); tsc lets it
// pass, but esbuild and Babel refuse to parse the file.
var unbindable = setOf("eval", "arguments", "await")

// reservedObjectProperties are the names protobuf-es escapes in a method's
// localName (@bufbuild/protobuf reflect/names.ts safeObjectProperty): a
// class method of that name would replace a built-in.
var reservedObjectProperties = setOf("constructor", "toString", "toJSON", "valueOf")

func setOf(names ...string) map[string]bool {
	m := make(map[string]bool, len(names))
	for _, n := range names {
		m[n] = true
	}
	return m
}

// esSafeIdentifier is protoplugin's safeIdentifier: a reserved word gets a
// trailing "$", which no proto identifier contains.
func esSafeIdentifier(name string) string {
	if reservedIdentifiers[name] {
		return name + "$"
	}
	return name
}

func esSafeObjectProperty(name string) string {
	if reservedObjectProperties[name] {
		return name + "$"
	}
	return name
}

// salted returns name with protobuf-es's disambiguating suffix for attempt
// i: "", "$", "$1", "$2", ...
func salted(name string, i int) string {
	switch i {
	case 0:
		return name
	case 1:
		return name + "$"
	default:
		return fmt.Sprintf("%s$%d", name, i-1)
	}
}

// esIdentifier is protobuf-es's identifier(): the type name without the
// package, dots replaced by underscores (Outer.Inner -> Outer_Inner).
func esIdentifier(d protoreflect.Descriptor) string {
	name := string(d.FullName())
	if pkg := string(d.ParentFile().Package()); pkg != "" {
		name = strings.TrimPrefix(name, pkg+".")
	}
	return strings.ReplaceAll(name, ".", "_")
}

// esFileNames holds the identifiers protoc-gen-es gives the declarations of
// one file.
type esFileNames struct {
	shape  map[protoreflect.FullName]string // message and enum types: JoinRequest
	schema map[protoreflect.FullName]string // message and enum schemas: JoinRequestSchema
}

var nonIdentRun = regexp.MustCompile(`[^a-zA-Z0-9_]+`)

// computeESNames is protoplugin's allNames (names.ts): shape names are taken
// first, then descriptor names, each salted until unique in the file.
func computeESNames(fd protoreflect.FileDescriptor) esFileNames {
	n := esFileNames{
		shape:  map[protoreflect.FullName]string{},
		schema: map[protoreflect.FullName]string{},
	}
	types := esNestedTypes(fd)
	taken := map[string]bool{}
	claim := func(ideal func(int) string) string {
		for i := 0; ; i++ {
			if name := ideal(i); !taken[name] {
				taken[name] = true
				return name
			}
		}
	}
	for _, d := range types {
		switch d.(type) {
		case protoreflect.MessageDescriptor, protoreflect.EnumDescriptor:
			id := esIdentifier(d)
			n.shape[d.FullName()] = claim(func(i int) string { return esSafeIdentifier(salted(id, i)) })
		}
	}
	fileName := "file_" + nonIdentRun.ReplaceAllString(strings.TrimSuffix(fd.Path(), ".proto"), "_")
	claim(func(i int) string { return esSafeIdentifier(salted(fileName, i)) })
	for _, d := range types {
		id := esIdentifier(d)
		switch d.(type) {
		case protoreflect.MessageDescriptor, protoreflect.EnumDescriptor:
			n.schema[d.FullName()] = claim(func(i int) string { return esSafeIdentifier(salted(id+"Schema", i)) })
		default:
			claim(func(i int) string { return esSafeIdentifier(salted(id, i)) })
		}
	}
	return n
}

// esNestedTypes lists a file's declarations in protobuf-es's nestedTypes
// order: each message followed by its nested messages (depth first), its
// nested enums and extensions; then the file's enums, services and
// extensions. Map entries are not declarations.
func esNestedTypes(fd protoreflect.FileDescriptor) []protoreflect.Descriptor {
	var out []protoreflect.Descriptor
	var inMessage func(md protoreflect.MessageDescriptor)
	inMessage = func(md protoreflect.MessageDescriptor) {
		for i := 0; i < md.Messages().Len(); i++ {
			m := md.Messages().Get(i)
			if m.IsMapEntry() {
				continue
			}
			out = append(out, m)
			inMessage(m)
		}
		for i := 0; i < md.Enums().Len(); i++ {
			out = append(out, md.Enums().Get(i))
		}
		for i := 0; i < md.Extensions().Len(); i++ {
			out = append(out, md.Extensions().Get(i))
		}
	}
	for i := 0; i < fd.Messages().Len(); i++ {
		m := fd.Messages().Get(i)
		out = append(out, m)
		inMessage(m)
	}
	for i := 0; i < fd.Enums().Len(); i++ {
		out = append(out, fd.Enums().Get(i))
	}
	for i := 0; i < fd.Services().Len(); i++ {
		out = append(out, fd.Services().Get(i))
	}
	for i := 0; i < fd.Extensions().Len(); i++ {
		out = append(out, fd.Extensions().Get(i))
	}
	return out
}

// esMethodLocalName is protobuf-es's localName of an rpc: the name with a
// lower-case first letter, built-in object properties escaped.
func esMethodLocalName(name string) string {
	if name == "" {
		return name
	}
	return esSafeObjectProperty(strings.ToLower(name[:1]) + name[1:])
}

// interfaceMember spells a method's name as an interface member: in an
// interface, new(...) declares a construct signature, so a method named new
// is declared with a quoted name ("new"(...)), which implementations and
// callers still spell handler.new.
func interfaceMember(name string) string {
	if name == "new" {
		return `"new"`
	}
	return name
}

// scope hands out unique identifiers within one namespace. Names are
// escaped and salted in the same way as protobuf-es's, so a clash reads
// familiar: ChatServiceJoinSpec, ChatServiceJoinSpec$, ChatServiceJoinSpec$1.
type scope struct {
	taken  map[string]bool
	escape func(string) string
}

// newScope returns the scope of a module's top-level identifiers, where
// reserved words are escaped and the reserved names are taken.
func newScope(reserved ...map[string]bool) *scope {
	s := &scope{taken: map[string]bool{}, escape: esSafeIdentifier}
	for _, names := range reserved {
		for n := range names {
			s.taken[n] = true
		}
	}
	return s
}

// newMemberScope returns the scope of a class's or an interface's members,
// where keywords are fine (a method may be called delete) and the
// constructor is not. Nor is then: an object with a then method is a
// thenable, which await and Promise.resolve call instead of returning the
// object, so a client with a method then could not be returned from an
// async function. It is escaped as protobuf-es escapes built-in properties:
// then$.
func newMemberScope() *scope {
	return &scope{taken: map[string]bool{"constructor": true}, escape: func(name string) string {
		if name == "then" {
			return name + "$"
		}
		return esSafeObjectProperty(name)
	}}
}

// declare claims a unique identifier derived from ideal.
func (s *scope) declare(ideal string) string {
	ideal = s.escape(ideal)
	for i := 0; ; i++ {
		if name := salted(ideal, i); !s.taken[name] {
			s.taken[name] = true
			return name
		}
	}
}

// alias claims an identifier for an imported name: the name itself when it
// is free, else name$1, name$2, ... as protoplugin aliases imports.
func (s *scope) alias(name string) string {
	if !s.taken[name] {
		s.taken[name] = true
		return name
	}
	for i := 1; ; i++ {
		if a := fmt.Sprintf("%s$%d", name, i); !s.taken[a] {
			s.taken[a] = true
			return a
		}
	}
}
