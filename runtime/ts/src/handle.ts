/**
 * Handlers of calls the server makes to this client (services declared
 * `implemented_by: CLIENT`). A function rather than a method of
 * {@link Connection} so that applications that serve nothing do not bundle
 * it; generated register functions import it.
 */
import type { DescMessage, MessageInitShape, MessageShape } from "@bufbuild/protobuf";
import { codeToNumber } from "./code.js";
import { internals, type Connection, type Serving } from "./connection.js";
import { ParleyError } from "./error.js";
import type { Frame } from "./frame.js";
import type { MethodSpec } from "./method.js";

/** The context of a handler registered with {@link handle}. */
export interface HandlerContext {
  /**
   * Aborted when the server cancels the call, at the call's deadline
   * (with a "deadline_exceeded" ParleyError as reason) or when the
   * connection closes.
   */
  readonly signal: AbortSignal;
  /** The call's metadata. */
  readonly metadata: Record<string, string>;
}

/**
 * Serves calls the server makes to the method spec (of a service the
 * client implements) on connection until the returned function is called;
 * a later handle() of the same method replaces this one. The handler's
 * return value (or its promise's) is the reply. A {@link ParleyError} it
 * throws reaches the server with its code; anything else thrown as
 * "unknown" with its message. Calls of methods without a handler fail
 * with "unimplemented". context.signal aborts when the server cancels, at
 * the call's deadline, or when the connection closes; the reply of a call
 * the server cancelled is not sent. Handlers stay across reconnects.
 */
export function handle<I extends DescMessage, O extends DescMessage>(
  connection: Connection,
  spec: MethodSpec<I, O>,
  handler: (request: MessageShape<I>, context: HandlerContext) => MessageShape<O> | MessageInitShape<O> | Promise<MessageShape<O> | MessageInitShape<O>>,
): () => void {
  const c = internals(connection);
  const handlers = (c.handlers ??= new Map());
  // From the first handler on, the connection hands these the server's
  // calls, Cancels, and the sockets that go; a call of a method without a
  // handler is not taken.
  if (!c.serve) {
    c.serve = (s, call) => {
      const { id, method = "", timeoutMs } = call;
      const h = handlers.get(method);
      if (!h) return false;
      void (async () => {
        let req: unknown;
        try {
          req = c.decode(h.spec.input, call);
        } catch (e) {
          return c.sendError(s, id, "invalid_argument", `decoding the request of ${method}: ${String(e)}`);
        }
        const serving: Serving = { ac: new AbortController(), deadline: !!timeoutMs };
        (s.serving ??= new Map()).set(id, serving);
        const timer = timeoutMs
          ? setTimeout(() => serving.ac.abort(new ParleyError("deadline_exceeded", `${method}: deadline exceeded`)), Math.min(timeoutMs, 0x7fffffff))
          : undefined;
        // Aborted (the server cancelled, the socket dropped, close()), the
        // call needs its deadline no more: a handler that never returns
        // must not keep Node alive until then.
        serving.ac.signal.addEventListener("abort", () => clearTimeout(timer));
        let reply: Frame;
        try {
          reply = { reply: { id, ...c.encode(h.spec.output, await h.fn(req, { signal: serving.ac.signal, metadata: call.metadata ?? {} }), method, "internal") } };
        } catch (e) {
          const err = ParleyError.from(e);
          reply = { error: { id, code: codeToNumber(err.code), message: err.rawMessage, metadata: err.metadata } };
        }
        clearTimeout(timer);
        s.serving!.delete(id);
        if (serving.abandoned) return;
        const big = c.send(s, reply, `${method}: the response`);
        if (big) c.sendError(s, id, big.code, big.rawMessage);
      })();
      return true;
    };
    c.cancel = (s, { id, code }) => {
      const serving = s.serving?.get(id);
      if (serving) {
        serving.abandoned = true;
        // A server that gave up at the deadline leaves the handler to its
        // own copy of that deadline, as the Go runtime does.
        if (code != 4 || !serving.deadline) serving.ac.abort(new ParleyError("canceled", "the server canceled the call"));
      }
    };
    c.abort = (s, error) => s.serving?.forEach((serving) => serving.ac.abort(error));
  }
  const h = { spec, fn: handler as (req: unknown, ctx: HandlerContext) => unknown };
  handlers.set(spec.procedure, h);
  return () => handlers.get(spec.procedure) == h && handlers.delete(spec.procedure);
}
