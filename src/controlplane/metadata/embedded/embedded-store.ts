/**
 * EmbeddedMetadataStore: the MetadataStore of a single node, in process,
 * persisted to one directory (snapshot + write-ahead log, see files.ts).
 *
 * Model: the whole key space lives in memory (a Map plus a sorted key list
 * for prefix scans). A write txn is checked and applied to memory
 * synchronously — so txns are serialised by the event loop and a
 * compare-and-swap can never interleave with another write — and its record
 * is queued to the log in the same tick, so log order is revision order.
 * The caller's promise resolves only once the record is fsync'd.
 *
 * Nothing unacknowledged leaks: reads wait until every write they could have
 * seen is durable, and watch events are delivered only after the sync that
 * made them durable. So no reader or watcher ever acts on a write that a
 * crash could still take back.
 *
 * Leases live only in this process. After a restart the previous process's
 * leases are gone: opening deletes their keys in one txn (a new revision).
 *
 * The concerns live beside it: the keys and txn evaluation in key-space.ts,
 * the watch fan-out and history in watch-hub.ts, a lease's timers in
 * embedded-lease.ts. This file orders them: apply, log, sync, deliver.
 * Asserted: each write takes the next revision, and the key index agrees
 * with the keys after every write.
 */
import { randomBytes } from 'node:crypto';
import { readdir, unlink } from 'node:fs/promises';
import { assert } from '../../../common/assert.js';
import { logger, type Logger } from '../../../common/log.js';
import { LeaseNotFoundError, MetadataClosedError } from '../errors.js';
import { checkTxn } from '../keys.js';
import {
  leaseIdOf,
  type GrantLeaseOptions,
  type KeyValue,
  type Lease,
  type MetadataStore,
  type PutOptions,
  type TxnRequest,
  type TxnResult,
  type WatchEvent,
  type WatchOptions,
  type Watcher,
} from '../store.js';
import { DirectoryLock } from './dir-lock.js';
import { EmbeddedLease, type LeaseTable } from './embedded-lease.js';
import { pathIn, segmentFirstRevision, SNAPSHOT_TEMP_FILE, syncDirectory } from './files.js';
import { KeySpace } from './key-space.js';
import { encodeRecord, type LoggedMutation, type TxnRecord } from './record.js';
import { readSnapshot, writeSnapshot } from './snapshot.js';
import { replayLog, WriteAheadLog } from './wal.js';
import { WatchHub } from './watch-hub.js';

export interface EmbeddedStoreOptions {
  /** Compact (snapshot + drop old log) once this many log bytes accumulate. Default 8 MiB. */
  compactAfterBytes?: number;
  /** Watch history kept in memory for `fromRevision`, in events. Default 10 000. */
  historyLimit?: number;
  log?: Logger;
}

export interface EmbeddedStoreStats {
  revision: number;
  keys: number;
  /** fdatasync calls on the log since open: with group commit, fewer than writes. */
  syncs: number;
  /** Records made durable since open. */
  records: number;
  compactions: number;
  /** Log bytes written since the last snapshot. */
  logBytesSinceSnapshot: number;
}

const DEFAULT_COMPACT_AFTER_BYTES = 8 * 1024 * 1024;
const DEFAULT_HISTORY_LIMIT = 10_000;

export class EmbeddedMetadataStore implements MetadataStore, LeaseTable {
  private readonly keys = new KeySpace();
  /** The revision of the last applied write (durable or about to be). */
  private revision: number;
  private readonly leases = new Map<string, EmbeddedLease>();
  private readonly watches: WatchHub;
  /** Settles when the last appended record is durable (or the log failed). */
  private lastAppend: Promise<void> = Promise.resolve();
  private wal!: WriteAheadLog;
  private snapshotRevision: number;
  private compacting: Promise<void> | undefined;
  private compactions = 0;
  private closing: Promise<void> | undefined;
  private readonly compactAfterBytes: number;

  private constructor(
    readonly dir: string,
    private readonly lock: DirectoryLock,
    snapshotRevision: number,
    private readonly log: Logger,
    options: EmbeddedStoreOptions,
  ) {
    this.revision = snapshotRevision;
    this.snapshotRevision = snapshotRevision;
    this.watches = new WatchHub(
      snapshotRevision,
      options.historyLimit ?? DEFAULT_HISTORY_LIMIT,
      log,
    );
    this.compactAfterBytes = options.compactAfterBytes ?? DEFAULT_COMPACT_AFTER_BYTES;
  }

  /**
   * Lock the directory, load the snapshot, replay the log (truncating a torn
   * tail), then delete keys of leases from the previous process.
   */
  static async open(
    dir: string,
    options: EmbeddedStoreOptions = {},
  ): Promise<EmbeddedMetadataStore> {
    const log = options.log ?? logger('metadata');
    const started = performance.now();
    const lock = await DirectoryLock.acquire(dir, log);
    let store: EmbeddedMetadataStore | undefined;
    try {
      await unlink(pathIn(dir, SNAPSHOT_TEMP_FILE)).catch(() => undefined); // a compaction cut short
      const snapshot = await readSnapshot(dir);
      store = new EmbeddedMetadataStore(dir, lock, snapshot?.revision ?? 0, log, options);
      store.keys.load(snapshot?.entries ?? []);
      const replayed = await replayLog(dir, store.snapshotRevision, log);
      for (const record of replayed.records) store.replay(record);
      store.keys.index();
      const opened = store;
      store.wal = await WriteAheadLog.open(dir, replayed, (revision) =>
        opened.deliverDurable(revision),
      );
      for (const name of replayed.obsoleteSegments)
        await unlink(pathIn(dir, name)).catch(() => undefined);
      if (replayed.obsoleteSegments.length > 0) await syncDirectory(dir);
      await store.dropLeasesOfPreviousProcess();
      log.info(
        {
          dir,
          revision: store.revision,
          keys: store.keys.size,
          replayedRecords: replayed.records.length,
          ms: Math.round(performance.now() - started),
        },
        'opened embedded metadata store',
      );
      store.maybeCompact();
      return store;
    } catch (err) {
      await store?.wal?.close().catch(() => undefined);
      await lock.release();
      throw err;
    }
  }

  // ── reads ──────────────────────────────────────────────────────────────

  async get(key: string): Promise<KeyValue | undefined> {
    this.checkOpen();
    const kv = this.keys.get(key);
    await this.readBarrier();
    return kv;
  }

  async getPrefix(prefix: string): Promise<KeyValue[]> {
    this.checkOpen();
    const kvs = this.keys.getPrefix(prefix);
    await this.readBarrier();
    return kvs;
  }

  async currentRevision(): Promise<number> {
    this.checkOpen();
    const revision = this.revision;
    await this.readBarrier();
    return revision;
  }

  // ── writes ─────────────────────────────────────────────────────────────

  async put(key: string, value: Buffer, options: PutOptions = {}): Promise<number> {
    const result = await this.txn({
      compare: [],
      success: [{ type: 'put', key, value, lease: options.lease }],
    });
    return result.revision;
  }

  async delete(key: string): Promise<number> {
    const result = await this.txn({ compare: [], success: [{ type: 'delete', key }] });
    return (result.results[0] as { deleted: number }).deleted;
  }

  async deletePrefix(prefix: string): Promise<number> {
    const result = await this.txn({
      compare: [],
      success: [{ type: 'delete', key: prefix, prefix: true }],
    });
    return (result.results[0] as { deleted: number }).deleted;
  }

  /**
   * Compare, choose a branch and apply it, all in this tick (so atomic with
   * respect to every other call), then wait for durability.
   */
  async txn(request: TxnRequest): Promise<TxnResult> {
    this.checkOpen();
    checkTxn(request);
    const succeeded = request.compare.every((c) => this.keys.holds(c));
    const ops = succeeded ? request.success : (request.failure ?? []);
    // Like etcd, a put naming a dead lease fails the whole txn before anything applies.
    for (const op of ops) {
      const leaseId = op.type === 'put' ? leaseIdOf(op.lease) : undefined;
      if (leaseId !== undefined && !this.leases.has(leaseId)) throw new LeaseNotFoundError(leaseId);
    }
    const revision = this.revision + 1;
    const mutations: LoggedMutation[] = [];
    const results = ops.map((op) => this.keys.applyOp(op, revision, mutations));
    if (mutations.length === 0) {
      await this.readBarrier();
      return { succeeded, revision: this.revision, results };
    }
    await this.commit(revision, mutations);
    return { succeeded, revision, results };
  }

  /** Replay a logged record at open (the key index is built afterwards). */
  private replay(record: TxnRecord): void {
    this.keys.replay(record);
    this.revision = record.revision;
    this.watches.replayed(record);
  }

  /**
   * Make an applied write durable: queue its record now (same tick as the
   * apply, so the log is in revision order) and wait for the group sync.
   */
  private commit(revision: number, mutations: LoggedMutation[]): Promise<void> {
    assert(revision === this.revision + 1, 'a write takes the revision after the last one');
    this.keys.assertIndexed();
    const record = { revision, mutations };
    this.revision = revision;
    this.watches.applied(record);
    const durable = this.wal.append(encodeRecord(record), revision);
    this.lastAppend = durable.then(
      () => undefined,
      () => undefined,
    );
    return durable;
  }

  /** Wait until every write applied so far is durable; fail if the log failed. */
  private async readBarrier(): Promise<void> {
    if (this.wal.durableRevision < this.revision) await this.lastAppend;
    const failure = this.wal.failed;
    if (failure) throw failure;
  }

  // ── leases ─────────────────────────────────────────────────────────────

  async grantLease(ttlSeconds: number, options: GrantLeaseOptions = {}): Promise<Lease> {
    this.checkOpen();
    if (!Number.isInteger(ttlSeconds) || ttlSeconds < 1)
      throw new RangeError(`lease TTL must be a whole number of seconds ≥ 1, got ${ttlSeconds}`);
    let id: string;
    do id = BigInt.asUintN(62, randomBytes(8).readBigUInt64LE()).toString();
    while (id === '0' || this.leases.has(id));
    const lease = new EmbeddedLease(this, id, ttlSeconds, options.keepAlive !== false);
    this.leases.set(id, lease);
    lease.start();
    return lease;
  }

  /**
   * End a lease (revoked by its holder, or lost when its TTL ran out): it
   * stops existing at once, then its keys are deleted in one durable txn.
   * @internal for EmbeddedLease
   */
  async endLease(lease: EmbeddedLease, how: 'revoked' | 'lost', reason?: Error): Promise<void> {
    if (this.leases.get(lease.id) !== lease) return;
    this.leases.delete(lease.id);
    const keys = this.keys.keysOf(lease.id);
    let durable: Promise<void> | undefined;
    if (keys.length > 0 && !this.wal.failed) {
      const revision = this.revision + 1;
      durable = this.commit(revision, this.keys.deleteKeys(keys, revision));
    }
    lease.settle(how, reason);
    if (how === 'lost')
      this.log.warn({ lease: lease.id, keys: keys.length }, 'lease expired; its keys are deleted');
    await durable;
  }

  private async dropLeasesOfPreviousProcess(): Promise<void> {
    const orphaned = this.keys.takeAllLeaseKeys();
    if (orphaned.length === 0) return;
    this.log.info(
      { keys: orphaned.length },
      'deleting keys of leases held by the previous process',
    );
    const revision = this.revision + 1;
    await this.commit(revision, this.keys.deleteKeys(orphaned, revision));
  }

  // ── watches ────────────────────────────────────────────────────────────

  async watchPrefix(
    prefix: string,
    options: WatchOptions,
    onEvent: (event: WatchEvent) => void,
  ): Promise<Watcher> {
    this.checkOpen();
    const from = options.fromRevision;
    if (from !== undefined && (!Number.isSafeInteger(from) || from < 1))
      throw new RangeError(`fromRevision must be a revision ≥ 1, got ${from}`);
    return this.watches.watch(prefix, from ?? this.revision + 1, onEvent);
  }

  /** Called by the log after each sync: deliver now-durable events in order. */
  private deliverDurable(revision: number): void {
    this.watches.deliverDurable(revision);
    this.maybeCompact();
  }

  // ── compaction ─────────────────────────────────────────────────────────

  private maybeCompact(): void {
    if (this.compacting || this.closing || this.wal.failed) return;
    if (this.wal.stats.bytesSinceSnapshot < this.compactAfterBytes) return;
    this.compact().catch((err) =>
      this.log.error(
        { err, dir: this.dir },
        'metadata compaction failed; will retry after more writes',
      ),
    );
  }

  /**
   * Write a snapshot of the current state and delete the log it replaces.
   *
   * Order (each step durable before the next, so a crash anywhere leaves a
   * state that opens to the same data):
   *   1. capture state at revision R (same tick, entries are immutable);
   *   2. rotate the log: records ≤ R durable in the old segments, later
   *      ones go to wal-<R+1>.log (created and directory-fsync'd);
   *   3. snapshot.tmp written, fsync'd, renamed to snapshot, dir fsync'd;
   *   4. delete segments before wal-<R+1>.log, dir fsync'd.
   * Before 3 completes, opening uses the old snapshot and all segments; after
   * it, the old segments are skipped (all ≤ R) and deleted.
   */
  compact(): Promise<void> {
    if (this.compacting) return this.compacting;
    this.compacting = this.runCompaction().finally(() => {
      this.compacting = undefined;
    });
    return this.compacting;
  }

  private async runCompaction(): Promise<void> {
    const started = performance.now();
    const revision = this.revision;
    if (revision === this.snapshotRevision) return;
    const entries = this.keys.snapshotEntries();
    await this.wal.drain();
    if (segmentFirstRevision(this.wal.activeSegment) !== revision + 1)
      await this.wal.rotate(revision + 1);
    const bytes = await writeSnapshot(this.dir, { revision, entries });
    this.snapshotRevision = revision;
    const active = segmentFirstRevision(this.wal.activeSegment)!;
    let removed = 0;
    for (const name of await readdir(this.dir)) {
      const first = segmentFirstRevision(name);
      if (first !== undefined && first < active && first <= revision) {
        await unlink(pathIn(this.dir, name));
        removed++;
      }
    }
    if (removed > 0) await syncDirectory(this.dir);
    this.wal.snapshotTaken();
    this.compactions++;
    this.log.info(
      {
        dir: this.dir,
        revision,
        keys: entries.length,
        snapshotBytes: bytes,
        segmentsRemoved: removed,
        ms: Math.round(performance.now() - started),
      },
      'compacted metadata log',
    );
  }

  // ── lifecycle ──────────────────────────────────────────────────────────

  stats(): EmbeddedStoreStats {
    return {
      revision: this.revision,
      keys: this.keys.size,
      syncs: this.wal.stats.syncs,
      records: this.wal.stats.records,
      compactions: this.compactions,
      logBytesSinceSnapshot: this.wal.stats.bytesSinceSnapshot,
    };
  }

  /**
   * Revoke live leases (their keys deleted durably), end watches, finish
   * in-flight writes, release the directory lock. Leaves no timers behind.
   */
  close(): Promise<void> {
    this.closing ??= this.shutdown();
    return this.closing;
  }

  private async shutdown(): Promise<void> {
    await Promise.allSettled(
      [...this.leases.values()].map((lease) => this.endLease(lease, 'revoked')),
    );
    await this.watches.closeAll();
    await this.compacting?.catch(() => undefined);
    await this.wal
      .close()
      .catch((err) => this.log.error({ err, dir: this.dir }, 'closing metadata log failed'));
    await this.lock.release();
    this.log.debug({ dir: this.dir, revision: this.revision }, 'closed embedded metadata store');
  }

  private checkOpen(): void {
    if (this.closing)
      throw new MetadataClosedError(`embedded metadata store ${this.dir} is closed`);
    const failure = this.wal.failed;
    if (failure) throw failure;
  }

  /** @internal for EmbeddedLease */
  get isClosing(): boolean {
    return this.closing !== undefined;
  }
}
