// TypeScript client benchmark: unary echo calls/s of @parleyrpc/runtime's
// Connection against the Go server, at 1 and 64 calls in flight, side by
// side with a raw `ws` client doing the same work (the same protobuf-es
// messages, its own correlation by id) against a bare gorilla/websocket
// echo, and with that client sending bytes only. Both servers run in one
// Go process (`parley-bench -mode ts-servers`), the client in this Node
// process.
//
// Run from the repository root: bench/ts/run.sh (bundles this file with
// esbuild and runs it with node).
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { spawn } from "node:child_process";
import { cpus, loadavg } from "node:os";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import WebSocket from "ws";
import { Connection, type MethodSpec } from "@parleyrpc/runtime";
import { EchoRequestSchema, EchoResponseSchema } from "./gen/e2e/v1/echo_pb.js";

const Echo = {
  procedure: "/e2e.v1.EchoService/Echo",
  input: EchoRequestSchema,
  output: EchoResponseSchema,
  idempotent: true,
} satisfies MethodSpec;

const args = new Map<string, string>();
for (const a of process.argv.slice(2)) {
  const [k, v] = a.replace(/^--?/, "").split("=");
  args.set(k!, v ?? "true");
}
const durationMs = Number(args.get("duration") ?? 1000);
const warmupMs = Number(args.get("warmup") ?? 300);
const rounds = Number(args.get("count") ?? 3);
const concs = (args.get("c") ?? "1,64").split(",").map(Number);
const sizes = (args.get("payload") ?? "16,1024").split(",").map(Number);

type Call = () => Promise<void>;
interface Target {
  name: string;
  newCaller(payload: Uint8Array): Call;
  close(): void;
}

async function parleyTarget(url: string): Promise<Target> {
  const conn = new Connection(url, { WebSocket });
  await conn.ready;
  return {
    name: "parley-ts",
    newCaller(payload) {
      const req = create(EchoRequestSchema, { data: payload });
      return async () => {
        const res = await conn.call(Echo, req);
        if (res.data.length !== payload.length) throw new Error("short echo");
      };
    },
    close: () => conn.close(),
  };
}

// The hand-written alternative: one `ws` socket shared by every caller,
// each message a 4-byte id then the payload, and a message handler that
// hands each reply to its caller's promise by id. No frame, no deadline
// timer, no reconnection. With protobuf set it does the same work as a
// Parley call: it encodes each request with protobuf-es and decodes each
// echo as the response message ("raw ws"); without, it sends the bytes it
// has and only checks the echo's length ("raw bytes"), the floor of what
// any client on `ws` can do.
async function rawTarget(url: string, protobuf: boolean): Promise<Target> {
  const ws = new WebSocket(url);
  await new Promise((resolve, reject) => {
    ws.once("open", resolve);
    ws.once("error", reject);
  });
  const pending = new Map<number, (b: Buffer) => void>();
  ws.on("message", (data: Buffer) => {
    const id = data.readUInt32LE(0);
    const done = pending.get(id);
    if (done) {
      pending.delete(id);
      done(data);
    }
  });
  let nextId = 0;
  const send = (msg: Buffer, check: (b: Buffer) => boolean) =>
    new Promise<void>((resolve, reject) => {
      const id = ++nextId >>> 0;
      msg.writeUInt32LE(id, 0);
      pending.set(id, (b) => (check(b) ? resolve() : reject(new Error("short echo"))));
      ws.send(msg, { binary: true });
    });
  return {
    name: protobuf ? "raw ws" : "raw bytes",
    newCaller(payload) {
      if (protobuf) {
        const req = create(EchoRequestSchema, { data: payload });
        return () => {
          const body = toBinary(EchoRequestSchema, req);
          const msg = Buffer.allocUnsafe(4 + body.length);
          msg.set(body, 4);
          return send(msg, (b) => fromBinary(EchoResponseSchema, b.subarray(4)).data.length === payload.length);
        };
      }
      const msg = Buffer.alloc(4 + payload.length);
      msg.set(payload, 4);
      return () => send(msg, (b) => b.length === msg.length);
    },
    close: () => ws.close(),
  };
}

interface Result {
  name: string;
  c: number;
  size: number;
  calls: number;
  ms: number;
  p50: number;
  p99: number;
  /** This process's CPU time (user + system) per call, in µs: the client's own cost, whatever the server and the machine's load do. */
  cpu: number;
}

async function drive(callers: Call[], ms: number, lat?: number[][]): Promise<[number, number]> {
  let stop = false;
  let total = 0;
  const t0 = performance.now();
  const timer = setTimeout(() => (stop = true), ms);
  await Promise.all(
    callers.map(async (call, i) => {
      const l = lat?.[i];
      while (!stop) {
        const s = performance.now();
        await call();
        l?.push(performance.now() - s);
        total++;
      }
    }),
  );
  clearTimeout(timer);
  return [total, performance.now() - t0];
}

async function run(t: Target, c: number, size: number): Promise<Result> {
  const payload = new Uint8Array(size).map((_, i) => i & 0xff);
  const callers = Array.from({ length: c }, () => t.newCaller(payload));
  await drive(callers, warmupMs);
  const lat: number[][] = callers.map(() => []);
  const cpu0 = process.cpuUsage();
  const [calls, ms] = await drive(callers, durationMs, lat);
  const { user, system } = process.cpuUsage(cpu0);
  const all = lat.flat().sort((a, b) => a - b);
  const q = (p: number) => all[Math.min(all.length - 1, Math.floor(all.length * p))] ?? 0;
  return { name: t.name, c, size, calls, ms, p50: q(0.5), p99: q(0.99), cpu: (user + system) / calls };
}

async function startServers(): Promise<{ parley: string; gorilla: string; stop: () => void }> {
  const benchDir = fileURLToPath(new URL("../..", import.meta.url)); // bench/ts/dist → bench
  const bin = process.env["PARLEY_BENCH_BIN"];
  const child = bin
    ? spawn(bin, ["-mode", "ts-servers"], { stdio: ["pipe", "pipe", "inherit"] })
    : spawn("go", ["run", "./cmd/parley-bench", "-mode", "ts-servers"], { cwd: benchDir, stdio: ["pipe", "pipe", "inherit"] });
  const lines = createInterface({ input: child.stdout! });
  const urls: Record<string, string> = {};
  for await (const line of lines) {
    const [k, v] = line.split(" ");
    urls[k!] = v!;
    if (urls["parley"] && urls["gorilla"]) break;
  }
  return { parley: urls["parley"]!, gorilla: urls["gorilla"]!, stop: () => child.stdin!.end() };
}

const fmt = (ms: number) => (ms >= 1 ? `${ms.toFixed(2)} ms` : `${(ms * 1000).toFixed(1)} µs`);
const sizeName = (n: number) => (n >= 1024 && n % 1024 === 0 ? `${n / 1024} KiB` : `${n} B`);

const servers = await startServers();
const impls = (args.get("impl") ?? "parley-ts,raw,bytes").split(",");
const targets: Target[] = [];
if (impls.includes("parley-ts")) targets.push(await parleyTarget(servers.parley));
if (impls.includes("raw")) targets.push(await rawTarget(servers.gorilla, true));
if (impls.includes("bytes")) targets.push(await rawTarget(servers.gorilla, false));
const load0 = loadavg().map((x) => x.toFixed(2)).join(" ");
const results = new Map<string, Result[]>();
for (let r = 0; r < rounds; r++) {
  for (const c of concs) {
    for (const size of sizes) {
      // Back to back, in the order reversed every other round, so that
      // drift over a round (the machine's, or the previous case's garbage)
      // does not always favour the same target.
      for (const t of r % 2 ? [...targets].reverse() : targets) {
        const res = await run(t, c, size);
        const key = `${t.name}|${c}|${size}`;
        results.set(key, [...(results.get(key) ?? []), res]);
        console.error(`round ${r + 1}: ${t.name.padEnd(9)} c=${String(c).padEnd(3)} ${String(size).padStart(5)} B  ${Math.round((res.calls / res.ms) * 1000)} calls/s  p50 ${fmt(res.p50)}  p99 ${fmt(res.p99)}  client CPU ${res.cpu.toFixed(1)} µs/call`);
      }
    }
  }
}
const load1 = loadavg().map((x) => x.toFixed(2)).join(" ");
for (const t of targets) t.close();
servers.stop();

const rate = (r: Result) => (r.calls / r.ms) * 1000;
const median = (key: string) => {
  const rs = [...(results.get(key) ?? [])].sort((a, b) => rate(a) - rate(b));
  return rs[Math.floor(rs.length / 2)]!;
};
// vs raw ws: the median of the rounds' ratios (each round ran both back to
// back), with their range.
const versus = (key: string, rawKey: string) => {
  const rs = results.get(key) ?? [];
  const raws = results.get(rawKey) ?? [];
  const ratios = rs.map((r, i) => (rate(r) / rate(raws[i]!)) * 100).sort((a, b) => a - b);
  const pct = (x: number) => x.toFixed(0);
  return `${pct(ratios[Math.floor(ratios.length / 2)]!)} % (${pct(ratios[0]!)}–${pct(ratios[ratios.length - 1]!)})`;
};
const out: string[] = [];
out.push(`Machine: ${cpus()[0]?.model}, ${cpus().length} cores, Node ${process.version}; servers: Go (parley-bench -mode ts-servers)`, "");
out.push(`Load average (1/5/15 min) at start: ${load0}; at end: ${load1}`, "");
out.push(`Command: \`bench/ts/run.sh${process.argv.slice(2).map((a) => " " + a).join("")}\``, "");
out.push(`Unary echo over one WebSocket on loopback; ${durationMs} ms measured per case after ${warmupMs} ms warm-up; median of ${rounds} rounds by calls/s (the targets run back to back in each round, in the order reversed every other round); vs raw ws is the median of the rounds' ratios, with their range.`, "");
out.push("| client | in flight | payload | calls/s | vs raw ws | p50 | p99 | client CPU/call |", "|---|---:|---:|---:|---:|---:|---:|---:|");
for (const c of concs) {
  for (const size of sizes) {
    const rawKey = `raw ws|${c}|${size}`;
    for (const t of targets) {
      const key = `${t.name}|${c}|${size}`;
      const r = median(key);
      const vs = t.name === "raw ws" || !results.has(rawKey) ? "—" : versus(key, rawKey);
      out.push(`| ${t.name} | ${c} | ${sizeName(size)} | ${Math.round(rate(r))} | ${vs} | ${fmt(r.p50)} | ${fmt(r.p99)} | ${r.cpu.toFixed(1)} µs |`);
    }
  }
}
console.log(out.join("\n"));
process.exit(0);
