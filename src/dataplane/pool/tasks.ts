/**
 * Messages between the main thread and the pool workers. A task names slots
 * (offsets into the shared cache and the shared slot table), never carries
 * block bytes: sharing instead of copying is what lets one task move sixteen
 * 64 KiB blocks in the time a single copy would take.
 */

export interface WorkerSetup {
  cache: SharedArrayBuffer;
  blockSize: number;
  records: SharedArrayBuffer;
  dataPath: string;
  slotsPath: string;
}

/** Seal (if keyed), hash and store cache slots as blocks of one volume version. */
export interface WriteBatchTask {
  op: 'write';
  volumeId: number;
  generation: number;
  /** The volume's data key when it is encrypted. */
  key: Uint8Array | null;
  cacheSlots: Int32Array;
  storeSlots: Int32Array;
  indices: Float64Array;
}

export interface WriteBatchResult {
  /** 1 where the block was all zeros: nothing was stored, the slot is unused. */
  zero: Uint8Array;
  /** xxh64 of each stored block as [lo, hi] pairs. */
  hashes: Uint32Array;
}

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
}

export const READ_OK = 0;
export const READ_CHECKSUM_MISMATCH = 1;
export const READ_OPEN_FAILED = 2;
export const READ_IO_ERROR = 3;

export interface ReadBatchResult {
  status: Uint8Array;
  /** For failures: a short reason per item (empty string when OK). */
  reasons: string[];
}

export type PoolTask = WriteBatchTask | ReadBatchTask;
