// Connection against a scripted server on a real loopback socket.
import { create, toBinary, toJson, type MessageInitShape } from "@bufbuild/protobuf";
import { NullValue, StringValueSchema, ValueSchema } from "@bufbuild/protobuf/wkt";
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import WebSocket from "ws";
import { binaryProtocol, Connection, handle, onEvent, ParleyError, serverStream, type ConnectionOptions, type ConnectionState, type MethodSpec } from "../src/index.js";
import { rejectsWith, within } from "./assert.js";
import { FakeServer, expectFrame, type Peer } from "./fakeserver.js";
import { EchoRequestSchema, EchoResponseSchema } from "./gen/e2e/v1/echo_pb.js";
import { FrameSchema } from "./gen/parley/v1/frame_pb.js";
import { decodeBinary, encodeBinary, type Frame } from "../src/frame.js";
import { Confirm, Count, Echo, Sleep, Tick } from "./specs.js";
import { protocols } from "./protocols.js";


const connect = (server: FakeServer, options: ConnectionOptions = {}) => new Connection(server.url, { WebSocket, ...options });

/** Answers every Echo call on peer with its text reversed, in whatever order given. */
function reply(peer: Peer, call: { id: number; payload?: Uint8Array; json?: unknown }) {
  const req = peer.json
    ? { text: (call.json as { text?: string }).text ?? "" }
    : { text: new TextDecoder().decode(call.payload!.subarray(2)) };
  const res = create(EchoResponseSchema, { text: [...req.text].reverse().join("") });
  peer.send({ reply: peer.json ? { id: call.id, json: toJson(EchoResponseSchema, res) } : { id: call.id, payload: toBinary(EchoResponseSchema, res) } });
}

for (const protocol of ["proto", "json"] as const) {
  describe(`${protocol}: calls`, () => {
    let server: FakeServer;
    before(async () => (server = await FakeServer.start()));
    after(() => server.close());

    test("handshake: Hello with agent and token, then open", async () => {
      const states: ConnectionState["status"][] = [];
      const conn = connect(server, { protocol: protocols[protocol], metadata: { room: "lobby" }, token: async () => "tok" });
      conn.onStateChange((s) => states.push(s.status));
      assert.equal(conn.state.status, "connecting");
      const peer = await server.peer();
      assert.equal(peer.ws.protocol, `parley.v1+${protocol}`);
      assert.deepEqual(await peer.hello, {
        hello: { metadata: { room: "lobby", authorization: "Bearer tok" }, agent: "parley-ts/0.1.0", maxMessageBytes: 4 << 20, streamWindowBytes: 256 << 10 },
      });
      await within(conn.ready);
      const state = conn.state as ConnectionState;
      assert.equal(state.status == "open" && state.session.sessionId, "s1");
      conn.close();
      assert.deepEqual(states, ["open", "closed"]);
      assert.equal((await peer.closed).code, 1000);
    });

    test("many concurrent calls, answered in reverse order, each reach their caller", async () => {
      const conn = connect(server, { protocol: protocols[protocol] });
      const peer = await server.peer();
      const n = 100;
      const results = Promise.all(
        Array.from({ length: n }, (_, i) => conn.call(Echo, { text: `call ${i}` }).then((r) => r.text)),
      );
      const calls = [];
      for (let i = 0; i < n; i++) calls.push(await expectFrame(peer, "call"));
      assert.deepEqual(
        calls.map((c) => c.id),
        Array.from({ length: n }, (_, i) => 2 * i + 1),
        "ids are odd and increasing",
      );
      assert.ok(calls.every((c) => c.method == "/e2e.v1.EchoService/Echo"));
      for (const c of calls.reverse()) reply(peer, c);
      assert.deepEqual(
        await within(results),
        Array.from({ length: n }, (_, i) => [...`call ${i}`].reverse().join("")),
      );
      conn.close();
    });

    test("a call made before the connection opens waits for the Welcome", async () => {
      const s = await FakeServer.start({ welcome: false });
      try {
        const conn = connect(s, { protocol: protocols[protocol] });
        const res = conn.call(Echo, { text: "early" });
        const peer = await s.peer();
        await peer.hello;
        await sleep(50);
        peer.send({ welcome: {} });
        reply(peer, await expectFrame(peer, "call"));
        assert.equal((await within(res)).text, "ylrae");
        conn.close();
      } finally {
        await s.close();
      }
    });

    test("deadline: rejects with deadline_exceeded, sends Cancel, drops the late reply", async () => {
      const conn = connect(server, { protocol: protocols[protocol] });
      const peer = await server.peer();
      const started = performance.now();
      const res = conn.call(Echo, { text: "slow" }, { timeoutMs: 100 });
      const call = await expectFrame(peer, "call");
      assert.ok(call.timeoutMs! > 0 && call.timeoutMs! <= 100, `timeout_ms ${call.timeoutMs}`);
      await rejectsWith(res, "deadline_exceeded", /Echo: no reply within 100 ms/);
      assert.ok(performance.now() - started >= 99);
      assert.deepEqual(await expectFrame(peer, "cancel"), { id: call.id, code: 4 }, "Cancel says deadline_exceeded");
      reply(peer, call); // Late: dropped.
      const next = conn.call(Echo, { text: "ab" });
      const c2 = await expectFrame(peer, "call");
      assert.equal(c2.id, call.id + 2);
      reply(peer, c2);
      assert.equal((await within(next)).text, "ba");
      conn.close();
    });

    test("deadline: each call at its own, a shorter one made later included", async () => {
      const conn = connect(server, { protocol: protocols[protocol] });
      const peer = await server.peer();
      const started = performance.now();
      let longDone = false;
      const long = conn.call(Echo, { text: "long" }, { timeoutMs: 1000 });
      long.catch(() => {}).finally(() => (longDone = true));
      const short = conn.call(Echo, { text: "short" }, { timeoutMs: 50 });
      const [a, b] = [await expectFrame(peer, "call"), await expectFrame(peer, "call")];
      await rejectsWith(short, "deadline_exceeded", /within 50 ms/);
      const shortAt = performance.now() - started;
      assert.ok(shortAt >= 49 && shortAt < 1000, `the 50 ms call failed after ${shortAt} ms`);
      assert.ok(!longDone, "the 1000 ms call ended with the 50 ms one");
      assert.deepEqual(await expectFrame(peer, "cancel"), { id: b.id, code: 4 });
      await rejectsWith(long, "deadline_exceeded", /within 1000 ms/);
      assert.ok(performance.now() - started >= 999);
      assert.deepEqual(await expectFrame(peer, "cancel"), { id: a.id, code: 4 });
      conn.close();
    });

    test("deadline: the method's, else the connection's default", async () => {
      const conn = connect(server, { protocol: protocols[protocol], defaultTimeoutMs: 150 });
      const peer = await server.peer();
      const withSpec = conn.call({ ...Echo, timeoutMs: 60 }, {});
      withSpec.catch(() => {}); // rejects before it is awaited below
      const byDefault = conn.call(Echo, {});
      byDefault.catch(() => {});
      const noDeadline = conn.call(Echo, {}, { timeoutMs: 0 });
      const [a, b, c] = [await expectFrame(peer, "call"), await expectFrame(peer, "call"), await expectFrame(peer, "call")];
      assert.ok(a.timeoutMs! <= 60 && a.timeoutMs! > 0);
      assert.ok(b.timeoutMs! <= 150 && b.timeoutMs! > 60);
      assert.equal(c.timeoutMs, undefined, "0 means no deadline on the wire");
      await rejectsWith(withSpec, "deadline_exceeded", /within 60 ms/);
      await rejectsWith(byDefault, "deadline_exceeded", /within 150 ms/);
      reply(peer, c);
      await within(noDeadline);
      conn.close();
    });

    test("abort: rejects with canceled and sends Cancel; an aborted signal sends nothing", async () => {
      const conn = connect(server, { protocol: protocols[protocol] });
      const peer = await server.peer();
      const ac = new AbortController();
      const res = conn.call(Echo, {}, { signal: ac.signal });
      const call = await expectFrame(peer, "call");
      ac.abort(new Error("user left"));
      await rejectsWith(res, "canceled", /aborted: user left/);
      assert.deepEqual(await expectFrame(peer, "cancel"), { id: call.id });
      await rejectsWith(conn.call(Echo, {}, { signal: ac.signal }), "canceled");
      const next = conn.call(Echo, { text: "x" });
      const c2 = await expectFrame(peer, "call");
      assert.equal(c2.id, call.id + 2, "the aborted call sent no frame");
      reply(peer, c2);
      await within(next);
      conn.close();
    });

    test("a signal that times out (AbortSignal.timeout) is a deadline: deadline_exceeded, and Cancel says so", async () => {
      const conn = connect(server, { protocol: protocols[protocol] });
      const peer = await server.peer();
      const res = conn.call(Echo, {}, { signal: AbortSignal.timeout(30) });
      const call = await expectFrame(peer, "call");
      await rejectsWith(res, "deadline_exceeded", /aborted: /);
      assert.deepEqual(await expectFrame(peer, "cancel"), { id: call.id, code: 4 });
      conn.close();
    });

    test("an abort while waiting for the connection sends nothing", async () => {
      const s = await FakeServer.start({ welcome: false });
      try {
        const conn = connect(s, { protocol: protocols[protocol] });
        const ac = new AbortController();
        const res = conn.call(Echo, {}, { signal: ac.signal });
        const peer = await s.peer();
        await peer.hello;
        ac.abort();
        await rejectsWith(res, "canceled");
        peer.send({ welcome: {} });
        await conn.ready;
        const next = conn.call(Echo, {});
        assert.equal((await expectFrame(peer, "call")).id, 1);
        conn.close();
        await rejectsWith(next, "canceled", /closed by the client/);
      } finally {
        await s.close();
      }
    });

    test("an Error frame rejects its call with the code, message, details and metadata", async () => {
      const conn = connect(server, { protocol: protocols[protocol] });
      const peer = await server.peer();
      const res = conn.call(Echo, {});
      const call = await expectFrame(peer, "call");
      const detail = create(StringValueSchema, { value: "why" });
      peer.send({
        error: {
          id: call.id,
          code: 5,
          message: "no such room",
          details: peer.json
            ? [{ json: { "@type": "type.googleapis.com/google.protobuf.StringValue", value: "why" } }]
            : [{ typeUrl: "type.googleapis.com/google.protobuf.StringValue", value: toBinary(StringValueSchema, detail) }],
          metadata: { trace: "t1" },
        },
      });
      const err = await rejectsWith(res, "not_found");
      assert.equal(err.message, "not_found: no such room");
      assert.equal(err.rawMessage, "no such room");
      assert.deepEqual(err.metadata, { trace: "t1" });
      assert.equal(err.details[0]?.type, "google.protobuf.StringValue");
      assert.deepEqual(err.findDetails(StringValueSchema).map((d) => d.value), ["why"]);
      // Unknown and unspecified codes read as unknown.
      for (const code of [0, 99]) {
        const r = conn.call(Echo, {});
        peer.send({ error: { id: (await expectFrame(peer, "call")).id, code, message: "m" } });
        await rejectsWith(r, "unknown");
      }
      conn.close();
    });

    test("an undecodable reply payload rejects that call only", async () => {
      const conn = connect(server, { protocol: protocols[protocol] });
      const peer = await server.peer();
      const res = conn.call(Echo, {});
      const call = await expectFrame(peer, "call");
      peer.send({ reply: peer.json ? { id: call.id, json: { text: 5 } } : { id: call.id, payload: new Uint8Array([0x0a, 0x05, 0x61]) } });
      await rejectsWith(res, "internal", /Echo: undecodable reply from the server/);
      const next = conn.call(Echo, { text: "ok" });
      reply(peer, await expectFrame(peer, "call"));
      assert.equal((await within(next)).text, "ko");
      conn.close();
    });

    test("answers Ping with Pong, server calls with unimplemented, unknown kinds with an id with invalid_argument", async () => {
      const conn = connect(server, { protocol: protocols[protocol] });
      const peer = await server.peer();
      await conn.ready;
      peer.send({ ping: { nonce: "18446744073709551615" } });
      assert.deepEqual(await expectFrame(peer, "pong"), { nonce: "18446744073709551615" });
      peer.send({ call: { id: 2, method: "/chat.v1.ChatEvents/ConfirmLeave", payload: new Uint8Array() } });
      const e = await expectFrame(peer, "error");
      assert.equal(e.id, 2);
      assert.equal(e.code, 12);
      // A kind from a later version: {"future": {"id": "4"}} / field 20 {id: 4}.
      if (peer.json) peer.ws.send('{"future":{"id":"4"}}');
      else peer.ws.send(new Uint8Array([0xa2, 1, 2, 8, 4]));
      const e2 = await expectFrame(peer, "error");
      assert.deepEqual([e2.id, e2.code], [4, 3]);
      // Events and kinds without ids are ignored; the connection carries on.
      peer.send({ event: { method: "/x.Y/Z", payload: new Uint8Array() } });
      const res = conn.call(Echo, { text: "12" });
      reply(peer, await expectFrame(peer, "call"));
      assert.equal((await within(res)).text, "21");
      conn.close();
    });

    test("GoAway, reconnect off: calls in flight finish, new calls fail with unavailable", async () => {
      const conn = connect(server, { protocol: protocols[protocol], reconnect: false });
      const peer = await server.peer();
      const inFlight = conn.call(Echo, { text: "ab" });
      const call = await expectFrame(peer, "call");
      peer.send({ goaway: { reason: "shutting down", lastId: call.id } });
      await within(new Promise<void>((resolve) => conn.onStateChange(() => resolve())));
      assert.equal(conn.state.status == "open" && conn.state.goingAway, "shutting down");
      await rejectsWith(conn.call(Echo, {}), "unavailable", /going away: shutting down/);
      reply(peer, call);
      assert.equal((await within(inFlight)).text, "ba");
      peer.ws.close(1001);
      await within(new Promise<void>((resolve) => conn.onStateChange(() => resolve())));
      const state = conn.state;
      assert.equal(state.status == "closed" && state.error.code, "unavailable");
      assert.match(state.status == "closed" ? state.error.message : "", /connection closed \(1001\)/);
    });

    test("reconnect off: a closed socket fails the calls in flight with unavailable", async () => {
      const conn = connect(server, { protocol: protocols[protocol], reconnect: false });
      const peer = await server.peer();
      const res = conn.call(Echo, {});
      await expectFrame(peer, "call");
      peer.ws.terminate();
      await rejectsWith(within(res), "unavailable", /connection closed \(1006\)/);
      await rejectsWith(conn.call(Echo, {}), "unavailable");
    });

    test("close() fails waiting and in-flight calls with canceled", async () => {
      const conn = connect(server, { protocol: protocols[protocol] });
      const peer = await server.peer();
      const res = conn.call(Echo, {});
      await expectFrame(peer, "call");
      conn.close();
      conn.close();
      await rejectsWith(res, "canceled", /closed by the client/);
      const state = conn.state;
      assert.equal(state.status == "closed" && state.error.code, "canceled");
    });

    test("the server's max_in_flight holds calls back until a slot is free", async () => {
      const s = await FakeServer.start({ welcome: { maxInFlight: 2 } });
      try {
        const conn = connect(s, { protocol: protocols[protocol] });
        const peer = await s.peer();
        const all = Promise.all([1, 2, 3, 4, 5].map((i) => conn.call(Echo, { text: String(i) })));
        const a = await expectFrame(peer, "call");
        const b = await expectFrame(peer, "call");
        const third = peer.recv();
        assert.equal(await Promise.race([third.then(() => "sent"), sleep(50).then(() => "held")]), "held");
        reply(peer, a);
        const c = (await within(third) as { call: { id: number } }).call;
        assert.equal(c.id, 5);
        reply(peer, b);
        reply(peer, c);
        reply(peer, await expectFrame(peer, "call"));
        reply(peer, await expectFrame(peer, "call"));
        assert.deepEqual((await within(all)).map((r) => r.text), ["1", "2", "3", "4", "5"]);
        conn.close();
      } finally {
        await s.close();
      }
    });

    test("Hello carries maxMessageBytes, so that the server sends nothing larger", async () => {
      const conn = connect(server, { protocol: protocols[protocol], maxMessageBytes: 512 });
      const peer = await server.peer();
      const hello = (await peer.hello) as { hello: { maxMessageBytes?: number } };
      assert.equal(hello.hello.maxMessageBytes, 512);
      await within(conn.ready);
      conn.close();
    });

    test("a request larger than maxMessageBytes fails with resource_exhausted", async () => {
      const conn = connect(server, { protocol: protocols[protocol], maxMessageBytes: 1000 });
      const peer = await server.peer();
      await rejectsWith(conn.call(Echo, { text: "x".repeat(2000) }), "resource_exhausted", /limit 1000/);
      const res = conn.call(Echo, { text: "small" });
      const call = await expectFrame(peer, "call");
      assert.equal(call.id, 3, "the large call used id 1 but sent nothing");
      reply(peer, call);
      await within(res);
      conn.close();
    });
  });

  describe(`${protocol}: a misbehaving server gives a clear error, never a hang`, () => {
    const garbage: [string, (peer: Peer) => void, RegExp][] = [
      ["undecodable bytes", (p) => p.ws.send(p.json ? "{not json" : new Uint8Array([0xff, 0xff, 0xff])), /undecodable frame/],
      [
        "a message of the wrong type",
        (p) => p.ws.send(p.json ? new Uint8Array([1, 2]) : '{"reply":{"id":"1"}}'),
        protocol == "json" ? /a binary message on parley\.v1\+json/ : /a text message on parley\.v1\+proto/,
      ],
      ["a frame with no kind", (p) => p.ws.send(p.json ? "{}" : new Uint8Array()), /frame has no kind/],
      ["a message over the size limit", (p) => p.send({ reply: { id: 1, payload: new Uint8Array(5000) } }), /more than the limit of 4096/],
    ];
    for (const [name, misbehave, message] of garbage) {
      test(name, async () => {
        const server = await FakeServer.start();
        try {
          const conn = connect(server, { protocol: protocols[protocol], maxMessageBytes: 4096, reconnect: false });
          const peer = await server.peer();
          const res = conn.call(Echo, {});
          await expectFrame(peer, "call");
          misbehave(peer);
          await rejectsWith(within(res), "internal", message);
          assert.match((await rejectsWith(conn.call(Echo, {}), "internal")).message, /protocol error/);
          const e = await expectFrame(peer, "error");
          assert.equal(e.id, 0);
          assert.equal(e.code, 3);
          assert.equal((await within(peer.closed)).code, 1002);
        } finally {
          await server.close();
        }
      });
    }

    test("a peer that answers Hello with anything but Welcome (a WebSocket echo): a protocol error at once, not a wait for Welcome", async () => {
      const server = await FakeServer.start({ welcome: false });
      try {
        const conn = connect(server, { protocol: protocols[protocol] });
        const peer = await server.peer();
        peer.send(await peer.hello); // the echo
        await rejectsWith(within(conn.ready), "internal", /protocol error: awaiting welcome: got a hello frame/);
        const e = await expectFrame(peer, "error");
        assert.equal(e.id, 0);
        assert.equal((await within(peer.closed)).code, 1002);
        assert.equal(conn.state.status, "closed");
      } finally {
        await server.close();
      }
    });

    for (const again of [{ welcome: { sessionId: "s2" } }, { hello: {} }] as Frame[]) {
      const kind = Object.keys(again)[0];
      test(`a ${kind} after the handshake is a protocol error`, async () => {
        const server = await FakeServer.start();
        try {
          const conn = connect(server, { protocol: protocols[protocol], reconnect: false });
          const peer = await server.peer();
          await within(conn.ready);
          const res = conn.call(Echo, {});
          await expectFrame(peer, "call");
          peer.send(again);
          await rejectsWith(within(res), "internal", new RegExp(`protocol error: ${kind} after the handshake`));
          assert.equal((await expectFrame(peer, "error")).id, 0);
          assert.equal((await within(peer.closed)).code, 1002);
        } finally {
          await server.close();
        }
      });
    }
  });
}

describe("connection failures", () => {
  test("a refused Hello fails the connection and its calls with the server's code and message", async () => {
    const server = await FakeServer.start({ welcome: false });
    try {
      const conn = connect(server, { token: "bad" });
      const res = conn.call(Echo, {});
      const peer = await server.peer();
      await peer.hello;
      peer.send({ error: { id: 0, code: 16, message: "invalid token" } });
      peer.ws.close(1008);
      await rejectsWith(within(conn.ready), "unauthenticated", /^unauthenticated: invalid token$/);
      await rejectsWith(res, "unauthenticated", /invalid token/);
      assert.equal(conn.state.status, "closed");
    } finally {
      await server.close();
    }
  });

  test("a token function that throws fails with unauthenticated", async () => {
    const server = await FakeServer.start();
    try {
      const conn = connect(server, {
        token: () => {
          throw new Error("no session");
        },
      });
      await rejectsWith(within(conn.ready), "unauthenticated", /token: Error: no session/);
    } finally {
      await server.close();
    }
  });

  test("a socket closed while the token function has not returned says so", async () => {
    const server = await FakeServer.start();
    try {
      // The server gives up on the Hello, as Go's handshake timeout does.
      const conn = connect(server, { token: () => new Promise<string>(() => {}) });
      const peer = await server.peer();
      peer.ws.close(1008);
      await rejectsWith(within(conn.ready), "unavailable", /connection closed \(1008\); the token function had not returned$/);
    } finally {
      await server.close();
    }
  });

  test("a server that accepts no subprotocol: unavailable, with why when the WebSocket says", async () => {
    const server = await FakeServer.start({ accept: false });
    try {
      const conn = connect(server);
      // ws fails the handshake itself (as browsers do), so the runtime's own
      // check (a protocol error) never runs here.
      await rejectsWith(within(conn.ready), "unavailable", /connection closed \(1006\): Server sent no subprotocol/);
    } finally {
      await server.close();
    }
  });

  test("nothing listening: unavailable", async () => {
    const conn = new Connection("ws://127.0.0.1:1/", { WebSocket });
    await rejectsWith(within(conn.call(Echo, {})), "unavailable", /connection closed/);
  });

  test("no Welcome within the default timeout: unavailable", async () => {
    const server = await FakeServer.start({ welcome: false });
    try {
      const conn = connect(server, { defaultTimeoutMs: 100 });
      await rejectsWith(within(conn.ready), "unavailable", /no welcome from the server within 100 ms/);
    } finally {
      await server.close();
    }
  });
});

describe("choosing the protocol", () => {
  test("a protocol that is not a Protocol throws a TypeError naming the two; it never falls back to binary", () => {
    // JavaScript callers, whom the types do not stop ("json" was once a string option).
    for (const protocol of ["json", "proto", {}]) {
      const options = { WebSocket, protocol } as unknown as ConnectionOptions;
      assert.throws(
        () => new Connection("ws://127.0.0.1:1/", options),
        (e) => e instanceof TypeError && /binaryProtocol or jsonProtocol \(@parleyrpc\/runtime\/json\)/.test(e.message),
      );
    }
  });

  test("no protocol and binaryProtocol both speak parley.v1+proto", async () => {
    const server = await FakeServer.start();
    try {
      for (const protocol of [undefined, binaryProtocol]) {
        const conn = connect(server, { protocol });
        const peer = await server.peer();
        assert.equal(peer.ws.protocol, "parley.v1+proto");
        await within(conn.ready);
        conn.close();
      }
    } finally {
      await server.close();
    }
  });

  test("on parley.v1+proto a json body fails its reply, stream item, server call or event, clearly, and the connection goes on", async () => {
    const server = await FakeServer.start();
    const errors: unknown[] = [];
    try {
      const conn = connect(server, { onError: (e) => errors.push(e) });
      const peer = await server.peer();
      // Our binary codec has no encoding of a json body (google.protobuf.Value):
      // protobuf-es writes these frames.
      const json = { case: "json", value: { kind: { case: "stringValue", value: "hi" } } } as const;
      const send = (init: MessageInitShape<typeof FrameSchema>) => peer.ws.send(toBinary(FrameSchema, create(FrameSchema, init)));
      const res = conn.call(Echo, {});
      send({ kind: { case: "reply", value: { id: BigInt((await expectFrame(peer, "call")).id), body: json } } });
      await rejectsWith(res, "internal", /undecodable reply from the server: Error: a json body on parley\.v1\+proto/);

      const stream = serverStream(conn, Count, { from: 1, count: 2 })[Symbol.asyncIterator]();
      const first = stream.next();
      const id = (await expectFrame(peer, "call")).id;
      send({ kind: { case: "item", value: { id: BigInt(id), body: json } } });
      await rejectsWith(first, "internal", /undecodable stream item from the server: Error: a json body on parley\.v1\+proto/);
      assert.deepEqual(await expectFrame(peer, "cancel"), { id });

      handle(conn, Confirm, () => ({ answer: "unreachable" }));
      send({ kind: { case: "call", value: { id: 2n, method: Confirm.procedure, body: json } } });
      const e = await expectFrame(peer, "error");
      assert.equal(e.code, 3);
      assert.match(e.message!, /decoding the request of \/e2e\.v1\.ClientEvents\/Confirm: Error: a json body on parley\.v1\+proto/);

      onEvent(conn, Tick, () => assert.fail("an undecodable event reached its handler"));
      send({ kind: { case: "event", value: { method: Tick.procedure, body: json } } });
      peer.send({ ping: { nonce: "1" } });
      await expectFrame(peer, "pong");
      assert.equal(errors.length, 1);
      assert.ok(errors[0] instanceof ParleyError && errors[0].code == "internal", String(errors[0]));
      assert.match(errors[0].message, /\/e2e\.v1\.ClientEvents\/Tick: undecodable event from the server: Error: a json body on parley\.v1\+proto/);

      const ok = conn.call(Echo, { text: "ab" });
      reply(peer, await expectFrame(peer, "call"));
      assert.equal((await within(ok)).text, "ba");
      conn.close();
    } finally {
      await server.close();
    }
  });
  test("on parley.v1+json a payload body fails its reply, clearly, and the connection goes on", async () => {
    const server = await FakeServer.start();
    try {
      const conn = connect(server, { protocol: protocols.json });
      const peer = await server.peer();
      const res = conn.call(Echo, {});
      const call = await expectFrame(peer, "call");
      peer.send({ reply: { id: call.id, payload: toBinary(EchoResponseSchema, create(EchoResponseSchema, { text: "x" })) } });
      await rejectsWith(res, "internal", /undecodable reply from the server: Error: a payload body on parley\.v1\+json/);
      const ok = conn.call(Echo, { text: "ab" });
      reply(peer, await expectFrame(peer, "call"));
      assert.equal((await within(ok)).text, "ba");
      conn.close();
    } finally {
      await server.close();
    }
  });
  test("on parley.v1+json a google.protobuf.Value that is null (\"json\": null) is read as null, in a reply and a stream item", async () => {
    // It was read as {}, an empty Struct: fromJson got `json ?? {}`.
    const server = await FakeServer.start();
    const conn = connect(server, { protocol: protocols.json });
    try {
      const peer = await server.peer();
      const Val = { procedure: "/t.v1.Values/Val", input: ValueSchema, output: ValueSchema } satisfies MethodSpec;
      const Vals = { ...Val, procedure: "/t.v1.Values/Vals", kind: "server_streaming" } satisfies MethodSpec;
      const res = conn.call(Val, { kind: { case: "nullValue", value: NullValue.NULL_VALUE } });
      const call = await expectFrame(peer, "call");
      assert.equal(call.json, null, "a null Value goes as null");
      peer.send({ reply: { id: call.id, json: null } });
      assert.equal((await within(res)).kind.case, "nullValue");
      const items = serverStream(conn, Vals, { kind: { case: "boolValue", value: true } })[Symbol.asyncIterator]();
      const open = await expectFrame(peer, "call");
      peer.send({ item: { id: open.id, json: null } });
      peer.send({ item: { id: open.id, json: {} } });
      assert.deepEqual(
        [(await within(items.next())).value?.kind.case, (await within(items.next())).value?.kind.case],
        ["nullValue", "structValue"],
      );
    } finally {
      conn.close();
      await server.close();
    }
  });
});

describe("ParleyError", () => {
  test("findDetails of a JSON detail that did not come through jsonProtocol throws, saying why", () => {
    const e = new ParleyError("internal", "x", [{ type: "google.protobuf.StringValue", json: { "@type": "type.googleapis.com/google.protobuf.StringValue", value: "v" } }]);
    assert.throws(() => e.findDetails(StringValueSchema), /has no reader: only details received over jsonProtocol/);
    assert.deepEqual(e.findDetails(EchoRequestSchema), []);
  });


  test("instanceof holds across two copies of the library", async () => {
    const other = (await import("../src/error.js?copy=2" as string)) as typeof import("../src/error.js");
    assert.notEqual(other.ParleyError, ParleyError);
    const e = new other.ParleyError("not_found", "x");
    assert.ok(e instanceof ParleyError);
    assert.ok(new ParleyError("internal", "y") instanceof other.ParleyError);
    assert.ok(!(new Error("z") instanceof ParleyError));
    class Sub extends ParleyError {}
    assert.ok(new Sub("aborted", "") instanceof ParleyError);
    assert.ok(!(new ParleyError("aborted", "") instanceof Sub));
  });

  test("from", () => {
    const cause = new Error("boom");
    const e = ParleyError.from(cause, "internal");
    assert.equal(e.code, "internal");
    assert.equal(e.message, "internal: boom");
    assert.equal(e.cause, cause);
    assert.equal(ParleyError.from(e), e);
  });
});

test("the request may be a message or an init object", async () => {
  const server = await FakeServer.start();
  try {
    const conn = connect(server);
    const peer = await server.peer();
    const a = conn.call(Echo, create(EchoRequestSchema, { text: "m" }));
    const b = conn.call(Sleep, { ms: 5, token: "t" });
    assert.deepEqual((await expectFrame(peer, "call")).payload, new Uint8Array([10, 1, 109]));
    assert.deepEqual((await expectFrame(peer, "call")).payload, new Uint8Array([8, 5, 18, 1, 116]));
    conn.close();
    await Promise.allSettled([a, b]);
  } finally {
    await server.close();
  }
});

/**
 * WebSockets that live in this process: each opens at once, answers Hello
 * with a Welcome and a call with its request as the reply, and closes when
 * a test calls its onclose. socks lists those made. Real sockets and the
 * ws package keep timers of their own, which would blur a count of timers.
 */
function inProcessSockets() {
  const socks: InProcess[] = [];
  class InProcess {
    protocol = "parley.v1+proto";
    binaryType = "arraybuffer";
    onopen: ((ev: unknown) => void) | null = null;
    onmessage: ((ev: { data: Uint8Array }) => void) | null = null;
    onclose: ((ev: { code: number; reason: string }) => void) | null = null;
    onerror: ((ev: unknown) => void) | null = null;
    constructor() {
      socks.push(this);
      queueMicrotask(() => this.onopen?.({}));
    }
    send(data: Uint8Array) {
      const frame = decodeBinary(data);
      const answer: Frame | undefined =
        "hello" in frame ? { welcome: { sessionId: "s" } }
        : "call" in frame ? { reply: { id: frame.call.id, payload: frame.call.payload } }
        : undefined;
      if (answer) queueMicrotask(() => this.onmessage?.({ data: encodeBinary(answer) }));
    }
    close() {}
  }
  return { socks, WebSocket: InProcess };
}

test("the deadline timer outlives the last call but not close(): no timer keeps the process alive", async () => {
  // A socket that answers in-process: real sockets and the ws package keep
  // timers of their own, which would blur the count.
  const { WebSocket: Answering } = inProcessSockets();
  const timeouts = () => process.getActiveResourcesInfo().filter((r) => r == "Timeout").length;
  const before = timeouts();
  const conn = new Connection("ws://in-process", { WebSocket: Answering });
  // No within(): its timer would count. The socket answers in microtasks.
  await conn.ready;
  assert.equal(timeouts(), before, "no timer while no call is in flight");
  assert.equal((await conn.call(Echo, { text: "a" })).text, "a");
  assert.equal(timeouts(), before + 1, "the deadline timer stays armed after the last call");
  conn.close();
  assert.equal(timeouts(), before, "close() stops it");
});

test("close() from a reconnecting listener stops the redial timer: none keeps the process alive", async () => {
  // An in-process socket, as above: opens, welcomes, and drops when told.
  const { socks, WebSocket: Dropping } = inProcessSockets();
  const timeouts = () => process.getActiveResourcesInfo().filter((r) => r == "Timeout").length;
  const before = timeouts();
  // A long redial delay, as after a few failed attempts with the defaults.
  const conn = new Connection("ws://in-process", { WebSocket: Dropping, defaultTimeoutMs: 0, reconnect: { initialDelayMs: 60_000, random: () => 0.99 } });
  await conn.ready;
  const seen: string[] = [];
  conn.onStateChange((s) => {
    seen.push(s.status);
    if (s.status == "reconnecting") conn.close();
  });
  socks[0]!.onclose!({ code: 1006, reason: "" });
  assert.deepEqual(seen, ["reconnecting", "closed"]);
  assert.equal(timeouts(), before, "no redial timer left behind");
  assert.equal(socks.length, 1, "no dial after close()");
});

test("state listeners: a listener that closes the connection leaves the others with closed, not the stale state after it", async () => {
  const { socks, WebSocket: Dropping } = inProcessSockets();
  const conn = new Connection("ws://in-process", { WebSocket: Dropping, defaultTimeoutMs: 0, reconnect: { initialDelayMs: 0 } });
  await conn.ready;
  const a: string[] = [];
  const b: string[] = [];
  const c: string[] = [];
  conn.onStateChange((s) => {
    a.push(s.status);
    if (s.status == "reconnecting") {
      conn.onStateChange((s) => void c.push(s.status));
      conn.close();
    }
  });
  conn.onStateChange((s) => void b.push(s.status));
  socks[0]!.onclose!({ code: 1006, reason: "" });
  assert.equal(conn.state.status, "closed");
  assert.deepEqual(a, ["reconnecting", "closed"]);
  assert.deepEqual(b, ["closed"], "the last state a listener got is the connection's");
  assert.deepEqual(c, ["closed"], "a listener added during dispatch gets the states after it");
});
