// End to end against the real Go server (internal/e2e/cmd/e2eserver), over
// loopback, in both encodings; see e2eserver.ts.
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import WebSocket from "ws";
import { Connection, type Code } from "../src/index.js";
import { rejectsWith } from "./assert.js";
import { startE2EServer } from "./e2eserver.js";
import { Echo, Fail, Outcome, Panic, Sleep, SleepWithDefault } from "./specs.js";
import { protocols } from "./protocols.js";

let url: string;
let stop: () => Promise<void>;

before(async () => ({ url, stop } = await startE2EServer()));
after(() => stop?.());


const codes: Code[] = [
  "canceled", "unknown", "invalid_argument", "deadline_exceeded", "not_found", "already_exists",
  "permission_denied", "resource_exhausted", "failed_precondition", "aborted", "out_of_range",
  "unimplemented", "internal", "unavailable", "data_loss", "unauthenticated",
];

for (const protocol of ["proto", "json"] as const) {
  describe(`e2e ${protocol}`, () => {
    let conn: Connection;
    before(async () => {
      conn = new Connection(url, { WebSocket, protocol: protocols[protocol] });
      await conn.ready;
    });
    after(() => conn.close());

    test("concurrent calls are all correlated", async () => {
      const n = 500;
      const res = await Promise.all(
        Array.from({ length: n }, (_, i) => conn.call(Echo, { text: `#${i}`, data: new Uint8Array([i & 0xff, i >> 8]) })),
      );
      res.forEach((r, i) => {
        assert.equal(r.text, `#${i}`);
        assert.deepEqual([...r.data], [i & 0xff, i >> 8]);
      });
    });

    test("the method's default deadline reaches the handler", async () => {
      const res = await conn.call(SleepWithDefault, { ms: 1 });
      assert.ok(res.deadlineMs > 200n && res.deadlineMs <= 300n, `handler saw ${res.deadlineMs} ms`);
      const timed = await conn.call(Sleep, { ms: 1 }, { timeoutMs: 2000 });
      assert.ok(timed.deadlineMs > 1500n && timed.deadlineMs <= 2000n, `handler saw ${timed.deadlineMs} ms`);
      const none = await conn.call(Sleep, { ms: 1 }, { timeoutMs: 0 });
      assert.equal(none.deadlineMs, 0n);
    });

    test("at the deadline the call fails and the handler sees deadline_exceeded", async () => {
      const token = `deadline-${protocol}-${Date.now()}`;
      const start = performance.now();
      await rejectsWith(conn.call(SleepWithDefault, { ms: 10_000, token }), "deadline_exceeded");
      const took = performance.now() - start;
      assert.ok(took >= 299 && took < 1000, `failed after ${took} ms, want about 300`);
      const out = await conn.call(Outcome, { token });
      assert.equal(out.outcome, "deadline_exceeded");
      assert.ok(out.deadlineMs > 200n && out.deadlineMs <= 300n, `handler saw ${out.deadlineMs} ms`);
    });

    test("aborting cancels the handler's context", async () => {
      const token = `abort-${protocol}-${Date.now()}`;
      const ac = new AbortController();
      const res = conn.call(Sleep, { ms: 10_000, token }, { signal: ac.signal });
      await sleep(50);
      ac.abort();
      await rejectsWith(res, "canceled");
      const out = await conn.call(Outcome, { token });
      assert.equal(out.outcome, "canceled");
    });

    test("every error code arrives with its message", async () => {
      for (const code of codes) {
        const err = await rejectsWith(conn.call(Fail, { code, message: `because ${code}` }), code);
        assert.equal(err.rawMessage, `because ${code}`); // the server's message, intact
      }
    });

    test("a panic is internal, and the socket stays usable", async () => {
      await rejectsWith(conn.call(Panic, {}), "internal");
      await rejectsWith(conn.call({ ...Panic, procedure: "/e2e.v1.EchoService/Nope" }, {}), "unimplemented");
      assert.equal((await conn.call(Echo, { text: "still here" })).text, "still here");
      assert.equal(conn.state.status, "open");
    });

    test("a reply larger than the client's maxMessageBytes arrives as resource_exhausted; the socket stays", async () => {
      // The limit goes to the server in Hello; without it the server sent
      // the reply, the client closed with 1009, resumed, sent the call
      // again (Echo is idempotent), and so on until the deadline.
      const small = new Connection(url, { WebSocket, protocol: protocols[protocol], maxMessageBytes: 512, reconnect: { initialDelayMs: 5, maxDelayMs: 50 } });
      const states: string[] = [];
      try {
        await small.ready;
        small.onStateChange((s) => states.push(s.status));
        const token = `limit-${protocol}-${Date.now()}`;
        const held = small.call(Sleep, { ms: 200, token }, { timeoutMs: 5000 });
        const err = await rejectsWith(small.call(Echo, { text: "x".repeat(100), repeat: 30 }, { timeoutMs: 3000 }), "resource_exhausted");
        assert.match(err.rawMessage, /^\/e2e\.v1\.EchoService\/Echo: the response is \d+ bytes, the limit 512$/);
        assert.equal((await small.call(Echo, { text: "y", repeat: 3 })).text, "yyy");
        await held; // the call in flight meanwhile completes
        assert.equal((await small.call(Outcome, { token })).outcome, "completed");
        assert.deepEqual(states, [], "the connection never left its socket");
        assert.equal(small.state.status, "open");
      } finally {
        small.close();
      }
    });
  });
}

test("e2e: a misbehaving server gives a clear error, not a hang", async () => {
  // The real server answers a reply whose payload is of the wrong type;
  // decoding Echo's reply as an Outcome response fails on the client.
  const conn = new Connection(url, { WebSocket });
  try {
    const wrong = { ...Echo, output: Outcome.output };
    await rejectsWith(conn.call(wrong, { data: new Uint8Array([0xff, 0xff]) }), "internal", /undecodable reply/);
    assert.equal((await conn.call(Echo, { text: "ok" })).text, "ok");
  } finally {
    conn.close();
  }
});
