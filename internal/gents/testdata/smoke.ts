// Runs the plain, mixed and tsmembers golden code against a recording Connection: each
// client method passes its own spec, the request and the options through,
// and returns what the connection gives; a subscriber and a handler
// register on the connection with their specs and unregister. Streams and
// handlers go through the runtime's functions, which smoke-runtime.ts
// passes on to the recorder's methods of the same names.
// (go test ./internal/gents -run TestGoldenRuns)
import { create } from "@bufbuild/protobuf";
import { EmptySchema } from "@bufbuild/protobuf/wkt";
import type { DescMessage, MessageInitShape, MessageShape } from "@bufbuild/protobuf";
import type { BidiStreamCall, CallOptions, ClientStreamCall, Connection, MethodSpec } from "@parleyrpc/runtime";
import { ChatServiceClient, ChatServiceHistorySpec, ChatServiceJoinSpec } from "./plain/chat/v1/chat_parley";
import { JoinRequestSchema } from "./plain/chat/v1/chat_pb";
import * as mixed from "./mixed/chat/v1/chat_parley";
import { ChatMessageSchema, LeaveRequestSchema } from "./mixed/chat/v1/chat_pb";
import * as members from "./tsmembers/tsmembers/v1/members_parley";
import { ThingSchema } from "./tsmembers/tsmembers/v1/members_pb";

type Handler = (request: unknown, context: { signal: AbortSignal; metadata: Record<string, string> }) => unknown;
const seen: { spec: MethodSpec; request: unknown; options: CallOptions | undefined }[] = [];
const subscribed = new Map<MethodSpec, (event: unknown) => void>();
const handled = new Map<MethodSpec, Handler>();
const recorder = {
  async call<I extends DescMessage, O extends DescMessage>(
    spec: MethodSpec<I, O>,
    request: MessageShape<I> | MessageInitShape<I>,
    options?: CallOptions,
  ): Promise<MessageShape<O>> {
    seen.push({ spec, request, options });
    return create(spec.output);
  },
  async *serverStream<I extends DescMessage, O extends DescMessage>(
    spec: MethodSpec<I, O>,
    request: MessageShape<I> | MessageInitShape<I>,
    options?: CallOptions,
  ): AsyncIterable<MessageShape<O>> {
    seen.push({ spec, request, options });
    yield create(spec.output);
    yield create(spec.output);
  },
  clientStream<I extends DescMessage, O extends DescMessage>(spec: MethodSpec<I, O>, options?: CallOptions): ClientStreamCall<I, O> {
    const sent: unknown[] = [];
    seen.push({ spec, request: sent, options });
    return {
      async send(message) {
        sent.push(message);
      },
      async closeAndReceive() {
        return create(spec.output);
      },
    };
  },
  bidiStream<I extends DescMessage, O extends DescMessage>(spec: MethodSpec<I, O>, options?: CallOptions): BidiStreamCall<I, O> {
    const sent: unknown[] = [];
    seen.push({ spec, request: sent, options });
    return {
      async send(message) {
        sent.push(message);
      },
      closeSend() {},
      async *[Symbol.asyncIterator]() {
        for (let i = 0; i < sent.length; i++) yield create(spec.output);
      },
    };
  },
  onEvent(spec: MethodSpec, handler: (event: unknown) => void): () => void {
    subscribed.set(spec, handler);
    return () => subscribed.delete(spec);
  },
  handle(spec: MethodSpec, handler: Handler): () => void {
    handled.set(spec, handler);
    return () => handled.delete(spec);
  },
};

function check(ok: boolean, what: string): void {
  if (!ok) {
    throw new Error("smoke: " + what);
  }
}

const client = new ChatServiceClient(recorder as unknown as Connection);
const message = create(JoinRequestSchema, { room: "lobby" });
const options: CallOptions = { timeoutMs: 10 };
const joined = await client.join(message, options);
await client.history({ room: "lobby", limit: 3 });

check(seen.length === 2, "two calls recorded");
check(seen[0]!.spec === ChatServiceJoinSpec, "join passes its spec");
check(seen[0]!.request === message, "join passes the request through");
check(seen[0]!.options === options, "join passes the options through");
check(joined.$typeName === "chat.v1.JoinResponse", "join resolves a JoinResponse");
check(ChatServiceJoinSpec.procedure === "/chat.v1.ChatService/Join", "procedure name");
check(ChatServiceJoinSpec.timeoutMs === 5000 && ChatServiceJoinSpec.idempotent === undefined, "join's options");
check(seen[1]!.spec === ChatServiceHistorySpec && seen[1]!.options === undefined, "history passes its spec");
check(ChatServiceHistorySpec.idempotent === true && ChatServiceHistorySpec.timeoutMs === 1500, "history's options");

// Streams: each kind goes through its own runtime function with its spec.
seen.length = 0;
const chat = new mixed.ChatServiceClient(recorder as unknown as Connection);
const tailed: string[] = [];
for await (const m of chat.tail({ room: "lobby" }, options)) {
  tailed.push(m.$typeName);
}
check(tailed.length === 2 && tailed[0] === "chat.v1.ChatMessage", "tail yields ChatMessages");
check(seen[0]!.spec === mixed.ChatServiceTailSpec && seen[0]!.options === options, "tail passes its spec and options");
check(mixed.ChatServiceTailSpec.kind === "server_streaming", "tail's kind");
const upload = chat.upload();
await upload.send({ data: new Uint8Array([1]) });
const uploaded = await upload.closeAndReceive();
check(uploaded.$typeName === "chat.v1.UploadResponse", "upload resolves an UploadResponse");
check(seen[1]!.spec === mixed.ChatServiceUploadSpec && (seen[1]!.request as unknown[]).length === 1, "upload sends on its spec");
check(mixed.ChatServiceUploadSpec.kind === "client_streaming" && mixed.ChatServiceUploadSpec.timeoutMs === 60000, "upload's options");
const talk = chat.chat();
await talk.send({ text: "hi" });
talk.closeSend();
const replies: string[] = [];
for await (const r of talk) {
  replies.push(r.$typeName);
}
check(replies.length === 1 && replies[0] === "chat.v1.ChatResponse", "chat yields ChatResponses");
check(seen[2]!.spec === mixed.ChatServiceChatSpec && mixed.ChatServiceChatSpec.kind === "bidi_streaming", "chat's spec");
check(mixed.ChatServicePingSpec.kind === undefined, "a unary spec has no kind");

// Events: the subscriber registers the handler under the event's spec.
const events = new mixed.ChatEventsSubscriber(recorder as unknown as Connection);
const posted: string[] = [];
const unsubscribe = events.onMessagePosted((m) => posted.push(m.text));
subscribed.get(mixed.ChatEventsMessagePostedSpec)!(create(ChatMessageSchema, { text: "hello" }));
check(posted.length === 1 && posted[0] === "hello", "onMessagePosted receives the event");
unsubscribe();
check(!subscribed.has(mixed.ChatEventsMessagePostedSpec), "unsubscribe removes the handler");

// Calls: the handler answers under each call's spec, with its own this.
const unregister = mixed.registerChatEventsHandler(recorder as unknown as Connection, {
  prefix: "ok:",
  confirmLeave(request, context) {
    return { ok: request.room === "lobby" && context.metadata["k"] === "v" && this.prefix === "ok:" };
  },
  async status() {
    return { status: "fine" };
  },
} as mixed.ChatEventsHandler & { prefix: string });
check(handled.size === 2 && !handled.has(mixed.ChatEventsMessagePostedSpec), "every call and no event is handled");
const context = { signal: new AbortController().signal, metadata: { k: "v" } };
const ack = (await handled.get(mixed.ChatEventsConfirmLeaveSpec)!(create(LeaveRequestSchema, { room: "lobby" }), context)) as { ok: boolean };
check(ack.ok, "confirmLeave answers with the request, the context and its this");
const report = (await handled.get(mixed.ChatEventsStatusSpec)!(create(EmptySchema), context)) as { status: string };
check(report.status === "fine", "status answers");
unregister();
check(handled.size === 0, "unregister removes every handler");

// A handler's methods may be named like keywords: an object literal
// implements them, and registration calls them by those names.
const unregisterPeers = members.registerPeersHandler(recorder as unknown as Connection, {
  new(request) {
    return { name: "new " + request.name };
  },
  delete(request) {
    return { name: "deleted " + request.name };
  },
  then$(request) {
    return request;
  },
});
const made = (await handled.get(members.PeersNewSpec)!(create(ThingSchema, { name: "a" }), context)) as { name: string };
check(made.name === "new a", "the handler's new answers");
const deleted = (await handled.get(members.PeersDeleteSpec)!(create(ThingSchema, { name: "b" }), context)) as { name: string };
check(deleted.name === "deleted b", "the handler's delete answers");
unregisterPeers();

// A client is not a thenable, so an async function can return one.
const store = await Promise.resolve(new members.StoreClient(recorder as unknown as Connection));
check(store instanceof members.StoreClient, "awaiting a client gives the client");
seen.length = 0;
await store.then$({ name: "c" });
check(seen.length === 1 && seen[0]!.spec === members.StoreThenSpec, "then$ calls Store.then");
console.log("smoke ok");
