/**
 * Handlers of the events the server pushes (the events of services
 * declared `implemented_by: CLIENT`). A function rather than a method of
 * {@link Connection} so that applications that handle no events do not
 * bundle it; generated subscriber classes import it.
 */
import type { DescMessage, MessageShape } from "@bufbuild/protobuf";
import { internals, type Connection } from "./connection.js";
import type { Body } from "./frame.js";
import type { MethodSpec } from "./method.js";

/**
 * Calls handler with every event of the method spec the server pushes on
 * connection, in the order they arrive, until the returned function is
 * called. Several handlers of one event run in the order they were added.
 * What a handler throws (or its promise rejects with), and an event that
 * cannot be decoded, go to the connection's onError option and never
 * affect the connection or other handlers. Events nobody handles are
 * dropped. Handlers stay across reconnects.
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
  // earlier handler) is not called.
  c.event ??= (event) => {
    const set = events.get(event.method ?? "");
    for (const h of [...(set ?? [])]) {
      if (!set!.has(h)) continue;
      try {
        Promise.resolve(h(event)).catch(onError);
      } catch (e) {
        onError(e);
      }
    }
  };
  const m = spec.procedure;
  const set = events.get(m) ?? new Set();
  events.set(m, set);
  const h = (b: Body) => handler(c.decode(spec.input, b) as MessageShape<I>);
  set.add(h);
  return () => set.delete(h);
}
