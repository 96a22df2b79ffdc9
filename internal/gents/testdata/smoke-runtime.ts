// What smoke.ts's bundle imports as @parleyrpc/runtime (TestGoldenRuns
// aliases it): the runtime's functions the golden code calls, each passing
// its arguments on to the method of the same name of the connection it is
// given, smoke.ts's recorder. A generated method that called the wrong
// function, or passed another connection, fails the smoke test.
import type { DescMessage, MessageInitShape, MessageShape } from "@bufbuild/protobuf";
import type { BidiStreamCall, CallOptions, ClientStreamCall, Connection, MethodSpec } from "@parleyrpc/runtime";

type Context = { signal: AbortSignal; metadata: Record<string, string> };
type Reply<O extends DescMessage> = MessageShape<O> | MessageInitShape<O> | Promise<MessageShape<O> | MessageInitShape<O>>;

/** The methods of smoke.ts's recorder that stand for the functions below. */
export interface Recorder {
  serverStream<I extends DescMessage, O extends DescMessage>(
    spec: MethodSpec<I, O>,
    request: MessageShape<I> | MessageInitShape<I>,
    options?: CallOptions,
  ): AsyncIterable<MessageShape<O>>;
  clientStream<I extends DescMessage, O extends DescMessage>(spec: MethodSpec<I, O>, options?: CallOptions): ClientStreamCall<I, O>;
  bidiStream<I extends DescMessage, O extends DescMessage>(spec: MethodSpec<I, O>, options?: CallOptions): BidiStreamCall<I, O>;
  handle<I extends DescMessage, O extends DescMessage>(
    spec: MethodSpec<I, O>,
    handler: (request: MessageShape<I>, context: Context) => Reply<O>,
  ): () => void;
  onEvent<I extends DescMessage>(spec: MethodSpec<I, DescMessage>, handler: (event: MessageShape<I>) => void): () => void;
}

function recorder(connection: Connection): Recorder {
  return connection as unknown as Recorder;
}

export function serverStream<I extends DescMessage, O extends DescMessage>(
  connection: Connection,
  spec: MethodSpec<I, O>,
  request: MessageShape<I> | MessageInitShape<I>,
  options?: CallOptions,
): AsyncIterable<MessageShape<O>> {
  return recorder(connection).serverStream(spec, request, options);
}

export function clientStream<I extends DescMessage, O extends DescMessage>(
  connection: Connection,
  spec: MethodSpec<I, O>,
  options?: CallOptions,
): ClientStreamCall<I, O> {
  return recorder(connection).clientStream(spec, options);
}

export function bidiStream<I extends DescMessage, O extends DescMessage>(
  connection: Connection,
  spec: MethodSpec<I, O>,
  options?: CallOptions,
): BidiStreamCall<I, O> {
  return recorder(connection).bidiStream(spec, options);
}

export function handle<I extends DescMessage, O extends DescMessage>(
  connection: Connection,
  spec: MethodSpec<I, O>,
  handler: (request: MessageShape<I>, context: Context) => Reply<O>,
): () => void {
  return recorder(connection).handle(spec, handler);
}

export function onEvent<I extends DescMessage>(
  connection: Connection,
  spec: MethodSpec<I, DescMessage>,
  handler: (event: MessageShape<I>) => void,
): () => void {
  return recorder(connection).onEvent(spec, handler);
}
