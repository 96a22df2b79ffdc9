/**
 * Handlers of the events the server pushes (the events of services
 * declared `implemented_by: CLIENT`). A function rather than a method of
 * {@link Connection} so that applications that handle no events do not
 * bundle it; generated subscriber classes import it.
 */
import type { DescMessage, MessageShape } from "@bufbuild/protobuf";
import { internals, type Connection } from "./connection.js";
import { ParleyError } from "./error.js";
import type { MethodSpec } from "./method.js";

/**
 * Calls handler with every event of the method spec the server pushes on
 * connection, in the order they arrive, until the returned function is
 * called. Several handlers of one event run in the order they were added.
 * What a handler throws (or its promise rejects with) goes to the
 * connection's onError option, as does an event that cannot be decoded
 * (once, as an "internal" ParleyError naming its method; its handlers are
 * not called); neither affects the connection or other handlers. Events
 * nobody handles are dropped. Handlers stay across reconnects.
 */
export function onEvent<I extends DescMessage>(
  connection: Connection,
  spec: MethodSpec<I, DescMessage>,
  handler: (event: MessageShape<I>) => void,
): () => void {
  const c = internals(connection);
  const onError = (e: unknown) => (c.options.onError ?? console.error)(e);
  const events = (c.events ??= new Map());
  // In arrival order, each handler isolated from the others. A handler
  // added meanwhile waits for the next event; one removed meanwhile (by an
  // earlier handler) is not called. Each handler gets its own message; an
  // event that does not decode is reported once per schema, not per handler.
  c.event ??= (event) => {
    const set = events.get(event.method ?? "");
    const bad: DescMessage[] = [];
    for (const h of [...(set ?? [])]) {
      if (!set!.has(h) || bad.includes(h.s)) continue;
      let m;
      try {
        m = c.decode(h.s, event);
      } catch (e) {
        bad.push(h.s);
        onError(new ParleyError("internal", `${event.method}: undecodable event from the server: ${String(e)}`, [], {}, e));
        continue;
      }
      try {
        Promise.resolve(h.f(m)).catch(onError);
      } catch (e) {
        onError(e);
      }
    }
  };
  const m = spec.procedure;
  const set = events.get(m) ?? new Set();
  events.set(m, set);
  const h = { s: spec.input, f: handler as (m: unknown) => unknown };
  set.add(h);
  return () => set.delete(h);
}
