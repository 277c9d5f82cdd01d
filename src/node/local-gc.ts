/**
 * LocalGc: a single node's garbage collection — free every block of the
 * local store that no version can need any more: no volume's committed
 * version, no snapshot, no clone (through its lineage) references it.
 *
 * A committing volume frees what its commit superseded at once when nothing
 * else can hold it (version-commit.ts); what a snapshot or clone held is left
 * for this, which runs after a volume, snapshot or clone is deleted or a
 * volume restored, and once at start (where crash leftovers go too).
 *
 * Why it is safe on one node. Every volume is open here, so each one's
 * committed map is in memory; snapshots' maps are loaded (pages shared with
 * the live map where unchanged; snapshots never change). Then, with no await
 * between, each stored block is judged against the live maps and committed
 * generations as they are at that instant (gc-view.ts's rules): a block of a
 * generation above its volume's committed one is in flight and kept (at start
 * nothing is in flight, so it is a leftover and goes). Snapshots and clones
 * are created through `exclusive`, never while a run loads maps: one taken
 * meanwhile would protect blocks the run did not know to keep.
 *
 * A volume that could not be opened (missing key, damaged map) stops every
 * run: its blocks are referenced by nothing loaded, yet must not go.
 */
import type { Logger } from '../common/log.js';
import type { SnapshotCatalog, SnapshotRecord } from '../controlplane/volumes/snapshots.js';
import type { LocalSlotStore } from '../dataplane/blocks/slot-store.js';
import { CatalogGcViews } from '../dataplane/replication/gc-catalog.js';
import { MapIndex } from '../dataplane/replication/map-index.js';
import type { BlockMap } from '../dataplane/volume/block-map.js';
import type { NodeMetrics } from './metrics.js';
import type { VolumeHost } from './volume-host.js';

export interface GcRun {
  freed: number;
  /** Why nothing was freed, when a run could not judge safely. */
  skipped?: string;
}

export class LocalGc {
  private readonly views: CatalogGcViews;
  private tail: Promise<unknown> = Promise.resolve();
  /** Blocks freed by runs so far. */
  freedTotal = 0;

  constructor(
    private readonly host: VolumeHost,
    private readonly snapshots: SnapshotCatalog,
    private readonly store: LocalSlotStore,
    private readonly log: Logger,
  ) {
    this.views = new CatalogGcViews({ store }, log);
  }

  /** Run `fn` with no GC run loading maps meanwhile (and no other `exclusive` call). */
  exclusive<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.tail.then(fn);
    this.tail = run.catch(() => undefined);
    return run;
  }

  /** Free what nothing references. `atStart`: nothing is in flight, so uncommitted blocks go too. */
  run(options: { atStart?: boolean } = {}): Promise<GcRun> {
    return this.exclusive(() => this.collect(options.atStart ?? false));
  }

  private async collect(atStart: boolean): Promise<GcRun> {
    const { unavailable } = this.host;
    if (unavailable.size > 0) {
      const skipped = `volumes not loaded: ${[...unavailable.keys()].join(', ')}`;
      this.log.warn(
        { volumes: [...unavailable.keys()] },
        'GC skipped while some volumes are unavailable',
      );
      return { freed: 0, skipped };
    }
    const live = new Map<number, BlockMap>();
    for (const volume of this.host.volumes.values()) live.set(volume.id, volume.committedMap);
    let kept: BlockMap[];
    try {
      kept = await this.views.snapshotMaps(await this.snapshots.listAll(), live);
    } catch (err) {
      this.log.warn(
        { err: (err as Error).message },
        'GC skipped: a snapshot map could not be loaded',
      );
      return { freed: 0, skipped: (err as Error).message };
    }
    // From here to the end, no await: the live maps and generations are read as of one instant.
    if (this.host.unavailable.size > 0) return { freed: 0, skipped: 'a volume became unavailable' };
    const index = new MapIndex();
    const committed = new Map<number, number>();
    for (const volume of this.host.volumes.values()) {
      index.add(volume.committedMap);
      committed.set(volume.id, volume.committedGeneration);
    }
    const snapshotsOnly = new MapIndex();
    for (const map of kept) snapshotsOnly.add(map);
    const garbage = [];
    let snapshotOnly = 0;
    for (const [ref] of this.store.blocks()) {
      if (index.isReferenced(ref)) continue;
      if (snapshotsOnly.isReferenced(ref)) {
        snapshotOnly++;
        continue;
      }
      const generation = committed.get(ref.volumeId);
      // In flight: spilled for a version not committed yet.
      if (!atStart && generation !== undefined && ref.generation > generation) continue;
      garbage.push(ref);
    }
    for (const ref of garbage) this.store.release(ref);
    this.freedTotal += garbage.length;
    this.snapshotOnlyBlocks = snapshotOnly;
    if (garbage.length > 0)
      this.log.info({ blocks: garbage.length }, 'freed blocks no version references');
    return { freed: garbage.length };
  }

  /**
   * For each group of snapshots: how many stored blocks only that group's
   * snapshots reference — what deleting them (and only them) would free.
   */
  exclusiveBlocks(groups: readonly (readonly SnapshotRecord[])[]): Promise<number[]> {
    return this.exclusive(async () => {
      const live = new Map<number, BlockMap>();
      for (const volume of this.host.volumes.values()) live.set(volume.id, volume.committedMap);
      const all = await this.snapshots.listAll();
      const maps = await this.views.snapshotMaps(all, live);
      const keyOf = (s: SnapshotRecord) => `${s.volume}@${s.name}`;
      return groups.map((group) => {
        const inGroup = new Set(group.map(keyOf));
        const others = new MapIndex();
        for (const map of live.values()) others.add(map);
        const own: BlockMap[] = [];
        all.forEach((s, i) => {
          if (inGroup.has(keyOf(s))) own.push(maps[i]);
          else others.add(maps[i]);
        });
        const seen = new Set<string>();
        let count = 0;
        for (const map of own) {
          for (const ref of map.referencedRefs()) {
            const key = `${ref.volumeId}/${ref.generation}/${ref.index}`;
            if (seen.has(key) || others.isReferenced(ref)) continue;
            seen.add(key);
            if (this.store.lookup(ref.volumeId, ref.generation, ref.index) !== undefined) count++;
          }
        }
        return count;
      });
    });
  }

  /** Blocks of the local store only snapshots referenced at the last run: what deleting every snapshot would free. */
  snapshotOnlyBlocks = 0;
}

/** A single node's GC gauges. */
export function registerGcGauges(metrics: NodeMetrics, gc: LocalGc, blockSize: number): void {
  metrics.gauge(
    'torus_gc_freed_blocks_total',
    'Local blocks freed as garbage (superseded, of deleted volumes, snapshots or clones)',
    () => gc.freedTotal,
  );
  metrics.gauge(
    'torus_snapshot_only_bytes',
    'Bytes of the local store only snapshots reference (what deleting every snapshot would free), as of the last GC run',
    () => gc.snapshotOnlyBlocks * blockSize,
  );
}
