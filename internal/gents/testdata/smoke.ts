// Runs the plain golden client against a recording Connection: each method
// passes its own spec, the request and the options through, and returns
// what the connection resolves. (go test ./internal/gents -run TestGoldenRuns)
import { create } from "@bufbuild/protobuf";
import type { DescMessage, MessageInitShape, MessageShape } from "@bufbuild/protobuf";
import type { CallOptions, Connection, MethodSpec } from "@parleyrpc/runtime";
import { ChatServiceClient, ChatServiceHistorySpec, ChatServiceJoinSpec } from "./plain/chat/v1/chat_parley";
import { JoinRequestSchema } from "./plain/chat/v1/chat_pb";

const seen: { spec: MethodSpec; request: unknown; options: CallOptions | undefined }[] = [];
const recorder = {
  async call<I extends DescMessage, O extends DescMessage>(
    spec: MethodSpec<I, O>,
    request: MessageShape<I> | MessageInitShape<I>,
    options?: CallOptions,
  ): Promise<MessageShape<O>> {
    seen.push({ spec, request, options });
    return create(spec.output);
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
console.log("smoke ok");
