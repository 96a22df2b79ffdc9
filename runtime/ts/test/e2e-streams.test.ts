// Streams, events and server-to-client calls end to end against the real Go
// server (internal/e2e/cmd/e2eserver), in both encodings.
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import WebSocket from "ws";
import { bidiStream, clientStream, Connection, handle, onEvent, ParleyError, serverStream } from "../src/index.js";
import { rejectsWith } from "./assert.js";
import { startE2EServer } from "./e2eserver.js";
import { AskBack, Confirm, Count, Echo, EchoStream, StreamOutcome, Subscribe, Sum, Tick } from "./specs.js";
import { protocols } from "./protocols.js";

let url: string;
let stop: () => Promise<void>;

before(async () => ({ url, stop } = await startE2EServer()));
after(() => stop?.());


/** Collects what a stream yields, and the error that ended it if any. */
async function collect<T>(s: AsyncIterable<T>): Promise<{ items: T[]; error?: ParleyError }> {
  const items: T[] = [];
  try {
    for await (const x of s) items.push(x);
  } catch (e) {
    assert.ok(e instanceof ParleyError, `not a ParleyError: ${String(e)}`);
    return { items, error: e };
  }
  return { items };
}

const range = (from: number, n: number) => Array.from({ length: n }, (_, i) => from + i);

for (const protocol of ["proto", "json"] as const) {
  describe(`e2e ${protocol}: streams`, () => {
    let conn: Connection;
    let n = 0;
    const token = () => `${protocol}-${Date.now()}-${n++}`;
    before(async () => {
      conn = new Connection(url, { WebSocket, protocol: protocols[protocol] });
      await conn.ready;
    });
    after(() => conn.close());

    test("server streaming: many more items than the window, in order", async () => {
      const { items, error } = await collect(serverStream(conn, Count, { from: 10, count: 1000 }));
      assert.equal(error, undefined);
      assert.deepEqual(items.map((r) => r.n), range(10, 1000));
    });

    test("client streaming: the sum of many more items than the window", async () => {
      const sum = clientStream(conn, Sum);
      for (let v = 1; v <= 1000; v++) await sum.send({ value: BigInt(v) });
      const res = await sum.closeAndReceive();
      assert.equal(res.sum, 500500n);
      assert.equal(res.count, 1000);
      // Sends not awaited one by one still go out in order under credit.
      const fast = clientStream(conn, Sum);
      await Promise.all(range(1, 500).map((v) => fast.send({ value: BigInt(v) })));
      assert.equal((await fast.closeAndReceive()).sum, 125250n);
    });

    test("bidi streaming: each item answered as it is sent; closeSend ends the responses", async () => {
      const echo = bidiStream(conn, EchoStream);
      const it = echo[Symbol.asyncIterator]();
      for (let i = 0; i < 100; i++) {
        await echo.send({ text: `#${i}` });
        const r = await it.next();
        assert.equal(r.done, false);
        assert.equal(r.value!.text, `#${i}`);
      }
      // And many in flight at once, more than either window.
      const sends = Promise.all(range(0, 300).map((i) => echo.send({ text: `@${i}` })));
      echo.closeSend();
      const rest: string[] = [];
      for (let r = await it.next(); !r.done; r = await it.next()) rest.push(r.value.text);
      await sends;
      assert.deepEqual(rest, range(0, 300).map((i) => `@${i}`));
    });

    test("100 concurrent streams interleave with unary calls on one socket", async () => {
      // A connection of its own: the server allows 100 streams per connection.
      const c = new Connection(url, { WebSocket, protocol: protocols[protocol] });
      try {
        await c.ready;
        const streams = range(0, 100).map(async (i) => {
          switch (i % 3) {
            case 0: {
              const { items, error } = await collect(serverStream(c, Count, { from: i * 1000, count: 150 }));
              assert.equal(error, undefined);
              assert.deepEqual(items.map((r) => r.n), range(i * 1000, 150));
              return;
            }
            case 1: {
              const sum = clientStream(c, Sum);
              for (const v of range(0, 150)) await sum.send({ value: BigInt(i + v) });
              assert.equal((await sum.closeAndReceive()).sum, BigInt(150 * i + (149 * 150) / 2));
              return;
            }
            default: {
              const echo = bidiStream(c, EchoStream);
              const got = collect(echo);
              for (const v of range(0, 150)) await echo.send({ text: `${i}/${v}` });
              echo.closeSend();
              const { items, error } = await got;
              assert.equal(error, undefined);
              assert.deepEqual(items.map((r) => r.text), range(0, 150).map((v) => `${i}/${v}`));
            }
          }
        });
        const unary = range(0, 300).map(async (i) => {
          await sleep(i % 30);
          assert.equal((await c.call(Echo, { text: `u${i}` })).text, `u${i}`);
        });
        await Promise.all([...streams, ...unary]);
      } finally {
        c.close();
      }
    });

    // Byte credit (Hello and Welcome stream_window_bytes, Credit.bytes).
    // The e2e server streams large items only by echoing them (Echo). In
    // both tests the reader pauses: it reads nothing for a while, the
    // slow reader the test is about (not a wait for some event: the test
    // passes whatever the pause; a longer one only lets more flow where
    // nothing holds the sender back). Before byte credit the sender kept
    // to its item credit (64) and filled the receiver's stream buffer
    // bound (streamBufferBytes, Go WithStreamBufferBytes): the stream
    // ended resource_exhausted.
    const big = (i: number) => `${i}:${"x".repeat(600_000)}`;
    const pause = () => sleep(500);

    test("a server stream of large items to a reader that pauses: the server keeps to the client's byte window, every item arrives", async () => {
      // 16 items of 600 KB, 9.6 MB, against 4 MiB of buffer.
      const c = new Connection(url, { WebSocket, protocol: protocols[protocol], streamBufferBytes: 4 << 20 });
      try {
        const echo = bidiStream(c, EchoStream);
        const sends = Promise.all(range(0, 16).map((i) => echo.send({ text: big(i) })));
        echo.closeSend();
        await pause();
        const { items, error } = await collect(echo);
        assert.equal(error, undefined);
        assert.deepEqual(items.map((r) => r.text), range(0, 16).map(big));
        await sends;
      } finally {
        c.close();
      }
    });

    test("a client stream of large items to a slow handler: the client keeps to the server's byte window, every item arrives", async () => {
      // The handler echoes each item before it reads the next, and the
      // client's window of 1 item holds it at the second while the reader
      // pauses. 60 items of 600 KB, 36 MB, against the server's 32 MiB.
      const c = new Connection(url, { WebSocket, protocol: protocols[protocol], streamWindow: 1 });
      try {
        const t = token();
        const echo = bidiStream(c, EchoStream);
        const sends = Promise.all(range(0, 60).map((i) => echo.send({ text: big(i), token: i ? "" : t })));
        echo.closeSend();
        await pause();
        const { items, error } = await collect(echo);
        assert.equal(error, undefined);
        assert.equal(items.length, 60);
        assert.ok(items.every((r, i) => r.text == big(i)));
        await sends;
        assert.deepEqual(await c.call(StreamOutcome, { token: t }), { $typeName: "e2e.v1.StreamOutcomeResponse", outcome: "completed", items: 60 });
      } finally {
        c.close();
      }
    });

    test("a stalled stream stalls only itself", async (t) => {
      const timed = async () => {
        const start = performance.now();
        const { items } = await collect(serverStream(conn, Count, { count: 2000 }));
        assert.equal(items.length, 2000);
        return performance.now() - start;
      };
      const alone = await timed();
      const stalled = serverStream(conn, Count, { count: 100_000 })[Symbol.asyncIterator]();
      assert.equal((await stalled.next()).value!.n, 0);
      const beside = await timed();
      assert.equal((await conn.call(Echo, { text: "still" })).text, "still");
      t.diagnostic(`2000 items: ${alone.toFixed(1)} ms alone, ${beside.toFixed(1)} ms beside a stalled stream`);
      assert.ok(beside < Math.max(10 * alone, 1000), `${beside} ms beside the stalled stream, ${alone} ms alone`);
      await stalled.return!();
    });

    test("breaking out of the loop cancels the handler", async () => {
      const t = token();
      let seen = 0;
      for await (const r of serverStream(conn, Count, { count: 1000, delayMs: 5, token: t })) {
        seen++;
        if (r.n == 4) break;
      }
      assert.equal(seen, 5);
      const out = await conn.call(StreamOutcome, { token: t });
      assert.equal(out.outcome, "canceled");
    });

    test("aborting a bidi stream cancels the handler", async () => {
      const t = token();
      const ac = new AbortController();
      const echo = bidiStream(conn, EchoStream, { signal: ac.signal });
      await echo.send({ text: "first", token: t });
      const it = echo[Symbol.asyncIterator]();
      assert.equal((await it.next()).value!.text, "first");
      ac.abort();
      await rejectsWith(it.next(), "canceled");
      await rejectsWith(echo.send({ text: "more" }), "canceled");
      assert.equal((await conn.call(StreamOutcome, { token: t })).outcome, "canceled");
    });

    test("the deadline covers the whole stream, on both sides", async () => {
      const t = token();
      const start = performance.now();
      const { items, error } = await collect(serverStream(conn, Count, { count: 1000, delayMs: 20, token: t }, { timeoutMs: 200 }));
      const took = performance.now() - start;
      assert.equal(error?.code, "deadline_exceeded");
      assert.ok(items.length >= 3 && items.length < 11, `${items.length} items`);
      assert.ok(took >= 199 && took < 1000, `failed after ${took} ms`);
      assert.equal((await conn.call(StreamOutcome, { token: t })).outcome, "deadline_exceeded");
      const slow = clientStream(conn, Sum, { timeoutMs: 100 });
      await slow.send({ value: 1n });
      await sleep(150);
      await rejectsWith(slow.send({ value: 2n }), "deadline_exceeded");
      await rejectsWith(slow.closeAndReceive(), "deadline_exceeded");
    });

    test("a server error mid-stream ends each kind with its code", async () => {
      const counted = await collect(serverStream(conn, Count, { count: 3, failCode: "aborted", failMessage: "enough" }));
      assert.deepEqual(counted.items.map((r) => r.n), [0, 1, 2]);
      assert.equal(counted.error?.code, "aborted");
      assert.equal(counted.error?.rawMessage, "enough");

      const sum = clientStream(conn, Sum);
      await sum.send({ value: 1n });
      await sum.send({ value: 2n });
      await sum.send({ failCode: "out_of_range" });
      await rejectsWith(sum.closeAndReceive(), "out_of_range", /failed after 2 items/);

      const echo = bidiStream(conn, EchoStream);
      await echo.send({ text: "a" });
      await echo.send({ text: "b", failCode: "permission_denied" });
      const echoed = await collect(echo);
      assert.deepEqual(echoed.items.map((r) => r.text), ["a"]);
      assert.equal(echoed.error?.code, "permission_denied");
      assert.equal(echoed.error?.rawMessage, "echo failed on b");
      await rejectsWith(echo.send({ text: "c" }), "permission_denied");
    });

    test("the connection closing ends open streams", async () => {
      const c = new Connection(url, { WebSocket, protocol: protocols[protocol] });
      const it = serverStream(c, Count, { count: 1000, delayMs: 10 })[Symbol.asyncIterator]();
      await it.next();
      c.close();
      await rejectsWith(it.next(), "canceled");
    });

    test("events arrive in order; server-to-client calls reach the handler", async () => {
      const seqs: number[] = [];
      const all = new Promise<void>((resolve) =>
        onEvent(conn, Tick, (e) => {
          seqs.push(e.seq);
          if (seqs.length == 1000) resolve();
        }),
      );
      const res = await conn.call(Subscribe, { count: 1000 });
      assert.equal(res.published, 1000);
      await Promise.race([all, sleep(5000, undefined, { ref: false })]);
      assert.deepEqual(seqs, range(1, 1000));

      assert.equal((await conn.call(AskBack, { question: "tea?" })).error, "unimplemented: method \"/e2e.v1.ClientEvents/Confirm\" is not implemented");
      const off = handle(conn, Confirm, async (req, { signal, metadata }) => {
        assert.equal(typeof metadata, "object");
        if (req.question == "secret") throw new ParleyError("permission_denied", "not telling");
        if (req.question == "bug") throw new Error("handler bug");
        if (req.question == "wait") {
          await new Promise((_, reject) => signal.addEventListener("abort", () => reject(signal.reason)));
        }
        return { answer: `yes to ${req.question}` };
      });
      assert.deepEqual(await conn.call(AskBack, { question: "tea?" }), { $typeName: "e2e.v1.AskResponse", answer: "yes to tea?", error: "" });
      assert.equal((await conn.call(AskBack, { question: "secret" })).error, "permission_denied: not telling");
      assert.equal((await conn.call(AskBack, { question: "bug" })).error, "unknown: handler bug");
      assert.match((await conn.call(AskBack, { question: "wait", timeoutMs: 100 })).error, /^deadline_exceeded/);
      off();
      assert.match((await conn.call(AskBack, { question: "tea?" })).error, /^unimplemented/);
      assert.equal(conn.state.status, "open");
    });
  });
}
