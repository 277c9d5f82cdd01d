/**
 * PatchBases: which slots of a store hold patches over which bases, and how
 * many patches (stored, or being written) pin each base — in memory, rebuilt
 * at open from the patches' records (slot-store.ts). The store decides what
 * a pinned base's release means (held, not freed); this only counts.
 */
import { assert, invariantBroken } from '../../common/assert.js';

export class PatchBases {
  /** Patch slot → its base's slot. */
  private readonly baseOfPatch = new Map<number, number>();
  /** Base slot → pins (patches over it, stored or being written). */
  private readonly pins = new Map<number, number>();

  pin(base: number): void {
    this.pins.set(base, (this.pins.get(base) ?? 0) + 1);
  }

  /** Drop one pin of `base`; true when it was the last. */
  unpin(base: number): boolean {
    const count = this.pins.get(base);
    if (count === undefined) invariantBroken(`unpinning slot ${base}, which no patch pins`);
    if (count > 1) {
      this.pins.set(base, count - 1);
      return false;
    }
    this.pins.delete(base);
    return true;
  }

  isPinned(slot: number): boolean {
    return this.pins.has(slot);
  }

  /** `patch` now holds a patch over `base`, whose pin (already taken) becomes the patch's. */
  attach(patch: number, base: number): void {
    assert(this.pins.has(base), 'a patch is bound over a pinned base');
    this.baseOfPatch.set(patch, base);
  }

  /** `patch` is going: its base (whose pin the caller drops), or undefined for a whole block. */
  detach(patch: number): number | undefined {
    const base = this.baseOfPatch.get(patch);
    if (base !== undefined) this.baseOfPatch.delete(patch);
    return base;
  }

  /** The slots of patches over a base. */
  patches(): IterableIterator<number> {
    return this.baseOfPatch.keys();
  }

  /** Patches over a base (bound, or held as a base themselves). */
  get patchCount(): number {
    return this.baseOfPatch.size;
  }

  /** The base of the patch in `slot`, or -1. */
  baseOf(slot: number): number {
    return this.baseOfPatch.get(slot) ?? -1;
  }
}
