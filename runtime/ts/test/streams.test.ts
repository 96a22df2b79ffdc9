// Streams, events, server-to-client calls and keepalive against the
// scripted server, in both encodings.
import { create, fromBinary, fromJson, toBinary, toJson, type DescMessage, type MessageInitShape, type MessageShape } from "@bufbuild/protobuf";
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import WebSocket from "ws";
import { bidiStream, clientStream, Connection, handle, onEvent, ParleyError, serverStream, type ConnectionOptions } from "../src/index.js";
import type { Body, Hello } from "../src/frame.js";
import { rejectsWith, within } from "./assert.js";
import { FakeServer, expectFrame, type Peer } from "./fakeserver.js";
import { Confirm, Count, EchoStream, Sum, Tick } from "./specs.js";
import { protocols } from "./protocols.js";


/** Asserts that the client sends nothing for a while. */
async function quiet(peer: Peer, ms = 50) {
  await sleep(ms);
  assert.deepEqual(peer.buffered, [], "unexpected frames");
}

/** A message body in the peer's encoding. */
function body<D extends DescMessage>(peer: Peer, schema: D, init: MessageInitShape<D>): Body {
  const m = create(schema, init);
  return peer.json ? { json: toJson(schema, m) } : { payload: toBinary(schema, m) };
}

function decode<D extends DescMessage>(schema: D, b: Body): MessageShape<D> {
  return b.json !== undefined ? fromJson(schema, b.json) : fromBinary(schema, b.payload ?? new Uint8Array(0));
}

/** The UTF-8 bytes of an encoded text frame. */
const utf8 = (frame: Uint8Array | string) => new TextEncoder().encode(frame as string).length;

/** Reads an iterator's next value or its error, without hanging. */
async function next<T>(it: AsyncIterator<T>): Promise<IteratorResult<T>> {
  return within(it.next());
}

for (const protocol of ["proto", "json"] as const) {
  describe(`${protocol}: events and server calls`, () => {
    let server: FakeServer;
    before(async () => (server = await FakeServer.start()));
    after(() => server.close());
    const connect = async (options: ConnectionOptions = {}) => {
      const conn = new Connection(server.url, { WebSocket, protocol: protocols[protocol], ...options });
      const peer = await server.peer();
      await within(conn.ready);
      return { conn, peer };
    };

    test("events reach every handler in arrival order; unsubscribe; a throwing handler is isolated", async () => {
      const errors: unknown[] = [];
      const { conn, peer } = await connect({ onError: (e) => errors.push(e) });
      const a: number[] = [];
      const b: number[] = [];
      onEvent(conn, Tick, () => {
        throw new Error("handler bug");
      });
      const offA = onEvent(conn, Tick, (e) => a.push(e.seq));
      onEvent(conn, Tick, async (e) => {
        b.push(e.seq);
        if (e.seq == 2) throw new Error("async bug");
      });
      for (let seq = 1; seq <= 3; seq++) peer.send({ event: { method: Tick.procedure, ...body(peer, Tick.input, { seq }) } });
      peer.send({ event: { method: "/e2e.v1.ClientEvents/Nobody", ...body(peer, Tick.input, { seq: 9 }) } });
      peer.send({ ping: { nonce: "7" } });
      assert.deepEqual(await expectFrame(peer, "pong"), { nonce: "7" }, "the connection still works");
      assert.deepEqual(a, [1, 2, 3]);
      assert.deepEqual(b, [1, 2, 3]);
      await sleep(10);
      assert.deepEqual(
        errors.map((e) => (e as Error).message),
        ["handler bug", "handler bug", "handler bug", "async bug"],
      );
      offA();
      peer.send({ event: { method: Tick.procedure, ...body(peer, Tick.input, { seq: 4 }) } });
      peer.send({ ping: {} });
      await expectFrame(peer, "pong");
      assert.deepEqual(a, [1, 2, 3], "unsubscribed");
      assert.deepEqual(b, [1, 2, 3, 4]);
      assert.equal(conn.state.status, "open");
      conn.close();
    });

    test("a handler removed by another during dispatch is not called, not even for that event; one added waits for the next", async () => {
      const { conn, peer } = await connect();
      const seen: string[] = [];
      let offB = () => {};
      onEvent(conn, Tick, (e) => {
        seen.push(`a${e.seq}`);
        if (e.seq == 1) {
          offB();
          onEvent(conn, Tick, (e) => void seen.push(`c${e.seq}`));
        }
      });
      offB = onEvent(conn, Tick, (e) => void seen.push(`b${e.seq}`));
      try {
        for (let seq = 0; seq <= 2; seq++) peer.send({ event: { method: Tick.procedure, ...body(peer, Tick.input, { seq }) } });
        peer.send({ ping: {} });
        await expectFrame(peer, "pong");
        assert.deepEqual(seen, ["a0", "b0", "a1", "a2", "c2"]);
      } finally {
        conn.close();
      }
    });

    test("handle: the returned value is the reply; errors keep their code; unknown methods are unimplemented", async () => {
      const { conn, peer } = await connect();
      const seen: Record<string, string>[] = [];
      handle(conn, Confirm, async (req, ctx) => {
        seen.push(ctx.metadata);
        if (req.question == "parley") throw new ParleyError("permission_denied", "not telling");
        if (req.question == "bug") throw new TypeError("oops");
        if (req.question == "message") return create(Confirm.output, { answer: "as a message" });
        return { answer: `yes to ${req.question}` };
      });
      const ask = (id: number, question: string, method = Confirm.procedure) =>
        peer.send({ call: { id, method, ...body(peer, Confirm.input, { question }), metadata: { k: "v" } } });
      ask(2, "tea");
      let r = await expectFrame(peer, "reply");
      assert.equal(r.id, 2);
      assert.equal(decode(Confirm.output, r).answer, "yes to tea");
      assert.deepEqual(seen, [{ k: "v" }]);
      ask(4, "message");
      assert.equal(decode(Confirm.output, await expectFrame(peer, "reply")).answer, "as a message");
      ask(6, "parley");
      assert.deepEqual(await expectFrame(peer, "error"), { id: 6, code: 7, message: "not telling" });
      ask(8, "bug");
      assert.deepEqual(await expectFrame(peer, "error"), { id: 8, code: 2, message: "oops" });
      ask(10, "x", "/e2e.v1.ClientEvents/Missing");
      const e = await expectFrame(peer, "error");
      assert.equal(e.code, 12);
      assert.match(e.message!, /Missing" is not implemented/);
      ask(11, "odd");
      assert.equal((await expectFrame(peer, "error")).code, 3, "server calls have even ids");
      conn.close();
    });

    test("handle: a server call with id 0 is a protocol error: Error with id 0, then a 1002 close", async () => {
      const { conn, peer } = await connect({ reconnect: false });
      handle(conn, Confirm, () => ({ answer: "never" }));
      peer.send({ call: { id: 0, method: Confirm.procedure, ...body(peer, Confirm.input, {}) } });
      const e = await expectFrame(peer, "error");
      assert.equal(e.id, 0);
      assert.equal(e.code, 3);
      assert.equal((await within(peer.closed)).code, 1002);
      conn.close();
    });

    test("handle: Cancel aborts the signal and the reply is not sent; timeout_ms aborts with deadline_exceeded", async () => {
      const { conn, peer } = await connect();
      const reasons: unknown[] = [];
      const off = handle(conn, Confirm, (req, { signal }) => {
        return new Promise((resolve, reject) => {
          signal.addEventListener("abort", () => {
            reasons.push(signal.reason);
            reject(signal.reason);
          });
          if (req.question == "fast") resolve({ answer: "fast" });
        });
      });
      peer.send({ call: { id: 2, method: Confirm.procedure, ...body(peer, Confirm.input, { question: "slow" }) } });
      await sleep(20);
      peer.send({ cancel: { id: 2 } });
      await sleep(20);
      assert.equal((reasons[0] as ParleyError).code, "canceled");
      peer.send({ call: { id: 4, method: Confirm.procedure, ...body(peer, Confirm.input, { question: "slow" }), timeoutMs: 30 } });
      // A Cancel saying deadline_exceeded leaves the handler to its own deadline.
      peer.send({ cancel: { id: 4, code: 4 } });
      await sleep(10);
      assert.equal(reasons.length, 1);
      peer.send({ call: { id: 6, method: Confirm.procedure, ...body(peer, Confirm.input, { question: "slow" }), timeoutMs: 30 } });
      const e = await expectFrame(peer, "error");
      assert.equal(e.id, 6, "the cancelled calls 2 and 4 got no answer");
      assert.equal(e.code, 4);
      assert.equal((reasons[1] as ParleyError).code, "deadline_exceeded");
      // A deadline beyond setTimeout's range (2^31-1 ms, 24.8 days) is far
      // off, not past: the handler keeps running and nothing is sent.
      const aborted = reasons.length;
      peer.send({ call: { id: 10, method: Confirm.procedure, ...body(peer, Confirm.input, { question: "slow" }), timeoutMs: 3_000_000_000 } });
      await quiet(peer, 50);
      assert.equal(reasons.length, aborted, "a 35-day deadline aborted the handler");
      peer.send({ cancel: { id: 10 } });
      off();
      peer.send({ call: { id: 8, method: Confirm.procedure, ...body(peer, Confirm.input, { question: "fast" }) } });
      assert.equal((await expectFrame(peer, "error")).code, 12, "unregistered");
      conn.close();
    });

    test("handle: the socket closing aborts running handlers", async () => {
      const { conn, peer } = await connect({ reconnect: false });
      let reason: unknown;
      handle(conn, Confirm, (_, { signal }) => new Promise((resolve) => signal.addEventListener("abort", () => ((reason = signal.reason), resolve({})))));
      peer.send({ call: { id: 2, method: Confirm.procedure, ...body(peer, Confirm.input, {}) } });
      await sleep(20);
      peer.ws.terminate();
      await within(new Promise((r) => conn.onStateChange(r)));
      assert.equal((reason as ParleyError).code, "unavailable");
    });
  });

  describe(`${protocol}: streams`, () => {
    let server: FakeServer;
    before(async () => (server = await FakeServer.start({ welcome: { sessionId: "s", streamWindow: 2 } })));
    after(() => server.close());
    const connect = async (options: ConnectionOptions = {}) => {
      const conn = new Connection(server.url, { WebSocket, protocol: protocols[protocol], streamWindow: 4, ...options });
      const peer = await server.peer();
      assert.equal(((await peer.hello) as { hello: { streamWindow?: number } }).hello.streamWindow, options.streamWindow ?? 4);
      await within(conn.ready);
      return { conn, peer };
    };
    const item = (peer: Peer, id: number, n: number) => peer.send({ item: { id, ...body(peer, Count.output, { n }) } });

    test("server stream: the request rides in the Call; items in order; Reply ends the loop; credit every half window, which doubles while the reader waits", async () => {
      // Items alone: byte windows have tests of their own, below.
      const { conn, peer } = await connect({ streamWindowBytes: 0 });
      const stream = serverStream(conn, Count, { from: 5, count: 6 });
      const call = await expectFrame(peer, "call");
      assert.equal(call.method, Count.procedure);
      assert.equal(decode(Count.input, call).from, 5);
      assert.equal(call.timeoutMs, undefined, "no connection default deadline for streams");
      // All sent items are queued once the client answered a later ping.
      const queued = async () => {
        peer.send({ ping: { nonce: "9" } });
        await expectFrame(peer, "pong");
      };
      const got: number[] = [];
      const it = stream[Symbol.asyncIterator]();
      const first = next(it); // waits: nothing has come yet
      for (let n = 5; n < 9; n++) item(peer, call.id, n); // the whole window of 4
      got.push((await first).value!.n, (await next(it)).value!.n);
      // Two read; the reader waited for items: half the window back, and
      // the window (4) doubles.
      assert.deepEqual(await expectFrame(peer, "credit"), { id: call.id, items: 2 + 4 });
      got.push((await next(it)).value!.n, (await next(it)).value!.n);
      // Read to the last: drained, the window (8) doubles again.
      assert.deepEqual(await expectFrame(peer, "credit"), { id: call.id, items: 2 + 8 });
      for (let n = 9; n < 13; n++) item(peer, call.id, n);
      await queued();
      for (let n = 9; n < 11; n++) got.push((await next(it)).value!.n);
      assert.deepEqual(await expectFrame(peer, "credit"), { id: call.id, items: 2 }, "neither waiting nor drained: no growth");
      for (let n = 11; n < 13; n++) got.push((await next(it)).value!.n);
      assert.deepEqual(await expectFrame(peer, "credit"), { id: call.id, items: 2 + 16 }, "drained");
      item(peer, call.id, 13);
      item(peer, call.id, 14);
      peer.send({ reply: { id: call.id } });
      for (;;) {
        const r = await next(it);
        if (r.done) break;
        got.push(r.value.n);
      }
      assert.deepEqual(got, Array.from({ length: 10 }, (_, i) => i + 5));
      await quiet(peer); // no credit once the call ended
      conn.close();
    });

    test("the window grows only while, at the largest item's size, it stays within half streamBufferBytes", async () => {
      // 4 items of ~1 KiB fill half of 8 KiB: a window of 4 cannot double.
      const { conn, peer } = await connect({ streamBufferBytes: 8 << 10, streamWindowBytes: 0 });
      try {
        const stream = bidiStream(conn, EchoStream);
        await stream.send({ text: "open" });
        const call = await expectFrame(peer, "call");
        await expectFrame(peer, "item");
        const it = stream[Symbol.asyncIterator]();
        const big = "x".repeat(1000);
        for (let round = 0; round < 3; round++) {
          const first = next(it); // waits: the reader is starved
          for (let i = 0; i < 2; i++) peer.send({ item: { id: call.id, ...body(peer, EchoStream.output, { text: big }) } });
          await first;
          await next(it); // drained
          assert.deepEqual(await expectFrame(peer, "credit"), { id: call.id, items: 2 }, `round ${round}: no growth with 1 KB items`);
        }
      } finally {
        conn.close();
      }
    });

    test("server stream: an Error ends the loop with it, after the items before it", async () => {
      const { conn, peer } = await connect();
      const stream = serverStream(conn, Count, {});
      const call = await expectFrame(peer, "call");
      item(peer, call.id, 1);
      peer.send({ error: { id: call.id, code: 9, message: "out of numbers" } });
      const got: number[] = [];
      await rejectsWith(
        (async () => {
          for await (const r of stream) got.push(r.n);
        })(),
        "failed_precondition",
        /out of numbers/,
      );
      assert.deepEqual(got, [1]);
      conn.close();
    });

    test("server stream: breaking out of the loop sends Cancel", async () => {
      const { conn, peer } = await connect();
      const stream = serverStream(conn, Count, {});
      const call = await expectFrame(peer, "call");
      item(peer, call.id, 1);
      item(peer, call.id, 2);
      for await (const r of stream) if (r.n == 1) break;
      assert.deepEqual(await expectFrame(peer, "cancel"), { id: call.id });
      item(peer, call.id, 3); // Late: dropped.
      await quiet(peer);
      conn.close();
    });

    test("a server sending beyond its credit fails the stream with resource_exhausted and gets Cancel", async () => {
      const { conn, peer } = await connect();
      const stream = serverStream(conn, Count, {});
      const call = await expectFrame(peer, "call");
      for (let n = 0; n < 5; n++) item(peer, call.id, n); // window 4, nothing read
      assert.deepEqual(await expectFrame(peer, "cancel"), { id: call.id });
      await rejectsWith(
        (async () => {
          for await (const _ of stream);
        })(),
        "resource_exhausted",
        /beyond its credit/,
      );
      assert.equal(conn.state.status, "open", "only the stream fails");
      conn.close();
    });

    test("stream items received and not read are bounded in bytes (streamBufferBytes); an ended stream's stop counting", async () => {
      // An item holds its payload's bytes in binary ({n: 300} is 3), its
      // message's in JSON: two fit in the bound, the third passes it.
      const held = protocol == "proto" ? 3 : utf8(protocols.json.encodeFrame({ item: { id: 1, json: toJson(Count.output, create(Count.output, { n: 300 })) } }));
      const { conn, peer } = await connect({ streamBufferBytes: 2 * held + 2 });
      try {
        const first = serverStream(conn, Count, {});
        const call = await expectFrame(peer, "call");
        assert.equal(call.id, 1);
        for (let n = 300; n < 303; n++) item(peer, call.id, n);
        assert.deepEqual(await expectFrame(peer, "cancel"), { id: call.id });
        await rejectsWith(
          (async () => {
            for await (const _ of first);
          })(),
          "resource_exhausted",
          /streamBufferBytes/,
        );
        // The failed stream's two items no longer count: two more fit.
        const second = serverStream(conn, Count, {});
        const call2 = await expectFrame(peer, "call");
        item(peer, call2.id, 400);
        item(peer, call2.id, 401);
        peer.send({ reply: { id: call2.id } });
        const got: number[] = [];
        for await (const r of second) got.push(r.n);
        assert.deepEqual(got, [400, 401]);
        assert.equal(conn.state.status, "open", "only the stream failed");
      } finally {
        conn.close();
      }
    });

    test("client stream: no request in the Call, sends wait for credit, closeAndReceive sends StreamEnd and gets the Reply", async () => {
      const { conn, peer } = await connect();
      const sum = clientStream(conn, Sum);
      const call = await expectFrame(peer, "call");
      assert.equal(call.payload ?? call.json, undefined);
      const sent: number[] = [];
      const sends = [1, 2, 3].map((v) => sum.send({ value: BigInt(v) }).then(() => sent.push(v)));
      const items = [await expectFrame(peer, "item"), await expectFrame(peer, "item")];
      assert.deepEqual(items.map((i) => decode(Sum.input, i).value), [1n, 2n]);
      await quiet(peer); // Welcome.stream_window is 2
      assert.deepEqual(sent, [1, 2]);
      const res = sum.closeAndReceive();
      await quiet(peer, 20); // StreamEnd waits behind the third item
      peer.send({ credit: { id: call.id, items: 1 } });
      assert.equal(decode(Sum.input, await expectFrame(peer, "item")).value, 3n);
      assert.deepEqual(await expectFrame(peer, "end"), { id: call.id });
      await within(Promise.all(sends));
      await rejectsWith(sum.send({}), "failed_precondition", /after closeSend/);
      peer.send({ reply: { id: call.id, ...body(peer, Sum.output, { sum: 6n, count: 3 }) } });
      const r = await within(res);
      assert.equal(r.sum, 6n);
      assert.equal(r.count, 3);
      conn.close();
    });

    test("client stream: an Error rejects closeAndReceive and waiting sends", async () => {
      const { conn, peer } = await connect();
      const sum = clientStream(conn, Sum);
      const call = await expectFrame(peer, "call");
      const sends = [1, 2, 3].map((v) => sum.send({ value: BigInt(v) }));
      await expectFrame(peer, "item");
      await expectFrame(peer, "item");
      peer.send({ error: { id: call.id, code: 3, message: "bad value" } });
      await rejectsWith(sends[2]!, "invalid_argument", /bad value/);
      await rejectsWith(sum.closeAndReceive(), "invalid_argument", /bad value/);
      await rejectsWith(sum.send({}), "invalid_argument");
      conn.close();
    });

    test("sends nobody awaits (void call.send(m)) are no unhandled rejections when the stream fails; awaited ones still reject", async () => {
      const unhandled: unknown[] = [];
      const onUnhandled = (e: unknown) => void unhandled.push(e);
      process.on("unhandledRejection", onUnhandled);
      const { conn, peer } = await connect();
      try {
        const chat = bidiStream(conn, EchoStream);
        const call = await expectFrame(peer, "call");
        // More than the server's credit (64 items): the rest wait for it when the stream fails.
        for (let i = 0; i < 100; i++) void chat.send({ text: String(i) });
        const awaited = chat.send({ text: "awaited" });
        peer.send({ error: { id: call.id, code: 15, message: "lost" } });
        await rejectsWith(awaited, "data_loss", /lost/);
        await rejectsWith((async () => { for await (const _ of chat); })(), "data_loss", /lost/);
        void chat.send({ text: "after the end" });
        // Node reports unhandled rejections once the microtasks of a turn have run.
        await new Promise((r) => setImmediate(r));
        assert.deepEqual(unhandled, []);
      } finally {
        process.off("unhandledRejection", onUnhandled);
        conn.close();
      }
    });

    test("bidi: sends and receives interleave; closeSend half-closes; Reply ends the responses", async () => {
      const { conn, peer } = await connect();
      const chat = bidiStream(conn, EchoStream);
      const call = await expectFrame(peer, "call");
      const it = chat[Symbol.asyncIterator]();
      await chat.send({ text: "a" });
      const a = await expectFrame(peer, "item");
      peer.send({ item: { id: call.id, ...body(peer, EchoStream.output, { text: decode(EchoStream.input, a).text + "!" }) } });
      assert.equal((await next(it)).value!.text, "a!");
      void chat.send({ text: "b" });
      chat.closeSend();
      assert.equal(decode(EchoStream.input, await expectFrame(peer, "item")).text, "b");
      assert.deepEqual(await expectFrame(peer, "end"), { id: call.id });
      peer.send({ item: { id: call.id, ...body(peer, EchoStream.output, { text: "b!" }) } });
      peer.send({ reply: { id: call.id } });
      assert.equal((await next(it)).value!.text, "b!");
      assert.equal((await next(it)).done, true);
      await rejectsWith(chat.send({}), "failed_precondition", /has ended/);
      conn.close();
    });

    test("an item larger than maxMessageBytes fails its send only", async () => {
      const { conn, peer } = await connect({ maxMessageBytes: 300 });
      const chat = bidiStream(conn, EchoStream);
      const call = await expectFrame(peer, "call");
      await rejectsWith(chat.send({ text: "x".repeat(500) }), "resource_exhausted", /Echo: the item is \d+ bytes, the limit 300/);
      await chat.send({ text: "small" });
      assert.equal(decode(EchoStream.input, await expectFrame(peer, "item")).text, "small");
      peer.send({ reply: { id: call.id } });
      assert.equal((await next(chat[Symbol.asyncIterator]())).done, true);
      conn.close();
    });

    test("abort and deadline cover the whole stream", async () => {
      const { conn, peer } = await connect();
      const ac = new AbortController();
      const aborted = bidiStream(conn, EchoStream, { signal: ac.signal });
      const c1 = await expectFrame(peer, "call");
      const timed = serverStream(conn, Count, {}, { timeoutMs: 80 });
      const c2 = await expectFrame(peer, "call");
      assert.ok(c2.timeoutMs! > 0 && c2.timeoutMs! <= 80);
      const method = serverStream(conn, { ...Count, timeoutMs: 60 }, {});
      const c3 = await expectFrame(peer, "call");
      assert.ok(c3.timeoutMs! > 0 && c3.timeoutMs! <= 60, "the method's timeout applies");
      peer.send({ item: { id: c1.id, ...body(peer, EchoStream.output, { text: "dropped" }) } });
      await sleep(10);
      ac.abort();
      assert.deepEqual(await expectFrame(peer, "cancel"), { id: c1.id });
      await rejectsWith(aborted[Symbol.asyncIterator]().next(), "canceled", /aborted/);
      await rejectsWith(aborted.send({}), "canceled");
      const drain = async (s: AsyncIterable<unknown>) => {
        for await (const _ of s);
      };
      await rejectsWith(drain(method), "deadline_exceeded");
      assert.deepEqual(await expectFrame(peer, "cancel"), { id: c3.id, code: 4 });
      await rejectsWith(drain(timed), "deadline_exceeded");
      assert.deepEqual(await expectFrame(peer, "cancel"), { id: c2.id, code: 4 });
      conn.close();
    });

    test("the socket closing mid-stream ends every stream with unavailable, after the items received", async () => {
      const { conn, peer } = await connect({ reconnect: false });
      const counting = serverStream(conn, Count, {});
      const c1 = await expectFrame(peer, "call");
      const sum = clientStream(conn, Sum);
      await expectFrame(peer, "call");
      item(peer, c1.id, 1);
      await sleep(20);
      const sends = [1, 2, 3].map((v) => sum.send({ value: BigInt(v) }));
      await expectFrame(peer, "item");
      await expectFrame(peer, "item");
      peer.ws.terminate();
      const got: number[] = [];
      await rejectsWith(
        (async () => {
          for await (const r of counting) got.push(r.n);
        })(),
        "unavailable",
      );
      assert.deepEqual(got, [1]);
      await rejectsWith(sends[2]!, "unavailable");
      await rejectsWith(sum.closeAndReceive(), "unavailable");
      await rejectsWith(serverStream(conn, Count, {})[Symbol.asyncIterator]().next(), "unavailable");
    });

    test("streams beyond Welcome.max_streams wait for a free slot; unary calls do not", async () => {
      const s = await FakeServer.start({ welcome: { maxStreams: 1, maxInFlight: 1 } });
      try {
        const conn = new Connection(s.url, { WebSocket, protocol: protocols[protocol] });
        const peer = await s.peer();
        const first = serverStream(conn, Count, {});
        const second = serverStream(conn, Count, { from: 2 });
        const c1 = await expectFrame(peer, "call");
        void conn.call({ ...Count, kind: undefined, output: Count.input }, {}).catch(() => {});
        const unary = await expectFrame(peer, "call");
        assert.equal(unary.id, c1.id + 2, "the unary call went past the waiting stream");
        peer.send({ reply: { id: c1.id } });
        for await (const _ of first);
        const c2 = await expectFrame(peer, "call");
        assert.equal(decode(Count.input, c2).from, 2);
        assert.equal(c2.id, c1.id + 4);
        peer.send({ reply: { id: c2.id } });
        for await (const _ of second);
        conn.close();
      } finally {
        await s.close();
      }
    });
  });

  describe(`${protocol}: byte credit`, () => {
    // The server accepts 1000 bytes of items per stream (and 64 items).
    let server: FakeServer;
    before(async () => (server = await FakeServer.start({ welcome: { sessionId: "s", streamWindowBytes: 1000 } })));
    after(() => server.close());
    const connect = async (options: ConnectionOptions = {}, s = server) => {
      const conn = new Connection(s.url, { WebSocket, protocol: protocols[protocol], streamWindowBytes: 1000, ...options });
      const peer = await s.peer();
      await within(conn.ready);
      return { conn, peer };
    };
    // 270 bytes of UTF-8 in 120 UTF-16 units: a text message counts its bytes.
    const text = "ü€😀".repeat(30);
    /** All sent items are queued once the client answered a later ping. */
    const queued = async (peer: Peer) => {
      peer.send({ ping: { nonce: "9" } });
      await expectFrame(peer, "pong");
    };

    test("sends stop once the server's byte credit is spent; Credit.bytes resumes them while above 0", async () => {
      const { conn, peer } = await connect();
      const chat = bidiStream(conn, EchoStream);
      const call = await expectFrame(peer, "call");
      const sends = Array.from({ length: 8 }, (_, i) => chat.send({ text: text + i }));
      let spent = 0;
      let n = 0;
      // Items go while the 1000 bytes last: the last one takes them below 0.
      for (; spent < 1000; n++) spent += peer.sizes.get(await expectFrame(peer, "item"))!;
      assert.equal(n, 4);
      await quiet(peer);
      // Credit back to exactly 1 byte: one more item.
      peer.send({ credit: { id: call.id, bytes: spent - 1000 + 1 } });
      const fifth = await expectFrame(peer, "item");
      assert.equal(decode(EchoStream.input, fifth).text, text + 4);
      await quiet(peer);
      // Back to exactly 0: nothing.
      peer.send({ credit: { id: call.id, bytes: peer.sizes.get(fifth)! - 1 } });
      await quiet(peer);
      peer.send({ credit: { id: call.id, bytes: 1 << 20 } });
      for (let i = 5; i < 8; i++) assert.equal(decode(EchoStream.input, await expectFrame(peer, "item")).text, text + i);
      await within(Promise.all(sends));
      conn.close();
    });

    test("an item larger than the server's byte window goes, alone; the next waits for the credit it overdrew", async () => {
      const { conn, peer } = await connect();
      const chat = bidiStream(conn, EchoStream);
      const call = await expectFrame(peer, "call");
      const big = chat.send({ text: "x".repeat(3000) });
      const small = chat.send({ text: "y" });
      const size = peer.sizes.get(await expectFrame(peer, "item"))!;
      assert.ok(size > 3000);
      await within(big);
      await quiet(peer);
      peer.send({ credit: { id: call.id, bytes: size - 1000 } }); // back to 0
      await quiet(peer);
      peer.send({ credit: { id: call.id, bytes: 1 } });
      assert.equal(decode(EchoStream.input, await expectFrame(peer, "item")).text, "y");
      await within(small);
      conn.close();
    });

    test("a server whose Welcome sets no byte window: sends count items only, its items are not held to the client's byte window, grants still carry bytes", async () => {
      const old = await FakeServer.start({ welcome: { sessionId: "s" } });
      try {
        const { conn, peer } = await connect({}, old);
        const chat = bidiStream(conn, EchoStream);
        const call = await expectFrame(peer, "call");
        const sends = Array.from({ length: 8 }, (_, i) => chat.send({ text: text + i }));
        for (let i = 0; i < 8; i++) assert.equal(decode(EchoStream.input, await expectFrame(peer, "item")).text, text + i);
        await within(Promise.all(sends));
        // 8 items of 270 bytes, over the client's 1000, without credit.
        const sizes = Array.from({ length: 8 }, () => peer.send({ item: { id: call.id, ...body(peer, EchoStream.output, { text }) } }));
        await queued(peer);
        const it = chat[Symbol.asyncIterator]();
        await next(it);
        await next(it);
        // Half the byte window read: Credit, of both.
        assert.deepEqual(await expectFrame(peer, "credit"), { id: call.id, items: 2, bytes: sizes[0]! + sizes[1]! });
        for (let i = 2; i < 8; i++) assert.equal((await next(it)).value!.text, text);
        conn.close();
      } finally {
        await old.close();
      }
    });

    test("a server sending beyond the client's byte credit fails the stream with resource_exhausted and gets Cancel", async () => {
      const { conn, peer } = await connect();
      const chat = bidiStream(conn, EchoStream);
      const call = await expectFrame(peer, "call");
      const item = () => peer.send({ item: { id: call.id, ...body(peer, EchoStream.output, { text }) } });
      // It may start an item while any of the 1000 bytes are left.
      let sent = 0;
      while (sent < 1000) sent += item();
      await queued(peer);
      assert.deepEqual(peer.buffered, [], "no Cancel within credit");
      item();
      assert.deepEqual(await expectFrame(peer, "cancel"), { id: call.id });
      await rejectsWith(
        (async () => {
          for await (const _ of chat);
        })(),
        "resource_exhausted",
        /beyond its credit/,
      );
      assert.equal(conn.state.status, "open", "only the stream fails");
      conn.close();
    });

    test("Credit goes back every half byte window read, carrying the bytes; the byte window doubles while the reader waits, within half streamBufferBytes", async () => {
      // 2 * 1000 fits half of 4000 once: the window grows to 2000, no further.
      const { conn, peer } = await connect({ streamBufferBytes: 4000 });
      const chat = bidiStream(conn, EchoStream);
      const call = await expectFrame(peer, "call");
      const item = () => peer.send({ item: { id: call.id, ...body(peer, EchoStream.output, { text }) } });
      const it = chat[Symbol.asyncIterator]();
      const s = [item(), item(), item()];
      await queued(peer);
      await next(it);
      await next(it);
      assert.deepEqual(await expectFrame(peer, "credit"), { id: call.id, items: 2, bytes: s[0]! + s[1]! }, "neither waiting nor drained: no growth");
      await next(it);
      const waiting = next(it); // waits: the reader is starved
      s.push(item());
      await waiting;
      // The bytes a Credit grants (the item window's growth is tested above).
      const granted = async () => (await expectFrame(peer, "credit")).bytes;
      assert.equal(await granted(), s[2]! + s[3]! + 1000, "starved: the byte window doubles");
      s.push(item(), item(), item(), item(), item(), item());
      await queued(peer); // within the grown window (2000 bytes)
      for (let i = 0; i < 6; i++) await next(it);
      // A grant every 2 items (over 500 bytes); the last one drained the
      // queue, but the window stays at 2000.
      for (let i = 4; i < 10; i += 2) assert.equal(await granted(), s[i]! + s[i + 1]!);
      await quiet(peer);
      conn.close();
    });

    test("a slow reader of large items: a server keeping to the client's credit no longer fills streamBufferBytes", async () => {
      // The client's default byte window (256 KiB), a 4 MiB buffer, 20
      // items of 600 KB. A server that keeps to its credit (in bytes
      // when Hello sets a byte window) sent 64 of them before.
      const { conn, peer } = await connect({ streamWindowBytes: undefined, streamBufferBytes: 4 << 20 });
      const { hello } = (await peer.hello) as { hello: Hello };
      assert.equal(hello.streamWindowBytes, 256 << 10);
      const chat = bidiStream(conn, EchoStream);
      const call = await expectFrame(peer, "call");
      const big = body(peer, EchoStream.output, { text: "x".repeat(600_000) });
      let items = hello.streamWindow || 64;
      let bytes = hello.streamWindowBytes || Infinity;
      let sent = 0;
      let stalled!: () => void;
      const stall = new Promise<void>((r) => (stalled = r));
      let ponged!: () => void;
      const pong = new Promise<void>((r) => (ponged = r));
      const pump = () => {
        for (; sent < 20 && items > 0 && bytes > 0; items--) {
          bytes -= peer.send({ item: { id: call.id, ...big } });
          if (++sent == 20) peer.send({ reply: { id: call.id } });
        }
        stalled(); // out of credit, or done
      };
      void (async () => {
        for (;;) {
          const f = await peer.recv();
          if ("credit" in f) (items += f.credit.items ?? 0), (bytes += f.credit.bytes ?? 0), pump();
          if ("pong" in f) ponged();
        }
      })();
      pump();
      // The reader pauses until the server has sent all it may, and the
      // client has taken it in.
      await stall;
      peer.send({ ping: {} });
      await within(pong);
      assert.ok(sent < 20, `the server sent ${sent} items ahead of the reader`);
      let n = 0;
      for await (const r of chat) {
        assert.equal(r.text.length, 600_000);
        n++;
      }
      assert.equal(n, 20);
      conn.close();
    });
  });
}

describe("keepalive", () => {
  test("pings every pingIntervalMs; a server that answers keeps the connection", async () => {
    const s = await FakeServer.start({ welcome: { pingIntervalMs: 40 } });
    try {
      const conn = new Connection(s.url, { WebSocket, pongTimeoutMs: 40 });
      const peer = await s.peer();
      await within(conn.ready);
      const nonces: string[] = [];
      for (let i = 0; i < 4; i++) {
        const ping = await expectFrame(peer, "ping");
        nonces.push(ping.nonce!);
        peer.send({ pong: ping });
      }
      assert.deepEqual(nonces, ["1", "2", "3", "4"]);
      assert.equal(conn.state.status, "open");
      conn.close();
    } finally {
      await s.close();
    }
  });

  test("no frame for pingIntervalMs + pongTimeoutMs closes the connection with unavailable (reconnect off)", async () => {
    const s = await FakeServer.start({ welcome: { pingIntervalMs: 20_000 } });
    try {
      const conn = new Connection(s.url, { WebSocket, pingIntervalMs: 30, pongTimeoutMs: 50, reconnect: false });
      const peer = await s.peer();
      await within(conn.ready);
      const opened = performance.now();
      const stream = serverStream(conn, Count, {});
      await expectFrame(peer, "call");
      const closed = new Promise<number>((resolve) => conn.onStateChange((st) => st.status == "closed" && resolve(performance.now() - opened)));
      const took = await within(closed);
      assert.ok(took >= 75 && took < 200, `closed after ${took} ms, want about 80`);
      await rejectsWith(stream[Symbol.asyncIterator]().next(), "unavailable", /no frame from the server/);
      assert.equal((await within(peer.closed)).code, 1000);
    } finally {
      await s.close();
    }
  });

  test("pingIntervalMs 0 disables keepalive", async () => {
    const s = await FakeServer.start({ welcome: { pingIntervalMs: 20 } });
    try {
      const conn = new Connection(s.url, { WebSocket, pingIntervalMs: 0, pongTimeoutMs: 10 });
      const peer = await s.peer();
      await within(conn.ready);
      await quiet(peer, 80);
      assert.equal(conn.state.status, "open");
      conn.close();
    } finally {
      await s.close();
    }
  });
});
