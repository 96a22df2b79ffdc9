/**
 * The JSON encoding of `parley.v1.Frame` (parley.v1+json): protojson, driven
 * by the same table as the binary codec in frame.ts. Only the JSON protocol
 * (json.ts) imports it, so applications speaking binary do not bundle it.
 *
 * @internal
 */
import type { JsonObject, JsonValue } from "@bufbuild/protobuf";
import { base64Decode, base64Encode } from "@bufbuild/protobuf/wire";
import { codeFromNumber, codeToNumber, parseCode } from "./code.js";
import { isDefault, kindNumber, newMessage, schema, type AnyDetail, type Frame } from "./frame.js";

/** Encodes a frame as protojson (parley.v1+json). */
export function encodeJson(frame: Frame): string {
  const [kind, msg] = Object.entries(frame)[0]! as [string, Record<string, any>];
  const spec = schema[kindNumber(kind) - 1];
  if (!spec) throw new Error(`cannot encode frame kind ${kind}`);
  const out: JsonObject = {};
  for (const [name, t] of spec[1]) {
    const v = msg[name];
    if (isDefault(t, v)) continue;
    out[name] =
      t == "i" || t == "n" ? String(v)
      : t == "o" ? Object.fromEntries(Object.entries(v).map(([k, n]) => [k, String(n)]))
      : t == "p" ? base64Encode(v)
      : t == "c" ? (v > 0 && v <= 16 ? "CODE_" + codeFromNumber(v).toUpperCase() : v)
      : t == "a" ? (v as AnyDetail[]).map((d) => ("json" in d ? d.json : { "@type": d.typeUrl, value: base64Encode(d.value) }))
      : v;
  }
  return JSON.stringify({ [kind]: out });
}

/**
 * Decodes a protojson frame; throws on malformed input. Reads lowerCamel
 * and original (snake_case) field names alike, uint64s as strings or
 * numbers, and the code as its enum name or number, as protojson does.
 */
export function decodeJson(text: string): Frame {
  const obj: unknown = JSON.parse(text);
  if (!isObject(obj)) throw new Error("frame is not a JSON object");
  let frame: Frame | undefined;
  let unknown: Frame | undefined;
  for (const [kind, body] of Object.entries(obj)) {
    if (body === null) continue;
    if (!isObject(body)) throw new Error(`frame field ${kind} is not an object`);
    const fields = schema[kindNumber(kind) - 1]?.[1];
    // A kind from a newer version: its id, if it has one.
    const msg = newMessage(fields ?? [["id", "i"]]);
    for (const [name, t] of fields ?? [["id", "i"]]) {
      let v = body[name] ?? body[name.replace(/[A-Z]/g, (c) => "_" + c.toLowerCase())];
      // null means the default, except for a Value, where it is a value.
      if (v === undefined || (v === null && t != "j")) continue;
      msg[name] = readJsonField(name, t, v);
    }
    if (fields) frame = { [kind]: msg } as Frame;
    else unknown = { unknown: { kind, ...msg } } as Frame;
  }
  const f = frame ?? unknown;
  if (!f) throw new Error("frame has no kind");
  return f;
}

function readJsonField(name: string, t: string, v: JsonValue): unknown {
  const bad = () => new Error(`invalid value for field ${name}: ${JSON.stringify(v)}`);
  if (t == "j") return v;
  if (t == "c" && typeof v == "string") {
    const code = parseCode(v.replace(/^CODE_/, "").toLowerCase());
    if (code) return codeToNumber(code);
    if (v == "CODE_UNSPECIFIED") return 0;
  }
  if ("iuc".includes(t)) return u64(v);
  if (t == "n") {
    if ((typeof v != "string" && typeof v != "number") || !/^\d+$/.test(String(v))) throw bad();
    return String(BigInt(v));
  }
  if (t == "a") {
    if (!Array.isArray(v) || !v.every(isObject)) throw bad();
    return v.map((json) => ({ json }));
  }
  if (t == "m" || t == "o") {
    if (!isObject(v)) throw bad();
    return Object.fromEntries(
      Object.entries(v).map(([k, e]) => {
        if (t == "m" && typeof e != "string") throw bad();
        return [k, t == "m" ? e : u64(e)];
      }),
    );
  }
  // b, s, p
  if (typeof v != (t == "b" ? "boolean" : "string")) throw bad();
  return t == "p" ? base64Decode(v as string) : v;
}

function u64(v: JsonValue | undefined): number {
  const n = typeof v == "string" && /^\d+$/.test(v) ? Number(v) : v;
  if (typeof n != "number" || !Number.isSafeInteger(n) || n < 0) {
    throw new Error(`invalid unsigned integer ${JSON.stringify(v)}`);
  }
  return n;
}

const isObject = (v: unknown): v is JsonObject => typeof v == "object" && v !== null && !Array.isArray(v);
