/**
 * NbdServer: accepts NBD connections on TCP and unix sockets, runs the
 * handshake, then a Session per connection.
 *
 * Isolation: every socket has its error handler and every promise a catch, so
 * one hostile or broken client can only lose its own connection. Limits:
 * admission (transport/connection-admission.ts: a total cap, a cap of its
 * own for connections still in the handshake with the oldest shed first, a
 * cap per client address), a handshake deadline (a connection that finished
 * its handshake is never timed out), and the per-session in-flight caps
 * (session.ts). Listening and the draining close are the shared Listeners
 * (transport/listeners.ts).
 */
import type { AddressInfo, Socket } from 'node:net';
import { lstat, unlink } from 'node:fs/promises';
import type { Errno } from '../../common/errors.js';
import { logger, type Logger } from '../../common/log.js';
import {
  ConnectionAdmission,
  DEFAULT_ADMISSION_LIMITS,
  clientAddressOf,
  type AdmissionLimits,
  type AdmissionOutcome,
} from '../transport/connection-admission.js';
import { Listeners, type ServedSocket } from '../transport/listeners.js';
import { adoptWithReadBuffer } from '../transport/read-buffer.js';
import { endGracefully } from '../transport/served-connection.js';
import type { ExportProvider } from './export.js';
import { negotiate } from './handshake.js';
import { Inbound } from './inbound.js';
import { DEFAULT_SESSION_LIMITS, Session, type SessionLimits } from './session.js';
import type { NbdServerTls } from './tls-config.js';
import { upgradeToTls } from './tls-upgrade.js';

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
  /** A connection refused, a handshake shed to make room, or one that timed out in its handshake. */
  onDropped?(reason: AdmissionOutcome | 'handshake-timeout'): void;
}

/** Default for NbdServerOptions.handshakeTimeoutMs. */
export const DEFAULT_HANDSHAKE_TIMEOUT_MS = 10_000;

export interface NbdServerOptions {
  log?: Logger;
  metrics?: NbdMetricsHooks;
  /** Connection caps (see connection-admission.ts); defaults DEFAULT_ADMISSION_LIMITS. */
  admission?: Partial<AdmissionLimits>;
  /** A client that has not reached transmission by then is dropped. Default 10 s. */
  handshakeTimeoutMs?: number;
  /** Per-connection backpressure limits; defaults in session.ts. */
  sessionLimits?: Partial<SessionLimits>;
  /** Offer NBD_OPT_STARTTLS (tls-config.ts loadServerTls); absent: no TLS. */
  tls?: NbdServerTls;
}

/** `done` resolves once the socket is closed and any export it opened is closed. */
interface Connection extends ServedSocket {
  socket: Socket;
  session: Session | undefined;
}

export class NbdServer {
  private readonly log: Logger;
  private readonly handshakeTimeoutMs: number;
  private readonly limits: SessionLimits;
  private readonly listeners: Listeners<Connection>;
  private readonly admission: ConnectionAdmission;
  private closing: Promise<void> | undefined;

  constructor(
    private readonly provider: ExportProvider,
    private readonly options: NbdServerOptions = {},
  ) {
    this.log = options.log ?? logger('nbd');
    this.listeners = new Listeners({
      log: this.log,
      // Caps are the admission's; Listeners only refuses once closing.
      maxConnections: Number.POSITIVE_INFINITY,
      names: { server: 'NBD', connection: 'connection' },
      onSocket: (socket) => this.accept(socket),
    });
    const onDropped = options.metrics?.onDropped?.bind(options.metrics);
    this.admission = new ConnectionAdmission(
      { ...DEFAULT_ADMISSION_LIMITS, ...options.admission },
      this.log,
      'NBD connection',
      onDropped,
    );
    this.handshakeTimeoutMs = options.handshakeTimeoutMs ?? DEFAULT_HANDSHAKE_TIMEOUT_MS;
    if (!Number.isSafeInteger(this.handshakeTimeoutMs) || this.handshakeTimeoutMs < 1)
      throw new RangeError(
        `handshakeTimeoutMs must be a positive integer, not ${this.handshakeTimeoutMs}`,
      );
    this.limits = { ...DEFAULT_SESSION_LIMITS, ...options.sessionLimits };
  }

  /** Open connections (handshaking or transmitting). */
  get connectionCount(): number {
    return this.listeners.connections.size;
  }

  /** Admitted connections by phase (a shed or timed-out one leaves its count at once). */
  get admitted(): { handshaking: number; established: number } {
    return {
      handshaking: this.admission.handshakingCount,
      established: this.admission.establishedCount,
    };
  }

  /** Listen on TCP; port 0 picks a free port. Resolves with the bound address. */
  async listenTcp(host: string, port: number): Promise<AddressInfo> {
    const address = await this.listeners.listenTcp(host, port);
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
      if (!existing.isSocket())
        throw new Error(`refusing to replace ${path}: it exists and is not a socket`);
      await unlink(path);
    }
    await this.listeners.listen((s, ready) => s.listen({ path }, ready));
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
    // Handshaking clients have nothing in flight: Connection.shutdown drops them at once.
    await this.listeners.close(drainMs);
    this.admission.dispose();
    this.log.info('NBD server closed');
  }

  private accept(accepted: Socket): void {
    let inbound!: Inbound;
    let socket =
      adoptWithReadBuffer(accepted, (view) => inbound.push(view, true), { allowHalfOpen: true }) ??
      accepted;
    inbound = new Inbound(socket);
    if (socket === accepted) socket.on('data', (chunk: Buffer) => inbound.push(chunk));
    const log = this.log.child({
      conn: this.listeners.connectionId(),
      peer: socket.remoteAddress ? `${socket.remoteAddress}:${socket.remotePort}` : 'unix',
    });
    socket.on('error', (err) => log.debug({ err: err.message }, 'socket error'));
    if (!this.listeners.admit(socket, log)) return;
    const ticket = this.admission.admit(clientAddressOf(socket.remoteAddress), () =>
      socket.destroy(),
    );
    if (!ticket) {
      socket.destroy();
      return;
    }

    let finished!: () => void;
    const conn: Connection = {
      socket,
      session: undefined,
      done: new Promise((resolve) => (finished = resolve)),
      shutdown: () => (conn.session ? conn.session.shutdown() : conn.socket.destroy()),
      destroy: () => conn.socket.destroy(),
    };
    this.listeners.connections.add(conn);
    this.options.metrics?.onConnection?.(1);
    log.debug('connection accepted');

    socket.on('end', () => inbound.fail(new Error('client closed the connection')));
    const closed = new Promise<void>((resolve) => socket.once('close', () => resolve()));
    void closed.then(() => inbound.fail(new Error('connection closed')));
    const deadline = new HandshakeDeadline(this.handshakeTimeoutMs, () => {
      log.debug({ timeoutMs: this.handshakeTimeoutMs }, 'handshake timed out: closing connection');
      this.admission.release(ticket);
      this.options.metrics?.onDropped?.('handshake-timeout');
      socket.destroy();
    });

    const tls = this.options.tls;
    const startTls = async (): Promise<Socket> => {
      // The TLS socket reads and writes from now on; the plain one's 'close' still ends the connection.
      const upgrade = upgradeToTls(socket, tls!, (chunk, transient) =>
        inbound.push(chunk, transient),
      );
      socket = conn.socket = upgrade.socket;
      inbound.switchSource(socket);
      socket.on('end', () => inbound.fail(new Error('client closed the connection')));
      socket.on('error', (err) => log.debug({ err: err.message }, 'TLS socket error'));
      await upgrade.secured;
      const cipher = upgrade.socket.getCipher();
      log.debug({ protocol: upgrade.socket.getProtocol(), cipher: cipher.name }, 'TLS started');
      return socket;
    };

    const serve = async (): Promise<void> => {
      let negotiated;
      try {
        negotiated = await negotiate(
          socket,
          inbound,
          deadline.pausedDuring(this.provider),
          log,
          tls && { required: tls.required, start: startTls },
        );
      } catch (err) {
        if (!socket.destroyed)
          log.info({ reason: (err as Error).message }, 'handshake failed: closing connection');
        socket.destroy();
        return;
      } finally {
        deadline.clear();
      }
      if (!negotiated) {
        log.debug('client aborted the handshake');
        endGracefully(socket);
        return;
      }
      // Its place was kept for it since admission (connection-admission.ts): never refused now.
      this.admission.establish(ticket);
      const session = new Session(
        socket,
        inbound,
        negotiated,
        log.child({ export: negotiated.export.name }),
        this.limits,
        this.options.metrics?.onRequest?.bind(this.options.metrics),
      );
      conn.session = session;
      session.start();
      if (this.listeners.isClosing) session.shutdown();
      await session.finished;
    };

    void serve()
      .catch((err) => {
        log.error({ err }, 'connection failed unexpectedly');
        socket.destroy();
      })
      .then(() => closed)
      .then(() => {
        this.listeners.connections.delete(conn);
        this.admission.release(ticket);
        this.options.metrics?.onConnection?.(-1);
        log.debug('connection closed');
        finished();
      });
  }
}

/**
 * The handshake's deadline bounds the client's part of it (a slow or idle
 * client holds a handshake slot): it stops while the server itself opens or
 * describes an export, which in a cluster may wait out a dead writer's lock
 * (node/on-demand-hosting.ts), and runs on with the time it had left.
 */
class HandshakeDeadline {
  private timer: NodeJS.Timeout | undefined;
  private left: number;
  private startedAt = 0;
  private busy = 0;
  private cleared = false;

  constructor(
    timeoutMs: number,
    private readonly expired: () => void,
  ) {
    this.left = timeoutMs;
    this.run();
  }

  /** `provider`, its open() and describe() not counted against the deadline. */
  pausedDuring(provider: ExportProvider): ExportProvider {
    const paused = async <T>(work: () => Promise<T>): Promise<T> => {
      this.pause();
      try {
        return await work();
      } finally {
        this.resume();
      }
    };
    return {
      list: () => provider.list(),
      open: (name) => paused(() => provider.open(name)),
      describe: (name) => paused(() => provider.describe(name)),
    };
  }

  clear(): void {
    this.cleared = true;
    clearTimeout(this.timer);
  }

  private run(): void {
    this.startedAt = performance.now();
    this.timer = setTimeout(this.expired, Math.max(0, this.left));
  }

  private pause(): void {
    if (this.busy++ > 0 || this.cleared) return;
    clearTimeout(this.timer);
    this.left -= performance.now() - this.startedAt;
  }

  private resume(): void {
    if (--this.busy > 0 || this.cleared) return;
    this.run();
  }
}
