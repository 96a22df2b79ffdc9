// Bundle size of @parleyrpc/runtime next to peers' browser clients, measured
// the way runtime/ts/scripts/size.mjs measures the runtime: esbuild bundle,
// minify, esm, es2022, browser platform, gzip level 9. Each client gets a
// tiny entry that does what an app does with it (connect, one call or
// subscription), so tree-shaking leaves what an app would ship.
//
// "min" and "min+gz" leave out the protobuf runtime (@bufbuild/protobuf;
// starpc's @aptre/protobuf-es-lite) and the app's generated schemas: an app
// has both whatever RPC client it uses, as runtime/ts/scripts/size.mjs
// leaves protobuf-es out. The last column bundles them too (the parts the
// client and the schemas use), for comparing with clients that need no
// protobuf runtime at all.
//
// Run from the repository root: node bench/ts/size-peers.mjs
// (the peers are root devDependencies; the runtime is bundled from
// runtime/ts/src, so no build is needed).
import { build } from "esbuild";
import { execFileSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { fileURLToPath } from "node:url";
import { gzipSync } from "node:zlib";

const root = fileURLToPath(new URL("../..", import.meta.url));
const require = createRequire(root + "package.json");
// The app's generated schemas, imported as "echo-schemas": protoc-gen-es
// v2.17.0 (target=js) output for
//   syntax = "proto3"; package size.v1;
//   message EchoRequest { string text = 1; bytes data = 2; }
//   message EchoResponse { string text = 1; bytes data = 2; }
//   service EchoService { rpc Echo(EchoRequest) returns (EchoResponse); }
// Without parley/v1/options.proto (see the note printed under the table).
const schemas = "echo-schemas";
const schemasSource = `
import { fileDesc, messageDesc, serviceDesc } from "@bufbuild/protobuf/codegenv2";
export const file_size_v1_echo = /*@__PURE__*/
  fileDesc("ChJzaXplL3YxL2VjaG8ucHJvdG8SB3NpemUudjEiKQoLRWNob1JlcXVlc3QSDAoEdGV4dBgBIAEoCRIMCgRkYXRhGAIgASgMIioKDEVjaG9SZXNwb25zZRIMCgR0ZXh0GAEgASgJEgwKBGRhdGEYAiABKAwyQgoLRWNob1NlcnZpY2USMwoERWNobxIULnNpemUudjEuRWNob1JlcXVlc3QaFS5zaXplLnYxLkVjaG9SZXNwb25zZWIGcHJvdG8z");
export const EchoRequestSchema = /*@__PURE__*/ messageDesc(file_size_v1_echo, 0);
export const EchoResponseSchema = /*@__PURE__*/ messageDesc(file_size_v1_echo, 1);
export const EchoService = /*@__PURE__*/ serviceDesc(file_size_v1_echo, 0);
`;

const echoSpec = `{
  procedure: "/size.v1.EchoService/Echo",
  input: EchoRequestSchema,
  output: EchoResponseSchema,
  idempotent: true,
}`;

const clients = [
  {
    name: "@parleyrpc/runtime",
    pkg: "@parleyrpc/runtime",
    proto: true,
    features:
      "one WebSocket; unary calls, deadlines, cancel, metadata, error details, keepalive, GoAway, " +
      "reconnect with backoff and session resume (calls re-sent); " +
      "server events (onEvent), server/client/bidi streams with credit windows (serverStream, clientStream, bidiStream) and " +
      "server->client calls (handle) are functions an app bundles only if it calls them (npm run size: +0.1 KB, +1.2 KB and +0.5 KB); " +
      "binary protobuf (protojson is the next row's opt-in module); no client interceptors, no fallback transport",
    entry: `
      import { Connection } from "@parleyrpc/runtime";
      import { EchoRequestSchema, EchoResponseSchema } from "${schemas}";
      const conn = new Connection("wss://example.com/parley");
      export const res = await conn.call(${echoSpec}, { text: "hi" });`,
  },
  {
    name: "@parleyrpc/runtime with @parleyrpc/runtime/json",
    pkg: "@parleyrpc/runtime",
    proto: true,
    features: "as the row above, speaking protojson (parley.v1+json) with the jsonProtocol it imports",
    entry: `
      import { Connection } from "@parleyrpc/runtime";
      import { jsonProtocol } from "@parleyrpc/runtime/json";
      import { EchoRequestSchema, EchoResponseSchema } from "${schemas}";
      const conn = new Connection("wss://example.com/parley", { protocol: jsonProtocol });
      export const res = await conn.call(${echoSpec}, { text: "hi" });`,
  },
  {
    name: "@connectrpc/connect-web, Connect protocol",
    pkg: "@connectrpc/connect-web",
    proto: true,
    features:
      "fetch per call (HTTP/1.1 or 2); unary and server streaming (no client/bidi " +
      "streams in browsers); binary or JSON; deadlines, cancel, headers/trailers, " +
      "interceptors, error details; GET for idempotent calls; no push, no connection state",
    entry: `
      import { createClient } from "@connectrpc/connect";
      import { createConnectTransport } from "@connectrpc/connect-web";
      import { EchoService } from "${schemas}";
      const client = createClient(EchoService, createConnectTransport({ baseUrl: "https://example.com" }));
      export const res = await client.echo({ text: "hi" });`,
  },
  {
    name: "@connectrpc/connect-web, gRPC-web",
    pkg: "@connectrpc/connect-web",
    proto: true,
    features:
      "as the Connect row, gRPC-web framing instead (needs a gRPC-web proxy or server)",
    entry: `
      import { createClient } from "@connectrpc/connect";
      import { createGrpcWebTransport } from "@connectrpc/connect-web";
      import { EchoService } from "${schemas}";
      const client = createClient(EchoService, createGrpcWebTransport({ baseUrl: "https://example.com" }));
      export const res = await client.echo({ text: "hi" });`,
  },
  {
    name: "socket.io-client",
    pkg: "socket.io-client",
    proto: false,
    features:
      "Engine.IO: HTTP long-polling, WebSocket and WebTransport with upgrade; untyped " +
      "events and acks (request/response), namespaces, binary attachments, heartbeats, " +
      "reconnect with backoff, offline buffering, state recovery; JSON, no schemas",
    entry: `
      import { io } from "socket.io-client";
      const socket = io("https://example.com");
      socket.on("message", (m) => console.log(m));
      export const res = await socket.emitWithAck("echo", { text: "hi" });`,
  },
  {
    name: "centrifuge (JSON)",
    pkg: "centrifuge",
    proto: false,
    features:
      "WebSocket, HTTP-streaming, SSE, WebTransport with fallback; channel subscriptions, " +
      "publish, presence, history, recovery of missed publications, RPC (untyped), " +
      "tokens and refresh, delta compression, ping/pong, reconnect with backoff; JSON; " +
      "a prebuilt single module, so nothing is tree-shaken",
    entry: `
      import { Centrifuge } from "centrifuge";
      const c = new Centrifuge("wss://example.com/connection/websocket");
      const sub = c.newSubscription("room");
      sub.on("publication", (ctx) => console.log(ctx.data));
      sub.subscribe();
      c.connect();
      export const res = await c.rpc("echo", { text: "hi" });`,
  },
  {
    name: "centrifuge (protobuf)",
    pkg: "centrifuge",
    proto: false,
    features: "as the JSON row, Protobuf protocol (bundles protobufjs; payloads stay bytes)",
    entry: `
      import { Centrifuge } from "centrifuge/build/protobuf";
      const c = new Centrifuge("wss://example.com/connection/websocket?format=protobuf");
      const sub = c.newSubscription("room");
      sub.on("publication", (ctx) => console.log(ctx.data));
      sub.subscribe();
      c.connect();
      export const res = await c.rpc("echo", new TextEncoder().encode("hi"));`,
  },
  {
    name: "starpc",
    pkg: "starpc",
    proto: true,
    features:
      "one WebSocket multiplexed with yamux (libp2p): unary, server/client/bidi streams " +
      "with yamux windows, cancel, yamux keepalive; binary protobuf (protobuf-es-lite); the page " +
      "can also serve calls (a Server, not in this bundle); no deadlines, no reconnect, no events",
    // The bare entry sends bytes through the Client the generated clients
    // call; the "with protobuf" one uses a generated client (starpc/echo).
    entry: `
      import { WebSocketConn } from "starpc";
      const conn = new WebSocketConn(new WebSocket("wss://example.com/api"), "outbound");
      export const res = await conn.buildClient().request("echo.Echoer", "Echo", new Uint8Array([10, 2, 104, 105]));`,
    fullEntry: `
      import { WebSocketConn } from "starpc";
      import { EchoerClient } from "starpc/echo";
      const conn = new WebSocketConn(new WebSocket("wss://example.com/api"), "outbound");
      export const res = await new EchoerClient(conn.buildClient()).Echo({ body: "hi" });`,
  },
];

// Leaves out @bufbuild/protobuf and the app's schemas (and starpc's
// protobuf runtime, @aptre/protobuf-es-lite, which its framing uses as ours
// uses @bufbuild/protobuf/wire).
const leaveOutProtobuf = {
  name: "leave-out-protobuf",
  setup(b) {
    b.onResolve({ filter: /^(@bufbuild\/protobuf|@aptre\/protobuf-es-lite)(\/.*)?$|^echo-schemas$/ }, (args) => ({
      path: args.path,
      external: true,
    }));
  },
};

// Serves "echo-schemas" from schemasSource.
const echoSchemas = {
  name: "echo-schemas",
  setup(b) {
    b.onResolve({ filter: /^echo-schemas$/ }, () => ({ path: "echo-schemas", namespace: "echo-schemas" }));
    b.onLoad({ filter: /.*/, namespace: "echo-schemas" }, () => ({
      contents: schemasSource,
      resolveDir: root,
      loader: "js",
    }));
  },
};

async function measure(entry, withProtobuf) {
  const result = await build({
    stdin: { contents: entry, resolveDir: root, sourcefile: "entry.js", loader: "js" },
    bundle: true,
    minify: true,
    format: "esm",
    target: "es2022",
    platform: "browser",
    alias: { "@parleyrpc/runtime": root + "runtime/ts/src/index.ts", "@parleyrpc/runtime/json": root + "runtime/ts/src/json.ts" },
    plugins: [withProtobuf ? echoSchemas : leaveOutProtobuf],
    write: false,
    logLevel: "error",
  });
  const code = result.outputFiles[0].contents;
  return { min: code.length, gz: gzipSync(code, { level: 9 }).length };
}

function version(pkg) {
  if (pkg === "@parleyrpc/runtime") {
    const v = JSON.parse(readFileSync(root + "runtime/ts/package.json", "utf8")).version;
    try {
      const head = execFileSync("git", ["rev-parse", "--short", "HEAD"], { cwd: root, stdio: ["ignore", "pipe", "ignore"] }).toString().trim();
      const dirty = execFileSync("git", ["status", "--porcelain", "runtime/ts/src"], { cwd: root, stdio: ["ignore", "pipe", "ignore"] }).toString() !== "";
      return `${v} (${head}${dirty ? ", src modified" : ""})`;
    } catch {
      return v;
    }
  }
  const dir = require.resolve(pkg).replace(/node_modules\/(.*)$/, (m, rest) => {
    const parts = rest.split("/");
    return "node_modules/" + parts.slice(0, rest.startsWith("@") ? 2 : 1).join("/");
  });
  return JSON.parse(readFileSync(dir + "/package.json", "utf8")).version;
}

const n = (x) => x.toLocaleString("en-US");
console.log("| client | version | includes | min | min+gz | min+gz with protobuf runtime and Echo schemas |");
console.log("|---|---|---|---:|---:|---:|");
for (const c of clients) {
  const bare = await measure(c.entry, false);
  const full = c.proto ? await measure(c.fullEntry ?? c.entry, true) : null;
  console.log(
    `| ${c.name} | ${version(c.pkg)} | ${c.features} | ${n(bare.min)} | ${n(bare.gz)} | ${full ? n(full.gz) : "(none needed)"} |`,
  );
}

// What an app pays for parley/v1/options.proto's schema, which the
// generated _pb files of every .proto that sets a parley option import.
const optionsEntry =
  clients[0].entry +
  `\nimport { file_parley_v1_options } from "./bench/ts/gen/parley/v1/options_pb.js";
  console.log(file_parley_v1_options);`;
const withOptions = await measure(optionsEntry, true);
const without = await measure(clients[0].entry, true);
console.log(
  `\nA .proto that sets a parley option (timeout_ms, implemented_by) makes its _pb file import ` +
    `parley/v1/options.proto's schema: +${n(withOptions.gz - without.gz)} B min+gz on the ` +
    `first row's last column (protobuf-es bundles google/protobuf/descriptor.proto's anyway).`,
);
