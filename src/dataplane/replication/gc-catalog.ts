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
 * Snapshots and read pins (controlplane/volumes/read-pins.ts: the versions
 * nodes serve read-only) add versions: their maps are loaded the same way
 * (sharing unchanged pages with the committed map) and their blocks count as
 * referenced. Pins of volumes not listed are ignored: the volume is gone.
 * Snapshot pins (controlplane/volumes/snapshot-pins.ts: snapshots nodes
 * serve) are not: a snapshot deleted while read keeps its blocks, even with
 * its volume deleted, until the node serving it lets go.
 * Snapshots are listed with the records, in one read (a snapshot taken or
 * deleted between two reads could otherwise be missed on both sides).
 *
 * Clones: a map's older entries may name an ancestor's blocks (model/
 * lineage.ts). Every map is indexed under each volume its lineage names, and
 * a ref counts as referenced by a map only if the map's lineage gives the
 * ref's generation to the ref's volume — so a deleted source's blocks stay
 * while a clone references them.
 *
 * Any volume, snapshot or pinned version whose map cannot be loaded (no copy
 * of a page anywhere, a bad checksum) makes the whole view undefined: a run
 * with it frees nothing.
 */
import type { Logger } from '../../common/log.js';
import type { VolumeRecord } from '../../controlplane/volumes/catalog.js';
import type { PinnedVersion } from '../../controlplane/volumes/read-pins.js';
import type { PinnedSnapshot } from '../../controlplane/volumes/snapshot-pins.js';
import type { SnapshotRecord } from '../../controlplane/volumes/snapshots.js';
import { IoError } from '../../common/errors.js';
import { formatRef, type BlockRef } from '../../model/block-ref.js';
import type { LocalSlotStore } from '../blocks/slot-store.js';
import { BlockMap, pageIndex } from '../volume/block-map.js';
import { sameMapRoot, type MapRoot } from '../../model/map-root.js';
import type { ClusterBlocks } from './cluster-blocks.js';
import type { GcView, GcVolume } from './gc-view.js';
import { MapIndex } from './map-index.js';
import { snapshotSpace, type SnapshotMap, type SnapshotSpace } from './snapshot-space.js';

/** Where map pages come from: this node's store, else a peer (ClusterBlocks.getBlock verifies the hash). */
export interface PageSource {
  store: LocalSlotStore;
  /** Peers to fetch a page this store lacks from; none on a single node. */
  cluster?: Pick<ClusterBlocks, 'getBlock'>;
}

interface Loaded {
  generation: number;
  root: MapRoot | null;
  map: BlockMap;
}

/** What loading a version's map takes: a record, or a pin's or snapshot's copy of one. */
export type LoadableVersion = Pick<
  VolumeRecord,
  'id' | 'size' | 'blockSize' | 'generation' | 'root' | 'ancestors' | 'mapHeight'
>;

/** A snapshot's version in the shape a map load takes. */
export function snapshotVersion(snapshot: SnapshotRecord): LoadableVersion {
  return { ...snapshot, id: snapshot.volumeId };
}

export class CatalogGcViews {
  private readonly maps = new Map<number, Loaded>();
  /** Pinned versions' and snapshots' maps, by `id@generation` or `volume@snapshot#id`. */
  private readonly pinnedMaps = new Map<string, Loaded>();
  /** The last view's maps, for snapshotSpace(): committed and pinned versions, and snapshots. */
  private last: { versions: BlockMap[]; snapshots: SnapshotMap[] } = {
    versions: [],
    snapshots: [],
  };

  constructor(
    private readonly source: PageSource,
    private readonly log: Logger,
  ) {}

  /**
   * The view of `records` and `snapshots` (listed together, in one read,
   * after the Rebalancer asked) and `pins` (listReadPins(), listed after
   * them), or undefined if some version's map could not be loaded.
   */
  async view(
    records: readonly VolumeRecord[],
    pins: readonly PinnedVersion[] = [],
    snapshots: readonly SnapshotRecord[] = [],
    snapshotPins: readonly PinnedSnapshot[] = [],
  ): Promise<GcView | undefined> {
    const volumes = new Map<number, GcVolume>();
    const maps = new Map<number, BlockMap>();
    const index = new MapIndex();
    const versions: BlockMap[] = [];
    const snapshotMaps: SnapshotMap[] = [];
    // Oldest first: a clone's map can then share its source's pages.
    for (const record of [...records].sort((a, b) => a.id - b.id)) {
      try {
        const map = await this.load(record, maps);
        maps.set(record.id, map);
        index.add(map);
        versions.push(map);
      } catch (err) {
        this.log.warn(
          { volume: record.name, generation: record.generation, err: (err as Error).message },
          'cluster GC: volume map not loadable; nothing is freed this run',
        );
        return undefined;
      }
      volumes.set(record.id, { id: record.id, generation: record.generation });
    }
    const kept = new Set<string>();
    /** Load a kept version's map into the index; undefined (logged) when it cannot be. */
    const keep = async (
      key: string,
      version: LoadableVersion,
      what: Record<string, unknown>,
      message: string,
    ): Promise<BlockMap | undefined> => {
      kept.add(key);
      try {
        const map = await this.loadKept(key, version, maps.get(version.id));
        index.add(map);
        return map;
      } catch (err) {
        this.log.warn({ ...what, err: (err as Error).message }, message);
        return undefined;
      }
    };
    for (const snapshot of snapshots) {
      const map = await keep(
        `${snapshot.volume}@${snapshot.name}#${snapshot.volumeId}`,
        snapshotVersion(snapshot),
        { snapshot: `${snapshot.volume}@${snapshot.name}` },
        'cluster GC: snapshot map not loadable; nothing is freed this run',
      );
      if (!map) return undefined;
      snapshotMaps.push({ volume: snapshot.volume, name: snapshot.name, map });
    }
    for (const pin of pins) {
      if (!maps.has(pin.id) || volumes.get(pin.id)!.generation === pin.generation) continue;
      const key = `${pin.id}@${pin.generation}`;
      if (kept.has(key)) continue; // the same version read on another node
      const map = await keep(
        key,
        pin,
        { volume: pin.volume, generation: pin.generation, node: pin.node },
        'cluster GC: map of a version served read-only not loadable; nothing is freed this run',
      );
      if (!map) return undefined;
      versions.push(map);
    }
    // Snapshots being served, listed or not (deleted while read: their
    // blocks stay until the node lets go), volume listed or not.
    const listed = new Set(snapshots.map((s) => `${s.volumeId}@${s.generation}`));
    for (const { snapshot, node } of snapshotPins) {
      const key = `${snapshot.volumeId}@${snapshot.generation}`;
      if (kept.has(key) || listed.has(key)) continue;
      if (volumes.get(snapshot.volumeId)?.generation === snapshot.generation) continue;
      const map = await keep(
        key,
        snapshotVersion(snapshot),
        { snapshot: `${snapshot.volume}@${snapshot.name}`, node },
        'cluster GC: map of a snapshot being served not loadable; nothing is freed this run',
      );
      if (!map) return undefined;
      versions.push(map);
    }
    // Forget volumes no longer listed, versions no longer pinned or kept.
    for (const id of this.maps.keys()) if (!volumes.has(id)) this.maps.delete(id);
    for (const key of this.pinnedMaps.keys()) if (!kept.has(key)) this.pinnedMaps.delete(key);
    this.last = { versions, snapshots: snapshotMaps };
    return { volumes, isReferenced: (ref, hash) => index.isReferenced(ref, undefined, hash) };
  }

  /**
   * As of the last view: the blocks only snapshots hold, of those `isStored`
   * says are here (snapshot-space.ts).
   */
  snapshotSpace(isStored: (ref: BlockRef) => boolean): SnapshotSpace {
    return snapshotSpace(this.last.versions, this.last.snapshots, isStored);
  }

  /** Snapshots' maps (sharing unchanged pages with `current`, by volume id), for a caller with live maps of its own. */
  async snapshotMaps(
    snapshots: readonly SnapshotRecord[],
    current: ReadonlyMap<number, BlockMap>,
  ): Promise<BlockMap[]> {
    const out: BlockMap[] = [];
    const kept = new Set<string>();
    for (const snapshot of snapshots) {
      const key = `${snapshot.volume}@${snapshot.name}#${snapshot.volumeId}`;
      kept.add(key);
      out.push(await this.loadKept(key, snapshotVersion(snapshot), current.get(snapshot.volumeId)));
    }
    for (const key of this.pinnedMaps.keys()) if (!kept.has(key)) this.pinnedMaps.delete(key);
    return out;
  }

  /** A record's map; a clone's first load shares pages with its nearest loaded ancestor's. */
  private async load(
    record: VolumeRecord,
    loaded: ReadonlyMap<number, BlockMap>,
  ): Promise<BlockMap> {
    const cached = this.maps.get(record.id);
    if (cached && cached.generation === record.generation && sameMapRoot(cached.root, record.root))
      return cached.map;
    const nearest = record.ancestors?.[0];
    const map = await this.build(
      record,
      cached?.map ?? (nearest ? loaded.get(nearest.volumeId) : undefined),
    );
    this.maps.set(record.id, { generation: record.generation, root: record.root, map });
    return map;
  }

  /** A kept (pinned or snapshot) version's map; unchanged pages are shared with the committed map `current`. */
  private async loadKept(
    key: string,
    version: LoadableVersion,
    current: BlockMap | undefined,
  ): Promise<BlockMap> {
    const cached = this.pinnedMaps.get(key);
    if (cached && sameMapRoot(cached.root, version.root)) return cached.map;
    const map = await this.build(version, current);
    this.pinnedMaps.set(key, { generation: version.generation, root: version.root, map });
    return map;
  }

  /** Load `version`'s map, page by page from its root, taking pages whose parent entry is unchanged from `previous`. */
  private async build(
    version: LoadableVersion,
    previousMap: BlockMap | undefined,
  ): Promise<BlockMap> {
    const blockCount = Math.ceil(version.size / version.blockSize);
    const map = new BlockMap(
      version.id,
      version.blockSize,
      blockCount,
      version.root ?? undefined,
      version.mapHeight,
      version.ancestors ?? [],
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
          { volumeId: map.ownerOf(generation), generation, index: pageIndex(level, pageNo) },
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
    if (!cluster)
      throw new IoError(
        'EIO',
        `${formatRef(ref)} is missing from the local store or fails its checksum`,
      );
    await cluster.getBlock(ref, hashLo, hashHi, dest);
  }
}
