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
 */
import { randomBytes } from 'node:crypto';
import { readdir, unlink } from 'node:fs/promises';
import { logger, type Logger } from '../../../common/log.js';
import {
  LeaseLostError,
  LeaseNotFoundError,
  MetadataClosedError,
  MetadataCompactedError,
} from '../errors.js';
import { checkTxn, compareKeys } from '../keys.js';
import { LeaseStateMachine } from '../lease-state.js';
import {
  leaseIdOf,
  type Compare,
  type GrantLeaseOptions,
  type KeyValue,
  type Lease,
  type MetadataStore,
  type PutOptions,
  type TxnOp,
  type TxnOpResult,
  type TxnRequest,
  type TxnResult,
  type WatchEvent,
  type WatchOptions,
  type Watcher,
} from '../store.js';
import { DirectoryLock } from './dir-lock.js';
import { pathIn, segmentFirstRevision, SNAPSHOT_TEMP_FILE, syncDirectory } from './files.js';
import { encodeRecord, type LoggedMutation, type TxnRecord } from './record.js';
import { readSnapshot, writeSnapshot, type SnapshotEntry } from './snapshot.js';
import { replayLog, WriteAheadLog } from './wal.js';

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

/** Immutable once stored: a write replaces the Entry, so snapshots can share them. */
interface Entry {
  readonly value: Buffer;
  readonly createRevision: number;
  readonly modRevision: number;
  readonly version: number;
  readonly lease?: string;
}

const DEFAULT_COMPACT_AFTER_BYTES = 8 * 1024 * 1024;
const DEFAULT_HISTORY_LIMIT = 10_000;

export class EmbeddedMetadataStore implements MetadataStore {
  private readonly entries = new Map<string, Entry>();
  private sortedKeys: string[] = [];
  /** The revision of the last applied write (durable or about to be). */
  private revision: number;
  private readonly leases = new Map<string, EmbeddedLease>();
  private readonly keysOfLease = new Map<string, Set<string>>();
  private readonly watchers = new Set<EmbeddedWatcher>();
  /** Durable events kept for watches from a past revision, in order. */
  private history: WatchEvent[] = [];
  /** Every event at or after this revision is in `history` (or still undelivered). */
  private historyStart: number;
  /** Applied writes whose record is not yet durable, in revision order. */
  private undelivered: Array<{ revision: number; events: WatchEvent[] }> = [];
  /** Settles when the last appended record is durable (or the log failed). */
  private lastAppend: Promise<void> = Promise.resolve();
  private wal!: WriteAheadLog;
  private snapshotRevision: number;
  private compacting: Promise<void> | undefined;
  private compactions = 0;
  private closing: Promise<void> | undefined;
  private readonly compactAfterBytes: number;
  private readonly historyLimit: number;

  private constructor(
    readonly dir: string,
    private readonly lock: DirectoryLock,
    snapshotRevision: number,
    private readonly log: Logger,
    options: EmbeddedStoreOptions,
  ) {
    this.revision = snapshotRevision;
    this.snapshotRevision = snapshotRevision;
    this.historyStart = snapshotRevision + 1;
    this.compactAfterBytes = options.compactAfterBytes ?? DEFAULT_COMPACT_AFTER_BYTES;
    this.historyLimit = options.historyLimit ?? DEFAULT_HISTORY_LIMIT;
  }

  /**
   * Lock the directory, load the snapshot, replay the log (truncating a torn
   * tail), then delete keys of leases from the previous process.
   */
  static async open(dir: string, options: EmbeddedStoreOptions = {}): Promise<EmbeddedMetadataStore> {
    const log = options.log ?? logger('metadata');
    const started = performance.now();
    const lock = await DirectoryLock.acquire(dir, log);
    let store: EmbeddedMetadataStore | undefined;
    try {
      await unlink(pathIn(dir, SNAPSHOT_TEMP_FILE)).catch(() => undefined); // a compaction cut short
      const snapshot = await readSnapshot(dir);
      store = new EmbeddedMetadataStore(dir, lock, snapshot?.revision ?? 0, log, options);
      for (const e of snapshot?.entries ?? []) {
        store.entries.set(e.key, { value: e.value, createRevision: e.createRevision, modRevision: e.modRevision, version: e.version, lease: e.lease });
      }
      const replayed = await replayLog(dir, store.snapshotRevision, log);
      for (const record of replayed.records) store.replay(record);
      // Built once here, not per replayed insert: opening stays O(n log n).
      store.sortedKeys = [...store.entries.keys()].sort(compareKeys);
      for (const [key, entry] of store.entries) if (entry.lease) store.attach(key, entry.lease);
      const opened = store;
      store.wal = await WriteAheadLog.open(dir, replayed, (revision) => opened.deliverDurable(revision));
      for (const name of replayed.obsoleteSegments) await unlink(pathIn(dir, name)).catch(() => undefined);
      if (replayed.obsoleteSegments.length > 0) await syncDirectory(dir);
      await store.dropLeasesOfPreviousProcess();
      log.info({ dir, revision: store.revision, keys: store.entries.size, replayedRecords: replayed.records.length, ms: Math.round(performance.now() - started) }, 'opened embedded metadata store');
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
    const entry = this.entries.get(key);
    const kv = entry && toKeyValue(key, entry);
    await this.readBarrier();
    return kv;
  }

  async getPrefix(prefix: string): Promise<KeyValue[]> {
    this.checkOpen();
    const kvs = this.keysWithPrefix(prefix).map((key) => toKeyValue(key, this.entries.get(key)!));
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
    const result = await this.txn({ compare: [], success: [{ type: 'put', key, value, lease: options.lease }] });
    return result.revision;
  }

  async delete(key: string): Promise<number> {
    const result = await this.txn({ compare: [], success: [{ type: 'delete', key }] });
    return (result.results[0] as { deleted: number }).deleted;
  }

  async deletePrefix(prefix: string): Promise<number> {
    const result = await this.txn({ compare: [], success: [{ type: 'delete', key: prefix, prefix: true }] });
    return (result.results[0] as { deleted: number }).deleted;
  }

  /**
   * Compare, choose a branch and apply it, all in this tick (so atomic with
   * respect to every other call), then wait for durability.
   */
  async txn(request: TxnRequest): Promise<TxnResult> {
    this.checkOpen();
    checkTxn(request);
    const succeeded = request.compare.every((c) => this.holds(c));
    const ops = succeeded ? request.success : (request.failure ?? []);
    // Like etcd, a put naming a dead lease fails the whole txn before anything applies.
    for (const op of ops) {
      const leaseId = op.type === 'put' ? leaseIdOf(op.lease) : undefined;
      if (leaseId !== undefined && !this.leases.has(leaseId)) throw new LeaseNotFoundError(leaseId);
    }
    const revision = this.revision + 1;
    const mutations: LoggedMutation[] = [];
    const results = ops.map((op) => this.applyOp(op, revision, mutations));
    if (mutations.length === 0) {
      await this.readBarrier();
      return { succeeded, revision: this.revision, results };
    }
    await this.commit(revision, mutations);
    return { succeeded, revision, results };
  }

  private applyOp(op: TxnOp, revision: number, mutations: LoggedMutation[]): TxnOpResult {
    switch (op.type) {
      case 'get': {
        const keys = op.prefix ? this.keysWithPrefix(op.key) : this.entries.has(op.key) ? [op.key] : [];
        return { type: 'get', kvs: keys.map((k) => toKeyValue(k, this.entries.get(k)!)) };
      }
      case 'put': {
        // Copied: the caller may reuse its buffer once put() returns.
        const mutation: LoggedMutation = { kind: 'put', key: op.key, value: Buffer.from(op.value), lease: leaseIdOf(op.lease) };
        this.applyMutation(mutation, revision);
        mutations.push(mutation);
        return { type: 'put', revision };
      }
      case 'delete': {
        const keys = op.prefix ? this.keysWithPrefix(op.key) : this.entries.has(op.key) ? [op.key] : [];
        for (const key of keys) {
          const mutation: LoggedMutation = { kind: 'delete', key };
          this.applyMutation(mutation, revision, false);
          mutations.push(mutation);
        }
        this.removeSortedKeys(keys);
        return { type: 'delete', deleted: keys.length };
      }
    }
  }

  /** Apply one mutation to memory. `maintainOrder` false: the caller fixes sortedKeys. */
  private applyMutation(m: LoggedMutation, revision: number, maintainOrder = true): void {
    const previous = this.entries.get(m.key);
    if (previous?.lease) this.detach(m.key, previous.lease);
    if (m.kind === 'delete') {
      this.entries.delete(m.key);
      if (maintainOrder) this.removeSortedKeys([m.key]);
      return;
    }
    this.entries.set(m.key, {
      value: m.value,
      createRevision: previous ? previous.createRevision : revision,
      modRevision: revision,
      version: previous ? previous.version + 1 : 1,
      lease: m.lease,
    });
    if (m.lease) this.attach(m.key, m.lease);
    if (!previous && maintainOrder) this.insertSortedKey(m.key);
  }

  /** Replay a logged record at open (sortedKeys and lease sets are rebuilt afterwards). */
  private replay(record: TxnRecord): void {
    for (const m of record.mutations) {
      const previous = this.entries.get(m.key);
      if (m.kind === 'delete') {
        this.entries.delete(m.key);
      } else {
        this.entries.set(m.key, {
          value: m.value,
          createRevision: previous ? previous.createRevision : record.revision,
          modRevision: record.revision,
          version: previous ? previous.version + 1 : 1,
          lease: m.lease,
        });
      }
    }
    this.revision = record.revision;
    this.history.push(...eventsOf(record));
    this.trimHistory();
  }

  /**
   * Make an applied write durable: queue its record now (same tick as the
   * apply, so the log is in revision order) and wait for the group sync.
   */
  private commit(revision: number, mutations: LoggedMutation[]): Promise<void> {
    const record = { revision, mutations };
    this.revision = revision;
    this.undelivered.push({ revision, events: eventsOf(record) });
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

  // ── compare, ranges, ordering ──────────────────────────────────────────

  private holds(c: Compare): boolean {
    const entry = this.entries.get(c.key);
    if (c.target === 'value') {
      if (!entry) return false; // etcd: a value compare on an absent key never holds
      return compareWith(Buffer.compare(entry.value, c.value), c.op);
    }
    const actual = entry ? (c.target === 'modRevision' ? entry.modRevision : c.target === 'createRevision' ? entry.createRevision : entry.version) : 0;
    return compareWith(actual - c.value, c.op);
  }

  private lowerBound(key: string): number {
    let lo = 0;
    let hi = this.sortedKeys.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (compareKeys(this.sortedKeys[mid], key) < 0) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }

  private keysWithPrefix(prefix: string): string[] {
    const keys: string[] = [];
    for (let i = this.lowerBound(prefix); i < this.sortedKeys.length && this.sortedKeys[i].startsWith(prefix); i++) keys.push(this.sortedKeys[i]);
    return keys;
  }

  private insertSortedKey(key: string): void {
    const at = this.lowerBound(key);
    if (this.sortedKeys[at] !== key) this.sortedKeys.splice(at, 0, key);
  }

  /** Many scattered keys (a lease's) are removed in one pass rather than one splice each. */
  private removeSortedKeys(keys: string[]): void {
    if (keys.length > 32) {
      const gone = new Set(keys);
      this.sortedKeys = this.sortedKeys.filter((k) => !gone.has(k));
      return;
    }
    for (const key of keys) {
      const at = this.lowerBound(key);
      if (this.sortedKeys[at] === key) this.sortedKeys.splice(at, 1);
    }
  }

  // ── leases ─────────────────────────────────────────────────────────────

  async grantLease(ttlSeconds: number, options: GrantLeaseOptions = {}): Promise<Lease> {
    this.checkOpen();
    if (!Number.isInteger(ttlSeconds) || ttlSeconds < 1) throw new RangeError(`lease TTL must be a whole number of seconds ≥ 1, got ${ttlSeconds}`);
    let id: string;
    do id = BigInt.asUintN(62, randomBytes(8).readBigUInt64LE()).toString();
    while (id === '0' || this.leases.has(id));
    const lease = new EmbeddedLease(this, id, ttlSeconds, options.keepAlive !== false);
    this.leases.set(id, lease);
    lease.start();
    return lease;
  }

  private attach(key: string, leaseId: string): void {
    let keys = this.keysOfLease.get(leaseId);
    if (!keys) this.keysOfLease.set(leaseId, (keys = new Set()));
    keys.add(key);
  }

  private detach(key: string, leaseId: string): void {
    const keys = this.keysOfLease.get(leaseId);
    keys?.delete(key);
    if (keys?.size === 0) this.keysOfLease.delete(leaseId);
  }

  /**
   * End a lease (revoked by its holder, or lost when its TTL ran out): it
   * stops existing at once, then its keys are deleted in one durable txn.
   * @internal for EmbeddedLease
   */
  async endLease(lease: EmbeddedLease, how: 'revoked' | 'lost', reason?: Error): Promise<void> {
    if (this.leases.get(lease.id) !== lease) return;
    this.leases.delete(lease.id);
    const keys = [...(this.keysOfLease.get(lease.id) ?? [])];
    let durable: Promise<void> | undefined;
    if (keys.length > 0 && !this.wal.failed) {
      const revision = this.revision + 1;
      const mutations: LoggedMutation[] = keys.map((key) => ({ kind: 'delete', key }));
      for (const m of mutations) this.applyMutation(m, revision, false);
      this.removeSortedKeys(keys);
      durable = this.commit(revision, mutations);
    }
    lease.settle(how, reason);
    if (how === 'lost') this.log.warn({ lease: lease.id, keys: keys.length }, 'lease expired; its keys are deleted');
    await durable;
  }

  private async dropLeasesOfPreviousProcess(): Promise<void> {
    const orphaned = [...this.keysOfLease.values()].flatMap((keys) => [...keys]);
    this.keysOfLease.clear();
    if (orphaned.length === 0) return;
    this.log.info({ keys: orphaned.length }, 'deleting keys of leases held by the previous process');
    const revision = this.revision + 1;
    const mutations: LoggedMutation[] = orphaned.map((key) => ({ kind: 'delete', key }));
    for (const m of mutations) this.applyMutation(m, revision, false);
    this.removeSortedKeys(orphaned);
    await this.commit(revision, mutations);
  }

  // ── watches ────────────────────────────────────────────────────────────

  async watchPrefix(prefix: string, options: WatchOptions, onEvent: (event: WatchEvent) => void): Promise<Watcher> {
    this.checkOpen();
    const from = options.fromRevision;
    if (from !== undefined && (!Number.isSafeInteger(from) || from < 1)) throw new RangeError(`fromRevision must be a revision ≥ 1, got ${from}`);
    if (from !== undefined && from < this.historyStart) {
      throw new MetadataCompactedError(from, this.historyStart - 1);
    }
    // options.onError is never called: this store does not end a watch on its own.
    const watcher = new EmbeddedWatcher(prefix, from ?? this.revision + 1, onEvent, this.log, () => this.watchers.delete(watcher));
    // Same tick: replay durable history, then join live delivery — no gap, no duplicate.
    watcher.enqueue(this.history);
    this.watchers.add(watcher);
    return watcher;
  }

  /** Called by the log after each sync: deliver now-durable events in order. */
  private deliverDurable(revision: number): void {
    while (this.undelivered.length > 0 && this.undelivered[0].revision <= revision) {
      const { events } = this.undelivered.shift()!;
      this.history.push(...events);
      for (const watcher of this.watchers) watcher.enqueue(events);
    }
    this.trimHistory();
    this.maybeCompact();
  }

  /** Drop whole revisions from the front of history beyond the limit. */
  private trimHistory(): void {
    if (this.history.length <= this.historyLimit) return;
    let cut = this.history.length - this.historyLimit;
    const lastDropped = this.history[cut - 1].modRevision;
    while (cut < this.history.length && this.history[cut].modRevision === lastDropped) cut++;
    this.history = this.history.slice(cut);
    this.historyStart = lastDropped + 1;
  }

  // ── compaction ─────────────────────────────────────────────────────────

  private maybeCompact(): void {
    if (this.compacting || this.closing || this.wal.failed) return;
    if (this.wal.stats.bytesSinceSnapshot < this.compactAfterBytes) return;
    this.compact().catch((err) => this.log.error({ err, dir: this.dir }, 'metadata compaction failed; will retry after more writes'));
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
    const entries: SnapshotEntry[] = this.sortedKeys.map((key) => {
      const e = this.entries.get(key)!;
      return { key, value: e.value, createRevision: e.createRevision, modRevision: e.modRevision, version: e.version, lease: e.lease };
    });
    await this.wal.drain();
    if (segmentFirstRevision(this.wal.activeSegment) !== revision + 1) await this.wal.rotate(revision + 1);
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
    this.log.info({ dir: this.dir, revision, keys: entries.length, snapshotBytes: bytes, segmentsRemoved: removed, ms: Math.round(performance.now() - started) }, 'compacted metadata log');
  }

  // ── lifecycle ──────────────────────────────────────────────────────────

  stats(): EmbeddedStoreStats {
    return {
      revision: this.revision,
      keys: this.entries.size,
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
    await Promise.allSettled([...this.leases.values()].map((lease) => this.endLease(lease, 'revoked')));
    for (const watcher of [...this.watchers]) await watcher.close();
    await this.compacting?.catch(() => undefined);
    await this.wal.close().catch((err) => this.log.error({ err, dir: this.dir }, 'closing metadata log failed'));
    await this.lock.release();
    this.log.debug({ dir: this.dir, revision: this.revision }, 'closed embedded metadata store');
  }

  private checkOpen(): void {
    if (this.closing) throw new MetadataClosedError(`embedded metadata store ${this.dir} is closed`);
    const failure = this.wal.failed;
    if (failure) throw failure;
  }

  /** @internal for EmbeddedLease */
  get isClosing(): boolean {
    return this.closing !== undefined;
  }
}

/**
 * An in-process lease. Expiry is a timer TTL after the last renewal; with
 * keepAlive on, renewal runs every TTL/3, so only an event loop stalled for
 * most of a TTL (or keepAlive off) lets it lapse — the same contract etcd
 * gives a client that stops talking. Timers are unref'd: a lease alone does
 * not keep the process running.
 */
class EmbeddedLease extends LeaseStateMachine {
  private expiryTimer: NodeJS.Timeout | undefined;
  private keepAliveTimer: NodeJS.Timeout | undefined;

  constructor(
    private readonly store: EmbeddedMetadataStore,
    readonly id: string,
    readonly ttlSeconds: number,
    private readonly autoKeepAlive: boolean,
  ) {
    super();
  }

  start(): void {
    this.transition('alive');
    this.expiryTimer = setTimeout(() => this.expire(), this.ttlSeconds * 1000).unref();
    if (this.autoKeepAlive) {
      this.keepAliveTimer = setInterval(() => this.renew(), (this.ttlSeconds * 1000) / 3).unref();
    }
  }

  private renew(): void {
    this.expiryTimer?.refresh();
  }

  async keepAliveOnce(): Promise<void> {
    if (this.state !== 'alive') throw new LeaseNotFoundError(this.id);
    this.renew();
  }

  async revoke(): Promise<void> {
    await this.store.endLease(this, 'revoked');
  }

  private expire(): void {
    const reason = new LeaseLostError(this.id, `lease ${this.id} expired: not kept alive within its ${this.ttlSeconds}s TTL`);
    this.store.endLease(this, 'lost', reason).catch(() => undefined);
  }

  /** @internal the store's half of endLease: record the terminal state. */
  settle(how: 'revoked' | 'lost', reason?: Error): void {
    this.transition(how, reason);
  }

  protected override onEnded(): void {
    clearTimeout(this.expiryTimer);
    clearInterval(this.keepAliveTimer);
  }
}

/**
 * Delivers events to one callback in revision order. Events are queued
 * synchronously (so order is fixed when they become durable) and handed out
 * from a microtask, so a callback never runs inside a store call.
 */
class EmbeddedWatcher implements Watcher {
  private queue: WatchEvent[] = [];
  private scheduled = false;
  private closed = false;

  constructor(
    private readonly prefix: string,
    private readonly fromRevision: number,
    private readonly onEvent: (event: WatchEvent) => void,
    private readonly log: Logger,
    private readonly detach: () => void,
  ) {}

  enqueue(events: readonly WatchEvent[]): void {
    if (this.closed) return;
    for (const event of events) {
      if (event.modRevision >= this.fromRevision && event.key.startsWith(this.prefix)) this.queue.push(event);
    }
    if (this.queue.length > 0 && !this.scheduled) {
      this.scheduled = true;
      queueMicrotask(() => this.drain());
    }
  }

  private drain(): void {
    this.scheduled = false;
    const events = this.queue;
    this.queue = [];
    for (const event of events) {
      if (this.closed) return;
      try {
        // A copy of the value: one event object is shared by all watchers.
        this.onEvent({ ...event, value: Buffer.from(event.value) });
      } catch (err) {
        this.log.error({ err, key: event.key }, 'watch callback threw; the watch goes on');
      }
    }
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.queue = [];
    this.detach();
  }
}

function eventsOf(record: TxnRecord): WatchEvent[] {
  return record.mutations.map((m) =>
    m.kind === 'put'
      ? { type: 'put', key: m.key, value: m.value, modRevision: record.revision }
      : { type: 'delete', key: m.key, value: EMPTY, modRevision: record.revision },
  );
}

const EMPTY = Buffer.alloc(0);

function toKeyValue(key: string, e: Entry): KeyValue {
  const kv: KeyValue = { key, value: Buffer.from(e.value), createRevision: e.createRevision, modRevision: e.modRevision, version: e.version };
  if (e.lease) kv.lease = e.lease;
  return kv;
}

function compareWith(difference: number, op: Compare['op']): boolean {
  switch (op) {
    case '==':
      return difference === 0;
    case '!=':
      return difference !== 0;
    case '<':
      return difference < 0;
    case '>':
      return difference > 0;
  }
}
