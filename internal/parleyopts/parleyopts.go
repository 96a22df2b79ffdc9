// Package parleyopts reads Parley's own options (proto/parley/v1/options.proto)
// off services and methods, for both generators.
//
// Users copy options.proto into their proto tree, so the file a request
// carries may not be the one the plugin was built with: an older or newer
// copy, or an edited one. Such a copy still compiles, and protobuf's
// decoding would either fail on the whole request ("cannot parse invalid
// wire-format data", naming nothing) or quietly keep what it cannot read
// as unknown fields, so that `implemented_by = CLIENT` declared as another
// type would generate a service clients call. This package reads the
// options from their wire form itself and refuses, with a reason, anything
// that is not exactly what the plugin's parleyv1 declares.
package parleyopts

import (
	"fmt"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/descriptorpb"
	"google.golang.org/protobuf/types/pluginpb"

	parleyv1 "github.com/parleyrpc/parley/gen/parley/v1"
)

// Service returns a service's (parley.v1.service) option, empty when the
// service sets none. plugin names the generator in the error.
func Service(plugin string, opts *descriptorpb.ServiceOptions) (*parleyv1.ServiceOptions, error) {
	x := new(parleyv1.ServiceOptions)
	return x, read(plugin, opts, parleyv1.E_Service, x)
}

// Method returns a method's (parley.v1.method) option, empty when the
// method sets none. plugin names the generator in the error.
func Method(plugin string, opts *descriptorpb.MethodOptions) (*parleyv1.MethodOptions, error) {
	x := new(parleyv1.MethodOptions)
	return x, read(plugin, opts, parleyv1.E_Method, x)
}

// UnmarshalRequest decodes a plugin request as protoc sends it, leaving
// Parley's options undecoded (as unknown fields of the service and method
// options), so that a copy of options.proto declaring them differently is
// refused by Service and Method, naming the service or method, instead of
// failing the request. Every other extension (protoc-gen-go's Go features,
// say) is decoded as usual.
func UnmarshalRequest(b []byte) (*pluginpb.CodeGeneratorRequest, error) {
	req := new(pluginpb.CodeGeneratorRequest)
	err := proto.UnmarshalOptions{Resolver: withoutParley{}}.Unmarshal(b, req)
	return req, err
}

// withoutParley resolves extensions as the global registry does, except
// Parley's own.
type withoutParley struct{}

func isParley(xt protoreflect.ExtensionType) bool {
	return xt == parleyv1.E_Service || xt == parleyv1.E_Method
}

func (withoutParley) FindExtensionByName(name protoreflect.FullName) (protoreflect.ExtensionType, error) {
	xt, err := protoregistry.GlobalTypes.FindExtensionByName(name)
	if err == nil && isParley(xt) {
		return nil, protoregistry.NotFound
	}
	return xt, err
}

func (withoutParley) FindExtensionByNumber(message protoreflect.FullName, field protoreflect.FieldNumber) (protoreflect.ExtensionType, error) {
	xt, err := protoregistry.GlobalTypes.FindExtensionByNumber(message, field)
	if err == nil && isParley(xt) {
		return nil, protoregistry.NotFound
	}
	return xt, err
}

// read decodes the extension xt of opts into x from the options' wire
// form, whether the request's decoder resolved the extension or left it
// in unknown fields.
func read(plugin string, opts proto.Message, xt protoreflect.ExtensionType, x proto.Message) error {
	if opts == nil || !opts.ProtoReflect().IsValid() {
		return nil
	}
	b, err := proto.MarshalOptions{AllowPartial: true}.Marshal(opts)
	if err != nil {
		return err
	}
	xd := xt.TypeDescriptor()
	name := "option (" + string(xd.FullName()) + ")"
	hint := "the parley/v1/options.proto it imports differs from the one " + plugin +
		" was built with: use proto/parley/v1/options.proto of the plugin's Parley version"
	// A message field may occur several times on the wire; its
	// occurrences merge, as concatenating their payloads does.
	var payload []byte
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return protowire.ParseError(n)
		}
		b = b[n:]
		n = protowire.ConsumeFieldValue(num, typ, b)
		if n < 0 {
			return protowire.ParseError(n)
		}
		if num == xd.Number() {
			if typ != protowire.BytesType {
				return fmt.Errorf("sets %s as %s, but Parley's options.proto declares it a message, %s; %s",
					name, wireName(typ), xd.Message().FullName(), hint)
			}
			v, _ := protowire.ConsumeBytes(b[:n])
			payload = append(payload, v...)
		}
		b = b[n:]
	}
	if err := (proto.UnmarshalOptions{AllowPartial: true}).Unmarshal(payload, x); err != nil {
		return fmt.Errorf("sets %s, which does not decode as Parley's %s (%v); %s", name, xd.Message().FullName(), err, hint)
	}
	// Unknown fields are a field the plugin's options do not declare, or
	// one it declares, encoded as another type.
	if unknown := x.ProtoReflect().GetUnknown(); len(unknown) > 0 {
		num, typ, _ := protowire.ConsumeTag(unknown)
		fd := x.ProtoReflect().Descriptor().Fields().ByNumber(num)
		if fd == nil {
			return fmt.Errorf("sets field %d of %s, which %s does not know; %s", num, name, plugin, hint)
		}
		return fmt.Errorf("sets %s.%s as %s, but Parley's options.proto declares it %s; %s",
			name, fd.Name(), wireName(typ), kindName(fd), hint)
	}
	return nil
}

// wireName says how a field was encoded, in a proto author's words.
func wireName(typ protowire.Type) string {
	switch typ {
	case protowire.VarintType:
		return "a varint (an integer, bool or enum)"
	case protowire.Fixed32Type:
		return "a 32-bit fixed value"
	case protowire.Fixed64Type:
		return "a 64-bit fixed value"
	case protowire.BytesType:
		return "length-delimited bytes (a string, bytes or a message)"
	default:
		return "a group"
	}
}

// kindName says what type a field is declared with.
func kindName(fd protoreflect.FieldDescriptor) string {
	switch fd.Kind() {
	case protoreflect.EnumKind:
		return "an enum, " + string(fd.Enum().FullName())
	case protoreflect.MessageKind:
		return "a message, " + string(fd.Message().FullName())
	default:
		return "a " + fd.Kind().String()
	}
}
