/**
 * Salvage: make a damaged volume loadable again, keeping everything that
 * still checks out.
 *
 * - A block or map page found intact in a slot whose record is damaged is
 *   copied to a fresh slot with a new record (its bytes checked against the
 *   map's hash again first); the map does not change for it.
 * - Every other damaged block becomes a hole, and a damaged map page makes
 *   the whole range it covers holes (its entry in the parent is cleared; a
 *   damaged root leaves the volume empty). These go into a new version,
 *   committed as a FLUSH would: pages written, the store synced, the root
 *   compare-and-swapped into the record. Blocks that check out are never
 *   rewritten; what the old version alone referenced is freed by torusd's
 *   start-up sweep.
 */
import type { VersionedRecord, VolumeCatalog } from '../controlplane/volumes/catalog.js';
import {
  OFF_NONCE,
  OFF_PATCH_PRESENT,
  RECORD_MAP_PAGE,
  RECORD_PATCH,
} from '../dataplane/blocks/record.js';
import type { LocalSlotStore } from '../dataplane/blocks/slot-store.js';
import type { MapRoot } from '../model/map-root.js';
import type { Damage, VolumeCheck } from './volume-check.js';

export interface SalvageResult {
  /** Blocks and pages copied out of slots with damaged records. */
  recovered: number;
  /** Byte ranges of the volume that now read as zeros. */
  zeroed: { offset: number; length: number; block: string }[];
  /** The version committed (unchanged when only recoveries were needed). */
  generation: number;
}

const NO_NONCE = new Uint8Array(12);

/** A record's nonce bytes for a patch of every sub-block: no base, all present (record.ts). */
function wholePatchFields(wholeMask: number): Uint8Array {
  const fields = new Uint8Array(12);
  new DataView(fields.buffer).setUint32(OFF_PATCH_PRESENT - OFF_NONCE, wholeMask, true);
  return fields;
}
const NO_TAG = new Uint8Array(16);

/** Salvage one checked volume in `store` (open, this process holding the data directory's lock). */
export async function salvageVolume(
  check: VolumeCheck,
  versioned: VersionedRecord,
  store: LocalSlotStore,
  catalog: VolumeCatalog,
): Promise<SalvageResult> {
  const recoverable = check.damage.filter((d) => d.recoverableFrom !== undefined);
  const lost = check.damage.filter((d) => d.recoverableFrom === undefined);
  // Read every orphan first: a slot allocated for one copy may be another orphan's.
  const copies: { damage: Damage; bytes: Buffer }[] = [];
  for (const damage of recoverable) {
    const bytes = Buffer.alloc(store.blockSize);
    const digest = await store.readOrphan(damage.recoverableFrom!, bytes, !!damage.treeHashed);
    if (digest.lo === damage.hashLo && digest.hi === damage.hashHi) copies.push({ damage, bytes });
    else lost.push(damage); // changed since the check: nothing else writes here, but never trust it
  }
  for (const { damage, bytes } of copies) {
    const slot = store.allocate();
    // A tree-hashed block goes back as what it was: a patch holding every sub-block, no base.
    const flags = damage.page ? RECORD_MAP_PAGE : damage.treeHashed ? RECORD_PATCH : 0;
    await store.writeReceivedBlock(
      slot,
      damage.ref,
      bytes,
      flags,
      { lo: damage.hashLo, hi: damage.hashHi },
      damage.treeHashed ? wholePatchFields(store.wholeMask) : NO_NONCE,
      NO_TAG,
    );
  }
  const result: SalvageResult = {
    recovered: copies.length,
    zeroed: lost.map(({ offset, length, block }) => ({ offset, length, block })),
    generation: versioned.record.generation,
  };
  if (lost.length === 0) {
    await store.sync();
    return result;
  }
  const { map } = check;
  const generation = versioned.record.generation + 1;
  const draft = map.draft(generation);
  let rootLost = false;
  for (const damage of lost) {
    if (!damage.page) draft.clearEntry(0, damage.ref.index);
    else if (damage.page.level === map.rootLevel) rootLost = true;
    else draft.clearEntry(damage.page.level + 1, damage.page.pageNo);
  }
  let root: MapRoot | undefined = map.root;
  if (rootLost) {
    root = undefined;
  } else {
    for (let level = 0; level < draft.height; level++) {
      for (const page of draft.pagesToWrite(level)) {
        const slot = store.allocate('map-page');
        const digest = await store.writeBlock(slot, page.ref, page.bytes, RECORD_MAP_PAGE);
        const top = draft.pageWritten(level, page.pageNo, digest.lo, digest.hi);
        if (top) root = top;
      }
    }
    if (draft.rootCleared()) root = undefined;
  }
  await store.sync();
  await catalog.commitVersion(versioned, generation, root ?? null, undefined, draft.height);
  result.generation = generation;
  return result;
}
