/**
 * FreeSlots: a store's free slots, held in memory in proportion to the part
 * of the store in use, not to its capacity.
 *
 * Slots at or past the frontier have not been used since the store was
 * opened, and their records are free: they are handed out in order, one
 * frontier step at a time, and take no memory until then. Free slots below
 * the frontier (found free at open, or released since) wait on a stack that
 * grows as needed. The stack goes first: at open its lowest slot is on top,
 * and a released slot goes on top, so it is reused first while its pages
 * are still in the system's caches. Before this, a 4 TB store of 64 KiB
 * blocks kept a 256 MiB array of free slot numbers from the start.
 */
import { assert } from '../../common/assert.js';

const INITIAL_STACK_SLOTS = 1024;

export class FreeSlots {
  private stack = new Int32Array(INITIAL_STACK_SLOTS);
  private top = 0;

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
  }

  /** How many slots are free. */
  get count(): number {
    return this.top + (this.slotCount - this.frontier);
  }

  /** Take a free slot: the stack's top, else the frontier's next; -1 when none is free. */
  take(): number {
    if (this.top > 0) return this.stack[--this.top];
    if (this.frontier < this.slotCount) return this.frontier++;
    return -1;
  }

  /** Give back a slot below the frontier (the caller knows it is free and not already here). */
  put(slot: number): void {
    assert(
      slot >= 0 && slot < this.frontier && this.top < this.frontier,
      () =>
        `free slots: slot ${slot} put back is not below the frontier ${this.frontier}, or every slot below it is free already`,
    );
    if (this.top === this.stack.length) {
      const grown = new Int32Array(Math.min(this.stack.length * 2, this.frontier));
      grown.set(this.stack);
      this.stack = grown;
    }
    this.stack[this.top++] = slot;
  }
}
