import { fromBinary, type DescMessage, type JsonValue, type MessageShape, type Registry } from "@bufbuild/protobuf";
import type { Code } from "./code.js";

/**
 * One typed detail of an error, as it arrived: a `google.protobuf.Any`.
 * Read it with {@link ParleyError.findDetails}.
 */
export interface ErrorDetail {
  /** The full name of the detail's message type, such as "google.rpc.RetryInfo". */
  readonly type: string;
  /** The binary encoding of the message (parley.v1+proto). */
  readonly value?: Uint8Array;
  /** The protojson form of the Any, "@type" included (parley.v1+json). */
  readonly json?: JsonValue;
  /**
   * Decodes `json` as a message of the given type. The JSON protocol
   * (`jsonProtocol`, from `@parleyrpc/runtime/json`) sets it on the details
   * that arrive over parley.v1+json: it carries protobuf-es's JSON reader,
   * which this module leaves out so that applications speaking only
   * binary do not bundle it.
   */
  readonly readJson?: <Desc extends DescMessage>(schema: Desc, registry?: Registry) => MessageShape<Desc>;
}

/**
 * ParleyError is how every call fails: a {@link Code}, the message the
 * server (or this runtime) gave, and optional typed details.
 *
 * `instanceof ParleyError` holds for errors made by another copy of this
 * library too (two bundles, two versions), like connect-es's ConnectError.
 * Use {@link ParleyError.from} to turn any caught value into one.
 */
export class ParleyError extends Error {
  override name = "ParleyError";
  /** The status code. */
  readonly code: Code;
  /** The message without the code prefix, as the server sent it. */
  readonly rawMessage: string;
  /** Typed details; see {@link ParleyError.findDetails}. */
  readonly details: readonly ErrorDetail[];
  /** Trailing metadata of the failed call. */
  readonly metadata: Readonly<Record<string, string>>;

  constructor(
    code: Code,
    message: string,
    details: readonly ErrorDetail[] = [],
    metadata: Record<string, string> = {},
    cause?: unknown,
  ) {
    // "code: message", as Go's *parley.Error formats itself.
    super(message ? `${code}: ${message}` : code, { cause });
    this.code = code;
    this.rawMessage = message;
    this.details = details;
    this.metadata = metadata;
  }

  /**
   * Returns reason if it is a ParleyError, else a new one with the given
   * code (default "unknown") whose message is reason's and whose cause is
   * reason.
   */
  static from(reason: unknown, code: Code = "unknown"): ParleyError {
    if (reason instanceof ParleyError) return reason;
    return new ParleyError(
      code,
      reason instanceof Error ? reason.message : String(reason),
      [],
      {},
      reason,
    );
  }

  /**
   * Decodes the details whose type is the given message type: binary ones
   * with protobuf-es's fromBinary, JSON ones (parley.v1+json) with the
   * reader the JSON protocol gave them. A JSON detail of a type whose
   * protojson form is special (a well-known type) is read from its "value"
   * field, as protojson writes it. registry resolves Any and extensions in
   * JSON details. Throws when a detail cannot be decoded, and for a JSON
   * detail without a reader (one made by hand rather than received).
   */
  findDetails<Desc extends DescMessage>(
    schema: Desc,
    registry?: Registry,
  ): MessageShape<Desc>[] {
    const found: MessageShape<Desc>[] = [];
    for (const d of this.details) {
      if (d.type !== schema.typeName) continue;
      if (d.value) {
        found.push(fromBinary(schema, d.value));
      } else if (d.readJson) {
        found.push(d.readJson(schema, registry));
      } else if (d.json !== undefined) {
        throw new Error(`parley: the JSON detail ${d.type} has no reader: only details received over jsonProtocol have one`);
      }
    }
    return found;
  }

  /**
   * Recognises errors of other copies of this library: same name and shape.
   * For subclasses, the ordinary prototype check applies.
   */
  static override [Symbol.hasInstance](v: unknown): boolean {
    if (this !== ParleyError) return Function.prototype[Symbol.hasInstance].call(this, v);
    if (!(v instanceof Error)) return false;
    if (Object.getPrototypeOf(v) === ParleyError.prototype) return true;
    const e = v as Partial<ParleyError>;
    return (
      e.name === "ParleyError" &&
      typeof e.code == "string" &&
      typeof e.rawMessage == "string" &&
      Array.isArray(e.details)
    );
  }
}
