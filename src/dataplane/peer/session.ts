/**
 * PeerSession: one inbound TBP connection on the server side.
 *
 * Contract:
 * - The first frame must be HELLO; anything else first is a framing error. A
 *   HELLO naming another cluster is answered WRONG_CLUSTER and the connection
 *   is ended; nothing of that peer is served.
 * - Pipelined: requests start as soon as their frame is complete; replies go
 *   out as each settles, in any order, paired by request id.
 * - Two tiers of error. A framing error (checkFrameHeader, a frame cut short
 *   by the peer closing, a request before HELLO) is logged with the remote
 *   address and closes this connection only. A bad request (unknown opcode or
 *   flag, a payload that does not decode) gets BAD_REQUEST and the session
 *   goes on: the header said how long the payload is, so the stream is still
 *   in step. Backend failures get the status of their error (wire.ts
 *   statusOfError); INTERNAL ones are logged.
 * - Backpressure: while maxInflightRequests or maxInflightBytes (request
 *   payloads being served) are reached, or more than maxQueuedReplyBytes of
 *   replies wait in the socket, the socket is not read; reading resumes as
 *   they settle or drain. Buffered but unparsed bytes are at most one frame
 *   plus one socket chunk.
 * - shutdown() (server closing): new requests are answered SHUTTING_DOWN,
 *   in-flight ones finish, then the connection ends. `finished` resolves once
 *   the socket is closed and nothing is in flight.
 */
import type { Socket } from 'node:net';
import type { Logger } from '../../common/log.js';
import type { BufferPool } from '../transport/buffer-pool.js';
import {
  connectionLimits,
  ServedConnection,
  endGracefully,
  type ConnectionLimits,
} from '../transport/served-connection.js';
import type { IntentHolder, PeerBlockBackend } from './backend.js';
import { FrameReader, IN_PLACE_MIN_BYTES, slabAllocator } from './frame-reader.js';
import { Outbound } from './outbound.js';
import {
  BLOCK_REPLY_HEAD_SIZE,
  decodeGetRange,
  encodeRangeReplyHead,
  rangeReplyHeadSize,
  type RangeReply,
  COUNT_REPLY_SIZE,
  FLAG_REPLY,
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
  decodePutPatches,
  encodePutPatchesReply,
  OP_SYNC,
  REQUEST_FLAGS_ALLOWED,
  STATUS_BAD_REQUEST,
  STATUS_INTERNAL,
  STATUS_NOT_FOUND,
  STATUS_OK,
  STATUS_SHUTTING_DOWN,
  STATUS_WRONG_CLUSTER,
  checkFrameHeader,
  decodeGetBlock,
  decodeHello,
  decodeCommitVolume,
  decodeIntentAppend,
  decodeIntentCovered,
  decodeIntentSeal,
  decodePutBlocks,
  decodeHasRequest,
  decodeRefs,
  encodeBitmapReply,
  encodeBlockReplyHead,
  encodeCountReply,
  encodeEmptyFrame,
  encodeErrorReply,
  encodeHelloReply,
  encodeIntentAppendReply,
  encodeIntentSealReply,
  APPEND_PRESSURE,
  INTENT_APPEND_REPLY_SIZE,
  TbpPayloadError,
  headerFlags,
  headerOpcode,
  headerPayloadLength,
  headerRequestId,
  headerStatus,
  isKnownOpcode,
  opName,
  statusName,
  statusOfError,
  type Hello,
} from './wire.js';
import { formatRef } from '../../model/block-ref.js';

/** maxInflightBytes counts request payload bytes. */
export type PeerSessionLimits = ConnectionLimits;

/** The first byte of a TLS ClientHello: a TLS peer dialling a plaintext node. */
const TLS_HANDSHAKE_RECORD = 0x16;

export const DEFAULT_PEER_SESSION_LIMITS: PeerSessionLimits = connectionLimits(1024);

/** Per-request observation for metrics: op name, payload bytes moved, seconds, status name. */
export type PeerRequestObserver = (
  op: string,
  bytes: number,
  seconds: number,
  status: string,
) => void;

export class PeerSession extends ServedConnection {
  private readonly reader: FrameReader;
  /** Memory for payloads we keep: small ones carved from slabs, large ones from the pool (given back when served). */
  private readonly allocate: (size: number) => Buffer;
  private readonly out: Outbound;
  /** The peer's node id once HELLO succeeded. */
  peerNodeId: string | undefined;
  private finishedOnce = false;

  /** `finished` resolves once the socket is closed and every in-flight request has settled. */
  constructor(
    socket: Socket,
    private readonly backend: PeerBlockBackend,
    private readonly identity: Hello,
    private readonly log: Logger,
    limits: PeerSessionLimits,
    private readonly pool: BufferPool,
    private readonly observe: PeerRequestObserver | undefined,
  ) {
    super(socket, limits, 'hello');
    this.allocate = slabAllocator((size) => pool.acquire(size));
    this.reader = new FrameReader(this.allocate);
    this.out = new Outbound(socket);
  }

  /**
   * Begin serving. With `transientReads` the owner feeds onRead() from the
   * connection's reused read buffer (server.ts); otherwise socket 'data'
   * chunks are read here.
   */
  start(transientReads: boolean): void {
    if (!transientReads) this.socket.on('data', (chunk: Buffer) => this.onRead(chunk, false));
    this.attach();
  }

  get helloDone(): boolean {
    return this.peerNodeId !== undefined;
  }

  /** The server is closing: answer new requests with SHUTTING_DOWN; end once in-flight ones are answered. */
  override shutdown(): void {
    if (this.phase === 'hello') {
      this.close('server closing before HELLO');
      return;
    }
    super.shutdown();
  }

  /** Close at once (HELLO deadline, drain time over). */
  close(reason: string): void {
    if (this.phase === 'closed') return;
    this.log.debug({ reason }, 'closing peer connection');
    this.phase = 'closed';
    this.reader.clear();
    this.socket.destroy();
  }

  // ---------------------------------------------------------------- reading

  /**
   * Bytes received; `transient`: a view of the reused read buffer, valid
   * only during this call; `inPlace`: read into readTarget()'s memory, so
   * already in the frame.
   */
  onRead(chunk: Buffer, transient: boolean, inPlace = false): void {
    if (this.phase === 'closed' || this.phase === 'draining') return;
    if (inPlace) this.reader.filledInPlace(chunk.length);
    else this.reader.push(chunk, transient);
    this.pump();
    this.reader.settle();
  }

  /** Where the socket's next read may land directly: the rest of a large frame being received. */
  readTarget(): Buffer | undefined {
    return this.reader.inPlaceTarget(IN_PLACE_MIN_BYTES);
  }

  /** Decode and start every complete frame buffered, until a limit says stop. */
  protected readonly pump = (): void => {
    const reader = this.reader;
    while (this.phase === 'hello' || this.phase === 'serving' || this.phase === 'shutting-down') {
      if (this.readingBlocked()) return;
      if (!reader.peekHeader()) break;
      const h = reader.headerBuf;
      const at = reader.headerAt;
      const problem = checkFrameHeader(h, at, false);
      if (problem)
        return this.framingError(
          this.phase === 'hello' && h[at] === TLS_HANDSHAKE_RECORD
            ? `${problem}: the peer speaks TLS (start this node with --peer-tls-dir)`
            : problem,
        );
      const length = headerPayloadLength(h, at);
      if (reader.available < HEADER_SIZE + length) break;
      const opcode = headerOpcode(h, at);
      const flags = headerFlags(h, at);
      const status = headerStatus(h, at);
      const id = headerRequestId(h, at);
      let payload = reader.takeFrame(length);
      // Every other request is decoded before its first await; a PUT's
      // blocks are views the backend uses later, so they need memory of their own.
      if (
        reader.payloadTransient &&
        (opcode === OP_PUT_BLOCKS || opcode === OP_PUT_PATCHES || opcode === OP_INTENT_APPEND)
      ) {
        const owned = this.allocate(length);
        payload.copy(owned);
        payload = owned;
      }
      this.dispatch(opcode, flags, status, id, payload);
    }
    this.resumeReading();
  };

  private dispatch(
    opcode: number,
    flags: number,
    status: number,
    id: number,
    payload: Buffer,
  ): void {
    if (this.phase === 'hello') {
      if (opcode !== OP_HELLO) return this.framingError(`${opName(opcode)} before HELLO`);
      return this.hello(id, payload);
    }
    if (!isKnownOpcode(opcode))
      return this.refuse(opcode, id, payload, STATUS_BAD_REQUEST, `unknown opcode ${opcode}`);
    if (flags & ~REQUEST_FLAGS_ALLOWED)
      return this.refuse(
        opcode,
        id,
        payload,
        STATUS_BAD_REQUEST,
        `unknown flags 0x${flags.toString(16)}`,
      );
    if (status !== STATUS_OK)
      return this.refuse(opcode, id, payload, STATUS_BAD_REQUEST, `status ${status} in a request`);
    if (opcode === OP_HELLO)
      return this.refuse(opcode, id, payload, STATUS_BAD_REQUEST, 'HELLO twice');
    if (this.phase === 'shutting-down')
      return this.refuse(opcode, id, payload, STATUS_SHUTTING_DOWN, 'server is shutting down');
    if (opcode === OP_PING) {
      if (payload.length !== 0)
        return this.refuse(opcode, id, payload, STATUS_BAD_REQUEST, 'PING with a payload');
      const at = this.out.claim(HEADER_SIZE);
      encodeEmptyFrame(this.out.slab, at, OP_PING, FLAG_REPLY, id);
      this.out.commit(HEADER_SIZE);
      return;
    }
    if (opcode === OP_SYNC && payload.length !== 0)
      return this.refuse(opcode, id, payload, STATUS_BAD_REQUEST, 'SYNC with a payload');
    void this.execute(opcode, id, payload);
  }

  private hello(id: number, payload: Buffer): void {
    let peer: Hello;
    try {
      peer = decodeHello(payload);
    } catch (err) {
      this.send(encodeErrorReply(OP_HELLO, id, STATUS_BAD_REQUEST, (err as Error).message));
      return this.endNow(`malformed HELLO: ${(err as Error).message}`);
    }
    if (peer.clusterId !== this.identity.clusterId) {
      this.log.warn(
        { peerNode: peer.nodeId, peerCluster: peer.clusterId, cluster: this.identity.clusterId },
        'refusing a peer of another cluster',
      );
      this.send(
        encodeErrorReply(
          OP_HELLO,
          id,
          STATUS_WRONG_CLUSTER,
          `this node belongs to cluster ${this.identity.clusterId}, not ${peer.clusterId}`,
        ),
      );
      return this.endNow('wrong cluster');
    }
    this.peerNodeId = peer.nodeId;
    this.phase = 'serving';
    this.log.debug({ peerNode: peer.nodeId }, 'peer said HELLO');
    this.send(encodeHelloReply(id, this.identity));
  }

  // ---------------------------------------------------------------- serving

  /** Run one request against the backend and send its reply; never rejects. */
  private async execute(opcode: number, id: number, payload: Buffer): Promise<void> {
    const started = this.observe ? performance.now() : 0;
    const cost = payload.length;
    this.begun(cost);
    let status = STATUS_OK;
    let moved = 0;
    try {
      switch (opcode) {
        case OP_PUT_BLOCKS: {
          await this.backend.putBlocks(decodePutBlocks(payload));
          const at = this.out.claim(HEADER_SIZE);
          encodeEmptyFrame(this.out.slab, at, OP_PUT_BLOCKS, FLAG_REPLY, id);
          this.commitIfOpen(HEADER_SIZE);
          moved = cost;
          break;
        }
        case OP_GET_BLOCK: {
          const ref = decodeGetBlock(payload);
          const block = await this.backend.getBlock(ref, this.acquireReply);
          if (!block) {
            status = STATUS_NOT_FOUND;
            this.send(
              encodeErrorReply(OP_GET_BLOCK, id, STATUS_NOT_FOUND, `${formatRef(ref)} not held`),
            );
            break;
          }
          if (
            block.ref.volumeId !== ref.volumeId ||
            block.ref.generation !== ref.generation ||
            block.ref.index !== ref.index
          ) {
            throw new Error(`backend answered ${formatRef(ref)} with ${formatRef(block.ref)}`);
          }
          if (!this.writable()) break;
          const at = this.out.claim(BLOCK_REPLY_HEAD_SIZE);
          encodeBlockReplyHead(this.out.slab, at, id, block);
          this.out.commit(BLOCK_REPLY_HEAD_SIZE);
          this.writeReply(block.data);
          moved = block.data.length;
          break;
        }
        case OP_GET_RANGE: {
          const range = decodeGetRange(payload);
          const reply: RangeReply | undefined = this.backend.getRange
            ? await this.backend.getRange(range, this.acquireReply)
            : await this.backend
                .getBlock(range.ref, this.acquireReply)
                .then((block) => (block ? { offset: 0, entry: undefined, block } : undefined));
          const ref = range.ref;
          if (!reply) {
            status = STATUS_NOT_FOUND;
            this.send(
              encodeErrorReply(OP_GET_RANGE, id, STATUS_NOT_FOUND, `${formatRef(ref)} not held`),
            );
            break;
          }
          const got = reply.block.ref;
          if (
            got.volumeId !== ref.volumeId ||
            got.generation !== ref.generation ||
            got.index !== ref.index
          )
            throw new Error(`backend answered ${formatRef(ref)} with ${formatRef(got)}`);
          if (!this.writable()) break;
          const head = rangeReplyHeadSize(reply);
          const at = this.out.claim(head);
          encodeRangeReplyHead(this.out.slab, at, id, reply);
          this.out.commit(head);
          this.writeReply(reply.block.data);
          moved = reply.block.data.length;
          break;
        }
        case OP_HAS_BLOCKS: {
          const { refs, hashes } = decodeHasRequest(payload);
          const bits = await this.backend.hasBlocks(refs, hashes);
          if (bits.length !== refs.length)
            throw new Error(`backend answered ${bits.length} of ${refs.length} refs`);
          this.send(encodeBitmapReply(id, bits));
          break;
        }
        case OP_DELETE_BLOCKS: {
          const dropped = await this.backend.deleteBlocks(decodeRefs(payload));
          const at = this.out.claim(COUNT_REPLY_SIZE);
          encodeCountReply(this.out.slab, at, id, dropped);
          this.commitIfOpen(COUNT_REPLY_SIZE);
          break;
        }
        case OP_INTENT_APPEND: {
          const records = decodeIntentAppend(payload);
          const { pressure } = await this.holder().append(records);
          const at = this.out.claim(INTENT_APPEND_REPLY_SIZE);
          encodeIntentAppendReply(this.out.slab, at, id, pressure ? APPEND_PRESSURE : 0);
          this.commitIfOpen(INTENT_APPEND_REPLY_SIZE);
          moved = cost;
          break;
        }
        case OP_INTENT_SEAL: {
          const page = await this.holder().seal(decodeIntentSeal(payload));
          if (!this.writable()) break;
          const [head, ...records] = encodeIntentSealReply(id, page);
          this.out.writeFrame(head);
          for (const record of records) this.out.write(record);
          this.noteQueued();
          break;
        }
        case OP_PUT_PATCHES: {
          const patches = decodePutPatches(payload);
          if (!this.backend.putPatches)
            throw new TbpPayloadError('this node does not store patches');
          const results = await this.backend.putPatches(patches);
          if (!this.writable()) break;
          this.out.writeFrame(encodePutPatchesReply(id, results));
          this.noteQueued();
          break;
        }
        case OP_COMMIT_VOLUME: {
          const volumeId = decodeCommitVolume(payload);
          if (!this.backend.commitVolume)
            throw new TbpPayloadError('this node does not commit volumes for its peers');
          await this.backend.commitVolume(volumeId);
          const at = this.out.claim(HEADER_SIZE);
          encodeEmptyFrame(this.out.slab, at, OP_COMMIT_VOLUME, FLAG_REPLY, id);
          this.commitIfOpen(HEADER_SIZE);
          break;
        }
        case OP_INTENT_COVERED: {
          await this.holder().covered(decodeIntentCovered(payload));
          const at = this.out.claim(HEADER_SIZE);
          encodeEmptyFrame(this.out.slab, at, OP_INTENT_COVERED, FLAG_REPLY, id);
          this.commitIfOpen(HEADER_SIZE);
          break;
        }
        case OP_SYNC: {
          // Covers whatever any connection stored before now: the backend
          // syncs its whole store, not this session's writes.
          await this.backend.sync();
          const at = this.out.claim(HEADER_SIZE);
          encodeEmptyFrame(this.out.slab, at, OP_SYNC, FLAG_REPLY, id);
          this.commitIfOpen(HEADER_SIZE);
          break;
        }
      }
    } catch (err) {
      status = statusOfError(err);
      const message = (err as Error)?.message ?? String(err);
      if (status === STATUS_INTERNAL) this.log.warn({ op: opName(opcode), err }, 'request failed');
      else
        this.log.debug(
          { op: opName(opcode), status: statusName(status), reason: message },
          'request refused',
        );
      this.send(encodeErrorReply(opcode, id, status, message));
    } finally {
      this.ended(cost);
      // The backend is done with the views (backend.ts); a gathered payload
      // goes back to the pool, a view of a socket chunk is ignored by it.
      this.pool.release(payload);
      this.observe?.(
        opName(opcode),
        moved,
        (performance.now() - started) / 1000,
        statusName(status),
      );
      this.settled();
    }
  }

  /** The node's intent holder; a node without one refuses INTENT_* as a request it does not serve. */
  private holder(): IntentHolder {
    if (!this.backend.intents)
      throw new TbpPayloadError('this node holds no intent logs (started without one)');
    return this.backend.intents;
  }

  private refuse(
    opcode: number,
    id: number,
    payload: Buffer,
    status: number,
    message: string,
  ): void {
    this.log.debug(
      { op: opName(opcode), status: statusName(status), reason: message },
      'request refused',
    );
    this.pool.release(payload);
    this.send(encodeErrorReply(opcode, id, status, message));
    this.observe?.(isKnownOpcode(opcode) ? opName(opcode) : 'OP_UNKNOWN', 0, 0, statusName(status));
  }

  // ---------------------------------------------------------------- replies

  private writable(): boolean {
    return !this.socketClosed && this.socket.writable && this.phase !== 'closed';
  }

  /** Memory for a block or range the backend reads for a GET: the pool's, given back by writeReply. */
  private readonly acquireReply = (size: number): Buffer => this.pool.acquire(size);

  /** Send a GET's bytes after the head just committed; the pool takes them back once the socket has them. */
  private writeReply(data: Uint8Array): void {
    const { pool } = this;
    this.out.write(data, () => pool.release(data as Buffer));
    this.noteQueued();
  }

  private send(buf: Buffer): void {
    if (!this.writable()) return;
    this.out.writeFrame(buf);
    this.noteQueued();
  }

  /** Commit a reply encoded into the slab, unless the socket went away meanwhile. */
  private commitIfOpen(size: number): void {
    if (!this.writable()) return;
    this.out.commit(size);
    this.noteQueued();
  }

  protected override flushReplies(): void {
    this.out.flush();
  }

  // -------------------------------------------------------------- lifecycle

  private framingError(reason: string): void {
    this.log.warn({ reason, bytes: this.reader.pending }, 'framing error: closing peer connection');
    this.close(reason);
  }

  /** Reply queued (e.g. WRONG_CLUSTER): flush it, stop reading, end our side. */
  private endNow(reason: string): void {
    this.log.debug({ reason }, 'ending peer connection');
    this.phase = 'closed';
    this.reader.clear();
    this.out.flush();
    endGracefully(this.socket);
  }

  /** The peer half-closed: serve what is complete, then end. Bytes of an unfinished frame are a framing error. */
  protected readonly onEnd = (): void => {
    if (this.phase === 'closed') return;
    if (this.reader.pending > 0)
      return this.framingError(
        `connection ended inside a frame (${this.reader.pending} bytes of it received)`,
      );
    this.phase = 'draining';
    this.endIfIdle();
  };

  protected stopReading(): void {
    this.reader.clear();
  }

  protected finish(): void {
    if (this.finishedOnce) return;
    this.finishedOnce = true;
    this.resolveFinished();
  }
}
