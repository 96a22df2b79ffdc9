// A fault and misuse trial of the TS client's promises, as an outside
// tester runs it: against a scripted server (GoAway then a lost socket),
// and against the real Go server (internal/e2e/cmd/e2eserver) in both
// encodings through a TCP proxy that cuts each connection after a random
// number of bytes (mid-handshake, just after Welcome, mid-frame, during a
// replay) or stalls one direction of it (a half-open socket).
import { create, toBinary } from "@bufbuild/protobuf";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import net from "node:net";
import { after, before, describe, test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { fileURLToPath } from "node:url";
import WebSocket from "ws";
import { bidiStream, clientStream, Connection, onEvent, serverStream, ParleyError, type ConnectionOptions, type ConnectionState } from "../src/index.js";
import { rejectsWith, within } from "./assert.js";
import { startE2EServer } from "./e2eserver.js";
import { FakeServer, expectFrame } from "./fakeserver.js";
import { protocols } from "./protocols.js";
import { Count, Echo, EchoStream, Sleep, Subscribe, Sum, Tick } from "./specs.js";

function stateWhere(conn: Connection, ok: (s: ConnectionState) => boolean, ms = 5000): Promise<ConnectionState> {
  if (ok(conn.state)) return Promise.resolve(conn.state);
  return within(
    new Promise((resolve) => {
      const off = conn.onStateChange((s) => ok(s) && (off(), resolve(s)));
    }),
    ms,
  );
}

describe("GoAway, then the old socket closes with calls unanswered", () => {
  const fast: ConnectionOptions = { WebSocket, reconnect: { initialDelayMs: 0 } };

  test("a call the server accepted before GoAway, not idempotent, fails unavailable at once: its session cannot resume", async () => {
    // The second socket never gets a Welcome: the server is gone for good.
    const server = await FakeServer.start({ welcome: (_, n) => (n ? false : { sessionId: "s1", resumeToken: "t1" }) });
    try {
      const conn = new Connection(server.url, fast);
      const old = await server.peer();
      await within(conn.ready);
      const accepted = conn.call(Sleep, { ms: 60_000 }, { timeoutMs: 20_000 });
      const a = await expectFrame(old, "call");
      old.send({ goaway: { reason: "shutdown", lastId: a.id } });
      await stateWhere(conn, (s) => s.status == "reconnecting");
      // The server's Shutdown passed its deadline: it closes the socket.
      old.ws.close(1001, "going away");
      const started = performance.now();
      await rejectsWith(within(accepted, 2000), "unavailable");
      assert.ok(performance.now() - started < 2000);
      conn.close();
    } finally {
      await server.close();
    }
  });

  test("a call sent after GoAway's last id, lost unanswered with the socket, never ran: it goes again on the new socket", async () => {
    const server = await FakeServer.start({ welcome: (_, n) => ({ sessionId: `s${n + 1}`, resumeToken: "t" }) });
    try {
      const conn = new Connection(server.url, fast);
      const old = await server.peer();
      await within(conn.ready);
      const first = conn.call(Sleep, { ms: 1 });
      const second = conn.call(Sleep, { ms: 2 });
      const [a, b] = [await expectFrame(old, "call"), await expectFrame(old, "call")];
      old.send({ goaway: { reason: "shutdown", lastId: a.id } });
      // The server drops b (it arrived once closing), answers a, closes.
      old.send({ reply: { id: a.id, payload: new Uint8Array() } });
      await within(first);
      old.ws.close(1001, "going away");
      const fresh = await server.peer();
      await fresh.hello;
      const b2 = await expectFrame(fresh, "call");
      assert.equal(b2.method, Sleep.procedure);
      assert.notEqual(b2.id, b.id);
      fresh.send({ reply: { id: b2.id, payload: new Uint8Array() } });
      await within(second);
      conn.close();
    } finally {
      await server.close();
    }
  });
});

describe("GoAway, then streams the server never ran", () => {
  const fast: ConnectionOptions = { WebSocket, reconnect: { initialDelayMs: 0 } };
  const item = (n: number) => toBinary(Count.output, create(Count.output, { n }));

  for (const how of ["refused with not_run", "lost with the socket, above GoAway's last id"]) {
    test(`a server stream ${how} opens again on the new socket: its one request is in its Call`, async () => {
      const server = await FakeServer.start({ welcome: (_, n) => ({ sessionId: `s${n + 1}`, resumeToken: "t" }) });
      try {
        const conn = new Connection(server.url, fast);
        const old = await server.peer();
        await within(conn.ready);
        const it = serverStream(conn, Count, { count: 2 })[Symbol.asyncIterator]();
        const first = it.next();
        const c = await expectFrame(old, "call");
        old.send({ goaway: { reason: "shutdown", lastId: 0 } });
        if (how.startsWith("refused")) old.send({ error: { id: c.id, code: 14, message: "server is shutting down", notRun: true } });
        old.ws.close(1001, "going away");
        const fresh = await server.peer();
        await fresh.hello;
        const c2 = await expectFrame(fresh, "call");
        assert.equal(c2.method, Count.procedure);
        assert.deepEqual(c2.payload, c.payload, "the same request");
        fresh.send({ item: { id: c2.id, payload: item(0) } });
        fresh.send({ item: { id: c2.id, payload: item(1) } });
        fresh.send({ reply: { id: c2.id } });
        assert.equal((await within(first)).value?.n, 0);
        assert.equal((await within(it.next())).value?.n, 1);
        assert.equal((await within(it.next())).done, true);
        conn.close();
      } finally {
        await server.close();
      }
    });
  }

  test("a bidi stream refused with not_run fails unavailable: items it sent went with the socket", async () => {
    const server = await FakeServer.start({ welcome: (_, n) => ({ sessionId: `s${n + 1}`, resumeToken: "t" }) });
    try {
      const conn = new Connection(server.url, fast);
      const old = await server.peer();
      await within(conn.ready);
      const st = bidiStream(conn, EchoStream);
      await within(st.send({ text: "a" }));
      const c = await expectFrame(old, "call");
      old.send({ goaway: { reason: "shutdown", lastId: 0 } });
      old.send({ error: { id: c.id, code: 14, message: "server is shutting down", notRun: true } });
      await rejectsWith(within(st[Symbol.asyncIterator]().next()), "unavailable");
      conn.close();
    } finally {
      await server.close();
    }
  });
});

describe("misuse against a scripted server", () => {
  test("aborting a call's signal after it settled sends no Cancel; close twice; calls after close fail canceled at once", async () => {
    const server = await FakeServer.start();
    try {
      const conn = new Connection(server.url, { WebSocket, reconnect: false });
      const peer = await server.peer();
      await within(conn.ready);
      const ac = new AbortController();
      const call = conn.call(Echo, { text: "x" }, { signal: ac.signal });
      const c = await expectFrame(peer, "call");
      peer.send({ reply: { id: c.id, payload: new Uint8Array() } });
      await within(call);
      ac.abort();
      const probe = conn.call(Echo, { text: "probe" });
      const next = await expectFrame(peer, "call"); // not a cancel
      assert.equal(next.id, c.id + 2);
      peer.send({ reply: { id: next.id, payload: new Uint8Array() } });
      await within(probe);
      conn.close();
      conn.close();
      await rejectsWith(within(conn.call(Echo, {})), "canceled");
      await rejectsWith(within(conn.call(Echo, {}, { signal: AbortSignal.abort() })), "canceled");
      const st = serverStream(conn, Count, { count: 1 });
      await rejectsWith(within(st[Symbol.asyncIterator]().next()), "canceled");
      assert.equal((await within(peer.closed)).code, 1000);
    } finally {
      await server.close();
    }
  });
});

/**
 * A proxy that cuts each new link, while faults are on, after a random
 * number of bytes in one direction (forwarding exactly that many), or
 * stalls that direction from there on (bytes read and dropped, its end not
 * passed on): a half-open socket.
 */
class CutProxy {
  readonly port: number;
  faulty = false;
  cuts = 0;
  #server: net.Server;
  #links = new Set<[net.Socket, net.Socket]>();
  #random: () => number;

  private constructor(server: net.Server, targetPort: number, random: () => number) {
    this.#server = server;
    this.#random = random;
    this.port = (server.address() as net.AddressInfo).port;
    server.on("connection", (client) => {
      const upstream = net.connect(targetPort, "127.0.0.1");
      const link: [net.Socket, net.Socket] = [client, upstream];
      this.#links.add(link);
      const end = () => {
        this.#links.delete(link);
        client.destroy();
        upstream.destroy();
      };
      let up = -1;
      let down = -1;
      let stall = false;
      if (this.faulty) {
        const r = this.#random;
        const at = () => {
          const k = Math.floor(r() * 3);
          return Math.floor(k == 0 ? r() * 600 : k == 1 ? 300 + r() * 3000 : r() * 100_000);
        };
        stall = r() < 0.2;
        if (r() < 0.5) up = at();
        else down = at();
      }
      const pipe = (src: net.Socket, dst: net.Socket, budget: number) => {
        let stalled = false;
        src.on("data", (d: Buffer) => {
          if (stalled) return;
          if (budget < 0 || d.length < budget) {
            if (budget >= 0) budget -= d.length;
            dst.write(d);
            return;
          }
          dst.write(d.subarray(0, budget));
          this.cuts++;
          if (stall) stalled = true;
          else end();
        });
        src.on("close", () => stalled || end());
        src.on("error", () => stalled || end());
      };
      pipe(client, upstream, up);
      pipe(upstream, client, down);
    });
  }

  static start(targetPort: number, random: () => number): Promise<CutProxy> {
    return new Promise((resolve) => {
      const server = net.createServer();
      server.listen(0, "127.0.0.1", () => resolve(new CutProxy(server, targetPort, random)));
    });
  }

  url(url: string): string {
    const u = new URL(url);
    u.port = String(this.port);
    return u.toString();
  }

  /** Cuts one open link at once; returns whether there was one. */
  dropOne(): boolean {
    for (const link of this.#links) {
      this.#links.delete(link);
      link[0].resetAndDestroy();
      link[1].destroy();
      this.cuts++;
      return true;
    }
    return false;
  }

  dropAll(): void {
    while (this.dropOne());
  }

  close(): Promise<void> {
    this.dropAll();
    return new Promise((resolve) => this.#server.close(() => resolve()));
  }
}

/** A small seeded generator (mulberry32): a failing run can be replayed. */
function seeded(seed: number): () => number {
  return () => {
    seed = (seed + 0x6d2b79f5) | 0;
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

describe("against the real server", () => {
  let server: { url: string; stop(): Promise<void> };
  before(async () => {
    server = await startE2EServer();
  });
  after(async () => {
    await server?.stop();
  });

  for (const protocol of ["proto", "json"] as const) {
    test(`${protocol}: misuse: huge metadata, streams reused after their end, calls after close`, async () => {
      const conn = new Connection(server.url, { WebSocket, protocol: protocols[protocol], reconnect: false });
      await within(conn.ready);
      // 100 KiB of metadata: over the server's 64 KiB, the call fails and the socket stays.
      await rejectsWith(within(conn.call(Echo, { text: "x" }, { metadata: { big: "m".repeat(100 << 10) } })), "resource_exhausted");
      assert.equal((await within(conn.call(Echo, { text: "still here" }))).text, "still here");

      // A server stream iterated again after its end ends again at once.
      const st = serverStream(conn, Count, { from: 1, count: 3 });
      const got: number[] = [];
      for await (const r of st) got.push(r.n);
      assert.deepEqual(got, [1, 2, 3]);
      for await (const r of st) assert.fail(`an item after the end: ${r.n}`);
      // Breaking out of a loop over a stream that already ended cancels nothing.
      for await (const _ of st) break;

      // A client stream: sending after closeAndReceive, and receiving twice.
      const sum = clientStream(conn, Sum);
      await sum.send({ value: 2n });
      await sum.send({ value: 3n });
      assert.equal((await within(sum.closeAndReceive())).sum, 5n);
      assert.equal((await within(sum.closeAndReceive())).sum, 5n);
      await rejectsWith(within(sum.send({ value: 1n })), "failed_precondition");

      // A bidi stream: send after closeSend, closeSend twice, send after the end.
      const bidi = bidiStream(conn, EchoStream);
      await bidi.send({ text: "a" });
      bidi.closeSend();
      bidi.closeSend();
      await rejectsWith(within(bidi.send({ text: "b" })), "failed_precondition", /after closeSend/);
      const echoed: string[] = [];
      for await (const r of bidi) echoed.push(r.text);
      assert.deepEqual(echoed, ["a"]);
      await rejectsWith(within(bidi.send({ text: "c" })), "failed_precondition");

      // A stream broken out of early, then iterated again: it is over.
      const long = serverStream(conn, Count, { from: 1, count: 1000, delayMs: 1 });
      for await (const _ of long) break;
      await rejectsWith(within(long[Symbol.asyncIterator]().next()), "canceled");

      conn.close();
      conn.close();
      await rejectsWith(within(conn.call(Echo, {})), "canceled");
      const late = bidiStream(conn, EchoStream);
      await rejectsWith(within(late.send({ text: "x" })), "canceled");
      await rejectsWith(within(late[Symbol.asyncIterator]().next()), "canceled");
    });
  }

  test("a Node process using a connection exits by itself once it is closed", async () => {
    const child = fileURLToPath(new URL("./faults-child.js", import.meta.url));
    for (const protocol of ["proto", "json"]) {
      const p = spawn(process.execPath, [child, server.url, protocol], { stdio: ["ignore", "pipe", "inherit"] });
      let out = "";
      p.stdout!.on("data", (d) => (out += d));
      const code = await within(new Promise((resolve) => p.on("exit", resolve)), 15_000).finally(() => p.exitCode === null && p.kill());
      assert.equal(code, 0, `child (${protocol}) exited with ${code}: ${out}`);
      assert.match(out, /done/);
    }
  });

  test("trial: random cuts and stalls while calls, streams and events run; events once and in order, calls settle", async () => {
    const seed = Date.now() >>> 0;
    const random = seeded(seed);
    const proxy = await CutProxy.start(Number(new URL(server.url).port), random);
    const conns: Connection[] = [];
    try {
      const clients = (["proto", "json", "proto", "json"] as const).map((protocol) => {
        const conn = new Connection(proxy.url(server.url), {
          WebSocket,
          protocol: protocols[protocol],
          reconnect: { initialDelayMs: 5, maxDelayMs: 50 },
          pingIntervalMs: 100,
          pongTimeoutMs: 300,
          defaultTimeoutMs: 5000,
        });
        conns.push(conn);
        const c = { conn, protocol, seqs: [] as number[], newSession: false, bursts: [] as { count: number; ok: boolean }[] };
        onEvent(conn, Tick, (ev) => void c.seqs.push(ev.seq));
        conn.onStateChange((s) => {
          if (s.status == "open" && s.reconnected && !s.resumed) c.newSession = true;
        });
        return c;
      });
      await within(Promise.all(conns.map((c) => c.ready)));
      proxy.faulty = true;
      const until = performance.now() + 5000;
      const dropper = setInterval(() => proxy.dropOne(), 80);
      const outcomes = new Map<string, number>();
      const count = (k: string) => outcomes.set(k, (outcomes.get(k) ?? 0) + 1);
      const settledLate: string[] = [];
      const work = clients.flatMap((c) => [
        // Subscribe is not idempotent: each call that runs publishes
        // seq 1..count to its connection. Run twice, its events would come twice.
        (async () => {
          for (let k = 0; performance.now() < until; k++) {
            const n = 20 + (k % 30);
            const started = performance.now();
            try {
              const res = await within(c.conn.call(Subscribe, { count: n }, { timeoutMs: 4000 }), 6000);
              assert.equal(res.published, n);
              c.bursts.push({ count: n, ok: true });
              count("subscribe ok");
            } catch (e) {
              if (!(e instanceof ParleyError)) throw e;
              assert.ok(["unavailable", "deadline_exceeded"].includes(e.code), e.message);
              c.bursts.push({ count: n, ok: false });
              count(`subscribe ${e.code}`);
            }
            if (performance.now() - started > 5000) settledLate.push("subscribe");
          }
        })(),
        // Unary calls, some aborted at random points.
        (async () => {
          for (let k = 0; performance.now() < until; k++) {
            const ac = new AbortController();
            if (k % 4 == 3) setTimeout(() => ac.abort(), k % 7);
            const text = `${c.protocol}-${k}`;
            try {
              const res = await within(c.conn.call(Echo, { text }, { timeoutMs: 3000, signal: ac.signal }), 5000);
              assert.equal(res.text, text);
              count("echo ok");
            } catch (e) {
              if (!(e instanceof ParleyError)) throw e;
              assert.ok(["unavailable", "deadline_exceeded", "canceled"].includes(e.code), e.message);
              count(`echo ${e.code}`);
            }
          }
        })(),
        // Streams: items in order; the end is complete, or unavailable.
        (async () => {
          for (let k = 0; performance.now() < until; k++) {
            let n = 0;
            try {
              if (k % 2) {
                for await (const r of serverStream(c.conn, Count, { from: 0, count: 200 }, { timeoutMs: 5000 })) {
                  assert.equal(r.n, n);
                  n++;
                }
                assert.equal(n, 200);
              } else {
                const b = bidiStream(c.conn, EchoStream, { timeoutMs: 5000 });
                const it = b[Symbol.asyncIterator]();
                for (; n < 30; n++) {
                  await b.send({ text: String(n) });
                  const r = await it.next();
                  assert.ok(!r.done);
                  assert.equal(r.value.text, String(n));
                }
                b.closeSend();
                assert.ok((await it.next()).done);
              }
              count("stream ok");
            } catch (e) {
              if (!(e instanceof ParleyError)) throw e;
              assert.ok(["unavailable"].includes(e.code), e.message);
              count(`stream ${e.code}`);
              await sleep(5); // a stream fails at once while the socket is down
            }
          }
        })(),
      ]);
      await within(Promise.all(work), 20_000);
      clearInterval(dropper);
      proxy.faulty = false;
      proxy.dropAll();
      // One more burst each, on clean links: once it has come, every event before it has.
      for (const c of clients) {
        const res = await within(c.conn.call(Subscribe, { count: 1 }, { timeoutMs: 5000 }), 6000);
        assert.equal(res.published, 1);
        c.bursts.push({ count: 1, ok: true });
      }
      await sleep(100);
      let resumedAlways = 0;
      for (const c of clients) {
        // Each burst's events: 1..count, in order, once (a failed call's
        // may be partial, or absent).
        const seqs = c.seqs;
        let at = 0;
        for (const [i, b] of c.bursts.entries()) {
          if (b.ok && !c.newSession) {
            for (let s = 1; s <= b.count; s++, at++) {
              assert.equal(seqs[at], s, `${c.protocol}: burst ${i} (${b.count} events), event ${s}: got ${seqs[at]} (${seqs.slice(Math.max(0, at - 5), at + 5)})`);
            }
          } else {
            // Partial: an increasing run starting at 1, if any.
            if (seqs[at] === 1) {
              let s = 1;
              while (seqs[at] === s && s <= b.count) at++, s++;
            }
          }
        }
        if (!c.newSession) {
          resumedAlways++;
          assert.equal(at, seqs.length, `${c.protocol}: ${seqs.length - at} events beyond the bursts: ${seqs.slice(at, at + 10)}`);
        }
      }
      assert.deepEqual(settledLate, []);
      assert.ok(proxy.cuts >= 20, `only ${proxy.cuts} faults`);
      console.log(`seed ${seed}: ${proxy.cuts} faults; ${resumedAlways} of ${clients.length} clients always resumed; ${JSON.stringify(Object.fromEntries(outcomes))}`);
    } finally {
      for (const c of conns) c.close();
      await proxy.close();
    }
  });
});
