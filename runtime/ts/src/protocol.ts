import { fromBinary, toBinary, type DescMessage, type Message, type Registry } from "@bufbuild/protobuf";
import type { ErrorDetail } from "./error.js";
import { decodeBinary, encodeBinary, type AnyDetail, type Body, type Frame } from "./frame.js";

/**
 * A wire encoding of Parley: the WebSocket subprotocol a
 * `Connection` offers and how its frames and messages are written.
 * Pass one as `ConnectionOptions.protocol`: {@link binaryProtocol}
 * (parley.v1+proto, the default) or `jsonProtocol` (parley.v1+json, from
 * `@parleyrpc/runtime/json`).
 *
 * Each encoding is its own object so that an application bundles only the
 * ones it imports: the JSON one brings protobuf-es's JSON functions and the
 * JSON frame codec, which binary-only applications do without.
 *
 * The members are the runtime's own interface to its encodings and may
 * change in any release; implementing a Protocol outside this package is
 * not supported.
 */
export interface Protocol {
  /** The WebSocket subprotocol: "parley.v1+proto" or "parley.v1+json". */
  readonly name: string;
  /**
   * Encodes a frame as one WebSocket message: bytes go out as a binary
   * message, a string as a text message.
   */
  encodeFrame(frame: Frame): Uint8Array | string;
  /**
   * Decodes one WebSocket message (a text message as a string); throws on
   * malformed input and on the wrong message type for the subprotocol.
   */
  decodeFrame(data: Uint8Array | string): Frame;
  /** Encodes a message as the body of a Call, Reply, StreamItem or Event; throws when it cannot. */
  encodeMessage(schema: DescMessage, message: Message, registry?: Registry): Body;
  /** Decodes such a body, an absent one as the empty message; throws when it cannot. */
  decodeMessage(schema: DescMessage, body: Body, registry?: Registry): Message;
  /**
   * Turns a detail of an Error frame into the {@link ErrorDetail} that
   * `ParleyError.findDetails` decodes.
   */
  readDetail(detail: AnyDetail): ErrorDetail;
  /**
   * The UTF-8 length of a text message, for a protocol of text messages
   * (jsonProtocol): exact, or, given max, possibly less for a message that
   * surely is no longer than max. Binary protocols leave it out, so that
   * their applications do not bundle the counting.
   */
  textBytes?(text: string, max?: number): number;
}

const empty = new Uint8Array(0);

/**
 * parley.v1+proto: frames and messages in the protobuf binary encoding, in
 * binary WebSocket messages. The default protocol of a `Connection`.
 */
export const binaryProtocol: Protocol = {
  name: "parley.v1+proto",
  encodeFrame: encodeBinary,
  decodeFrame(data) {
    if (typeof data == "string") throw new Error("a text message on parley.v1+proto");
    return decodeBinary(data);
  },
  encodeMessage: (schema, message) => ({ payload: toBinary(schema, message) }),
  decodeMessage(schema, { payload, json }) {
    // frame.proto's json body belongs to parley.v1+json: decodeBinary
    // leaves it undecoded (null) and the call, item or event fails here.
    if (json !== undefined) throw new Error("a json body on parley.v1+proto");
    return fromBinary(schema, payload ?? empty);
  },
  readDetail(d) {
    // decodeBinary gives every detail as a type URL and value (the protojson
    // form comes from decodeJson, for jsonProtocol).
    const { typeUrl, value } = d as Extract<AnyDetail, { typeUrl: string }>;
    return { type: typeName(typeUrl), value };
  },
};

/** The full name of the message type an Any's type URL names. */
export const typeName = (url: string) => url.slice(url.lastIndexOf("/") + 1);
