// Builds the echo page into examples/echo-web/build (index.html + app.js),
// for trying it by hand:
//
//   node examples/echo-web/build.mjs
//   go run ./internal/e2e/cmd/e2eserver -static examples/echo-web/build
//
// then open http://<the printed host>/ (add ?protocol=json for JSON).
import { copyFileSync } from "node:fs";
import path from "node:path";
import { bundle } from "./test/browser.mjs";

const out = path.join(import.meta.dirname, "build");
await bundle("examples/echo-web/main.ts", path.join(out, "app.js"));
copyFileSync(path.join(import.meta.dirname, "index.html"), path.join(out, "index.html"));
console.log(`built ${path.relative(process.cwd(), out) || "."}: serve it with go run ./internal/e2e/cmd/e2eserver -static ${path.relative(process.cwd(), out)}`);
