/**
 * SingleRing: the ring of a single-node deployment. Its one member holds
 * every block; there is nothing to hash. A ring with no member yet (a
 * cluster record created before its node joined) places nowhere, like an
 * empty ketama ring; more than one member is an error.
 */
import type { BlockRef } from '../block-ref.js';
import { checkBlock, checkedCopy } from './description.js';
import { RingDescriptionError, type IndexedRing, type RingDescription } from './ring.js';

export class SingleRing implements IndexedRing {
  readonly description: RingDescription;
  readonly members: readonly string[];

  constructor(description: RingDescription) {
    if (description.type !== 'single')
      throw new RingDescriptionError(
        `a SingleRing cannot be built from a '${description.type}' ring`,
      );
    this.description = checkedCopy(description);
    if (this.description.members.length > 1) {
      throw new RingDescriptionError(
        `a 'single' ring has at most one member, not ${this.description.members.length}; use a 'ketama' ring for more`,
      );
    }
    this.members = Object.freeze(this.description.members.map((m) => m.uuid));
  }

  placeInto(volumeId: number, index: number, count: number, out: Uint32Array): number {
    if (!Number.isInteger(count) || count < 0)
      throw new RangeError(`placement count must be a non-negative integer, not ${count}`);
    checkBlock(volumeId, index);
    if (count === 0 || this.members.length === 0) return 0;
    if (out.length < 1) throw new RangeError('placement of 1 member into an array of 0');
    out[0] = 0;
    return 1;
  }

  placement(ref: BlockRef, count: number): string[] {
    if (!Number.isInteger(count) || count < 0)
      throw new RangeError(`placement count must be a non-negative integer, not ${count}`);
    checkBlock(ref.volumeId, ref.index);
    return count === 0 ? [] : this.members.slice(0, 1);
  }
}
