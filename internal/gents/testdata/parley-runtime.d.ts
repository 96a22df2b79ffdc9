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
}

export interface CallOptions {
  timeoutMs?: number;
  signal?: AbortSignal;
  metadata?: Record<string, string>;
}

export declare class Connection {
  call<I extends DescMessage, O extends DescMessage>(
    spec: MethodSpec<I, O>,
    request: MessageShape<I> | MessageInitShape<I>,
    options?: CallOptions,
  ): Promise<MessageShape<O>>;
}
