/**
 * Messages between the main thread and the pool workers. A task names slots
 * (offsets into the shared cache and the shared slot table), never carries
 * block bytes: sharing instead of copying is what lets one task move sixteen
 * 64 KiB blocks in the time a single copy would take.
 */

import type { PeerIdentityForTasks, PeerTarget } from '../replication/placement.js';

/** Most blocks one task carries: a pool round trip (25–75 µs) costs more than hashing one 64 KiB block. */
export const BATCH = 16;

export interface WorkerSetup {
  cache: SharedArrayBuffer;
  blockSize: number;
  records: SharedArrayBuffer;
  dataPath: string;
  slotsPath: string;
  /**
   * Plain blocks' bytes go to the data file around the page cache (O_DIRECT)
   * from the cache, which must then start on a page (BlockCache.pageAligned);
   * node-parts.ts says when (directWritesWanted).
   */
  directWrites?: boolean;
}

/** Seal (if keyed), hash and store cache slots as blocks of one volume version. */
export interface WriteBatchTask {
  op: 'write';
  volumeId: number;
  generation: number;
  /** The volume's data key when it is encrypted. */
  key: Uint8Array | null;
  cacheSlots: Int32Array;
  /** Local store slot per block, or -1 where this node keeps no copy (cluster). */
  storeSlots: Int32Array;
  indices: Float64Array;
  /** Cluster: the peers that also get a copy of each block. */
  remote?: RemoteTargets;
  /**
   * Blocks to store as patches (blocks/patches.ts): on a single node; in a
   * cluster over a base in this node's store, sent to the remote targets
   * as patches too (PUT_PATCHES).
   */
  patches?: PatchTargets;
}

/**
 * Per block of a write task: store it as a patch — only the sub-blocks its
 * cache slot holds — over a base in this node's store. Blocks whose
 * `written` is 0 are stored whole.
 */
export interface PatchTargets {
  /** Sub-blocks the cache slot holds (bit i: sub-block i); 0: not a patch. */
  written: Uint32Array;
  baseSlots: Int32Array;
  baseVolumes: Uint32Array;
  baseGenerations: Uint32Array;
  /** An older patch over the same base that the new one replaces and takes the other sub-blocks of, or -1. */
  olderSlots: Int32Array;
  /**
   * Where baseSlots is -1 (a cluster, the base on the block's targets only):
   * the base's hash [lo, hi], which the base's sub-sums entry, fetched from
   * a target, must be sealed with.
   */
  baseHashes: Uint32Array;
}

/**
 * Peers for a batch: the table, and per block up to `stride` indexes into it
 * (-1 padded). The table travels with the task, so a worker needs no ring.
 */
export interface RemoteTargets {
  identity: PeerIdentityForTasks;
  peers: PeerTarget[];
  stride: number;
  targets: Int16Array;
  /**
   * Writes: per block up to SPARE_CANDIDATES further ring candidates (-1
   * padded), in order, for copies a target refuses with NO_SPACE: each such
   * copy goes to the next spare instead.
   */
  spares?: Int16Array;
  /**
   * Reads: per block, how many of its first targets should hold a copy (a
   * write's targets now); the rest are asked only after them. Absent: all.
   */
  likely?: Uint8Array;
}

export interface WriteBatchResult {
  /** 1 where the block was all zeros: nothing was stored, the slot is unused. */
  zero: Uint8Array;
  /** xxh64 of each stored block as [lo, hi] pairs. */
  hashes: Uint32Array;
  /** Per block, 1 for each remote target (same layout as RemoteTargets.targets) that stored it. */
  acked?: Uint8Array;
  /** One line per failed peer write, for the log (a copy placed on a spare instead is not a failure). */
  failures?: string[];
  /** Per block, SPARE_CANDIDATES entries: the spare (peer index) that took a copy in a full target's place, else -1. */
  placedOn?: Int16Array;
  /** Peers that refused a put with NO_SPACE in this batch (uuids). */
  fullPeers?: string[];
  /**
   * Patches: PATCH_REFUSED where a block could not be stored as a patch (a
   * sub-sums entry it needs missing or stale; in a cluster, no local copy
   * to write it over): nothing was written for it. PATCH_REFUSED_STORED
   * where this node stored it but a replica did not take it (no base
   * there, an older node, no answer): the volume releases the local patch.
   * Either way the volume stores the block whole instead.
   */
  refused?: Uint8Array;
  /** Cluster: patches sent to replicas, and those a replica did not store. */
  patchCopies?: { sent: number; refused: number };
}

export const PATCH_REFUSED = 1;
export const PATCH_REFUSED_STORED = 2;

/** Read stored blocks into cache slots, verifying (and opening) each. */
export interface ReadBatchTask {
  op: 'read';
  volumeId: number;
  key: Uint8Array | null;
  cacheSlots: Int32Array;
  storeSlots: Int32Array;
  generations: Uint32Array;
  indices: Float64Array;
  /** Expected xxh64 [lo, hi] pairs, from the volume's block map. */
  hashes: Uint32Array;
  /** Cluster: peers to fetch from, in order, where the local slot is -1 or fails. */
  remote?: RemoteTargets;
  /**
   * Per block, a mask of the 4 KiB sub-blocks to read (bit i: bytes
   * [4096 i, 4096 (i + 1))), each checked against its sub-sum
   * (blocks/sub-sums.ts); 0 reads the whole block. Only for plain blocks
   * (never with `key`): from the local store, or from a peer with GET_RANGE
   * (hedged-read.ts). The worker writes nothing of the cache slot outside
   * the mask unless it reads the block whole (then `whole` says so).
   */
  subBlocks?: Uint32Array;
  /**
   * Per block, the slot of the base of a patch (blocks/patches.ts), -1 for
   * a whole block; absent: every block is whole. Local reads only.
   */
  baseSlots?: Int32Array;
  /** Per block, 1: a copy of the version being written, whose bad-looking replicas are not repaired (ReadRequest.noRepair). */
  noRepair?: Uint8Array;
}

export const READ_OK = 0;
export const READ_CHECKSUM_MISMATCH = 1;
export const READ_OPEN_FAILED = 2;
export const READ_IO_ERROR = 3;

export interface ReadBatchResult {
  status: Uint8Array;
  /** For failures: a short reason per item (empty string when OK). */
  reasons: string[];
  /** Cluster reads: blocks served from a peer, gets sent as hedges, and bad replicas re-sent a good copy. */
  fromPeers?: number;
  hedges?: number;
  repairs?: number;
  /** Cluster reads: 1 where this node's own copy failed its check and a peer's good copy was served instead. */
  localBad?: Uint8Array;
  /**
   * Sub-block reads: 1 where the whole block was read and checked instead
   * (its sub-sums entry was missing or stale) and copied whole into the slot.
   */
  whole?: Uint8Array;
}

export type PoolTask = WriteBatchTask | ReadBatchTask;
