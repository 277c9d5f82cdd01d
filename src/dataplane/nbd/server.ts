/**
 * NbdServer: accepts NBD connections on TCP and unix sockets, runs the
 * handshake, then a Session per connection.
 *
 * Isolation: every socket has its error handler and every promise a catch, so
 * one hostile or broken client can only lose its own connection. Limits: a
 * connection cap across all listeners, a handshake deadline, and the
 * per-session in-flight caps (session.ts).
 */
import { createServer, type AddressInfo, type Server, type Socket } from 'node:net';
import { lstat, unlink } from 'node:fs/promises';
import type { Errno } from '../../common/errors.js';
import { logger, type Logger } from '../../common/log.js';
import type { ExportProvider } from './export.js';
import { negotiate } from './handshake.js';
import { Inbound } from './inbound.js';
import { adoptWithReadBuffer, READ_BUFFER_BYTES } from './read-buffer.js';
import { DEFAULT_SESSION_LIMITS, Session, endGracefully, type SessionLimits } from './session.js';

/** Hooks for metrics; each is optional and must not throw. */
export interface NbdMetricsHooks {
  /**
   * One request answered. command is its NBD_CMD_* name (unknown commands are
   * reported as NBD_CMD_UNKNOWN so label sets stay bounded); bytes is the
   * READ/WRITE payload moved (0 otherwise or on failure); errno is undefined on
   * success. Refused requests are reported with seconds = 0.
   */
  onRequest?(command: string, bytes: number, seconds: number, errno: Errno | undefined): void;
  /** A connection was accepted (+1) or has fully closed (-1). */
  onConnection?(delta: 1 | -1): void;
}

export interface NbdServerOptions {
  log?: Logger;
  metrics?: NbdMetricsHooks;
  /** Open connections across all listeners; more are accepted and closed at once. Default 1024. */
  maxConnections?: number;
  /** A client that has not reached transmission by then is dropped. Default 30 s. */
  handshakeTimeoutMs?: number;
  /** Per-connection backpressure limits; defaults in session.ts. */
  sessionLimits?: Partial<SessionLimits>;
}

interface Connection {
  socket: Socket;
  session: Session | undefined;
  /** Resolves once the socket is closed and any export it opened is closed. */
  done: Promise<void>;
}

export class NbdServer {
  private readonly log: Logger;
  private readonly maxConnections: number;
  private readonly handshakeTimeoutMs: number;
  private readonly limits: SessionLimits;
  private readonly listeners: Server[] = [];
  private readonly connections = new Set<Connection>();
  private closing: Promise<void> | undefined;
  private nextConnectionId = 1;

  constructor(
    private readonly provider: ExportProvider,
    private readonly options: NbdServerOptions = {},
  ) {
    this.log = options.log ?? logger('nbd');
    this.maxConnections = options.maxConnections ?? 1024;
    this.handshakeTimeoutMs = options.handshakeTimeoutMs ?? 30_000;
    this.limits = { ...DEFAULT_SESSION_LIMITS, ...options.sessionLimits };
  }

  /** Open connections (handshaking or transmitting). */
  get connectionCount(): number {
    return this.connections.size;
  }

  /** Listen on TCP; port 0 picks a free port. Resolves with the bound address. */
  async listenTcp(host: string, port: number): Promise<AddressInfo> {
    const server = await this.listen((s, ready) => s.listen({ host, port }, ready));
    const address = server.address() as AddressInfo;
    this.log.info({ host: address.address, port: address.port }, 'NBD listening on TCP');
    return address;
  }

  /**
   * Listen on a unix socket (nbd+unix://). A stale socket file left by a
   * previous run is removed first; any other kind of file there is an error.
   */
  async listenUnix(path: string): Promise<string> {
    const existing = await lstat(path).catch((err: NodeJS.ErrnoException) => {
      if (err.code === 'ENOENT') return undefined;
      throw err;
    });
    if (existing) {
      if (!existing.isSocket()) throw new Error(`refusing to replace ${path}: it exists and is not a socket`);
      await unlink(path);
    }
    await this.listen((s, ready) => s.listen({ path }, ready));
    this.log.info({ path }, 'NBD listening on unix socket');
    return path;
  }

  /**
   * Stop accepting; let in-flight requests finish (new ones get ESHUTDOWN)
   * for up to drainMs, then destroy what is left. Resolves when every
   * listener and connection is closed and every opened export is closed.
   */
  close(options: { drainMs?: number } = {}): Promise<void> {
    this.closing ??= this.shutdown(options.drainMs ?? 5000);
    return this.closing;
  }

  private async shutdown(drainMs: number): Promise<void> {
    const listenersClosed = Promise.all(this.listeners.map((s) => new Promise<void>((resolve) => s.close(() => resolve()))));
    for (const conn of this.connections) {
      // Handshaking clients have nothing in flight: drop them now.
      if (conn.session) conn.session.shutdown();
      else conn.socket.destroy();
    }
    const all = () => Promise.all([...this.connections].map((c) => c.done));
    let timer: NodeJS.Timeout | undefined;
    const deadline = new Promise<void>((resolve) => (timer = setTimeout(resolve, drainMs)));
    await Promise.race([all(), deadline]);
    clearTimeout(timer);
    if (this.connections.size > 0) {
      this.log.info({ connections: this.connections.size }, 'drain time over: closing remaining NBD connections');
      for (const conn of this.connections) conn.socket.destroy();
    }
    await all();
    await listenersClosed;
    this.log.info('NBD server closed');
  }

  private listen(start: (server: Server, ready: () => void) => void): Promise<Server> {
    if (this.closing) return Promise.reject(new Error('NBD server is closed'));
    // allowHalfOpen: a client's FIN must not close our side before the
    // replies to its in-flight requests are written; the session ends it.
    // pauseOnConnect: nothing is read before accept() decides how to read.
    const server = createServer({ allowHalfOpen: true, noDelay: true, pauseOnConnect: true }, (socket) => this.accept(socket));
    return new Promise((resolve, reject) => {
      server.once('error', reject);
      start(server, () => {
        server.off('error', reject);
        server.on('error', (err) => this.log.error({ err }, 'NBD listener error'));
        this.listeners.push(server);
        resolve(server);
      });
    });
  }

  private accept(accepted: Socket): void {
    let inbound!: Inbound;
    const socket = adoptWithReadBuffer(accepted, Buffer.allocUnsafeSlow(READ_BUFFER_BYTES), (view) => inbound.push(view, true), { allowHalfOpen: true }) ?? accepted;
    inbound = new Inbound(socket);
    if (socket === accepted) socket.on('data', (chunk: Buffer) => inbound.push(chunk));
    const log = this.log.child({ conn: this.nextConnectionId++, peer: socket.remoteAddress ? `${socket.remoteAddress}:${socket.remotePort}` : 'unix' });
    socket.on('error', (err) => log.debug({ err: err.message }, 'socket error'));
    if (this.closing || this.connections.size >= this.maxConnections) {
      log.warn({ open: this.connections.size, max: this.maxConnections }, this.closing ? 'refusing connection: server closing' : 'refusing connection: too many open');
      socket.destroy();
      return;
    }

    let finished!: () => void;
    const conn: Connection = { socket, session: undefined, done: new Promise((resolve) => (finished = resolve)) };
    this.connections.add(conn);
    this.options.metrics?.onConnection?.(1);
    log.debug('connection accepted');

    socket.on('end', () => inbound.fail(new Error('client closed the connection')));
    const closed = new Promise<void>((resolve) => socket.once('close', () => resolve()));
    void closed.then(() => inbound.fail(new Error('connection closed')));
    const timer = setTimeout(() => {
      log.info({ timeoutMs: this.handshakeTimeoutMs }, 'handshake timed out: closing connection');
      socket.destroy();
    }, this.handshakeTimeoutMs);

    const serve = async (): Promise<void> => {
      let negotiated;
      try {
        negotiated = await negotiate(socket, inbound, this.provider, log);
      } catch (err) {
        if (!socket.destroyed) log.info({ reason: (err as Error).message }, 'handshake failed: closing connection');
        socket.destroy();
        return;
      } finally {
        clearTimeout(timer);
      }
      if (!negotiated) {
        log.debug('client aborted the handshake');
        endGracefully(socket);
        return;
      }
      const session = new Session(socket, inbound, negotiated, log.child({ export: negotiated.export.name }), this.limits, this.options.metrics?.onRequest?.bind(this.options.metrics));
      conn.session = session;
      session.start();
      if (this.closing) session.shutdown();
      await session.finished;
    };

    void serve()
      .catch((err) => {
        log.error({ err }, 'connection failed unexpectedly');
        socket.destroy();
      })
      .then(() => closed)
      .then(() => {
        this.connections.delete(conn);
        this.options.metrics?.onConnection?.(-1);
        log.debug('connection closed');
        finished();
      });
  }
}
