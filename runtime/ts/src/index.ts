/**
 * Parley's TypeScript runtime: typed RPC over one WebSocket. Generated
 * clients (protoc-gen-parley-ts) call {@link Connection.call} with a
 * {@link MethodSpec} per unary method, and the functions
 * {@link serverStream}, {@link clientStream} and {@link bidiStream} for
 * streaming ones; generated subscribers handle events with
 * {@link onEvent}, and register functions serve the server's calls with
 * {@link handle}. Those are functions, not methods, so that an
 * application bundles only what it uses. The JSON protocol
 * (parley.v1+json) is a module of its own, `@parleyrpc/runtime/json`,
 * bundled only by applications that import it.
 *
 * @packageDocumentation
 */
export { type Code, codeFromNumber, codeToNumber } from "./code.js";
export { ParleyError, type ErrorDetail } from "./error.js";
export type { BidiStreamCall, CallOptions, ClientStreamCall, MethodSpec } from "./method.js";
export { binaryProtocol, type Protocol } from "./protocol.js";
export { bidiStream, clientStream, serverStream } from "./stream.js";
export { handle, type HandlerContext } from "./handle.js";
export { onEvent } from "./event.js";
export {
  Connection,
  agent,
  defaultMaxMessageBytes,
  defaultReconnect,
  defaultStreamBufferBytes,
  defaultStreamWindow,
  defaultStreamWindowBytes,
  defaultTimeoutMs,
  type ConnectionOptions,
  type ConnectionState,
  type ReconnectOptions,
  type Session,
  type WebSocketConstructor,
  type WebSocketLike,
} from "./connection.js";
