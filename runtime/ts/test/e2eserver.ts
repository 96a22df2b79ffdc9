// Starts the real Go server (internal/e2e/cmd/e2eserver) for the e2e tests:
// built once per process with `go build` (or taken from PARLEY_E2E_SERVER);
// if that fails, the tests fail: they never skip.
import assert from "node:assert/strict";
import { execFileSync, spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { setTimeout as sleep } from "node:timers/promises";
import { fileURLToPath } from "node:url";

const root = fileURLToPath(new URL("../../../../", import.meta.url));

/** The binary: PARLEY_E2E_SERVER names one built elsewhere; else built here once, removed at exit. */
let bin = process.env["PARLEY_E2E_SERVER"];

function binary(): string {
  if (!bin) {
    const dir = mkdtempSync(join(tmpdir(), "parley-e2e-"));
    process.on("exit", () => rmSync(dir, { recursive: true, force: true }));
    const out = join(dir, "e2eserver");
    execFileSync("go", ["build", "-o", out, "./internal/e2e/cmd/e2eserver"], { cwd: root, stdio: "inherit" });
    bin = out;
  }
  return bin;
}

/**
 * Starts the server with args (such as ["-addr", "127.0.0.1:PORT"]);
 * resolves with its WebSocket URL and a function that stops it.
 */
export async function startE2EServer(args: string[] = []): Promise<{ url: string; stop(): Promise<void> }> {
  // The server exits when its stdin closes, so it cannot outlive the tests.
  const server = spawn(binary(), args, { stdio: ["pipe", "pipe", "inherit"] });
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
    },
  };
}
