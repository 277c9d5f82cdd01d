/**
 * ReadAhead: a sequential reader of a volume whose blocks come from peers
 * gets the blocks after its read fetched before it asks for them.
 *
 * Why: a cache miss served by a replica costs a network round trip and the
 * replica's disk read; a reader at queue depth 8 then waits on eight of them
 * at a time and no more. Fetching ahead keeps more of them in flight, on
 * every replica at once (the pool spreads a batch's gets over the copies),
 * so the reader finds the blocks cached or already coming.
 *
 * The pattern: a read that starts where the previous one ended is
 * sequential. The first sequential read opens a window of INITIAL_WINDOW
 * blocks (or the read's own size, when larger) past its end; each further
 * one doubles it, up to MAX_WINDOW blocks; a read anywhere else (a random
 * reader) drops it to nothing. Blocks already asked for are not asked again
 * (`aheadTo`, forgotten with the window), so a reader moving through the volume keeps about one window
 * in flight beyond what it reads. Read-ahead never fails a read: a fetch
 * that fails is forgotten (the reader's own miss reports the error).
 */
import { assert } from '../../common/assert.js';

/** Blocks fetched ahead once a read continues the one before it (256 KiB of 64 KiB blocks). */
export const INITIAL_WINDOW = 4;
/** The most blocks fetched ahead of a reader (8 MiB of 64 KiB blocks; a 256 MiB cache holds 32 such windows). */
export const MAX_WINDOW = 128;

export class ReadAhead {
  /** Byte where the last read ended; the next read is sequential if it starts here. */
  private cursor = -1;
  /** Blocks to keep fetched past the reader; 0 while the pattern is not sequential. */
  private window = 0;
  /** Blocks before this index have been asked for already (exclusive). */
  private aheadTo = 0;
  /** Blocks asked for ahead of a reader, for tests and metrics. */
  fetched = 0;

  constructor(
    private readonly blockSize: number,
    /** Blocks in the volume: nothing at or past it is fetched. */
    private readonly blockCount: () => number,
    /** Whether reads of the volume go to peers (read-ahead is for them); asked once per sequential read. */
    private readonly enabled: () => boolean,
    /** Start loading block `index` into the cache (fire and forget: it must not throw). */
    private readonly fetch: (index: number) => void,
  ) {
    assert(blockSize > 0, 'a volume has a block size');
  }

  /** A read of [offset, offset + length) arrived: grow, keep or drop the window, and fetch ahead. */
  note(offset: number, length: number): void {
    const end = offset + length;
    const sequential = offset === this.cursor;
    this.cursor = end;
    if (!sequential) {
      this.window = 0;
      this.aheadTo = 0;
      return;
    }
    if (!this.enabled()) return;
    const readBlocks = Math.ceil(length / this.blockSize);
    this.window =
      this.window === 0
        ? Math.min(MAX_WINDOW, Math.max(INITIAL_WINDOW, readBlocks))
        : Math.min(MAX_WINDOW, this.window * 2);
    const next = Math.ceil(end / this.blockSize);
    const from = Math.max(next, this.aheadTo);
    const to = Math.min(next + this.window, this.blockCount());
    for (let index = from; index < to; index++) {
      this.fetch(index);
      this.fetched++;
    }
    if (to > this.aheadTo) this.aheadTo = to;
  }
}
