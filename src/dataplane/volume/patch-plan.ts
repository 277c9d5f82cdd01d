/**
 * Which partly written blocks a write-back stores as patches
 * (blocks/patches.ts) instead of completing them first (block-loads.ts
 * complete(): read the rest, write the whole).
 *
 * A Dirty slot holding some sub-blocks of a stored block becomes a patch
 * when every copy is in this node's store (the placement says so), the
 * volume is not encrypted (a sealed block's tag covers the whole block), and
 * the block's current copy is:
 * - a whole block of an earlier generation: the patch goes over it;
 * - a patch (committed, or spilled for the next version): the new one goes
 *   over the same base and takes the older patch's sub-blocks not written
 *   again.
 * A whole block spilled for the next version has the patch's own ref, so it
 * cannot be a base; such a block is completed. So is one whose patch would
 * hold more than half the block: past that a patch saves little on the
 * write and costs a second read range on every whole read.
 */
import { PATCH_MAX_SUB_BLOCKS, subBlockCount } from '../blocks/patches.js';
import type { PatchSource } from '../pool/data-pool.js';
import { ENTRY_SEALED } from './block-map.js';
import type { VolumeState } from './volume-state.js';

/** How block `index`'s Dirty slot `cacheSlot` (written in part) is stored as a patch, or undefined: whole. */
export function planPatch(
  state: VolumeState,
  index: number,
  cacheSlot: number,
): PatchSource | undefined {
  const { cache, store } = state.services;
  if (!state.placement.storesPatches || state.key) return undefined;
  if (cache.subBlocks === 0 || cache.subBlocks > PATCH_MAX_SUB_BLOCKS) return undefined;
  if (state.patchRefused.has(index) || state.pendingHoles.has(index)) return undefined;
  const written = cache.validMask(cacheSlot);
  if (written === cache.wholeMask) return undefined;
  let current: number | undefined;
  if (state.spilled.has(index)) {
    current = store.lookup(state.id, state.generation + 1, index);
    if (current === undefined || !store.isPatch(current)) return undefined;
  } else {
    const entry = state.map.lookup(index);
    if (!entry || (entry.flags & ENTRY_SEALED) !== 0) return undefined;
    current = store.lookup(state.map.ownerOf(entry.generation), entry.generation, index);
    if (current === undefined) return undefined;
  }
  const older = store.isPatch(current) ? current : -1;
  const baseSlot = older >= 0 ? store.baseOf(older) : current;
  if (baseSlot < 0) return undefined;
  const held = older >= 0 ? store.presentOf(older) : 0;
  if (subBlockCount((written | held) >>> 0) * 2 > cache.subBlocks) return undefined;
  const base = store.refOf(baseSlot);
  return {
    written,
    baseSlot,
    baseVolume: base.volumeId,
    baseGeneration: base.generation,
    olderSlot: older,
  };
}
