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
