/**
 * SlotUses: where each slot of a store is in its life, in memory only (the
 * slot table on disk knows free and used), and how many slots are in each
 * use. The counts are kept by move() itself, so no caller keeps one by hand
 * beside it; LocalSlotStore checks them against the structures that hold the
 * slots (its free slots, its ref index) after every change.
 */
import { invariantBroken } from '../../common/assert.js';

export const enum SlotUse {
  /** Free (FreeSlots holds it, or it is past its frontier). */
  Free = 0,
  /** Handed out by allocate(); a worker may be writing it; not yet bound. */
  Allocated = 1,
  /** Holds a ref: the ref index names it. */
  Bound = 2,
  /** Released; its free record is being written, then it goes back among the free slots. */
  Releasing = 3,
  /**
   * Its record is neither free nor intact: on-disk damage (a record is 64
   * bytes inside one sector, so a crash cannot tear one). Never reused, so
   * `torusctl fsck --salvage` can still find its block by hash; fsck frees it.
   */
  SetAside = 4,
  /** Released, but the base of a patch still stored: freed with the last such patch. */
  Held = 5,
}

const USE_NAMES = [
  'free',
  'allocated',
  'bound',
  'being released',
  'set aside (damaged record)',
  'held (a base of patches)',
];

export class SlotUses {
  private readonly uses: Uint8Array;
  private readonly counts = new Array<number>(USE_NAMES.length).fill(0);

  /** Every slot starts free. */
  constructor(private readonly slotCount: number) {
    this.uses = new Uint8Array(slotCount);
    this.counts[SlotUse.Free] = slotCount;
  }

  of(slot: number): SlotUse {
    return this.uses[slot] as SlotUse;
  }

  count(use: SlotUse): number {
    return this.counts[use];
  }

  /** Move `slot` from use `from` to `to`, or fail naming what `what` found. */
  move(slot: number, from: SlotUse, to: SlotUse, what: string): void {
    const use = this.uses[slot];
    if (use !== from)
      invariantBroken(`${what} slot ${slot}, which is ${nameOf(use)}, not ${nameOf(from)}`);
    this.uses[slot] = to;
    this.counts[from]--;
    this.counts[to]++;
  }

  /**
   * The counts agree with the structures that hold the slots: `free` slots
   * among the free slots, `bound` in the ref index.
   */
  assertAccounted(free: number, bound: number): void {
    const { counts } = this;
    if (counts[SlotUse.Free] !== free || counts[SlotUse.Bound] !== bound)
      invariantBroken(
        `slot counts disagree: ${free} among the free slots against ${counts[SlotUse.Free]} free, ` +
          `${bound} in the ref index against ${counts[SlotUse.Bound]} bound ` +
          `(${counts.map((n, use) => `${n} ${USE_NAMES[use]}`).join(', ')}; ${this.slotCount} slots)`,
      );
  }
}

export function nameOf(use: number): string {
  return USE_NAMES[use] ?? 'out of range';
}
