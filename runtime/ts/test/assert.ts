// Assertions the tests share.
import assert from "node:assert/strict";
import { setTimeout as sleep } from "node:timers/promises";
import { ParleyError } from "../src/index.js";

/** Asserts that p rejects with a ParleyError of the given code whose message matches (the message reads "code: raw message"). */
export async function rejectsWith(p: Promise<unknown>, code: string, message?: RegExp): Promise<ParleyError> {
  try {
    await p;
  } catch (e) {
    assert.ok(e instanceof ParleyError, `not a ParleyError: ${String(e)}`);
    assert.equal(e.code, code, `code of ${e.message}`);
    if (message) assert.match(e.message, message);
    return e;
  }
  assert.fail(`resolved; want ${code}`);
}

/** Fails the test instead of hanging when p takes too long. */
export function within<T>(p: Promise<T>, ms = 2000): Promise<T> {
  return Promise.race([p, sleep(ms).then(() => assert.fail(`still pending after ${ms} ms`))]);
}
