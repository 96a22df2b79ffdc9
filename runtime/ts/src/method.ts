import type { DescMessage } from "@bufbuild/protobuf";

/**
 * MethodSpec describes a method to the runtime. Generated clients declare
 * one per method; it is read-only once built and may be shared by any
 * number of connections.
 */
export interface MethodSpec<I extends DescMessage = DescMessage, O extends DescMessage = DescMessage> {
  /** The method's full name, gRPC style: "/chat.v1.ChatService/Join". */
  readonly procedure: string;
  /** The request's protobuf-es schema. */
  readonly input: I;
  /** The response's protobuf-es schema. */
  readonly output: O;
  /**
   * The deadline a call gets when its caller sets none, from the proto's
   * `option (parley.v1.method).timeout_ms`. Absent or 0 means the
   * connection's default.
   */
  readonly timeoutMs?: number;
  /**
   * True when the proto's `idempotency_level` is IDEMPOTENT or
   * NO_SIDE_EFFECTS: the call may safely run more than once.
   */
  readonly idempotent?: boolean;
}

/** Options of one call. */
export interface CallOptions {
  /**
   * The call's deadline in milliseconds, counted from the moment the call
   * is made (time spent waiting for the connection included). Overrides
   * the method's and the connection's default. 0 or less means no
   * deadline.
   */
  timeoutMs?: number;
  /** Aborting the signal fails the call with "canceled" and cancels it on the server. */
  signal?: AbortSignal;
  /** Call metadata (like HTTP headers), for the server's interceptors. */
  metadata?: Record<string, string>;
}
