package parleyopts

import (
	"strings"
	"testing"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/descriptorpb"
	"google.golang.org/protobuf/types/pluginpb"

	parleyv1 "github.com/parleyrpc/parley/gen/parley/v1"
)

// methodOptions returns MethodOptions holding raw as unknown fields, as a
// request decoded without Parley's extensions leaves them.
func methodOptions(raw []byte) *descriptorpb.MethodOptions {
	opts := &descriptorpb.MethodOptions{Deprecated: proto.Bool(true)}
	opts.ProtoReflect().SetUnknown(raw)
	return opts
}

// field is one field of a message's wire form: tag and value.
func field(num protowire.Number, typ protowire.Type, value []byte) []byte {
	b := protowire.AppendTag(nil, num, typ)
	if typ == protowire.BytesType {
		return protowire.AppendBytes(b, value)
	}
	return append(b, value...)
}

func mustMarshal(t *testing.T, m proto.Message) []byte {
	t.Helper()
	b, err := proto.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestReads(t *testing.T) {
	methodNumber := protowire.Number(parleyv1.E_Method.Field)
	t.Run("decoded extension", func(t *testing.T) {
		opts := &descriptorpb.ServiceOptions{}
		proto.SetExtension(opts, parleyv1.E_Service, &parleyv1.ServiceOptions{ImplementedBy: parleyv1.Side_CLIENT})
		so, err := Service("plugin", opts)
		if err != nil || so.GetImplementedBy() != parleyv1.Side_CLIENT {
			t.Errorf("Service = %v, %v; want implemented_by CLIENT", so, err)
		}
	})
	t.Run("unknown fields", func(t *testing.T) {
		raw := field(methodNumber, protowire.BytesType, mustMarshal(t, &parleyv1.MethodOptions{TimeoutMs: 1234}))
		mo, err := Method("plugin", methodOptions(raw))
		if err != nil || mo.GetTimeoutMs() != 1234 {
			t.Errorf("Method = %v, %v; want timeout_ms 1234", mo, err)
		}
	})
	t.Run("occurrences merge", func(t *testing.T) {
		// protoc may write a message option set field by field as several
		// occurrences; the last scalar wins, as in any merge.
		raw := field(methodNumber, protowire.BytesType, mustMarshal(t, &parleyv1.MethodOptions{TimeoutMs: 1}))
		raw = append(raw, field(methodNumber, protowire.BytesType, mustMarshal(t, &parleyv1.MethodOptions{TimeoutMs: 2}))...)
		mo, err := Method("plugin", methodOptions(raw))
		if err != nil || mo.GetTimeoutMs() != 2 {
			t.Errorf("Method = %v, %v; want timeout_ms 2", mo, err)
		}
	})
	t.Run("unset", func(t *testing.T) {
		for _, opts := range []*descriptorpb.MethodOptions{nil, {}} {
			mo, err := Method("plugin", opts)
			if err != nil || mo == nil || mo.GetTimeoutMs() != 0 {
				t.Errorf("Method(%v) = %v, %v; want an empty option", opts, mo, err)
			}
		}
	})
}

// TestRefuses checks options a copy of options.proto declares otherwise
// are refused, saying what is wrong, rather than read as unset.
func TestRefuses(t *testing.T) {
	methodNumber := protowire.Number(parleyv1.E_Method.Field)
	for name, c := range map[string]struct {
		raw  []byte
		want string
	}{
		"option of another type": {
			raw:  field(methodNumber, protowire.VarintType, protowire.AppendVarint(nil, 5)),
			want: "sets option (parley.v1.method) as a varint (an integer, bool or enum), but Parley's options.proto declares it a message, parley.v1.MethodOptions; the parley/v1/options.proto it imports differs from the one plugin was built with",
		},
		"payload that is no message": {
			raw:  field(methodNumber, protowire.BytesType, []byte("5s")),
			want: "sets option (parley.v1.method), which does not decode as Parley's parley.v1.MethodOptions (",
		},
		"field of another type": {
			raw:  field(methodNumber, protowire.BytesType, field(1, protowire.BytesType, []byte("5s"))),
			want: "sets option (parley.v1.method).timeout_ms as length-delimited bytes (a string, bytes or a message), but Parley's options.proto declares it a uint32;",
		},
		"field the plugin does not know": {
			raw:  field(methodNumber, protowire.BytesType, field(9, protowire.VarintType, protowire.AppendVarint(nil, 1))),
			want: "sets field 9 of option (parley.v1.method), which plugin does not know;",
		},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := Method("plugin", methodOptions(c.raw))
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Errorf("error %v, want it to contain %q", err, c.want)
			}
		})
	}
}

// TestUnmarshalRequest checks a request whose Parley option is not
// Parley's MethodOptions decodes, leaving the option for Method to refuse.
func TestUnmarshalRequest(t *testing.T) {
	raw := field(protowire.Number(parleyv1.E_Method.Field), protowire.BytesType, []byte("5s"))
	req := &pluginpb.CodeGeneratorRequest{ProtoFile: []*descriptorpb.FileDescriptorProto{{
		Name: proto.String("a.proto"),
		Service: []*descriptorpb.ServiceDescriptorProto{{
			Name:   proto.String("S"),
			Method: []*descriptorpb.MethodDescriptorProto{{Name: proto.String("M"), Options: methodOptions(raw)}},
		}},
	}}}
	b := mustMarshal(t, req)
	if err := proto.Unmarshal(b, new(pluginpb.CodeGeneratorRequest)); err == nil {
		t.Fatal("proto.Unmarshal decoded the option: the test no longer shows what UnmarshalRequest is for")
	}
	got, err := UnmarshalRequest(b)
	if err != nil {
		t.Fatal(err)
	}
	opts := got.GetProtoFile()[0].GetService()[0].GetMethod()[0].GetOptions()
	if !opts.GetDeprecated() {
		t.Error("lost the method's other options")
	}
	if _, err := Method("plugin", opts); err == nil {
		t.Error("Method read the option that is not Parley's")
	}
}
