/**
 * The parley.v1+json protocol, which an application opts into by importing
 * it:
 *
 * ```ts
 * import { Connection } from "@parleyrpc/runtime";
 * import { jsonProtocol } from "@parleyrpc/runtime/json";
 *
 * const conn = new Connection(url, { protocol: jsonProtocol });
 * ```
 *
 * Frames travel as protojson text messages and payloads as the protojson
 * form of their messages (readable in a browser's devtools). It lives in
 * this module of its own, apart from the package's main one, because it
 * needs protobuf-es's toJson and fromJson and a JSON frame codec: about
 * 9 KB min+gz that applications speaking binary (the default,
 * parley.v1+proto) would otherwise bundle without using them.
 *
 * @packageDocumentation
 */
import { fromJson, toJson, type DescMessage, type JsonObject, type MessageShape, type Registry } from "@bufbuild/protobuf";
import { decodeJson, encodeJson } from "./jsonframe.js";
import type { AnyDetail } from "./frame.js";
import { typeName, type Protocol } from "./protocol.js";

export type { Protocol } from "./protocol.js";

/**
 * parley.v1+json: frames as protojson in text WebSocket messages, payloads
 * as the protojson form of their messages (frame.proto's `json` fields).
 * `ConnectionOptions.registry` resolves google.protobuf.Any and extensions
 * in payloads and in error details.
 */
export const jsonProtocol: Protocol = {
  name: "parley.v1+json",
  encodeFrame: encodeJson,
  decodeFrame(data) {
    if (typeof data != "string") throw new Error("a binary message on parley.v1+json");
    return decodeJson(data);
  },
  encodeMessage: (schema, message, registry) => ({ json: toJson(schema, message, { registry }) }),
  decodeMessage(schema, { json, payload }, registry) {
    // frame.proto's payload body belongs to parley.v1+proto: the call,
    // item or event that carries one fails, as binaryProtocol fails a json
    // body.
    if (payload !== undefined) throw new Error("a payload body on parley.v1+json");
    // No body is the empty message; null is one too, except for a
    // google.protobuf.Value, where null is the value (NULL_VALUE).
    const value = json === undefined || (json === null && schema.typeName != "google.protobuf.Value") ? {} : json;
    // Fields this side's schema lacks (a newer peer's) are ignored, as
    // the binary protocol skips them and Go discards them.
    return fromJson(schema, value, { registry, ignoreUnknownFields: true });
  },
  readDetail(d) {
    // decodeJson gives every detail in its protojson form.
    const { json } = d as Extract<AnyDetail, { json: JsonObject }>;
    const url = json["@type"];
    return { type: typeName(typeof url == "string" ? url : ""), json, readJson: (schema, registry) => readJsonDetail(schema, json, registry) };
  },
  // A text message's UTF-8 bytes are at most 3 per UTF-16 unit: one whose
  // units, tripled, fit max fits, and is not scanned.
  textBytes: (text, max) => (text.length * 3 <= max! ? text.length : utf8Length(text)),
};

/**
 * The UTF-8 length of s, counted rather than encoded (TextEncoder would
 * copy every message): 1 byte up to U+007F, 2 up to U+07FF, 3 beyond, and
 * 4 for a surrogate pair, 2 for each half. A lone surrogate (3 bytes, as
 * U+FFFD) is counted 2: JSON.stringify escapes them and decoded UTF-8
 * has none.
 */
function utf8Length(s: string): number {
  let n = s.length;
  for (let i = 0; i < s.length; ) {
    const c = s.charCodeAt(i++);
    if (c > 127) n += c < 2048 || (c & 0xf800) == 0xd800 ? 1 : 2;
  }
  return n;
}

/**
 * Reads an Any's protojson form as a message of the given type. A type
 * whose protojson form is special (a well-known type) is read from the
 * "value" field, as protojson writes it.
 */
function readJsonDetail<Desc extends DescMessage>(schema: Desc, json: JsonObject, registry?: Registry): MessageShape<Desc> {
  const { "@type": _, ...rest } = json;
  const special = schema.typeName.startsWith("google.protobuf.") && "value" in rest;
  return fromJson(schema, special ? rest["value"]! : rest, { registry, ignoreUnknownFields: true });
}
