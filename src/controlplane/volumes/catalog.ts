/**
 * VolumeCatalog: the volumes of a cluster as records in the metadata store.
 *
 * Keys
 *   settings                 cluster settings (block size, …), written once by init
 *   volumes/<name>           VolumeRecord (JSON): identity, key, committed version
 *   volume-ids/<id>          <name>: makes ids unique across concurrent creators
 *   snapshots/<name>/<snap>  SnapshotRecord (snapshots.ts): a version kept by name
 *   snapshot-changes/<name>  bumped by every snapshot create: a delete compares it
 *   clone-holds/<id>/<clone> the generation of volume <id> a clone shares blocks up to
 *
 * A commit reads the volume's snapshots and clone holds in its own txn and
 * returns the highest generation they hold (`heldThrough`): the committing
 * node releases a superseded block of its own right away only above it, so
 * a snapshot or clone created just before the commit never loses a block
 * (one created after captures the new version). Anything held is freed
 * later by GC, which loads every version that references it.
 *
 * Every change is a compare-and-swap on the record's modRevision, so two
 * writers can never both commit "the next" version of a volume: the loser
 * gets ConflictError and must reload.
 *
 * Commits and deletes also respect the volume's write lock (../locks): made
 * with the lock's fence they land only while that lock still holds
 * (FencedError otherwise); made without one they land only while nobody
 * holds the lock (VolumeLockedError, naming the holder, otherwise). Either
 * way the lock is compared in the same txn as the write, so a refused write
 * leaves nothing behind.
 */
import { assert } from '../../common/assert.js';
import { blockSizeProblem } from '../../common/block-size.js';
import { ConflictError, NotFoundError, UsageError } from '../../common/errors.js';
import type { Ancestor } from '../../model/lineage.js';
import type { IntentState } from '../../model/intent-state.js';
import { mapHeightFor, type MapRoot } from '../../model/map-root.js';
import { FencedError, VolumeLockedError } from '../locks/errors.js';
import { checkFenceLocally, fenceCompares, fenceHolds, type VolumeFence } from '../locks/fence.js';
import { decodeLock, volumeEpochKey, volumeLockKey } from '../locks/lock-record.js';
import { commitBeforeReading } from './commit-requests.js';
import { logger, type Logger } from '../../common/log.js';
import {
  keyAbsent,
  unchangedSince,
  type Compare,
  type KeyValue,
  type MetadataStore,
  type TxnOp,
  type TxnOpResult,
  type TxnResult,
} from '../metadata/store.js';

export interface ClusterSettings {
  blockSize: number;
  createdAt: string;
}

export interface VolumeRecord {
  id: number;
  name: string;
  size: number;
  blockSize: number;
  encrypted: boolean;
  /** The volume's data key wrapped with the node master key (base64), when encrypted. */
  wrappedKey?: string;
  /** Fingerprint of the master key that wrapped it, to tell "wrong key" from corruption. */
  masterKeyFingerprint?: string;
  createdAt: string;
  /** Last committed version; 0 for a new volume. */
  generation: number;
  /** Cluster: copies of each block; absent means the ring's replication (ring set-replication). */
  replication?: number;
  root: MapRoot | null;
  /** A clone's ancestors, nearest first (model/lineage.ts): whose blocks its older entries name. */
  ancestors?: readonly Ancestor[];
  /** A clone: what it was cloned from, for people ("SRC" or "SRC@SNAP"). */
  origin?: string;
  /**
   * Height of the block map tree `root` tops. Absent: the height `size`
   * needs (records from before resize). Present once a version was committed
   * by a node that knows it, or the size changed: a resize is metadata only,
   * so the root it leaves may top a lower tree (grown) or a taller one
   * (shrunk) than the new size needs.
   */
  mapHeight?: number;
  /**
   * Cluster: where the replicated intent log stands (model/intent-state.ts):
   * which FLUSHed records this version holds, and which nodes hold the
   * rest. Absent: no writer of this volume logged a FLUSH.
   */
  intent?: IntentState;
}

export interface VersionedRecord {
  record: VolumeRecord;
  modRevision: number;
}

/** A committed version, and the highest generation of it a snapshot or clone holds (0: none). */
export interface CommittedVersion {
  versioned: VersionedRecord;
  heldThrough: number;
}

/** Fields a new record gets from its creator; the catalog adds id, time, and an empty version. */
export type NewVolumeFields = Omit<
  VolumeRecord,
  'id' | 'createdAt' | 'generation' | 'root' | 'ancestors' | 'origin'
>;

/** A new record that starts from an existing version (a clone): its map, lineage and origin, and the txn parts that keep that version safe. */
export interface StartingVersion {
  generation: number;
  root: MapRoot | null;
  /** Height of the tree `root` tops. */
  mapHeight: number;
  ancestors: readonly Ancestor[];
  origin: string;
  /** Compares that hold only while the version taken is still what was read. */
  compare: Compare[];
  /** Writes landing with the record (the clone's holds), given its id. */
  alsoPut: (id: number) => TxnOp[];
}

const SETTINGS = 'settings';
const VOLUMES = 'volumes/';
const VOLUME_IDS = 'volume-ids/';
const SNAPSHOTS = 'snapshots/';
const SNAPSHOT_CHANGES = 'snapshot-changes/';
const CLONE_HOLDS = 'clone-holds/';
/** The last volume id handed out. */
const VOLUME_ID_COUNTER = 'counters/volume-id';
/** Ids fit a block ref's 31 bits. */
const MAX_VOLUME_ID = 0x7fff_ffff;

/** Names usable as NBD export names, metadata keys and file names alike. */
const VOLUME_NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/;

export function checkVolumeName(name: string): void {
  if (!VOLUME_NAME.test(name)) {
    throw new UsageError(
      `invalid volume name "${name}": use 1-128 letters, digits, '.', '_' or '-', starting with a letter or digit`,
    );
  }
}

/** The key of a volume's record. */
export function volumeKey(name: string): string {
  return VOLUMES + name;
}

/** Every snapshot of volume `name` is under this prefix. */
export function snapshotPrefix(name: string): string {
  return `${SNAPSHOTS}${name}/`;
}

/** Every snapshot of the catalog is under this prefix. */
export const ALL_SNAPSHOTS = SNAPSHOTS;

/** Bumped by every snapshot create of volume `name`, so a volume delete can tell none appeared since it looked. */
export function snapshotChangesKey(name: string): string {
  return SNAPSHOT_CHANGES + name;
}

/** Every snapshot pin (snapshot-pins.ts) of the catalog is under this prefix. */
export const ALL_SNAPSHOT_PINS = 'pins/snapshots/';

/** The pins of volume `name`'s snapshots being served (of one snapshot, given `snapshot`). */
export function snapshotPinPrefix(name: string, snapshot?: string): string {
  return `${ALL_SNAPSHOT_PINS}${name}/${snapshot === undefined ? '' : `${snapshot}/`}`;
}

/** Every clone hold on volume `id`. */
export function cloneHoldPrefix(id: number): string {
  return `${CLONE_HOLDS}${id}/`;
}

/** Clone `cloneId`'s hold on its ancestor `ancestorId`. */
export function cloneHoldKey(ancestorId: number, cloneId: number): string {
  return `${cloneHoldPrefix(ancestorId)}${cloneId}`;
}

/** The highest `generation` among JSON values of snapshots, snapshot pins and clone holds (0: none). */
function highestHeld(results: TxnOpResult[]): number {
  let highest = 0;
  for (const result of results) {
    if (result.type !== 'get') continue;
    for (const kv of result.kvs) {
      const { generation } = JSON.parse(kv.value.toString()) as { generation?: unknown };
      // A hold that cannot be read holds everything: never release on a guess.
      highest = Math.max(
        highest,
        typeof generation === 'number' && generation >= 0 ? generation : Infinity,
      );
    }
  }
  return highest;
}

function encode(value: unknown): Buffer {
  return Buffer.from(JSON.stringify(value));
}

export class VolumeCatalog {
  constructor(private readonly meta: MetadataStore) {}

  /**
   * The volume's record, after its writer committed what it has FLUSHed
   * when it logs FLUSHes instead of committing them (commit-requests.ts):
   * what a snapshot or a clone of a live volume takes.
   */
  async getCommitted(name: string): Promise<VersionedRecord> {
    const current = await this.get(name);
    const asked = await commitBeforeReading(this.meta, current.record, commitLog());
    return asked === 'committed' ? this.get(name) : current;
  }

  async settings(): Promise<ClusterSettings | undefined> {
    const kv = await this.meta.get(SETTINGS);
    return kv ? (JSON.parse(kv.value.toString()) as ClusterSettings) : undefined;
  }

  /** Write cluster settings once; returns the settings in force (existing ones win). */
  async initSettings(settings: ClusterSettings): Promise<ClusterSettings> {
    // Written once and never changed: a bad block size stored here would
    // leave a cluster no node can ever start on.
    const problem = blockSizeProblem(settings.blockSize);
    if (problem) throw new UsageError(`block size: ${problem}`);
    const result = await this.meta.txn({
      compare: [{ key: SETTINGS, target: 'modRevision', op: '==', value: 0 }],
      success: [{ type: 'put', key: SETTINGS, value: encode(settings) }],
    });
    if (result.succeeded) return settings;
    return (await this.settings())!;
  }

  async list(): Promise<VolumeRecord[]> {
    const kvs = await this.meta.getPrefix(VOLUMES);
    return kvs.map((kv) => JSON.parse(kv.value.toString()) as VolumeRecord);
  }

  async get(name: string): Promise<VersionedRecord> {
    const kv = await this.meta.get(VOLUMES + name);
    if (!kv) throw new NotFoundError(`no volume named "${name}"`);
    return { record: JSON.parse(kv.value.toString()) as VolumeRecord, modRevision: kv.modRevision };
  }

  /**
   * Create a volume: empty, or (a clone) starting from an existing version
   * whose compares must still hold in the same txn.
   */
  async create(fields: NewVolumeFields, from?: StartingVersion): Promise<VolumeRecord> {
    checkVolumeName(fields.name);
    // Ids come from a counter and are never handed out twice, so blocks of a
    // deleted volume can never be mistaken for a new volume's (GC relies on
    // it). The txn checks the counter unchanged and the id unused; an id
    // already taken (by a catalog from before the counter, whose ids were
    // random) is skipped.
    let skipPast = 0;
    for (let attempt = 0; attempt < 64; attempt++) {
      const counter = await this.meta.get(VOLUME_ID_COUNTER);
      const last = counter ? Number(counter.value.toString()) : 0;
      if (!Number.isSafeInteger(last) || last < 0)
        throw new Error(
          `${VOLUME_ID_COUNTER} holds ${JSON.stringify(counter!.value.toString().slice(0, 40))}, not an id; refusing to allocate one`,
        );
      const id = Math.max(last, skipPast) + 1;
      if (id > MAX_VOLUME_ID) throw new ConflictError(`no volume ids left (the last was ${last})`);
      const record: VolumeRecord = {
        ...fields,
        id,
        createdAt: new Date().toISOString(),
        generation: from?.generation ?? 0,
        root: from?.root ?? null,
        ...(from ? { mapHeight: from.mapHeight } : {}),
        ...(from && from.ancestors.length > 0 ? { ancestors: from.ancestors } : {}),
        ...(from ? { origin: from.origin } : {}),
      };
      const result = await this.meta.txn({
        compare: [
          { key: VOLUMES + fields.name, target: 'modRevision', op: '==', value: 0 },
          { key: VOLUME_IDS + id, target: 'modRevision', op: '==', value: 0 },
          {
            key: VOLUME_ID_COUNTER,
            target: 'modRevision',
            op: '==',
            value: counter?.modRevision ?? 0,
          },
          ...(from?.compare ?? []),
        ],
        success: [
          { type: 'put', key: VOLUMES + fields.name, value: encode(record) },
          { type: 'put', key: VOLUME_IDS + id, value: Buffer.from(fields.name) },
          { type: 'put', key: VOLUME_ID_COUNTER, value: Buffer.from(String(id)) },
          // Snapshots left by a delete that raced a snapshot create are not this volume's.
          { type: 'delete', key: snapshotPrefix(fields.name), prefix: true },
          ...(from?.alsoPut(id) ?? []),
        ],
        failure: [
          { type: 'get', key: VOLUMES + fields.name },
          { type: 'get', key: VOLUME_IDS + id },
        ],
      });
      if (result.succeeded) return record;
      const [byName, byId] = result.results.map((r) =>
        r.type === 'get' ? r.kvs.length > 0 : false,
      );
      if (byName) throw new ConflictError(`volume "${fields.name}" already exists`);
      if (byId) skipPast = id;
      else if (from)
        throw new ConflictError(
          `${from.origin} changed while "${fields.name}" was being created from it; try again`,
        );
    }
    throw new ConflictError(
      `could not allocate an id for volume "${fields.name}": the id counter kept moving`,
    );
  }

  /**
   * Commit a new version. Fails with ConflictError if the record moved since
   * `expected`, and then nothing is written.
   *
   * With `fence` (a held VolumeLock, or its `fence`), the commit lands only
   * while that very lock still exists: otherwise FencedError, checked by the
   * store in the commit's own txn — so a writer that lost its lock without
   * knowing it is refused too. Without `fence`, the commit lands only while
   * nobody holds the volume's lock: otherwise VolumeLockedError.
   *
   * `mapHeight`: the height of the tree `root` tops, recorded with it
   * (absent: the record's stays).
   */
  async commitVersion(
    expected: VersionedRecord,
    generation: number,
    root: MapRoot | null,
    fence?: VolumeFence,
    mapHeight?: number,
  ): Promise<VersionedRecord> {
    return (await this.commitVersionHolding(expected, generation, root, fence, mapHeight))
      .versioned;
  }

  /** commitVersion, also saying what snapshots (pinned ones too) and clones hold (read in the commit's own txn). */
  async commitVersionHolding(
    expected: VersionedRecord,
    generation: number,
    root: MapRoot | null,
    fence?: VolumeFence,
    mapHeight?: number,
    intent?: IntentState,
  ): Promise<CommittedVersion> {
    // Generations only go up: block refs are (volume, generation, index), so a
    // commit at or below the committed generation would name blocks that an
    // earlier version (or a writer that lost its lock) may have stored.
    const committed = expected.record.generation;
    assert(
      Number.isSafeInteger(generation) && generation > committed,
      () =>
        `volume "${expected.record.name}": commit of generation ${generation} is not above the committed ${committed}`,
    );
    const record: VolumeRecord = {
      ...expected.record,
      generation,
      root,
      ...(mapHeight !== undefined ? { mapHeight } : {}),
      ...(intent !== undefined ? { intent } : {}),
    };
    const key = VOLUMES + record.name;
    const refused = `version ${generation} not committed`;
    const result = await this.lockedTxn(
      record.name,
      fence,
      refused,
      [unchangedSince(key, expected.modRevision)],
      [
        { type: 'put', key, value: encode(record) },
        { type: 'get', key: snapshotPrefix(record.name), prefix: true },
        { type: 'get', key: cloneHoldPrefix(record.id), prefix: true },
        // A snapshot deleted while a node serves it is still held by its pin.
        { type: 'get', key: snapshotPinPrefix(record.name), prefix: true },
      ],
    );
    if (!result.succeeded) {
      throw new ConflictError(
        `volume "${record.name}" was changed by another writer (expected revision ${expected.modRevision}); version ${generation} not committed`,
      );
    }
    // Paired with the compare: the write that replaced revision `expected.modRevision` comes after it.
    assert(
      result.revision > expected.modRevision,
      () => `commit landed at revision ${result.revision}, not after ${expected.modRevision}`,
    );
    return {
      versioned: { record, modRevision: result.revision },
      heldThrough: highestHeld(result.results),
    };
  }

  /**
   * Change the size of the volume `expected` names: a compare-and-swap on its
   * modRevision (ConflictError if it moved; then nothing is written). Only
   * the size changes — never the version — so a writer holding the volume
   * open carries on (VolumeOwnership merges its next commit onto this
   * record). The record keeps naming the height of the tree its root tops,
   * which the new size alone may no longer give.
   *
   * With `fence` it lands only while that lock holds (a shrink made by the
   * lock's holder, after trimming the tail); without one it ignores the
   * lock (a grow is safe under any writer).
   */
  async resize(
    expected: VersionedRecord,
    size: number,
    fence?: VolumeFence,
  ): Promise<VersionedRecord> {
    const before = expected.record;
    assert(
      Number.isSafeInteger(size) && size > 0,
      () => `volume "${before.name}": resize to ${size} bytes`,
    );
    const { mapHeight: _old, ...rest } = before;
    const record: VolumeRecord = before.root
      ? {
          ...rest,
          size,
          mapHeight:
            before.mapHeight ??
            mapHeightFor(before.blockSize, Math.ceil(before.size / before.blockSize)),
        }
      : { ...rest, size }; // an empty map has no height to keep
    const key = VOLUMES + before.name;
    const compare = [unchangedSince(key, expected.modRevision)];
    const success: TxnOp[] = [{ type: 'put', key, value: encode(record) }];
    const result = fence
      ? await this.lockedTxn(before.name, fence, 'size not changed', compare, success)
      : await this.meta.txn({ compare, success });
    if (!result.succeeded)
      throw new ConflictError(
        `volume "${before.name}" changed while being resized (expected revision ${expected.modRevision}); try again`,
      );
    return { record, modRevision: result.revision };
  }

  /**
   * A txn on `volume` that also holds the volume's lock to `fence` (or to
   * "unlocked" without one). Throws the lock's refusal when that is what
   * failed; a result with `succeeded: false` means the other compares failed.
   */
  private async lockedTxn(
    volume: string,
    fence: VolumeFence | undefined,
    refused: string,
    compare: Compare[],
    success: TxnOp[],
  ): Promise<TxnResult> {
    const lockKey = volumeLockKey(volume);
    if (fence) {
      // Programming error: a fence only ever guards the volume it was taken on.
      if (fence.volume !== volume)
        throw new RangeError(`the fence is for volume "${fence.volume}", not "${volume}"`);
      checkFenceLocally(fence, refused);
    }
    const result = await this.meta.txn({
      compare: [...compare, ...(fence ? fenceCompares(fence) : [keyAbsent(lockKey)])],
      success,
      failure: [{ type: 'get', key: lockKey }],
    });
    if (result.succeeded) return result;
    const got = result.results[0];
    const lock: KeyValue | undefined = got?.type === 'get' ? got.kvs[0] : undefined;
    if (fence && !fenceHolds(fence, lock)) {
      throw new FencedError(volume, fence.epoch, refused, {
        current: lock ? decodeLock(volume, lock) : undefined,
      });
    }
    if (!fence && lock) throw new VolumeLockedError(decodeLock(volume, lock), refused);
    return result;
  }

  /**
   * Delete a volume's record. Refused with VolumeLockedError, naming the
   * holder, while someone holds its write lock — unless `options.fence` is
   * that lock (its holder deleting the volume), which is then deleted with
   * the record (the lock emits 'lost'; release() it as usual). Refused while
   * the volume has snapshots, unless `withSnapshots` (they go with it). A
   * clone's holds on its ancestors go with it; clones of this volume keep
   * theirs (GC keeps the blocks they share).
   */
  async remove(
    name: string,
    options: { fence?: VolumeFence; withSnapshots?: boolean } = {},
  ): Promise<VolumeRecord> {
    const { record, modRevision } = await this.get(name);
    const { fence } = options;
    const changes = await this.meta.get(snapshotChangesKey(name));
    const snapshots = await this.meta.getPrefix(snapshotPrefix(name));
    if (snapshots.length > 0 && !options.withSnapshots) {
      const names = snapshots.map((kv) => kv.key.slice(snapshotPrefix(name).length));
      throw new ConflictError(
        `volume "${name}" has ${names.length} snapshot(s) (${names.slice(0, 5).join(', ')}${names.length > 5 ? ', …' : ''}): ` +
          `delete them first (torusctl block snapshot delete ${name}@${names[0]}) or delete the volume --with-snapshots`,
      );
    }
    const result = await this.lockedTxn(
      name,
      fence,
      'not deleted',
      [
        unchangedSince(VOLUMES + name, modRevision),
        // No snapshot created since we looked (one would be deleted unseen, or left orphaned).
        unchangedSince(snapshotChangesKey(name), changes?.modRevision ?? 0),
      ],
      [
        { type: 'delete', key: VOLUMES + name },
        { type: 'delete', key: VOLUME_IDS + record.id },
        { type: 'delete', key: snapshotPrefix(name), prefix: true },
        { type: 'delete', key: snapshotChangesKey(name) },
        ...(record.ancestors ?? []).map((a) => ({
          type: 'delete' as const,
          key: cloneHoldKey(a.volumeId, record.id),
        })),
        ...(fence ? [{ type: 'delete' as const, key: volumeLockKey(name) }] : []),
      ],
    );
    if (!result.succeeded)
      throw new ConflictError(`volume "${name}" changed while being deleted; try again`);
    return record;
  }

  /**
   * Make the volume's committed version the snapshot's (generation one up,
   * the snapshot's map and size): one compare-and-swap, so a crash leaves
   * either the old version or the snapshot's, never a mix. Refused while
   * anyone holds the write lock (naming the holder) or either record moved.
   *
   * Records of the replicated intent log its writers left (a writer killed
   * before its last commit) hold the old content: the restored version says
   * it holds every record of every lock epoch handed out so far, so none is
   * ever replayed onto the snapshot's content.
   */
  async restore(
    expected: VersionedRecord,
    snapshot: {
      record: Pick<VolumeRecord, 'generation' | 'root' | 'size' | 'mapHeight'> & { name: string };
      modRevision: number;
      key: string;
    },
  ): Promise<VersionedRecord> {
    const { name } = expected.record;
    const { mapHeight: _current, intent, ...rest } = expected.record;
    const epochs = await this.meta.get(volumeEpochKey(name));
    const lastEpoch = epochs ? Number(epochs.value.toString()) : 0;
    const record: VolumeRecord = {
      ...rest,
      ...(intent ? { intent: { epoch: lastEpoch + 1, seq: 1, holders: intent.holders } } : {}),
      generation: expected.record.generation + 1,
      root: snapshot.record.root,
      size: snapshot.record.size,
      // The snapshot's tree, as it was (absent: the height its size needs).
      ...(snapshot.record.mapHeight !== undefined ? { mapHeight: snapshot.record.mapHeight } : {}),
    };
    const result = await this.lockedTxn(
      name,
      undefined,
      'not restored',
      [
        unchangedSince(VOLUMES + name, expected.modRevision),
        unchangedSince(snapshot.key, snapshot.modRevision),
        // No lock taken since the epoch was read: its epoch would be below the bound.
        unchangedSince(volumeEpochKey(name), epochs?.modRevision ?? 0),
      ],
      [{ type: 'put', key: VOLUMES + name, value: encode(record) }],
    );
    if (!result.succeeded)
      throw new ConflictError(
        `volume "${name}" or snapshot "${snapshot.record.name}" changed while restoring; nothing was restored, try again`,
      );
    return { record, modRevision: result.revision };
  }
}

let commitLogger: Logger | undefined;
/** A logger only when a commit request is made (most catalog users never make one). */
function commitLog(): Logger {
  return (commitLogger ??= logger('commit-request'));
}
