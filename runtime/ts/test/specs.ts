// Hand-written MethodSpecs of e2e.v1.EchoService, as protoc-gen-parley-ts
// would generate them.
import { EmptySchema } from "@bufbuild/protobuf/wkt";
import type { MethodSpec } from "../src/index.js";
import {
  EchoRequestSchema,
  EchoResponseSchema,
  FailRequestSchema,
  OutcomeRequestSchema,
  OutcomeResponseSchema,
  SleepRequestSchema,
  SleepResponseSchema,
} from "./gen/e2e/v1/echo_pb.js";

const service = "/e2e.v1.EchoService/";

export const Echo = {
  procedure: service + "Echo",
  input: EchoRequestSchema,
  output: EchoResponseSchema,
  idempotent: true,
} satisfies MethodSpec;

export const Sleep = { procedure: service + "Sleep", input: SleepRequestSchema, output: SleepResponseSchema } satisfies MethodSpec;

export const SleepWithDefault = {
  procedure: service + "SleepWithDefault",
  input: SleepRequestSchema,
  output: SleepResponseSchema,
  timeoutMs: 300,
} satisfies MethodSpec;

export const Outcome = { procedure: service + "Outcome", input: OutcomeRequestSchema, output: OutcomeResponseSchema } satisfies MethodSpec;

export const Fail = { procedure: service + "Fail", input: FailRequestSchema, output: EmptySchema } satisfies MethodSpec;

export const Panic = { procedure: service + "Panic", input: EmptySchema, output: EmptySchema } satisfies MethodSpec;

// e2e.v1.StreamService, PushService and ClientEvents (streams.proto).
import {
  AskRequestSchema,
  AskResponseSchema,
  ConfirmRequestSchema,
  ConfirmResponseSchema,
  CountRequestSchema,
  CountResponseSchema,
  EchoItemSchema,
  StreamOutcomeRequestSchema,
  StreamOutcomeResponseSchema,
  SubscribeRequestSchema,
  SubscribeResponseSchema,
  SumRequestSchema,
  SumResponseSchema,
  TickEventSchema,
} from "./gen/e2e/v1/streams_pb.js";

export const Count = {
  procedure: "/e2e.v1.StreamService/Count",
  input: CountRequestSchema,
  output: CountResponseSchema,
  kind: "server_streaming",
} satisfies MethodSpec;

export const Sum = {
  procedure: "/e2e.v1.StreamService/Sum",
  input: SumRequestSchema,
  output: SumResponseSchema,
  kind: "client_streaming",
} satisfies MethodSpec;

export const EchoStream = {
  procedure: "/e2e.v1.StreamService/Echo",
  input: EchoItemSchema,
  output: EchoItemSchema,
  kind: "bidi_streaming",
} satisfies MethodSpec;

export const StreamOutcome = {
  procedure: "/e2e.v1.StreamService/StreamOutcome",
  input: StreamOutcomeRequestSchema,
  output: StreamOutcomeResponseSchema,
} satisfies MethodSpec;

export const Subscribe = { procedure: "/e2e.v1.PushService/Subscribe", input: SubscribeRequestSchema, output: SubscribeResponseSchema } satisfies MethodSpec;

export const AskBack = { procedure: "/e2e.v1.PushService/AskBack", input: AskRequestSchema, output: AskResponseSchema } satisfies MethodSpec;

export const Tick = { procedure: "/e2e.v1.ClientEvents/Tick", input: TickEventSchema, output: EmptySchema } satisfies MethodSpec;

export const Confirm = { procedure: "/e2e.v1.ClientEvents/Confirm", input: ConfirmRequestSchema, output: ConfirmResponseSchema } satisfies MethodSpec;
