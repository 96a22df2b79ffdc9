/**
 * Stream calls: server, client and bidirectional streaming. They are
 * functions rather than methods of {@link Connection} so that applications
 * that make no stream calls do not bundle them (as protobuf-es v2 made
 * toBinary a function); generated clients import what they use.
 */
import type { DescMessage, MessageInitShape, MessageShape } from "@bufbuild/protobuf";
import {
  defaultStreamBufferBytes,
  defaultStreamWindow,
  defaultStreamWindowBytes,
  internals,
  type Connection,
  type Pending,
  type Sock,
} from "./connection.js";
import { ParleyError } from "./error.js";
import type { Body } from "./frame.js";
import type { BidiStreamCall, CallOptions, ClientStreamCall, MethodSpec } from "./method.js";

/**
 * Calls a server-streaming method: the responses, in order, as an async
 * iterable. `for await` ends when the server completes the call and throws
 * its {@link ParleyError} when it fails; breaking out of the loop cancels
 * the call (a Cancel frame tells the server).
 *
 * The call starts at once. Its deadline is options.timeoutMs, else
 * spec.timeoutMs, else none: the connection's default deadline does not
 * apply to streams. Aborting options.signal fails it with "canceled"; the
 * deadline with "deadline_exceeded". The server sends at most the
 * connection's streamWindow items, and streamWindowBytes bytes of them
 * (and one item more, alone), ahead of the loop.
 */
export function serverStream<I extends DescMessage, O extends DescMessage>(
  connection: Connection,
  spec: MethodSpec<I, O>,
  request: MessageShape<I> | MessageInitShape<I>,
  options?: CallOptions,
): AsyncIterable<MessageShape<O>> {
  return open(connection, spec, options, request);
}

/**
 * Calls a client-streaming method: send requests, then closeAndReceive()
 * for the response. Sends are paced by the server's credit
 * (Welcome.stream_window items and stream_window_bytes bytes per stream,
 * renewed as its handler reads; an item larger than that goes alone).
 * Deadline and signal as {@link serverStream}.
 */
export function clientStream<I extends DescMessage, O extends DescMessage>(
  connection: Connection,
  spec: MethodSpec<I, O>,
  options?: CallOptions,
): ClientStreamCall<I, O> {
  return open(connection, spec, options);
}

/**
 * Calls a bidirectional streaming method: send requests into the returned
 * object and iterate it for the responses. Deadline and signal as
 * {@link serverStream}.
 */
export function bidiStream<I extends DescMessage, O extends DescMessage>(
  connection: Connection,
  spec: MethodSpec<I, O>,
  options?: CallOptions,
): BidiStreamCall<I, O> {
  return open(connection, spec, options);
}

/**
 * Opens a stream; request is the one request of a server-streaming call.
 * The returned object serves all three kinds.
 */
function open(connection: Connection, spec: MethodSpec, options: CallOptions = {}, request?: unknown): any {
  const c = internals(connection);
  const { procedure } = spec;
  const base = c.options.streamWindow || defaultStreamWindow;
  const budget = 63 * base; // the growth all of the connection's streams share
  const limit = c.options.streamBufferBytes || defaultStreamBufferBytes;
  let window = base;
  let maxItem = 0; // the largest item's payload received, in bytes
  // The byte window (0: none) and, like the item window's q.length +
  // consumed, the item bytes received and not yet granted back.
  const baseBytes = c.options.streamWindowBytes ?? defaultStreamWindowBytes;
  let windowBytes = baseBytes;
  let inBytes = 0;
  c.streams++;
  /**
   * Received items not yet read; per item its payload's size and its
   * message's bytes, two numbers; and how many of the payload bytes count
   * in c.streamBuf.
   */
  const q: unknown[] = [];
  const sizes: number[] = [];
  let held = 0;
  /** Sends waiting for credit, in order; one without body is the StreamEnd. */
  const out: { body?: Body; ok(): void; fail(e: ParleyError): void }[] = [];
  const waiters: (() => void)[] = [];
  let id = 0;
  let sock: Sock;
  let consumed = 0; // items read since the last Credit
  let consumedBytes = 0; // and their bytes
  let starved = false; // the reader waited for an item since the last Credit
  // What the server lets this side send: items, and bytes (Infinity when
  // it set no byte window), which one item may take below 0.
  let credit = 0;
  let creditBytes = 0;
  let ended = false;
  let sendClosed = false;
  let error: ParleyError | undefined;
  let value: unknown;
  let p: Pending | undefined;
  const wake = () => waiters.splice(0).forEach((w) => w());
  const wait = () => new Promise<void>((r) => waiters.push(r));
  const endedError = () => error ?? new ParleyError("failed_precondition", `${procedure}: the stream has ended`);
  const flush = () => {
    while (id && !ended && out[0] && (!out[0].body || (credit > 0 && creditBytes > 0))) {
      const o = out.shift()!;
      if (!o.body) {
        c.send(sock, { end: { id } });
        continue;
      }
      const big = c.send(sock, { item: { id, ...o.body } }, `${procedure}: the item`);
      if (big) o.fail(big);
      else credit--, (creditBytes -= c.size(c.sent)), o.ok();
    }
  };
  const done = (e: ParleyError | undefined, v: unknown, local: boolean) => {
    if (!ended) c.streams--, (c.grown -= window - base);
    ended = true;
    error = e;
    value = v;
    // Nothing more comes on this stream: what it holds stops counting.
    c.streamBuf -= held;
    held = 0;
    // The caller gave up: what it did not read no longer matters. Else
    // the items that came before the end are still read.
    if (local) q.length = sizes.length = 0;
    for (const o of out.splice(0)) o.fail(endedError());
    wake();
  };
  try {
    const body = request === undefined ? {} : c.encode(spec.input, request, procedure);
    p = c.start(spec, body, options, options.timeoutMs ?? spec.timeoutMs ?? 0, done, {
      opened: (i, s) => {
        id = i;
        sock = s;
        credit = s.session!.streamWindow || defaultStreamWindow;
        creditBytes = s.session!.streamWindowBytes || Infinity;
        flush();
      },
      item: (b, bytes) => {
        if (ended) return;
        // The server may have sent no more than the window minus what was
        // received and not yet granted back; in bytes, it may start one
        // more item while any are left, if it knows of byte windows: it
        // set one of its own.
        if (q.length + consumed >= window || (windowBytes && sock.session!.streamWindowBytes && inBytes >= windowBytes)) {
          return p!.settle(new ParleyError("resource_exhausted", `${procedure}: the server sent stream items beyond its credit`), undefined, 0);
        }
        // The bytes it holds: its payload's in binary; in JSON, where the
        // body is parsed text, its message's UTF-8 bytes.
        const n = b.payload ? b.payload.length : bytes;
        if (c.streamBuf + n > limit) {
          return p!.settle(new ParleyError("resource_exhausted", `${procedure}: over ${limit} bytes of stream items unread (streamBufferBytes)`), undefined, 0);
        }
        try {
          q.push(c.decode(spec.output, b));
        } catch (e) {
          return p!.settle(new ParleyError("internal", `${procedure}: undecodable stream item from the server: ${String(e)}`, [], {}, e), undefined, 0);
        }
        // Without a byte window of its own this side counts no bytes.
        sizes.push(n, (bytes = windowBytes && bytes));
        inBytes += bytes;
        maxItem = Math.max(maxItem, n);
        held += n;
        c.streamBuf += n;
        wake();
      },
      credit: ({ items = 0, bytes = 0 }) => {
        credit += items;
        creditBytes += bytes;
        flush();
      },
    });
  } catch (e) {
    done(e as ParleyError, undefined, false);
  }
  const cancel = async () => {
    p?.settle(new ParleyError("canceled", `${procedure}: the caller ended the stream`), undefined, 0);
    return { value: undefined, done: true } as const;
  };
  const closeSend = () => {
    if (!sendClosed && !ended) {
      sendClosed = true;
      out.push({ ok() {}, fail() {} });
      flush();
    }
  };
  return {
    closeSend,
    send: (m: unknown) => {
      const sent = new Promise<void>((ok, fail) => {
        if (ended || sendClosed) {
          return fail(sendClosed && !ended ? new ParleyError("failed_precondition", `${procedure}: send after closeSend`) : endedError());
        }
        out.push({ body: c.encode(spec.input, m, procedure), ok, fail });
        flush();
      });
      // Marked handled: a send nobody awaits (`void call.send(m)`) must
      // not be an unhandled rejection, which ends a Node process, when the
      // stream fails; its error reaches the loop or closeAndReceive. A
      // caller who awaits the send still gets the rejection.
      sent.catch(() => {});
      return sent;
    },
    async closeAndReceive() {
      closeSend();
      while (!ended) await wait();
      if (error) throw error;
      return value;
    },
    [Symbol.asyncIterator]: () => ({
      next: async (): Promise<IteratorResult<unknown>> => {
        for (;;) {
          if (q.length) {
            const value = q.shift();
            const n = sizes.shift()!;
            consumedBytes += sizes.shift()!;
            if (held) (held -= n), (c.streamBuf -= n);
            // Grant the server what was read every half configured
            // window, of items or of bytes, also once the windows have
            // grown (steady steps, not bursts of half a grown window).
            // While this reader waits for items rather than the other way
            // round, the windows double: the server is likely waiting for
            // credit. The item window stays within its share of the
            // growth budget and, at the largest item's size, of half the
            // stream buffer bytes; the byte window, at its doubled size
            // on every live stream, within that half too, and within 64
            // configured windows and 1 GiB (so that a grant fits
            // Credit.bytes), as in Go. (Without a byte window no bytes
            // are counted.)
            if ((++consumed >= Math.max(1, base >> 1) || consumedBytes >= Math.max(1, baseBytes >> 1)) && !ended) {
              let items = consumed;
              let bytes = consumedBytes;
              const grow = starved || !q.length;
              const doubled = 2 * window * c.streams;
              if (grow && doubled - base * c.streams <= budget && doubled * maxItem <= limit / 2 && c.grown + window <= budget) {
                c.grown += window;
                items += window;
                window *= 2;
              }
              if (grow && 4 * windowBytes * c.streams <= limit && 2 * windowBytes <= Math.min(64 * baseBytes, 1 << 30)) {
                bytes += windowBytes;
                windowBytes *= 2;
              }
              c.send(sock, { credit: { id, items, bytes } });
              inBytes -= consumedBytes;
              consumed = consumedBytes = 0;
              starved = false;
            }
            return { value, done: false };
          }
          if (ended) {
            if (error) throw error;
            return { value: undefined, done: true };
          }
          starved = true;
          await wait();
        }
      },
      return: cancel,
      throw: cancel,
    }),
  };
}
