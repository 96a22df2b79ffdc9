// A TCP proxy for fault injection between a client and a server on
// loopback: it forwards bytes both ways until told to drop every
// connection (both sides see the socket close at once) or to blackhole
// them (bytes vanish, no side sees a close: a half-open connection), and
// can make the server-to-client direction a slow link.
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

  private constructor(
    server: net.Server,
    readonly targetPort: number,
  ) {
    this.#server = server;
    this.port = (server.address() as net.AddressInfo).port;
    server.on("connection", (client) => {
      this.accepted++;
      const upstream = net.connect(targetPort, "127.0.0.1");
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
    });
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
    return new Promise((resolve) => this.#server.close(() => resolve()));
  }
}
