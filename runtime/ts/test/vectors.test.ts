// Shared test vectors: frames encoded by Go (internal/testdata/frames,
// written by the Go runtime's tests) decode here and encode back identically.
// The binary form must match byte for byte. Go's protojson output is
// deliberately unstable in whitespace, so the JSON form is compared in its
// compact form (JSON.stringify of the parsed vector): same keys, same order,
// same values.
import assert from "node:assert/strict";
import { existsSync, readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { test } from "node:test";
import { decodeBinary, encodeBinary } from "../src/frame.js";
import { decodeJson, encodeJson } from "../src/jsonframe.js";

const file = fileURLToPath(new URL("../../../../internal/testdata/frames/vectors.json", import.meta.url));

interface Vector {
  name: string;
  binary_hex: string;
  json: unknown;
}

const hex = (b: Uint8Array) => Buffer.from(b).toString("hex");

if (!existsSync(file)) {
  const why = `!!! SKIPPED: ${file} does not exist; the shared frame vectors are not tested !!!`;
  console.warn(why);
  test("shared frame vectors", { skip: why }, () => {});
} else {
  const vectors = JSON.parse(readFileSync(file, "utf8")) as Vector[];
  test("there are vectors", () => assert.ok(vectors.length > 0));
  for (const v of vectors) {
    test(`${v.name}: binary`, () => {
      const bytes = Buffer.from(v.binary_hex, "hex");
      assert.equal(hex(encodeBinary(decodeBinary(bytes))), v.binary_hex);
    });
    test(`${v.name}: json`, () => {
      const text = typeof v.json == "string" ? v.json : JSON.stringify(v.json);
      const compact = JSON.stringify(JSON.parse(text));
      assert.equal(encodeJson(decodeJson(text)), compact);
    });
  }
}
