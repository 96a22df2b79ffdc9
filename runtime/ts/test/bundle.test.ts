// What an application bundles, through the package's exports (dist/, as an
// application resolves it; the test script builds it first): one speaking
// binary gets neither protobuf-es's JSON functions nor the JSON frame
// codec; one that imports @parleyrpc/runtime/json gets them, sharing the
// rest of the runtime with the main module.
import { build } from "esbuild";
import assert from "node:assert/strict";
import { test } from "node:test";
import { fileURLToPath } from "node:url";

const pkg = fileURLToPath(new URL("../..", import.meta.url)); // runtime/ts, from build/test

/** Bundles entry as an application would, protobuf-es left out (so that what the runtime imports from it is named). */
async function bundle(entry: string): Promise<string> {
  const result = await build({
    stdin: { contents: entry, resolveDir: pkg, loader: "js" },
    bundle: true,
    format: "esm",
    platform: "browser",
    target: "es2022",
    minifyWhitespace: true,
    minifySyntax: true,
    external: ["@bufbuild/protobuf", "@bufbuild/protobuf/*"],
    write: false,
    logLevel: "silent",
  });
  return result.outputFiles[0]!.text;
}

/** The names the bundle imports from @bufbuild/protobuf itself. */
const protobufImports = (code: string) =>
  [...code.matchAll(/import\s*\{([^}]*)\}\s*from\s*"@bufbuild\/protobuf"/g)].flatMap((m) => m[1]!.split(",").map((s) => s.trim().split(/\s+as\s+/)[0]));

test("a binary application bundles no JSON code", async () => {
  const code = await bundle(`export * from "@parleyrpc/runtime";`);
  const imports = protobufImports(code);
  assert.ok(imports.includes("fromBinary"), `imports ${imports.join(", ")}`);
  assert.ok(!imports.includes("toJson") && !imports.includes("fromJson"), `imports ${imports.join(", ")}`);
  assert.doesNotMatch(code, /parley\.v1\+json|\bencodeJson\b|\bdecodeJson\b|base64Encode/);
});

test("@parleyrpc/runtime/json brings protobuf-es's JSON functions and shares the rest of the runtime", async () => {
  const code = await bundle(`export * from "@parleyrpc/runtime"; export * from "@parleyrpc/runtime/json";`);
  const imports = protobufImports(code);
  assert.ok(imports.includes("toJson") && imports.includes("fromJson"), `imports ${imports.join(", ")}`);
  assert.match(code, /parley\.v1\+json/);
  assert.equal(code.match(/class _ParleyError\b/g)?.length, 1, "one copy of the runtime");
  assert.equal(code.match(/\bbinaryProtocol=/g)?.length, 1, "one binary protocol");
});
