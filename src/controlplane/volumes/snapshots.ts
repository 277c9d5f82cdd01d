/**
 * Snapshots: a committed version of a volume, kept by name.
 *
 * A snapshot is one record, `snapshots/<volume>/<snap>`: a frozen copy of
 * the version fields of the volume's record when it was taken (generation,
 * map root, size) and what reading it takes (id, lineage, block size, the
 * wrapped key of an encrypted volume). No block is copied: versions never
 * overwrite blocks, so keeping a version's map root keeps all of it, and GC
 * (which loads every snapshot's map) keeps its blocks.
 *
 * Taking one is metadata only and needs no lock: it captures the version
 * committed at that moment — what every client had FLUSHed — by a txn that
 * lands only if the volume's record is still the one read (a writer that
 * commits in between makes it read again). The writer's own commit reads the
 * snapshots in its txn (catalog.ts), so it never frees what one just taken
 * needs.
 *
 * Names: VOLUME@SNAPSHOT, the snapshot part spelled like a volume name.
 */
import { ConflictError, NotFoundError, UsageError } from '../../common/errors.js';
import type { Ancestor } from '../../model/lineage.js';
import type { MapRoot } from '../../model/map-root.js';
import type { MetadataStore } from '../metadata/store.js';
import {
  ALL_SNAPSHOTS,
  checkVolumeName,
  snapshotChangesKey,
  snapshotPrefix,
  volumeKey,
  type VolumeCatalog,
  type VolumeRecord,
} from './catalog.js';

export interface SnapshotRecord {
  /** The snapshot's own name (after the @). */
  name: string;
  volume: string;
  volumeId: number;
  generation: number;
  root: MapRoot | null;
  size: number;
  blockSize: number;
  encrypted: boolean;
  wrappedKey?: string;
  masterKeyFingerprint?: string;
  ancestors?: readonly Ancestor[];
  /** Height of the map tree `root` tops (VolumeRecord.mapHeight); absent: what `size` needs. */
  mapHeight?: number;
  createdAt: string;
}

export interface VersionedSnapshot {
  record: SnapshotRecord;
  modRevision: number;
  key: string;
}

/** How many times a create re-reads a record a busy writer keeps committing. */
const MAX_CREATE_ATTEMPTS = 100;

/** "vol@snap" → its parts; a usage error that says the form otherwise. */
export function parseSnapshotName(text: string): { volume: string; snapshot: string } {
  const at = text.indexOf('@');
  if (at < 0)
    throw new UsageError(`"${printable(text)}" names no snapshot: expected VOLUME@SNAPSHOT`);
  const volume = text.slice(0, at);
  const snapshot = text.slice(at + 1);
  checkVolumeName(volume);
  checkSnapshotName(snapshot);
  return { volume, snapshot };
}

/** Is `text` of the form vol@snap (an export name for a snapshot)? */
export function isSnapshotName(text: string): boolean {
  return text.includes('@');
}

export function checkSnapshotName(name: string): void {
  if (!/^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/.test(name)) {
    throw new UsageError(
      `invalid snapshot name "${printable(name)}": use 1-128 letters, digits, '.', '_' or '-', starting with a letter or digit`,
    );
  }
}

/** Control characters shown escaped: a name is echoed back to a terminal. */
function printable(text: string): string {
  return JSON.stringify(text).slice(1, -1);
}

function snapshotKey(volume: string, snapshot: string): string {
  return snapshotPrefix(volume) + snapshot;
}

function decode(value: Buffer): SnapshotRecord {
  return JSON.parse(value.toString()) as SnapshotRecord;
}

/** What a snapshot keeps of a volume record. */
function snapshotOf(record: VolumeRecord, name: string): SnapshotRecord {
  return {
    name,
    volume: record.name,
    volumeId: record.id,
    generation: record.generation,
    root: record.root,
    size: record.size,
    blockSize: record.blockSize,
    encrypted: record.encrypted,
    ...(record.wrappedKey !== undefined ? { wrappedKey: record.wrappedKey } : {}),
    ...(record.masterKeyFingerprint !== undefined
      ? { masterKeyFingerprint: record.masterKeyFingerprint }
      : {}),
    ...(record.ancestors && record.ancestors.length > 0 ? { ancestors: record.ancestors } : {}),
    ...(record.mapHeight !== undefined ? { mapHeight: record.mapHeight } : {}),
    createdAt: new Date().toISOString(),
  };
}

export class SnapshotCatalog {
  constructor(
    private readonly meta: MetadataStore,
    private readonly catalog: VolumeCatalog,
  ) {}

  /** Take snapshot `snapshot` of volume `volume`'s committed version. */
  async create(volume: string, snapshot: string): Promise<SnapshotRecord> {
    checkVolumeName(volume);
    checkSnapshotName(snapshot);
    const key = snapshotKey(volume, snapshot);
    for (let attempt = 0; attempt < MAX_CREATE_ATTEMPTS; attempt++) {
      // Everything FLUSHed before the call, even when the writer has only logged it.
      const { record, modRevision } = await (attempt === 0
        ? this.catalog.getCommitted(volume)
        : this.catalog.get(volume));
      const taken = snapshotOf(record, snapshot);
      const result = await this.meta.txn({
        compare: [
          { key: volumeKey(volume), target: 'modRevision', op: '==', value: modRevision },
          { key, target: 'modRevision', op: '==', value: 0 },
        ],
        success: [
          { type: 'put', key, value: Buffer.from(JSON.stringify(taken)) },
          { type: 'put', key: snapshotChangesKey(volume), value: Buffer.from(snapshot) },
        ],
        failure: [
          { type: 'get', key },
          { type: 'get', key: volumeKey(volume) },
        ],
      });
      if (result.succeeded) return taken;
      const [existing, current] = result.results.map((r) =>
        r.type === 'get' ? r.kvs[0] : undefined,
      );
      if (existing) throw new ConflictError(`snapshot "${volume}@${snapshot}" already exists`);
      if (!current) throw new NotFoundError(`no volume named "${volume}"`);
      // The writer committed between our read and our txn: take the newer version.
    }
    throw new ConflictError(
      `volume "${volume}" kept changing (${MAX_CREATE_ATTEMPTS} commits during the snapshot); try again`,
    );
  }

  /** The snapshots of `volume`, oldest first; refuses an unknown volume. */
  async list(volume: string): Promise<SnapshotRecord[]> {
    checkVolumeName(volume);
    await this.catalog.get(volume);
    const kvs = await this.meta.getPrefix(snapshotPrefix(volume));
    return kvs.map((kv) => decode(kv.value)).sort(byAge);
  }

  /** Every snapshot of the catalog. */
  async listAll(): Promise<SnapshotRecord[]> {
    return (await this.meta.getPrefix(ALL_SNAPSHOTS)).map((kv) => decode(kv.value));
  }

  /**
   * Every volume record and every snapshot, in one read (one txn): GC needs
   * both as of the same revision, or a snapshot taken or deleted between two
   * reads could be missed by both.
   */
  async listVersions(): Promise<{ records: VolumeRecord[]; snapshots: SnapshotRecord[] }> {
    const result = await this.meta.txn({
      compare: [],
      success: [
        { type: 'get', key: volumeKey(''), prefix: true },
        { type: 'get', key: ALL_SNAPSHOTS, prefix: true },
      ],
    });
    const [records, snapshots] = result.results.map((r) => (r.type === 'get' ? r.kvs : []));
    return {
      records: records.map((kv) => JSON.parse(kv.value.toString()) as VolumeRecord),
      snapshots: snapshots.map((kv) => decode(kv.value)),
    };
  }

  async get(volume: string, snapshot: string): Promise<VersionedSnapshot> {
    checkVolumeName(volume);
    checkSnapshotName(snapshot);
    const key = snapshotKey(volume, snapshot);
    const kv = await this.meta.get(key);
    if (!kv) {
      await this.catalog.get(volume); // "no volume" when that is what is missing
      throw new NotFoundError(
        `volume "${volume}" has no snapshot "${snapshot}" (torusctl block snapshot list ${volume})`,
      );
    }
    return { record: decode(kv.value), modRevision: kv.modRevision, key };
  }

  /** Delete a snapshot; its blocks no other version references are freed by GC. */
  async remove(volume: string, snapshot: string): Promise<SnapshotRecord> {
    const { record, modRevision, key } = await this.get(volume, snapshot);
    const result = await this.meta.txn({
      compare: [{ key, target: 'modRevision', op: '==', value: modRevision }],
      success: [{ type: 'delete', key }],
    });
    if (!result.succeeded)
      throw new ConflictError(
        `snapshot "${volume}@${snapshot}" changed while being deleted; try again`,
      );
    return record;
  }
}

function byAge(a: SnapshotRecord, b: SnapshotRecord): number {
  return a.generation - b.generation || a.createdAt.localeCompare(b.createdAt);
}

/** What torusctl and the library show of a snapshot. */
export interface SnapshotStatus {
  /** VOLUME@SNAPSHOT */
  name: string;
  volume: string;
  snapshot: string;
  createdAt: string;
  size: number;
  generation: number;
  encrypted: boolean;
  /** Bytes deleting it would free (blocks no other version references); undefined where not computed (cluster). */
  exclusive?: number;
}

export function snapshotStatus(record: SnapshotRecord): SnapshotStatus {
  return {
    name: `${record.volume}@${record.name}`,
    volume: record.volume,
    snapshot: record.name,
    createdAt: record.createdAt,
    size: record.size,
    generation: record.generation,
    encrypted: record.encrypted,
  };
}
