// Browser test of the chat example: two Chromium pages (one speaking
// parley.v1+proto, the other parley.v1+json) sign in to the same room of a
// real chat-server and see each other's messages, presence, typing (the
// page's bidirectional TypingStream) and a kick that the server confirms
// with the kicked page first (a server-to-client call). Then the server
// process restarts under two open pages: they show it reconnecting, get a
// new session, re-join their room and work again.
//
//   node --test examples/chat/web/test/chat.test.mjs
//
// The page is bundled from its current source into a temporary directory
// and served with chat-server -web, so the test checks the source; `make
// check-generated` checks that the embedded static/app.js matches it.
// Without Chromium the test says so and skips; with
// PARLEY_REQUIRE_SERVICES=1 it fails instead.
import assert from "node:assert/strict";
import { copyFileSync } from "node:fs";
import path from "node:path";
import { after, before, describe, test } from "node:test";
// The browser helpers are shared with the echo page's test.
import {
  bundle,
  chromiumMissing,
  goBuild,
  launchChromium,
  startServer,
  tempDir,
  typecheck,
  watchErrors,
} from "../../../echo-web/test/browser.mjs";

const skip = chromiumMissing();
const web = path.resolve(import.meta.dirname, "..");

describe("chat in two Chromium pages", { skip }, () => {
  let cleanup, server, browser, base, bin, www;

  before(async () => {
    let dir;
    [dir, cleanup] = tempDir("parley-chat-web-");
    typecheck("examples/chat/web");
    www = path.join(dir, "www");
    await bundle("examples/chat/web/src/main.ts", path.join(www, "app.js"));
    for (const f of ["index.html", "style.css"]) copyFileSync(path.join(web, "static", f), path.join(www, f));
    bin = path.join(dir, "chat-server");
    goBuild("./examples/chat/cmd/chat-server", bin);
    server = await startServer(bin, ["-addr", "127.0.0.1:0", "-web", www]);
    const m = /open (http:\/\/\S+\/)/.exec(server.line);
    assert.ok(m, `chat-server printed ${JSON.stringify(server.line)}`);
    base = m[1];
    browser = await launchChromium();
  });

  after(async () => {
    await browser?.close();
    await server?.stop();
    cleanup?.();
  });

  /** Opens a signed-in page, waiting until it has joined the room. */
  async function open(user, protocol) {
    const page = await browser.newPage();
    const errors = watchErrors(page);
    await page.goto(`${base}?user=${user}&room=lobby&protocol=${protocol}`);
    await page.locator("#status[data-status=open]").waitFor({ timeout: 10_000 });
    await page.locator(`#members li[data-user=${user}][data-online=true]`).waitFor();
    return { page, errors };
  }

  const member = (page, user, online) => page.locator(`#members li[data-user=${user}][data-online=${online}]`);
  const message = (page, user, text) => page.locator(`#messages li[data-user=${user}] .text`, { hasText: text });
  const system = (page, text) => page.locator("#messages li.system", { hasText: text });

  async function send(page, text) {
    await page.fill("#text", text);
    await page.press("#text", "Enter");
  }

  test("messages, presence, typing and a confirmed kick", async () => {
    const ada = await open("ada", "proto");
    let bob = await open("bob", "json");

    // Presence and membership, both ways.
    await member(bob.page, "ada", true).waitFor();
    await member(ada.page, "bob", true).waitFor();
    await system(ada.page, "bob joined").waitFor();

    // Typing goes over each page's bidirectional TypingStream: ada's
    // stream sends, bob's receives.
    await ada.page.fill("#text", "hello b");
    await bob.page.locator("#typing[data-users=ada]", { hasText: "ada is typing…" }).waitFor();

    // Messages, both ways; posting stops the typing indicator.
    await send(ada.page, "hello bob");
    await message(bob.page, "ada", "hello bob").waitFor();
    await message(ada.page, "ada", "hello bob").waitFor();
    await bob.page.locator('#typing[data-users=""]').waitFor();
    await send(bob.page, "hi ada, from JSON");
    await message(ada.page, "bob", "hi ada, from JSON").waitFor();
    assert.equal(await ada.page.locator("#messages li[data-id]").count(), 2);

    // Typing from bob's side too: the stream works both ways on each page.
    await bob.page.fill("#text", "typing…");
    await ada.page.locator("#typing[data-users=bob]").waitFor();
    await bob.page.fill("#text", "");
    await ada.page.locator('#typing[data-users=""]').waitFor();

    // bob closes his page: ada sees him go offline; he comes back, and the
    // history is there.
    assert.deepEqual(bob.errors, []);
    await bob.page.close();
    await member(ada.page, "bob", false).waitFor();
    bob = await open("bob", "json");
    await member(ada.page, "bob", true).waitFor();
    await message(bob.page, "ada", "hello bob").waitFor();

    // ada asks bob to leave: the server calls ConfirmLeave on bob's page,
    // which asks him. He stays, then accepts.
    await send(ada.page, "/kick bob too chatty");
    const dialog = bob.page.locator("#confirm[open]");
    await dialog.waitFor();
    assert.equal(await bob.page.textContent("#confirm-text"), "ada asks you to leave lobby: “too chatty”");
    await bob.page.click("#confirm-stay");
    await system(ada.page, "bob stays: bob would rather stay").waitFor();
    await member(ada.page, "bob", true).waitFor();

    await send(ada.page, "/kick bob");
    await dialog.waitFor();
    await bob.page.click("#confirm-leave");
    await system(ada.page, "bob left (removed by ada)").waitFor();
    await system(bob.page, "you left lobby (removed by ada)").waitFor();
    assert.equal(await member(ada.page, "bob", true).count(), 0);
    assert.ok(await bob.page.isDisabled("#text"));

    assert.deepEqual(ada.errors, []);
    assert.deepEqual(bob.errors, []);
    await ada.page.close();
    await bob.page.close();
  });

  test("the server restarting: the pages show it reconnecting, then re-join and work again", async () => {
    const ada = await open("ada", "proto");
    const bob = await open("bob", "json");
    await member(ada.page, "bob", true).waitFor();
    await send(ada.page, "before the restart");
    await message(bob.page, "ada", "before the restart").waitFor();

    // Stop the server (it says GoAway and closes): both pages reconnect,
    // with backoff, and say so while it is away.
    await server.stop();
    for (const { page } of [ada, bob]) {
      await page.locator("#status[data-status=reconnecting]", { hasText: "reconnecting (attempt" }).waitFor({ timeout: 10_000 });
    }
    await ada.page.locator("#status[data-status=reconnecting]", { hasText: /attempt [2-9]/ }).waitFor({ timeout: 10_000 });
    server = await startServer(bin, ["-addr", new URL(base).host, "-web", www]);

    // A new process has no session to resume: the pages are told
    // (resumed = false), re-join the room and reload its history, which
    // the restarted in-memory server no longer has.
    for (const { page } of [ada, bob]) {
      await page.locator("#status[data-status=open][data-resumed=false]", { hasText: "reconnected (new session)" }).waitFor({ timeout: 15_000 });
      await system(page, "reconnected with a new session: rejoined lobby").waitFor();
      await member(page, "ada", true).waitFor();
      await member(page, "bob", true).waitFor();
    }
    assert.equal(await message(bob.page, "ada", "before the restart").count(), 0);

    // Messages and typing work again, both ways.
    await send(bob.page, "after the restart");
    await message(ada.page, "bob", "after the restart").waitFor();
    await send(ada.page, "hello again");
    await message(bob.page, "ada", "hello again").waitFor();
    await ada.page.fill("#text", "typing again");
    await bob.page.locator("#typing[data-users=ada]").waitFor();

    // Chromium reports each refused WebSocket dial on the console; nothing else may go wrong.
    const unexpected = (errors) => errors.filter((e) => !/WebSocket connection to .* failed/.test(e));
    assert.deepEqual(unexpected(ada.errors), []);
    assert.deepEqual(unexpected(bob.errors), []);
    await ada.page.close();
    await bob.page.close();
  });

  test("a bad name is refused with unauthenticated", async () => {
    const page = await browser.newPage();
    try {
      await page.goto(base);
      await page.fill("#name", "no spaces");
      // The form's own validation would stop this name: go around it.
      await page.evaluate(() => document.getElementById("name").removeAttribute("pattern"));
      await page.click("#join");
      await page.locator("#signin-error", { hasText: "unauthenticated" }).waitFor();
    } finally {
      await page.close();
    }
  });
});
