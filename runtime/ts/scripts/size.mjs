// Reports the runtime's size as an application bundles it, for the default
// binary protocol (parley.v1+proto) and with the JSON one
// (@parleyrpc/runtime/json). Run after `tsc` (npm run size does both).
//
// Each size is an entry bundled from dist/ by esbuild (bundle, minify, esm,
// es2022, browser), then gzipped at level 9:
//   unary:   Connection alone: unary calls, reconnection, keepalive
//            (what an app without streaming methods or client-side
//            services bundles);
//   events:  that and onEvent, for the server's events;
//   streams: Connection and serverStream, clientStream and bidiStream;
//   binary:  everything @parleyrpc/runtime exports (export * from index.js):
//            those and handle, for client-side calls;
//   JSON:    that and everything @parleyrpc/runtime/json exports.
// "runtime" leaves @bufbuild/protobuf out, since an application has it
// anyway for its schemas. "with the protobuf-es it uses" bundles the parts of
// @bufbuild/protobuf the runtime calls (no schemas), which is where JSON
// costs most: protobuf-es's toJson and fromJson.
//
// It fails if the binary bundle takes protobuf-es's JSON functions or holds
// the JSON frame codec: binary-only applications must not ship them.
import { build } from "esbuild";
import { gzipSync } from "node:zlib";

const dist = new URL("../dist/", import.meta.url).pathname;
const entries = {
  unary: `export { Connection } from "./index.js";`,
  events: `export { Connection, onEvent } from "./index.js";`,
  streams: `export { Connection, bidiStream, clientStream, serverStream } from "./index.js";`,
  binary: `export * from "./index.js";`,
  json: `export * from "./index.js"; export * from "./json.js";`,
};

async function bundle(contents, withProtobuf, keepNames = false) {
  const result = await build({
    stdin: { contents, resolveDir: dist, sourcefile: "entry.js", loader: "js" },
    bundle: true,
    minifyWhitespace: true,
    minifySyntax: true,
    minifyIdentifiers: !keepNames,
    format: "esm",
    target: "es2022",
    platform: "browser",
    external: withProtobuf ? [] : ["@bufbuild/protobuf", "@bufbuild/protobuf/*"],
    write: false,
    logLevel: "error",
  });
  const code = result.outputFiles[0].contents;
  return { text: result.outputFiles[0].text, min: code.length, gz: gzipSync(code, { level: 9 }).length };
}

// What the binary bundle must not hold, read from a bundle that keeps its
// names, with protobuf-es left out (so that its imports are named).
const plain = (await bundle(entries.binary, false, true)).text;
const leaks = [/\b(toJson|fromJson)\b/, /parley\.v1\+json/, /\bencodeJson\b/].filter((re) => re.test(plain));
if (leaks.length) {
  console.error(`the binary bundle holds JSON code: ${leaks.join(", ")}`);
  process.exit(1);
}

const n = (x) => x.toLocaleString("en-US");
const sizes = {};
for (const [name, entry] of Object.entries(entries)) {
  sizes[name] = { runtime: await bundle(entry, false), full: await bundle(entry, true) };
}
const { unary, events, streams, binary, json } = sizes;
const row = (what, r, f) => `| ${what} | ${n(r.min)} | ${n(r.gz)} | ${n(f.min)} | ${n(f.gz)} |`;
const diff = (a, b) => ({ min: a.min - b.min, gz: a.gz - b.gz });
console.log("| @parleyrpc/runtime, bytes | min | min+gz | min, with the protobuf-es it uses | min+gz, with the protobuf-es it uses |");
console.log("|---|---:|---:|---:|---:|");
console.log(row("Connection: unary calls, reconnection, keepalive", unary.runtime, unary.full));
console.log(row("and onEvent, for events", events.runtime, events.full));
console.log(row("Connection and the stream functions", streams.runtime, streams.full));
console.log(row("everything (and handle): binary, the default", binary.runtime, binary.full));
console.log(row("with @parleyrpc/runtime/json", json.runtime, json.full));
console.log(row("the JSON module adds", diff(json.runtime, binary.runtime), diff(json.full, binary.full)));
