// The two encodings every scenario runs in, by the names the tests use:
// "proto" is the default binary protocol, "json" the one an application
// imports from @parleyrpc/runtime/json (here from its source).
import { binaryProtocol } from "../src/index.js";
import { jsonProtocol } from "../src/json.js";

export const protocols = { proto: binaryProtocol, json: jsonProtocol };
