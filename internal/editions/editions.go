// Package editions is the protobuf syntax and editions range Parley's
// plugins accept, and the check both apply to each file they generate.
//
// Editions change how protoc-gen-go and protoc-gen-es lay out messages;
// services and methods read the same in every one. Generated code only
// names message types (never their fields), so it builds against 2024's
// default opaque Go API as against the open one, and 2024's local
// messages (symbol visibility) are still exported by both.
package editions

import (
	"fmt"
	"strings"

	"google.golang.org/protobuf/types/descriptorpb"
)

// The editions the plugins declare to protoc and buf.
const (
	Minimum = descriptorpb.Edition_EDITION_PROTO2
	Maximum = descriptorpb.Edition_EDITION_2024
)

// Check refuses a file of an edition newer than Maximum, naming plugin.
// protoc and buf check the declared range before they run a plugin; this
// keeps a request that skipped the check from being generated as if the
// edition were one we know.
func Check(plugin string, f *descriptorpb.FileDescriptorProto) error {
	edition := f.GetEdition()
	if f.GetSyntax() != "editions" || edition <= Maximum {
		return nil
	}
	return fmt.Errorf("edition %s is not supported: %s supports proto2, proto3 and editions up to %s",
		name(edition), plugin, name(Maximum))
}

// name spells an edition as a proto file does: 2024, not EDITION_2024.
func name(e descriptorpb.Edition) string {
	return strings.TrimPrefix(e.String(), "EDITION_")
}
