/**
 * Storing dirty blocks for the next version, without a sync: a spill under
 * cache pressure, or the first step of a commit. Placement says where each
 * block goes, the pool writes it there, and the durability rule
 * (replication/durability.ts) says whether what landed is enough.
 */
import { IoError } from '../../common/errors.js';
import { SlotState } from '../cache/block-cache.js';
import type { PatchSource } from '../pool/data-pool.js';
import type { WrittenBlocks } from '../pool/written-blocks.js';
import type { WriteRemote } from '../replication/block-placement.js';
import { assert } from '../../common/assert.js';
import {
  countShortfall,
  notePeerWriteFailures,
  storedAnywhere,
} from '../replication/durability.js';
import { planPatch } from './patch-plan.js';
import type { SpilledBlock, VolumeState } from './volume-state.js';

/**
 * A store slot for each block (placement's; a patch written in place keeps
 * its own), onto `storeSlots`, and placement's remote targets. Only a
 * single node writes patches in place, so remote targets cover every block.
 */
function placeInto(
  state: VolumeState,
  indices: number[],
  patches: readonly (PatchSource | undefined)[],
  storeSlots: number[],
): WriteRemote | undefined {
  const fresh = indices.filter((_, i) => !patches[i]?.inPlace);
  const freshSlots: number[] = [];
  try {
    const remote = state.placement.placeWrites(state.services.store, state.id, fresh, freshSlots);
    assert(
      !remote || fresh.length === indices.length,
      'patches written in place are never replicated',
    );
    return remote;
  } finally {
    let next = 0;
    for (let i = 0; i < indices.length; i++)
      storeSlots.push(patches[i]?.inPlace ? patches[i]!.olderSlot : (freshSlots[next++] ?? -1));
  }
}

/**
 * Store the given dirty blocks for the next version: afterwards they are in
 * `spilled` (or holes, if all zeros) and their cache slots clean. On failure
 * they are dirty again and nothing was recorded; a block stored nowhere
 * stays dirty and fails the call after the others are recorded.
 */
export async function storeDirty(state: VolumeState, chosen: number[]): Promise<void> {
  if (chosen.length === 0) return;
  if (state.storeRefused) throw state.storeRefused;
  const { cache, store, pool } = state.services;
  // Blocks written in part are completed first (nothing yields when none
  // is), unless they are stored as patches (patch-plan.ts). A block trimmed
  // meanwhile is no longer dirty; one trimmed and written in part again is
  // completed again.
  const ready = (index: number) => {
    const slot = state.table.get(index);
    return slot === undefined || cache.isWhole(slot) || !!planPatch(state, index, slot);
  };
  let indices = chosen;
  while (!indices.every(ready)) {
    await state.completeBlocks(indices.filter((index) => !ready(index)));
    indices = indices.filter((index) => state.dirty.has(index));
  }
  // From here to Flushing nothing yields: no write can change what each block is stored as.
  if (indices.length === 0) return;
  const { placement } = state;
  const generation = state.generation + 1;
  const cacheSlots = indices.map((index) => state.table.get(index)!);
  const patches = indices.map((index, i) =>
    cache.isWhole(cacheSlots[i]) ? undefined : planPatch(state, index, cacheSlots[i]),
  );
  const anyPatch = patches.some((p) => p !== undefined);
  for (const index of indices) state.dirty.delete(index);
  for (const slot of cacheSlots) cache.setState(slot, SlotState.Flushing);
  // A base stays stored while a new patch over it is written, whatever commits or GC release meanwhile.
  for (const p of patches) if (p && p.baseSlot >= 0 && !p.inPlace) store.pinBase(p.baseSlot);
  const storeSlots: number[] = [];
  let written: WrittenBlocks;
  try {
    const remote = placeInto(state, indices, patches, storeSlots);
    const storing = pool.writeBlocks(
      state.id,
      generation,
      state.key,
      cacheSlots,
      storeSlots,
      indices,
      remote,
      anyPatch ? patches : undefined,
    );
    state.storing = storing;
    written = await storing;
  } catch (err) {
    state.storing = undefined;
    for (let i = 0; i < indices.length; i++) {
      if (patches[i]?.inPlace) continue; // the spilled patch's slot, not ours to give back
      if (patches[i] && patches[i]!.baseSlot >= 0) store.unpinBase(patches[i]!.baseSlot);
      if (storeSlots[i] >= 0) store.unallocate(storeSlots[i]);
    }
    for (let i = 0; i < indices.length; i++) {
      if (state.table.get(indices[i]) === cacheSlots[i]) {
        cache.setState(cacheSlots[i], SlotState.Dirty);
        state.dirty.add(indices[i]);
      } else {
        cache.free(cacheSlots[i]);
      }
    }
    throw err;
  }
  state.storing = undefined;
  const unstored: string[] = [];
  const refused: number[] = [];
  for (let i = 0; i < indices.length; i++) {
    const index = indices[i];
    const current = state.table.get(index) === cacheSlots[i];
    const ref = { volumeId: state.id, generation, index };
    const local = storeSlots[i] >= 0;
    const patch = patches[i];
    if (patch && written.isRefused(i)) {
      // Stored whole by the call below, after its completion; what this
      // node stored of it (a replica did not take the patch) is let go.
      if (!patch.inPlace) {
        if (written.refusedAfterStoring(i)) store.discardWritten(storeSlots[i]);
        else if (storeSlots[i] >= 0) store.unallocate(storeSlots[i]);
        if (patch.baseSlot >= 0) store.unpinBase(patch.baseSlot);
      }
      state.patchRefused.add(index);
      if (current) {
        cache.setState(cacheSlots[i], SlotState.Dirty);
        state.dirty.add(index);
        refused.push(index);
      } else {
        cache.free(cacheSlots[i]);
      }
      continue;
    }
    if (!patch) state.patchRefused.delete(index);
    if (written.isZero(i)) {
      if (local) store.unallocate(storeSlots[i]);
      if (state.spilled.delete(index)) store.release(ref); // an earlier spill of this block
      if (current && state.map.isPresent(index)) state.pendingHoles.add(index);
    } else {
      const peers = written.peers(i);
      if (!storedAnywhere(local, peers)) {
        // Not stored anywhere: the block stays dirty (or its newer data does) and the round fails below.
        unstored.push(`block ${index}: ${written.failuresOf(i).join('; ') || 'no target'}`);
        if (current) {
          cache.setState(cacheSlots[i], SlotState.Dirty);
          state.dirty.add(index);
        } else {
          cache.free(cacheSlots[i]);
        }
        continue;
      }
      // Replaces (and releases) an earlier spill of this block; a patch's pin on its base becomes the patch's.
      if (local && !patch?.inPlace)
        store.bind(storeSlots[i], ref, patch && patch.baseSlot >= 0 ? patch.baseSlot : undefined);
      // Stored elsewhere only (this node's store full or not a target now): an earlier spill of
      // this block kept here holds older bytes under the same ref, and a read here would find it.
      else if (!local) store.release(ref);
      // Trimmed while it was being written: a hole pending over a committed
      // block, or — for a block no version has — no slot in the table any
      // more (a flushing slot is never evicted; only a trim, zeroing or
      // shrink takes it out). Recording this spill would bring the old data back.
      if (state.pendingHoles.has(index) || (!current && !state.table.has(index))) {
        store.release(ref);
        state.spilled.delete(index);
      } else {
        const entry: SpilledBlock = {
          hashLo: written.hashLo(i),
          hashHi: written.hashHi(i),
          local,
          peers,
          patch: patch !== undefined,
        };
        countShortfall(placement, state.id, entry);
        state.spilled.set(index, entry);
      }
    }
    if (current) cache.setState(cacheSlots[i], SlotState.Clean);
    else cache.free(cacheSlots[i]); // rewritten or trimmed meanwhile
  }
  notePeerWriteFailures(placement, state.services.log, state.name, written.failures);
  // Blocks that could not be patches: completed and stored whole now.
  if (refused.length > 0) await storeDirty(state, refused);
  if (unstored.length > 0) {
    const first = unstored.slice(0, 4).join(' | ');
    throw new IoError(
      'EIO',
      `volume ${state.name}: ${unstored.length} block(s) could not be stored on any node: ${first}`,
    );
  }
}
