/**
 * Loading a committed version's block map: every page from its root down,
 * each read from this node's store (or, when not held here, from a peer
 * through the placement) and checked against the hash its parent entry (or
 * the root) records. A page that fails its check fails the load: a volume
 * never opens on a map it cannot trust.
 */
import { ChecksumError } from '../../common/errors.js';
import type { MapRoot } from '../../model/map-root.js';
import type { LocalSlotStore } from '../blocks/slot-store.js';
import type { BlockPlacement } from '../replication/block-placement.js';
import { pageIndex, type BlockMap } from './block-map.js';

/** Install into `map` (empty, built for `root`) every page of the version `root` names. */
export async function loadCommittedMap(
  map: BlockMap,
  root: MapRoot,
  volumeName: string,
  store: LocalSlotStore,
  placement: BlockPlacement,
): Promise<void> {
  const page = Buffer.allocUnsafe(map.blockSize);
  const loadPage = async (
    level: number,
    pageNo: number,
    generation: number,
    hashLo: number,
    hashHi: number,
  ) => {
    // A clone's older pages are its ancestors' blocks (model/lineage.ts).
    const ref = { volumeId: map.ownerOf(generation), generation, index: pageIndex(level, pageNo) };
    const slot = store.lookup(ref.volumeId, ref.generation, ref.index);
    if (slot === undefined) await placement.getBlock(ref, hashLo, hashHi, page);
    const digest =
      slot === undefined ? { lo: hashLo, hi: hashHi } : await store.readBlock(slot, page);
    if (digest.lo !== hashLo || digest.hi !== hashHi) {
      throw new ChecksumError(
        volumeName,
        -1,
        `volume ${volumeName}: map page ${level}/${pageNo} fails its checksum`,
      );
    }
    const words = new Uint32Array(map.blockSize / 4);
    new Uint8Array(words.buffer).set(page);
    map.installPage(level, pageNo, words);
  };
  await loadPage(map.rootLevel, 0, root.generation, root.hashLo, root.hashHi);
  for (let level = map.rootLevel; level > 0; level--) {
    for (const child of map.childPages(level)) {
      const entry = map.entryWords(level, child)!;
      await loadPage(level - 1, child, entry[0], entry[2], entry[3]);
    }
  }
}
