// Run by faults.test.ts in a process of its own: uses a connection to the
// e2e server (argv[2], protocol argv[3]) for calls, streams, events and a
// server-to-client call, closes it, and must then exit by itself: a timer
// or socket the runtime left behind would keep Node alive.
import WebSocket from "ws";
import { bidiStream, Connection, handle, onEvent, serverStream } from "../src/index.js";
import { protocols } from "./protocols.js";
import { AskBack, Confirm, Count, Echo, EchoStream, Sleep, Subscribe, Tick } from "./specs.js";

const [url, protocol] = process.argv.slice(2) as [string, "proto" | "json"];
const conn = new Connection(url, { WebSocket, protocol: protocols[protocol] });
let ticks = 0;
onEvent(conn, Tick, () => void ticks++);
handle(conn, Confirm, (req) => ({ answer: `yes: ${req.question}` }));
await conn.ready;
await conn.call(Echo, { text: "x" }, { timeoutMs: 60_000 });
await conn.call(Subscribe, { count: 5 });
for await (const _ of serverStream(conn, Count, { count: 3 }, { timeoutMs: 60_000 }));
const b = bidiStream(conn, EchoStream, { timeoutMs: 60_000 });
await b.send({ text: "a" });
for await (const _ of b) break;
const ask = await conn.call(AskBack, { question: "q" });
if (ask.answer != "yes: q") throw new Error(`AskBack: ${JSON.stringify(ask)}`);
// Left pending at close: a long call, and a call with a long deadline.
const pending = conn.call(Sleep, { ms: 60_000 }, { timeoutMs: 120_000 }).catch(() => {});
await new Promise((r) => setTimeout(r, 20));
conn.close();
await pending;
if (ticks != 5) throw new Error(`${ticks} ticks, want 5`);
console.log("done");
