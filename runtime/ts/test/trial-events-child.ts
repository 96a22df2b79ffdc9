// Run by trial-events.test.ts in a process of its own, against the e2e
// server started with -auth (argv[2], protocol argv[3]): ends connections
// at every stage of their lifecycle (the first socket never answered, a
// token function that never returns, close() while reconnecting with a
// long delay and while a redial hangs, close() from a listener, a refused
// token, giving up reconnecting, a server call's handler that never
// returns), then must exit by itself: a timer or
// socket the runtime left behind would keep Node alive.
import net from "node:net";
import WebSocket from "ws";
import { Connection, handle, type ConnectionOptions } from "../src/index.js";
import { protocols } from "./protocols.js";
import { TcpProxy } from "./proxy.js";
import { AskBack, Confirm, Echo } from "./specs.js";

const [url, protocol] = process.argv.slice(2) as [string, "proto" | "json"];
const connect = (to: string, options: ConnectionOptions = {}) => new Connection(to, { WebSocket, protocol: protocols[protocol], onError: () => {}, ...options });
const settled = (c: Connection) => c.ready.then(() => "open", (e) => String(e));
const log: string[] = [];
const push = (s: string) => void (log.push(s), process.env["TRACE"] && console.error("# " + s));
const closedOnce = (c: Connection) => new Promise<void>((resolve) => c.onStateChange((s) => s.status == "closed" && resolve()));

// The first socket: TCP accepted, the upgrade never answered.
const mute = net.createServer((s) => void s.on("error", () => {}));
await new Promise<void>((resolve) => mute.listen(0, "127.0.0.1", resolve));
const muteURL = `ws://127.0.0.1:${(mute.address() as net.AddressInfo).port}/parley`;
push(await settled(connect(muteURL, { defaultTimeoutMs: 100 })));
// The same, closed by the user first, with calls waiting (30 s deadlines).
const early = connect(muteURL);
const waiting = early.call(Echo, {}).then(() => "answered", String);
early.close();
push(await waiting);
mute.close();

// A token function that never returns, then close().
const stuck = connect(url, { token: () => new Promise<string>(() => {}) });
await new Promise((resolve) => setTimeout(resolve, 20));
stuck.close();
push(await settled(stuck));

// close() from a listener at the first open.
const shut = connect(url);
shut.onStateChange((s) => s.status == "open" && shut.close());
push(await settled(shut));

// close() while a handler of the server's call (with a minute's deadline) never returns.
const serving = connect(url);
const asked = new Promise<void>((resolve) => handle(serving, Confirm, () => (resolve(), new Promise<never>(() => {}))));
const askBack = serving.call(AskBack, { question: "q", timeoutMs: 60_000 }).then(() => "answered", String);
await asked;
serving.close();
push(await askBack);

// A token the server refuses.
push(await settled(connect(url, { token: "deny-child" })));

const proxy = await TcpProxy.start(Number(new URL(url).port));
// close() while waiting a minute to redial, with a call waiting.
const slow = connect(proxy.url(url), { reconnect: { initialDelayMs: 60_000, maxDelayMs: 60_000 } });
await slow.ready;
proxy.dropAll();
await new Promise<void>((resolve) => slow.onStateChange((s) => s.status == "reconnecting" && resolve()));
const queued = slow.call(Echo, {}).then(() => "answered", String);
slow.close();
push(await queued);
// close() while a redial hangs in its upgrade.
const hung = connect(proxy.url(url), { reconnect: { initialDelayMs: 0 } });
await hung.ready;
proxy.hold(true);
const dialed = proxy.accepting();
proxy.dropAll();
await dialed;
hung.close();
proxy.hold(false);
// Giving up reconnecting: every redial refused.
const gives = connect(proxy.url(url), { reconnect: { initialDelayMs: 1, maxAttempts: 2 } });
await gives.ready;
const gaveUp = closedOnce(gives);
await proxy.close();
await gaveUp;
push(String(gives.state.status == "closed" && gives.state.error));
console.log(log.join("\n"));
console.log("done");
