import type { DescMessage, MessageInitShape, MessageShape } from "@bufbuild/protobuf";

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
  /**
   * The method's kind, from `stream` in the proto: "unary" (the default
   * when absent), "server_streaming", "client_streaming" or
   * "bidi_streaming".
   */
  readonly kind?: "unary" | "server_streaming" | "client_streaming" | "bidi_streaming";
}

/**
 * A client-streaming call in progress (see {@link clientStream}).
 */
export interface ClientStreamCall<I extends DescMessage, O extends DescMessage> {
  /**
   * Sends one request. Resolves once it went out under the server's
   * credit (so awaiting each send paces the sender to the server); rejects
   * with the call's ParleyError once the call ended, or with
   * "failed_precondition" after closeAndReceive. A send nobody awaits
   * (`void call.send(m)`) is no unhandled rejection: the call's error
   * reaches closeAndReceive (or the loop of a bidi stream).
   */
  send(message: MessageShape<I> | MessageInitShape<I>): Promise<void>;
  /** Half-closes the requests and resolves with the response, or rejects with the call's ParleyError. */
  closeAndReceive(): Promise<MessageShape<O>>;
}

/**
 * A bidirectional streaming call in progress (see
 * {@link bidiStream}): send requests into it and iterate its
 * responses. Iteration ends when the server completes the call and throws
 * its ParleyError when it fails; leaving the loop early (break, throw)
 * cancels the call.
 */
export interface BidiStreamCall<I extends DescMessage, O extends DescMessage> extends AsyncIterable<MessageShape<O>> {
  /** Sends one request; as {@link ClientStreamCall.send}. */
  send(message: MessageShape<I> | MessageInitShape<I>): Promise<void>;
  /** Half-closes the requests (StreamEnd, after the sends already made); responses keep coming. */
  closeSend(): void;
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
  /** Aborting the signal fails the call (or stream) with "canceled" and cancels it on the server. */
  signal?: AbortSignal;
  /** Call metadata (like HTTP headers), for the server's interceptors. */
  metadata?: Record<string, string>;
}
