// A scripted Parley server for tests: a real `ws` WebSocketServer on
// loopback whose test decides, frame by frame, what to answer.
import assert from "node:assert/strict";
import type { AddressInfo } from "node:net";
import { WebSocketServer, type WebSocket } from "ws";
import { within } from "./assert.js";
import { decodeBinary, encodeBinary, type Frame, type Hello, type Welcome } from "../src/frame.js";
import { decodeJson, encodeJson } from "../src/jsonframe.js";

export interface FakeServerOptions {
  /** The subprotocol to accept; by default whichever Parley one is offered. false accepts none. */
  accept?: string | false;
  /**
   * The Welcome answering Hello; false to leave Hello unanswered. Default
   * {sessionId: "s1"}. A function decides per socket, given its Hello and
   * how many sockets connected before it.
   */
  welcome?: Welcome | false | ((hello: Hello, n: number) => Welcome | false);
}

/** One client's socket, seen from the server. */
export class Peer {
  readonly hello: Promise<Frame>;
  /** Resolves with the close code and reason when the socket closes. */
  readonly closed: Promise<{ code: number; reason: string }>;
  #frames: Frame[] = [];
  #waiters: ((f: Frame) => void)[] = [];
  /**
   * Each received frame's, and its kind's message's, WebSocket message
   * length in bytes (UTF-8 bytes of a text message): what a stream item
   * costs in byte credit.
   */
  readonly sizes = new WeakMap<object, number>();
  /** The socket speaks parley.v1+json. */
  readonly json: boolean;

  constructor(
    readonly ws: WebSocket,
    options: FakeServerOptions,
    n = 0,
  ) {
    this.json = ws.protocol == "parley.v1+json";
    this.closed = new Promise((resolve) => ws.on("close", (code, reason) => resolve({ code, reason: reason.toString() })));
    ws.on("message", (data, isBinary) => {
      const f = isBinary ? decodeBinary(new Uint8Array(data as Buffer)) : decodeJson(data.toString());
      const size = (data as Buffer).length;
      this.sizes.set(f, size).set(Object.values(f)[0], size);
      const w = this.#waiters.shift();
      if (w) w(f);
      else this.#frames.push(f);
    });
    this.hello = this.recv().then((f) => {
      const { welcome = { sessionId: "s1" } } = options;
      const w = typeof welcome == "function" ? welcome((f as { hello: Hello }).hello, n) : welcome;
      if (w !== false) this.send({ welcome: w });
      return f;
    });
  }

  /** Frames received and not yet taken by recv(). */
  get buffered(): readonly Frame[] {
    return this.#frames;
  }

  /** The next frame the client sends. */
  recv(): Promise<Frame> {
    const f = this.#frames.shift();
    return f ? Promise.resolve(f) : new Promise((resolve) => this.#waiters.push(resolve));
  }

  /** Sends a frame in the socket's encoding; returns its message's length in bytes (UTF-8 bytes of a text message). */
  send(frame: Frame): number {
    const data = this.json ? Buffer.from(encodeJson(frame)) : encodeBinary(frame);
    // A Buffer of a text message goes as text, as the string would.
    this.ws.send(data, { binary: !this.json });
    return data.length;
  }
}

export class FakeServer {
  readonly url: string;
  #wss: WebSocketServer;
  #peers: Peer[] = [];
  #waiters: ((p: Peer) => void)[] = [];

  private constructor(wss: WebSocketServer, options: FakeServerOptions) {
    this.#wss = wss;
    this.url = `ws://127.0.0.1:${(wss.address() as AddressInfo).port}/`;
    wss.on("connection", (ws) => {
      const p = new Peer(ws, options, this.connections++);
      const w = this.#waiters.shift();
      if (w) w(p);
      else this.#peers.push(p);
    });
  }

  static start(options: FakeServerOptions = {}): Promise<FakeServer> {
    return new Promise((resolve) => {
      const wss = new WebSocketServer({
        host: "127.0.0.1",
        port: 0,
        handleProtocols: (offered) => {
          if (options.accept !== undefined) return options.accept;
          for (const p of offered) if (p.startsWith("parley.v1+")) return p;
          return false;
        },
      });
      wss.on("listening", () => resolve(new FakeServer(wss, options)));
    });
  }

  /** The next client to connect. */
  peer(): Promise<Peer> {
    const p = this.#peers.shift();
    return p ? Promise.resolve(p) : new Promise((resolve) => this.#waiters.push(resolve));
  }

  /** How many sockets connected so far. */
  connections = 0;

  close(): Promise<void> {
    for (const c of this.#wss.clients) c.terminate();
    return new Promise((resolve) => this.#wss.close(() => resolve()));
  }
}

// Assertions the fake-server tests share.

/** Reads the next frame, asserting its kind. */
export async function expectFrame<K extends string>(peer: Peer, kind: K): Promise<Extract<Frame, Record<K, unknown>>[K]> {
  const f = await within(peer.recv());
  assert.ok(kind in f, `want ${kind}, got ${JSON.stringify(f)}`);
  return (f as any)[kind];
}
