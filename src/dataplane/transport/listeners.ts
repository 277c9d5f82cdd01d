/**
 * Listeners: a server's listening sockets and the connections they accepted,
 * with the limits and the close every protocol server needs (nbd/server.ts,
 * peer/server.ts). The protocol is the server's; this is only the plumbing.
 *
 * Contract:
 * - Sockets are accepted with allowHalfOpen (the other side's FIN must not
 *   close ours before the replies to its in-flight requests are written),
 *   noDelay, and pauseOnConnect (nothing is read before the server has chosen
 *   how to read: see read-buffer.ts).
 * - admit(): over maxConnections (across all listeners), or once closing,
 *   a new socket is logged, destroyed and refused.
 * - close(drainMs): listeners stop accepting; every connection is asked to
 *   shutdown() (finish what is in flight, then end); after drainMs those
 *   left are destroy()ed. Resolves once every connection's `done` and every
 *   listener has closed.
 */
import { createServer, type AddressInfo, type Server, type Socket } from 'node:net';
import type { Logger } from '../../common/log.js';

/** What Listeners needs of one accepted connection. */
export interface ServedSocket {
  /** Resolves once the connection is closed and whatever it held is released. */
  readonly done: Promise<void>;
  /** The server is closing: refuse new requests, end once in-flight ones are answered. */
  shutdown(): void;
  /** Drain time is over: close now. */
  destroy(): void;
}

export interface ListenersOptions {
  log: Logger;
  /** Open connections across all listeners; more are accepted and closed at once. */
  maxConnections: number;
  /** How log lines name the server ('NBD' → 'NBD listener error') and a connection ('peer connection'). */
  names: { server: string; connection: string };
  /** Each accepted socket (paused); the server calls admit() on it. */
  onSocket: (socket: Socket) => void;
}

export class Listeners<C extends ServedSocket> {
  /** Connections admitted and not yet done; the server adds and deletes them. */
  readonly connections = new Set<C>();
  private readonly servers: Server[] = [];
  private closing = false;
  private nextConnectionId = 1;
  private readonly messages: {
    listenerError: string;
    refusedClosing: string;
    refusedFull: string;
    drainOver: string;
    closed: string;
  };

  constructor(private readonly options: ListenersOptions) {
    const { server, connection } = options.names;
    this.messages = {
      listenerError: `${server} listener error`,
      refusedClosing: `refusing ${connection}: server closing`,
      refusedFull: `refusing ${connection}: too many open`,
      drainOver: `drain time over: closing remaining ${server} connections`,
      closed: `${server} server is closed`,
    };
  }

  get isClosing(): boolean {
    return this.closing;
  }

  /** A number for the next connection's log lines. */
  connectionId(): number {
    return this.nextConnectionId++;
  }

  /** A new listener, started by `start` (server.listen(...) calling ready once bound). */
  listen(start: (server: Server, ready: () => void) => void): Promise<Server> {
    if (this.closing) return Promise.reject(new Error(this.messages.closed));
    const server = createServer(
      { allowHalfOpen: true, noDelay: true, pauseOnConnect: true },
      this.options.onSocket,
    );
    return new Promise((resolve, reject) => {
      server.once('error', reject);
      start(server, () => {
        server.off('error', reject);
        server.on('error', (err) => this.options.log.error({ err }, this.messages.listenerError));
        this.servers.push(server);
        resolve(server);
      });
    });
  }

  /** A TCP listener on host:port (0 picks a free port); resolves with the bound address. */
  async listenTcp(host: string, port: number): Promise<AddressInfo> {
    const server = await this.listen((s, ready) => s.listen({ host, port }, ready));
    return server.address() as AddressInfo;
  }

  /** False (and the socket destroyed) when closing or at the connection cap. */
  admit(socket: Socket, log: Logger): boolean {
    const { maxConnections } = this.options;
    if (!this.closing && this.connections.size < maxConnections) return true;
    log.warn(
      { open: this.connections.size, max: maxConnections },
      this.closing ? this.messages.refusedClosing : this.messages.refusedFull,
    );
    socket.destroy();
    return false;
  }

  /** See the contract above; call once. */
  async close(drainMs: number): Promise<void> {
    this.closing = true;
    const listenersClosed = Promise.all(
      this.servers.map((s) => new Promise<void>((resolve) => s.close(() => resolve()))),
    );
    for (const conn of this.connections) conn.shutdown();
    const all = () => Promise.all([...this.connections].map((c) => c.done));
    let timer: NodeJS.Timeout | undefined;
    const deadline = new Promise<void>((resolve) => (timer = setTimeout(resolve, drainMs)));
    await Promise.race([all(), deadline]);
    clearTimeout(timer);
    if (this.connections.size > 0) {
      this.options.log.info({ connections: this.connections.size }, this.messages.drainOver);
      for (const conn of this.connections) conn.destroy();
    }
    await all();
    await listenersClosed;
  }
}
