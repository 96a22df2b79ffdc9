import {
  create,
  fromBinary,
  fromJson,
  toBinary,
  toJson,
  type DescMessage,
  type MessageInitShape,
  type MessageShape,
  type Registry,
} from "@bufbuild/protobuf";
import { codeFromNumber, codeToNumber, type Code } from "./code.js";
import { ParleyError } from "./error.js";
import { decodeBinary, decodeJson, encodeBinary, encodeJson, type Body, type ErrorFrame, type Frame, type Welcome } from "./frame.js";
import type { CallOptions, MethodSpec } from "./method.js";

/** The agent this runtime names in its Hello. */
export const agent = "parley-ts/0.1.0";

/** The deadline of calls that set none and whose method sets none: 30 s, as in the Go client. */
export const defaultTimeoutMs = 30_000;

/** The largest message a connection receives or sends unless told otherwise: 4 MiB. */
export const defaultMaxMessageBytes = 4 << 20;

/**
 * The part of the WebSocket API the runtime uses; the browser's WebSocket,
 * Node's global one (Node 22+) and the `ws` package all provide it.
 */
export interface WebSocketLike {
  readonly protocol: string;
  binaryType: string;
  send(data: string | Uint8Array): void;
  close(code?: number, reason?: string): void;
  onopen: ((ev: any) => unknown) | null;
  onmessage: ((ev: any) => unknown) | null;
  onclose: ((ev: any) => unknown) | null;
  onerror: ((ev: any) => unknown) | null;
}

/** A WebSocket constructor, such as `WebSocket` from the `ws` package. */
export type WebSocketConstructor = new (url: string, protocols: string) => WebSocketLike;

/** Options of a {@link Connection}. */
export interface ConnectionOptions {
  /**
   * The encoding: "proto" (subprotocol parley.v1+proto, binary messages,
   * the default) or "json" (parley.v1+json, text messages of protojson,
   * for debugging).
   */
  protocol?: "proto" | "json";
  /**
   * The WebSocket constructor. Defaults to the global WebSocket; pass the
   * `ws` package's on Node 20, which has none.
   */
  WebSocket?: WebSocketConstructor;
  /** Metadata sent in Hello, read by the server's authenticate hook. */
  metadata?: Record<string, string>;
  /**
   * A bearer token, or a function returning one, sent in Hello as
   * metadata "authorization": "Bearer <token>". A function is called
   * when the socket opens; if it throws, the connection fails with
   * "unauthenticated".
   */
  token?: string | (() => string | Promise<string>);
  /**
   * The deadline, in milliseconds, of calls for which neither the call
   * nor the method sets one; also how long the connection waits for the
   * server's Welcome. Default {@link defaultTimeoutMs} (30 s); 0 means no
   * deadline.
   */
  defaultTimeoutMs?: number;
  /**
   * The largest WebSocket message, in bytes, this connection receives
   * (a larger one is a protocol error) and sends (a larger call fails
   * with "resource_exhausted"; the server's own limit from Welcome
   * applies too). Default {@link defaultMaxMessageBytes} (4 MiB).
   */
  maxMessageBytes?: number;
  /** Resolves google.protobuf.Any and extensions in JSON payloads. */
  registry?: Registry;
}

/**
 * What the server said in its Welcome: the session and the server's limits.
 */
export interface Session {
  readonly sessionId: string;
  readonly resumeToken: string;
  readonly resumed: boolean;
  readonly resumeWindowMs: number;
  /** The largest message the server accepts, in bytes; 0 when it set none. */
  readonly maxMessageBytes: number;
  /** The most calls the server runs at once for this connection; 0 when it set none. */
  readonly maxInFlight: number;
  readonly pingIntervalMs: number;
  readonly agent: string;
  readonly metadata: Readonly<Record<string, string>>;
  /** How many stream items the server accepts per stream before granting more; 0 for the default. */
  readonly streamWindow: number;
  /** The most streams the server keeps open at once for this connection; 0 when it set none. */
  readonly maxStreams: number;
}

/**
 * A connection's state. It moves from "connecting" to "open" (when the
 * server's Welcome arrives) and ends in "closed", which is final and
 * carries why: the server's refusal (e.g. "unauthenticated"),
 * "unavailable" when the socket closed, "canceled" after
 * {@link Connection.close}, "internal" for a protocol error.
 *
 * An open connection whose server announced it is going away (GoAway)
 * has `goingAway` set: its calls in flight finish, new calls fail with
 * "unavailable".
 */
export type ConnectionState =
  | { readonly status: "connecting" }
  | { readonly status: "open"; readonly session: Session; readonly goingAway?: string }
  | { readonly status: "closed"; readonly error: ParleyError };

/** A call not yet settled. */
interface Pending {
  spec: MethodSpec;
  body: Body;
  metadata?: Record<string, string>;
  /** performance.now() at which the call gives up; undefined for none. */
  deadline?: number;
  /** The call id once the Call frame went out; 0 while queued. */
  id: number;
  settle(error: ParleyError | undefined, value?: unknown): void;
}

// Browsers only let scripts close with 1000 or 3000-4999.
const closeNormal = 1000;
const closeProtocolError = 1002;

/**
 * Connection is one WebSocket to a Parley server, on which any number of
 * calls run concurrently, each reply reaching its caller.
 *
 * It starts connecting when constructed and sends Hello as soon as the
 * socket opens. Calls made before the server's Welcome wait for it,
 * bounded by their deadlines. It does not reconnect: once closed it stays
 * closed, and its calls fail; make a new Connection.
 *
 * Concurrency: JavaScript runs one thing at a time, so every method may be
 * called from anywhere (callbacks, other calls' continuations) without
 * locking. Calls are independent; settling one never affects another.
 *
 * Limits: a call never waits beyond its deadline, whatever the socket
 * does. When the server's Welcome sets max_in_flight, calls beyond it wait
 * here for a free slot (still bounded by their deadlines) instead of being
 * refused by the server. Messages are limited to `maxMessageBytes`.
 */
export class Connection {
  /** Resolves when the connection is open; rejects with the ParleyError that closed it first. */
  readonly ready: Promise<void>;
  #ready!: [() => void, (e: ParleyError) => void];
  #state: ConnectionState = { status: "connecting" };
  #listeners = new Set<(state: ConnectionState) => void>();
  #socket: WebSocketLike;
  #json: boolean;
  #options: ConnectionOptions;
  #queue: Pending[] = [];
  #inflight = new Map<number, Pending>();
  #nextId = 1;
  #welcomeTimer: ReturnType<typeof setTimeout> | undefined;

  constructor(url: string, options: ConnectionOptions = {}) {
    this.#options = options;
    this.#json = options.protocol == "json";
    this.ready = new Promise((resolve, reject) => (this.#ready = [resolve, reject]));
    this.ready.catch(() => {}); // Unobserved, a failure must not crash Node.
    const WS: WebSocketConstructor | undefined = options.WebSocket ?? (globalThis as any).WebSocket;
    if (!WS) throw new Error("parley: no global WebSocket; pass ConnectionOptions.WebSocket (e.g. from the ws package)");
    const subprotocol = this.#json ? "parley.v1+json" : "parley.v1+proto";
    const ws = (this.#socket = new WS(url, subprotocol));
    ws.binaryType = "arraybuffer";
    ws.onopen = () => {
      if (ws.protocol != subprotocol) {
        this.#protocolError(`the server did not accept subprotocol ${subprotocol}`);
      } else {
        void this.#hello();
      }
    };
    ws.onmessage = (ev: { data: unknown }) => this.#receive(ev.data);
    // A close event follows an error event; browsers say nothing about
    // the error, the ws package says what went wrong.
    let why = "";
    ws.onerror = (ev: { message?: unknown }) => (why = typeof ev?.message == "string" ? ": " + ev.message : "");
    ws.onclose = (ev: { code: number; reason: string }) =>
      this.#fail(new ParleyError("unavailable", `connection closed (${ev.code}${ev.reason ? " " + ev.reason : ""})${why}`));
    const wait = this.#defaultTimeout;
    if (wait > 0) {
      this.#welcomeTimer = setTimeout(
        () => this.#fail(new ParleyError("unavailable", `no welcome from the server within ${wait} ms`), closeNormal),
        wait,
      );
    }
  }

  /** The current state; see {@link ConnectionState}. */
  get state(): ConnectionState {
    return this.#state;
  }

  /**
   * Calls listener with every new state until the returned function is
   * called. It is not called with the current state.
   */
  onStateChange(listener: (state: ConnectionState) => void): () => void {
    const l = (s: ConnectionState) => listener(s);
    this.#listeners.add(l);
    return () => this.#listeners.delete(l);
  }

  /**
   * Closes the connection. Calls waiting or in flight fail with
   * "canceled". Closing a closed connection does nothing.
   */
  close(): void {
    this.#fail(new ParleyError("canceled", "connection closed by the client"), closeNormal);
  }

  /**
   * Calls a method and resolves with its response, or rejects with a
   * {@link ParleyError}. The request may be a message or an init object.
   *
   * The deadline is options.timeoutMs, else spec.timeoutMs, else the
   * connection's default; at the deadline the call fails with
   * "deadline_exceeded" and a Cancel frame tells the server. Aborting
   * options.signal fails it with "canceled" likewise. A reply arriving
   * after that is dropped.
   */
  call<I extends DescMessage, O extends DescMessage>(
    spec: MethodSpec<I, O>,
    request: MessageShape<I> | MessageInitShape<I>,
    options: CallOptions = {},
  ): Promise<MessageShape<O>> {
    return new Promise((resolve, reject) => {
      const { signal } = options;
      const state = this.#state;
      if (state.status == "closed") return reject(state.error);
      if (state.status == "open" && state.goingAway !== undefined) {
        return reject(new ParleyError("unavailable", `the server is going away: ${state.goingAway}`));
      }
      if (signal?.aborted) return reject(aborted(spec, signal));
      let body: Body;
      try {
        const msg = create(spec.input, request as MessageInitShape<I>);
        body = this.#json
          ? { json: toJson(spec.input, msg, { registry: this.#options.registry }) }
          : { payload: toBinary(spec.input, msg) };
      } catch (e) {
        return reject(new ParleyError("invalid_argument", `${spec.procedure}: cannot encode the request: ${String(e)}`, [], {}, e));
      }
      const timeout = options.timeoutMs ?? (spec.timeoutMs || this.#defaultTimeout);
      let timer: ReturnType<typeof setTimeout> | undefined;
      const onAbort = () => p.settle(aborted(spec, signal!), undefined);
      const p: Pending = {
        spec,
        body,
        metadata: options.metadata,
        id: 0,
        settle: (error, value) => {
          // Settles once: whichever of reply, deadline, abort or close comes first.
          p.settle = () => {};
          clearTimeout(timer);
          signal?.removeEventListener("abort", onAbort);
          if (p.id) {
            this.#inflight.delete(p.id);
            // The caller gave up: tell the server, whose handler may still
            // run, and why, so that at a deadline the handler sees
            // deadline_exceeded (by its own deadline), not canceled.
            const code = error?.code;
            if ((code == "canceled" || code == "deadline_exceeded") && this.#state.status == "open") {
              this.#send({ cancel: { id: p.id, code: code == "canceled" ? 0 : codeToNumber(code) } });
            }
          } else {
            this.#queue = this.#queue.filter((q) => q != p);
          }
          if (error) reject(error);
          else resolve(value as MessageShape<O>);
          this.#pump();
        },
      };
      if (timeout > 0) {
        p.deadline = performance.now() + timeout;
        timer = setTimeout(
          () => p.settle(new ParleyError("deadline_exceeded", `${spec.procedure}: no reply within ${timeout} ms`)),
          Math.min(timeout, 0x7fffffff),
        );
      }
      signal?.addEventListener("abort", onAbort);
      this.#queue.push(p);
      this.#pump();
    });
  }

  get #defaultTimeout(): number {
    return this.#options.defaultTimeoutMs ?? defaultTimeoutMs;
  }

  #setState(state: ConnectionState) {
    this.#state = state;
    for (const l of this.#listeners) {
      try {
        l(state);
      } catch (e) {
        // A listener's bug must not break the connection.
        setTimeout(() => {
          throw e;
        });
      }
    }
  }

  async #hello() {
    const { metadata, token } = this.#options;
    const md = { ...metadata };
    try {
      const t = typeof token == "function" ? await token() : token;
      if (t) md["authorization"] = `Bearer ${t}`;
    } catch (e) {
      return this.#fail(new ParleyError("unauthenticated", `token: ${String(e)}`, [], {}, e), closeNormal);
    }
    if (this.#state.status == "connecting") this.#send({ hello: { metadata: md, agent } });
  }

  /** Sends queued calls while the server has room for them. */
  #pump() {
    const state = this.#state;
    if (state.status != "open") return;
    const max = state.session.maxInFlight || Infinity;
    while (this.#queue.length && this.#inflight.size < max) {
      const p = this.#queue.shift()!;
      const id = (p.id = this.#nextId);
      this.#nextId += 2;
      this.#inflight.set(id, p);
      // The remaining time, rounded down: the handler never outlives us.
      const timeoutMs = p.deadline === undefined ? 0 : Math.min(Math.max(1, Math.floor(p.deadline - performance.now())), 0xffffffff);
      const size = this.#send({ call: { id, method: p.spec.procedure, ...p.body, timeoutMs, metadata: p.metadata } });
      if (size > this.#maxSend) {
        p.id = 0; // Never sent: nothing to cancel.
        this.#inflight.delete(id);
        p.settle(new ParleyError("resource_exhausted", `${p.spec.procedure}: the request is ${size} bytes, the limit ${this.#maxSend}`));
      }
    }
  }

  get #maxSend(): number {
    const server = this.#state.status == "open" ? this.#state.session.maxMessageBytes : 0;
    return Math.min(this.#options.maxMessageBytes ?? defaultMaxMessageBytes, server || Infinity);
  }

  /**
   * Encodes and sends a frame unless it is larger than the send limit.
   * Returns its size in bytes (for a JSON frame, at least its length).
   */
  #send(frame: Frame): number {
    const data = this.#json ? encodeJson(frame) : encodeBinary(frame);
    let size = data.length;
    if (typeof data == "string" && size * 3 > this.#maxSend) size = new TextEncoder().encode(data).length;
    if (size <= this.#maxSend) this.#socket.send(data);
    return size;
  }

  #receive(data: unknown) {
    if (this.#state.status == "closed") return;
    let frame: Frame;
    try {
      if (this.#json != (typeof data == "string")) {
        throw new Error(`a ${this.#json ? "binary" : "text"} message on ${this.#json ? "parley.v1+json" : "parley.v1+proto"}`);
      }
      const size = typeof data == "string" ? data.length : (data as ArrayBuffer).byteLength;
      const max = this.#options.maxMessageBytes ?? defaultMaxMessageBytes;
      if (size > max) throw new Error(`a message of ${size} bytes, more than the limit of ${max}`);
      frame = typeof data == "string" ? decodeJson(data) : decodeBinary(bytesOf(data));
    } catch (e) {
      return this.#protocolError(`undecodable frame from the server: ${e instanceof Error ? e.message : String(e)}`);
    }
    const state = this.#state;
    if ("welcome" in frame) {
      if (state.status != "connecting") return;
      clearTimeout(this.#welcomeTimer);
      this.#setState({ status: "open", session: session(frame.welcome) });
      this.#ready[0]();
      this.#pump();
    } else if ("reply" in frame) {
      const { id, payload, json } = frame.reply;
      const p = this.#inflight.get(id);
      if (!p) return; // Late: the call already settled.
      let value: unknown;
      try {
        const schema = p.spec.output;
        value =
          json !== undefined
            ? fromJson(schema, json, { registry: this.#options.registry })
            : fromBinary(schema, payload ?? new Uint8Array(0));
      } catch (e) {
        return p.settle(
          new ParleyError("internal", `${p.spec.procedure}: undecodable reply from the server: ${String(e)}`, [], {}, e),
        );
      }
      p.settle(undefined, value);
    } else if ("error" in frame) {
      const err = errorOf(frame.error);
      if (frame.error.id == 0) this.#fail(err, closeNormal);
      else this.#inflight.get(frame.error.id)?.settle(err);
    } else if ("ping" in frame) {
      this.#send({ pong: frame.ping });
    } else if ("goaway" in frame) {
      if (state.status == "open") this.#setState({ ...state, goingAway: frame.goaway.reason ?? "" });
    } else if ("call" in frame) {
      // Services implemented by clients are not supported yet.
      this.#sendError(frame.call.id, "unimplemented", `parley-ts: no handler for ${frame.call.method}`);
    } else if ("unknown" in frame) {
      // The compatibility rule of frame.proto.
      if (frame.unknown.id) this.#sendError(frame.unknown.id, "invalid_argument", `parley-ts: unknown frame kind ${frame.unknown.kind}`);
    }
    // Event, stream and credit frames are not handled yet; pong and cancel need nothing.
  }

  #sendError(id: number, code: Code, message: string) {
    this.#send({ error: { id, code: codeToNumber(code), message } });
  }

  /** Reports a misbehaving server, closes the socket and fails everything. */
  #protocolError(message: string) {
    if (this.#state.status == "closed") return;
    try {
      this.#sendError(0, "invalid_argument", message);
    } catch {
      // The socket may not be open; closing it is what matters.
    }
    this.#fail(new ParleyError("internal", `protocol error: ${message}`), closeProtocolError, "protocol error");
  }

  /**
   * Moves to closed (once) with error, fails every call with it, and
   * closes the socket with closeCode when given.
   */
  #fail(error: ParleyError, closeCode?: number, reason?: string) {
    if (this.#state.status == "closed") return;
    clearTimeout(this.#welcomeTimer);
    this.#setState({ status: "closed", error });
    this.#ready[1](error);
    for (const p of [...this.#queue, ...this.#inflight.values()]) p.settle(error);
    if (closeCode) {
      try {
        this.#socket.close(closeCode, reason);
      } catch {
        this.#socket.close(closeNormal, reason);
      }
    }
  }
}

function aborted(spec: MethodSpec, signal: AbortSignal): ParleyError {
  const reason: unknown = signal.reason;
  return new ParleyError("canceled", `${spec.procedure}: aborted${reason instanceof Error ? ": " + reason.message : ""}`, [], {}, reason);
}

function bytesOf(data: unknown): Uint8Array {
  if (data instanceof ArrayBuffer) return new Uint8Array(data);
  if (ArrayBuffer.isView(data)) return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  throw new Error("a binary message of an unsupported type (set binaryType to arraybuffer)");
}

function session(w: Welcome): Session {
  return {
    sessionId: "",
    resumeToken: "",
    resumed: false,
    resumeWindowMs: 0,
    maxMessageBytes: 0,
    maxInFlight: 0,
    pingIntervalMs: 0,
    agent: "",
    metadata: {},
    streamWindow: 0,
    maxStreams: 0,
    ...w,
  };
}

function errorOf(e: ErrorFrame): ParleyError {
  const details = (e.details ?? []).map((d) => {
    if ("json" in d) {
      const url = d.json["@type"];
      return { type: typeName(typeof url == "string" ? url : ""), json: d.json };
    }
    return { type: typeName(d.typeUrl), value: d.value };
  });
  return new ParleyError(codeFromNumber(e.code ?? 0), e.message ?? "", details, e.metadata);
}

const typeName = (url: string) => url.slice(url.lastIndexOf("/") + 1);
