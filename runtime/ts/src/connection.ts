import { create, type DescMessage, type MessageInitShape, type MessageShape, type Registry } from "@bufbuild/protobuf";
import { codeFromNumber, codeToNumber, type Code } from "./code.js";
import { ParleyError } from "./error.js";
import type { Body, Call, Credit, ErrorFrame, Event, Frame, Welcome } from "./frame.js";
import type { HandlerContext } from "./handle.js";
import type { CallOptions, MethodSpec } from "./method.js";
import { binaryProtocol, type Protocol } from "./protocol.js";

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
   * The encoding: {@link binaryProtocol} (subprotocol parley.v1+proto,
   * binary messages, the default) or `jsonProtocol` (parley.v1+json, text
   * messages of protojson, for debugging), which an application imports
   * from `@parleyrpc/runtime/json` when it wants it, so that others do not
   * bundle it.
   */
  protocol?: Protocol;
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
   * every time a socket opens, the first and each reconnect, so a
   * reconnect authenticates afresh; if it throws, the connection closes
   * with "unauthenticated". While it runs the socket waits for Hello: a
   * socket that fails meanwhile, or gets no Welcome within
   * defaultTimeoutMs, fails saying that the token function had not
   * returned.
   */
  token?: string | (() => string | Promise<string>);
  /**
   * How to reconnect when an open connection's socket drops (see
   * {@link ReconnectOptions}; default {@link defaultReconnect}), or false
   * to close the connection instead. The first socket is not retried: if
   * it never opens, the connection closes, as the Go client's Dial fails.
   */
  reconnect?: ReconnectOptions | false;
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
   * applies too). Sent in Hello as max_message_bytes: the server then
   * sends nothing larger (a reply too large arrives as a
   * "resource_exhausted" error, an event too large is not sent). Default
   * {@link defaultMaxMessageBytes} (4 MiB).
   */
  maxMessageBytes?: number;
  /** Resolves google.protobuf.Any and extensions in JSON payloads and error details (jsonProtocol). */
  registry?: Registry;
  /**
   * How many stream items this client accepts per stream before it grants
   * the server more (sent in Hello as stream_window). It bounds each
   * stream's receive buffer to that many items; a server sending beyond
   * it fails that stream with "resource_exhausted". Default
   * {@link defaultStreamWindow} (64). Credit goes back every half window
   * read; while the reader waits for items, the window doubles at each
   * grant, so that credit round trips do not hold the stream back; the
   * connection's streams share 63 windows' worth of such growth, each live
   * stream at most its share, and a window grows only while, at the size
   * of its stream's largest item, it stays within half of
   * streamBufferBytes.
   */
  streamWindow?: number;
  /**
   * How many bytes of stream items this client accepts per stream before
   * it grants the server more (sent in Hello as stream_window_bytes): the
   * item window bounds streams of small items, this one streams of large
   * ones, so that a server keeping to its credit never takes a slow
   * reader past streamBufferBytes. An item's bytes are its WebSocket
   * message's length (UTF-8 bytes of a text message); one item larger
   * than the window still comes, alone. A server sending beyond it fails
   * that stream with "resource_exhausted". Default
   * {@link defaultStreamWindowBytes} (256 KiB, as in Go); 0 sets no byte
   * window, as clients before it. Credit goes back every half window of
   * bytes read as well as every half item window; the window doubles with
   * the item window's rule (the reader waits, or has read all) while the
   * live streams' doubled windows stay within half of streamBufferBytes
   * (and 64 windows, and 1 GiB). Sends are paced by the server's byte
   * window (Welcome) likewise. The server holds to it only if it knows
   * byte credit: one that does not sets no byte window in its Welcome, and
   * is then held to items only.
   */
  streamWindowBytes?: number;
  /**
   * How many bytes of stream items this client holds received and not
   * yet read, all streams together (an item's payload bytes in binary, its
   * message's UTF-8 bytes in JSON): a backstop, which
   * byte windows keep a server within unless many streams carry items
   * near the message limit at once (or the server, from before byte
   * credit, counts items only). An item that would pass it fails its
   * stream with "resource_exhausted" (and Cancel); the other streams carry
   * on. Default {@link defaultStreamBufferBytes} (32 MiB), as in Go.
   */
  streamBufferBytes?: number;
  /**
   * How often, in milliseconds, the client sends a Ping frame once open.
   * Default: the server's ping_interval_ms from Welcome; 0 (or a server
   * that sets none) disables keepalive.
   */
  pingIntervalMs?: number;
  /**
   * With keepalive on, a socket on which no frame at all arrived for
   * pingIntervalMs + pongTimeoutMs is taken as dead, a drop like any
   * other: the connection reconnects (or, with reconnect false, closes
   * with "unavailable"). Default 10 s, so 30 s with the Go server's
   * default 20 s ping interval.
   */
  pongTimeoutMs?: number;
  /**
   * Receives what event handlers throw (or their promises reject with) and
   * events that cannot be decoded. Default console.error.
   */
  onError?: (error: unknown) => void;
}

/**
 * The reconnection policy: the delay before attempt n (counted from 1
 * after each drop) is drawn uniformly from [0, min(maxDelayMs,
 * initialDelayMs * multiplier^(n-1))] ("full jitter"), so that many
 * clients losing one server come back spread out. The same policy and
 * defaults as the Go client's parley.Backoff.
 */
export interface ReconnectOptions {
  /** The cap of the first delay, in ms. Default 100. */
  initialDelayMs?: number;
  /** The cap of every delay, in ms. Default 10 000. */
  maxDelayMs?: number;
  /** How much the cap grows per attempt. Default 2. */
  multiplier?: number;
  /** Give up (closed, "unavailable") after this many failed dials in a row; 0, the default, never gives up. */
  maxAttempts?: number;
  /** The source of jitter, uniform in [0, 1). Default Math.random; for tests. */
  random?: () => number;
}

/** The reconnection policy of connections that set none. */
export const defaultReconnect: Readonly<Required<Omit<ReconnectOptions, "random">>> = {
  initialDelayMs: 100,
  maxDelayMs: 10_000,
  multiplier: 2,
  maxAttempts: 0,
};

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
  /** How many bytes of stream items the server accepts per stream before granting more; 0 when it set none (no byte limit). */
  readonly streamWindowBytes: number;
}

/**
 * A connection's state, as {@link Connection.onStateChange} reports it.
 *
 * - "connecting": the first socket is opening.
 * - "open": the server's Welcome arrived; calls flow. `resumed` says the
 *   server resumed the session of the previous socket (same principal and
 *   rooms, missed events replayed, calls in flight answered once);
 *   `reconnected` that this open follows a drop. Open with `reconnected`
 *   and not `resumed` means the server started a new session: re-join
 *   rooms and resync.
 * - "reconnecting": the socket dropped (`error` says why, or why the last
 *   dial failed); dial `attempt` starts after `delayMs`. Calls made now
 *   wait, within their deadlines.
 * - "closed": final; `error` says why: "canceled" after
 *   {@link Connection.close}, the server's refusal (e.g.
 *   "unauthenticated"), "unavailable" when the first socket failed, the
 *   socket dropped with reconnect off, or reconnecting gave up.
 *
 * With reconnect off, an open connection whose server announced it is
 * going away (GoAway) has `goingAway` set: its calls in flight finish, new
 * calls fail with "unavailable". With reconnect on, a GoAway moves the
 * connection to "reconnecting" at once while the old socket finishes the
 * calls it carries.
 */
export type ConnectionState =
  | { readonly status: "connecting" }
  | { readonly status: "open"; readonly session: Session; readonly resumed: boolean; readonly reconnected: boolean; readonly goingAway?: string }
  | { readonly status: "reconnecting"; readonly attempt: number; readonly delayMs: number; readonly error: ParleyError }
  | { readonly status: "closed"; readonly error: ParleyError };

/** The receive window of streams unless ConnectionOptions.streamWindow says otherwise: 64, as in Go. */
export const defaultStreamWindow = 64;

/** The byte window of streams unless ConnectionOptions.streamWindowBytes says otherwise: 256 KiB, as in Go. */
export const defaultStreamWindowBytes = 256 << 10;

/** The bound on stream bytes received and not read unless ConnectionOptions.streamBufferBytes says otherwise: 32 MiB, as in Go. */
export const defaultStreamBufferBytes = 32 << 20;

/** A call or stream this side opened, not yet settled. @internal */
export interface Pending {
  spec: MethodSpec;
  body: Body;
  metadata?: Record<string, string>;
  /** performance.now() at which the call gives up; undefined for none. */
  deadline?: number;
  /** The timeout the deadline came from, in ms. */
  timeout: number;
  /** The call id once the Call frame went out on sock; 0 while queued. */
  id: number;
  /** The socket the Call frame went out on; undefined while queued. */
  sock?: Sock;
  /**
   * The id a unary call was in flight with when its socket dropped: it
   * may have run. It is re-sent with that id into a resumed session (the
   * server answers an id once), with a new id if idempotent, else fails.
   */
  was?: number;
  /** The session that id went to. */
  wasIn?: string;
  /** A stream's receive side; undefined for a unary call. */
  s?: StreamSide;
  /**
   * Ends the call once, with error or value. cancel, when given, is the
   * code a Cancel frame carries to the server (the caller gave up).
   */
  settle(error: ParleyError | undefined, value?: unknown, cancel?: number): void;
}

/** How the connection feeds a stream. @internal */
export interface StreamSide {
  /** The Call frame went out with this id on this socket: sending may start. */
  opened(id: number, sock: Sock): void;
  /** An item and its message's bytes (see streamWindowBytes). */
  item(body: Body, bytes: number): void;
  credit(c: Credit): void;
}

/** A call the server made to a handler of this client, running. @internal */
export interface Serving {
  ac: AbortController;
  deadline: boolean;
  /** The server sent Cancel: the reply is not sent. */
  abandoned?: boolean;
}

/** One WebSocket and what lives and dies with it. @internal */
export interface Sock {
  ws: WebSocketLike;
  /** The server's Welcome on this socket, once it came. */
  session?: Session;
  /** Set once the socket is closed or given up on: it is ignored from then on. */
  dead?: boolean;
  /** GoAway's last accepted call id, once the server sent GoAway. */
  goneAway?: number;
  /** How many unary calls and streams are in flight on it. */
  open: [number, number];
  /** The server's calls running on it, by id (see handle). */
  serving?: Map<number, Serving>;
  /** performance.now() when the last message arrived. */
  heard: number;
  timers: ReturnType<typeof setTimeout>[];
  /** While the token function has not returned, what a failure adds to say so; else "". */
  token: string;
}

// Browsers only let scripts close with 1000 or 3000-4999. A socket the
// client gives up on but whose session it means to resume is closed with
// 4000: the Go server ends the session at once on 1000 or 1001.
const closeNormal = 1000;
const closeProtocolError = 1002;
const closeResumable = 4000;

const sessionTopic = "session";

/**
 * What stream.ts, handle.ts and event.ts reach of a connection. They are
 * modules of their own, so that applications that make no stream calls,
 * serve nothing or handle no events do not bundle them; this is not
 * exported from the package.
 *
 * @internal
 */
export interface Internals {
  readonly options: ConnectionOptions;
  /** Starts a call or stream (see Connection.#start). */
  start(spec: MethodSpec, body: Body, options: CallOptions, timeout: number, done: Done, s?: StreamSide): Pending;
  send(s: Sock, frame: Frame, what?: string): ParleyError | undefined;
  /** The last message send passed (not too large): an item sent costs its size in byte credit. */
  sent?: string | Uint8Array;
  size(data: unknown): number;
  sendError(s: Sock, id: number, code: Code, message: string): void;
  encode(schema: DescMessage, value: unknown, what: string, code?: Code): Body;
  decode(schema: DescMessage, body: Body): unknown;
  /** Live streams, and the items their windows grew by (see streamWindow). */
  streams: number;
  grown: number;
  /** The bytes of stream items received and not yet read (see streamBufferBytes). */
  streamBuf: number;
  /** The event handlers (and the schemas they decode with) by method, and what dispatches an event to them (see onEvent, which makes them). */
  events?: Map<string, Set<{ s: DescMessage; f: (message: unknown) => unknown }>>;
  event?: (event: Event) => void;
  /** The client's handlers by method (see handle, which makes it). */
  handlers?: Map<string, { spec: MethodSpec; fn: (req: unknown, ctx: HandlerContext) => unknown }>;
  /**
   * Set by the first handle(), so that applications that serve nothing do
   * not bundle them: serve runs the handler of a call the server made on s
   * (valid id, the right parity) and answers it there, false when the
   * method has none; cancel stops one the server cancelled; abort aborts
   * those running on s, which dropped, or closed with the connection.
   */
  serve?: (s: Sock, call: Call) => boolean;
  cancel?: (s: Sock, cancel: { id: number; code?: number }) => void;
  abort?: (s: Sock, error: ParleyError) => void;
}

/** What a call's or stream's end reports: local is true when this side gave up (deadline, abort, cancel). */
type Done = (error: ParleyError | undefined, value: unknown, local: boolean) => void;

/** The internals of a connection, for stream.ts, handle.ts and event.ts. @internal */
export let internals: (connection: Connection) => Internals;

/**
 * Connection is a connection to a Parley server: one WebSocket at a time,
 * on which any number of calls and streams run concurrently, each reply
 * reaching its caller, and on which the server pushes events and calls
 * this client's handlers.
 *
 * It starts connecting when constructed and sends Hello as soon as the
 * socket opens. Calls made before the server's Welcome wait for it,
 * bounded by their deadlines.
 *
 * When an open connection's socket drops (closed, or silent beyond the
 * keepalive bound) it dials again by itself (see {@link ReconnectOptions})
 * with a fresh token and asks the server to resume its session. Calls made
 * meanwhile wait for the new socket within their deadlines. Unary calls in
 * flight at the drop are sent again when that is safe: into a resumed
 * session with their original ids (the server runs an id once and replays
 * its reply), else idempotent methods with a new id; the others then fail
 * with "unavailable". Streams in flight end with "unavailable". Session
 * events carry offsets: one replayed after a resume that had already
 * arrived is dropped. Event handlers (onEvent) and call handlers (handle) stay. An
 * authentication refusal on reconnect, a token function that throws,
 * giving up after maxAttempts or {@link close} end it: "closed" is final.
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
  /** Resolves when the connection is first open; rejects with the ParleyError that closed it before. */
  readonly ready: Promise<void>;
  #ready!: [() => void, (e: ParleyError) => void];
  #state: ConnectionState = { status: "connecting" };
  #listeners = new Set<(state: ConnectionState) => void>();
  #url: string;
  #WS: WebSocketConstructor;
  /** The socket calls go to: opening, or open; undefined while waiting to redial. */
  #sock: Sock | undefined;
  /** Sockets after a GoAway, finishing the calls they carry. */
  #draining = new Set<Sock>();
  #protocol: Protocol;
  #options: ConnectionOptions;
  /** Calls and streams waiting for a socket or a slot: [unary, streams]. */
  #queues: [Pending[], Pending[]] = [[], []];
  #inflight = new Map<number, Pending>();
  /** Call ids, odd, never reused across sockets: a resumed session knows the old ones. */
  #nextId = 1;
  /** The last Welcome: the session to resume. */
  #session: Session | undefined;
  /** The offset of the last session event received. */
  #lastEvent = 0;
  /** Whether a socket was ever open: until then a failure is final. */
  #wasOpen = false;
  /** Dials since the last open. */
  #attempt = 0;
  #retryTimer: ReturnType<typeof setTimeout> | undefined;
  /** The deadline timer (see #arm) and when it fires. */
  #timer: ReturnType<typeof setTimeout> | undefined;
  #timerAt = Infinity;
  #in: Internals;

  static {
    internals = (c) => c.#in;
  }

  constructor(url: string, options: ConnectionOptions = {}) {
    this.#options = options;
    this.#url = url;
    this.#protocol = options.protocol ?? binaryProtocol;
    // JavaScript callers, whom the types do not stop, get a clear error, not a crash at the first frame.
    if (!this.#protocol.encodeFrame) throw new TypeError("parley: protocol must be binaryProtocol or jsonProtocol (@parleyrpc/runtime/json)");
    this.ready = new Promise((resolve, reject) => (this.#ready = [resolve, reject]));
    this.ready.catch(() => {}); // Unobserved, a failure must not crash Node.
    const WS: WebSocketConstructor | undefined = options.WebSocket ?? (globalThis as any).WebSocket;
    if (!WS) throw new Error("parley: no global WebSocket; pass ConnectionOptions.WebSocket (e.g. from the ws package)");
    this.#WS = WS;
    this.#in = {
      options,
      start: (...a) => this.#start(...a),
      send: (...a) => this.#send(...a),
      sendError: (...a) => this.#sendError(...a),
      encode: (...a) => this.#encode(...a),
      decode: (...a) => this.#decode(...a),
      size: (...a) => this.#size(...a),
      streams: 0,
      grown: 0,
      streamBuf: 0,
    };
    this.#dial();
  }

  /** The current state; see {@link ConnectionState}. */
  get state(): ConnectionState {
    return this.#state;
  }

  /**
   * Calls listener with every new state until the returned function is
   * called. It is not called with the current state. A state that an
   * earlier listener replaced before this one's turn (by calling close())
   * is skipped: the last state a listener got is the connection's.
   */
  onStateChange(listener: (state: ConnectionState) => void): () => void {
    const l = (s: ConnectionState) => listener(s);
    this.#listeners.add(l);
    return () => this.#listeners.delete(l);
  }

  /**
   * Closes the connection and stops reconnecting. Calls and streams
   * waiting or in flight fail with "canceled"; running handlers see their
   * signal abort. The server ends the session. Closing a closed connection
   * does nothing.
   */
  close(): void {
    const error = new ParleyError("canceled", "connection closed by the client");
    this.#close(error);
    // Sockets still draining after a GoAway (see #close) are cut short.
    for (const s of this.#draining) this.#drop(s, error, closeNormal);
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
      let body: Body;
      try {
        body = this.#encode(spec.input, request, spec.procedure);
      } catch (e) {
        return reject(e);
      }
      this.#start(spec, body, options, options.timeoutMs ?? (spec.timeoutMs || this.#defaultTimeout), (e, v) =>
        e ? reject(e) : resolve(v as MessageShape<O>),
      );
    });
  }

  /**
   * Starts a call or stream: queues it until the connection is open and
   * has a slot, arms its deadline and signal. done runs once, with the
   * outcome; local is true when this side gave up (deadline, abort,
   * cancel).
   */
  #start(
    spec: MethodSpec,
    body: Body,
    options: CallOptions,
    timeout: number,
    done: Done,
    s?: StreamSide,
  ): Pending {
    const { signal } = options;
    const kind = s ? 1 : 0;
    const onAbort =
      signal &&
      (() => {
        const e = aborted(spec, signal);
        p.settle(e, undefined, e.code == "deadline_exceeded" ? 4 : 0);
      });
    const p: Pending = {
      spec,
      body,
      metadata: options.metadata,
      id: 0,
      timeout,
      s,
      settle: (error, value, cancel) => {
        // Settles once: whichever of reply, deadline, abort or close comes first.
        p.settle = noop;
        if (onAbort) signal.removeEventListener("abort", onAbort);
        const sock = p.sock;
        if (sock) {
          this.#inflight.delete(p.id);
          sock.open[kind]--;
          // The caller gave up: tell the server, whose handler may still
          // run, and why, so that at a deadline the handler sees
          // deadline_exceeded (by its own deadline), not canceled.
          if (cancel !== undefined) this.#send(sock, { cancel: { id: p.id, code: cancel } });
        } else {
          // Waiting (perhaps to be re-sent after a drop): the server, if it
          // has the call, finishes it by its own deadline.
          const q = this.#queues[kind];
          const i = q.indexOf(p);
          if (i >= 0) q.splice(i, 1);
        }
        done(error, value, cancel !== undefined);
        this.#pump();
      },
    };
    const state = this.#state;
    const early =
      state.status == "closed" ? state.error
      : state.status == "open" && state.goingAway !== undefined ? new ParleyError("unavailable", `the server is going away: ${state.goingAway}`)
      : signal?.aborted ? aborted(spec, signal)
      : undefined;
    if (early) {
      p.settle(early);
      return p;
    }
    if (timeout > 0) this.#arm((p.deadline = performance.now() + timeout));
    if (onAbort) signal.addEventListener("abort", onAbort);
    this.#queues[kind]!.push(p);
    this.#pump();
    return p;
  }

  /**
   * Makes the deadline timer fire at performance.now() time at, when that
   * is earlier than it fires now; Infinity stops it. One timer serves
   * every call: arming and clearing one per call costs more than the call.
   * It stays armed when the last call settles (stopping it then and
   * starting it again with the next call cost a call at 1 in flight ~6 µs
   * of CPU): it fires once for nothing and stops, unless #close stops it
   * first, so that it never keeps the process alive after close().
   */
  #arm(at: number) {
    if (at == Infinity || at < this.#timerAt) {
      clearTimeout(this.#timer);
      this.#timerAt = at;
      if (at < Infinity) this.#timer = setTimeout(() => this.#expire(), Math.min(Math.max(0, at - performance.now()), 0x7fffffff));
    }
  }

  /** Fails the calls and streams whose deadline passed; arms the timer for the next. */
  #expire() {
    this.#timerAt = Infinity;
    // Timers round to the millisecond: one a fraction early is on time.
    const now = performance.now() + 1;
    let next = Infinity;
    for (const p of [...this.#queues.flat(), ...this.#inflight.values()]) {
      const { deadline = Infinity } = p;
      if (deadline < now) p.settle(new ParleyError("deadline_exceeded", `${p.spec.procedure}: no reply within ${p.timeout} ms`), undefined, 4);
      else next = Math.min(next, deadline);
    }
    this.#arm(next);
  }

  /** The largest message this side receives and sends (the option, or its default); Hello tells the server. */
  get #maxMessageBytes(): number {
    return this.#options.maxMessageBytes ?? defaultMaxMessageBytes;
  }

  get #defaultTimeout(): number {
    return this.#options.defaultTimeoutMs ?? defaultTimeoutMs;
  }

  #setState(state: ConnectionState) {
    this.#state = state;
    for (const l of [...this.#listeners]) {
      // A listener that changed the state (close() on reconnecting) had
      // the newer one sent to every listener: the rest must not get this
      // stale one after it. One removed meanwhile is not called; one
      // added meanwhile waits for the next state.
      if (this.#state != state) break;
      if (!this.#listeners.has(l)) continue;
      try {
        l(state);
      } catch (e) {
        // A listener's bug must not break the connection (nor crash Node).
        (this.#options.onError ?? console.error)(e);
      }
    }
  }

  get #reconnect(): ReconnectOptions | undefined {
    const r = this.#options.reconnect;
    return r === false ? undefined : (r ?? {});
  }

  /** The delay before dial attempt n (from 1): full jitter under an exponential cap, as the Go client's Backoff. */
  #delay(attempt: number, r: ReconnectOptions): number {
    const { initialDelayMs: initial, maxDelayMs: max, multiplier } = { ...defaultReconnect, ...r };
    let ceil = initial;
    for (let i = 1; i < attempt && ceil < max; i++) ceil *= multiplier;
    ceil = Math.floor(Math.min(ceil, max));
    return ceil > 0 ? Math.min(ceil, Math.floor((r.random ?? Math.random)() * (ceil + 1))) : 0;
  }

  /** Opens a socket; it becomes the one calls go to once the server's Welcome arrives on it. */
  #dial() {
    const subprotocol = this.#protocol.name;
    const ws = new this.#WS(this.#url, subprotocol);
    const s: Sock = (this.#sock = { ws, open: [0, 0], heard: 0, timers: [], token: "" });
    // The ws package hands over its own Buffer ("nodebuffer", its default),
    // saving a copy per message; browsers give "blob" unless told.
    if (ws.binaryType != "nodebuffer") ws.binaryType = "arraybuffer";
    ws.onopen = () => {
      if (s.dead) return;
      // Where the socket shows its bytes (the ws package's, in Node), any
      // byte from the server counts as a sign of life, as in Go: a message
      // slower to arrive than the keepalive bound, with the server's Pong
      // behind it, does not look like a dead server. Browsers show only
      // whole messages.
      (ws as any)._socket?.on?.("data", () => (s.heard = performance.now()));
      if (ws.protocol != subprotocol) {
        this.#protocolError(s, `the server did not accept subprotocol ${subprotocol}`);
      } else {
        void this.#hello(s);
      }
    };
    ws.onmessage = (ev: { data: unknown }) => this.#receive(s, ev.data);
    // A close event follows an error event; browsers say nothing about
    // the error, the ws package says what went wrong.
    let why = "";
    ws.onerror = (ev: { message?: unknown }) => (why = typeof ev?.message == "string" ? ": " + ev.message : "");
    ws.onclose = (ev: { code: number; reason: string }) =>
      this.#drop(
        s,
        new ParleyError("unavailable", `connection closed (${ev.code}${ev.reason ? " " + ev.reason : ""})${why}${s.token}`),
      );
    const wait = this.#defaultTimeout;
    if (wait > 0) {
      // A token function still running is what the user must look at.
      s.timers.push(setTimeout(() => this.#drop(s, new ParleyError("unavailable", `no welcome from the server within ${wait} ms${s.token}`), closeResumable), wait));
    }
  }

  /** Sends Hello: fresh credentials, and what resuming the last session needs. */
  async #hello(s: Sock) {
    const { metadata, token } = this.#options;
    const md = { ...metadata };
    try {
      let t = token;
      if (typeof t == "function") (s.token = "; the token function had not returned"), (t = await t()), (s.token = "");
      if (t) md["authorization"] = `Bearer ${t}`;
    } catch (e) {
      if (!s.dead) this.#close(new ParleyError("unauthenticated", `token: ${String(e)}`, [], {}, e));
      return;
    }
    const last = this.#session;
    if (!s.dead && !s.session) {
      this.#send(s, {
        hello: {
          metadata: md,
          ...(last?.resumeToken && { sessionId: last.sessionId, resumeToken: last.resumeToken, offsets: { [sessionTopic]: this.#lastEvent } }),
          agent,
          streamWindow: this.#options.streamWindow,
          maxMessageBytes: this.#maxMessageBytes,
          streamWindowBytes: this.#options.streamWindowBytes ?? defaultStreamWindowBytes,
        },
      });
    }
  }

  /** The server's Welcome on s: the connection is open. */
  #opened(s: Sock, w: Welcome) {
    clearTimeout(s.timers.pop());
    const session = (s.session = sessionOf(w));
    if (!session.resumed) this.#lastEvent = 0; // A new session numbers its events afresh.
    const reconnected = this.#wasOpen;
    this.#session = session;
    this.#wasOpen = true;
    this.#attempt = 0;
    this.#keepalive(s, this.#options.pingIntervalMs ?? session.pingIntervalMs);
    this.#setState({ status: "open", session, resumed: session.resumed, reconnected });
    this.#ready[0]();
    this.#pump();
  }

  /**
   * Gives up socket s (closing it with closeCode when given) with error.
   * Its streams fail; its unary calls wait to be re-sent. When s was the
   * socket calls go to, the connection reconnects, or closes if it may
   * not.
   */
  #drop(s: Sock, error: ParleyError, closeCode?: number, reason?: string) {
    if (s.dead) return;
    const r = this.#reconnect;
    if (s == this.#sock) {
      const code = error.code;
      if (!r || !this.#wasOpen || code == "unauthenticated" || code == "permission_denied") {
        return this.#close(error, closeCode == closeResumable ? closeNormal : closeCode, reason);
      }
      this.#sock = undefined;
      this.#kill(s, closeCode, reason);
      const { maxAttempts = 0 } = r;
      if (s.session || !maxAttempts || this.#attempt < maxAttempts) {
        this.#retry(error);
      } else {
        this.#close(new ParleyError("unavailable", `gave up reconnecting after ${this.#attempt} attempts: ${error.rawMessage}`, [], {}, error));
      }
    } else {
      this.#kill(s, closeCode, reason);
      this.#draining.delete(s);
      if (this.#state.status == "closed" && !this.#draining.size) this.#arm(Infinity);
    }
    const back: [Pending[], Pending[]] = [[], []];
    for (const p of [...this.#inflight.values()]) {
      if (p.sock != s) continue;
      // After a GoAway the session cannot resume: a call the server
      // accepted (up to its last id) may have run and is never answered,
      // so unless idempotent it fails now, not at its deadline; one it
      // refused (above that id) never ran, and goes again as new, as does
      // a server stream it refused. Other streams end with the socket.
      const gone = s.goneAway;
      const refused = gone !== undefined && p.id > gone;
      if (this.#state.status == "closed" || (p.s && !(refused && resendable(p)))) {
        p.settle(error);
      } else if (gone !== undefined && !refused && !p.spec.idempotent) {
        p.settle(new ParleyError("unavailable", `${p.spec.procedure}: the server went away with the call in flight`));
      } else {
        if (!refused) (p.was = p.id), (p.wasIn = s.session?.sessionId);
        back[this.#unsend(s, p)]!.push(p);
      }
    }
    this.#queues.forEach((q, kind) => q.unshift(...back[kind]!));
    this.#in.abort?.(s, error);
    this.#pump();
  }

  /** Waits for the next dial attempt. */
  #retry(cause: ParleyError) {
    const attempt = ++this.#attempt;
    const delayMs = this.#delay(attempt, this.#reconnect!);
    clearTimeout(this.#retryTimer);
    this.#retryTimer = setTimeout(() => {
      if (this.#state.status != "reconnecting") return;
      try {
        this.#dial();
      } catch (e) {
        this.#close(ParleyError.from(e));
      }
    }, delayMs);
    // After arming: a listener that calls close() stops the timer, which
    // would otherwise keep a Node process alive for up to maxDelayMs.
    this.#setState({ status: "reconnecting", attempt, delayMs, error: cause });
  }

  /** Marks s dead, stops its timers and closes it with code when given. */
  #kill(s: Sock, code?: number, reason?: string) {
    if (s.dead) return;
    s.dead = true;
    s.timers.forEach(clearTimeout);
    if (code) {
      try {
        s.ws.close(code, reason);
      } catch {
        s.ws.close(closeNormal, reason);
      }
    }
  }

  /** Sends queued calls and streams on the open socket while the server has room for them. */
  #pump() {
    const s = this.#sock;
    const w = s?.session;
    if (!w || this.#state.status != "open") return;
    for (const kind of [0, 1] as const) {
      while (this.#queues[kind].length && s.open[kind] < ((kind ? w.maxStreams : w.maxInFlight) || Infinity)) {
        const p = this.#queues[kind].shift()!;
        const what = `${p.spec.procedure}: the request`;
        // A call that may have run goes again with its id into the same
        // session, which answers it once; else only if it is idempotent.
        let id = w.resumed && p.wasIn == w.sessionId ? p.was : undefined;
        if (p.was && !id && !p.spec.idempotent) {
          p.settle(new ParleyError("unavailable", `${p.spec.procedure}: the connection dropped with the call in flight and the session could not be resumed`));
          continue;
        }
        if (!id) {
          id = this.#nextId;
          this.#nextId += 2;
        }
        // The remaining time, rounded down: the handler never outlives us.
        const timeoutMs = p.deadline === undefined ? 0 : Math.min(Math.max(1, Math.floor(p.deadline - performance.now())), 0xffffffff);
        const big = this.#send(s, { call: { id, method: p.spec.procedure, ...p.body, timeoutMs, metadata: p.metadata } }, what);
        if (big) {
          p.settle(big);
          continue;
        }
        p.id = id;
        p.sock = s;
        s.open[kind]++;
        this.#inflight.set(id, p);
        p.s?.opened(id, s);
      }
    }
  }

  /**
   * Encodes and sends a frame on s unless it is larger than the send
   * limit; then returns a "resource_exhausted" error naming what was too
   * large. On a dead socket it does nothing.
   *
   * Frames sent in one turn of the event loop leave in one system call
   * where the socket allows it: the ws package's TCP socket (its _socket)
   * is corked until the pending microtasks have run, much as the Go
   * runtime's writer coalesces what is queued. Each frame is still its own
   * WebSocket message. Browsers and other WebSockets batch as they do.
   */
  #send(s: Sock, frame: Frame, what = "a frame"): ParleyError | undefined {
    const data = this.#protocol.encodeFrame(frame);
    const max = Math.min(this.#maxMessageBytes, s.session?.maxMessageBytes || Infinity);
    const size = this.#size(data, max);
    if (size > max) return new ParleyError("resource_exhausted", `${what} is ${size} bytes, the limit ${max}`);
    this.#in.sent = data;
    if (s.dead) return;
    const tcp: { cork?(): void; uncork(): void; writableCorked?: number } | undefined = (s.ws as any)._socket;
    if (tcp?.cork && !tcp.writableCorked) {
      tcp.cork();
      queueMicrotask(() => tcp.uncork());
    }
    s.ws.send(data);
  }

  /**
   * A message's length in bytes, a text message's in UTF-8 as its
   * protocol counts it (see Protocol.textBytes): what the size limit and
   * a stream item's byte credit count, alike at both ends whatever the
   * encoding (see streamWindowBytes). Exact unless max is given: then a
   * text message that surely fits may count less, so that most are not
   * scanned. Text on parley.v1+proto, an error anyway, counts its length.
   */
  #size(data: unknown, max?: number): number {
    return typeof data == "string" ? (this.#protocol.textBytes?.(data, max) ?? data.length) : (data as ArrayBuffer).byteLength;
  }

  #receive(s: Sock, data: unknown) {
    if (s.dead) return;
    s.heard = performance.now();
    let frame: Frame;
    try {
      const max = this.#maxMessageBytes;
      const size = this.#size(data, max);
      if (size > max) throw new Error(`a message of ${size} bytes, more than the limit of ${max}`);
      frame = this.#protocol.decodeFrame(typeof data == "string" ? data : bytesOf(data));
    } catch (e) {
      return this.#protocolError(s, `undecodable frame from the server: ${e instanceof Error ? e.message : String(e)}`);
    }
    // As in Go: Welcome (or a refusal, an Error with id 0) comes first and
    // once; a peer that sends anything else (a WebSocket echo answers our
    // Hello with itself) is no Parley server, said at once, not after a
    // timeout.
    if (!s.session && !("welcome" in frame) && !("error" in frame && !frame.error.id)) {
      return this.#protocolError(s, `awaiting welcome: got a ${Object.keys(frame)[0]} frame`);
    }
    if ("welcome" in frame) {
      if (s.session) return this.#protocolError(s, "welcome after the handshake");
      if (s == this.#sock) this.#opened(s, frame.welcome);
    } else if ("hello" in frame) {
      return this.#protocolError(s, "hello after the handshake");
    } else if ("reply" in frame) {
      const p = this.#mine(s, frame.reply.id);
      if (!p) return; // Late: the call already settled.
      let value: unknown;
      try {
        value = this.#decode(p.spec.output, frame.reply);
      } catch (e) {
        return p.settle(
          new ParleyError("internal", `${p.spec.procedure}: undecodable reply from the server: ${String(e)}`, [], {}, e),
        );
      }
      p.settle(undefined, value);
    } else if ("error" in frame) {
      const { id } = frame.error;
      const err = this.#errorOf(frame.error);
      const p = this.#mine(s, id);
      if (!id) {
        this.#drop(s, err, closeResumable);
      } else if (p && resendable(p) && this.#reconnect && err.code == "unavailable" && (frame.error.notRun || (s.goneAway !== undefined && id > s.goneAway))) {
        // Refused by a server going away (Error.not_run, or above GoAway's
        // last accepted id): it never ran; send it elsewhere.
        this.#queues[this.#unsend(s, p)]!.unshift(p);
        this.#pump();
      } else {
        p?.settle(err);
      }
    } else if ("ping" in frame) {
      this.#send(s, { pong: frame.ping });
    } else if ("goaway" in frame) {
      const { reason = "", lastId = 0 } = frame.goaway;
      s.goneAway = lastId;
      const state = this.#state;
      if (s != this.#sock || state.status != "open") return;
      if (this.#reconnect) {
        // Calls go to a new socket at once; this one finishes what it carries.
        this.#draining.add(s);
        this.#sock = undefined;
        this.#retry(new ParleyError("unavailable", `the server is going away: ${reason}`));
      } else {
        this.#setState({ ...state, goingAway: reason });
      }
    } else if ("item" in frame) {
      this.#mine(s, frame.item.id)?.s?.item(frame.item, this.#size(data));
    } else if ("credit" in frame) {
      this.#mine(s, frame.credit.id)?.s?.credit(frame.credit);
    } else if ("event" in frame) {
      const { topic, offset = 0 } = frame.event;
      // Events replayed after a resume may overlap those that came before
      // the drop: each offset of the session is handled once.
      if (topic == sessionTopic && offset && s.session && s.session.sessionId == this.#session?.sessionId) {
        if (offset <= this.#lastEvent) return;
        this.#lastEvent = offset;
      }
      this.#in.event?.(frame.event);
    } else if ("call" in frame) {
      const { id, method = "" } = frame.call;
      // Id 0 is a protocol error: an Error with id 0 concerns the connection.
      if (!id) return this.#protocolError(s, "a call with id 0: call ids start at 1");
      if (id % 2) this.#sendError(s, id, "invalid_argument", `call id ${id} has the wrong parity: server calls use even ids`);
      else if (!this.#in.serve?.(s, frame.call)) this.#sendError(s, id, "unimplemented", `method "${method}" is not implemented`);
    } else if ("cancel" in frame) {
      this.#in.cancel?.(s, frame.cancel);
    } else if ("unknown" in frame) {
      // The compatibility rule of frame.proto.
      if (frame.unknown.id) this.#sendError(s, frame.unknown.id, "invalid_argument", `parley-ts: unknown frame kind ${frame.unknown.kind}`);
    }
    // Pong and StreamEnd (servers end calls with Reply or Error) need nothing.
  }

  /**
   * Takes p, which the server never ran, off socket s to be sent again;
   * returns its queue (0: calls, 1: streams).
   */
  #unsend(s: Sock, p: Pending): number {
    const kind = p.s ? 1 : 0;
    this.#inflight.delete(p.id);
    s.open[kind]--;
    p.id = 0;
    p.sock = undefined;
    return kind;
  }

  /** The call or stream with this id in flight on s. */
  #mine(s: Sock, id: number): Pending | undefined {
    const p = this.#inflight.get(id);
    return p?.sock == s ? p : undefined;
  }

  /** Sends Ping on s every `every` ms, and drops s when nothing arrives for every + pongTimeoutMs. */
  #keepalive(s: Sock, every: number) {
    if (!(every > 0)) return;
    const bound = every + (this.#options.pongTimeoutMs ?? 10_000);
    let nonce = 0;
    const ping = () => {
      this.#send(s, { ping: { nonce: String(++nonce) } });
      s.timers[0] = setTimeout(ping, every);
    };
    const check = () => {
      const quiet = performance.now() - s.heard;
      if (quiet < bound) s.timers[1] = setTimeout(check, bound - quiet);
      else this.#drop(s, new ParleyError("unavailable", `no frame from the server for ${Math.round(quiet)} ms`), closeResumable, "keepalive timeout");
    };
    s.timers = [setTimeout(ping, every), setTimeout(check, bound)];
  }

  /** Encodes a message (or init object) as a body; throws a ParleyError with code. */
  #encode(schema: DescMessage, value: unknown, what: string, code: Code = "invalid_argument"): Body {
    try {
      return this.#protocol.encodeMessage(schema, create(schema, value as MessageInitShape<DescMessage>), this.#options.registry);
    } catch (e) {
      throw new ParleyError(code, `${what}: cannot encode ${schema.typeName}: ${String(e)}`, [], {}, e);
    }
  }

  #decode(schema: DescMessage, body: Body): unknown {
    return this.#protocol.decodeMessage(schema, body, this.#options.registry);
  }

  #errorOf(e: ErrorFrame): ParleyError {
    const details = (e.details ?? []).map((d) => this.#protocol.readDetail(d));
    return new ParleyError(codeFromNumber(e.code ?? 0), e.message ?? "", details, e.metadata);
  }

  #sendError(s: Sock, id: number, code: Code, message: string) {
    this.#send(s, { error: { id, code: codeToNumber(code), message } });
  }

  /** Reports a misbehaving server, closes the socket and drops it. */
  #protocolError(s: Sock, message: string) {
    if (s.dead) return;
    try {
      this.#sendError(s, 0, "invalid_argument", message);
    } catch {
      // The socket may not be open; closing it is what matters.
    }
    this.#drop(s, new ParleyError("internal", `protocol error: ${message}`), closeProtocolError, "protocol error");
  }

  /**
   * Closes the connection for good (once) with error: fails every call
   * with it but those on sockets draining after a GoAway, and closes the
   * socket calls go to, with closeCode when given.
   */
  #close(error: ParleyError, closeCode = closeNormal, reason?: string) {
    if (this.#state.status == "closed") return;
    clearTimeout(this.#retryTimer);
    const s = this.#sock;
    this.#sock = undefined;
    this.#setState({ status: "closed", error });
    this.#ready[1](error);
    if (s) this.#kill(s, closeCode, reason);
    // Sockets draining after a GoAway still finish the calls they carry:
    // the server answers them, even when reconnecting gave up. close()
    // cuts them short.
    for (const p of [...this.#queues.flat(), ...this.#inflight.values()]) if (!p.sock || !this.#draining.has(p.sock)) p.settle(error);
    if (!this.#draining.size) this.#arm(Infinity);
    if (s) this.#in.abort?.(s, error);
  }
}

/**
 * The error of a call whose signal aborted: "canceled", or
 * "deadline_exceeded" for a signal that timed out (AbortSignal.timeout()
 * aborts with a TimeoutError): a deadline, as timeoutMs is, and the
 * server's handler is told so.
 */
function aborted(spec: MethodSpec, signal: AbortSignal): ParleyError {
  const reason: unknown = signal.reason;
  const code = (reason as Error | undefined)?.name == "TimeoutError" ? "deadline_exceeded" : "canceled";
  return new ParleyError(code, `${spec.procedure}: aborted${reason instanceof Error ? ": " + reason.message : ""}`, [], {}, reason);
}

const noop = () => {};

/**
 * Whether p may go again on another socket when the server never ran it: a
 * call, or a server stream, whose one request is in its Call frame. A
 * client or bidi stream's items already sent went with the socket.
 */
const resendable = (p: Pending) => !p.s || p.spec.kind == "server_streaming";

/** A binary message as a plain Uint8Array (a view, never a copy): what messages decoded from it hold, whatever the WebSocket gave. */
function bytesOf(data: unknown): Uint8Array {
  if (data instanceof ArrayBuffer) return new Uint8Array(data);
  if (ArrayBuffer.isView(data)) return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  throw new Error("a binary message of an unsupported type (set binaryType to arraybuffer)");
}

function sessionOf(w: Welcome): Session {
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
    streamWindowBytes: 0,
    ...w,
  };
}
