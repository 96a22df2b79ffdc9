// Starts the real Go server (internal/e2e/cmd/e2eserver) for the e2e tests:
// built once with `go build` (or taken from PARLEY_E2E_SERVER); if that
// fails, the tests fail: they never skip.
import assert from "node:assert/strict";
import { execFileSync, spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { setTimeout as sleep } from "node:timers/promises";
import { fileURLToPath } from "node:url";

const root = fileURLToPath(new URL("../../../../", import.meta.url));

/** Starts the server; resolves with its WebSocket URL and a function that stops it. */
export async function startE2EServer(): Promise<{ url: string; stop(): Promise<void> }> {
  const dir = mkdtempSync(join(tmpdir(), "parley-e2e-"));
  // PARLEY_E2E_SERVER names an e2eserver binary built elsewhere.
  let bin = process.env["PARLEY_E2E_SERVER"];
  if (!bin) {
    bin = join(dir, "e2eserver");
    execFileSync("go", ["build", "-o", bin, "./internal/e2e/cmd/e2eserver"], { cwd: root, stdio: "inherit" });
  }
  // The server exits when its stdin closes, so it cannot outlive the tests.
  const server = spawn(bin, [], { stdio: ["pipe", "pipe", "inherit"] });
  const lines = createInterface({ input: server.stdout! });
  const url = await Promise.race([
    new Promise<string>((resolve) => lines.once("line", resolve)),
    new Promise<never>((_, reject) => server.once("exit", (code) => reject(new Error(`e2eserver exited with ${code}`)))),
    sleep(30_000, undefined, { ref: false }).then(() => {
      throw new Error("e2eserver printed no URL within 30 s");
    }),
  ]);
  assert.match(url, /^ws:\/\//);
  return {
    url,
    async stop() {
      server.stdin?.end();
      if (server.exitCode === null) {
        await Promise.race([new Promise((resolve) => server.once("exit", resolve)), sleep(5000, undefined, { ref: false }).then(() => server.kill())]);
      }
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
