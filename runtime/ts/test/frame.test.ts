// The hand-written frame codec against protobuf-es's generated one, which
// serves as an independent implementation of frame.proto.
import { create, fromBinary, fromJson, toBinary, toJson, type MessageInitShape } from "@bufbuild/protobuf";
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { decodeBinary, encodeBinary, type Frame } from "../src/frame.js";
import { jsonProtocol } from "../src/json.js";
import { decodeJson, encodeJson } from "../src/jsonframe.js";
import { Code as PbCode, FrameSchema } from "./gen/parley/v1/frame_pb.js";

const bytes = (...b: number[]) => new Uint8Array(b);

/** Each case: our frame, and the same frame as a protobuf-es init. */
const cases: [string, Frame, MessageInitShape<typeof FrameSchema>][] = [
  [
    "hello",
    { hello: { metadata: { authorization: "Bearer x", b: "" }, sessionId: "s", resumeToken: "t", offsets: { "room:a": 7, z: 0 }, agent: "parley-ts/0.1.0" } },
    { kind: { case: "hello", value: { metadata: { authorization: "Bearer x", b: "" }, sessionId: "s", resumeToken: "t", offsets: { "room:a": 7n, z: 0n }, agent: "parley-ts/0.1.0" } } },
  ],
  ["empty hello", { hello: {} }, { kind: { case: "hello", value: {} } }],
  [
    "hello with limits",
    { hello: { agent: "parley-ts/0.1.0", streamWindow: 32, maxMessageBytes: 1048576 } },
    { kind: { case: "hello", value: { agent: "parley-ts/0.1.0", streamWindow: 32, maxMessageBytes: 1048576 } } },
  ],
  [
    "hello with a byte window",
    { hello: { agent: "parley-ts/0.1.0", maxMessageBytes: 4194304, streamWindowBytes: 262144 } },
    { kind: { case: "hello", value: { agent: "parley-ts/0.1.0", maxMessageBytes: 4194304, streamWindowBytes: 262144 } } },
  ],
  [
    "welcome with windows",
    { welcome: { sessionId: "s", streamWindow: 64, maxStreams: 100, streamWindowBytes: 262144 } },
    { kind: { case: "welcome", value: { sessionId: "s", streamWindow: 64, maxStreams: 100, streamWindowBytes: 262144 } } },
  ],
  [
    "welcome",
    { welcome: { sessionId: "abc", resumeToken: "r", resumed: true, resumeWindowMs: 60000, maxMessageBytes: 4194304, maxInFlight: 64, pingIntervalMs: 25000, agent: "parley-go/0.1.0", metadata: { k: "v" } } },
    { kind: { case: "welcome", value: { sessionId: "abc", resumeToken: "r", resumed: true, resumeWindowMs: 60000, maxMessageBytes: 4194304, maxInFlight: 64, pingIntervalMs: 25000, agent: "parley-go/0.1.0", metadata: { k: "v" } } } },
  ],
  [
    "call with payload",
    { call: { id: 3, method: "/e2e.v1.EchoService/Echo", payload: bytes(10, 2, 104, 105), timeoutMs: 300, metadata: { a: "1" } } },
    { kind: { case: "call", value: { id: 3n, method: "/e2e.v1.EchoService/Echo", body: { case: "payload", value: bytes(10, 2, 104, 105) }, timeoutMs: 300, metadata: { a: "1" } } } },
  ],
  [
    "call with empty payload",
    { call: { id: 1, method: "/e2e.v1.EchoService/Panic", payload: bytes() } },
    { kind: { case: "call", value: { id: 1n, method: "/e2e.v1.EchoService/Panic", body: { case: "payload", value: bytes() } } } },
  ],
  [
    "call with json",
    { call: { id: 9007199254740991, method: "/x.Y/Z", json: { text: "hi", n: 1.5, ok: true, none: null, list: [1, "a", [], {}] } } },
    {
      kind: {
        case: "call",
        value: {
          id: 9007199254740991n,
          method: "/x.Y/Z",
          body: {
            case: "json",
            value: {
              kind: {
                case: "structValue",
                value: {
                  fields: {
                    text: { kind: { case: "stringValue", value: "hi" } },
                    n: { kind: { case: "numberValue", value: 1.5 } },
                    ok: { kind: { case: "boolValue", value: true } },
                    none: { kind: { case: "nullValue", value: 0 } },
                    list: {
                      kind: {
                        case: "listValue",
                        value: {
                          values: [
                            { kind: { case: "numberValue", value: 1 } },
                            { kind: { case: "stringValue", value: "a" } },
                            { kind: { case: "listValue", value: {} } },
                            { kind: { case: "structValue", value: {} } },
                          ],
                        },
                      },
                    },
                  },
                },
              },
            },
          },
        },
      },
    },
  ],
  [
    "reply",
    { reply: { id: 5, payload: bytes(1, 2, 3), metadata: { t: "x" } } },
    { kind: { case: "reply", value: { id: 5n, body: { case: "payload", value: bytes(1, 2, 3) }, metadata: { t: "x" } } } },
  ],
  [
    "reply with json null",
    { reply: { id: 7, json: null } },
    { kind: { case: "reply", value: { id: 7n, body: { case: "json", value: { kind: { case: "nullValue", value: 0 } } } } } },
  ],
  [
    "error",
    { error: { id: 11, code: 5, message: "no such room", details: [{ typeUrl: "type.googleapis.com/google.protobuf.StringValue", value: bytes(10, 1, 120) }], metadata: { m: "n" } } },
    {
      kind: {
        case: "error",
        value: {
          id: 11n,
          code: PbCode.NOT_FOUND,
          message: "no such room",
          details: [{ typeUrl: "type.googleapis.com/google.protobuf.StringValue", value: bytes(10, 1, 120) }],
          metadata: { m: "n" },
        },
      },
    },
  ],
  ["connection error", { error: { id: 0, code: 16, message: "bad token" } }, { kind: { case: "error", value: { code: PbCode.UNAUTHENTICATED, message: "bad token" } } }],
  ["cancel", { cancel: { id: 13 } }, { kind: { case: "cancel", value: { id: 13n } } }],
  ["cancel at a deadline", { cancel: { id: 15, code: 4 } }, { kind: { case: "cancel", value: { id: 15n, code: PbCode.DEADLINE_EXCEEDED } } }],
  [
    "event",
    { event: { method: "/chat.v1.ChatEvents/MessagePosted", payload: bytes(8, 1), topic: "room:lobby", offset: 42, epoch: "e1" } },
    { kind: { case: "event", value: { method: "/chat.v1.ChatEvents/MessagePosted", body: { case: "payload", value: bytes(8, 1) }, topic: "room:lobby", offset: 42n, epoch: "e1" } } },
  ],
  ["item", { item: { id: 2, payload: bytes(0) } }, { kind: { case: "item", value: { id: 2n, body: { case: "payload", value: bytes(0) } } } }],
  // Varints of 32 bits and past them take different paths in the encoder.
  ["item, the largest 32-bit id", { item: { id: 4294967295, payload: bytes(1) } }, { kind: { case: "item", value: { id: 4294967295n, body: { case: "payload", value: bytes(1) } } } }],
  ["item, an id past 32 bits", { item: { id: 4294967296, payload: bytes(1) } }, { kind: { case: "item", value: { id: 4294967296n, body: { case: "payload", value: bytes(1) } } } }],
  ["end", { end: { id: 2 } }, { kind: { case: "end", value: { id: 2n } } }],
  ["credit", { credit: { id: 2, items: 16 } }, { kind: { case: "credit", value: { id: 2n, items: 16 } } }],
  ["credit with bytes", { credit: { id: 2, items: 16, bytes: 131072 } }, { kind: { case: "credit", value: { id: 2n, items: 16, bytes: 131072 } } }],
  ["credit of bytes only", { credit: { id: 4, bytes: 4294967295 } }, { kind: { case: "credit", value: { id: 4n, bytes: 4294967295 } } }],
  ["goaway", { goaway: { reason: "shutdown", lastId: 99 } }, { kind: { case: "goaway", value: { reason: "shutdown", lastId: 99n } } }],
  ["ping", { ping: { nonce: "18446744073709551615" } }, { kind: { case: "ping", value: { nonce: 18446744073709551615n } } }],
  ["pong", { pong: { nonce: "1" } }, { kind: { case: "pong", value: { nonce: 1n } } }],
];

/** The frame with its json body, if it has one, as decodeBinary gives it: null. */
const jsonAsNull = (frame: Frame): Frame | undefined => {
  const [kind, msg] = Object.entries(frame)[0]! as [string, Record<string, unknown>];
  return "json" in msg ? ({ [kind]: { ...msg, json: null } } as Frame) : undefined;
};

describe("binary", () => {
  for (const [name, frame, init] of cases) {
    const msg = create(FrameSchema, init);
    const withJson = jsonAsNull(frame);
    if (withJson) {
      // The json body belongs to parley.v1+json: the binary codec writes
      // none and reads one as null, for binaryProtocol to refuse.
      test(`${name}: not encoded; read, its body as null`, () => {
        assert.throws(() => encodeBinary(frame), /cannot encode a json body as protobuf/);
        assert.deepEqual(decodeBinary(toBinary(FrameSchema, msg)), withJson);
      });
      continue;
    }
    test(name, () => {
      // protobuf-es writes fields in number order, Go (and we) the oneof
      // body last (the vectors test checks Go's bytes): compare messages.
      assert.deepEqual(fromBinary(FrameSchema, encodeBinary(frame)), msg, "protobuf-es reads it differently");
      assert.deepEqual(decodeBinary(toBinary(FrameSchema, msg)), frame);
    });
  }

  test("a failed encoding leaves the next one whole", () => {
    assert.throws(() => encodeBinary({ call: { id: 1, method: "/a.B/C", metadata: { k: "v" }, json: 1 } }));
    const frame: Frame = { reply: { id: 5, payload: bytes(1) } };
    assert.deepEqual(decodeBinary(encodeBinary(frame)), frame);
  });

  test("skips unknown fields and reads a later oneof member over an earlier one", () => {
    // reply{id: 5, 99: varint 1, payload: [1], json: "x"}
    const reply = [8, 5, 0x98, 6, 1, 18, 1, 1, 26, 3, 26, 1, 120];
    assert.deepEqual(decodeBinary(bytes(34, reply.length, ...reply)), { reply: { id: 5, json: null } });
    // reply{id: 5, json: "x", payload: [1]}
    const back = [8, 5, 26, 3, 26, 1, 120, 18, 1, 1];
    assert.deepEqual(decodeBinary(bytes(34, back.length, ...back)), { reply: { id: 5, payload: bytes(1) } });
  });

  test("reads a json body it cannot make sense of as null too", () => {
    // item{id: 2, json: bytes that are no google.protobuf.Value}
    const item = [8, 2, 26, 2, 0xff, 0xff];
    assert.deepEqual(decodeBinary(bytes(66, item.length, ...item)), { item: { id: 2, json: null } });
  });

  test("reports a kind it does not know with its id", () => {
    // field 20 {id: 8, 2: "a"}
    assert.deepEqual(decodeBinary(bytes(0xa2, 1, 5, 8, 8, 18, 1, 97)), { unknown: { kind: 20, id: 8 } });
  });

  for (const [name, b] of [
    ["empty", []],
    ["truncated", [26, 10, 8, 1]],
    ["bad wire type", [0xff, 0xff, 0xff]],
    ["nested overrun", [26, 2, 18, 5, 97]],
    ["json body overrun", [26, 4, 8, 1, 34, 9]],
    ["text", [...new TextEncoder().encode('{"call":{}}')]],
  ] as [string, number[]][]) {
    test(`rejects ${name} input`, () => assert.throws(() => decodeBinary(bytes(...b))));
  }
});

describe("json", () => {
  // A binary detail has no protojson form without a registry: see "details are kept as protojson".
  for (const [name, frame, init] of cases.filter(([n]) => n != "error")) {
    test(name, () => {
      const msg = create(FrameSchema, init);
      const want = toJson(FrameSchema, msg);
      assert.deepEqual(JSON.parse(encodeJson(frame)), want, "encoding differs from protobuf-es");
      assert.deepEqual(decodeJson(JSON.stringify(want)), frame);
      // Original field names and numbers for uint64s and enums, as protojson accepts.
      const original = toJson(FrameSchema, msg, { useProtoFieldName: true, enumAsInteger: true });
      assert.deepEqual(decodeJson(JSON.stringify(original)), frame);
      // And ours decodes with protobuf-es.
      assert.deepEqual(toBinary(FrameSchema, fromJson(FrameSchema, JSON.parse(encodeJson(frame)))), toBinary(FrameSchema, msg));
    });
  }

  test("details are kept as protojson", () => {
    const detail = { "@type": "type.googleapis.com/google.protobuf.StringValue", value: "x" };
    const f = decodeJson(JSON.stringify({ error: { id: "3", code: "CODE_INTERNAL", details: [detail] } }));
    assert.deepEqual(f, { error: { id: 3, code: 13, details: [{ json: detail }] } });
    assert.deepEqual(JSON.parse(encodeJson(f)), { error: { id: "3", code: "CODE_INTERNAL", details: [detail] } });
  });

  test("ignores unknown fields and reports unknown kinds", () => {
    assert.deepEqual(decodeJson('{"cancel":{"id":"1","future":true}}'), { cancel: { id: 1 } });
    assert.deepEqual(decodeJson('{"later":{"id":"4"}}'), { unknown: { kind: "later", id: 4 } });
  });

  for (const [name, text] of [
    ["not JSON", "\x00\x01"],
    ["not an object", "[1]"],
    ["no kind", "{}"],
    ["a negative id", '{"cancel":{"id":"-1"}}'],
    ["a string as bool", '{"welcome":{"resumed":"yes"}}'],
    ["a number as string", '{"call":{"method":5}}'],
    ["a kind that is not an object", '{"reply":5}'],
  ]) {
    test(`rejects ${name}`, () => assert.throws(() => decodeJson(text!)));
  }
});

test("jsonProtocol counts a text message's UTF-8 bytes, as TextEncoder does; against a limit, only what might pass it", () => {
  const count = jsonProtocol.textBytes!;
  for (const s of ["", "ascii", "ü", "€", "😀", "aü€😀z".repeat(50), "\u07ff\u0800\uffff\ud7ff\ue000", JSON.stringify("\ud800 lone")]) {
    const n = new TextEncoder().encode(s).length;
    assert.equal(count(s), n, JSON.stringify(s));
    // Well within the limit: any count at most the limit will do.
    assert.ok(count(s, 3 * s.length) <= 3 * s.length, JSON.stringify(s));
    // Near it: exact.
    if (s.length) assert.equal(count(s, 3 * s.length - 1), n, JSON.stringify(s));
  }
});

test("the body goes after the other fields, as Go writes it", () => {
  const b = encodeBinary({ reply: { id: 1, payload: new Uint8Array([7]), metadata: { k: "v" } } });
  assert.deepEqual(b, bytes(34, 13, 8, 1, 34, 6, 10, 1, 107, 18, 1, 118, 18, 1, 7));
});
