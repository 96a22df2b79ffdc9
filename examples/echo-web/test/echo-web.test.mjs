// Browser test of the echo page: Debian's Chromium, driven by
// playwright-core, clicks each button and checks what the page shows after
// real calls to the Go server (internal/e2e/cmd/e2eserver), in both
// encodings.
//
//   node --test examples/echo-web/test/echo-web.test.mjs
//
// Without Chromium the test says so and skips; with PARLEY_REQUIRE_SERVICES=1
// it fails instead. PARLEY_E2E_SERVER names a prebuilt e2eserver.
import assert from "node:assert/strict";
import { copyFileSync } from "node:fs";
import path from "node:path";
import { after, before, describe, test } from "node:test";
import {
  bundle,
  chromiumMissing,
  goBuild,
  launchChromium,
  startServer,
  tempDir,
  typecheck,
  watchErrors,
} from "./browser.mjs";

const skip = chromiumMissing();

describe("echo page in Chromium", { skip }, () => {
  let dir, cleanup, server, browser, base;

  before(async () => {
    [dir, cleanup] = tempDir("parley-echo-web-");
    typecheck("examples/echo-web");
    const www = path.join(dir, "www");
    await bundle("examples/echo-web/main.ts", path.join(www, "app.js"));
    copyFileSync(path.join(import.meta.dirname, "..", "index.html"), path.join(www, "index.html"));
    let bin = process.env.PARLEY_E2E_SERVER;
    if (!bin) {
      bin = path.join(dir, "e2eserver");
      goBuild("./internal/e2e/cmd/e2eserver", bin);
    }
    server = await startServer(bin, ["-static", www]);
    const ws = new URL(server.line.trim()); // ws://127.0.0.1:PORT/parley
    base = `http://${ws.host}/`;
    browser = await launchChromium();
  });

  after(async () => {
    await browser?.close();
    await server?.stop();
    cleanup?.();
  });

  for (const protocol of ["proto", "json"]) {
    test(`echo, a deadline and a server error over parley.v1+${protocol}`, async () => {
      const page = await browser.newPage();
      const errors = watchErrors(page);
      try {
        await page.goto(`${base}?protocol=${protocol}`);
        await page.locator("#state", { hasText: /^open$/ }).waitFor({ timeout: 10_000 });
        assert.equal(await page.textContent("#protocol"), `parley.v1+${protocol}`);

        // A round trip.
        await page.fill("#text", `héllo from ${protocol} ✓`);
        await page.click("#echo");
        const echo = page.locator("#echo-result[data-done]");
        await echo.waitFor();
        assert.equal(await echo.textContent(), `echoed: héllo from ${protocol} ✓`);

        // The method's 300 ms default deadline cuts a 1 s sleep short.
        await page.click("#timeout");
        const timeout = page.locator("#timeout-result[data-done]");
        await timeout.waitFor();
        assert.equal(await timeout.getAttribute("data-code"), "deadline_exceeded");
        assert.match(await timeout.textContent(), /^deadline_exceeded: /);
        const ms = Number(await timeout.getAttribute("data-ms"));
        assert.ok(ms >= 250 && ms < 900, `timed out after ${ms} ms, want about 300`);

        // Within its deadline the same call succeeds, and saw the deadline.
        await page.fill("#sleep-ms", "10");
        await page.click("#timeout");
        await timeout.waitFor();
        assert.match(await timeout.textContent(), /^slept 10 ms \(deadline (2\d\d|300) ms\)$/);

        // A server error arrives with its code and message.
        await page.click("#fail");
        const fail = page.locator("#fail-result[data-done]");
        await fail.waitFor();
        assert.equal(await fail.textContent(), "not_found: no such thing");
        assert.equal(await fail.getAttribute("data-code"), "not_found");

        assert.deepEqual(errors, []);
      } finally {
        await page.close();
      }
    });
  }
});
