package gengo_test

import (
	"go/ast"
	"go/parser"
	"go/token"
	"strings"
	"testing"

	"google.golang.org/protobuf/compiler/protogen"
	"google.golang.org/protobuf/encoding/prototext"
	"google.golang.org/protobuf/types/descriptorpb"

	"github.com/parleyrpc/parley/internal/gengo"
	"github.com/parleyrpc/parley/internal/plugintest"
)

// TestAnnotateCode checks the annotate_code option: every exported
// identifier a generated file declares (types, functions, constants,
// methods, interface methods) is annotated with the proto service or
// method it comes from, in the .meta file beside it, so that code search
// and IDEs can go from the Go code to the .proto.
func TestAnnotateCode(t *testing.T) {
	cases, err := plugintest.Cases()
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range cases {
		req := request(t, c, "paths=source_relative,annotate_code")
		resp, err := plugintest.Run(req, protogen.Options{}, gengo.Generate)
		if err != nil {
			t.Fatal(err)
		}
		if resp.Error != nil {
			continue // a refused case
		}
		files := map[string]string{}
		for _, f := range resp.GetFile() {
			files[f.GetName()] = f.GetContent()
		}
		for name, src := range files {
			if !strings.HasSuffix(name, ".go") {
				continue
			}
			meta, ok := files[name+".meta"]
			if !ok {
				t.Errorf("%s/%s: no .meta file", c, name)
				continue
			}
			info := new(descriptorpb.GeneratedCodeInfo)
			if err := prototext.Unmarshal([]byte(meta), info); err != nil {
				t.Fatalf("%s/%s.meta: %v", c, name, err)
			}
			byBegin := map[int32]*descriptorpb.GeneratedCodeInfo_Annotation{}
			for _, a := range info.GetAnnotation() {
				byBegin[a.GetBegin()] = a
				if !strings.HasSuffix(a.GetSourceFile(), ".proto") || !isServiceOrMethod(a.GetPath()) {
					t.Errorf("%s/%s: annotation %v is not of a service or method of a .proto file", c, name, a)
				}
			}
			fset := token.NewFileSet()
			file, err := parser.ParseFile(fset, name, src, 0)
			if err != nil {
				t.Fatalf("%s/%s: %v", c, name, err)
			}
			for _, id := range exportedDeclarations(file) {
				offset := int32(fset.Position(id.Pos()).Offset)
				a := byBegin[offset]
				if a == nil || a.GetEnd() != offset+int32(len(id.Name)) {
					t.Errorf("%s/%s: %s (offset %d) is not annotated", c, name, id.Name, offset)
				}
			}
		}
	}
}

// isServiceOrMethod reports whether path locates a service (6, i) or one
// of its methods (6, i, 2, j) in a FileDescriptorProto.
func isServiceOrMethod(path []int32) bool {
	const service, method = 6, 2
	switch len(path) {
	case 2:
		return path[0] == service
	case 4:
		return path[0] == service && path[2] == method
	}
	return false
}

// exportedDeclarations returns the identifiers of the exported
// declarations of file, with those of interfaces' methods.
func exportedDeclarations(file *ast.File) []*ast.Ident {
	var ids []*ast.Ident
	add := func(id *ast.Ident) {
		if id.IsExported() {
			ids = append(ids, id)
		}
	}
	for _, decl := range file.Decls {
		switch decl := decl.(type) {
		case *ast.FuncDecl:
			add(decl.Name)
		case *ast.GenDecl:
			for _, spec := range decl.Specs {
				switch spec := spec.(type) {
				case *ast.ValueSpec:
					for _, id := range spec.Names {
						add(id)
					}
				case *ast.TypeSpec:
					add(spec.Name)
					if iface, ok := spec.Type.(*ast.InterfaceType); ok {
						for _, m := range iface.Methods.List {
							for _, id := range m.Names {
								add(id)
							}
						}
					}
				}
			}
		}
	}
	return ids
}
