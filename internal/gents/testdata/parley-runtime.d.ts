// A stand-in for @parleyrpc/runtime's public API, so the golden files
// type-check before (and independently of) the real runtime's build. It
// declares exactly the surface generated code relies on; keep it in step
// with runtime/ts.
import type { DescMessage, MessageInitShape, MessageShape } from "@bufbuild/protobuf";

export interface MethodSpec<I extends DescMessage = DescMessage, O extends DescMessage = DescMessage> {
  readonly procedure: string;
  readonly input: I;
  readonly output: O;
  readonly timeoutMs?: number;
  readonly idempotent?: boolean;
  readonly kind?: "unary" | "server_streaming" | "client_streaming" | "bidi_streaming";
}

export interface CallOptions {
  timeoutMs?: number;
  signal?: AbortSignal;
  metadata?: Record<string, string>;
}

export interface ClientStreamCall<I extends DescMessage, O extends DescMessage> {
  send(message: MessageShape<I> | MessageInitShape<I>): Promise<void>;
  closeAndReceive(): Promise<MessageShape<O>>;
}

export interface BidiStreamCall<I extends DescMessage, O extends DescMessage> extends AsyncIterable<MessageShape<O>> {
  send(message: MessageShape<I> | MessageInitShape<I>): Promise<void>;
  closeSend(): void;
}

export declare class Connection {
  call<I extends DescMessage, O extends DescMessage>(
    spec: MethodSpec<I, O>,
    request: MessageShape<I> | MessageInitShape<I>,
    options?: CallOptions,
  ): Promise<MessageShape<O>>;
}

// Streams, events and server->client calls are free functions, not
// Connection methods, so that an app making only unary calls does not
// bundle them.
export declare function onEvent<I extends DescMessage>(
  connection: Connection,
  spec: MethodSpec<I, DescMessage>,
  handler: (event: MessageShape<I>) => void,
): () => void;

export declare function serverStream<I extends DescMessage, O extends DescMessage>(
  connection: Connection,
  spec: MethodSpec<I, O>,
  request: MessageShape<I> | MessageInitShape<I>,
  options?: CallOptions,
): AsyncIterable<MessageShape<O>>;

export declare function clientStream<I extends DescMessage, O extends DescMessage>(
  connection: Connection,
  spec: MethodSpec<I, O>,
  options?: CallOptions,
): ClientStreamCall<I, O>;

export declare function bidiStream<I extends DescMessage, O extends DescMessage>(
  connection: Connection,
  spec: MethodSpec<I, O>,
  options?: CallOptions,
): BidiStreamCall<I, O>;

export declare function handle<I extends DescMessage, O extends DescMessage>(
  connection: Connection,
  spec: MethodSpec<I, O>,
  handler: (
    request: MessageShape<I>,
    context: { signal: AbortSignal; metadata: Record<string, string> },
  ) => MessageShape<O> | MessageInitShape<O> | Promise<MessageShape<O> | MessageInitShape<O>>,
): () => void;
