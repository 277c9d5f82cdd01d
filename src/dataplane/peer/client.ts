/**
 * PeerClient: one node's TBP connection to one peer.
 *
 * Contract:
 * - Lazy: the first request connects (TCP, then HELLO with our cluster and
 *   node id; the peer's answer is checked the same way, reply-decoder.ts).
 *   Requests made meanwhile wait for it. A connection that is lost is re-made
 *   by the next request; after a failed attempt, requests fail fast with
 *   PeerUnavailableError until a backoff (50 ms doubling to 2 s,
 *   reconnect-backoff.ts) has passed.
 * - Pipelined: every request is written at once, with an id; replies are
 *   matched by id in whatever order they come (request-table.ts).
 * - Deadlines: every request has one (getTimeoutMs, putTimeoutMs,
 *   syncTimeoutMs, timeoutMs: client-options.ts; or its own); past it, the request rejects with
 *   PeerTimeoutError and a late reply is dropped. A timeout alone does not
 *   close the connection: a slow disk on the peer is not a dead peer. The
 *   connection is closed (everything outstanding rejects with
 *   PeerUnavailableError) only when it is clearly dead: a request has timed
 *   out, and not one byte has come from the peer for deadAfterMs, although a
 *   PING (answered by the peer without touching storage) was sent when the
 *   first request timed out. A frozen peer (SIGSTOP, a hung host: no reset,
 *   just silence) is found this way, by time, not by TCP.
 * - Errors are PeerError subclasses (errors.ts) with a `retryable` marker.
 *
 * Hot path (small frames encoded into a slab, block data never copied, one
 * deadline timer per client) and mutual TLS: README.md, "Hot-path choices"
 * and "Mutual TLS".
 */
import { connect, type Socket } from 'node:net';
import { TLSSocket } from 'node:tls';
import { logger, type Logger } from '../../common/log.js';
import type { BlockRef } from '../../model/block-ref.js';
import type { PeerBlockStore } from './backend.js';
import {
  PeerProtocolError,
  PeerTimeoutError,
  PeerUnavailableError,
  type PeerError,
  statusError,
} from './errors.js';
import { onreadOptions } from '../transport/read-buffer.js';
import { FrameReader, IN_PLACE_MIN_BYTES } from './frame-reader.js';
import { replyAllocator } from './reply-memory.js';
import { checkRequest, encodeRequest } from './request-encoder.js';
import { Outbound } from './outbound.js';
import {
  clientSettings,
  type ClientSettings,
  type PeerClientOptions,
  type RequestOptions,
} from './client-options.js';
import { ReconnectBackoff } from './reconnect-backoff.js';
import {
  connectTls,
  describeTlsFailure,
  loadPeerTls,
  looksLikeTls,
  type PeerTls,
} from './peer-tls.js';
import { RefusalLog } from './refusal-log.js';
import { OlderForms } from './older-forms.js';
import { acceptHello, decodeReply, type PeerIdentity } from './reply-decoder.js';
import { RequestTable, type PendingRequest } from './request-table.js';
import {
  APPEND_PRESSURE,
  HEADER_SIZE,
  OP_DELETE_BLOCKS,
  OP_GET_BLOCK,
  OP_GET_RANGE,
  OP_HAS_BLOCKS,
  OP_HELLO,
  OP_COMMIT_VOLUME,
  OP_INTENT_APPEND,
  OP_INTENT_COVERED,
  OP_INTENT_SEAL,
  OP_PING,
  OP_PUT_BLOCKS,
  OP_PUT_PATCHES,
  OP_SYNC,
  STATUS_NOT_FOUND,
  STATUS_OK,
  checkFrameHeader,
  decodeErrorMessage,
  encodeHello,
  headerOpcode,
  headerPayloadLength,
  headerRequestId,
  headerStatus,
  opName,
  type BlockRange,
  type RangeReply,
  type WireBlock,
  type WirePatch,
  type PatchResults,
  type IntentCovered,
  type IntentSealReply,
  type IntentSealRequest,
} from './wire.js';

export type { PeerClientOptions, RequestOptions } from './client-options.js';
export type { PeerIdentity } from './reply-decoder.js';

/** One per thread: every client's refused handshakes, logged once per peer. */
const refusals = new RefusalLog();

interface Connection {
  socket: Socket;
  out: Outbound;
  reader: FrameReader;
  ready: boolean;
  helloId: number;
  connectTimer: NodeJS.Timeout | undefined;
}

export class PeerClient implements PeerBlockStore {
  /** host:port, as errors and logs name the peer. */
  readonly peer: string;
  private readonly log: Logger;
  private readonly settings: ClientSettings;
  private readonly backoff: ReconnectBackoff;
  private readonly tls: PeerTls | undefined;

  private conn: Connection | undefined;
  /** Every request not yet answered, sent or still queued for the connection. */
  private readonly pending: RequestTable;
  /** Requests made while connecting, in order. */
  private queue: PendingRequest[] = [];
  private closed = false;
  private closing: Promise<void> | undefined;

  /** Memory for replies the caller keeps (blocks): reply-memory.ts. */
  private readonly allocate = replyAllocator();

  private lastHeardAt = 0;
  /** A request timed out with nothing heard since it was sent. */
  private suspect = false;
  private probeOut = false;

  /** Request forms (GET_RANGE, HAS by hash) the peer on a connection refused: asked the older way there. */
  private readonly olderForms: OlderForms<Connection>;

  /** The peer's HELLO on the current connection. */
  identity: PeerIdentity | undefined;
  /** Replies that came after their request had timed out (dropped). */
  lateReplies = 0;

  constructor(private readonly options: PeerClientOptions) {
    this.peer = `${options.host}:${options.port}`;
    this.log = (options.log ?? logger('peer-client')).child({ peer: this.peer });
    this.olderForms = new OlderForms(() => this.conn, this.log);
    this.settings = clientSettings(options);
    this.backoff = new ReconnectBackoff(this.settings.reconnectBackoffMs);
    this.tls = options.tls ? loadPeerTls(options.tls) : undefined;
    this.pending = new RequestTable(this.settings.deadlineTickMs, this.expired, this.checkAlive);
  }

  /** True while a connection is established and past HELLO. */
  get connected(): boolean {
    return this.conn?.ready === true;
  }

  /** Requests sent or queued and not yet answered. */
  get outstanding(): number {
    return this.pending.size;
  }

  // ------------------------------------------------------------- requests

  putBlocks(blocks: readonly WireBlock[], options: RequestOptions = {}): Promise<void> {
    if (blocks.length === 0) return Promise.resolve();
    return this.request(OP_PUT_BLOCKS, blocks, options.timeoutMs ?? this.settings.putTimeoutMs);
  }

  /**
   * Store blocks as patches over bases the peer holds (PUT_PATCHES, wire-patches.ts): per patch
   * a status and the tree hash stored. A peer from before it rejects with BAD_REQUEST.
   */
  putPatches(patches: readonly WirePatch[], options: RequestOptions = {}): Promise<PatchResults> {
    return this.request(OP_PUT_PATCHES, patches, options.timeoutMs ?? this.settings.putTimeoutMs);
  }

  /** The block, or undefined when the peer does not hold it. Its bytes may be a view into a larger received buffer: copy them to keep them long. */
  getBlock(ref: BlockRef, options: RequestOptions = {}): Promise<WireBlock | undefined> {
    return this.request(OP_GET_BLOCK, ref, options.timeoutMs ?? this.settings.getTimeoutMs);
  }

  /**
   * Bytes [offset, offset + length) of a block with its sub-sums entry
   * (GET_RANGE, wire-ranges.ts), or the whole block (`entry` undefined) when
   * the peer has no usable entry; undefined when it does not hold the block.
   * A peer from before GET_RANGE answers BAD_REQUEST: that connection is
   * then asked GET_BLOCK instead, this request included.
   */
  getRange(range: BlockRange, options: RequestOptions = {}): Promise<RangeReply | undefined> {
    const timeoutMs = options.timeoutMs ?? this.settings.getTimeoutMs;
    return this.olderForms.ask(
      'GET_RANGE',
      () => this.request<RangeReply | undefined>(OP_GET_RANGE, range, timeoutMs),
      () =>
        this.request<WireBlock | undefined>(OP_GET_BLOCK, range.ref, timeoutMs).then((block) =>
          block ? { offset: 0, entry: undefined, block } : undefined,
        ),
    );
  }

  /** With `hashes` ([lo, hi] per ref), held means held with that hash; a peer from before them is asked by ref. */
  hasBlocks(refs: readonly BlockRef[], hashes?: Uint32Array, options: RequestOptions = {}) {
    if (refs.length === 0) return Promise.resolve([]);
    const timeoutMs = options.timeoutMs ?? this.settings.timeoutMs;
    const byRef = () => this.request<boolean[]>(OP_HAS_BLOCKS, { refs }, timeoutMs);
    if (!hashes) return byRef();
    const byHash = () => this.request<boolean[]>(OP_HAS_BLOCKS, { refs, hashes }, timeoutMs);
    return this.olderForms.ask('HAS_BLOCKS by hash', byHash, byRef);
  }

  deleteBlocks(refs: readonly BlockRef[], options: RequestOptions = {}): Promise<number> {
    if (refs.length === 0) return Promise.resolve(0);
    return this.request(OP_DELETE_BLOCKS, refs, options.timeoutMs ?? this.settings.timeoutMs);
  }

  /**
   * Resolves once everything the peer had stored when the request arrived is
   * durable there — every put this client saw resolve, and those of any other
   * connection (OP_SYNC). Its own deadline (syncTimeoutMs, default 10 s): an
   * fdatasync can be slow, and a slow one is not a dead peer (the client's
   * PING probe tells the two apart).
   */
  sync(options: RequestOptions = {}): Promise<void> {
    return this.request(OP_SYNC, undefined, options.timeoutMs ?? this.settings.syncTimeoutMs);
  }

  /** A flush's intent records (wire-intents.ts) durably on the peer; `pressure`: its log is past half full. */
  appendIntents(records: Buffer[], options: RequestOptions = {}): Promise<{ pressure: boolean }> {
    const timeoutMs = options.timeoutMs ?? this.settings.putTimeoutMs;
    return this.request<number>(OP_INTENT_APPEND, records, timeoutMs).then((flags) => ({
      pressure: (flags & APPEND_PRESSURE) !== 0,
    }));
  }

  /** Seal the volume's intent log on the peer at `token`; one page of what it holds below it. */
  sealIntents(request: IntentSealRequest, options: RequestOptions = {}): Promise<IntentSealReply> {
    const timeoutMs = options.timeoutMs ?? this.settings.syncTimeoutMs;
    return this.request(OP_INTENT_SEAL, request, timeoutMs);
  }

  /** The peer commits what its writer of the volume has FLUSHed (COMMIT_VOLUME). Deadline: syncTimeoutMs. */
  commitVolume(volumeId: number, options: RequestOptions = {}): Promise<void> {
    return this.request(
      OP_COMMIT_VOLUME,
      volumeId,
      options.timeoutMs ?? this.settings.syncTimeoutMs,
    );
  }

  /** A committed version holds the volume's records below (token, seq): the peer may drop them. */
  intentsCovered(covered: IntentCovered, options: RequestOptions = {}): Promise<void> {
    return this.request(OP_INTENT_COVERED, covered, options.timeoutMs ?? this.settings.timeoutMs);
  }

  /** A round trip that touches no storage; resolves with its time in ms. */
  async ping(options: RequestOptions = {}): Promise<number> {
    const started = performance.now();
    await this.request<void>(OP_PING, undefined, options.timeoutMs ?? this.settings.timeoutMs);
    return performance.now() - started;
  }

  /**
   * No new requests; resolves once every outstanding one has settled (each
   * has a deadline, so this is bounded) and the connection is closed.
   */
  close(): Promise<void> {
    this.closing ??= (async () => {
      this.closed = true;
      await this.pending.drained();
      this.pending.stopTimer();
      const conn = this.conn;
      if (conn) {
        this.conn = undefined;
        clearTimeout(conn.connectTimer);
        conn.out.flush();
        conn.socket.end();
        conn.socket.destroySoon();
        setTimeout(() => conn.socket.destroy(), 1000).unref();
      }
    })();
    return this.closing;
  }

  /** Send a request (a batch over the limits rejects at once, with nothing sent: checkRequest). */
  private request<T>(op: number, arg: unknown, timeoutMs: number): Promise<T> {
    if (this.closed) return Promise.reject(new PeerUnavailableError(this.peer, 'client is closed'));
    try {
      checkRequest(op, arg);
    } catch (err) {
      return Promise.reject(err);
    }
    const now = performance.now();
    let conn = this.conn;
    if (!conn) {
      const refusal = this.backoff.refusal(now);
      if (refusal !== undefined)
        return Promise.reject(new PeerUnavailableError(this.peer, refusal));
      conn = this.connect();
    }
    return new Promise<T>((resolve, reject) => {
      const p = this.pending.add(op, arg, now, timeoutMs, resolve as (v: never) => void, reject);
      if (conn.ready) this.send(conn, p);
      else this.queue.push(p);
    });
  }

  /**
   * Encode and write one request. A request that cannot be encoded (blocks
   * the caller changed while it waited for the connection) rejects alone:
   * encoders only commit whole frames, so nothing of it reaches the stream.
   */
  private send(conn: Connection, p: PendingRequest): void {
    p.sentAt = performance.now();
    // Silence is measured from when we started waiting for something: an
    // idle connection's last reply an hour ago says nothing about the peer
    // now. Not while suspect: a probe or a retry must not reset the clock.
    if (!this.suspect && this.pending.size === 1) this.lastHeardAt = p.sentAt;
    try {
      encodeRequest(conn.out, p.op, p.id, p.arg);
    } catch (err) {
      this.pending.delete(p);
      p.reject(err as Error);
    }
  }

  // ----------------------------------------------------------- connection

  private connect(): Connection {
    // Replies land in one reused read buffer (transport/read-buffer.ts), not a fresh one per read.
    let conn!: Connection;
    const { host, port } = this.options;
    const socket: Socket = this.tls
      ? connectTls(host, port, this.tls)
      : connect({
          host,
          port,
          noDelay: true,
          onread: onreadOptions(
            (view, inPlace) => this.onRead(conn, view, !inPlace, inPlace),
            () => conn?.reader.inPlaceTarget(IN_PLACE_MIN_BYTES),
          ),
        });
    if (this.tls) {
      socket.setNoDelay(true);
      socket.on('data', (chunk: Buffer) => this.onRead(conn, chunk, false));
    }
    conn = {
      socket,
      out: new Outbound(socket),
      reader: new FrameReader(this.allocate),
      ready: false,
      helloId: this.pending.allocateId(),
      connectTimer: undefined,
    };
    this.conn = conn;
    this.lastHeardAt = performance.now();
    this.suspect = false;
    this.probeOut = false;
    conn.connectTimer = setTimeout(
      () =>
        this.fail(
          conn,
          new PeerUnavailableError(
            this.peer,
            `no connection and HELLO within ${this.settings.connectTimeoutMs} ms`,
          ),
        ),
      this.settings.connectTimeoutMs,
    );
    socket.on('error', (err) =>
      this.fail(
        conn,
        new PeerUnavailableError(
          this.peer,
          this.tls && !(socket as TLSSocket).authorized
            ? `TLS: ${describeTlsFailure(err)}`
            : err.message,
          { cause: err },
        ),
      ),
    );
    socket.on('close', () =>
      this.fail(conn, new PeerUnavailableError(this.peer, 'connection closed')),
    );
    socket.on('end', () =>
      this.fail(conn, new PeerUnavailableError(this.peer, 'peer ended the connection')),
    );
    // Written before the TCP handshake completes; the socket sends it once connected.
    socket.write(
      encodeHello(conn.helloId, { clusterId: this.options.clusterId, nodeId: this.options.nodeId }),
    );
    return conn;
  }

  private onHello(conn: Connection, status: number, payload: Buffer): void {
    let hello: PeerIdentity;
    try {
      hello = acceptHello(this.peer, this.options, status, payload);
    } catch (err) {
      return this.fail(conn, err as PeerError);
    }
    clearTimeout(conn.connectTimer);
    conn.connectTimer = undefined;
    conn.ready = true;
    this.identity = hello;
    this.backoff.succeeded();
    this.log.debug({ peerNode: hello.nodeId }, 'connected to peer');
    const queued = this.queue;
    this.queue = [];
    // Skip requests that timed out while we were connecting.
    for (const p of queued) if (this.pending.holds(p)) this.send(conn, p);
  }

  /**
   * The connection is unusable: reject everything that depended on it. Only
   * the first call for a connection counts (error, end and close all come).
   */
  private fail(conn: Connection, err: PeerError): void {
    if (this.conn !== conn) return;
    this.conn = undefined;
    clearTimeout(conn.connectTimer);
    conn.reader.clear();
    conn.socket.destroy();
    this.identity = undefined;
    // A failed attempt: back off before the next one.
    if (!conn.ready) this.backoff.failed(err.message, performance.now());
    if (!conn.ready && this.tls && err instanceof PeerUnavailableError)
      refusals.note(
        this.log,
        this.peer,
        err.message,
        'peer connection attempt failed over TLS (does the peer trust our certificate? see its log)',
      );
    this.log.debug(
      { reason: err.message, outstanding: this.pending.size },
      conn.ready ? 'peer connection lost' : 'peer connection attempt failed',
    );
    this.queue = [];
    this.pending.rejectAll(err);
  }

  // -------------------------------------------------------------- replies

  /** A read's bytes: a view of the reused read buffer, valid only during this call. */
  private onRead(conn: Connection, view: Buffer, transient: boolean, inPlace = false): void {
    if (this.conn !== conn) return;
    this.lastHeardAt = performance.now();
    this.suspect = false;
    if (inPlace) conn.reader.filledInPlace(view.length);
    else conn.reader.push(view, transient);
    this.parse(conn);
    conn.reader.settle();
  }

  private parse(conn: Connection): void {
    const reader = conn.reader;
    while (this.conn === conn && reader.peekHeader()) {
      const h = reader.headerBuf;
      const at = reader.headerAt;
      const problem = checkFrameHeader(h, at, true);
      if (problem) {
        const reason =
          !conn.ready && !this.tls && looksLikeTls(h[at])
            ? `${problem}: the peer speaks TLS (start this node with --peer-tls-dir)`
            : problem;
        this.log.warn({ reason }, 'framing error from peer: closing connection');
        return this.fail(conn, new PeerProtocolError(this.peer, reason));
      }
      const length = headerPayloadLength(h, at);
      if (reader.available < HEADER_SIZE + length) return;
      const opcode = headerOpcode(h, at);
      const status = headerStatus(h, at);
      const id = headerRequestId(h, at);
      let payload = reader.takeFrame(length);
      // A block goes to the caller, who keeps it: it must not stay a view of the read buffer.
      // (Other replies are decoded into numbers and booleans right here.)
      if (
        reader.payloadTransient &&
        (opcode === OP_GET_BLOCK || opcode === OP_GET_RANGE || opcode === OP_INTENT_SEAL) &&
        status === STATUS_OK
      ) {
        const owned = this.allocate(length);
        payload.copy(owned);
        payload = owned;
      }
      if (!conn.ready) {
        if (id !== conn.helloId || opcode !== OP_HELLO)
          return this.fail(
            conn,
            new PeerProtocolError(this.peer, `${opName(opcode)} reply before HELLO`),
          );
        this.onHello(conn, status, payload);
        continue;
      }
      this.onReply(conn, opcode, status, id, payload);
    }
  }

  private onReply(
    conn: Connection,
    opcode: number,
    status: number,
    id: number,
    payload: Buffer,
  ): void {
    const p = this.pending.get(id);
    if (!p) {
      // Its request timed out (or it was our probe's, already settled): drop it.
      this.lateReplies++;
      return;
    }
    if (p.op !== opcode)
      return this.fail(
        conn,
        new PeerProtocolError(
          this.peer,
          `${opName(opcode)} reply to ${opName(p.op)} request ${id}`,
        ),
      );
    this.pending.delete(p);
    if (status !== STATUS_OK) {
      if (status === STATUS_NOT_FOUND && (opcode === OP_GET_BLOCK || opcode === OP_GET_RANGE))
        return p.resolve(undefined as never);
      return p.reject(statusError(this.peer, opName(opcode), status, decodeErrorMessage(payload)));
    }
    let value: unknown;
    try {
      value = decodeReply(opcode, p.arg, payload);
    } catch (err) {
      const error = new PeerProtocolError(
        this.peer,
        `bad ${opName(opcode)} reply: ${(err as Error).message}`,
      );
      p.reject(error);
      this.log.warn({ reason: error.message }, 'undecodable reply from peer: closing connection');
      return this.fail(conn, error);
    }
    p.resolve(value as never);
  }

  // ---------------------------------------------------- deadlines and dead peers

  /** A request past its deadline (out of the table already). */
  private readonly expired = (p: PendingRequest): void => {
    if (p.sentAt > 0 && p.sentAt >= this.lastHeardAt) this.suspect = true;
    p.reject(new PeerTimeoutError(this.peer, opName(p.op), p.timeoutMs));
  };

  /** After each deadline check: declare the connection dead when it is clearly so. */
  private readonly checkAlive = (now: number): void => {
    const conn = this.conn;
    if (!conn?.ready || !this.suspect) return;
    if (now - this.lastHeardAt >= this.settings.deadAfterMs) {
      this.log.warn(
        { silentMs: Math.round(now - this.lastHeardAt) },
        'peer silent after a timeout: closing the connection',
      );
      return this.fail(
        conn,
        new PeerUnavailableError(
          this.peer,
          `peer silent for ${Math.round(now - this.lastHeardAt)} ms`,
        ),
      );
    }
    if (!this.probeOut) this.probe(conn);
  };

  /** One PING to tell a slow peer (answers it) from a dead one (does not). */
  private probe(conn: Connection): void {
    this.probeOut = true;
    const now = performance.now();
    const settled = this.probeSettled;
    this.send(
      conn,
      this.pending.add(OP_PING, undefined, now, this.settings.deadAfterMs, settled, settled),
    );
  }

  private readonly probeSettled = (): void => {
    this.probeOut = false;
  };
}
