/**
 * The peer gRPC service, `torus.peer.v1.Peer`: the node's service API (who
 * it is, what it holds, a streamed listing for rebalance and GC), plus get,
 * put and delete as a slower fallback to TBP.
 *
 * No protobuf: every message is a Buffer at the gRPC layer (identity
 * serializers in the service definition) and is encoded and decoded with the
 * TBP payload codecs of wire.ts — a HasBlocks request is exactly a
 * HAS_BLOCKS payload — except Info and the ListBlocks filter, small control
 * messages carried as JSON so they can grow fields without a version bump.
 * Decoding happens in our handlers, not in grpc-js, so a malformed message
 * is INVALID_ARGUMENT with a reason rather than an opaque INTERNAL.
 *
 * | method       | request                    | response                                  |
 * |--------------|----------------------------|-------------------------------------------|
 * | Info         | empty                      | JSON {uuid, clusterId, capacityBytes, usedBytes, blocks} |
 * | HasBlocks    | count u32, refs            | count u32, bitmap (LSB first)             |
 * | DeleteBlocks | count u32, refs            | deleted u32                               |
 * | GetBlock     | ref                        | descriptor + data, or empty: not held     |
 * | PutBlocks    | PUT_BLOCKS payload         | empty                                     |
 * | ListBlocks   | JSON {volumeId?}           | stream of listings (wire.ts encodeListing)|
 *
 * Every call carries metadata `torus-cluster-id` (and `torus-node-id`); a
 * call from another cluster, or without it, is FAILED_PRECONDITION. Statuses
 * map one to one onto TBP's (toGrpcCode / fromGrpcCode), and clients get the
 * same PeerError classes from both transports.
 */
import { readFileSync } from 'node:fs';
import * as grpc from '@grpc/grpc-js';
import { loadPeerTls, type PeerTls, type PeerTlsFiles } from './peer-tls.js';
import type { Logger } from '../../common/log.js';
import type { BlockRef } from '../../model/block-ref.js';
import type { ListBlocksFilter, PeerBlockBackend, PeerNodeInfo } from './backend.js';
import {
  PeerError,
  PeerProtocolError,
  PeerTimeoutError,
  PeerUnavailableError,
  statusError,
} from './errors.js';
import {
  BLOCK_DESCRIPTOR_SIZE,
  HEADER_SIZE,
  MAX_LISTING_ENTRIES,
  MAX_PAYLOAD_BYTES,
  REF_SIZE,
  STATUS_BAD_REQUEST,
  STATUS_CHECKSUM,
  STATUS_INTERNAL,
  STATUS_NOT_FOUND,
  STATUS_NO_SPACE,
  STATUS_SHUTTING_DOWN,
  STATUS_WRONG_CLUSTER,
  TbpPayloadError,
  decodeBitmapReply,
  decodeBlockReply,
  decodeCountReply,
  decodeGetBlock,
  decodeListing,
  decodePutBlocks,
  decodeHasRequest,
  decodeRefs,
  encodeBitmap,
  encodeBlockDescriptor,
  encodeListing,
  encodePutBlocksFrame,
  encodeRef,
  encodeRefList,
  statusOfError,
  type ListedBlock,
  type WireBlock,
} from './wire.js';

export const PEER_GRPC_SERVICE = 'torus.peer.v1.Peer';
export const CLUSTER_METADATA_KEY = 'torus-cluster-id';
export const NODE_METADATA_KEY = 'torus-node-id';

const identity = (b: Buffer): Buffer => b;

function method(name: string, responseStream: boolean): grpc.MethodDefinition<Buffer, Buffer> {
  return {
    path: `/${PEER_GRPC_SERVICE}/${name}`,
    requestStream: false,
    responseStream,
    requestSerialize: identity,
    requestDeserialize: identity,
    responseSerialize: identity,
    responseDeserialize: identity,
  };
}

/** The service definition both ends share (method names are the client's method names). */
export const PEER_GRPC_DEFINITION = {
  info: method('Info', false),
  hasBlocks: method('HasBlocks', false),
  deleteBlocks: method('DeleteBlocks', false),
  getBlock: method('GetBlock', false),
  putBlocks: method('PutBlocks', false),
  listBlocks: method('ListBlocks', true),
} satisfies grpc.ServiceDefinition;

/** Messages up to a full TBP payload, plus room for gRPC's own framing. */
const CHANNEL_OPTIONS = {
  'grpc.max_receive_message_length': MAX_PAYLOAD_BYTES + 1024,
  'grpc.max_send_message_length': MAX_PAYLOAD_BYTES + 1024,
};

// ------------------------------------------------------------ status codes

const GRPC_OF_STATUS: Record<number, grpc.status> = {
  [STATUS_NOT_FOUND]: grpc.status.NOT_FOUND,
  [STATUS_CHECKSUM]: grpc.status.DATA_LOSS,
  [STATUS_NO_SPACE]: grpc.status.RESOURCE_EXHAUSTED,
  [STATUS_BAD_REQUEST]: grpc.status.INVALID_ARGUMENT,
  [STATUS_INTERNAL]: grpc.status.INTERNAL,
  [STATUS_WRONG_CLUSTER]: grpc.status.FAILED_PRECONDITION,
  [STATUS_SHUTTING_DOWN]: grpc.status.UNAVAILABLE,
};

/** The gRPC code for a TBP status. */
export function toGrpcCode(status: number): grpc.status {
  return GRPC_OF_STATUS[status] ?? grpc.status.INTERNAL;
}

/** The TBP status for a gRPC code a peer answered with. */
export function fromGrpcCode(code: grpc.status): number {
  for (const [status, c] of Object.entries(GRPC_OF_STATUS)) if (c === code) return Number(status);
  return code === grpc.status.INVALID_ARGUMENT ? STATUS_BAD_REQUEST : STATUS_INTERNAL;
}

function serviceError(code: grpc.status, details: string): grpc.ServiceError {
  return Object.assign(new Error(details), { code, details, metadata: new grpc.Metadata() });
}

// ------------------------------------------------------------------ server

export interface PeerGrpcServiceOptions {
  clusterId: string;
  nodeId: string;
  log: Logger;
  /** Mutual TLS with the cluster CA: client certificates required and checked (peer-tls.ts). */
  tls?: PeerTls;
}

/** The server side: one grpc.Server with the Peer service over a backend. */
export class PeerGrpcService {
  private readonly server = new grpc.Server(CHANNEL_OPTIONS);
  private readonly log: Logger;

  constructor(
    private readonly backend: PeerBlockBackend,
    private readonly options: PeerGrpcServiceOptions,
  ) {
    this.log = options.log.child({ transport: 'grpc' });
    this.server.addService(PEER_GRPC_DEFINITION, {
      info: this.unary('Info', async () => {
        const info: PeerNodeInfo & { clusterId: string } = {
          ...this.backend.info(),
          clusterId: this.options.clusterId,
        };
        return Buffer.from(JSON.stringify(info));
      }),
      hasBlocks: this.unary('HasBlocks', async (request) => {
        const { refs, hashes } = decodeHasRequest(request);
        const bits = await this.backend.hasBlocks(refs, hashes);
        if (bits.length !== refs.length)
          throw new Error(`backend answered ${bits.length} of ${refs.length} refs`);
        return encodeBitmap(bits);
      }),
      deleteBlocks: this.unary('DeleteBlocks', async (request) => {
        const dropped = await this.backend.deleteBlocks(decodeRefs(request));
        const reply = Buffer.allocUnsafe(4);
        reply.writeUInt32BE(dropped, 0);
        return reply;
      }),
      getBlock: this.unary('GetBlock', async (request) => {
        const block = await this.backend.getBlock(decodeGetBlock(request));
        if (!block) return EMPTY;
        // One message: descriptor and data together (this is the fallback path; TBP avoids the copy).
        const reply = Buffer.allocUnsafe(BLOCK_DESCRIPTOR_SIZE + block.data.length);
        encodeBlockDescriptor(reply, 0, block);
        reply.set(block.data, BLOCK_DESCRIPTOR_SIZE);
        return reply;
      }),
      putBlocks: this.unary('PutBlocks', async (request) => {
        await this.backend.putBlocks(decodePutBlocks(request));
        return EMPTY;
      }),
      listBlocks: (call: grpc.ServerWritableStream<Buffer, Buffer>) => void this.listBlocks(call),
    });
  }

  /** Bind host:port (0 picks one); resolves with the bound port. */
  listen(host: string, port: number): Promise<number> {
    const address = host.includes(':') ? `[${host}]:${port}` : `${host}:${port}`;
    return new Promise((resolve, reject) => {
      this.server.bindAsync(address, serverCredentials(this.options.tls), (err, bound) =>
        err ? reject(err) : resolve(bound),
      );
    });
  }

  /** Finish running calls for up to drainMs, then cut the rest. */
  close(drainMs: number): Promise<void> {
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        this.server.forceShutdown();
        resolve();
      }, drainMs);
      this.server.tryShutdown(() => {
        clearTimeout(timer);
        resolve();
      });
    });
  }

  /** Why this call may not be served (wrong or missing cluster id), or undefined. */
  private refusal(metadata: grpc.Metadata): grpc.ServiceError | undefined {
    const cluster = metadata.get(CLUSTER_METADATA_KEY)[0];
    if (cluster === this.options.clusterId) return undefined;
    const node = metadata.get(NODE_METADATA_KEY)[0];
    this.log.warn(
      { peerNode: node?.toString(), peerCluster: cluster?.toString() },
      'refusing a gRPC call from outside the cluster',
    );
    return serviceError(
      grpc.status.FAILED_PRECONDITION,
      cluster === undefined
        ? `missing ${CLUSTER_METADATA_KEY} metadata`
        : `this node belongs to cluster ${this.options.clusterId}, not ${cluster.toString()}`,
    );
  }

  private unary(
    name: string,
    handler: (request: Buffer) => Promise<Buffer>,
  ): grpc.handleUnaryCall<Buffer, Buffer> {
    return (call, callback) => {
      const refused = this.refusal(call.metadata);
      if (refused) return callback(refused);
      handler(call.request).then(
        (reply) => callback(null, reply),
        (err) => callback(this.failure(name, call.getPeer(), err)),
      );
    };
  }

  private failure(name: string, remote: string, err: unknown): grpc.ServiceError {
    const status = statusOfError(err);
    if (status === STATUS_INTERNAL)
      this.log.warn({ method: name, remote, err }, 'gRPC call failed');
    return serviceError(toGrpcCode(status), (err as Error)?.message ?? String(err));
  }

  private async listBlocks(call: grpc.ServerWritableStream<Buffer, Buffer>): Promise<void> {
    const refused = this.refusal(call.metadata);
    if (refused) return void call.emit('error', refused);
    let cancelled = false;
    let wake: (() => void) | undefined;
    const stop = () => {
      cancelled = true;
      wake?.();
    };
    call.on('cancelled', stop);
    call.on('close', stop);
    try {
      const filter = decodeListFilter(call.request);
      let batch: ListedBlock[] = [];
      for await (const entry of this.backend.listBlocks(filter)) {
        if (cancelled) return;
        batch.push(entry);
        if (batch.length < MAX_LISTING_ENTRIES) continue;
        // Respect the stream's backpressure: a slow reader must not make us buffer the whole store.
        if (!call.write(encodeListing(batch)))
          await new Promise<void>((resolve) => call.once('drain', (wake = resolve)));
        batch = [];
      }
      if (cancelled) return;
      if (batch.length > 0) call.write(encodeListing(batch));
      call.end();
    } catch (err) {
      if (!cancelled) call.emit('error', this.failure('ListBlocks', call.getPeer(), err));
    } finally {
      call.off('cancelled', stop);
      call.off('close', stop);
    }
  }
}

const EMPTY = Buffer.alloc(0);

/** ListBlocks request: JSON {volumeId?: u32}; empty means everything. */
export function encodeListFilter(filter: ListBlocksFilter): Buffer {
  return Buffer.from(
    JSON.stringify(filter.volumeId === undefined ? {} : { volumeId: filter.volumeId }),
  );
}

export function decodeListFilter(request: Buffer): ListBlocksFilter {
  if (request.length === 0) return {};
  let parsed: unknown;
  try {
    parsed = JSON.parse(request.toString('utf8'));
  } catch {
    throw new TbpPayloadError('ListBlocks filter is not JSON');
  }
  const volumeId = (parsed as { volumeId?: unknown } | null)?.volumeId;
  if (volumeId === undefined) return {};
  if (!Number.isInteger(volumeId) || (volumeId as number) < 0 || (volumeId as number) > 0xffffffff)
    throw new TbpPayloadError('ListBlocks volumeId must be a u32');
  return { volumeId: volumeId as number };
}

function decodeInfo(reply: Buffer): PeerNodeInfo & { clusterId: string } {
  const info = JSON.parse(reply.toString('utf8')) as Record<string, unknown>;
  const ok =
    typeof info.uuid === 'string' &&
    typeof info.clusterId === 'string' &&
    typeof info.capacityBytes === 'number' &&
    typeof info.usedBytes === 'number' &&
    typeof info.blocks === 'number';
  if (!ok) throw new TbpPayloadError('Info reply lacks a field');
  return {
    uuid: info.uuid as string,
    clusterId: info.clusterId as string,
    capacityBytes: info.capacityBytes as number,
    usedBytes: info.usedBytes as number,
    blocks: info.blocks as number,
  };
}

// ------------------------------------------------------------------ TLS

/** grpc-js takes PEM bytes, not a SecureContext: the same files peer-tls.ts loaded and checked. */
function serverCredentials(tls: PeerTls | undefined): grpc.ServerCredentials {
  if (!tls) return grpc.ServerCredentials.createInsecure();
  const { caFile, certFile, keyFile } = tls.files;
  return grpc.ServerCredentials.createSsl(
    readFileSync(caFile),
    [{ cert_chain: readFileSync(certFile), private_key: readFileSync(keyFile) }],
    true,
  );
}

function clientCredentials(tls: PeerTls): grpc.ChannelCredentials {
  const { caFile, certFile, keyFile, verifyAddress } = tls.files;
  return grpc.credentials.createSsl(
    readFileSync(caFile),
    readFileSync(keyFile),
    readFileSync(certFile),
    verifyAddress ? {} : { checkServerIdentity: () => undefined },
  );
}

// ------------------------------------------------------------------ client

export interface PeerGrpcClientOptions {
  /** host:port of the peer's gRPC service. */
  address: string;
  clusterId: string;
  /** Our node id, sent with every call (for the peer's logs). */
  nodeId: string;
  /** Deadline of each unary call. Default 5 s. */
  timeoutMs?: number;
  /** Mutual TLS with the cluster CA (peer-tls.ts); plaintext when absent. */
  tls?: PeerTlsFiles;
}

export interface CallOptions {
  timeoutMs?: number;
}

type UnaryMethod = (
  request: Buffer,
  metadata: grpc.Metadata,
  options: grpc.CallOptions,
  callback: (err: grpc.ServiceError | null, reply?: Buffer) => void,
) => void;
type StreamMethod = (
  request: Buffer,
  metadata: grpc.Metadata,
  options: grpc.CallOptions,
) => grpc.ClientReadableStream<Buffer>;

const PeerServiceClient = grpc.makeGenericClientConstructor(PEER_GRPC_DEFINITION, 'Peer');

/**
 * A grpc-js client of one peer's service. Rejects with the PeerError classes
 * of errors.ts: DEADLINE_EXCEEDED → PeerTimeoutError, UNAVAILABLE →
 * PeerUnavailableError, a reply that does not decode → PeerProtocolError,
 * any other code → PeerStatusError with the matching TBP status.
 */
export class PeerGrpcClient {
  private readonly client: grpc.Client;
  private readonly metadata = new grpc.Metadata();
  private readonly timeoutMs: number;

  constructor(private readonly options: PeerGrpcClientOptions) {
    this.client = new PeerServiceClient(
      options.address,
      options.tls ? clientCredentials(loadPeerTls(options.tls)) : grpc.credentials.createInsecure(),
      CHANNEL_OPTIONS,
    );
    this.metadata.set(CLUSTER_METADATA_KEY, options.clusterId);
    this.metadata.set(NODE_METADATA_KEY, options.nodeId);
    this.timeoutMs = options.timeoutMs ?? 5000;
  }

  async info(options: CallOptions = {}): Promise<PeerNodeInfo & { clusterId: string }> {
    return this.decoded('Info', decodeInfo, await this.call('info', 'Info', EMPTY, options));
  }

  async hasBlocks(
    refs: readonly BlockRef[],
    hashes?: Uint32Array,
    options: CallOptions = {},
  ): Promise<boolean[]> {
    if (refs.length === 0) return [];
    const reply = await this.call('hasBlocks', 'HasBlocks', encodeRefList(refs, hashes), options);
    return this.decoded('HasBlocks', (r) => decodeBitmapReply(r, refs.length), reply);
  }

  async deleteBlocks(refs: readonly BlockRef[], options: CallOptions = {}): Promise<number> {
    if (refs.length === 0) return 0;
    return this.decoded(
      'DeleteBlocks',
      decodeCountReply,
      await this.call('deleteBlocks', 'DeleteBlocks', encodeRefList(refs), options),
    );
  }

  async getBlock(ref: BlockRef, options: CallOptions = {}): Promise<WireBlock | undefined> {
    const request = Buffer.allocUnsafe(REF_SIZE);
    encodeRef(request, 0, ref);
    const reply = await this.call('getBlock', 'GetBlock', request, options);
    if (reply.length === 0) return undefined;
    return this.decoded('GetBlock', decodeBlockReply, reply);
  }

  async putBlocks(blocks: readonly WireBlock[], options: CallOptions = {}): Promise<void> {
    if (blocks.length === 0) return;
    // The fallback copies the batch into one message; TBP sends the caller's buffers as they are.
    const request = Buffer.concat(encodePutBlocksFrame(0, blocks)).subarray(HEADER_SIZE);
    await this.call('putBlocks', 'PutBlocks', request, options);
  }

  /** Every block the peer holds (or of one volume). No deadline unless one is given: listings of big stores take a while. */
  async *listBlocks(
    filter: ListBlocksFilter = {},
    options: CallOptions = {},
  ): AsyncIterable<ListedBlock> {
    const callOptions: grpc.CallOptions =
      options.timeoutMs === undefined ? {} : { deadline: Date.now() + options.timeoutMs };
    const stream = (this.client as unknown as Record<string, StreamMethod>).listBlocks.call(
      this.client,
      encodeListFilter(filter),
      this.metadata,
      callOptions,
    );
    try {
      for await (const message of stream as AsyncIterable<Buffer>) {
        yield* this.decoded('ListBlocks', decodeListing, message);
      }
    } catch (err) {
      throw this.converted('ListBlocks', options.timeoutMs ?? 0, err);
    } finally {
      stream.cancel();
    }
  }

  close(): void {
    this.client.close();
  }

  private call(
    method: keyof typeof PEER_GRPC_DEFINITION,
    name: string,
    request: Buffer,
    options: CallOptions,
  ): Promise<Buffer> {
    const timeoutMs = options.timeoutMs ?? this.timeoutMs;
    const fn = (this.client as unknown as Record<string, UnaryMethod>)[method];
    return new Promise((resolve, reject) => {
      fn.call(
        this.client,
        request,
        this.metadata,
        { deadline: Date.now() + timeoutMs },
        (err, reply) => {
          if (err) reject(this.converted(name, timeoutMs, err));
          else resolve(reply ?? EMPTY);
        },
      );
    });
  }

  private decoded<T>(name: string, decode: (reply: Buffer) => T, reply: Buffer): T {
    try {
      return decode(reply);
    } catch (err) {
      throw new PeerProtocolError(
        this.options.address,
        `${name} reply does not decode: ${(err as Error).message}`,
      );
    }
  }

  private converted(name: string, timeoutMs: number, err: unknown): PeerError {
    if (err instanceof PeerError) return err;
    const e = err as Partial<grpc.ServiceError>;
    const peer = this.options.address;
    switch (e.code) {
      case grpc.status.DEADLINE_EXCEEDED:
        return new PeerTimeoutError(peer, name, timeoutMs);
      case grpc.status.UNAVAILABLE:
        return new PeerUnavailableError(peer, `${name}: ${e.details ?? e.message}`, { cause: err });
      case undefined:
        return new PeerUnavailableError(
          peer,
          `${name}: ${(err as Error)?.message ?? String(err)}`,
          { cause: err },
        );
      default:
        return statusError(peer, name, fromGrpcCode(e.code), e.details ?? e.message ?? '');
    }
  }
}
