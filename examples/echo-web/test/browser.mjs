// Helpers for the examples' browser tests (node --test): find Debian's
// Chromium, bundle a page with esbuild, build and start a Go server, and
// launch the browser with playwright-core.
import { spawn, spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { createInterface } from "node:readline";
import * as esbuild from "esbuild";
import { chromium } from "playwright-core";

/** The repository's root. */
export const root = path.resolve(import.meta.dirname, "../../..");

/** Where Chromium is expected: $PARLEY_CHROMIUM, else Debian's. */
export const chromiumPath = process.env.PARLEY_CHROMIUM || "/usr/bin/chromium";

/**
 * Returns a reason to skip when Chromium is missing, after saying so
 * loudly; throws instead when PARLEY_REQUIRE_SERVICES=1 (CI), so that a
 * missing browser fails there.
 */
export function chromiumMissing() {
  if (existsSync(chromiumPath)) return undefined;
  const msg = `Chromium not found at ${chromiumPath}: install Debian's (apt-get install chromium) or set PARLEY_CHROMIUM`;
  if (process.env.PARLEY_REQUIRE_SERVICES === "1") {
    throw new Error(`${msg} (PARLEY_REQUIRE_SERVICES=1 makes this a failure)`);
  }
  console.error(`\n*** SKIPPING BROWSER TESTS: ${msg} ***\n`);
  return msg;
}

/**
 * Launches headless Chromium with a fresh profile (playwright makes a
 * temporary --user-data-dir). Without the networking flags Chromium
 * reaches for Google's services, which a closed network refuses.
 */
export function launchChromium() {
  return chromium.launch({
    executablePath: chromiumPath,
    headless: true,
    args: [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
  });
}

/**
 * The esbuild options that bundle a page for browsers. @parleyrpc/runtime
 * is bundled from its TypeScript source, so no build of the runtime is
 * needed first.
 */
export function pageBuildOptions(entry, outfile) {
  return {
    absWorkingDir: root,
    entryPoints: [entry],
    outfile,
    bundle: true,
    format: "esm",
    platform: "browser",
    target: "es2022",
    alias: { "@parleyrpc/runtime": "./runtime/ts/src/index.ts", "@parleyrpc/runtime/json": "./runtime/ts/src/json.ts" },
    logLevel: "warning",
  };
}

/** Bundles entry (relative to the root) into outfile. */
export async function bundle(entry, outfile, extra = {}) {
  await esbuild.build({ ...pageBuildOptions(entry, outfile), ...extra });
}

/** Type-checks a TypeScript project (tsc --noEmit -p dir). */
export function typecheck(dir) {
  const tsc = path.join(root, "node_modules", ".bin", "tsc");
  const r = spawnSync(tsc, ["--noEmit", "-p", dir], { cwd: root, encoding: "utf8" });
  if (r.status !== 0) throw new Error(`tsc -p ${dir} failed:\n${r.stdout}${r.stderr}`);
}

/** A temporary directory, removed by the returned cleanup. */
export function tempDir(prefix) {
  const dir = mkdtempSync(path.join(tmpdir(), prefix));
  return [dir, () => rmSync(dir, { recursive: true, force: true })];
}

/** Builds a Go main package (relative to the root) into out. */
export function goBuild(pkg, out) {
  const r = spawnSync("go", ["build", "-o", out, pkg], { cwd: root, encoding: "utf8" });
  if (r.status !== 0) throw new Error(`go build ${pkg} failed:\n${r.stderr}`);
}

/**
 * Starts a server binary and resolves with the first line it prints (its
 * URL, for the servers used here) and a stop function. Its stderr goes to
 * this process's.
 */
export function startServer(bin, args) {
  const proc = spawn(bin, args, { cwd: root, stdio: ["pipe", "pipe", "inherit"] });
  const stop = () =>
    new Promise((resolve) => {
      if (proc.exitCode !== null || proc.signalCode !== null) return resolve();
      proc.once("exit", () => resolve());
      proc.kill("SIGTERM");
    });
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${bin} printed nothing in 20s`)), 20_000);
    proc.once("error", reject);
    proc.once("exit", (code) => reject(new Error(`${bin} exited with ${code} before printing its URL`)));
    createInterface({ input: proc.stdout }).once("line", (line) => {
      clearTimeout(timer);
      resolve({ line, stop });
    });
  });
}

/**
 * Records a page's uncaught errors and console errors, so a test can
 * assert there were none.
 */
export function watchErrors(page) {
  const errors = [];
  page.on("pageerror", (e) => errors.push(`pageerror: ${e.message}`));
  page.on("console", (m) => {
    if (m.type() === "error") errors.push(`console: ${m.text()}`);
  });
  return errors;
}
