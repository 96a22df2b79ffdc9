// A TCP proxy for fault injection between a client and a server on
// loopback: it forwards bytes both ways until told to drop every
// connection (both sides see the socket close at once) or to blackhole
// them (bytes vanish, no side sees a close: a half-open connection), can
// hold new connections unanswered (a dial that hangs), and can make the
// server-to-client direction a slow link.
import net from "node:net";

interface Pair {
  client: net.Socket;
  upstream: net.Socket;
  /** Bytes are dropped both ways. */
  blackholed: boolean;
}

export class TcpProxy {
  readonly port: number;
  /** How many connections it accepted so far. */
  accepted = 0;
  #server: net.Server;
  #pairs = new Set<Pair>();
  /** While set, server-to-client bytes go at chunk bytes per ms milliseconds. */
  #slow: { chunk: number; ms: number } | undefined;
  #accepting: (() => void)[] = [];
  /** Connections accepted while held (see hold). */
  #held: net.Socket[] | undefined;

  private constructor(
    server: net.Server,
    readonly targetPort: number,
  ) {
    this.#server = server;
    this.port = (server.address() as net.AddressInfo).port;
    server.on("connection", (client) => {
      this.accepted++;
      this.#accepting.splice(0).forEach((f) => f());
      // A held connection the client gives up on must not crash the process.
      if (this.#held) this.#held.push(client.on("error", () => {}));
      else this.#pipe(client);
    });
  }

  /** Forwards client's bytes to the target and back. */
  #pipe(client: net.Socket) {
    const upstream = net.connect(this.targetPort, "127.0.0.1");
    const pair: Pair = { client, upstream, blackholed: false };
    this.#pairs.add(pair);
    const end = () => {
      this.#pairs.delete(pair);
      client.destroy();
      upstream.destroy();
    };
    client.on("data", (d) => pair.blackholed || upstream.write(d));
    upstream.on("data", (d) => {
      if (pair.blackholed) return;
      if (!this.#slow) return void client.write(d);
      // A slow link: hold the upstream back and trickle this data out.
      const { chunk, ms } = this.#slow;
      upstream.pause();
      let at = 0;
      const next = () => {
        if (pair.blackholed || client.destroyed) return;
        client.write(d.subarray(at, (at += chunk)));
        if (at < d.length) setTimeout(next, ms);
        else upstream.resume();
      };
      next();
    });
    for (const s of [client, upstream]) {
      s.on("close", end);
      s.on("error", end);
    }
  }

  /** Resolves when the proxy next accepts a connection. */
  accepting(): Promise<void> {
    return new Promise((resolve) => this.#accepting.push(resolve));
  }

  /**
   * While held, new connections are accepted and left waiting (their
   * bytes unread, no connection to the target yet): a dial that hangs.
   * Releasing connects them, and later ones, to the target.
   */
  hold(held: boolean): void {
    const waiting = this.#held ?? [];
    this.#held = held ? waiting : undefined;
    if (!held) for (const c of waiting.splice(0)) if (!c.destroyed) this.#pipe(c);
  }

  /** Starts a proxy on a free loopback port to 127.0.0.1:targetPort. */
  static start(targetPort: number): Promise<TcpProxy> {
    return new Promise((resolve) => {
      const server = net.createServer();
      server.listen(0, "127.0.0.1", () => resolve(new TcpProxy(server, targetPort)));
    });
  }

  /** The WebSocket URL of url's path through this proxy. */
  url(url: string): string {
    const u = new URL(url);
    u.port = String(this.port);
    return u.toString();
  }

  /** Connections open now. */
  get open(): number {
    return this.#pairs.size;
  }

  /** Kills every connection: a reset to the client, a close to the server. */
  dropAll(): void {
    for (const { client, upstream } of this.#pairs) {
      client.resetAndDestroy();
      upstream.destroy();
    }
    this.#pairs.clear();
  }

  /** From now on, server-to-client bytes go out chunk bytes every ms milliseconds (undefined: at full speed). */
  slow(link: { chunk: number; ms: number } | undefined): void {
    this.#slow = link;
  }

  /** From now on, bytes of the connections open now vanish both ways; new connections work. */
  blackholeAll(): void {
    for (const p of this.#pairs) p.blackholed = true;
  }

  close(): Promise<void> {
    this.dropAll();
    for (const c of this.#held?.splice(0) ?? []) c.destroy();
    return new Promise((resolve) => this.#server.close(() => resolve()));
  }
}
