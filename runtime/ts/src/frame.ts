/**
 * The codec of `parley.v1.Frame` (proto/parley/v1/frame.proto), written by
 * hand against the schema to keep the runtime small: no generated code, one
 * table that drives both encodings. This file holds the table and the
 * binary encoding (parley.v1+proto); the JSON one (parley.v1+json) is in
 * jsonframe.ts, which only the JSON protocol imports, so that applications
 * speaking binary do not bundle it.
 *
 * The `json` body (google.protobuf.Value) belongs to parley.v1+json, and the
 * binary codec has no encoding of it: encodeBinary refuses one, and
 * decodeBinary skips its bytes and gives the body as `json: null`. The frame
 * still decodes, its id included, and binaryProtocol.decodeMessage fails the
 * one call, stream or event it came with as undecodable.
 *
 * Encoding follows Go's deterministic marshal, so frames round-trip byte for
 * byte: fields in field-number order except the oneof body, which comes
 * last (as Go orders oneofs) and is always written when set; other default
 * values omitted; map entries in insertion order (Go writes them sorted by
 * key, and decoding keeps that order).
 *
 * uint64 ids, offsets and the last id are JavaScript numbers (they count
 * calls and events, far below 2^53); a ping nonce is any uint64, so it stays
 * a decimal string.
 *
 * @internal
 */
import type { JsonObject, JsonValue } from "@bufbuild/protobuf";
import { BinaryReader, BinaryWriter } from "@bufbuild/protobuf/wire";

// Wire types, as numbers: protobuf-es's WireType enum is an object the
// minifier cannot shorten.
const varintType = 0;
const delimitedType = 2;

type Strings = Record<string, string>;

/**
 * A message body: the encoded message, or its protojson form. decodeBinary
 * gives a json body as null, whatever it holds (see above).
 */
export interface Body {
  payload?: Uint8Array;
  json?: JsonValue;
}

/** A `google.protobuf.Any` in an Error frame. */
export type AnyDetail = { typeUrl: string; value: Uint8Array } | { json: JsonObject };

export interface Hello {
  metadata?: Strings; sessionId?: string; resumeToken?: string; offsets?: Record<string, number>; agent?: string; streamWindow?: number;
  /** The largest message the client accepts (Welcome.maxMessageBytes's mirror); 0 or absent: not said. */
  maxMessageBytes?: number;
  /** The item bytes the client accepts per stream before granting more; 0 or absent: no byte window. */
  streamWindowBytes?: number;
}
export interface Welcome {
  sessionId?: string; resumeToken?: string; resumed?: boolean; resumeWindowMs?: number;
  maxMessageBytes?: number; maxInFlight?: number; pingIntervalMs?: number; agent?: string; metadata?: Strings;
  streamWindow?: number; maxStreams?: number; streamWindowBytes?: number;
}
export interface Call extends Body { id: number; method?: string; timeoutMs?: number; metadata?: Strings }
export interface Reply extends Body { id: number; metadata?: Strings }
/** An Error frame; code is the wire number (0 to 16, or more from a newer peer). */
export interface ErrorFrame { id: number; code?: number; message?: string; details?: AnyDetail[]; metadata?: Strings; notRun?: boolean }
/** How many more stream items, and item bytes (StreamItem messages' lengths, see frame.proto), the peer may send. */
export interface Credit { id: number; items?: number; bytes?: number }
export interface Event extends Body { method?: string; topic?: string; offset?: number; epoch?: string }

/** A decoded frame: the kind that was set and its fields. */
export type Frame =
  | { hello: Hello }
  | { welcome: Welcome }
  | { call: Call }
  | { reply: Reply }
  | { error: ErrorFrame }
  /** code: why the caller gave up, canceled (1, the default) or deadline_exceeded (4). */
  | { cancel: { id: number; code?: number } }
  | { event: Event }
  | { item: Body & { id: number } }
  | { end: { id: number } }
  | { credit: Credit }
  | { goaway: { reason?: string; lastId?: number } }
  | { ping: { nonce?: string } }
  | { pong: { nonce?: string } }
  /** A kind this version does not know: its field number and, if it has one, its id (field 1). */
  | { unknown: { kind: number | string; id: number } };

// The schema, field numbers by position (every message numbers its fields
// 1, 2, 3, ... and Frame numbers its kinds likewise). Field types:
//   i uint64 as number   n uint64 as decimal string   u uint32   s string
//   b bool   c Code enum   p bytes (oneof: always written when set)
//   j google.protobuf.Value (oneof)   m map<string,string>
//   o map<string,uint64>   a repeated google.protobuf.Any
export const schema = (
  "hello metadata:m sessionId:s resumeToken:s offsets:o agent:s streamWindow:u maxMessageBytes:u streamWindowBytes:u|" +
  "welcome sessionId:s resumeToken:s resumed:b resumeWindowMs:u maxMessageBytes:u maxInFlight:u pingIntervalMs:u agent:s metadata:m streamWindow:u maxStreams:u streamWindowBytes:u|" +
  "call id:i method:s payload:p json:j timeoutMs:u metadata:m|" +
  "reply id:i payload:p json:j metadata:m|" +
  "error id:i code:c message:s details:a metadata:m notRun:b|" +
  "cancel id:i code:c|" +
  "event method:s payload:p json:j topic:s offset:i epoch:s|" +
  "item id:i payload:p json:j|" +
  "end id:i|" +
  "credit id:i items:u bytes:u|" +
  "goaway reason:s lastId:i|" +
  "ping nonce:n|" +
  "pong nonce:n"
)
  .split("|")
  .map((m) => {
    const [kind, ...fields] = m.split(" ");
    return [kind!, fields.map((f) => f.split(":") as [string, string])] as const;
  });

export const kindNumber = (kind: string) => schema.findIndex(([k]) => k == kind) + 1;

/** Wire type per field type: varint for scalars, length-delimited otherwise. */
const isVarint = (t: string) => "inucb".includes(t);

/** Is the field a member of the oneof body? */
const isBody = (t: string) => t == "p" || t == "j";

export const isDefault = (t: string, v: unknown) =>
  v === undefined ||
  (!isBody(t) && (v === 0 || v === "" || (t == "n" && v === "0") || v === false || (typeof v == "object" && v !== null && Object.keys(v).length == 0)));

// ---------------------------------------------------------------- binary

/**
 * Each kind's fields with their numbers, in the order Go's deterministic
 * marshal writes them: the oneof (the body) after the other fields.
 */
const order = schema.map(([, fields]) => {
  const all = fields.map(([name, t], i) => [name, t, i + 1] as const);
  return [...all.filter(([, t]) => !isBody(t)), ...all.filter(([, t]) => isBody(t))];
});

/** One writer for the fields of every frame, so that its buffer grows once, not per frame. */
let w = new BinaryWriter();

/**
 * Encodes a frame as protobuf (parley.v1+proto) into a buffer of its
 * size: the writer takes the fields but the payload, which comes last and
 * is copied once, straight into that buffer after its tag and length.
 * The kind's tag and length are written there too, not by the writer, so
 * that a frame costs one finish() of the writer, not two.
 */
export function encodeBinary(frame: Frame): Uint8Array {
  let kind = "";
  for (kind in frame) break;
  const no = kindNumber(kind);
  if (!no) throw new Error(`cannot encode frame kind ${kind}`);
  let payload: [number, Uint8Array] | undefined;
  try {
    payload = writeFields(no, (frame as Record<string, any>)[kind]);
  } catch (e) {
    w = new BinaryWriter(); // Half a frame in it.
    throw e;
  }
  const fields = w.finish();
  // Keep no buffer much larger than the frames usually sent.
  if (fields.length > 1 << 16) w = new BinaryWriter();
  const [f, p] = payload ?? [0, fields.subarray(0, 0)];
  const size = fields.length + (f && 1 + varintSize(p.length) + p.length);
  const out = alloc(1 + varintSize(size) + size);
  const at = varint(out, varint(out, 0, (no << 3) | delimitedType), size);
  out.set(fields, at);
  if (f) out.set(p, varint(out, varint(out, at + fields.length, (f << 3) | delimitedType), p.length));
  return out;
}

/** Writes n, below 2^32, as a varint into out at i; returns where it ends. */
function varint(out: Uint8Array, i: number, n: number): number {
  for (; n > 127; n >>>= 7) out[i++] = (n & 127) | 128;
  out[i++] = n;
  return i;
}

/**
 * A fresh buffer of n bytes for a frame: small ones are carved from a
 * shared 64 KiB slab, as Node carves Buffers from its pool, so that a call
 * does not create an ArrayBuffer of its own (each costs an allocation
 * outside the JavaScript heap and garbage collector work). No region is
 * handed out twice: a frame may be held after send, and its slab lives as
 * long as any of its frames does.
 */
let slab = new Uint8Array(0);
let slabAt = 0;
function alloc(n: number): Uint8Array {
  if (n > 1 << 13) return new Uint8Array(n);
  if (slabAt + n > slab.length) (slab = new Uint8Array(1 << 16)), (slabAt = 0);
  return slab.subarray(slabAt, (slabAt += n));
}

const varintSize = (n: number) => (n < 128 ? 1 : n < 1 << 14 ? 2 : n < 1 << 21 ? 3 : n < 1 << 28 ? 4 : 5);

/**
 * Writes the fields of a frame of kind no but its payload into w, and
 * returns the payload with its field number, if it has one. Kinds and
 * payload fields number below 16, so their tags take one byte.
 */
function writeFields(no: number, msg: Record<string, any>): [number, Uint8Array] | undefined {
  let payload: [number, Uint8Array] | undefined;
  for (const [name, t, f] of order[no - 1]!) {
    const v = msg[name];
    if (isDefault(t, v)) continue;
    if (isVarint(t)) {
      // uint64 goes through BigInt: only what needs it takes that path.
      w.tag(f, varintType);
      if (t == "n" || v > 0xffffffff) w.uint64(v);
      else w.uint32(+v);
    } else if (t == "s") {
      w.tag(f, delimitedType).string(v);
    } else if (t == "p") {
      payload = [f, v];
    } else if (t == "j") {
      throw new Error("cannot encode a json body as protobuf");
    } else if (t == "a") {
      for (const d of v as AnyDetail[]) {
        if (!("typeUrl" in d)) throw new Error("cannot encode a JSON error detail as protobuf");
        w.tag(f, delimitedType).fork();
        if (d.typeUrl) w.tag(1, delimitedType).string(d.typeUrl);
        if (d.value.length) w.tag(2, delimitedType).bytes(d.value);
        w.join();
      }
    } else {
      // m, o: a map is a repeated entry message {1: key, 2: value}; Go
      // writes every entry's key and value, defaults included.
      for (const [key, val] of Object.entries(v as Record<string, string | number>)) {
        w.tag(f, delimitedType).fork().tag(1, delimitedType).string(key);
        if (t == "m") w.tag(2, delimitedType).string(val as string);
        else w.tag(2, varintType).uint64(val);
        w.join();
      }
    }
  }
  return payload;
}

/** Decodes a protobuf frame; throws on malformed input. */
export function decodeBinary(bytes: Uint8Array): Frame {
  const r = new BinaryReader(bytes);
  let frame: Frame | undefined;
  let unknown: Frame | undefined;
  while (r.pos < r.len) {
    const [no, wt] = r.tag();
    const spec = schema[no - 1];
    if (wt != delimitedType) {
      r.skip(wt, no);
    } else if (spec) {
      frame = { [spec[0]]: readMessage(r, spec[1]) } as Frame;
    } else {
      // A kind from a newer version: remember its id, if field 1 is one.
      unknown = { unknown: { kind: no, ...readMessage(r, [["id", "i"]]) } } as Frame;
    }
  }
  const f = frame ?? unknown;
  if (!f) throw new Error("frame has no kind");
  return f;
}

/** Reads a length prefix and returns where the nested message ends. */
function end(r: BinaryReader): number {
  const e = r.uint32() + r.pos;
  if (e > r.len) throw new Error("premature end of input");
  return e;
}

export type Fields = readonly (readonly [string, string])[];

// The nested messages of the schema, in its terms; y is bytes outside a oneof.
const anyFields: Fields = [["typeUrl", "s"], ["value", "y"]];
const mapFields = (t: string): Fields => [["key", "s"], ["value", t == "m" ? "s" : "i"]];

/** A new decoded message; one with an id has it, 0 by default. */
export const newMessage = (fields: Fields): Record<string, any> => (fields[0]![0] == "id" ? { id: 0 } : {});

/** Reads the length-delimited message at r. */
function readMessage(r: BinaryReader, fields: Fields): Record<string, any> {
  const stop = end(r);
  const msg = newMessage(fields);
  while (r.pos < stop) {
    const [no, wt] = r.tag();
    const [name, t = ""] = fields[no - 1] ?? [];
    if (!name || wt != (isVarint(t) ? varintType : delimitedType)) {
      r.skip(wt, no);
    } else if (t == "a") {
      (msg[name] ??= []).push({ typeUrl: "", value: new Uint8Array(0), ...readMessage(r, anyFields) });
    } else if (t == "m" || t == "o") {
      const { key = "", value = t == "m" ? "" : 0 } = readMessage(r, mapFields(t));
      (msg[name] ??= {})[key] = value;
    } else {
      msg[name] =
        t == "i" ? Number(r.uint64())
        : t == "n" ? String(r.uint64())
        : t == "b" ? r.bool()
        : isVarint(t) ? r.uint32()
        : t == "s" ? r.string()
        : t == "j" ? (r.bytes(), null)
        : r.bytes();
      // The body is a oneof: the last one read wins. Deleting costs a call
      // into the engine even when there is nothing to delete: look first.
      const other = t == "p" ? "json" : "payload";
      if (isBody(t) && other in msg) delete msg[other];
    }
  }
  if (r.pos != stop) throw new Error("premature end of message");
  return msg;
}
