// The echo page: three buttons, each making a real call to the Go server
// (internal/e2e/cmd/e2eserver) with the generated EchoServiceClient, and
// showing what came back. Bundled by esbuild into app.js (see build.mjs).
// ?protocol=json switches the connection to parley.v1+json, which the page
// imports from @parleyrpc/runtime/json for that (an app without such a
// switch leaves it out, and with it protobuf-es's JSON code).
import { Connection, ParleyError, binaryProtocol } from "@parleyrpc/runtime";
import { jsonProtocol } from "@parleyrpc/runtime/json";
import { EchoServiceClient } from "./gen/e2e/v1/echo_parley";

const $ = <T extends HTMLElement = HTMLElement>(id: string): T => {
  const el = document.getElementById(id);
  if (!el) throw new Error(`#${id} is missing`);
  return el as T;
};

const protocol = new URLSearchParams(location.search).get("protocol") === "json" ? jsonProtocol : binaryProtocol;
const url = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/parley`;
const conn = new Connection(url, { protocol });
const echo = new EchoServiceClient(conn);

$("protocol").textContent = protocol.name;
const showState = () => {
  const s = conn.state;
  $("state").textContent = s.status === "closed" ? `closed (${s.error.message})` : s.status;
};
conn.onStateChange(showState);
showState();

// run shows a call's outcome in an output element: its result, or the
// error's code and message. data-done marks it settled, for the test.
function run(button: string, output: string, call: () => Promise<string>): void {
  $(button).addEventListener("click", async () => {
    const out = $<HTMLOutputElement>(output);
    out.className = "";
    out.textContent = "…";
    delete out.dataset.done;
    const started = performance.now();
    try {
      out.textContent = await call();
    } catch (e) {
      const err = ParleyError.from(e);
      out.className = "error";
      out.dataset.code = err.code;
      out.textContent = `${err.code}: ${err.rawMessage}`;
    }
    out.dataset.ms = String(Math.round(performance.now() - started));
    out.dataset.done = "true";
  });
}

run("echo", "echo-result", async () => {
  const res = await echo.echo({ text: $<HTMLInputElement>("text").value });
  return `echoed: ${res.text}`;
});

run("timeout", "timeout-result", async () => {
  const ms = Number($<HTMLInputElement>("sleep-ms").value);
  const res = await echo.sleepWithDefault({ ms, token: `page-${Date.now()}` });
  return `slept ${ms} ms (deadline ${res.deadlineMs} ms)`;
});

run("fail", "fail-result", async () => {
  await echo.fail({ code: "not_found", message: "no such thing" });
  return "no error?";
});
