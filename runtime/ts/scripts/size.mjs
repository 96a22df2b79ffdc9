// Reports the runtime's size as an application bundles it: dist/index.js
// bundled and minified by esbuild, @bufbuild/protobuf left out (the
// application has it anyway), then gzipped. Run after `tsc`.
import { build } from "esbuild";
import { gzipSync } from "node:zlib";

const result = await build({
  entryPoints: [new URL("../dist/index.js", import.meta.url).pathname],
  bundle: true,
  minify: true,
  format: "esm",
  target: "es2022",
  external: ["@bufbuild/protobuf", "@bufbuild/protobuf/*"],
  write: false,
});
const code = result.outputFiles[0].contents;
const gzipped = gzipSync(code, { level: 9 }).length;
console.log(`@parleyrpc/runtime: ${code.length} bytes minified, ${gzipped} bytes minified+gzipped (without @bufbuild/protobuf)`);
