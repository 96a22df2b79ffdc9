// A "new user" trial of the streaming API (serverStream, clientStream,
// bidiStream, and a client class shaped as protoc-gen-parley-ts generates
// them) against the real Go server (internal/e2e/cmd/e2eserver), in both
// encodings: misuse, backpressure, errors, deadlines, a dropped socket,
// the server's stream limit, message limits, empty items, and many short
// streams, each followed by checks that the connection's stream counters
// (live streams, window growth, stream buffer bytes) and its stream slots
// come back to nothing.
import { create, createFileRegistry, type MessageInitShape } from "@bufbuild/protobuf";
import { FieldDescriptorProto_Label, FieldDescriptorProto_Type, FileDescriptorProtoSchema } from "@bufbuild/protobuf/wkt";
import assert from "node:assert/strict";
import { getEventListeners, once } from "node:events";
import { after, before, describe, test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import WebSocket from "ws";
import {
  bidiStream,
  clientStream,
  Connection,
  ParleyError,
  serverStream,
  type BidiStreamCall,
  type CallOptions,
  type ClientStreamCall,
  type ConnectionOptions,
  type ConnectionState,
} from "../src/index.js";
import { internals } from "../src/connection.js";
import { rejectsWith } from "./assert.js";
import { startE2EServer } from "./e2eserver.js";
import type { CountRequestSchema, CountResponse, EchoItemSchema, SumRequestSchema, SumResponseSchema } from "./gen/e2e/v1/streams_pb.js";
import { protocols } from "./protocols.js";
import { TcpProxy } from "./proxy.js";
import { Count, EchoStream, StreamOutcome, Sum } from "./specs.js";

/** Fails instead of hanging when p takes longer than ms; keeps no timer alive. */
async function within<T>(p: Promise<T>, ms = 5000, what = "it"): Promise<T> {
  const ac = new AbortController();
  try {
    return await Promise.race([
      p,
      sleep(ms, undefined, { ref: false, signal: ac.signal }).then(() => assert.fail(`${what}: still pending after ${ms} ms`)),
    ]);
  } finally {
    ac.abort();
  }
}

function stateWhere(conn: Connection, ok: (s: ConnectionState) => boolean, ms = 5000): Promise<ConnectionState> {
  if (ok(conn.state)) return Promise.resolve(conn.state);
  return within(new Promise((resolve) => {
    const off = conn.onStateChange((s) => ok(s) && (off(), resolve(s)));
  }), ms, "state");
}

/** e2e.v1.StreamService's client, as protoc-gen-parley-ts generates one. */
class StreamServiceClient {
  readonly #connection: Connection;
  constructor(connection: Connection) {
    this.#connection = connection;
  }
  count(request: MessageInitShape<typeof CountRequestSchema>, options?: CallOptions): AsyncIterable<CountResponse> {
    return serverStream(this.#connection, Count, request, options);
  }
  sum(options?: CallOptions): ClientStreamCall<typeof SumRequestSchema, typeof SumResponseSchema> {
    return clientStream(this.#connection, Sum, options);
  }
  echo(options?: CallOptions): BidiStreamCall<typeof EchoItemSchema, typeof EchoItemSchema> {
    return bidiStream(this.#connection, EchoStream, options);
  }
}

/**
 * e2e.v1.EchoItem as an older client knows it: text alone. The server's
 * items carry token and fail_code too: fields this client does not know,
 * as after the server added them.
 */
const OldEchoItem = createFileRegistry(
  create(FileDescriptorProtoSchema, {
    name: "old/streams.proto",
    package: "e2e.v1",
    syntax: "proto3",
    messageType: [
      { name: "EchoItem", field: [{ name: "text", jsonName: "text", number: 1, type: FieldDescriptorProto_Type.STRING, label: FieldDescriptorProto_Label.OPTIONAL }] },
    ],
  }),
  () => undefined,
).getMessage("e2e.v1.EchoItem")!;

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

/** Asserts that the connection holds no stream: none live, no window growth, no buffered bytes. */
function assertNoStreams(conn: Connection) {
  const c = internals(conn);
  assert.deepEqual({ streams: c.streams, grown: c.grown, streamBuf: c.streamBuf }, { streams: 0, grown: 0, streamBuf: 0 });
}

/**
 * Asserts that n streams can be open at once on conn (no slot leaked):
 * n endless server streams each yield an item, then all are left.
 */
async function assertSlots(conn: Connection, n: number) {
  const its = range(0, n).map((i) => serverStream(conn, Count, { from: i, count: 1_000_000, delayMs: 20 })[Symbol.asyncIterator]());
  const firsts = await within(Promise.all(its.map((it) => it.next())), 10_000, `${n} streams at once`);
  assert.deepEqual(firsts.map((r) => r.value?.n), range(0, n));
  await Promise.all(its.map((it) => it.return!()));
  assertNoStreams(conn);
}

let url: string;
let stop: () => Promise<void>;
before(async () => ({ url, stop } = await startE2EServer()));
after(() => stop?.());

const unhandled: unknown[] = [];
const onUnhandled = (e: unknown) => void unhandled.push(e);
before(() => process.on("unhandledRejection", onUnhandled));
after(() => {
  process.off("unhandledRejection", onUnhandled);
  assert.deepEqual(unhandled, [], "unhandled rejections");
});

for (const protocol of ["proto", "json"] as const) {
  describe(`trial ${protocol}: streams`, () => {
    let conn: Connection;
    let client: StreamServiceClient;
    let n = 0;
    const token = () => `trial-${protocol}-${Date.now()}-${n++}`;
    const connect = (options: ConnectionOptions = {}) => new Connection(url, { WebSocket, protocol: protocols[protocol], ...options });
    before(async () => {
      conn = connect();
      client = new StreamServiceClient(conn);
      await within(conn.ready);
    });
    after(() => conn.close());

    test("bidi misuse: a second loop after a clean end yields nothing; after a break it throws canceled, sends reject canceled, the handler was cancelled", async () => {
      const done = client.echo();
      await done.send({ text: "a" });
      done.closeSend();
      assert.deepEqual((await collect(done)).items.map((r) => r.text), ["a"]);
      assert.deepEqual(await collect(done), { items: [] });
      done.closeSend();
      await rejectsWith(within(done.send({ text: "late" })), "failed_precondition", /has ended/);

      const t = token();
      const broken = client.echo();
      await broken.send({ text: "1", token: t });
      await broken.send({ text: "2" });
      for await (const r of broken) {
        assert.equal(r.text, "1");
        break;
      }
      const again = await within(collect(broken));
      assert.deepEqual(again.items, [], "unread items dropped once the caller gave up");
      assert.equal(again.error?.code, "canceled");
      await rejectsWith(within(broken.send({ text: "3" })), "canceled");
      broken.closeSend();
      assert.equal((await conn.call(StreamOutcome, { token: t })).outcome, "canceled");
      assertNoStreams(conn);
    });

    test("two loops over one bidi stream share its items: each item once, both end", async () => {
      const echo = client.echo();
      const a = collect(echo);
      const b = collect(echo);
      for (const i of range(0, 200)) void echo.send({ text: String(i) });
      echo.closeSend();
      const [ra, rb] = await within(Promise.all([a, b]));
      assert.equal(ra.error ?? rb.error, undefined);
      const all = [...ra.items, ...rb.items].map((r) => Number(r.text)).sort((x, y) => x - y);
      assert.deepEqual(all, range(0, 200));
      assertNoStreams(conn);
    });

    test("client stream misuse: closeAndReceive twice (also at once); sends after it fail; abort after completion changes nothing", async () => {
      const ac = new AbortController();
      const sum = client.sum({ signal: ac.signal });
      await sum.send({ value: 5n });
      const [r1, r2] = await within(Promise.all([sum.closeAndReceive(), sum.closeAndReceive()]));
      assert.equal(r1.sum, 5n);
      assert.equal(r2, r1);
      ac.abort();
      assert.equal((await within(sum.closeAndReceive())).sum, 5n, "an abort after the end is no error");
      await rejectsWith(within(sum.send({ value: 1n })), "failed_precondition");
      assert.equal(getEventListeners(ac.signal, "abort").length, 0);

      // closeAndReceive without a single send.
      assert.deepEqual(await within(client.sum().closeAndReceive()), { $typeName: "e2e.v1.SumResponse", sum: 0n, count: 0 });
      // A server stream aborted after its end: the loop is over, no error.
      const ac2 = new AbortController();
      const st = client.count({ count: 2 }, { signal: ac2.signal });
      assert.equal((await collect(st)).items.length, 2);
      ac2.abort();
      assert.deepEqual(await collect(st), { items: [] });
      assertNoStreams(conn);
    });

    test("backpressure: an awaiting sender stops at the server's window while nobody reads; abort rejects the send waiting for credit", async () => {
      // The client reads nothing and takes one item at a time: the
      // handler echoes the first, blocks on the second, and reads no more.
      // The server then grants nothing: the sender gets exactly its window.
      const c = connect({ streamWindow: 1 });
      try {
        await within(c.ready);
        const window = (c.state as { session: { streamWindow: number } }).session.streamWindow || 64;
        const ac = new AbortController();
        const t = token();
        const echo = bidiStream(c, EchoStream, { signal: ac.signal });
        let sent = 0;
        let reached!: () => void;
        const full = new Promise<void>((r) => (reached = r));
        const sender = (async () => {
          for (let i = 0; i < 10 * window; i++) {
            await echo.send({ text: String(i), token: i ? "" : t });
            if (++sent == window) reached();
          }
        })();
        await within(full, 5000, `${window} sends`);
        ac.abort();
        await rejectsWith(within(sender), "canceled");
        assert.equal(sent, window, "sends beyond the server's credit went out");
        await rejectsWith(within(collect(echo).then((r) => Promise.reject(r.error))), "canceled");
        assert.equal((await c.call(StreamOutcome, { token: t })).outcome, "canceled");
        assertNoStreams(c);
      } finally {
        c.close();
      }
    });

    test("10,000 sends nobody awaits: all go, in order, answered in order; and abandoned ones reject quietly", async () => {
      const N = 10_000;
      const echo = client.echo();
      const got = collect(echo);
      const sends = range(0, N).map((i) => echo.send({ text: String(i) }));
      echo.closeSend();
      const { items, error } = await within(got, 20_000);
      assert.equal(error, undefined);
      assert.equal(items.length, N);
      assert.ok(items.every((r, i) => r.text == String(i)), "out of order");
      await within(Promise.all(sends));

      const sum = client.sum();
      for (const v of range(1, N)) void sum.send({ value: BigInt(v) });
      const res = await within(sum.closeAndReceive(), 20_000);
      assert.equal(res.count, N);
      assert.equal(res.sum, BigInt((N * (N + 1)) / 2));

      // Nobody reads: most of them wait for credit when the stream is aborted.
      const ac = new AbortController();
      const stuck = client.echo({ signal: ac.signal });
      const pending = range(0, N).map((i) => stuck.send({ text: String(i) }));
      for (const i of range(0, N)) void stuck.send({ text: String(i) });
      await within(pending[0]!);
      ac.abort();
      const outcomes = await within(Promise.allSettled(pending));
      const rejected = outcomes.filter((o) => o.status == "rejected");
      assert.ok(rejected.length > N / 2, `${rejected.length} sends rejected`);
      assert.ok(rejected.every((o) => (o as PromiseRejectedResult).reason.code == "canceled"));
      // The rejected ones come after every one that went out.
      const firstRejected = outcomes.findIndex((o) => o.status == "rejected");
      assert.ok(outcomes.slice(firstRejected).every((o) => o.status == "rejected"));
      await new Promise((r) => setImmediate(r));
      assertNoStreams(conn);
    });

    test("a server error mid-stream: the items before it, then the error, stable on every later look", async () => {
      const counted = client.count({ count: 5, failCode: "resource_exhausted", failMessage: "quota" });
      const first = await collect(counted);
      assert.deepEqual(first.items.map((r) => r.n), range(0, 5));
      assert.equal(first.error?.code, "resource_exhausted");
      assert.equal(first.error?.rawMessage, "quota");
      assert.deepEqual(first.error?.details, []);
      const again = await collect(counted);
      assert.deepEqual(again.items, []);
      assert.equal(again.error, first.error);

      const echo = client.echo();
      const sends = [echo.send({ text: "a" }), echo.send({ text: "b", failCode: "already_exists" }), echo.send({ text: "c" })];
      const r = await within(collect(echo));
      assert.deepEqual(r.items.map((x) => x.text), ["a"]);
      assert.equal(r.error?.code, "already_exists");
      await within(Promise.allSettled(sends));
      await rejectsWith(echo.send({ text: "d" }), "already_exists");
      assert.equal((await within(collect(echo))).error, r.error);
      assertNoStreams(conn);
    });

    test("deadline mid-stream: bidi and client streams end deadline_exceeded, waiting sends too; the handler saw its deadline", async () => {
      const t = token();
      const echo = client.echo({ timeoutMs: 300 });
      await echo.send({ text: "x", token: t });
      const it = echo[Symbol.asyncIterator]();
      assert.equal((await within(it.next())).value?.text, "x");
      await rejectsWith(within(it.next()), "deadline_exceeded");
      await rejectsWith(echo.send({ text: "y" }), "deadline_exceeded");
      assert.equal((await conn.call(StreamOutcome, { token: t })).outcome, "deadline_exceeded");

      // A client stream whose handler waits for more: a signal that times
      // out is a deadline too, and its abort event says when it passed.
      const signal = AbortSignal.timeout(300);
      const sum = client.sum({ signal });
      await sum.send({ value: 1n });
      await within(once(signal, "abort"));
      await rejectsWith(sum.send({ value: 2n }), "deadline_exceeded");
      await rejectsWith(within(sum.closeAndReceive()), "deadline_exceeded");

      // A deadline that passes while the stream waits for a slot or the socket: from the call.
      const st = client.count({ count: 1_000_000, delayMs: 50 }, { timeoutMs: 150 });
      const { items, error } = await within(collect(st));
      assert.equal(error?.code, "deadline_exceeded");
      assert.ok(items.length <= 3, `${items.length} items`);
      assertNoStreams(conn);
    });

    test("the server's 100 streams per connection: 250 at once all complete, waiting for slots rather than failing", async () => {
      const c = connect();
      try {
        await within(c.ready);
        assert.equal((c.state as { session: { maxStreams: number } }).session.maxStreams, 100);
        const all = range(0, 250).map(async (i) => {
          const { items, error } = await collect(serverStream(c, Count, { from: i, count: 3, delayMs: 5 }));
          assert.equal(error, undefined, `stream ${i}`);
          assert.deepEqual(items.map((r) => r.n), [i, i + 1, i + 2]);
        });
        await within(Promise.all(all), 20_000);
        assertNoStreams(c);
        await assertSlots(c, 100);
      } finally {
        c.close();
      }
    });

    test("at the stream limit, a stream left (break, abort, deadline) frees its slot for the next at once", async () => {
      const c = connect();
      try {
        await within(c.ready);
        const open = range(0, 100).map((i) => serverStream(c, Count, { from: i, count: 1_000_000, delayMs: 20 })[Symbol.asyncIterator]());
        await within(Promise.all(open.map((it) => it.next())), 10_000);
        for (let k = 0; k < 60; k++) {
          // Leave one stream, three ways in turn, and open another in its place.
          const ac = new AbortController();
          const next = serverStream(c, Count, { from: 1000 + k, count: 1_000_000, delayMs: 20 }, { signal: ac.signal, timeoutMs: k % 3 == 2 ? 100 : 0 });
          const it = next[Symbol.asyncIterator]();
          const first = it.next();
          if (k % 3 == 0) await open[k]!.return!();
          else if (k % 3 == 1) {
            // An aborted stream: its signal is its own; the old one is left by break.
            await open[k]!.return!();
            ac.abort();
            await rejectsWith(within(first), "canceled");
            continue;
          } else await open[k]!.return!();
          const r = await within(first, 5000, `stream ${k}`);
          assert.equal(r.value?.n, 1000 + k);
          open[k] = it;
        }
        await Promise.all(open.map((it) => it.return!()));
        assertNoStreams(c);
        await assertSlots(c, 100);
      } finally {
        c.close();
      }
    });

    test("streams waiting for a slot: abort and deadline end them there, sends and closeAndReceive included; the rest start in order", async () => {
      const c = connect();
      try {
        await within(c.ready);
        const open = range(0, 100).map((i) => serverStream(c, Count, { from: i, count: 1_000_000, delayMs: 20 })[Symbol.asyncIterator]());
        await within(Promise.all(open.map((it) => it.next())), 10_000);
        const ac = new AbortController();
        const aborted = bidiStream(c, EchoStream, { signal: ac.signal });
        const abortedSend = aborted.send({ text: "never" });
        const timed = clientStream(c, Sum, { timeoutMs: 100 });
        void timed.send({ value: 1n });
        const timedEnd = timed.closeAndReceive();
        const waiting = clientStream(c, Sum);
        void waiting.send({ value: 9n });
        const waitingEnd = waiting.closeAndReceive();
        ac.abort();
        await rejectsWith(within(abortedSend), "canceled");
        await rejectsWith(within(collect(aborted).then((r) => Promise.reject(r.error))), "canceled");
        await rejectsWith(within(timedEnd), "deadline_exceeded");
        await open[0]!.return!();
        assert.equal((await within(waitingEnd)).sum, 9n);
        await Promise.all(open.map((it) => it.return!()));
        assertNoStreams(c);
        await assertSlots(c, 100);
      } finally {
        c.close();
      }
    });

    test("deadlines at the stream limit: 100 streams time out together and 100 new ones start", async () => {
      const c = connect();
      try {
        await within(c.ready);
        const timed = range(0, 100).map((i) => collect(serverStream(c, Count, { from: i, count: 1_000_000, delayMs: 20 }, { timeoutMs: 200 })));
        const fresh = range(0, 100).map((i) => serverStream(c, Count, { from: i, count: 2 }));
        const ends = await within(Promise.all(timed), 10_000);
        assert.ok(ends.every((e) => e.error?.code == "deadline_exceeded"));
        const got = await within(Promise.all(fresh.map(collect)), 10_000);
        for (const [i, g] of got.entries()) {
          assert.equal(g.error, undefined, `fresh stream ${i}: ${g.error?.message}`);
          assert.deepEqual(g.items.map((r) => r.n), [i, i + 1]);
        }
        assertNoStreams(c);
      } finally {
        c.close();
      }
    });

    test("message limits: an item over the server's limit fails its send only; an item at the client's own limit echoes back", async () => {
      // The client would take 8 MiB; the server's Welcome says 4 MiB.
      const big = connect({ maxMessageBytes: 8 << 20 });
      try {
        await within(big.ready);
        const echo = bidiStream(big, EchoStream);
        await rejectsWith(within(echo.send({ text: "x".repeat(5 << 20) })), "resource_exhausted", /the limit 4194304/);
        await echo.send({ text: "after" });
        echo.closeSend();
        assert.deepEqual((await within(collect(echo))).items.map((r) => r.text), ["after"]);
        assertNoStreams(big);
      } finally {
        big.close();
      }
      // The client takes 2000 bytes: the largest item it may send comes
      // back at the same size (binary), or, re-encoded by the server in
      // JSON, fails the stream with resource_exhausted if it grew.
      const small = connect({ maxMessageBytes: 2000 });
      try {
        await within(small.ready);
        const echo = bidiStream(small, EchoStream);
        let len = 1900;
        await rejectsWith(within(echo.send({ text: "y".repeat(2100) })), "resource_exhausted");
        while ((await echo.send({ text: "y".repeat(len + 1) }).then(() => true, () => false)) && len < 2100) len++;
        echo.closeSend();
        const { items, error } = await within(collect(echo));
        if (error) assert.equal(error.code, "resource_exhausted", error.message);
        else assert.deepEqual(items.map((r) => r.text.length), range(1901, len - 1900));
        assertNoStreams(small);
      } finally {
        small.close();
      }
    });

    test("empty messages as items, both ways", async () => {
      const echo = client.echo();
      const sends = range(0, 300).map(() => echo.send({}));
      echo.closeSend();
      const { items, error } = await within(collect(echo));
      assert.equal(error, undefined);
      assert.equal(items.length, 300);
      assert.ok(items.every((r) => r.text === "" && r.token === ""));
      await Promise.all(sends);

      const sum = client.sum();
      for (let i = 0; i < 300; i++) await sum.send({});
      assert.deepEqual(await within(sum.closeAndReceive()), { $typeName: "e2e.v1.SumResponse", sum: 0n, count: 300 });
      // {n: 0} is the empty message; a count of 0 is a stream of no items.
      assert.deepEqual((await collect(client.count({ count: 1 }))).items.map((r) => r.n), [0]);
      assert.deepEqual(await collect(client.count({ count: 0 })), { items: [] });
      assertNoStreams(conn);
    });

    test("an item with a field the client's schema lacks (a newer server's) is read, the field ignored, as Go does", async () => {
      const echo = bidiStream(conn, { ...EchoStream, output: OldEchoItem });
      await echo.send({ text: "a", token: "a field the old schema lacks" });
      echo.closeSend();
      const { items, error } = await within(collect(echo));
      assert.equal(error, undefined, error?.message);
      assert.deepEqual(items.map((r) => (r as unknown as { text: string }).text), ["a"]);
      assertNoStreams(conn);
    });

    if (protocol == "json") test("an error detail with a field the client's schema lacks is read too", () => {
      const detail = protocols.json.readDetail({ json: { "@type": "type.googleapis.com/e2e.v1.EchoItem", text: "a", token: "new" } });
      const err = new ParleyError("aborted", "x", [detail]);
      assert.deepEqual(err.findDetails(OldEchoItem).map((d) => (d as unknown as { text: string }).text), ["a"]);
    });

    test("large items of multi-byte text, to a reader that reads nothing until all are sent: byte credit counts UTF-8 both ways", async () => {
      // 40 items of 100,000 characters, 200-400 KB each in UTF-8; the
      // server's byte window (256 KiB) holds the sender back, the client's
      // holds the server back. A count in UTF-16 units would overrun them.
      const text = (i: number) => `${i}:` + ["é", "€", "😀"][i % 3]!.repeat(i % 3 == 2 ? 50_000 : 100_000);
      const c = connect({ streamBufferBytes: 4 << 20 });
      try {
        await within(c.ready);
        const echo = bidiStream(c, EchoStream);
        const sends = range(0, 40).map((i) => echo.send({ text: text(i) }));
        echo.closeSend();
        // Read only once the sender has stalled: the first sends went out,
        // the later wait for credit the reader gives.
        await within(sends[1]!);
        const { items, error } = await within(collect(echo), 20_000);
        assert.equal(error, undefined, error?.message);
        assert.equal(items.length, 40);
        assert.ok(items.every((r, i) => r.text == text(i)));
        await within(Promise.all(sends));
        assertNoStreams(c);
      } finally {
        c.close();
      }
    });

    test("a send that cannot be encoded rejects invalid_argument (binary; in JSON the server refuses it); a bad request fails its stream", async () => {
      const sum = client.sum();
      const bad = sum.send({ value: "not a number" as unknown as bigint });
      if (protocol == "proto") {
        await rejectsWith(within(bad), "invalid_argument", /cannot encode/);
        await sum.send({ value: 4n });
        assert.equal((await within(sum.closeAndReceive())).sum, 4n);
      } else {
        // protobuf-es's toJson writes an int64 as a string without
        // checking one given as a string: the item goes, and the server,
        // which cannot decode it, fails the stream.
        await within(bad);
        await rejectsWith(within(sum.closeAndReceive()), "invalid_argument", /invalid value for int64/);
      }
      await rejectsWith(within(collect(client.count({ count: "x" as unknown as number })).then((r) => Promise.reject(r.error))), "invalid_argument");
      assertNoStreams(conn);
    });

    test("1,000 short streams in a row, every kind and ending, one shared signal: nothing leaks", async () => {
      const shared = new AbortController();
      const opts = { signal: shared.signal };
      for (let i = 0; i < 1000; i++) {
        switch (i % 8) {
          case 0:
            assert.deepEqual((await collect(client.count({ from: i, count: 3 }, opts))).items.map((r) => r.n), [i, i + 1, i + 2]);
            break;
          case 1: {
            const s = client.sum(opts);
            await s.send({ value: BigInt(i) });
            assert.equal((await s.closeAndReceive()).sum, BigInt(i));
            break;
          }
          case 2: {
            const e = client.echo(opts);
            await e.send({ text: String(i) });
            e.closeSend();
            assert.deepEqual((await collect(e)).items.map((r) => r.text), [String(i)]);
            break;
          }
          case 3:
            for await (const _ of client.count({ count: 1_000_000 }, opts)) break;
            break;
          case 4:
            assert.equal((await collect(client.count({ count: 1, failCode: "not_found" }, opts))).error?.code, "not_found");
            break;
          case 5: {
            const ac = new AbortController();
            const e = client.echo({ signal: ac.signal });
            void e.send({ text: "x" });
            ac.abort();
            await rejectsWith(e.send({ text: "y" }), "canceled");
            break;
          }
          case 6: {
            const s = client.sum(opts);
            await s.send({ failCode: "aborted" });
            await rejectsWith(s.closeAndReceive(), "aborted");
            break;
          }
          default: {
            // Opened and never used but left: return() before any next().
            const it = client.count({ count: 1_000_000 }, opts)[Symbol.asyncIterator]();
            await it.return!();
          }
        }
      }
      assert.equal(getEventListeners(shared.signal, "abort").length, 0, "listeners left on the shared signal");
      assertNoStreams(conn);
      await assertSlots(conn, 100);
    });
  });

  describe(`trial ${protocol}: a dropped socket mid-stream`, () => {
    let proxy: TcpProxy;
    before(async () => (proxy = await TcpProxy.start(Number(new URL(url).port))));
    after(() => proxy?.close());

    test("open streams of every kind fail unavailable after the items received; new ones work on the new socket; nothing leaks", async () => {
      const conn = new Connection(proxy.url(url), { WebSocket, protocol: protocols[protocol], reconnect: { initialDelayMs: 10, maxDelayMs: 50 } });
      try {
        await within(conn.ready);
        const client = new StreamServiceClient(conn);
        const counting = client.count({ count: 1_000_000, delayMs: 10 })[Symbol.asyncIterator]();
        assert.equal((await within(counting.next())).value?.n, 0);
        const sum = client.sum();
        await sum.send({ value: 1n });
        const echo = client.echo();
        await echo.send({ text: "before" });
        const echoed = echo[Symbol.asyncIterator]();
        assert.equal((await within(echoed.next())).value?.text, "before");
        // Nobody reads the echo: with enough sends some wait for credit at the drop.
        const waiting = range(0, 2000).map((i) => echo.send({ text: String(i) }));
        const waitingSum = sum.closeAndReceive();
        const reconnected = stateWhere(conn, (s) => s.status == "open" && s.reconnected);
        proxy.dropAll();
        await rejectsWith(within(drain(counting)), "unavailable");
        await rejectsWith(within(waitingSum), "unavailable");
        const outcomes = await within(Promise.allSettled(waiting));
        assert.ok(outcomes.some((o) => o.status == "rejected"));
        for (const o of outcomes) if (o.status == "rejected") assert.equal(o.reason.code, "unavailable");
        // The echoes that arrived before the drop are still read, then the error.
        const rest = await within(collect({ [Symbol.asyncIterator]: () => echoed }));
        assert.equal(rest.error?.code, "unavailable");
        assert.ok(rest.items.every((r, i) => r.text == String(i)));
        assertNoStreams(conn);

        await reconnected;
        assert.deepEqual((await within(collect(client.count({ count: 100 })))).items.map((r) => r.n), range(0, 100));
        const s2 = client.sum();
        for (const v of range(1, 100)) await s2.send({ value: BigInt(v) });
        assert.equal((await within(s2.closeAndReceive())).sum, 5050n);
        const e2 = client.echo();
        void e2.send({ text: "after" });
        e2.closeSend();
        assert.deepEqual((await within(collect(e2))).items.map((r) => r.text), ["after"]);
        assertNoStreams(conn);
        await assertSlots(conn, 100);
      } finally {
        conn.close();
      }
    });

    test("streams opened while the socket is down wait for the new one (within their deadline)", async () => {
      const conn = new Connection(proxy.url(url), { WebSocket, protocol: protocols[protocol], reconnect: { initialDelayMs: 50, maxDelayMs: 100 } });
      try {
        await within(conn.ready);
        const down = stateWhere(conn, (s) => s.status == "reconnecting");
        proxy.dropAll();
        await down;
        const client = new StreamServiceClient(conn);
        const counted = collect(client.count({ count: 10 }, { timeoutMs: 5000 }));
        const sum = client.sum();
        void sum.send({ value: 7n });
        const echo = client.echo();
        void echo.send({ text: "queued" });
        echo.closeSend();
        assert.deepEqual((await within(counted)).items.map((r) => r.n), range(0, 10));
        assert.equal((await within(sum.closeAndReceive())).sum, 7n);
        assert.deepEqual((await within(collect(echo))).items.map((r) => r.text), ["queued"]);
        assertNoStreams(conn);
      } finally {
        conn.close();
      }
    });
  });
}

async function drain(it: AsyncIterator<unknown>) {
  for (let r = await it.next(); !r.done; r = await it.next());
}

describe("trial: a server shutting down with streams open", () => {
  test("GoAway: streams in flight go on to their end on the old socket, or fail unavailable when Shutdown's deadline closes it; new ones wait for a new socket", async () => {
    const server = await startE2EServer();
    const conns = (["proto", "json"] as const).map((protocol) => new Connection(server.url, { WebSocket, protocol: protocols[protocol], reconnect: { initialDelayMs: 50, maxDelayMs: 200 } }));
    try {
      await within(Promise.all(conns.map((c) => c.ready)));
      let opened!: () => void;
      const allOpen = new Promise<void>((r) => (opened = r));
      let n = 0;
      const runs = conns.map(async (conn) => {
        const finite = collect(serverStream(conn, Count, { count: 40, delayMs: 25 }));
        const endless = serverStream(conn, Count, { count: 1_000_000, delayMs: 25 })[Symbol.asyncIterator]();
        assert.equal((await within(endless.next())).value?.n, 0);
        const echo = bidiStream(conn, EchoStream);
        await echo.send({ text: "before" });
        const echoed = echo[Symbol.asyncIterator]();
        assert.equal((await within(echoed.next())).value?.text, "before");
        if (++n == conns.length) opened();
        await stateWhere(conn, (s) => s.status == "reconnecting", 5000);
        // After GoAway: the bidi stream on the old socket still works.
        await echo.send({ text: "after goaway" });
        assert.equal((await within(echoed.next())).value?.text, "after goaway");
        echo.closeSend();
        assert.equal((await within(echoed.next())).done, true);
        const late = collect(serverStream(conn, Count, { count: 1 }, { timeoutMs: 300 }));
        const { items, error } = await within(finite, 5000);
        assert.equal(error, undefined, error?.message);
        assert.deepEqual(items.map((r) => r.n), range(0, 40));
        const l = await within(late);
        assert.equal(l.error?.code, "deadline_exceeded", "no new socket: the server refuses upgrades while it shuts down");
        await rejectsWith(within(drain(endless), 10_000), "unavailable");
        assertNoStreams(conn);
      });
      // (A stream whose Call reaches the server after its GoAway is
      // refused, unavailable with not_run: a server stream goes again on
      // the new socket, like a unary call; a client or bidi stream fails,
      // its items sent with the socket. faults.test.ts scripts both.)
      await within(allOpen);
      const stopped = server.stop(); // closes its stdin: Shutdown with a 5 s deadline
      await within(Promise.all(runs), 15_000);
      await stopped;
    } finally {
      for (const c of conns) c.close();
    }
  });
});
