/**
 * KetamaRing: consistent hashing with weighted virtual nodes.
 *
 * Each member owns a number of points on a 32-bit circle, in proportion to its
 * weight; point j of a member is XXH32(utf8(uuid) ‖ u32le(j)). A block hashes
 * to a position (hash.ts `blockPoint`) and its replicas are the first `count`
 * distinct members met walking clockwise from there. Points of a member depend
 * only on its uuid and its point count, so adding or removing a member leaves
 * everyone else's points where they were: blocks move only to a new member or
 * off a removed one (README.md states exactly what is guaranteed, with the
 * measured figures).
 *
 * What a block hashes: volumeId and index, NOT generation. Blocks are never
 * overwritten in place — a rewrite of block 7 is a new block (vol, gen+1, 7)
 * — and hashing the generation would spread hot rewrites over more nodes. We
 * keep the generation out on purpose:
 *   - a rewrite lands on the nodes that hold the version it replaces, so a
 *     partial-block write can be completed from the local old copy, and the
 *     old version's space is freed (after the commit) on the same nodes that
 *     just took the new one: per-node usage does not drift with rewrites;
 *   - a volume's (index → nodes) layout is stable across generations, so a
 *     node's share of a volume, its cache and a rebalancer's view of "what is
 *     where" do not depend on how often blocks were rewritten;
 *   - spreading comes from the index: consecutive indexes hash to unrelated
 *     positions, and volumeId is hashed too so volumes do not overlap.
 * The price: all rewrites of one block hit the same `count` nodes (as with
 * any in-place store). Map pages (index ≥ MAP_PAGE_BIT) follow the same rule.
 *
 * Point counts: weights are relative (by convention, store bytes). The base
 * is the largest half-integer power of two, 2^(k+½), not above the smallest
 * weight, and a member gets floor(POINTS_PER_BASE · weight / base) points:
 * the smallest member gets 512–1023, the others proportionally more. Because
 * the base moves in steps of 2×, it — and so every member's count — does
 * not depend on which members are present: adding or removing members
 * changes nobody else's points unless the smallest weight crosses a step.
 * Steps sit at 2^(k+½), away from the binary sizes stores are usually given
 * (a 4 GiB = 2^32 store is mid-step, and gets 724 points). When the base
 * does change, every count changes by 2× and about half of all blocks move.
 * If the total would exceed MAX_POINTS the base doubles until it fits (again
 * about half the blocks move — the price of a cluster that large or that
 * lopsided); a member whose count falls below MIN_POINTS gets MIN_POINTS, so
 * every member is still placed on (it then takes more than its weight's
 * share).
 */
import type { BlockRef } from '../block-ref.js';
import { blockPoint, xxh32 } from './hash.js';
import { checkBlock, checkedCopy } from './description.js';
import { RingDescriptionError, type IndexedRing, type RingDescription } from './ring.js';

/** Points per `base` of weight: the smallest member gets 512–1023 (README.md: balance). */
export const POINTS_PER_BASE = 512;
/** At most this many points in a ring: 6 bytes each, 0.2–0.6 s to build at the cap (README.md). */
export const MAX_POINTS = 1 << 20;
/** Fewest points any member gets, however small its weight. */
export const MIN_POINTS = 16;

// The lookup table indexes points by their top BUCKET_BITS bits, so a lookup
// is a table read and a binary search over a handful of points.
const BUCKET_BITS = 16;
const BUCKET_SHIFT = 32 - BUCKET_BITS;
// Sort keys are point · 2^16 + owner: below 2^48, exact in a double.
const OWNER_SCALE = 0x1_0000;

const textEncoder = new TextEncoder();

/** Point counts per member (members in the order given), by the rule above. */
export function pointCounts(weights: readonly number[]): Uint32Array {
  const counts = new Uint32Array(weights.length);
  if (weights.length === 0) return counts;
  let smallest = Infinity;
  for (const w of weights) smallest = Math.min(smallest, w);
  // By doubling and halving, not Math.log2: the same base on every engine.
  let base = Math.SQRT1_2;
  while (base * 2 <= smallest) base *= 2;
  while (base > smallest) base /= 2;
  for (;;) {
    let total = 0;
    for (let i = 0; i < weights.length; i++) {
      const count = Math.max(MIN_POINTS, Math.floor((POINTS_PER_BASE * weights[i]) / base));
      // Summed before storing: a huge count would wrap in the Uint32Array.
      total += count;
      counts[i] = count;
    }
    if (total <= MAX_POINTS) return counts;
    if (weights.length * MIN_POINTS > MAX_POINTS) {
      throw new RingDescriptionError(
        `${weights.length} members need more than ${MAX_POINTS} ring points`,
      );
    }
    base *= 2;
  }
}

export class KetamaRing implements IndexedRing {
  readonly description: RingDescription;
  readonly members: readonly string[];
  /** Sorted ring positions, and the member index owning each. */
  private readonly points: Uint32Array;
  private readonly owners: Uint16Array;
  /** bucketStart[b] = first point whose top bits are ≥ b; bucketStart[2^BUCKET_BITS] = points.length. */
  private readonly bucketStart: Uint32Array;
  /** Per-member stamps for "already chosen" in long walks; see placeInto. */
  private readonly chosenStamp: Uint32Array;
  private stamp = 0;
  private scratch: Uint32Array | undefined;

  constructor(description: RingDescription) {
    if (description.type !== 'ketama')
      throw new RingDescriptionError(
        `a KetamaRing cannot be built from a '${description.type}' ring`,
      );
    this.description = checkedCopy(description);
    // Canonical order: everything below depends only on the set of members.
    const sorted = [...this.description.members].sort((a, b) =>
      a.uuid < b.uuid ? -1 : a.uuid > b.uuid ? 1 : 0,
    );
    this.members = Object.freeze(sorted.map((m) => m.uuid));
    const counts = pointCounts(sorted.map((m) => m.weight));
    let total = 0;
    for (const c of counts) total += c;

    const keys = new Float64Array(total);
    let k = 0;
    for (let m = 0; m < sorted.length; m++) {
      const uuid = textEncoder.encode(sorted[m].uuid);
      const input = new Uint8Array(uuid.length + 4);
      input.set(uuid);
      const view = new DataView(input.buffer);
      for (let j = 0; j < counts[m]; j++) {
        view.setUint32(uuid.length, j, true);
        keys[k++] = xxh32(input) * OWNER_SCALE + m;
      }
    }
    // Equal positions (two members' points colliding) sort by member index,
    // i.e. by uuid: still the same answer everywhere.
    keys.sort();

    this.points = new Uint32Array(total);
    this.owners = new Uint16Array(total);
    for (let i = 0; i < total; i++) {
      const point = Math.floor(keys[i] / OWNER_SCALE);
      this.points[i] = point;
      this.owners[i] = keys[i] - point * OWNER_SCALE;
    }
    this.bucketStart = new Uint32Array((1 << BUCKET_BITS) + 1);
    let p = 0;
    for (let b = 0; b <= 1 << BUCKET_BITS; b++) {
      while (p < total && this.points[p] >>> BUCKET_SHIFT < b) p++;
      this.bucketStart[b] = p;
    }
    this.chosenStamp = new Uint32Array(sorted.length);
  }

  /** How many points the ring has (for tests and the bench). */
  get pointCount(): number {
    return this.points.length;
  }

  /** How many points each member owns, in `members` order. */
  memberPointCounts(): Uint32Array {
    const counts = new Uint32Array(this.members.length);
    for (const owner of this.owners) counts[owner]++;
    return counts;
  }

  /** Index of the first point at or clockwise after `h` (wrapping to 0). */
  private firstPointAtOrAfter(h: number): number {
    const b = h >>> BUCKET_SHIFT;
    let lo = this.bucketStart[b];
    let hi = this.bucketStart[b + 1];
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (this.points[mid] < h) lo = mid + 1;
      else hi = mid;
    }
    return lo === this.points.length ? 0 : lo;
  }

  placeInto(volumeId: number, index: number, count: number, out: Uint32Array): number {
    const want = Math.min(count, this.members.length);
    if (!(want >= 0) || !Number.isInteger(count))
      throw new RangeError(`placement count must be a non-negative integer, not ${count}`);
    if (out.length < want)
      throw new RangeError(`placement of ${want} members into an array of ${out.length}`);
    checkBlock(volumeId, index);
    if (want === 0) return 0;
    const total = this.points.length;
    let i = this.firstPointAtOrAfter(blockPoint(volumeId, index));
    out[0] = this.owners[i];
    let found = 1;
    if (want <= 8) {
      // The usual case (count = replication): compare against the few
      // already chosen; nothing to reset.
      while (found < want) {
        if (++i === total) i = 0;
        const owner = this.owners[i];
        let seen = false;
        for (let c = 0; c < found; c++) {
          if (out[c] === owner) {
            seen = true;
            break;
          }
        }
        if (!seen) out[found++] = owner;
      }
      return found;
    }
    // Many replicas wanted (up to every member): one stamp per call marks the
    // chosen members, so each step is O(1). The walk ends within one turn of
    // the ring, because every member owns at least one point.
    if (++this.stamp === 0xffff_ffff) {
      this.chosenStamp.fill(0);
      this.stamp = 1;
    }
    const stamp = this.stamp;
    this.chosenStamp[out[0]] = stamp;
    while (found < want) {
      if (++i === total) i = 0;
      const owner = this.owners[i];
      if (this.chosenStamp[owner] !== stamp) {
        this.chosenStamp[owner] = stamp;
        out[found++] = owner;
      }
    }
    return found;
  }

  placement(ref: BlockRef, count: number): string[] {
    const want = Math.min(count, this.members.length);
    if (this.scratch === undefined || this.scratch.length < want)
      this.scratch = new Uint32Array(Math.max(want, 8));
    const n = this.placeInto(ref.volumeId, ref.index, count, this.scratch);
    const result = new Array<string>(n);
    for (let c = 0; c < n; c++) result[c] = this.members[this.scratch[c]];
    return result;
  }
}
