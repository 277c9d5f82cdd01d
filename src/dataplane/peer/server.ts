/**
 * PeerServer: serves a node's blocks to its peers — the TBP hot path on one
 * TCP port, and the gRPC service (grpc.ts) on another.
 *
 * Isolation: every socket has its own error handler and every promise a
 * catch, so one hostile or broken peer only ever loses its own connection.
 * Limits: a connection cap, a HELLO deadline (a connection that has not said
 * who it is in time is closed, so idle garbage cannot hold slots), and the
 * per-session backpressure limits (session.ts). Listening, the cap and the
 * draining close are the shared Listeners (transport/listeners.ts).
 *
 * With `tls` (peer-tls.ts) every connection is mutual TLS: the HELLO
 * deadline covers the handshake too, a peer that does not complete it with a
 * certificate from the cluster CA is closed before any TBP is read, and its
 * refusal is logged once per remote IP (refusal-log.ts). TLS sockets are
 * read the default way (Node reads TLS into buffers of its own).
 */
import type { AddressInfo, Socket } from 'node:net';
import type { TLSSocket } from 'node:tls';
import { logger, type Logger } from '../../common/log.js';
import { BufferPool } from '../transport/buffer-pool.js';
import { Listeners, type ServedSocket } from '../transport/listeners.js';
import { adoptWithReadBuffer } from '../transport/read-buffer.js';
import type { PeerBlockBackend } from './backend.js';
import { PeerGrpcService } from './grpc.js';
import { describeTlsFailure, peerRefusal, serverTlsSocket, type PeerTls } from './peer-tls.js';
import { RefusalLog } from './refusal-log.js';
import {
  DEFAULT_PEER_SESSION_LIMITS,
  PeerSession,
  type PeerRequestObserver,
  type PeerSessionLimits,
} from './session.js';

export interface PeerServerOptions {
  /** The cluster this node belongs to; peers of another are refused. */
  clusterId: string;
  /** This node's UUID, sent in HELLO replies. Default: backend.info().uuid. */
  nodeId?: string;
  log?: Logger;
  /** Open TBP connections; more are accepted and closed at once. Default 1024. */
  maxConnections?: number;
  /** A connection that has not completed HELLO by then is closed. Default 10 s. */
  helloTimeoutMs?: number;
  /** Per-connection backpressure; defaults in session.ts. */
  sessionLimits?: Partial<PeerSessionLimits>;
  /** Called once per answered TBP request; must not throw. */
  onRequest?: PeerRequestObserver;
  /**
   * Read each connection into one reused buffer (default true). false reads
   * the default way (a fresh buffer per read): slower, for debugging.
   */
  reuseReadBuffer?: boolean;
  /** Mutual TLS with the cluster CA on TBP and gRPC (peer-tls.ts); plaintext when absent. */
  tls?: PeerTls;
}

interface Connection extends ServedSocket {
  session: PeerSession;
}

/**
 * Gathered payloads (frames that span socket chunks) come from this pool and
 * go back to it when the request settles, so a busy node keeps reusing warm
 * memory instead of faulting in fresh pages per batch.
 */
const peerBuffers = new BufferPool(64 * 1024 * 1024);

export class PeerServer {
  private readonly log: Logger;
  private readonly nodeId: string;
  private readonly helloTimeoutMs: number;
  private readonly limits: PeerSessionLimits;
  private readonly listeners: Listeners<Connection>;
  private grpc: PeerGrpcService | undefined;
  private closing: Promise<void> | undefined;
  private readonly refusals = new RefusalLog();

  constructor(
    private readonly backend: PeerBlockBackend,
    private readonly options: PeerServerOptions,
  ) {
    this.log = options.log ?? logger('peer');
    this.nodeId = options.nodeId ?? backend.info().uuid;
    this.listeners = new Listeners({
      log: this.log,
      maxConnections: options.maxConnections ?? 1024,
      names: { server: 'peer', connection: 'peer connection' },
      onSocket: (socket) => this.accept(socket),
    });
    this.helloTimeoutMs = options.helloTimeoutMs ?? 10_000;
    this.limits = { ...DEFAULT_PEER_SESSION_LIMITS, ...options.sessionLimits };
  }

  get connectionCount(): number {
    return this.listeners.connections.size;
  }

  /** Serve TBP on host:port (0 picks a free port). Resolves with the bound address. */
  async listen(host: string, port: number): Promise<AddressInfo> {
    const address = await this.listeners.listenTcp(host, port);
    this.log.info({ host: address.address, port: address.port }, 'peer protocol (TBP) listening');
    return address;
  }

  /** Serve the gRPC service on host:port (0 picks a free port). Resolves with the bound port. */
  async listenGrpc(host: string, port: number): Promise<number> {
    if (this.closing) throw new Error('peer server is closed');
    this.grpc ??= new PeerGrpcService(this.backend, {
      clusterId: this.options.clusterId,
      nodeId: this.nodeId,
      log: this.log,
      tls: this.options.tls,
    });
    const bound = await this.grpc.listen(host, port);
    this.log.info({ host, port: bound }, 'peer gRPC service listening');
    return bound;
  }

  /**
   * Stop accepting; let in-flight requests finish (new ones get
   * SHUTTING_DOWN) for up to drainMs, then destroy what is left. Resolves when
   * every listener and connection is closed.
   */
  close(options: { drainMs?: number } = {}): Promise<void> {
    this.closing ??= this.shutdown(options.drainMs ?? 5000);
    return this.closing;
  }

  private async shutdown(drainMs: number): Promise<void> {
    const grpcClosed = this.grpc?.close(drainMs) ?? Promise.resolve();
    await this.listeners.close(drainMs);
    await grpcClosed;
    this.log.info('peer server closed');
  }

  private accept(accepted: Socket): void {
    // Read into one reused buffer (transport/read-buffer.ts); where this
    // Node does not allow it, the socket is read the default way.
    // The session does not exist yet when the socket is made, hence the box.
    const box: { session?: PeerSession } = {};
    const tls = this.options.tls;
    const adopted =
      this.options.reuseReadBuffer === false || tls
        ? undefined
        : adoptWithReadBuffer(
            accepted,
            (view, inPlace) => box.session?.onRead(view, !inPlace, inPlace),
            {
              allowHalfOpen: true,
              target: () => box.session?.readTarget(),
            },
          );
    const plain = adopted ?? accepted;
    const remote = `${plain.remoteAddress}:${plain.remotePort}`;
    const log = this.log.child({ conn: this.listeners.connectionId(), remote });
    plain.on('error', (err) => log.debug({ err: err.message }, 'peer socket error'));
    if (!this.listeners.admit(plain, log)) return;
    const socket = tls ? serverTlsSocket(plain, tls) : plain;
    const session = new PeerSession(
      socket,
      this.backend,
      { clusterId: this.options.clusterId, nodeId: this.nodeId },
      log,
      this.limits,
      peerBuffers,
      this.options.onRequest,
    );
    box.session = session;
    const conn: Connection = {
      session,
      done: session.finished,
      shutdown: () => session.shutdown(),
      destroy: () => session.close('drain time over'),
    };
    this.listeners.connections.add(conn);
    const helloTimer = setTimeout(() => {
      if (!session.helloDone) {
        log.info({ timeoutMs: this.helloTimeoutMs }, 'no HELLO in time: closing peer connection');
        session.close('HELLO timeout');
      }
    }, this.helloTimeoutMs);
    helloTimer.unref();
    if (tls)
      this.checkPeerCertificate(socket as TLSSocket, session, plain.remoteAddress ?? remote, log);
    session.start(adopted !== undefined);
    void session.finished.then(() => {
      clearTimeout(helloTimer);
      this.listeners.connections.delete(conn);
      log.debug({ peerNode: session.peerNodeId }, 'peer connection closed');
    });
  }

  /**
   * Refuse a TLS peer that failed the handshake or whose certificate the
   * cluster CA did not sign. Registered before the session starts: a TLS
   * socket emits 'secure' before any application data, so nothing the peer
   * sent is read first.
   */
  private checkPeerCertificate(
    socket: TLSSocket,
    session: PeerSession,
    remoteIp: string,
    log: Logger,
  ): void {
    let secured = false;
    socket.once('secure', () => {
      secured = true;
      const why = peerRefusal(socket);
      if (why === undefined) return;
      this.refusals.note(log, remoteIp, why, 'refusing peer connection: TLS');
      session.close(why);
    });
    let failed = false;
    socket.on('error', (err) => {
      if (secured) return log.debug({ err: err.message }, 'peer socket error');
      failed = true;
      this.refusals.note(log, remoteIp, describeTlsFailure(err), 'refusing peer connection: TLS');
    });
    // A client that rejects our certificate just hangs up mid-handshake.
    socket.once('close', () => {
      if (!secured && !failed)
        this.refusals.note(
          log,
          remoteIp,
          'closed during the TLS handshake (does the peer trust our certificate? a node of another CA?)',
          'refusing peer connection: TLS',
        );
    });
  }
}
