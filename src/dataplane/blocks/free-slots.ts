/**
 * FreeSlots: a store's free slots, handed out in runs of consecutive slots
 * where the store still has runs, held in memory in proportion to the part
 * of the store in use (one bit per slot below the frontier), not to its
 * capacity.
 *
 * Why runs: a batch of blocks written together (a spill round, a fold
 * batch, a peer's batch) is usually read together later, in the same
 * order. Given consecutive slots, each batch lands as one stretch of the
 * data file, so a sequential reader gets coalesced reads and the kernel's
 * read-ahead. Before this, released slots went on a stack and were reused
 * last-released-first: after random writes, a fold's 256 blocks landed in
 * slots like 1057, 1061, 1063, 1066, … and sequential reads of the folded
 * volume stayed a third below a volume never written at random.
 *
 * How: allocation is next-fit. A cursor walks the slots upward; a take
 * continues at the cursor while the slot there is free (the current run).
 * When the run ends, the cursor moves to the next place with a whole free
 * 32-slot word (a run of at least 32, started at its first free slot), and
 * wraps to the start at the end of the store; only when no such run is
 * left anywhere does it settle for the next single free slot. Slots at or
 * past the frontier have not been used since the store was opened and are
 * one free run: they take no memory until the frontier reaches them.
 */
import { assert, InvariantError } from '../../common/assert.js';

const INITIAL_WORDS = 64;
const FULL_WORD = 0xffffffff;

export class FreeSlots {
  /** Bit set: the slot below the frontier is free. */
  private words = new Uint32Array(INITIAL_WORDS);
  private freeBelowFrontier = 0;
  /** Words below the frontier with all 32 slots free: runs to look for. */
  private fullWords = 0;
  /** Where the next take looks first: the slot after the last one taken. */
  private cursor = 0;
  /** False until the first take, which looks for a run rather than starting at slot 0. */
  private started = false;
  private readonly wordCount: number;

  /**
   * `frontier`: one past the highest slot that may be in use (everything
   * from it to `slotCount` is free).
   */
  constructor(
    private readonly slotCount: number,
    private frontier: number,
  ) {
    assert(
      Number.isSafeInteger(frontier) && frontier >= 0 && frontier <= slotCount,
      () => `free slots: frontier ${frontier} outside 0..${slotCount}`,
    );
    this.wordCount = Math.ceil(slotCount / 32);
    this.growTo(frontier);
  }

  /** How many slots are free. */
  get count(): number {
    return this.freeBelowFrontier + (this.slotCount - this.frontier);
  }

  /** Take a free slot, continuing the current run if it can; -1 when none is free. */
  take(): number {
    if (this.count === 0) return -1;
    if (!this.started || !this.isFree(this.cursor)) this.cursor = this.nextRunStart();
    this.started = true;
    const slot = this.cursor;
    if (slot >= this.frontier) {
      // A run reaching past the frontier starts at or below it (backToRunStart), so a take
      // there is the frontier itself: nothing between the old frontier and it to record.
      assert(
        slot === this.frontier,
        () => `free slots: took ${slot} past the frontier ${this.frontier}`,
      );
      this.frontier = slot + 1;
      this.growTo(this.frontier);
    } else {
      const w = slot >>> 5;
      if (this.words[w] === FULL_WORD) this.fullWords--;
      this.words[w] &= ~(1 << (slot & 31));
      this.freeBelowFrontier--;
    }
    this.cursor = slot + 1 === this.slotCount ? 0 : slot + 1;
    return slot;
  }

  /** Give back a slot below the frontier that is in use. */
  put(slot: number): void {
    assert(
      Number.isSafeInteger(slot) && slot >= 0 && slot < this.frontier && !this.isFree(slot),
      () =>
        `free slots: slot ${slot} put back is not below the frontier ${this.frontier}, or is free already`,
    );
    this.setFree(slot);
  }

  private setFree(slot: number): void {
    const w = slot >>> 5;
    this.words[w] |= 1 << (slot & 31);
    if (this.words[w] === FULL_WORD) this.fullWords++;
    this.freeBelowFrontier++;
  }

  private isFree(slot: number): boolean {
    if (slot >= this.frontier) return slot < this.slotCount;
    return (this.words[slot >>> 5] & (1 << (slot & 31))) !== 0;
  }

  /** Word `w`'s free bits, counting the slots from the frontier to the end as free. */
  private freeBits(w: number): number {
    let word = this.words[w] ?? 0;
    const first = w * 32;
    for (
      let bit = Math.max(0, this.frontier - first);
      bit < 32 && first + bit < this.slotCount;
      bit++
    ) {
      word |= 1 << bit;
    }
    return word >>> 0;
  }

  /**
   * The first slot of the next run from the cursor on, wrapping: the first
   * slot of a whole free word's run (backed up to where the run begins),
   * else the next free slot.
   */
  private nextRunStart(): number {
    const frontierRun = this.slotCount - this.frontier >= 64;
    // No whole free word below the frontier: the first one is past it.
    if (this.fullWords === 0 && frontierRun) return this.backToRunStart(this.frontier);
    if (this.fullWords > 0) {
      const from = this.cursor >>> 5;
      for (let step = 0; step < this.wordCount; step++) {
        const w = (from + step) % this.wordCount;
        if (this.freeBits(w) === FULL_WORD) return this.backToRunStart(w * 32);
      }
    }
    // The cursor's word from the cursor on, the other words, then the cursor's word's start.
    const from = this.cursor >>> 5;
    for (let step = 0; step <= this.wordCount; step++) {
      const w = (from + step) % this.wordCount;
      let word = this.freeBits(w);
      if (step === 0) word = (word & ~((1 << (this.cursor & 31)) - 1)) >>> 0;
      if (word !== 0) return w * 32 + (31 - Math.clz32(word & -word));
    }
    throw new InvariantError(`free slots: ${this.count} free but none found`);
  }

  /** Back from a slot in a run to the run's first slot. */
  private backToRunStart(slot: number): number {
    let start = slot;
    while (start > 0 && this.isFree(start - 1)) start--;
    return start;
  }

  private growTo(frontier: number): void {
    const needed = Math.ceil(frontier / 32);
    if (needed <= this.words.length) return;
    const grown = new Uint32Array(
      Math.min(Math.max(needed, this.words.length * 2), this.wordCount),
    );
    grown.set(this.words);
    this.words = grown;
  }
}
