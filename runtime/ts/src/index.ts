/**
 * Parley's TypeScript runtime: typed RPC over one WebSocket. Generated
 * clients (protoc-gen-parley-ts) call {@link Connection.call} with a
 * {@link MethodSpec} per method.
 *
 * @packageDocumentation
 */
export { type Code, codeFromNumber, codeToNumber } from "./code.js";
export { ParleyError, type ErrorDetail } from "./error.js";
export type { BidiStreamCall, CallOptions, ClientStreamCall, MethodSpec } from "./method.js";
export {
  Connection,
  agent,
  defaultMaxMessageBytes,
  defaultReconnect,
  defaultStreamWindow,
  defaultTimeoutMs,
  type HandlerContext,
  type ConnectionOptions,
  type ConnectionState,
  type ReconnectOptions,
  type Session,
  type WebSocketConstructor,
  type WebSocketLike,
} from "./connection.js";
