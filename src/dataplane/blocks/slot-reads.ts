/**
 * SlotReads: the store's data read from the main thread — by scrub, fsck,
 * a peer's GET — as spans, whole blocks, or patches assembled from their
 * own slot and their base's (patches.ts), each with the hash its kind is
 * checked by; and sub-sums entries (a peer's GET_RANGE). Inline or through
 * libuv's pool as InlineReads says (inline-reads.ts). Pool workers read on
 * their own (pool/sub-block-io.ts).
 */
import type { FileHandle } from 'node:fs/promises';
import { assert } from '../../common/assert.js';
import type { Hasher } from './hash.js';
import type { InlineReads } from './inline-reads.js';
import { forEachSourceRun } from './patches.js';
import { SUB_BLOCK_SIZE, blockTreeHashInto, subsumsEntrySize } from './sub-sums.js';

export class SlotReads {
  private readonly dataFile: FileHandle;
  private readonly dataPath: string;

  constructor(
    data: { file: FileHandle; path: string },
    /** Absent in a store opened without its table (fsck's check of an older format). */
    private readonly subsumsFile: FileHandle | undefined,
    private readonly blockSize: number,
    private readonly hash: Hasher,
    private readonly inlineReads: InlineReads,
  ) {
    this.dataFile = data.file;
    this.dataPath = data.path;
  }

  /** A slot's sub-sums entry as stored into `entry` (its exact size); false when there is no table. */
  async entry(slot: number, entry: Uint8Array): Promise<boolean> {
    if (!this.subsumsFile) return false;
    const at = slot * entry.length;
    const bytesRead = this.inlineReads.inline(entry.length)
      ? this.inlineReads.readFully(this.subsumsFile.fd, entry, 0, entry.length, at)
      : (await this.subsumsFile.read(entry, 0, entry.length, at)).bytesRead;
    return bytesRead === entry.length;
  }

  /** Bytes [within, within + dest.length) of a slot into dest: inline while InlineReads says so, else through the pool. */
  async span(slot: number, within: number, dest: Uint8Array): Promise<void> {
    let done = 0;
    if (this.inlineReads.inline(dest.length)) {
      const at = slot * this.blockSize + within;
      done = this.inlineReads.readFully(this.dataFile.fd, dest, 0, dest.length, at);
      if (done < dest.length) throw new Error(`short read of slot ${slot} in ${this.dataPath}`);
      return;
    }
    while (done < dest.length) {
      const at = slot * this.blockSize + within + done;
      const { bytesRead } = await this.dataFile.read(dest, done, dest.length - done, at);
      if (bytesRead === 0) throw new Error(`short read of slot ${slot} in ${this.dataPath}`);
      done += bytesRead;
    }
  }

  /** A slot's bytes into dest, and their hash: the tree hash when `tree`, else the xxh64. */
  async whole(slot: number, dest: Uint8Array, tree: boolean): Promise<{ lo: number; hi: number }> {
    await this.span(slot, 0, dest);
    return this.hashOf(dest, tree);
  }

  /** A patch's block into dest — its `present` sub-blocks from `slot`, the rest from `base` — and its tree hash. */
  async patch(
    slot: number,
    base: number,
    present: number,
    dest: Uint8Array,
  ): Promise<{ lo: number; hi: number }> {
    const runs: [number, number, boolean][] = [];
    forEachSourceRun(present, this.blockSize / SUB_BLOCK_SIZE, (first, end, inPatch) =>
      runs.push([first, end, inPatch]),
    );
    for (const [first, end, inPatch] of runs)
      await this.span(
        inPatch ? slot : base,
        first * SUB_BLOCK_SIZE,
        dest.subarray(first * SUB_BLOCK_SIZE, end * SUB_BLOCK_SIZE),
      );
    return this.hashOf(dest, true);
  }

  /**
   * Bytes [within, within + dest.length) of a patch's block (whole
   * sub-blocks): its `present` sub-blocks from `slot`, the rest from `base`.
   */
  async patchPart(
    slot: number,
    base: number,
    present: number,
    within: number,
    dest: Uint8Array,
  ): Promise<void> {
    const first = within / SUB_BLOCK_SIZE;
    const count = dest.length / SUB_BLOCK_SIZE;
    assert(
      Number.isInteger(first) && Number.isInteger(count),
      'a patch is read in whole sub-blocks',
    );
    // The part's own sub-blocks, shifted to bit 0, are runs like a block's.
    const runs: [number, number, boolean][] = [];
    forEachSourceRun(present >>> first, count, (from, end, inPatch) =>
      runs.push([from, end, inPatch]),
    );
    for (const [from, end, inPatch] of runs)
      await this.span(
        inPatch ? slot : base,
        within + from * SUB_BLOCK_SIZE,
        dest.subarray(from * SUB_BLOCK_SIZE, end * SUB_BLOCK_SIZE),
      );
  }

  private hashOf(bytes: Uint8Array, tree: boolean): { lo: number; hi: number } {
    if (!tree) return this.hash.hash64(bytes);
    const out = new Uint32Array(2);
    blockTreeHashInto(bytes, new Uint8Array(subsumsEntrySize(this.blockSize)), this.hash, out);
    return { lo: out[0], hi: out[1] };
  }
}
