/**
 * VolumeOwnership: what one node holds of each volume in the metadata store,
 * and the protocol that keeps two nodes from ever both writing one volume.
 *
 * Per volume the node holds either
 *   - the write lock (../locks, its own lease of ttlSeconds, kept alive), and
 *     then commits versions fenced by it; or
 *   - a read pin (read-pins.ts) on the version it serves read-only, naming
 *     the node that writes it.
 * and, either way, the record of the version it commits on top of (the
 * compare-and-swap base of the next commit).
 *
 * Taking for writing (take): the lock first, then a commit of the current
 * version one generation up (reserveGeneration), so a writer that lost the
 * lock without knowing yet can never overwrite the new writer's blocks.
 * Committing (commit): fenced by the lock; a commit whose reply was lost but
 * that landed is recognised as ours. A lock lost while held is won back only
 * if nobody committed the volume meanwhile (recoverLock).
 *
 * A single node (no `node` id) takes no locks and no pins: adopt() names the
 * version to commit on top of, and commits are compare-and-swaps on that
 * record alone (the catalog still refuses them while anyone holds the lock).
 */
import { CommitOutcomeUnknownError, ConflictError, NotFoundError } from '../../common/errors.js';
import type { Logger } from '../../common/log.js';
import type { IntentState } from '../../model/intent-state.js';
import { sameMapRoot, type MapRoot } from '../../model/map-root.js';
import {
  acquireVolumeLock,
  describeHolder,
  FencedError,
  localHolder,
  readVolumeLock,
  volumeLockKey,
  VolumeLockedError,
  type LockHolder,
  type VolumeLock,
} from '../locks/index.js';
import type { MetadataStore, Watcher } from '../metadata/store.js';
import type { VersionedRecord, VolumeCatalog, VolumeRecord } from './catalog.js';
import { assertNoReaders, pinCurrentVersion, type ReadPin } from './read-pins.js';
import { commitOutcome } from './commit-outcome.js';
import { requestLockHandover, watchLockHandovers } from './lock-handover.js';
import { serveCommitRequests } from './commit-requests.js';
import { assertNoSnapshotReaders, pinSnapshot } from './snapshot-pins.js';
import type { SnapshotCatalog, SnapshotRecord } from './snapshots.js';

/** A volume write lock's lease: how long a writer cut off from etcd keeps it. */
export const LOCK_TTL_SECONDS = 10;
/** How often a writer that lost its lock tries to win it back. */
export const LOCK_RETRY_MS = 1000;

/** How a lock lost while held ended: won back (commits resume), or fenced for good. */
export type LockRecovery = 'resumed' | 'fenced';

/** How many times a commit is made again on a record that moved only by resizes. */
const MERGE_ATTEMPTS = 5;

export interface VolumeOwnershipOptions {
  /** This node's uuid, the holder of its locks and pins; absent on a single node, which takes neither. */
  node?: string;
  /** Lease of each lock and pin (default LOCK_TTL_SECONDS). */
  ttlSeconds?: number;
  /** Between attempts to win a lost lock back (default LOCK_RETRY_MS). */
  retryMs?: number;
  /**
   * The caller's per-volume queue: winning a lock back runs in it, so it never
   * interleaves with the caller opening or letting go of the same volume.
   * Default: run at once.
   */
  serialize?: <T>(name: string, fn: () => Promise<T>) => Promise<T>;
  /** Told how each lost lock's recovery ended (for tests and logs). */
  onRecovery?: (name: string, outcome: LockRecovery) => void;
  log: Logger;
}

/** A volume as take() got it: the version to open, and why it is read-only when it is. */
export interface TakenVolume {
  versioned: VersionedRecord;
  /** Set when another node writes the volume: "written by node … (lock epoch N)". */
  readOnly?: string;
  /** That node's uuid. */
  writer?: string;
}

export class VolumeOwnership {
  /** The write locks this node holds, by volume (a lost one stays until let go: it fences commits). */
  private readonly locks = new Map<string, VolumeLock>();
  /** The versions this node serves read-only, pinned so GC keeps them. */
  private readonly readPins = new Map<string, ReadPin>();
  /** Why a volume is read-only here (another node holds its lock). */
  private readonly readOnlyBecause = new Map<string, string>();
  /** The node that writes a volume served read-only here (its lock's holder, when last looked). */
  private readonly writerOf = new Map<string, string>();
  /** The version each volume's next commit goes on top of. */
  private readonly records = new Map<string, VersionedRecord>();
  private recovering = true;
  private readonly ttlSeconds: number;
  private readonly retryMs: number;
  private readonly log: Logger;

  constructor(
    private readonly meta: MetadataStore,
    private readonly catalog: VolumeCatalog,
    private readonly options: VolumeOwnershipOptions,
  ) {
    this.ttlSeconds = options.ttlSeconds ?? LOCK_TTL_SECONDS;
    this.retryMs = options.retryMs ?? LOCK_RETRY_MS;
    this.log = options.log;
  }

  /** Whether this node holds the volume's write lock (held, or lost and fencing its commits). */
  writes(name: string): boolean {
    return this.locks.has(name);
  }

  /** Whether this node holds the volume's write lock and it is still held. */
  writing(name: string): boolean {
    return this.locks.get(name)?.state === 'held';
  }

  /** The epoch of the write lock this node holds on the volume, if it holds one. */
  lockEpoch(name: string): number | undefined {
    return this.locks.get(name)?.epoch;
  }

  /** Why the volume is served read-only here, when it is. */
  readOnlyReason(name: string): string | undefined {
    return this.readOnlyBecause.get(name);
  }

  /** Single node: commit the volume's next version on top of `versioned` (no lock, no pin). */
  adopt(name: string, versioned: VersionedRecord): void {
    this.records.set(name, versioned);
  }

  /**
   * Take volume `name` for this node: its write lock and a reserved
   * generation, or — when another node holds the lock — a read pin on its
   * committed version, naming the writer. Undefined when there is no such
   * volume. On failure nothing is held.
   */
  async take(name: string): Promise<TakenVolume | undefined> {
    const node = this.nodeId();
    try {
      await this.catalog.get(name);
    } catch (err) {
      if (err instanceof NotFoundError) return undefined;
      throw err;
    }
    await this.lockForWriting(name, node);
    try {
      // The last writer may have committed between our read and our lock.
      const lock = this.locks.get(name);
      const versioned = lock
        ? await this.reserveGeneration(await this.catalog.get(name), lock)
        : await this.pinForReading(name, node);
      this.records.set(name, versioned);
      const readOnly = this.readOnlyBecause.get(name);
      const writer = this.writerOf.get(name);
      return {
        versioned,
        ...(readOnly !== undefined ? { readOnly } : {}),
        ...(readOnly !== undefined && writer !== undefined ? { writer } : {}),
      };
    } catch (err) {
      await this.abandon(name);
      throw err;
    }
  }

  /**
   * Whether another node holds the write lock of a volume this node has not
   * taken: why it would be read-only here, or undefined.
   */
  async writtenElsewhere(name: string): Promise<string | undefined> {
    const lock = await readVolumeLock(this.meta, name);
    return lock && lock.holder.node !== this.options.node ? writtenBy(lock) : undefined;
  }

  /**
   * Commit version `generation` (map root `root`, topping a tree of
   * `mapHeight` levels) of a volume this node holds: a compare-and-swap on
   * the last version, fenced by the write lock when the node holds one (a
   * node that lost it has the commit refused whole). A commit whose reply
   * was lost but which landed counts as done. A record that moved with its
   * version unchanged (a resize: only the size changed) is taken as the new
   * base and the commit made again on it. Resolves with the highest
   * generation a snapshot or clone holds (VolumeCatalog.commitVersionHolding;
   * Infinity when the reply was lost).
   */
  async commit(
    name: string,
    generation: number,
    root: MapRoot | null,
    mapHeight?: number,
    intent?: IntentState,
  ): Promise<number> {
    for (let attempt = 1; ; attempt++) {
      const current = this.records.get(name);
      if (!current) throw new NotFoundError(`volume "${name}" was deleted`);
      const lock = this.locks.get(name);
      try {
        const committed = await this.catalog.commitVersionHolding(
          current,
          generation,
          root,
          lock,
          mapHeight,
          intent,
        );
        this.records.set(name, committed.versioned);
        return committed.heldThrough;
      } catch (err) {
        const outcome = lock
          ? await commitOutcome(
              { catalog: this.catalog, meta: this.meta, node: this.options.node, log: this.log },
              { name, before: current, generation, root, lock },
              () => this.recovering,
              this.retryMs,
            )
          : 'not landed';
        if (outcome === 'unknown')
          throw new CommitOutcomeUnknownError(name, generation, { cause: err });
        if (outcome !== 'not landed') {
          this.log.warn(
            { volume: name, generation, err: (err as Error).message },
            "the commit's reply was lost but the commit landed: carrying on from it",
          );
          this.records.set(name, outcome);
          // Which snapshots and clones hold what went with the lost reply: keep everything, GC sorts it out.
          return Infinity;
        }
        const resized =
          err instanceof ConflictError &&
          !(err instanceof FencedError) &&
          !(err instanceof VolumeLockedError) &&
          attempt < MERGE_ATTEMPTS
            ? await this.sameVersionMoved(name, current)
            : undefined;
        if (!resized) throw err;
        this.log.info(
          { volume: name, generation, size: resized.record.size },
          'the record changed but not its version (a resize): committing on top of it',
        );
        this.records.set(name, resized);
      }
    }
  }

  /**
   * Change the size of a volume this node writes (a shrink, after its tail
   * was trimmed and committed): fenced by the write lock, on top of the
   * version this node committed last.
   */
  async resizeHeld(name: string, size: number): Promise<void> {
    const current = this.records.get(name);
    const lock = this.locks.get(name);
    if (!current || !lock)
      throw new ConflictError(`volume "${name}" is not written by this node; size not changed`);
    this.records.set(name, await this.catalog.resize(current, size, lock));
  }

  /**
   * The record as it is now, if it moved past `base` with the same version
   * (generation and root): someone changed other fields (a resize), nobody
   * committed — every writer's first act is a commit one generation up
   * (reserveGeneration), so an unchanged version proves it. Else undefined.
   */
  private async sameVersionMoved(
    name: string,
    base: VersionedRecord,
  ): Promise<VersionedRecord | undefined> {
    let now: VersionedRecord;
    try {
      now = await this.catalog.get(name);
    } catch {
      return undefined; // deleted or unreachable: the caller reports the original failure
    }
    const same =
      now.modRevision > base.modRevision &&
      now.record.id === base.record.id &&
      now.record.generation === base.record.generation &&
      sameMapRoot(now.record.root, base.record.root);
    return same ? now : undefined;
  }

  /**
   * Let go of a volume this node is done with (after its last commit): the
   * read pin, then the write lock, so another node may write it at once.
   */
  async release(name: string): Promise<void> {
    const lock = this.locks.get(name);
    this.records.delete(name);
    this.readOnlyBecause.delete(name);
    await this.releaseReadPin(name);
    this.locks.delete(name); // before release: its 'lost' notice is not an error then
    if (lock) {
      await lock.release().catch((err) => this.releaseFailed(name, err));
      this.log.info({ volume: name }, 'volume idle: closed and its write lock released');
    }
  }

  /** Let go of everything held for a volume whose open failed, quietly. */
  async abandon(name: string): Promise<void> {
    this.records.delete(name);
    this.readOnlyBecause.delete(name);
    const lock = this.locks.get(name);
    this.locks.delete(name);
    await lock?.release().catch(() => undefined);
    await this.releaseReadPin(name);
  }

  /**
   * Before a delete: refuse (ConflictError naming them) while another node
   * serves the volume read-only. This node's own pin (an idle reader,
   * lingering) goes first: it is no client.
   */
  async assertNoReaders(name: string): Promise<void> {
    await this.releaseReadPin(name);
    await assertNoReaders(this.meta, name);
  }

  /**
   * Pin snapshot `volume@snapshot` while this node serves it (snapshot-pins.ts);
   * undefined on a single node, which needs no pin (its own sessions are the
   * only readers, and its deletes check them).
   */
  async pinSnapshot(
    snapshots: SnapshotCatalog,
    volume: string,
    snapshot: string,
  ): Promise<{ pin: ReadPin; snapshot: SnapshotRecord } | undefined> {
    const { node } = this.options;
    if (node === undefined) return undefined;
    return pinSnapshot(this.meta, snapshots, volume, snapshot, node, {
      ttlSeconds: this.ttlSeconds,
      log: this.log.child({ component: 'snapshot-pin' }),
    });
  }

  /** Before a snapshot delete: refuse while another node serves it (or, without `snapshot`, any snapshot of the volume). */
  async assertNoSnapshotReaders(volume: string, snapshot?: string): Promise<void> {
    await assertNoSnapshotReaders(this.meta, volume, snapshot, this.options.node);
  }

  /**
   * Delete the volume's record (after assertNoReaders): fenced by this
   * node's lock when it holds one, refused naming the holder when another
   * node does. Resolves with the record deleted.
   */
  async remove(name: string, options: { withSnapshots?: boolean } = {}): Promise<VolumeRecord> {
    const lock = this.locks.get(name);
    // The lock key goes with the record; out of `locks` first so its 'lost'
    // notice is not logged as an error.
    this.locks.delete(name);
    let record;
    try {
      record = await this.catalog.remove(name, { ...options, ...(lock ? { fence: lock } : {}) });
    } catch (err) {
      if (lock) this.locks.set(name, lock);
      throw err;
    }
    await lock?.release().catch(() => undefined); // ends its lease
    await this.releaseReadPin(name);
    this.readOnlyBecause.delete(name);
    this.records.delete(name);
    return record;
  }

  /** No lost lock is won back after this: the node is going. */
  stopRecovering(): void {
    this.recovering = false;
  }

  /** Release every lock and pin (after the last commits), so other nodes may take over at once. */
  async releaseAll(): Promise<void> {
    this.recovering = false;
    for (const lock of this.locks.values())
      await lock.release().catch((err) => this.releaseFailed(lock.volume, err));
    this.locks.clear();
    for (const name of [...this.readPins.keys()]) await this.releaseReadPin(name);
  }

  private releaseFailed(name: string, err: unknown): void {
    this.log.warn(
      { volume: name, err: String(err) },
      'could not release a write lock; it lapses with its lease',
    );
  }

  private nodeId(): string {
    const node = this.options.node;
    if (node === undefined)
      throw new TypeError('VolumeOwnership: a single node takes no locks (no node id)');
    return node;
  }

  /**
   * Take the volume's write lock, or, when another node holds it, remember
   * to serve the volume read-only and say who writes it.
   */
  private async lockForWriting(name: string, node: string): Promise<void> {
    try {
      const lock = await this.acquireLock(name, node);
      this.holdLock(name, lock);
      this.readOnlyBecause.delete(name);
    } catch (err) {
      if (!(err instanceof VolumeLockedError)) throw err;
      const why = writtenBy(err.lock);
      this.readOnlyBecause.set(name, why);
      this.writerOf.set(name, err.lock.holder.node);
      requestLockHandover(this.meta, name, node, this.log);
      this.log.info(
        { volume: name, holder: err.lock.holder.node },
        `volume is ${why}: served read-only here`,
      );
    }
  }

  /**
   * Call `onRequest(name)` whenever another node asks for the lock of a
   * volume this node holds (lock-handover.ts); the caller lets go if the
   * volume is idle here. Undefined on a single node.
   */
  /** Answer commit requests (commit-requests.ts) for the volumes this node writes with `commit`. */
  serveCommitRequests(commit: (name: string) => Promise<number>): Promise<Watcher> {
    return serveCommitRequests(this.meta, (name) => this.writing(name), commit, this.log);
  }

  async watchHandoverRequests(onRequest: (name: string) => void): Promise<Watcher | undefined> {
    const self = this.options.node;
    if (self === undefined) return undefined;
    return watchLockHandovers(this.meta, self, (name) => this.locks.has(name), onRequest);
  }

  /**
   * A volume another node writes: pin its committed version so cluster GC
   * keeps that version's blocks while this node serves it (its clients see
   * one consistent version, not the writer's commits under them), and
   * return the record of the version pinned.
   */
  private async pinForReading(name: string, node: string): Promise<VersionedRecord> {
    await this.releaseReadPin(name);
    const { pin, versioned } = await pinCurrentVersion(this.meta, this.catalog, name, node, {
      ttlSeconds: this.ttlSeconds,
      log: this.log.child({ component: 'read-pin' }),
    });
    this.readPins.set(name, pin);
    this.log.info(
      { volume: name, generation: versioned.record.generation },
      'serving a pinned version read-only',
    );
    return versioned;
  }

  private async releaseReadPin(name: string): Promise<void> {
    const pin = this.readPins.get(name);
    if (!pin) return;
    this.readPins.delete(name);
    await pin.release();
  }

  /**
   * Take the volume's write lock. A key this very process still holds in
   * etcd but has given up on (its keepalives failed while etcd was away, and
   * etcd, restarted, revived the lease) would refuse us until that lease
   * lapses again; being ours, it is removed and the lock taken afresh.
   */
  private async acquireLock(name: string, node: string): Promise<VolumeLock> {
    const options = { holder: localHolder(node), ttlSeconds: this.ttlSeconds };
    try {
      return await acquireVolumeLock(this.meta, name, options);
    } catch (err) {
      const stale = err instanceof VolumeLockedError ? err.lock : undefined;
      const ours =
        stale?.holder.node === node &&
        stale.holder.pid === process.pid &&
        stale.holder.hostname === options.holder.hostname;
      if (!stale || !ours) throw err;
      const key = volumeLockKey(name);
      // Only that very key (its createRevision): never a lock taken since.
      await this.meta.txn({
        compare: [{ key, target: 'createRevision', op: '==', value: stale.revision }],
        success: [{ type: 'delete', key }],
      });
      this.log.warn(
        { volume: name, epoch: stale.epoch },
        'removed a write lock this process had given up on (etcd kept its lease)',
      );
      return acquireVolumeLock(this.meta, name, options);
    }
  }

  /** Keep `lock` as the volume's write lock, and try to win it back if it is lost while held. */
  private holdLock(name: string, lock: VolumeLock): void {
    lock.once('lost', (err: Error) => {
      if (this.locks.get(name) !== lock) return; // released or deleted on purpose
      this.log.error(
        { volume: name, err: err.message },
        'lost the write lock: commits of this volume are refused (fenced) until it is won back',
      );
      void this.recoverLock(name, lock);
    });
    this.locks.set(name, lock);
  }

  /**
   * The lock lapsed while held (etcd away longer than the lock's lease, or
   * this node cut off from it). Take it again once etcd answers — but resume
   * writing only if no one committed the volume meanwhile: every new writer
   * commits once on taking the lock (reserveGeneration), so an unchanged
   * record proves nobody else wrote, and the blocks this node wrote for its
   * open version are still its own. Otherwise the volume stays fenced here
   * until its clients reconnect.
   */
  private async recoverLock(name: string, lost: VolumeLock): Promise<void> {
    const node = this.nodeId();
    const serialize = this.options.serialize ?? ((_name, fn) => fn());
    while (this.recovering) {
      await new Promise((resolve) => setTimeout(resolve, this.retryMs).unref());
      const outcome = await serialize(name, async (): Promise<LockRecovery | 'retry' | 'gone'> => {
        if (this.locks.get(name) !== lost) return 'gone'; // let go of or replaced meanwhile
        let lock: VolumeLock;
        try {
          lock = await this.acquireLock(name, node);
        } catch (err) {
          if (!(err instanceof VolumeLockedError)) return 'retry'; // etcd still away
          this.log.error(
            { volume: name, holder: err.lock.holder.node },
            'another node took the write lock: this node stays fenced; its clients must reconnect',
          );
          return 'fenced';
        }
        try {
          const current = await this.catalog.get(name);
          const base = this.records.get(name);
          // A resize moves the record but not its version: that is no other writer.
          const unchanged =
            base !== undefined &&
            (current.modRevision === base.modRevision ||
              (await this.sameVersionMoved(name, base)) !== undefined);
          if (!unchanged) {
            this.log.error(
              { volume: name },
              'the volume was committed by another writer while the lock was lost: this node stays fenced; its clients must reconnect',
            );
            await lock.release();
            return 'fenced';
          }
        } catch {
          await lock.release().catch(() => undefined);
          return 'retry';
        }
        this.holdLock(name, lock);
        this.log.warn(
          { volume: name, epoch: lock.epoch },
          'write lock won back and nobody else wrote meanwhile: commits resume',
        );
        return 'resumed';
      }).catch((): 'retry' => 'retry');
      if (outcome === 'retry') continue;
      if (outcome !== 'gone') this.options.onRecovery?.(name, outcome);
      return;
    }
  }

  /**
   * A new writer's first act: commit the volume's current version again, one
   * generation up. Block refs are (volume, generation, index), so a writer
   * that lost its lock but does not know it yet may still be storing blocks
   * under the generation after the last commit; writing from the one after
   * this reserved generation, the new writer's blocks can never be
   * overwritten by those (coreos/torus#230). The old writer's orphans are
   * garbage once this commit lands.
   */
  private async reserveGeneration(
    versioned: VersionedRecord,
    lock: VolumeLock,
  ): Promise<VersionedRecord> {
    const { record } = versioned;
    return this.catalog.commitVersion(versioned, record.generation + 1, record.root ?? null, lock);
  }
}

/** Why a node serves a volume read-only: "written by node … (host …) (lock epoch N)". */
function writtenBy(lock: { holder: LockHolder; epoch: number }): string {
  return `written by ${describeHolder(lock.holder)} (lock epoch ${lock.epoch})`;
}
