/**
 * VolumeResize: changing the size of an open volume. `Volume.grow` and
 * `Volume.shrink` delegate here; this file reads and changes the volume's
 * size (`VolumeState.identity.size`) and its map's block count, and reaches
 * the rest only through `ResizeAccess`: the volume's sessions, its write,
 * trim and flush paths.
 *
 * - Grow is metadata only: the map gains levels in memory when the block
 *   count needs them; the next commit writes them. Sessions opened from now
 *   on see the new size; open ones keep the size their handshake gave (NBD
 *   has no resize notice).
 * - Shrink is refused while sessions are open. Every block at or past the
 *   new end becomes a hole and the last block's bytes past it zeros, and that
 *   is committed (the commit releases the blocks like any it supersedes), so
 *   a later grow reads zeros there. The smaller size is in force from the
 *   start: a session opening meanwhile cannot write past it. On failure the
 *   old size is back (the tail may be zeros by then).
 *
 * Invariants, asserted at this boundary:
 * - resizes do not overlap: callers run them one at a time (node/ runs each
 *   in the volume's exclusive queue, as it does opens);
 * - before and after a resize, the map has the block count the size needs;
 * - once a shrink has committed, no block at or past the new end is in the
 *   committed map, the cache table, the dirty set or the spilled blocks.
 */
import { assert, invariantBroken } from '../../common/assert.js';
import { ConflictError } from '../../common/errors.js';
import type { VolumeState } from './volume-state.js';

/** What a resize needs of the volume besides its state. */
export interface ResizeAccess {
  /** NBD sessions open on the volume now. */
  openSessions(): number;
  /** Write zeros over [offset, offset + length), which lies in one block (no FUA). */
  writeZeros(offset: number, length: number): Promise<void>;
  /** Make block `index` a hole: out of the cache, dirty and spilled blocks; cleared from the map by the next commit. */
  dropBlock(index: number): Promise<void>;
  /** Commit every write and trim completed before the call. */
  flush(): Promise<void>;
}

export class VolumeResize {
  private shrinking = false;

  constructor(
    private readonly state: VolumeState,
    private readonly volume: ResizeAccess,
  ) {}

  /** Grow to `size` bytes (module comment). */
  grow(size: number): void {
    const { identity, map, blockSize } = this.state;
    assert(
      Number.isSafeInteger(size) && size >= identity.size,
      () => `volume ${identity.name}: grow from ${identity.size} to ${size} bytes`,
    );
    this.checkAtRest('grow');
    identity.size = size;
    map.resize(Math.ceil(size / blockSize));
    this.checkAtRest('grow');
  }

  /** Shrink to `size` bytes (module comment). */
  async shrink(size: number): Promise<void> {
    const { identity, map, blockSize } = this.state;
    assert(
      Number.isSafeInteger(size) && size > 0 && size <= identity.size,
      () => `volume ${identity.name}: shrink from ${identity.size} to ${size} bytes`,
    );
    this.checkAtRest('shrink');
    const sessions = this.volume.openSessions();
    if (sessions > 0)
      throw new ConflictError(
        `volume "${identity.name}" has ${sessions} open NBD connection(s): disconnect them before shrinking it`,
      );
    const before = identity.size;
    const count = Math.ceil(size / blockSize);
    this.shrinking = true;
    identity.size = size;
    try {
      const tailEnd = Math.min(before, count * blockSize);
      if (tailEnd > size) await this.volume.writeZeros(size, tailEnd - size);
      for (const index of this.blocksFrom(count)) await this.volume.dropBlock(index);
      await this.volume.flush();
      const left = this.blocksFrom(count);
      if (left.size > 0)
        invariantBroken(
          `volume ${identity.name}: shrink to ${count} blocks committed, yet block(s) ${[...left].slice(0, 4).join(', ')} remain past the end`,
        );
      map.resize(count);
    } catch (err) {
      identity.size = before;
      throw err;
    } finally {
      this.shrinking = false;
    }
    this.checkAtRest('shrink');
  }

  /** Blocks at or past `first` that hold data anywhere: committed map, cache table, dirty, spilled. */
  private blocksFrom(first: number): Set<number> {
    const { map, table, dirty, spilled } = this.state;
    const found = new Set(map.presentFrom(first));
    for (const index of table.keys()) if (index >= first) found.add(index);
    for (const index of dirty) if (index >= first) found.add(index);
    for (const index of spilled.keys()) if (index >= first) found.add(index);
    return found;
  }

  /** No shrink under way, and the map's block count is the one the size needs. */
  private checkAtRest(what: string): void {
    const { identity, map, blockSize } = this.state;
    if (this.shrinking) invariantBroken(`volume ${identity.name}: ${what} during a shrink`);
    const needed = Math.ceil(identity.size / blockSize);
    if (map.blockCount !== needed)
      invariantBroken(
        `volume ${identity.name}: ${what}: the map has ${map.blockCount} blocks, ${identity.size} bytes need ${needed}`,
      );
  }
}
