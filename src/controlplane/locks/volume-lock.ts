/**
 * VolumeLock: the one writer of a volume, as a lease-backed key in the
 * metadata store, with a fencing epoch.
 *
 * Taking the lock is one txn: the volume record exists, the lock key is
 * absent, and the epoch counter is unchanged since it was read; then the
 * counter becomes epoch + 1 and the lock key is put, attached to the holder's
 * lease. So of any number of racing acquirers exactly one wins, every lock of
 * a volume has a larger epoch than the ones before it, and a lock cannot be
 * taken on a volume being deleted (the delete compares the lock key absent).
 *
 * The lock ends three ways: release() (state 'released'); its lease ends
 * without release() — lost (no keepalive confirmed within the TTL: the
 * holder died, or is partitioned from the store), or revoked by whoever owns
 * the lease, or by closing the store; or its key is deleted or overwritten by
 * someone else (an operator, a delete by its holder). The last two make it
 * 'lost' and emit 'lost' once.
 *
 * 'lost' is a notice, not the protection: a holder may learn late (event
 * loop stalled, store unreachable) or write in the same instant. Protection
 * is fencing (fence.ts): writes under the lock compare the lock key in their
 * own txn, so once the key is gone or another's, they are refused whole.
 */
import { EventEmitter } from 'node:events';
import { assert } from '../../common/assert.js';
import { ConflictError, NotFoundError } from '../../common/errors.js';
import { LeaseNotFoundError } from '../metadata/errors.js';
import {
  keyAbsent,
  keyPresent,
  unchangedSince,
  type KeyValue,
  type Lease,
  type MetadataStore,
  type Watcher,
} from '../metadata/store.js';
import { checkVolumeName, volumeKey } from '../volumes/catalog.js';
import { VolumeLockedError, VolumeLockLostError } from './errors.js';
import { fenceCompares, fenceHolds, type VolumeFence, type VolumeLockState } from './fence.js';
import { checkHolder, type LockHolder } from './holder.js';
import { decodeLock, encodeLockRecord, volumeEpochKey, volumeLockKey } from './lock-record.js';

/**
 * Either a lease the caller owns (a node's registration lease: many locks
 * may share it; release() leaves it alive) or a TTL for a lease of the
 * lock's own (kept alive every TTL/3; release() revokes it).
 */
export type AcquireVolumeLockOptions =
  | { holder: LockHolder; lease: Lease; ttlSeconds?: undefined }
  | { holder: LockHolder; ttlSeconds: number; lease?: undefined };

/**
 * A failed take whose lock key was absent means the epoch counter moved
 * under us: someone took and released the lock in between. Each retry is a
 * fresh read; this many in a row means the lock is churning absurdly fast.
 */
const MAX_TAKE_ATTEMPTS = 16;

/**
 * The highest epoch this process has taken, per store and volume name: a lock
 * with an epoch not above it means the epoch counter went backwards (it is
 * never deleted), and fencing by epoch would no longer tell two lives apart.
 */
const lastEpochTaken = new WeakMap<MetadataStore, Map<string, number>>();

interface Taken {
  epoch: number;
  value: Buffer;
  revision: number;
  acquiredAt: string;
}

function firstKv(result: { type: string; kvs?: KeyValue[] } | undefined): KeyValue | undefined {
  return result?.type === 'get' ? result.kvs?.[0] : undefined;
}

function epochOf(volume: string, kv: KeyValue | undefined): number {
  if (!kv) return 0;
  const text = kv.value.toString();
  const epoch = Number(text);
  if (!/^\d+$/.test(text) || !Number.isSafeInteger(epoch)) {
    // Handing out epochs from a damaged counter could repeat one: refuse.
    throw new Error(
      `${volumeEpochKey(volume)} holds ${JSON.stringify(text.slice(0, 40))}, not an epoch; refusing to lock volume "${volume}"`,
    );
  }
  return epoch;
}

async function take(
  meta: MetadataStore,
  volume: string,
  holder: LockHolder,
  lease: Lease,
): Promise<Taken> {
  const lockKey = volumeLockKey(volume);
  const epochKey = volumeEpochKey(volume);
  const recordKey = volumeKey(volume);
  for (let attempt = 0; attempt < MAX_TAKE_ATTEMPTS; attempt++) {
    const counter = await meta.get(epochKey);
    const epoch = epochOf(volume, counter) + 1;
    const acquiredAt = new Date().toISOString();
    const value = encodeLockRecord({ holder, epoch, acquiredAt });
    const result = await meta.txn({
      compare: [
        keyPresent(recordKey),
        keyAbsent(lockKey),
        unchangedSince(epochKey, counter?.modRevision ?? 0),
      ],
      success: [
        { type: 'put', key: epochKey, value: Buffer.from(String(epoch)) },
        { type: 'put', key: lockKey, value, lease },
      ],
      // Read in the same txn, so the reason for failing is the one that held.
      failure: [
        { type: 'get', key: recordKey },
        { type: 'get', key: lockKey },
      ],
    });
    if (result.succeeded) {
      // Paired with the compare: the take comes after the counter it read, and its epoch after every earlier one.
      const counted = counter?.modRevision ?? 0;
      assert(
        result.revision > counted,
        () => `lock taken at revision ${result.revision}, not after the epoch counter's ${counted}`,
      );
      let taken = lastEpochTaken.get(meta);
      if (!taken) lastEpochTaken.set(meta, (taken = new Map()));
      const last = taken.get(volume) ?? 0;
      assert(
        epoch > last,
        () =>
          `volume "${volume}": lock epoch ${epoch} is not above ${last}, taken before; the epoch counter went back`,
      );
      taken.set(volume, epoch);
      return { epoch, value, revision: result.revision, acquiredAt };
    }
    const [record, lock] = [firstKv(result.results[0]), firstKv(result.results[1])];
    if (!record) throw new NotFoundError(`no volume named "${volume}"`);
    if (lock) throw new VolumeLockedError(decodeLock(volume, lock));
  }
  throw new ConflictError(
    `the write lock of volume "${volume}" changed hands ${MAX_TAKE_ATTEMPTS} times while being taken; try again`,
  );
}

/**
 * Take the write lock of `volume` for `options.holder`. Resolves with a held
 * lock, or rejects: VolumeLockedError (naming the holder) when someone holds
 * it, NotFoundError when there is no such volume, LeaseNotFoundError when the
 * given lease is not alive, a metadata error when the store cannot be reached.
 *
 * Read the volume record after this resolves: every commit under an earlier
 * epoch is then either in it or refused for good.
 */
export async function acquireVolumeLock(
  meta: MetadataStore,
  volume: string,
  options: AcquireVolumeLockOptions,
): Promise<VolumeLock> {
  checkVolumeName(volume);
  checkHolder(options.holder);
  if ((options.lease === undefined) === (options.ttlSeconds === undefined)) {
    throw new TypeError('acquireVolumeLock: give exactly one of lease and ttlSeconds');
  }
  if (options.lease && options.lease.state !== 'alive') {
    throw new LeaseNotFoundError(
      options.lease.id,
      `lease ${options.lease.id} is ${options.lease.state}: no lock can be taken with it`,
    );
  }
  const ownsLease = options.lease === undefined;
  const lease = options.lease ?? (await meta.grantLease(options.ttlSeconds!));
  let taken: Taken;
  try {
    taken = await take(meta, volume, options.holder, lease);
  } catch (err) {
    if (ownsLease) await lease.revoke().catch(() => undefined);
    throw err;
  }
  const lock = new VolumeLock(meta, volume, { ...options.holder }, lease, ownsLease, taken);
  try {
    await lock.start();
    if (lock.state !== 'held') throw lock.lostReason!;
  } catch (err) {
    await lock.release().catch(() => undefined);
    throw err;
  }
  return lock;
}

/**
 * A held volume write lock. It is a VolumeFence: pass it to
 * VolumeCatalog.commitVersion (and remove) to have those writes refused once
 * the lock is gone.
 *
 * Events:
 *   'lost' (reason: VolumeLockLostError)  held → lost; emitted at most once,
 *          never after release().
 */
export class VolumeLock extends EventEmitter implements VolumeFence {
  /**
   * Locks per lease, so a node lease shared by many locks carries two
   * listeners in all rather than two per lock (and no MaxListeners warning).
   */
  private static readonly byLease = new WeakMap<Lease, Set<VolumeLock>>();

  readonly epoch: number;
  readonly revision: number;
  readonly value: Buffer;
  readonly acquiredAt: string;
  private current: VolumeLockState = 'held';
  private watcher: Watcher | undefined;
  private releasing: Promise<void> | undefined;
  private lostBeforeRelease = false;
  private cleanedUp = false;
  private lostWhy: VolumeLockLostError | undefined;

  /** @internal use acquireVolumeLock */
  constructor(
    private readonly meta: MetadataStore,
    readonly volume: string,
    readonly holder: LockHolder,
    /** The lease the lock key is attached to. */
    readonly lease: Lease,
    /** Whether the lock granted the lease itself (and so revokes it on release). */
    readonly ownsLease: boolean,
    taken: Taken,
  ) {
    super();
    this.epoch = taken.epoch;
    this.revision = taken.revision;
    this.value = taken.value;
    this.acquiredAt = taken.acquiredAt;
  }

  get state(): VolumeLockState {
    return this.current;
  }

  /** Why the lock was lost, once it was (kept after a later release()). */
  get lostReason(): VolumeLockLostError | undefined {
    return this.lostWhy;
  }

  /** The lock key in the metadata store. */
  get key(): string {
    return volumeLockKey(this.volume);
  }

  /** A plain-data copy of this lock's identity (no state: the store alone decides). */
  get fence(): VolumeFence {
    return {
      volume: this.volume,
      epoch: this.epoch,
      revision: this.revision,
      value: Buffer.from(this.value),
    };
  }

  /** @internal follow the lease and the key; acquireVolumeLock calls it once. */
  async start(): Promise<void> {
    let locks = VolumeLock.byLease.get(this.lease);
    if (!locks) {
      const set = (locks = new Set());
      VolumeLock.byLease.set(this.lease, set);
      this.lease.once('lost', (err: Error) => {
        for (const lock of [...set]) lock.lose(`its lease ${lock.lease.id} was lost`, err);
      });
      this.lease.once('revoked', () => {
        for (const lock of [...set])
          lock.lose(`its lease ${lock.lease.id} was revoked without release()`);
      });
    }
    locks.add(this);
    if (this.lease.state !== 'alive') {
      this.lose(`its lease ${this.lease.id} is ${this.lease.state}`);
      return;
    }
    await this.watchKey();
  }

  /**
   * Watch first, then read: a change before the watch existed shows in the
   * read, any change after it arrives as an event. No history is needed, so
   * compaction cannot get in the way.
   */
  private async watchKey(): Promise<void> {
    const key = this.key;
    const watcher = await this.meta.watchPrefix(
      key,
      { onError: (err) => this.watchEnded(err) },
      (event) => {
        // The watch is on a prefix: "locks/volumes/a" also sees "locks/volumes/ab".
        if (event.key !== key || this.current !== 'held') return;
        if (event.type === 'put' && event.modRevision === this.revision) return; // our own take
        this.lose(
          event.type === 'delete'
            ? `its key was deleted (revision ${event.modRevision})`
            : `its key was overwritten (revision ${event.modRevision})`,
        );
      },
    );
    if (this.current !== 'held') {
      await watcher.close();
      return;
    }
    this.watcher = watcher;
    const kv = await this.meta.get(key);
    if (!fenceHolds(this, kv))
      this.lose(kv ? `its key was overwritten (revision ${kv.modRevision})` : 'its key is gone');
  }

  /** The watch ended on its own (e.g. etcd compacted what it needed to resume): watch again or give up. */
  private watchEnded(err: Error): void {
    if (this.current !== 'held') return;
    this.watcher = undefined;
    this.watchKey().catch((again: unknown) =>
      this.lose('its watch ended and could not be re-established', again ?? err),
    );
  }

  private lose(why: string, cause?: unknown): void {
    if (this.current !== 'held') return;
    this.current = 'lost';
    this.lostBeforeRelease = true;
    this.lostWhy = new VolumeLockLostError(
      this.volume,
      this.epoch,
      why,
      cause === undefined ? undefined : { cause },
    );
    void this.detach();
    this.emit('lost', this.lostWhy);
  }

  /** Stop following the lease and the key. */
  private async detach(): Promise<void> {
    VolumeLock.byLease.get(this.lease)?.delete(this);
    const watcher = this.watcher;
    this.watcher = undefined;
    await watcher?.close().catch(() => undefined);
  }

  /**
   * Give the lock up: state 'released' at once (the caller must not write
   * under it any more), then delete the key if it is still this lock's
   * (compare-and-swap: never someone else's), then revoke the lease if the
   * lock granted it (a caller's lease stays alive).
   *
   * Harmless when the lock was lost, or taken over: resolves, touching
   * nothing that is not its own. Rejects only when the key may outlive the
   * call — the store could not be reached — with the store's error; call
   * release() again to retry. (A lock with its own lease lapses within the
   * TTL anyway: its lease is revoked locally whatever the store said.)
   */
  release(): Promise<void> {
    if (this.cleanedUp) return Promise.resolve();
    this.releasing ??= this.cleanUp().finally(() => {
      this.releasing = undefined;
    });
    return this.releasing;
  }

  private async cleanUp(): Promise<void> {
    this.current = 'released';
    await this.detach();
    let failure: unknown;
    try {
      await this.meta.txn({
        compare: fenceCompares(this),
        success: [{ type: 'delete', key: this.key }],
      });
    } catch (err) {
      failure = err;
    }
    if (this.ownsLease) {
      try {
        await this.lease.revoke();
      } catch (err) {
        failure ??= err;
      }
    }
    // A lost lock's key goes with its lease, or is someone else's already.
    if (failure !== undefined && !this.lostBeforeRelease) throw failure;
    this.cleanedUp = true;
  }
}
