/**
 * The contract between the peer protocol and a node's storage. The server
 * (server.ts, grpc.ts) validates and decodes; a backend only ever sees
 * well-formed blocks and refs. PeerClient offers the same block operations
 * (PeerBlockStore) against a remote node, so a replication layer
 * can treat a local store and a peer alike, and tests can stack a fault layer
 * over either.
 *
 * Errors a backend throws are turned into wire statuses in one place
 * (wire.ts statusOfError): ChecksumError → CHECKSUM, StoreFullError or
 * ENOSPC → NO_SPACE, IoError EINVAL → BAD_REQUEST, IoError ESHUTDOWN →
 * SHUTTING_DOWN, anything else → INTERNAL (logged with the peer's address).
 */
import { ChecksumError } from '../../common/errors.js';
import type { Hasher } from '../blocks/hash.js';
import { SUB_BLOCK_SIZE, blockTreeHashInto, subsumsEntrySize } from '../blocks/sub-sums.js';
import { formatRef, type BlockRef } from '../../model/block-ref.js';
import type {
  BlockRange,
  IntentCovered,
  IntentRecord,
  IntentSealPage,
  IntentSealRequest,
  ListedBlock,
  RangeReply,
  WireBlock,
  WirePatch,
  PatchResults,
} from './wire.js';
import { BLOCK_TREE_HASH } from './wire-blocks.js';

export type { ListedBlock, WireBlock };

/** xxh64 as 16 hex digits, high half first: how logs and messages show a hash. */
export function formatHash(hi: number, lo: number): string {
  return hi.toString(16).padStart(8, '0') + lo.toString(16).padStart(8, '0');
}

/**
 * The hash a block that travelled is checked by, into out[at], out[at + 1]:
 * its tree hash when it carries BLOCK_TREE_HASH (wire-blocks.ts), else the
 * xxh64 of its bytes. False, with out untouched, for a tree-hashed block
 * that is not whole sub-blocks (no tree hash exists: nothing can match).
 */
export function wireHashInto(hash: Hasher, block: WireBlock, out: Uint32Array, at = 0): boolean {
  const { data } = block;
  if ((block.flags & BLOCK_TREE_HASH) === 0) {
    hash.hash64Into(data, out, at);
    return true;
  }
  if (data.length === 0 || data.length % SUB_BLOCK_SIZE !== 0) return false;
  blockTreeHashInto(data, new Uint8Array(subsumsEntrySize(data.length)), hash, out.subarray(at));
  return true;
}

/** Does a block that travelled hash (wireHashInto) to lo, hi? */
export function wireHashMatches(hash: Hasher, block: WireBlock, lo: number, hi: number): boolean {
  const digest = new Uint32Array(2);
  return wireHashInto(hash, block, digest) && digest[0] === lo >>> 0 && digest[1] === hi >>> 0;
}

/** A received copy must hash to what its sender said: ChecksumError (the sender is told) otherwise. Every backend's put checks this. */
export function checkReceived(hash: Hasher, block: WireBlock): void {
  const digest = new Uint32Array(2);
  const hashed = wireHashInto(hash, block, digest);
  if (!hashed || digest[0] !== block.hashLo >>> 0 || digest[1] !== block.hashHi >>> 0) {
    const kind = block.flags & BLOCK_TREE_HASH ? 'tree hash' : 'xxh64';
    const got = hashed ? formatHash(digest[1], digest[0]) : 'nothing (not whole sub-blocks)';
    throw new ChecksumError(
      String(block.ref.volumeId),
      block.ref.index,
      `checksum mismatch for ${formatRef(block.ref)}: received bytes' ${kind} is ${got}, sender said ${formatHash(block.hashHi >>> 0, block.hashLo >>> 0)}`,
    );
  }
}

/** The block operations a node offers to its peers. */
export interface PeerBlockStore {
  /**
   * Store a batch of blocks.
   *
   * - Every block's xxh64 is checked against `hashLo/hashHi` before it is
   *   stored; a mismatch rejects with ChecksumError and that block is never
   *   stored. (Where the hashing runs is the backend's choice: the on-disk
   *   backend should do it in the pool workers, off the main thread.)
   * - A rejected batch may have stored some of its other blocks (each one
   *   whole and verified); the sender retries the batch. Storing a ref that
   *   is already held replaces it: refs are never reused for other content,
   *   so a replacement is a retry of the same bytes.
   * - Resolving means stored as durably as the backend's own writes are
   *   (the on-disk store: written, synced with its next sync()).
   * - On the server, `nonce`, `tag` and `data` are views into the received
   *   frame, whose memory is reused once the promise settles: copy what you
   *   keep; do not hold them afterwards.
   */
  putBlocks(blocks: readonly WireBlock[]): Promise<void>;

  /**
   * The block, or undefined when it is not held. The bytes are sent as they
   * are (no verification on the way out: the receiver checks the hash) and
   * must not change until the reply has been written; a backend that reuses
   * memory copies into a fresh buffer first.
   */
  getBlock(ref: BlockRef): Promise<WireBlock | undefined>;

  /**
   * Optional: bytes [offset, offset + length) of a block and its sub-sums
   * entry as stored (GET_RANGE, wire-ranges.ts; the range is whole 4 KiB
   * sub-blocks, and past the block size it is an IoError EINVAL), or the
   * whole block with `entry` undefined when the backend has no entry for it
   * or the block is sealed; undefined when not held. Not verified on the way
   * out: the receiver checks the entry against the block's xxh64 and each
   * sub-block against its sum. A backend without it serves GET_RANGE whole
   * from getBlock.
   */
  getRange?(range: BlockRange): Promise<RangeReply | undefined>;

  /**
   * One answer per ref, in order: is the block held. With `hashes` ([lo, hi]
   * per ref): held with that hash in its record (a block's xxh64, a patch's
   * tree hash), so a stale copy under the same ref answers false.
   */
  hasBlocks(refs: readonly BlockRef[], hashes?: Uint32Array): Promise<boolean[]>;

  /** Drop the blocks (GC, rebalance); refs not held are ignored. Resolves with how many were dropped. */
  deleteBlocks(refs: readonly BlockRef[]): Promise<number>;

  /**
   * Resolves once every block stored so far — every putBlocks that had
   * resolved when sync() was called, whoever made it — is durable. A writer
   * puts its blocks, then syncs, then commits the version that references
   * them. May take long (an fdatasync of a busy disk): callers give it a
   * generous deadline.
   */
  sync(): Promise<void>;
}

/** What a node says about itself (gRPC Info). */
export interface PeerNodeInfo {
  /** The node's UUID, as in the ring. */
  uuid: string;
  capacityBytes: number;
  usedBytes: number;
  /** Blocks held. */
  blocks: number;
}

export interface ListBlocksFilter {
  /** Only blocks of this volume. */
  volumeId?: number;
}

/** What a PeerServer serves from: the block operations, plus what only the local node can answer. */
export interface PeerBlockBackend extends PeerBlockStore {
  /**
   * As PeerBlockStore's; `allocate`, when given, is where to put the bytes:
   * the session's pool, which takes the buffer back once the socket has it
   * (a fresh 64 KiB buffer per block served kept storage nodes' garbage
   * collectors busy; docs/benchmarks.md, session 19).
   */
  getBlock(ref: BlockRef, allocate?: (size: number) => Buffer): Promise<WireBlock | undefined>;
  /** As PeerBlockStore's; `allocate` as for getBlock. */
  getRange?(
    range: BlockRange,
    allocate?: (size: number) => Buffer,
  ): Promise<RangeReply | undefined>;
  /**
   * Optional: store blocks as patches over bases this node holds
   * (PUT_PATCHES, wire-patches.ts): a status and a tree hash per patch — STATUS_OK,
   * STATUS_NOT_FOUND (no such base), STATUS_CHECKSUM (a sub-block, the
   * entry or the base's sums disagree: nothing of it stored). Storing a ref
   * already held replaces it, as putBlocks does. Byte fields are views into
   * the frame, valid until the promise settles. Absent: BAD_REQUEST.
   */
  putPatches?(patches: readonly WirePatch[]): Promise<PatchResults>;
  info(): PeerNodeInfo;
  /**
   * Every held block (or every block of one volume), for rebalance and GC.
   * Blocks stored or dropped while the listing runs may or may not appear;
   * each held block that stays held throughout appears exactly once.
   */
  listBlocks(filter: ListBlocksFilter): AsyncIterable<ListedBlock>;
  /**
   * Where the node keeps other writers' intent records (the replicated
   * intent log: wire-intents.ts, ../intent-log/holder-log.ts); absent: the
   * INTENT_* requests are answered BAD_REQUEST, and writers commit versions.
   */
  intents?: IntentHolder;
  /**
   * Commit what the writer of volume `volumeId` on this node has FLUSHed
   * (COMMIT_VOLUME); resolves at once when this node does not write it.
   * Absent: BAD_REQUEST.
   */
  commitVolume?(volumeId: number): Promise<void>;
}

/** What the peer server asks of a node that holds intent records. */
export interface IntentHolder {
  /**
   * Keep the records (one volume, one token; each checked against its
   * checksum first: ChecksumError, unless `checked`: made in this very
   * process, as this node's own writer's are) durably; resolves once they are, with
   * `pressure` when the log is past half full. A token below the volume's
   * seal: StaleTokenError (FENCED). Full: IoError ENOSPC. Records are views
   * into the received frame until the promise settles.
   */
  append(
    records: readonly IntentRecord[],
    options?: { checked?: boolean },
  ): Promise<{ pressure: boolean }>;
  /**
   * Refuse appends below `token` from now on, durably, once every append
   * staged before the call has settled; then a page of the records held for
   * the volume below `token`, in the order appended, from the skip-th on.
   */
  seal(request: IntentSealRequest): Promise<IntentSealPage>;
  /** What a committed version holds may go (INTENT_COVERED). */
  covered(covered: IntentCovered): Promise<void>;
}
