/**
 * Checking one volume's committed version against the local store, offline:
 * every map page from the root down and every data block the map names is
 * read and compared with the hash its parent entry (or the root) records.
 *
 * Unlike loading a volume (dataplane/volume/map-load.ts), a page that fails
 * does not stop the walk: it is recorded with the range of the volume it
 * covers, and its siblings are checked on. A block whose slot record was
 * damaged is looked for by hash among the slots with damaged records
 * (slot-scan.ts): found, it is *recoverable* (salvage writes it a new
 * record); sealed blocks cannot be, their nonce and tag lived in the record.
 */
import type { VolumeRecord } from '../controlplane/volumes/catalog.js';
import type { LocalSlotStore } from '../dataplane/blocks/slot-store.js';
import { BlockMap, ENTRY_SEALED, pageIndex } from '../dataplane/volume/block-map.js';
import { formatRef, type BlockRef } from '../model/block-ref.js';
import type { DamagedSlot } from './slot-scan.js';

export type DamageKind = 'missing-block' | 'bad-block' | 'missing-map-page' | 'bad-map-page';

/** One block or map page of a volume's version that does not check out. */
export interface Damage {
  kind: DamageKind;
  /** The block or page, as "vol 3 gen 7 block 12" / "… map page 0". */
  block: string;
  ref: BlockRef;
  /** For a map page: its level (0 = leaves) and number in that level. */
  page?: { level: number; pageNo: number };
  /** The bytes of the volume it makes unreadable: [offset, offset + length). */
  offset: number;
  length: number;
  /** Found intact in this slot, whose record is damaged: salvage gives it a new record. */
  recoverableFrom?: number;
  /** …found by its tree hash: a whole block written into in place, re-homed as such (patches.ts). */
  treeHashed?: boolean;
  /** The map entry's hash, for salvage to check the copy it re-homes. */
  hashLo: number;
  hashHi: number;
  sealed: boolean;
}

export interface VolumeCheck {
  name: string;
  id: number;
  generation: number;
  size: number;
  encrypted: boolean;
  pagesChecked: number;
  blocksChecked: number;
  damage: Damage[];
  /** The map as far as it loaded (bad pages left out), for salvage. */
  map: BlockMap;
}

/** Where a ref's bytes are: its bound slot, or an orphan slot holding them (recoverable). */
interface Located {
  slot: number;
  orphan: boolean;
  /** An orphan found by its tree hash: a whole block written into in place (patches.ts). */
  tree?: boolean;
}

export class VolumeChecker {
  private readonly orphans = new Map<string, { slot: number; tree: boolean }>();
  private readonly buffer: Buffer;

  constructor(
    private readonly store: LocalSlotStore,
    damagedSlots: readonly DamagedSlot[],
  ) {
    for (const d of damagedSlots) {
      this.orphans.set(hashKey(d.hashLo, d.hashHi), { slot: d.slot, tree: false });
      this.orphans.set(hashKey(d.treeLo, d.treeHi), { slot: d.slot, tree: true });
    }
    this.buffer = Buffer.alloc(store.blockSize);
  }

  async check(record: VolumeRecord): Promise<VolumeCheck> {
    const blockCount = Math.ceil(record.size / record.blockSize);
    const map = new BlockMap(
      record.id,
      record.blockSize,
      blockCount,
      record.root ?? undefined,
      record.mapHeight,
      record.ancestors ?? [],
    );
    const result: VolumeCheck = {
      name: record.name,
      id: record.id,
      generation: record.generation,
      size: record.size,
      encrypted: record.encrypted,
      pagesChecked: 0,
      blocksChecked: 0,
      damage: [],
      map,
    };
    if (!record.root) return result;
    const { root } = record;
    // Pages top down: a page that fails is left out of `map`, so its subtree is never visited.
    if (await this.checkPage(result, map.rootLevel, 0, root.generation, root.hashLo, root.hashHi)) {
      for (let level = map.rootLevel; level > 0; level--) {
        for (const child of map.childPages(level)) {
          const entry = map.entryWords(level, child)!;
          await this.checkPage(result, level - 1, child, entry[0], entry[2], entry[3]);
        }
      }
    }
    for (const index of map.presentFrom(0)) {
      const entry = map.lookup(index)!;
      const ref = { volumeId: map.ownerOf(entry.generation), generation: entry.generation, index };
      result.blocksChecked++;
      const sealed = (entry.flags & ENTRY_SEALED) !== 0;
      const kind = await this.verify(ref, entry.hashLo, entry.hashHi, sealed);
      if (!kind) continue;
      result.damage.push({
        ...kind,
        block: formatRef(ref),
        ref,
        offset: index * record.blockSize,
        length: Math.min(record.blockSize, record.size - index * record.blockSize),
        hashLo: entry.hashLo,
        hashHi: entry.hashHi,
        sealed,
      });
    }
    return result;
  }

  /** Check one page; install it in the map when it checks out (true), else record the damage. */
  private async checkPage(
    result: VolumeCheck,
    level: number,
    pageNo: number,
    generation: number,
    hashLo: number,
    hashHi: number,
  ): Promise<boolean> {
    const { map } = result;
    const ref = {
      volumeId: map.ownerOf(generation),
      generation,
      index: pageIndex(level, pageNo),
    };
    result.pagesChecked++;
    const kind = await this.verify(ref, hashLo, hashHi, false);
    if (kind) {
      const blocksPerPage = map.fanout ** (level + 1);
      const first = pageNo * blocksPerPage * map.blockSize;
      const end = Math.min(result.size, (pageNo + 1) * blocksPerPage * map.blockSize);
      result.damage.push({
        kind: kind.kind === 'bad-block' ? 'bad-map-page' : 'missing-map-page',
        ...(kind.recoverableFrom !== undefined ? { recoverableFrom: kind.recoverableFrom } : {}),
        block: formatRef(ref),
        ref,
        page: { level, pageNo },
        offset: first,
        length: Math.max(0, end - first),
        hashLo,
        hashHi,
        sealed: false,
      });
      if (kind.recoverableFrom === undefined) return false;
    }
    // this.buffer holds the page's bytes (from its slot or the orphan that matched).
    const words = new Uint32Array(map.blockSize / 4);
    new Uint8Array(words.buffer).set(this.buffer);
    map.installPage(level, pageNo, words);
    return true;
  }

  /**
   * Read `ref` into this.buffer and compare its hash. Undefined: it checks
   * out. Otherwise what is wrong, and where an intact copy was found.
   */
  private async verify(
    ref: BlockRef,
    hashLo: number,
    hashHi: number,
    sealed: boolean,
  ): Promise<
    | { kind: 'missing-block' | 'bad-block'; recoverableFrom?: number; treeHashed?: boolean }
    | undefined
  > {
    const where = this.locate(ref, hashLo, hashHi, sealed);
    if (!where) return { kind: 'missing-block' };
    // A patch whose base is gone cannot be read: as bad as a copy that fails its hash.
    const digest = where.orphan
      ? await this.store.readOrphan(where.slot, this.buffer, !!where.tree)
      : await this.store.readBlock(where.slot, this.buffer).catch(() => undefined);
    const intact = digest !== undefined && digest.lo === hashLo && digest.hi === hashHi;
    if (!where.orphan) return intact ? undefined : { kind: 'bad-block' };
    if (!intact) return { kind: 'missing-block' };
    return where.tree
      ? { kind: 'missing-block', recoverableFrom: where.slot, treeHashed: true }
      : { kind: 'missing-block', recoverableFrom: where.slot };
  }

  private locate(
    ref: BlockRef,
    hashLo: number,
    hashHi: number,
    sealed: boolean,
  ): Located | undefined {
    const slot = this.store.lookup(ref.volumeId, ref.generation, ref.index);
    if (slot !== undefined) return { slot, orphan: false };
    // A sealed block's nonce and tag were in the lost record: its bytes alone cannot be opened.
    const orphan = sealed ? undefined : this.orphans.get(hashKey(hashLo, hashHi));
    return orphan === undefined
      ? undefined
      : { slot: orphan.slot, orphan: true, tree: orphan.tree };
  }
}

function hashKey(lo: number, hi: number): string {
  return `${hi >>> 0}:${lo >>> 0}`;
}
