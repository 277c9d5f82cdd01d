/**
 * Committing a new version: store what is still dirty, write the map pages
 * on the changed paths, make every copy durable (durability.ts), then CAS the
 * new root into metadata. Runs inside a write-back round (write-back.ts).
 */
import { invariantBroken } from '../../common/assert.js';
import { CommitOutcomeUnknownError } from '../../common/errors.js';
import { RECORD_MAP_PAGE } from '../blocks/record.js';
import { VersionCopies } from '../replication/durability.js';
import { ENTRY_SEALED } from './block-map.js';
import { type MapRoot } from '../../model/map-root.js';
import { storeDirty } from './dirty-blocks.js';
import type { VolumeState } from './volume-state.js';

/**
 * Commit a new version: spill what is dirty, write the map pages, sync, CAS
 * the root. Nothing to commit: a no-op. With `storeDirtyFirst: false` only
 * what is already spilled or trimmed is committed (to make room in a full
 * store: see write-back.ts).
 */
export async function commitVersion(
  state: VolumeState,
  options: { storeDirtyFirst?: boolean } = {},
): Promise<void> {
  if (state.storeRefused) throw state.storeRefused;
  if (options.storeDirtyFirst !== false) await storeDirty(state, [...state.dirty]);
  if (state.spilled.size === 0 && state.pendingHoles.size === 0 && !state.intentPending) return;
  const started = process.hrtime.bigint();
  const { store } = state.services;
  const { map } = state;
  const generation = state.generation + 1;
  // A block both set and cleared in one version would make its content
  // depend on the order the draft applies them: the write and trim paths
  // keep the two sets apart, checked here where they become a version.
  for (const index of state.pendingHoles) {
    if (state.spilled.has(index))
      invariantBroken(`volume ${state.name}: block ${index} is both spilled and a pending hole`);
  }
  const entries = [...state.spilled];
  const holes = [...state.pendingHoles];
  state.pendingHoles.clear();
  const writtenPages: number[] = [];
  const copies = new VersionCopies(state.placement, state.name);
  try {
    const draft = map.draft(generation);
    const flags = state.key ? ENTRY_SEALED : 0;
    for (const [index, e] of entries) draft.setEntry(0, index, flags, e.hashLo, e.hashHi);
    for (const index of holes) draft.clearEntry(0, index);
    let root: MapRoot | undefined = map.root;
    for (let level = 0; level < draft.height; level++) {
      for (const page of draft.pagesToWrite(level)) {
        const slot = store.allocate('map-page');
        let digest;
        try {
          digest = await store.writeBlock(slot, page.ref, page.bytes, RECORD_MAP_PAGE);
        } catch (err) {
          store.unallocate(slot);
          throw err;
        }
        writtenPages.push(page.ref.index);
        copies.putPage(page.ref, page.bytes, digest.lo, digest.hi, RECORD_MAP_PAGE);
        const top = draft.pageWritten(level, page.pageNo, digest.lo, digest.hi);
        if (top) root = top;
      }
    }
    if (draft.rootCleared()) root = undefined;
    const superseded = draft.supersededRefs();
    await copies.sync(store, entries);
    const heldThrough =
      (await state.services.commit(
        state.identity,
        generation,
        root,
        draft.height,
        state.intentState,
      )) ?? 0;
    draft.commit(root);
    state.generation = generation;
    state.heldThrough = heldThrough;
    // The record says what intentState says now. A replicated log clears this
    // itself, once the holders the record names are its current ones.
    if (!state.intents) state.intentPending = false;
    for (const [index, e] of entries)
      if (state.spilled.get(index) === e) state.spilled.delete(index);
    // Released now only if nothing else can need it: blocks of an ancestor
    // (a clone's shared ones) and blocks a snapshot or clone holds are left
    // to GC, which sees every version that references them.
    for (const ref of superseded)
      if (ref.volumeId === state.id && ref.generation > heldThrough) store.release(ref);
    state.services.onFlush?.(
      state.name,
      entries.length,
      Number(process.hrtime.bigint() - started) / 1e9,
    );
  } catch (err) {
    if (err instanceof CommitOutcomeUnknownError) {
      // The version may have landed: its pages and blocks stay (GC frees them if it did not), and
      // this volume object stores nothing more, lest it write over them under the same generation.
      state.storeRefused = err;
      throw err;
    }
    for (const index of writtenPages) store.release({ volumeId: state.id, generation, index });
    for (const index of holes)
      if (!state.table.has(index) && !state.spilled.has(index)) state.pendingHoles.add(index);
    throw err;
  }
}
