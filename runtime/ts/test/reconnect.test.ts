// Reconnection and session resumption against a scripted server on a real
// loopback socket: backoff, states, calls across a drop, the re-send rules,
// Hello's resume fields, event offsets, tokens per dial, GoAway, keepalive.
import { create, toBinary } from "@bufbuild/protobuf";
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import WebSocket from "ws";
import { Connection, onEvent, serverStream, type ConnectionOptions, type ConnectionState } from "../src/index.js";
import type { Frame, Hello, Welcome } from "../src/frame.js";
import { rejectsWith, within } from "./assert.js";
import { FakeServer, expectFrame, type FakeServerOptions } from "./fakeserver.js";
import { EchoResponseSchema, SleepResponseSchema } from "./gen/e2e/v1/echo_pb.js";
import { TickEventSchema } from "./gen/e2e/v1/streams_pb.js";
import { Count, Echo, Sleep, Tick } from "./specs.js";


/** Resolves with the first state that satisfies ok. */
function stateWhere(conn: Connection, ok: (s: ConnectionState) => boolean): Promise<ConnectionState> {
  if (ok(conn.state)) return Promise.resolve(conn.state);
  return within(
    new Promise((resolve) => {
      const off = conn.onStateChange((s) => ok(s) && (off(), resolve(s)));
    }),
  );
}

const open = (conn: Connection) => stateWhere(conn, (s) => s.status == "open") as Promise<Extract<ConnectionState, { status: "open" }>>;

/** A fake server whose n-th socket gets welcomes[n] (the last one repeats). */
function serverWith(welcomes: (Welcome | false)[], options: FakeServerOptions = {}) {
  return FakeServer.start({ ...options, welcome: (_, n) => welcomes[Math.min(n, welcomes.length - 1)]! });
}

/** Fast reconnects for tests: no delay. */
const fast: ConnectionOptions = { WebSocket, reconnect: { initialDelayMs: 0 } };

async function withServer(server: FakeServer, body: (server: FakeServer) => Promise<void>) {
  try {
    await body(server);
  } finally {
    await server.close();
  }
}

const echoReply = (id: number, text: string): Frame => ({ reply: { id, payload: toBinary(EchoResponseSchema, create(EchoResponseSchema, { text })) } });
const tick = (seq: number, offset: number, topic = "session"): Frame => ({
  event: { method: Tick.procedure, payload: toBinary(TickEventSchema, create(TickEventSchema, { seq })), topic, offset },
});

describe("reconnect", () => {
  test("backoff: full jitter under an exponential cap; maxAttempts gives up", async () => {
    const server = await FakeServer.start();
    const draws: number[] = [];
    const jitter = [0.999999, 0, 0.5, 0.999999, 0.999999, 0.25];
    const conn = new Connection(server.url, {
      WebSocket,
      reconnect: { initialDelayMs: 10, maxDelayMs: 50, multiplier: 2, maxAttempts: 5, random: () => (draws.push(0), jitter[draws.length - 1]!) },
    });
    const states: ConnectionState[] = [];
    conn.onStateChange((s) => states.push(s));
    await within(conn.ready);
    const peer = await server.peer();
    await server.close(); // nothing listens any more: every dial fails
    await peer.closed;
    const closed = await stateWhere(conn, (s) => s.status == "closed");
    assert.equal(closed.status == "closed" && closed.error.code, "unavailable");
    assert.match(closed.status == "closed" ? closed.error.message : "", /gave up reconnecting after 5 attempts: connection closed/);
    const reconnecting = states.filter((s) => s.status == "reconnecting");
    // Caps 10, 20, 40, 50, 50; each delay floor(random * (cap + 1)).
    assert.deepEqual(
      reconnecting.map((s) => s.status == "reconnecting" && [s.attempt, s.delayMs]),
      [
        [1, 10],
        [2, 0],
        [3, 20],
        [4, 50],
        [5, 50],
      ],
    );
    const r1 = reconnecting[0]!;
    assert.equal(r1.status == "reconnecting" && r1.error.code, "unavailable");
    assert.deepEqual(
      states.map((s) => s.status),
      ["open", "reconnecting", "reconnecting", "reconnecting", "reconnecting", "reconnecting", "closed"],
    );
  });

  test("backoff: Math.random's delays stay within [0, cap], and the defaults are Go's", async () => {
    const server = await FakeServer.start();
    const conn = new Connection(server.url, { WebSocket, reconnect: { maxAttempts: 3, initialDelayMs: 20, multiplier: 3 } });
    const states: ConnectionState[] = [];
    conn.onStateChange((s) => states.push(s));
    await within(conn.ready);
    await server.close();
    await stateWhere(conn, (s) => s.status == "closed");
    const delays = states.flatMap((s) => (s.status == "reconnecting" ? [s.delayMs] : []));
    assert.equal(delays.length, 3);
    [20, 60, 180].forEach((cap, i) => assert.ok(delays[i]! >= 0 && delays[i]! <= cap && Number.isInteger(delays[i]), `delay ${i + 1}: ${delays[i]}`));
    const { defaultReconnect } = await import("../src/index.js");
    assert.deepEqual(defaultReconnect, { initialDelayMs: 100, maxDelayMs: 10_000, multiplier: 2, maxAttempts: 0 });
  });

  test("states: open, reconnecting with attempt and delay and why, open again (reconnected, resumed as Welcome says)", async () => {
    await withServer(await serverWith([{ sessionId: "s1", resumeToken: "t1" }, { sessionId: "s1", resumeToken: "t1", resumed: true }]), async (server) => {
      const conn = new Connection(server.url, { ...fast });
      const states: ConnectionState[] = [];
      conn.onStateChange((s) => states.push(s));
      const first = await open(conn);
      assert.equal(first.resumed, false);
      assert.equal(first.reconnected, false);
      (await server.peer()).ws.terminate();
      const again = await stateWhere(conn, (s) => s.status == "open" && s.reconnected);
      assert.ok(again.status == "open" && again.resumed && again.session.sessionId == "s1");
      assert.deepEqual(
        states.map((s) => s.status),
        ["open", "reconnecting", "open"],
      );
      const r = states[1]!;
      assert.ok(r.status == "reconnecting");
      assert.equal(r.attempt, 1);
      assert.equal(r.delayMs, 0);
      assert.equal(r.error.code, "unavailable");
      assert.match(r.error.message, /connection closed \(1006\)/);
      conn.close();
      assert.equal(conn.state.status, "closed");
    });
  });

  test("the first socket failing is final, as Go's Dial", async () => {
    const conn = new Connection("ws://127.0.0.1:1/", { ...fast });
    await rejectsWith(within(conn.ready), "unavailable", /connection closed/);
    await sleep(20);
    assert.equal(conn.state.status, "closed");
  });

  test("calls made while reconnecting wait for the socket, within their deadline", async () => {
    // The second socket gets no Welcome for a while: calls wait.
    await withServer(await serverWith([{ sessionId: "s1" }, false]), async (server) => {
      const conn = new Connection(server.url, { ...fast });
      await open(conn);
      (await server.peer()).ws.terminate();
      await stateWhere(conn, (s) => s.status == "reconnecting");
      const waiting = conn.call(Echo, { text: "later" }, { timeoutMs: 2000 });
      const doomed = conn.call(Echo, { text: "too late" }, { timeoutMs: 50 });
      const peer = await server.peer();
      await within(peer.hello);
      await rejectsWith(doomed, "deadline_exceeded");
      peer.send({ welcome: { sessionId: "s2" } });
      const call = await expectFrame(peer, "call");
      assert.equal(call.method, Echo.procedure);
      assert.ok(call.timeoutMs! < 2000 && call.timeoutMs! > 1000, `remaining time ${call.timeoutMs}`);
      peer.send(echoReply(call.id, "now"));
      assert.equal((await within(waiting)).text, "now");
      assert.deepEqual(peer.buffered, [], "the expired call was never sent");
      conn.close();
    });
  });

  test("in flight at a drop into a new session: idempotent re-sent with a new id; others fail unavailable; streams end", async () => {
    await withServer(await serverWith([{ sessionId: "s1", resumeToken: "t1" }, { sessionId: "s2", resumeToken: "t2" }]), async (server) => {
      const conn = new Connection(server.url, { ...fast });
      const peer = await server.peer();
      await open(conn);
      const echo = conn.call(Echo, { text: "again" });
      const sleepCall = conn.call(Sleep, { ms: 1 });
      const stream = serverStream(conn, Count, { count: 3 })[Symbol.asyncIterator]().next();
      const [c1, c2, c3] = [await expectFrame(peer, "call"), await expectFrame(peer, "call"), await expectFrame(peer, "call")];
      peer.ws.terminate();
      await rejectsWith(stream, "unavailable", /connection closed/);
      const next = await server.peer();
      const reopened = await open(conn);
      assert.equal(reopened.resumed, false);
      await rejectsWith(sleepCall, "unavailable", /Sleep: the connection dropped with the call in flight and the session could not be resumed/);
      const again = await expectFrame(next, "call");
      assert.equal(again.method, Echo.procedure);
      assert.ok(again.id > c3.id, `a new id: ${again.id} after ${[c1.id, c2.id, c3.id]}`);
      next.send(echoReply(again.id, "answered"));
      assert.equal((await within(echo)).text, "answered");
      await sleep(20);
      assert.deepEqual(next.buffered, []);
      conn.close();
    });
  });

  test("in flight at a drop into a resumed session: every unary call re-sent with its original id, answered once", async () => {
    await withServer(await serverWith([{ sessionId: "s1", resumeToken: "t1" }, { sessionId: "s1", resumeToken: "t1", resumed: true }]), async (server) => {
      const conn = new Connection(server.url, { ...fast });
      const peer = await server.peer();
      await open(conn);
      const echo = conn.call(Echo, { text: "a" });
      const sleepCall = conn.call(Sleep, { ms: 1 });
      const [c1, c2] = [await expectFrame(peer, "call"), await expectFrame(peer, "call")];
      peer.ws.terminate();
      const next = await server.peer();
      assert.equal((await open(conn)).resumed, true);
      const [r1, r2] = [await expectFrame(next, "call"), await expectFrame(next, "call")];
      assert.deepEqual([r1.id, r2.id].sort(), [c1.id, c2.id].sort());
      assert.equal(r1.method, c1.method);
      assert.deepEqual(r2.payload, c2.payload);
      next.send({ reply: { id: c2.id, payload: toBinary(SleepResponseSchema, create(SleepResponseSchema, {})) } });
      next.send(echoReply(c1.id, "b"));
      next.send(echoReply(c1.id, "twice")); // a duplicate is dropped
      assert.equal((await within(echo)).text, "b");
      await within(sleepCall);
      // New calls take ids never used before.
      const later = conn.call(Echo, {});
      const c3 = await expectFrame(next, "call");
      assert.ok(c3.id > c2.id);
      next.send(echoReply(c3.id, ""));
      await within(later);
      conn.close();
    });
  });

  test("Hello carries the session id, resume token and the last event offset; events are deduplicated by offset", async () => {
    const welcomes: Welcome[] = [
      { sessionId: "s1", resumeToken: "t1" },
      { sessionId: "s1", resumeToken: "t1", resumed: true },
      { sessionId: "s2", resumeToken: "t2" },
    ];
    await withServer(await serverWith(welcomes), async (server) => {
      const conn = new Connection(server.url, { ...fast, metadata: { app: "x" } });
      const seen: number[] = [];
      onEvent(conn, Tick, (ev) => void seen.push(ev.seq));
      const p1 = await server.peer();
      assert.deepEqual((await p1.hello as { hello: Hello }).hello, { metadata: { app: "x" }, agent: "parley-ts/0.1.0", maxMessageBytes: 4 << 20, streamWindowBytes: 256 << 10 });
      await open(conn);
      for (let i = 1; i <= 3; i++) p1.send(tick(i, i));
      p1.send(tick(100, 0, "")); // not recoverable: no offset, always delivered
      await sleep(30);
      p1.ws.terminate();

      const p2 = await server.peer();
      assert.deepEqual(((await p2.hello) as { hello: Hello }).hello, {
        metadata: { app: "x" },
        sessionId: "s1",
        resumeToken: "t1",
        offsets: { session: 3 },
        agent: "parley-ts/0.1.0",
        maxMessageBytes: 4 << 20,
        streamWindowBytes: 256 << 10,
      });
      await stateWhere(conn, (s) => s.status == "open" && s.resumed);
      // The server replays from where it thinks the client was: 2 and 3 again.
      for (let i = 2; i <= 5; i++) p2.send(tick(i, i));
      await sleep(30);
      assert.deepEqual(seen, [1, 2, 3, 100, 4, 5]);
      p2.ws.terminate();

      const p3 = await server.peer();
      assert.deepEqual(((await p3.hello) as { hello: Hello }).hello.offsets, { session: 5 });
      await stateWhere(conn, (s) => s.status == "open" && !s.resumed);
      // A new session numbers its events afresh.
      p3.send(tick(11, 1));
      p3.send(tick(12, 2));
      await sleep(30);
      assert.deepEqual(seen, [1, 2, 3, 100, 4, 5, 11, 12]);
      p3.ws.terminate();
      const p4 = await server.peer();
      const h4 = ((await p4.hello) as { hello: Hello }).hello;
      assert.deepEqual([h4.sessionId, h4.resumeToken, h4.offsets], ["s2", "t2", { session: 2 }]);
      conn.close();
    });
  });

  test("an event offset with no handler still counts as seen", async () => {
    await withServer(await serverWith([{ sessionId: "s1", resumeToken: "t1" }]), async (server) => {
      const conn = new Connection(server.url, { ...fast });
      const p1 = await server.peer();
      await open(conn);
      p1.send(tick(1, 7));
      await sleep(20);
      p1.ws.terminate();
      const p2 = await server.peer();
      assert.deepEqual(((await p2.hello) as { hello: Hello }).hello.offsets, { session: 7 });
      conn.close();
    });
  });

  test("the token function is called on every dial", async () => {
    await withServer(await serverWith([{ sessionId: "s1" }]), async (server) => {
      let n = 0;
      const conn = new Connection(server.url, { ...fast, token: async () => `tok-${++n}` });
      const p1 = await server.peer();
      assert.equal(((await p1.hello) as { hello: Hello }).hello.metadata?.["authorization"], "Bearer tok-1");
      await open(conn);
      p1.ws.terminate();
      const p2 = await server.peer();
      assert.equal(((await p2.hello) as { hello: Hello }).hello.metadata?.["authorization"], "Bearer tok-2");
      assert.equal(n, 2);
      conn.close();
    });
  });

  test("a token function that throws on reconnect closes the connection with unauthenticated", async () => {
    await withServer(await serverWith([{ sessionId: "s1" }]), async (server) => {
      let n = 0;
      const conn = new Connection(server.url, {
        ...fast,
        token: () => {
          if (++n > 1) throw new Error("signed out");
          return "t";
        },
      });
      await open(conn);
      const waiting = conn.call(Echo, {});
      (await server.peer()).ws.terminate();
      const closed = await stateWhere(conn, (s) => s.status == "closed");
      assert.equal(closed.status == "closed" && closed.error.code, "unauthenticated");
      await rejectsWith(waiting, "unauthenticated", /signed out/);
    });
  });

  test("an authentication refusal on reconnect is final; another error id 0 is retried", async () => {
    await withServer(await serverWith([{ sessionId: "s1" }, false]), async (server) => {
      const conn = new Connection(server.url, { ...fast });
      await open(conn);
      (await server.peer()).ws.terminate();
      const p2 = await server.peer();
      await p2.hello;
      p2.send({ error: { id: 0, code: 14, message: "busy" } }); // unavailable: try again
      const r = await stateWhere(conn, (s) => s.status == "reconnecting" && s.attempt == 2);
      assert.match(r.status == "reconnecting" ? r.error.message : "", /busy/);
      const p3 = await server.peer();
      await p3.hello;
      const waiting = conn.call(Echo, {});
      p3.send({ error: { id: 0, code: 7, message: "banned" } });
      const closed = await stateWhere(conn, (s) => s.status == "closed");
      assert.equal(closed.status == "closed" && closed.error.code, "permission_denied");
      await rejectsWith(waiting, "permission_denied", /banned/);
      await sleep(30);
      assert.equal(server.connections, 3, "no dial after the refusal");
    });
  });

  test("GoAway: a new socket at once; the old one finishes its calls; calls it refused go to the new one", async () => {
    await withServer(await serverWith([{ sessionId: "s1" }, { sessionId: "s2" }]), async (server) => {
      const conn = new Connection(server.url, { ...fast });
      const old = await server.peer();
      await open(conn);
      const accepted = conn.call(Sleep, { ms: 1 });
      const refused = conn.call(Sleep, { ms: 2 });
      const [a, b] = [await expectFrame(old, "call"), await expectFrame(old, "call")];
      old.send({ goaway: { reason: "deploy", lastId: a.id } });
      const r = await stateWhere(conn, (s) => s.status == "reconnecting");
      assert.match(r.status == "reconnecting" ? r.error.message : "", /going away: deploy/);
      const fresh = await server.peer();
      await open(conn);
      const meanwhile = conn.call(Echo, { text: "new" });
      const m = await expectFrame(fresh, "call");
      assert.equal(m.method, Echo.procedure);
      fresh.send(echoReply(m.id, "on the new socket"));
      assert.equal((await within(meanwhile)).text, "on the new socket");
      // The draining server refuses b: it never ran, so it goes again.
      old.send({ error: { id: b.id, code: 14, message: "server is going away" } });
      const b2 = await expectFrame(fresh, "call");
      assert.equal(b2.method, Sleep.procedure);
      assert.notEqual(b2.id, b.id);
      fresh.send({ reply: { id: b2.id, payload: new Uint8Array() } });
      await within(refused);
      old.send({ reply: { id: a.id, payload: new Uint8Array() } });
      await within(accepted);
      old.ws.close(1001);
      await sleep(20);
      assert.equal(conn.state.status, "open");
      conn.close();
    });
  });

  test("giving up reconnecting after a GoAway lets the old socket finish its calls; close() then cuts the drain short", async () => {
    await withServer(await serverWith([{ sessionId: "s1" }, false]), async (server) => {
      const conn = new Connection(server.url, { WebSocket, reconnect: { initialDelayMs: 0, maxAttempts: 1 } });
      const old = await server.peer();
      await open(conn);
      const first = conn.call(Sleep, { ms: 1 });
      const second = conn.call(Sleep, { ms: 2 });
      const [a, b] = [await expectFrame(old, "call"), await expectFrame(old, "call")];
      old.send({ goaway: { reason: "deploy", lastId: b.id } });
      const fresh = await server.peer();
      await fresh.hello;
      fresh.send({ error: { id: 0, code: 14, message: "shutting down" } });
      const closed = await stateWhere(conn, (s) => s.status == "closed");
      assert.match(closed.status == "closed" ? closed.error.message : "", /gave up reconnecting after 1 attempts/);
      await rejectsWith(conn.call(Echo, {}), "unavailable", /gave up reconnecting/);
      old.send({ reply: { id: a.id, payload: new Uint8Array() } });
      await within(first);
      conn.close();
      await rejectsWith(second, "canceled", /closed by the client/);
      assert.equal((await within(old.closed)).code, 1000);
    });
  });

  test("a state listener that throws goes to onError; the others still hear every state", async () => {
    const server = await FakeServer.start();
    const errors: unknown[] = [];
    const conn = new Connection(server.url, { WebSocket, reconnect: false, onError: (e) => errors.push(e) });
    const seen: string[] = [];
    conn.onStateChange(() => {
      throw new Error("listener bug");
    });
    conn.onStateChange((s) => seen.push(s.status));
    await within(conn.ready);
    conn.close();
    await server.close();
    assert.deepEqual(seen, ["open", "closed"]);
    assert.deepEqual(
      errors.map((e) => (e as Error).message),
      ["listener bug", "listener bug"],
    );
  });

  test("keepalive: a silent socket is a drop; it reconnects, closing the old one with 4000 so the session stays resumable", async () => {
    await withServer(await serverWith([{ sessionId: "s1", resumeToken: "t1" }, { sessionId: "s1", resumeToken: "t1", resumed: true }]), async (server) => {
      const conn = new Connection(server.url, { ...fast, pingIntervalMs: 30, pongTimeoutMs: 50 });
      const p1 = await server.peer();
      await open(conn);
      const r = await stateWhere(conn, (s) => s.status == "reconnecting");
      assert.match(r.status == "reconnecting" ? r.error.message : "", /no frame from the server/);
      assert.equal((await within(p1.closed)).code, 4000);
      const p2 = await server.peer();
      assert.equal(((await p2.hello) as { hello: Hello }).hello.resumeToken, "t1");
      assert.equal((await open(conn)).resumed, true);
      conn.close();
      assert.equal((await within(p2.closed)).code, 1000);
    });
  });

  test("close() while reconnecting stops: no more dials, waiting calls fail with canceled", async () => {
    const server = await FakeServer.start();
    const conn = new Connection(server.url, { WebSocket, reconnect: { initialDelayMs: 200 } });
    await open(conn);
    await server.close();
    await stateWhere(conn, (s) => s.status == "reconnecting");
    const waiting = conn.call(Echo, {});
    conn.close();
    await rejectsWith(waiting, "canceled");
    await sleep(250);
    assert.equal(conn.state.status, "closed");
  });

  test("handlers survive a reconnect", async () => {
    await withServer(await serverWith([{ sessionId: "s1" }, { sessionId: "s2" }]), async (server) => {
      const conn = new Connection(server.url, { ...fast });
      const seen: number[] = [];
      onEvent(conn, Tick, (ev) => void seen.push(ev.seq));
      await open(conn);
      (await server.peer()).ws.terminate();
      const p2 = await server.peer();
      await stateWhere(conn, (s) => s.status == "open" && s.reconnected);
      p2.send(tick(9, 1));
      await sleep(20);
      assert.deepEqual(seen, [9]);
      conn.close();
    });
  });
});
