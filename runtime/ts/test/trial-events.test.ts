// A "new user" trial of the TS client's server-push and connection
// lifecycle side against the real Go server (internal/e2e/cmd/e2eserver
// with -auth), in both encodings: events to a connection, a user's
// devices, a room and everyone, in publish order and in bursts; handlers
// that throw, unsubscribe or are missing; undecodable events; the states a
// connection goes through (drops, resumes, close() at every stage,
// listeners that throw or close); token functions; events and calls across
// a drop; a server refusing auth; and misuse.
import { create, createFileRegistry, type MessageInitShape } from "@bufbuild/protobuf";
import { EmptySchema, FieldDescriptorProto_Label, FieldDescriptorProto_Type, FileDescriptorProtoSchema } from "@bufbuild/protobuf/wkt";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import net from "node:net";
import { after, afterEach, before, describe, test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { fileURLToPath } from "node:url";
import WebSocket from "ws";
import { Connection, onEvent, ParleyError, type ConnectionOptions, type ConnectionState, type MethodSpec } from "../src/index.js";
import { rejectsWith } from "./assert.js";
import { startE2EServer } from "./e2eserver.js";
import {
  JoinRoomRequestSchema,
  NoteEventSchema,
  PublishRequestSchema,
  PublishResponseSchema,
  WhoamiResponseSchema,
} from "./gen/e2e/v1/events_pb.js";
import { protocols } from "./protocols.js";
import { TcpProxy } from "./proxy.js";
import { Echo, Sleep, Subscribe, Tick } from "./specs.js";

// e2e.v1.EventService and Notes (events.proto), as protoc-gen-parley-ts generates them.
const Join = { procedure: "/e2e.v1.EventService/Join", input: JoinRoomRequestSchema, output: EmptySchema } satisfies MethodSpec;
const Publish = { procedure: "/e2e.v1.EventService/Publish", input: PublishRequestSchema, output: PublishResponseSchema } satisfies MethodSpec;
const Whoami = { procedure: "/e2e.v1.EventService/Whoami", input: EmptySchema, output: WhoamiResponseSchema } satisfies MethodSpec;
const Note = { procedure: "/e2e.v1.Notes/Note", input: NoteEventSchema, output: EmptySchema } satisfies MethodSpec;

/**
 * Notes.Note as a client whose schema disagrees with the server's: seq is
 * a string here, an int32 there, so no Note the server sends decodes
 * (binary: a varint read as a length; JSON: a number for a string).
 */
const BadNote = {
  ...Note,
  input: createFileRegistry(
    create(FileDescriptorProtoSchema, {
      name: "bad/events.proto",
      package: "e2e.v1",
      syntax: "proto3",
      messageType: [
        {
          name: "NoteEvent",
          field: [
            { name: "tag", jsonName: "tag", number: 1, type: FieldDescriptorProto_Type.STRING, label: FieldDescriptorProto_Label.OPTIONAL },
            { name: "seq", jsonName: "seq", number: 2, type: FieldDescriptorProto_Type.STRING, label: FieldDescriptorProto_Label.OPTIONAL },
          ],
        },
      ],
    }),
    () => undefined,
  ).getMessage("e2e.v1.NoteEvent")!,
} satisfies MethodSpec;

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
  return within(
    new Promise((resolve) => {
      const off = conn.onStateChange((s) => ok(s) && (off(), resolve(s)));
    }),
    ms,
    "state",
  );
}

/** What a connection's Note handler saw, as "tag:seq", with a way to wait for more. */
class Notes {
  readonly got: string[] = [];
  #waiters: (() => void)[] = [];
  readonly off: () => void;
  constructor(conn: Connection) {
    this.off = onEvent(conn, Note, (ev) => {
      this.got.push(`${ev.tag}:${ev.seq}`);
      this.#waiters.forEach((w) => w());
    });
  }
  /** Those with this tag. */
  tagged(tag: string): string[] {
    return this.got.filter((g) => g.startsWith(tag + ":"));
  }
  /** Resolves once n notes with this tag arrived. */
  until(tag: string, n: number, ms = 5000): Promise<void> {
    return within(
      new Promise<void>((resolve) => {
        const check = () => this.tagged(tag).length >= n && resolve();
        this.#waiters.push(check);
        check();
      }),
      ms,
      `${n} notes ${tag} (have ${this.tagged(tag).length})`,
    );
  }
}

const seqs = (tag: string, n: number, from = 1) => Array.from({ length: n }, (_, i) => `${tag}:${from + i}`);

/**
 * Proves that every event published to conn before now has arrived: a
 * connection gets its events in publish order, so once a note published
 * to it alone after them arrives, they did too.
 */
async function barrier(conn: Connection, notes: Notes) {
  const tag = `barrier-${Math.random()}`;
  await conn.call(Publish, { target: "conn", tag, count: 1 });
  await notes.until(tag, 1);
}

let url: string;
let stopServer: () => Promise<void>;
let proxy: TcpProxy;
before(async () => {
  ({ url, stop: stopServer } = await startE2EServer(["-auth"]));
  proxy = await TcpProxy.start(Number(new URL(url).port));
});
after(async () => {
  await proxy?.close();
  await stopServer?.();
});

const unhandled: unknown[] = [];
const onUnhandled = (e: unknown) => void unhandled.push(e);
before(() => process.on("unhandledRejection", onUnhandled));
after(() => {
  process.off("unhandledRejection", onUnhandled);
  assert.deepEqual(unhandled, [], "unhandled rejections");
});

/** Reconnects at once: tests wait on states, not on backoff. */
const fast = { initialDelayMs: 0 };

for (const protocol of ["proto", "json"] as const) {
  describe(`trial ${protocol}: events`, () => {
    let n = 0;
    const unique = (what: string) => `${what}-${protocol}-${process.pid}-${n++}`;
    const conns: Connection[] = [];
    /** A connection to the server, or through a proxy, or to another URL. */
    const connect = (options: ConnectionOptions = {}, to?: TcpProxy | string) => {
      const c = new Connection(to instanceof TcpProxy ? to.url(url) : (to ?? url), { WebSocket, protocol: protocols[protocol], onError: (e) => assert.fail(`onError: ${String(e)}`), ...options });
      conns.push(c);
      return c;
    };
    // Each test's connections end with it: a later test's dropAll must not make them redial.
    afterEach(() => conns.splice(0).forEach((c) => c.close()));

    test("events to this connection, the user's devices, a room, everyone, and except the sender reach exactly their targets", async () => {
      const ada = unique("ada");
      const [phone, laptop, bob] = [connect({ metadata: { user: ada } }), connect({ metadata: { user: ada } }), connect({ metadata: { user: unique("bob") } })];
      await within(Promise.all([phone.ready, laptop.ready, bob.ready]));
      const [np, nl, nb] = [new Notes(phone), new Notes(laptop), new Notes(bob)];
      const room = unique("room");
      await Promise.all([phone.call(Join, { room }), bob.call(Join, { room })]);

      const publish = async (req: MessageInitShape<typeof PublishRequestSchema>) => assert.equal((await phone.call(Publish, { count: 2, ...req })).published, 2);
      await publish({ target: "conn", tag: "conn" });
      await publish({ target: "user", tag: "user" });
      await publish({ target: "user", tag: "bob", user: (await bob.call(Whoami, {})).user });
      await publish({ target: "room", tag: "room", room });
      await publish({ target: "room", tag: "room-but-me", room, exceptSelf: true });
      await publish({ target: "all", tag: "all" });
      await publish({ target: "user", tag: "user-but-me", exceptSelf: true });
      await Promise.all([barrier(phone, np), barrier(laptop, nl), barrier(bob, nb)]);

      const mine = (notes: Notes) => notes.got.filter((g) => !g.startsWith("barrier"));
      const two = (...tags: string[]) => tags.flatMap((t) => seqs(t, 2));
      assert.deepEqual(mine(np), two("conn", "user", "room", "all"));
      assert.deepEqual(mine(nl), two("user", "all", "user-but-me"));
      assert.deepEqual(mine(nb), two("bob", "room", "room-but-me", "all"));
    });

    test("a burst of 2000 events, and events to several targets mixed, arrive in publish order", async () => {
      const conn = connect({ metadata: { user: unique("burst") } });
      const notes = new Notes(conn);
      const room = unique("room");
      await conn.call(Join, { room });
      const sent = [
        conn.call(Publish, { target: "conn", tag: "a", count: 2000 }),
        conn.call(Publish, { target: "room", room, tag: "b", count: 1 }),
        conn.call(Publish, { target: "user", tag: "c", count: 1 }),
      ];
      await within(Promise.all(sent));
      await notes.until("a", 2000);
      assert.deepEqual(notes.tagged("a"), seqs("a", 2000));
      // Sequential publishes to different targets keep their order.
      for (const [i, target] of (["room", "user", "conn", "room", "all", "conn"] as const).entries()) {
        await conn.call(Publish, { target, room, tag: "mix", count: 1 + i });
      }
      await notes.until("mix", 21);
      assert.deepEqual(
        notes.tagged("mix"),
        [1, 2, 3, 4, 5, 6].flatMap((k) => seqs("mix", k)),
      );
    });

    test("handlers: one throws, one rejects (onError gets both), two for one event run in order, one unsubscribes another mid-event, one added mid-event waits", async () => {
      const errors: unknown[] = [];
      const conn = connect({ onError: (e) => errors.push(e) });
      const calls: string[] = [];
      const thrown = new Error("handler threw");
      const rejected = new Error("handler rejected");
      let offC: () => void = () => {};
      onEvent(conn, Note, (ev) => {
        calls.push(`a${ev.seq}`);
        if (ev.seq == 2) throw thrown;
      });
      onEvent(conn, Note, async (ev) => {
        calls.push(`b${ev.seq}`);
        if (ev.seq == 3) throw rejected;
        if (ev.seq == 1) onEvent(conn, Note, (ev) => void calls.push(`d${ev.seq}`)); // from the next event on
        if (ev.seq == 2) offC(); // c is not called for this one
      });
      offC = onEvent(conn, Note, (ev) => void calls.push(`c${ev.seq}`));
      const notes = new Notes(conn);
      await conn.call(Publish, { target: "conn", tag: "h", count: 4 });
      await notes.until("h", 4);
      assert.deepEqual(calls, ["a1", "b1", "c1", "a2", "b2", "d2", "a3", "b3", "d3", "a4", "b4", "d4"]);
      // The rejection arrives a microtask later; it came before the last event was handled.
      assert.deepEqual(errors, [thrown, rejected]);
      assert.equal((await conn.call(Echo, { text: "still" })).text, "still");
    });

    test("an event nobody handles is dropped; a handler added later gets only later events; unsubscribing twice is harmless", async () => {
      const conn = connect();
      const ticks: number[] = [];
      const offTick = onEvent(conn, Tick, (t) => void ticks.push(t.seq)); // a handler, but of another event
      await conn.call(Publish, { target: "conn", tag: "early", count: 3 });
      await conn.call(Subscribe, { count: 1 }); // a Tick after the Notes: they came first
      const notes = new Notes(conn);
      await barrier(conn, notes);
      assert.deepEqual(notes.got.filter((g) => !g.startsWith("barrier")), []);
      assert.deepEqual(ticks, [1]);
      offTick();
      offTick();
      await conn.call(Subscribe, { count: 1 });
      await barrier(conn, notes);
      assert.deepEqual(ticks, [1]);
    });

    test("an event whose payload does not decode goes to onError, once, naming its method; the other handlers and events go on", async () => {
      const errors: unknown[] = [];
      const conn = connect({ onError: (e) => errors.push(e) });
      const bad: unknown[] = [];
      onEvent(conn, BadNote, (ev) => void bad.push(ev));
      onEvent(conn, BadNote, (ev) => void bad.push(ev)); // a second handler: still one report per event
      const notes = new Notes(conn);
      await conn.call(Publish, { target: "conn", tag: "u", count: 2 });
      await notes.until("u", 2);
      assert.deepEqual(notes.got, seqs("u", 2));
      assert.deepEqual(bad, []);
      assert.equal(errors.length, 2, errors.map(String).join("\n"));
      for (const e of errors) {
        assert.ok(e instanceof ParleyError, `not a ParleyError: ${String(e)}`);
        assert.equal(e.code, "internal");
        assert.match(e.message, /\/e2e\.v1\.Notes\/Note: undecodable event/);
      }
    });

    test("onEvent with a call method's spec never fires and harms nothing; an AbortSignal already aborted fails the call at once", async () => {
      const conn = connect();
      const seen: unknown[] = [];
      const off = onEvent(conn, Echo, (x) => void seen.push(x));
      const notes = new Notes(conn);
      assert.equal((await conn.call(Echo, { text: "x" })).text, "x");
      await barrier(conn, notes);
      assert.deepEqual(seen, []);
      off();

      await rejectsWith(within(conn.call(Echo, { text: "x" }, { signal: AbortSignal.abort() }), 100), "canceled");
      await rejectsWith(within(conn.call(Echo, { text: "x" }, { signal: AbortSignal.abort(new DOMException("t", "TimeoutError")) }), 100), "deadline_exceeded");
      // 100 KiB of call metadata: over the server's 64 KiB, that call fails, the socket stays.
      await rejectsWith(within(conn.call(Echo, { text: "x" }, { metadata: { big: "m".repeat(100 << 10) } })), "resource_exhausted");
      assert.equal((await conn.call(Echo, { text: "y" })).text, "y");
    });

    test("Hello metadata too large: the server refuses it, ready rejects with resource_exhausted, nothing retried", async () => {
      const before = proxy.accepted;
      const conn = connect({ metadata: { big: "m".repeat(100 << 10) } }, proxy);
      const e = await rejectsWith(within(conn.ready), "resource_exhausted", /metadata/);
      assert.equal(conn.state.status, "closed");
      assert.equal(conn.state.status == "closed" && conn.state.error, e);
      assert.equal(proxy.accepted - before, 1);
    });

    test("states through open → drop → reconnecting → open (resumed) → close(); close() twice; calls after close fail canceled", async () => {
      const conn = connect({ reconnect: fast }, proxy);
      await within(conn.ready);
      const first = conn.state;
      assert.ok(first.status == "open" && !first.resumed && !first.reconnected);
      const states: ConnectionState[] = [];
      conn.onStateChange((s) => states.push(s));
      proxy.dropAll();
      await stateWhere(conn, (s) => s.status == "reconnecting");
      const back = await stateWhere(conn, (s) => s.status == "open");
      conn.close();
      conn.close();
      assert.deepEqual(
        states.map((s) => s.status),
        ["reconnecting", "open", "closed"],
      );
      const [r, o, c] = states;
      assert.ok(r?.status == "reconnecting" && r.attempt == 1 && r.error.code == "unavailable", JSON.stringify(r));
      assert.ok(o?.status == "open" && o.resumed && o.reconnected && o == back);
      assert.equal(o.session.sessionId, first.session.sessionId);
      assert.ok(c?.status == "closed" && c.error.code == "canceled");
      await rejectsWith(within(conn.call(Echo, {}), 100), "canceled");
    });

    test("close() while connecting: ready and waiting calls fail canceled, one state change", async () => {
      const conn = connect();
      const states: string[] = [];
      conn.onStateChange((s) => void states.push(s.status));
      const waiting = conn.call(Echo, { text: "x" });
      conn.close();
      await rejectsWith(within(conn.ready, 100), "canceled");
      await rejectsWith(within(waiting, 100), "canceled");
      assert.deepEqual(states, ["closed"]);
    });

    test("close() while reconnecting: waiting calls fail canceled, no dial follows", async () => {
      const conn = connect({ reconnect: { initialDelayMs: 60_000, maxDelayMs: 60_000, random: () => 1 } }, proxy);
      await within(conn.ready);
      proxy.dropAll();
      const r = await stateWhere(conn, (s) => s.status == "reconnecting");
      assert.ok(r.status == "reconnecting" && r.delayMs == 60_000, JSON.stringify(r));
      const waiting = conn.call(Echo, { text: "x" });
      const accepted = proxy.accepted;
      conn.close();
      await rejectsWith(within(waiting, 100), "canceled");
      assert.equal(conn.state.status, "closed");
      assert.equal(proxy.accepted, accepted);
    });


    test("close() while a redial hangs in its upgrade: waiting calls fail canceled, the connection is closed", async () => {
      const conn = connect({ reconnect: fast }, proxy);
      await within(conn.ready);
      proxy.hold(true);
      try {
        const dialed = proxy.accepting();
        proxy.dropAll();
        await within(dialed, 5000, "the redial");
        assert.equal(conn.state.status, "reconnecting");
        const waiting = conn.call(Echo, { text: "x" });
        conn.close();
        await rejectsWith(within(waiting, 100), "canceled");
        assert.equal(conn.state.status, "closed");
      } finally {
        proxy.hold(false);
      }
    });

    test("ready rejects when the first socket never opens (nothing listening; no upgrade answer within defaultTimeoutMs); it is not retried", async () => {
      const spare = net.createServer();
      await new Promise<void>((resolve) => spare.listen(0, "127.0.0.1", resolve));
      const port = (spare.address() as net.AddressInfo).port;
      await new Promise((resolve) => spare.close(resolve));
      const refused = connect({ reconnect: fast }, `ws://127.0.0.1:${port}/parley`);
      const waiting = refused.call(Echo, {});
      const e = await rejectsWith(within(refused.ready), "unavailable", /connection closed/);
      assert.equal(await rejectsWith(within(waiting, 100), "unavailable"), e);
      assert.ok(refused.state.status == "closed" && refused.state.error == e);

      let dials = 0;
      const mute = net.createServer((s) => void (dials++, s.on("error", () => {})));
      await new Promise<void>((resolve) => mute.listen(0, "127.0.0.1", resolve));
      try {
        const states: string[] = [];
        const conn = connect({ reconnect: fast, defaultTimeoutMs: 200 }, `ws://127.0.0.1:${(mute.address() as net.AddressInfo).port}/parley`);
        conn.onStateChange((s) => void states.push(s.status));
        const call = conn.call(Echo, {}, { timeoutMs: 5000 });
        await rejectsWith(within(conn.ready), "unavailable", /no welcome from the server within 200 ms/);
        await rejectsWith(within(call, 100), "unavailable");
        assert.deepEqual(states, ["closed"]);
        assert.equal(dials, 1);
      } finally {
        mute.close();
      }
    });

    test("listeners: one that throws goes to onError and the others still get every state; one that calls close() on reconnecting ends it, later listeners get closed only, no redial", async () => {
      const errors: unknown[] = [];
      const conn = connect({ reconnect: fast, onError: (e) => errors.push(e) }, proxy);
      await within(conn.ready);
      const boom = new Error("listener bug");
      const a: string[] = [], b: string[] = [], c: string[] = [];
      conn.onStateChange((s) => {
        a.push(s.status);
        throw boom;
      });
      conn.onStateChange((s) => {
        b.push(s.status);
        if (s.status == "reconnecting") conn.close();
      });
      conn.onStateChange((s) => void c.push(s.status));
      const accepted = proxy.accepted;
      proxy.dropAll();
      await stateWhere(conn, (s) => s.status == "closed");
      assert.deepEqual({ a, b, c }, { a: ["reconnecting", "closed"], b: ["reconnecting", "closed"], c: ["closed"] });
      assert.deepEqual(errors, [boom, boom]);
      // The redial would have been due at once (delay 0): a timer set now runs after it.
      await new Promise((resolve) => setTimeout(resolve, 1));
      assert.equal(proxy.accepted, accepted);

      // close() from the first open: the connection ends there.
      const early = connect();
      early.onStateChange((s) => s.status == "open" && early.close());
      await rejectsWith(within(early.ready), "canceled");
      assert.equal(early.state.status, "closed");
    });

    test("a slow token function: calls made meanwhile wait; the server sees the token and the Hello metadata", async () => {
      const user = unique("slow");
      let release!: (t: string) => void;
      let called!: () => void;
      const asked = new Promise<void>((resolve) => (called = resolve));
      const conn = connect({
        metadata: { user, device: "phone" },
        token: () => {
          called();
          return new Promise<string>((resolve) => (release = resolve));
        },
      });
      const early = conn.call(Whoami, {});
      await within(asked);
      assert.equal(conn.state.status, "connecting");
      release("tok-1");
      const who = await within(early);
      assert.equal(who.user, user);
      assert.deepEqual({ ...who.metadata }, { user, device: "phone", authorization: "Bearer tok-1" });
    });

    test("a resumed session keeps the principal its first socket authenticated (as WithResume documents), though the hook saw the fresh token", async () => {
      let dials = 0;
      const conn = connect({ reconnect: fast, metadata: { user: unique("fresh") }, token: () => `tok-${++dials}` }, proxy);
      assert.equal((await within(conn.call(Whoami, {}))).metadata["authorization"], "Bearer tok-1");
      proxy.dropAll();
      await stateWhere(conn, (s) => s.status == "reconnecting");
      const back = await stateWhere(conn, (s) => s.status == "open");
      assert.ok(back.status == "open" && back.resumed);
      assert.equal(dials, 2);
      assert.equal((await within(conn.call(Whoami, {}))).metadata["authorization"], "Bearer tok-1");
    });

    test("a token function that never returns: ready rejects at defaultTimeoutMs, saying so", async () => {
      const conn = connect({ defaultTimeoutMs: 100, token: () => new Promise<string>(() => {}) });
      await rejectsWith(within(conn.ready), "unavailable", /no welcome from the server within 100 ms; the token function had not returned/);
    });

    test("a token function that throws on a reconnect closes the connection with unauthenticated, once: no more dials", async () => {
      let dials = 0;
      const conn = connect({ reconnect: fast, token: () => (++dials > 1 ? Promise.reject(new Error("token store unreachable")) : "t1") }, proxy);
      await within(conn.ready);
      const states: string[] = [];
      conn.onStateChange((s) => void states.push(s.status));
      const accepted = proxy.accepted;
      proxy.dropAll();
      const closed = await stateWhere(conn, (s) => s.status == "closed");
      assert.ok(closed.status == "closed" && closed.error.code == "unauthenticated", JSON.stringify(closed));
      assert.match(closed.error.message, /token store unreachable/);
      assert.deepEqual(states, ["reconnecting", "closed"]);
      assert.equal(dials, 2);
      assert.equal(proxy.accepted, accepted + 1);
      await rejectsWith(within(conn.call(Echo, {}), 100), "unauthenticated");
    });

    test("a server refusing auth: unauthenticated with the server's message, on the first socket and on a reconnect, never retried", async () => {
      const before = proxy.accepted;
      const denied = connect({ reconnect: fast, token: "deny-1" }, proxy);
      const waiting = denied.call(Echo, {});
      await rejectsWith(within(denied.ready), "unauthenticated", /e2e: token "deny-1" is refused/);
      await rejectsWith(within(waiting, 100), "unauthenticated", /deny-1/);
      assert.equal(proxy.accepted, before + 1);

      let dials = 0;
      const conn = connect({ reconnect: fast, token: () => (++dials == 1 ? "ok" : `deny-${dials}`) }, proxy);
      await within(conn.ready);
      const accepted = proxy.accepted;
      proxy.dropAll();
      const closed = await stateWhere(conn, (s) => s.status == "closed");
      assert.ok(closed.status == "closed" && closed.error.code == "unauthenticated");
      assert.match(closed.error.message, /e2e: token "deny-2" is refused/);
      assert.equal(dials, 2);
      assert.equal(proxy.accepted, accepted + 1);
    });

    test("events published while the client is disconnected arrive after it resumes, in order, exactly once; calls made meanwhile wait and succeed, or fail at their deadline", async () => {
      const user = unique("away");
      const room = unique("room");
      const conn = connect({ metadata: { user }, reconnect: fast }, proxy);
      const other = connect({ metadata: { user: unique("other") } });
      const notes = new Notes(conn);
      await within(conn.call(Join, { room }));
      await within(other.call(Publish, { target: "room", room, tag: "r1", count: 20 }));
      proxy.hold(true);
      try {
        const dialed = proxy.accepting();
        proxy.dropAll();
        await within(dialed, 5000, "the redial");
        const waited = conn.call(Echo, { text: "waited" }, { timeoutMs: 5000 });
        const short = conn.call(Echo, { text: "short" }, { timeoutMs: 100 });
        const sleepy = conn.call(Sleep, { ms: 1 }, { timeoutMs: 5000 });
        await within(other.call(Publish, { target: "room", room, tag: "r2", count: 30 }));
        await within(other.call(Publish, { target: "user", user, tag: "u", count: 10 }));
        await rejectsWith(within(short), "deadline_exceeded");
        assert.equal(conn.state.status, "reconnecting");
        proxy.hold(false);
        const back = await stateWhere(conn, (s) => s.status == "open");
        assert.ok(back.status == "open" && back.resumed && back.reconnected);
        assert.equal((await within(waited)).text, "waited");
        // The deadline the handler saw is what remained when the call went
        // out: it waited for the socket longer than the short call's 100 ms.
        const { deadlineMs } = await within(sleepy);
        assert.ok(deadlineMs > 0n && deadlineMs < 4900n, `the handler's deadline: ${deadlineMs} ms`);
      } finally {
        proxy.hold(false);
      }
      await within(other.call(Publish, { target: "room", room, tag: "r3", count: 5 }));
      await notes.until("r3", 5);
      assert.deepEqual(notes.got, [...seqs("r1", 20), ...seqs("r2", 30), ...seqs("u", 10), ...seqs("r3", 5)]);
    });

    test("a session that cannot resume (more events missed than the server keeps): open with resumed false; the new session's events arrive (offsets restart), its rooms are gone", async () => {
      const room = unique("room");
      const conn = connect({ reconnect: fast }, proxy);
      const other = connect();
      const notes = new Notes(conn);
      await within(conn.call(Join, { room }));
      const first = conn.state;
      await within(other.call(Publish, { target: "room", room, tag: "a", count: 5 }));
      await notes.until("a", 5);
      proxy.hold(true);
      try {
        const dialed = proxy.accepting();
        proxy.dropAll();
        await within(dialed, 5000, "the redial");
        await within(other.call(Publish, { target: "room", room, tag: "lost", count: 600 }));
        proxy.hold(false);
        const back = await stateWhere(conn, (s) => s.status == "open");
        assert.ok(back.status == "open" && !back.resumed && back.reconnected);
        assert.ok(first.status == "open" && back.session.sessionId != first.session.sessionId);
      } finally {
        proxy.hold(false);
      }
      await within(conn.call(Publish, { target: "conn", tag: "new", count: 3 }));
      await notes.until("new", 3);
      await within(other.call(Publish, { target: "room", room, tag: "gone", count: 1 }));
      await barrier(conn, notes);
      assert.deepEqual(notes.got.filter((g) => !g.startsWith("barrier")), [...seqs("a", 5), ...seqs("new", 3)]);
    });

    test("the resume window passed while the client was away: resumed false; what was published meanwhile is gone, the new session's events arrive", async () => {
      const server = await startE2EServer(["-auth", "-resume-window", "100ms"]);
      const relay = await TcpProxy.start(Number(new URL(server.url).port));
      try {
        const room = unique("room");
        const conn = connect({ reconnect: fast }, relay.url(server.url));
        const other = connect({}, server.url);
        const notes = new Notes(conn);
        await within(conn.call(Join, { room }));
        await within(other.call(Publish, { target: "room", room, tag: "a", count: 3 }));
        await notes.until("a", 3);
        relay.hold(true);
        const dialed = relay.accepting();
        relay.dropAll();
        await within(dialed, 5000, "the redial");
        await within(other.call(Publish, { target: "room", room, tag: "missed", count: 3 }));
        await sleep(300); // the window passing is the point: nothing to wait on but time
        relay.hold(false);
        const back = await stateWhere(conn, (s) => s.status == "open");
        assert.ok(back.status == "open" && !back.resumed && back.reconnected);
        await barrier(conn, notes);
        assert.deepEqual(notes.got.filter((g) => !g.startsWith("barrier")), seqs("a", 3));
      } finally {
        await relay.close();
        await server.stop();
      }
    });

    test("the server shutting down (GoAway) while a handler publishes: its events arrive on the draining socket, once; then the restarted server's new session", async () => {
      let server = await startE2EServer(["-auth"]);
      try {
        const conn = connect({ reconnect: { initialDelayMs: 10, maxDelayMs: 50 } }, server.url);
        const notes = new Notes(conn);
        await within(conn.ready);
        const states: ConnectionState[] = [];
        conn.onStateChange((s) => states.push(s));
        // Whether the call reaches the handler before the shutdown or is
        // refused unrun and goes again after the restart, it publishes once.
        const published = conn.call(Publish, { target: "conn", tag: "d", count: 5, delayMs: 200 }, { timeoutMs: 10_000 });
        await server.stop();
        server = await startE2EServer(["-auth", "-addr", new URL(server.url).host]);
        assert.equal((await within(published, 10_000)).published, 5);
        const back = await stateWhere(conn, (s) => s.status == "open", 10_000);
        assert.ok(back.status == "open" && !back.resumed && back.reconnected);
        await within(conn.call(Publish, { target: "conn", tag: "n", count: 2 }));
        await notes.until("n", 2);
        assert.deepEqual(notes.got, [...seqs("d", 5), ...seqs("n", 2)]);
        const first = states[0];
        assert.ok(first?.status == "reconnecting" && /going away/.test(first.error.message), JSON.stringify(first));
      } finally {
        await server.stop();
      }
    });

    test("the server restarted: resumed false, the new session's server sees the fresh token, a call made while it was down waits and succeeds, one with a short deadline fails deadline_exceeded", async () => {
      let server = await startE2EServer(["-auth"]);
      try {
        let dials = 0;
        const conn = connect({ reconnect: { initialDelayMs: 10, maxDelayMs: 50 }, token: () => `tok-${++dials}` }, server.url);
        assert.equal((await within(conn.call(Whoami, {}))).metadata["authorization"], "Bearer tok-1");
        const first = conn.state;
        await server.stop();
        await stateWhere(conn, (s) => s.status == "reconnecting");
        const waited = conn.call(Echo, { text: "waited" }, { timeoutMs: 10_000 });
        const short = conn.call(Echo, { text: "short" }, { timeoutMs: 50 });
        await rejectsWith(within(short), "deadline_exceeded");
        server = await startE2EServer(["-auth", "-addr", new URL(server.url).host]);
        const back = await stateWhere(conn, (s) => s.status == "open", 10_000);
        assert.ok(back.status == "open" && !back.resumed && back.reconnected);
        assert.ok(first.status == "open" && back.session.sessionId != first.session.sessionId);
        assert.equal((await within(waited)).text, "waited");
        // The token function runs when a socket opens: the dials the down server refused asked for none.
        assert.equal((await within(conn.call(Whoami, {}))).metadata["authorization"], "Bearer tok-2");
        assert.equal(dials, 2);
      } finally {
        await server.stop();
      }
    });
  });
}

test("a Node process whose connections ended at every stage of their lifecycle exits by itself", async () => {
  const child = fileURLToPath(new URL("./trial-events-child.js", import.meta.url));
  for (const protocol of ["proto", "json"]) {
    const p = spawn(process.execPath, [child, url, protocol], { stdio: ["ignore", "pipe", "inherit"] });
    let out = "";
    p.stdout!.on("data", (d) => (out += d));
    const code = await within(new Promise((resolve) => p.on("exit", resolve)), 10_000, `the child (${protocol}): ${out}`).finally(() => p.exitCode === null && p.kill());
    assert.equal(code, 0, `child (${protocol}) exited with ${code}: ${out}`);
    // The last error ends with what the ws package says (ECONNREFUSED and the port): left out.
    assert.deepEqual(out.trim().split("\n").map((l) => l.replace(/\(1006\): .*/, "(1006)")), [
      "ParleyError: unavailable: no welcome from the server within 100 ms",
      "ParleyError: canceled: connection closed by the client",
      "ParleyError: canceled: connection closed by the client",
      "ParleyError: canceled: connection closed by the client",
      "ParleyError: canceled: connection closed by the client",
      'ParleyError: unauthenticated: e2e: token "deny-child" is refused',
      "ParleyError: canceled: connection closed by the client",
      "ParleyError: unavailable: gave up reconnecting after 2 attempts: connection closed (1006)",
      "done",
    ]);
  }
});
