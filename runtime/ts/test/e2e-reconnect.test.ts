// Reconnection and session resumption end to end: the TS client against
// the real Go server (internal/e2e/cmd/e2eserver), with the faults put
// between them by a TCP proxy (test/proxy.ts): every socket dropped at
// once, a blackholed (half-open) socket, and the server process restarted.
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import WebSocket from "ws";
import { Connection, onEvent, type ConnectionState } from "../src/index.js";
import { startE2EServer } from "./e2eserver.js";
import { TcpProxy } from "./proxy.js";
import { Echo, Outcome, Sleep, Subscribe, Tick } from "./specs.js";
import { protocols } from "./protocols.js";

function within<T>(p: Promise<T>, ms = 5000, what = "it"): Promise<T> {
  return Promise.race([p, sleep(ms, undefined, { ref: false }).then(() => assert.fail(`${what}: still pending after ${ms} ms`))]);
}

function stateWhere(conn: Connection, ok: (s: ConnectionState) => boolean, ms = 5000): Promise<ConnectionState> {
  if (ok(conn.state)) return Promise.resolve(conn.state);
  return within(
    new Promise((resolve) => {
      const off = conn.onStateChange((s) => ok(s) && (off(), resolve(s)));
    }),
    ms,
    "state",
  );
}

/** Fast reconnects: the test is about what survives, not about waiting. */
const reconnect = { initialDelayMs: 20, maxDelayMs: 200 };

for (const protocol of ["proto", "json"] as const) {
  describe(`${protocol}: reconnect through a TCP proxy`, () => {
    let server: { url: string; stop(): Promise<void> };
    let proxy: TcpProxy;
    before(async () => {
      server = await startE2EServer();
      proxy = await TcpProxy.start(Number(new URL(server.url).port));
    });
    after(async () => {
      await proxy?.close();
      await server?.stop();
    });

    const connect = () => new Connection(proxy.url(server.url), { WebSocket, protocol: protocols[protocol], reconnect });

    test("the connection killed mid-burst of events: after resume, every event once, in order", async () => {
      const conn = connect();
      await within(conn.ready);
      const n = 300; // a burst within the server's resume buffer (512 events)
      const seen: number[] = [];
      const states: ConnectionState[] = [];
      conn.onStateChange((s) => states.push(s));
      /** Events that arrived after each reconnect: the replayed and later ones. */
      const afterReopen: number[] = [];
      onEvent(conn, Tick, (ev) => {
        seen.push(ev.seq);
        const reopened = states.filter((s) => s.status == "open").length;
        if (reopened) afterReopen[reopened - 1] = (afterReopen[reopened - 1] ?? 0) + 1;
        // Kill every socket 50 events into each burst, from inside the event stream.
        if (seen.length % n == 50) proxy.dropAll();
      });
      for (let burst = 1; burst <= 2; burst++) {
        // Subscribe is not idempotent: in flight across the drop, it goes
        // again with its id into the resumed session and runs once.
        const res = await within(conn.call(Subscribe, { count: n }, { timeoutMs: 10_000 }), 10_000, "Subscribe");
        assert.equal(res.published, n);
        await within(
          (async () => {
            while (seen.length < burst * n) await sleep(10);
          })(),
          5000,
          `events (${seen.length} of ${burst * n})`,
        );
      }
      await sleep(50);
      const want = Array.from({ length: n }, (_, i) => i + 1);
      assert.deepEqual(seen, [...want, ...want]);
      const opens = states.filter((s) => s.status == "open");
      assert.equal(opens.length, 2, JSON.stringify(states.map((s) => [s.status, s.status == "reconnecting" && s.error.message])));
      assert.ok(opens.every((s) => s.status == "open" && s.resumed && s.reconnected));
      console.log(`# ${protocol}: events delivered after each resume: ${afterReopen.join(", ")}`);
      conn.close();
    });

    test("100 calls in flight across a drop, idempotent and not: each answered exactly once", async () => {
      const conn = connect();
      await within(conn.ready);
      const tag = `${protocol}-${Date.now()}`;
      const answers = new Map<number, number>();
      const calls = Array.from({ length: 100 }, (_, i) => {
        const p =
          i % 2 ? conn.call(Echo, { text: `echo ${i}` }, { timeoutMs: 10_000 }).then((r) => assert.equal(r.text, `echo ${i}`))
          : conn.call(Sleep, { ms: 300, token: `${tag}-${i}` }, { timeoutMs: 10_000 }).then(() => {});
        return p.then(() => answers.set(i, (answers.get(i) ?? 0) + 1));
      });
      await sleep(100); // every call sent; the Sleeps are running
      proxy.dropAll();
      await within(Promise.all(calls), 10_000, "calls");
      assert.equal(answers.size, 100);
      assert.ok([...answers.values()].every((n) => n == 1));
      const state = conn.state;
      assert.ok(state.status == "open" && state.resumed && state.reconnected);
      // The Sleeps ran to completion once each: a second run of a token
      // would have panicked in the service (it closes a channel twice).
      const outcomes = await Promise.all(
        Array.from({ length: 50 }, (_, i) => conn.call(Outcome, { token: `${tag}-${i * 2}` }).then((r) => r.outcome)),
      );
      assert.deepEqual(new Set(outcomes), new Set(["completed"]));
      conn.close();
    });

    test("a slow link: a reply that takes longer than the keepalive bound to arrive does not look like a dead server (Node)", async () => {
      const conn = new Connection(proxy.url(server.url), { WebSocket, protocol: protocols[protocol], reconnect, pingIntervalMs: 100, pongTimeoutMs: 200 });
      await within(conn.ready);
      const states: string[] = [];
      conn.onStateChange((s) => void states.push(s.status));
      // 16 KiB every 20 ms: a 512 KiB echo takes about 650 ms to come
      // back, more than twice the 300 ms bound, with the server's pongs
      // queued behind it.
      proxy.slow({ chunk: 16 << 10, ms: 20 });
      try {
        const t0 = performance.now();
        const text = "x".repeat(512 << 10);
        const r = await conn.call(Echo, { text }, { timeoutMs: 10_000 });
        const took = performance.now() - t0;
        assert.equal(r.text.length, text.length);
        assert.ok(took > 300, `the echo took ${Math.round(took)} ms: the link was not slow enough to test anything`);
        assert.deepEqual(states, [], "the connection never dropped");
      } finally {
        proxy.slow(undefined);
        conn.close();
      }
    });

    test("a blackholed socket: the client notices within the keepalive bound and resumes on a new one", async () => {
      const conn = new Connection(proxy.url(server.url), { WebSocket, protocol: protocols[protocol], reconnect, pingIntervalMs: 100, pongTimeoutMs: 200 });
      await within(conn.ready);
      const seen: number[] = [];
      onEvent(conn, Tick, (ev) => void seen.push(ev.seq));
      await conn.call(Subscribe, { count: 3 });
      proxy.blackholeAll();
      const t0 = performance.now();
      const pending = conn.call(Echo, { text: "across" }, { timeoutMs: 5000 });
      const r = await stateWhere(conn, (s) => s.status == "reconnecting");
      const took = performance.now() - t0;
      assert.ok(took < 300 + 150, `noticed after ${Math.round(took)} ms; bound 300 ms`);
      assert.match(r.status == "reconnecting" ? r.error.message : "", /no frame from the server/);
      const back = await stateWhere(conn, (s) => s.status == "open");
      assert.ok(back.status == "open" && back.resumed, "the session resumed");
      assert.equal((await within(pending)).text, "across");
      await conn.call(Subscribe, { count: 2 });
      await sleep(50);
      assert.deepEqual(seen, [1, 2, 3, 1, 2]);
      conn.close();
    });
  });
}

describe("restart the server", () => {
  test("clients come back with backoff, are told resumed = false, and work again", async () => {
    let server = await startE2EServer();
    const addr = new URL(server.url).host;
    const conn = new Connection(server.url, { WebSocket, reconnect: { initialDelayMs: 50, maxDelayMs: 400 } });
    try {
      await within(conn.ready);
      const first = conn.state;
      assert.ok(first.status == "open");
      const states: ConnectionState[] = [];
      conn.onStateChange((s) => states.push(s));
      await server.stop();
      await stateWhere(conn, (s) => s.status == "reconnecting" && s.attempt >= 3, 10_000);
      // Calls made while the server is down wait for it.
      const waiting = conn.call(Echo, { text: "after the restart" }, { timeoutMs: 15_000 });
      server = await startE2EServer(["-addr", addr]);
      const back = await stateWhere(conn, (s) => s.status == "open", 10_000);
      assert.ok(back.status == "open");
      assert.equal(back.resumed, false);
      assert.equal(back.reconnected, true);
      assert.notEqual(back.session.sessionId, first.session.sessionId);
      assert.equal((await within(waiting, 10_000)).text, "after the restart");
      const attempts = states.flatMap((s) => (s.status == "reconnecting" ? [s] : []));
      assert.ok(attempts.length >= 3);
      attempts.forEach((s, i) => assert.equal(s.attempt, i + 1));
      // Delays grow with the attempts and stay under their caps.
      attempts.forEach((s) => assert.ok(s.delayMs <= Math.min(400, 50 * 2 ** (s.attempt - 1)), `attempt ${s.attempt}: ${s.delayMs} ms`));
    } finally {
      conn.close();
      await server.stop();
    }
  });
});
