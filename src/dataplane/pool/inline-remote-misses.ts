/**
 * InlineRemoteMisses: a small cache miss of a plain block this node holds
 * no copy of, fetched from its replicas by the main thread instead of by a
 * pool task.
 *
 * Such a miss is a GET_RANGE of a few sub-blocks and an xxh32 of each: the
 * work is the peer round trip, not the CPU. Through the pool it also costs
 * a task message each way (structured clone, a worker woken, the reply's
 * wake-up of the loop) and the worker's own socket turn: measured on
 * `torusblk nbdserve`, 4 KiB random reads spent ~100 µs of CPU per read
 * there, half of it in the two workers (docs/benchmarks.md, session 26).
 * Here the tick's misses go out on the main thread's own peer connections
 * in one write per peer, and their replies are copied into the cache
 * slots as they arrive.
 *
 * What goes here: a read of some sub-blocks (a span of at most
 * INLINE_MISS_MAX_BYTES) of a plain block (not sealed: opening needs the
 * whole block) with no local copy to read (storeSlot -1) and peers to ask.
 * Whole blocks (sequential readers) stay in the pool, where the workers
 * hash 64 KiB blocks in parallel with the loop; a local copy is
 * InlineMisses' or a worker's.
 *
 * The same HedgedRead as a worker's runs the batch, so hedging, retries,
 * the patient round, whole-block fallbacks and repairs of bad replicas are
 * one code path; the cache slots are Loading and handed to this read alone
 * (cache/README.md), so this thread writing them is their one writer.
 */
import type { Hasher } from '../blocks/hash.js';
import { wholeMaskOf } from '../blocks/patches.js';
import { SUB_BLOCK_SIZE } from '../blocks/sub-sums.js';
import { logger } from '../../common/log.js';
import { HedgedRead } from './hedged-read.js';
import { INLINE_MISS_MAX_BYTES } from './inline-misses.js';
import { PeerLinks } from './peer-links.js';
import {
  READ_IO_ERROR,
  type ReadBatchResult,
  type ReadBatchTask,
  type WorkerSetup,
} from './tasks.js';

const log = logger('data-pool');

/** What a read needs to be judged (a subset of DataPool's ReadRequest). */
export interface RemoteMissRead {
  key: Uint8Array | null;
  storeSlot: number;
  remote?: unknown;
  subBlocks?: number;
}

export class InlineRemoteMisses {
  private readonly cache: Uint8Array;
  private readonly blockSize: number;
  private readonly wholeMask: number;
  private readonly links = new PeerLinks();
  /** Misses answered here (each counted once, whatever it took). */
  answered = 0;

  constructor(
    setup: WorkerSetup,
    private readonly hash: Hasher,
  ) {
    this.cache = new Uint8Array(setup.cache);
    this.blockSize = setup.blockSize;
    this.wholeMask = wholeMaskOf(setup.blockSize);
  }

  /** May `r` be fetched by this thread (a small plain miss with only peers to ask)? */
  qualifies(r: RemoteMissRead): boolean {
    const wanted = r.subBlocks ?? 0;
    if (r.key !== null || r.storeSlot >= 0 || r.remote === undefined) return false;
    if (wanted === 0 || wanted === this.wholeMask) return false;
    const first = 31 - Math.clz32(wanted & -wanted);
    const last = 31 - Math.clz32(wanted);
    return (last - first + 1) * SUB_BLOCK_SIZE <= INLINE_MISS_MAX_BYTES;
  }

  /**
   * Fetch a task's blocks (every one qualifies(), one volume, one peer
   * table) from the peers; resolves as a worker's task would (a block no
   * peer served has its status and reasons, as there).
   */
  async run(task: ReadBatchTask): Promise<ReadBatchResult> {
    const n = task.cacheSlots.length;
    const result: ReadBatchResult = {
      status: new Uint8Array(n).fill(READ_IO_ERROR),
      reasons: new Array<string>(n).fill('no local copy'),
    };
    const read = new HedgedRead(task, task.remote!, result, {
      hash: this.hash,
      blockSize: this.blockSize,
      sealer: undefined,
      dest: (i) => {
        const at = task.cacheSlots[i] * this.blockSize;
        return this.cache.subarray(at, at + this.blockSize);
      },
      warn: (message) => log.warn(message),
      links: this.links,
    });
    await read.run();
    this.answered += n;
    result.fromPeers = read.fromPeers;
    result.hedges = read.hedges;
    result.repairs = read.repairs;
    return result;
  }

  /** Close this thread's peer connections (the pool stops handing misses here first). */
  async close(): Promise<void> {
    await this.links.close();
  }
}
