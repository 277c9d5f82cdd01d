/**
 * CatalogGcViews: the GcView (gc-view.ts) of a catalog listing, for a node
 * whose Rebalancer frees garbage. For every listed volume it loads the block
 * map of the committed version the record names — from this node's store, or
 * its peers when not held here, every page checked against its parent's hash
 * — and answers "is this ref referenced" from the loaded maps (no per-ref
 * keys: the maps are what a Volume holds anyway).
 *
 * Maps are kept between runs and reloaded incrementally: a page whose parent
 * entry (generation, hash) is unchanged is the very page loaded last time, so
 * a new version costs the pages its commit wrote, not the whole map.
 *
 * Read pins (controlplane/volumes/read-pins.ts) add the versions nodes
 * serve read-only: their maps are loaded the same way (sharing unchanged
 * pages with the committed map) and their blocks count as referenced. Pins
 * of volumes not listed are ignored: the volume is gone.
 *
 * Any volume or pinned version whose map cannot be loaded (no copy of a page
 * anywhere, a bad checksum) makes the whole view undefined: a run with it
 * frees nothing.
 */
import type { Logger } from '../../common/log.js';
import type { VolumeRecord } from '../../controlplane/volumes/catalog.js';
import type { PinnedVersion } from '../../controlplane/volumes/read-pins.js';
import { MAP_PAGE_BIT, type BlockRef } from '../../model/block-ref.js';
import type { LocalSlotStore } from '../blocks/slot-store.js';
import { BlockMap, pageIndex } from '../volume/block-map.js';
import { sameMapRoot, type MapRoot } from '../../model/map-root.js';
import type { ClusterBlocks } from './cluster-blocks.js';
import type { GcView, GcVolume } from './gc-view.js';

const LEVEL_SPAN = 2 ** 40;

/** Where map pages come from: this node's store, else a peer (ClusterBlocks.getBlock verifies the hash). */
export interface PageSource {
  store: LocalSlotStore;
  cluster: Pick<ClusterBlocks, 'getBlock'>;
}

interface Loaded {
  generation: number;
  root: MapRoot | null;
  map: BlockMap;
}

/** What loading a version's map takes: a record, or a pin's copy of one. */
type Version = Pick<
  VolumeRecord,
  'id' | 'size' | 'blockSize' | 'generation' | 'root' | 'mapHeight'
>;

export class CatalogGcViews {
  private readonly maps = new Map<number, Loaded>();
  /** Pinned versions' maps, by `id@generation`. */
  private readonly pinnedMaps = new Map<string, Loaded>();

  constructor(
    private readonly source: PageSource,
    private readonly log: Logger,
  ) {}

  /**
   * The view of `records` (VolumeCatalog.list(), listed after the Rebalancer
   * asked) and `pins` (listReadPins(), listed after the records), or
   * undefined if some version's map could not be loaded.
   */
  async view(
    records: readonly VolumeRecord[],
    pins: readonly PinnedVersion[] = [],
  ): Promise<GcView | undefined> {
    const volumes = new Map<number, GcVolume>();
    const maps = new Map<number, BlockMap>();
    for (const record of records) {
      try {
        maps.set(record.id, await this.load(record));
      } catch (err) {
        this.log.warn(
          { volume: record.name, generation: record.generation, err: (err as Error).message },
          'cluster GC: volume map not loadable; nothing is freed this run',
        );
        return undefined;
      }
      volumes.set(record.id, { id: record.id, generation: record.generation });
    }
    const pinned = new Map<number, BlockMap[]>();
    const pinsSeen = new Set<string>();
    for (const pin of pins) {
      const current = maps.get(pin.id);
      if (!current || volumes.get(pin.id)!.generation === pin.generation) continue;
      const key = `${pin.id}@${pin.generation}`;
      if (pinsSeen.has(key)) continue; // the same version read on another node
      pinsSeen.add(key);
      try {
        const map = await this.loadPinned(key, pin, current);
        pinned.set(pin.id, [...(pinned.get(pin.id) ?? []), map]);
      } catch (err) {
        this.log.warn(
          {
            volume: pin.volume,
            generation: pin.generation,
            node: pin.node,
            err: (err as Error).message,
          },
          'cluster GC: map of a version served read-only not loadable; nothing is freed this run',
        );
        return undefined;
      }
    }
    // Forget volumes no longer listed, versions no longer pinned.
    for (const id of this.maps.keys()) if (!volumes.has(id)) this.maps.delete(id);
    for (const key of this.pinnedMaps.keys()) if (!pinsSeen.has(key)) this.pinnedMaps.delete(key);
    return {
      volumes,
      isReferenced: (ref) =>
        references(maps.get(ref.volumeId), ref) ||
        (pinned.get(ref.volumeId)?.some((map) => references(map, ref)) ?? false),
    };
  }

  private async load(record: VolumeRecord): Promise<BlockMap> {
    const cached = this.maps.get(record.id);
    if (cached && cached.generation === record.generation && sameMapRoot(cached.root, record.root))
      return cached.map;
    const map = await this.build(record, cached?.map);
    this.maps.set(record.id, { generation: record.generation, root: record.root, map });
    return map;
  }

  /** A pinned version's map; unchanged pages are shared with the committed map `current`. */
  private async loadPinned(key: string, pin: PinnedVersion, current: BlockMap): Promise<BlockMap> {
    const cached = this.pinnedMaps.get(key);
    if (cached && sameMapRoot(cached.root, pin.root)) return cached.map;
    const map = await this.build(pin, current);
    this.pinnedMaps.set(key, { generation: pin.generation, root: pin.root, map });
    return map;
  }

  /** Load `version`'s map, page by page from its root, taking pages whose parent entry is unchanged from `previous`. */
  private async build(version: Version, previousMap: BlockMap | undefined): Promise<BlockMap> {
    const blockCount = Math.ceil(version.size / version.blockSize);
    const map = new BlockMap(
      version.id,
      version.blockSize,
      blockCount,
      version.root ?? undefined,
      version.mapHeight,
    );
    const previous =
      previousMap && previousMap.height === map.height && previousMap.blockSize === map.blockSize
        ? previousMap
        : undefined;
    if (version.root) {
      const page = new Uint8Array(version.blockSize);
      const install = async (
        level: number,
        pageNo: number,
        generation: number,
        hashLo: number,
        hashHi: number,
        reuse: Uint32Array | undefined,
      ) => {
        if (reuse) {
          map.installPage(level, pageNo, reuse);
          return;
        }
        await this.readPage(
          { volumeId: version.id, generation, index: pageIndex(level, pageNo) },
          hashLo,
          hashHi,
          page,
        );
        const words = new Uint32Array(version.blockSize / 4);
        new Uint8Array(words.buffer).set(page);
        map.installPage(level, pageNo, words);
      };
      const top = map.rootLevel;
      const root = version.root;
      await install(
        top,
        0,
        root.generation,
        root.hashLo,
        root.hashHi,
        previous && sameMapRoot(previous.root, root) ? previous.committedPage(top, 0) : undefined,
      );
      for (let level = top; level > 0; level--) {
        for (const child of map.childPages(level)) {
          const entry = map.entryWords(level, child)!;
          const old = previous?.entryWords(level, child);
          const same = old && old[0] === entry[0] && old[2] === entry[2] && old[3] === entry[3];
          await install(
            level - 1,
            child,
            entry[0],
            entry[2],
            entry[3],
            same ? previous!.committedPage(level - 1, child) : undefined,
          );
        }
      }
    }
    return map;
  }

  /** A page from the local store if held and intact (it may be dropped while read), else from a peer. */
  private async readPage(
    ref: BlockRef,
    hashLo: number,
    hashHi: number,
    dest: Uint8Array,
  ): Promise<void> {
    const { store, cluster } = this.source;
    const slot = store.lookup(ref.volumeId, ref.generation, ref.index);
    if (slot !== undefined) {
      const digest = await store.readBlock(slot, dest);
      if (digest.lo === hashLo && digest.hi === hashHi) return;
    }
    await cluster.getBlock(ref, hashLo, hashHi, dest);
  }
}

/** Does the loaded map reference `ref`: a data block whose entry has its generation, or a page whose parent's entry (or the root) does. */
export function references(map: BlockMap | undefined, ref: BlockRef): boolean {
  if (!map) return false;
  if (ref.index < MAP_PAGE_BIT) return map.entryWords(0, ref.index)?.[0] === ref.generation;
  const within = ref.index - MAP_PAGE_BIT;
  const level = Math.floor(within / LEVEL_SPAN);
  const pageNo = within - level * LEVEL_SPAN;
  // Levels above the root's are not stored yet (a grow not committed since).
  if (level === map.rootLevel) return pageNo === 0 && map.root?.generation === ref.generation;
  if (level > map.rootLevel) return false;
  return map.entryWords(level + 1, pageNo)?.[0] === ref.generation;
}
