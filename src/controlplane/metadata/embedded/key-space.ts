/**
 * KeySpace: the embedded store's keys in memory, and how a txn is evaluated
 * against them — compares, ranges and the apply of each op.
 *
 * A Map of immutable entries plus a sorted key list for prefix scans, and
 * the keys attached to each lease (so ending a lease finds its keys without
 * a scan). Synchronous throughout: the store calls it inside one tick, which
 * is what makes a txn atomic. It knows nothing of revisions beyond the one
 * it is given, nor of the log.
 *
 * Invariant (asserted after every change): the sorted key list holds exactly
 * the keys of the map.
 */
import { assert } from '../../../common/assert.js';
import { ownedCopy } from '../../../common/owned-copy.js';
import { compareKeys } from '../keys.js';
import { leaseIdOf, type Compare, type KeyValue, type TxnOp, type TxnOpResult } from '../store.js';
import type { LoggedMutation, TxnRecord } from './record.js';
import type { SnapshotEntry } from './snapshot.js';

/** Immutable once stored: a write replaces the Entry, so snapshots can share them. */
interface Entry {
  readonly value: Buffer;
  readonly createRevision: number;
  readonly modRevision: number;
  readonly version: number;
  readonly lease?: string;
}

export class KeySpace {
  private readonly entries = new Map<string, Entry>();
  private sortedKeys: string[] = [];
  private readonly keysOfLease = new Map<string, Set<string>>();

  get size(): number {
    return this.entries.size;
  }

  // ── loading (open) ─────────────────────────────────────────────────────

  /** Take a snapshot's entries (before any replay). */
  load(entries: readonly SnapshotEntry[]): void {
    for (const e of entries) {
      this.entries.set(e.key, {
        value: e.value,
        createRevision: e.createRevision,
        modRevision: e.modRevision,
        version: e.version,
        lease: e.lease,
      });
    }
  }

  /** Replay a logged record at open; the sorted keys and lease sets are rebuilt by index() afterwards. */
  replay(record: TxnRecord): void {
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
  }

  /** Build the sorted keys and lease sets once, after loading: opening stays O(n log n). */
  index(): void {
    this.sortedKeys = [...this.entries.keys()].sort(compareKeys);
    for (const [key, entry] of this.entries) if (entry.lease) this.attach(key, entry.lease);
    this.assertIndexed();
  }

  // ── reads ──────────────────────────────────────────────────────────────

  get(key: string): KeyValue | undefined {
    const entry = this.entries.get(key);
    return entry && toKeyValue(key, entry);
  }

  getPrefix(prefix: string): KeyValue[] {
    return this.keysWithPrefix(prefix).map((key) => toKeyValue(key, this.entries.get(key)!));
  }

  /** Every entry in key order, for a snapshot (entries are immutable, so this is a consistent cut). */
  snapshotEntries(): SnapshotEntry[] {
    return this.sortedKeys.map((key) => {
      const e = this.entries.get(key)!;
      return {
        key,
        value: e.value,
        createRevision: e.createRevision,
        modRevision: e.modRevision,
        version: e.version,
        lease: e.lease,
      };
    });
  }

  // ── txn evaluation ─────────────────────────────────────────────────────

  holds(c: Compare): boolean {
    const entry = this.entries.get(c.key);
    if (c.target === 'value') {
      if (!entry) return false; // etcd: a value compare on an absent key never holds
      return compareWith(Buffer.compare(entry.value, c.value), c.op);
    }
    const actual = entry
      ? c.target === 'modRevision'
        ? entry.modRevision
        : c.target === 'createRevision'
          ? entry.createRevision
          : entry.version
      : 0;
    return compareWith(actual - c.value, c.op);
  }

  /** Apply one op of a txn at `revision`, adding what it changed to `mutations` (for the log). */
  applyOp(op: TxnOp, revision: number, mutations: LoggedMutation[]): TxnOpResult {
    switch (op.type) {
      case 'get': {
        const keys = op.prefix
          ? this.keysWithPrefix(op.key)
          : this.entries.has(op.key)
            ? [op.key]
            : [];
        return { type: 'get', kvs: keys.map((k) => toKeyValue(k, this.entries.get(k)!)) };
      }
      case 'put': {
        // Copied: the caller may reuse its buffer once put() returns. Into
        // memory of its own: the entry and the watch history keep it (owned-copy.ts).
        const mutation: LoggedMutation = {
          kind: 'put',
          key: op.key,
          value: ownedCopy(op.value),
          lease: leaseIdOf(op.lease),
        };
        this.applyMutation(mutation, revision);
        mutations.push(mutation);
        return { type: 'put', revision };
      }
      case 'delete': {
        const keys = op.prefix
          ? this.keysWithPrefix(op.key)
          : this.entries.has(op.key)
            ? [op.key]
            : [];
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

  /** Delete `keys` (all present) at `revision` in one pass; returns the mutations for the log. */
  deleteKeys(keys: string[], revision: number): LoggedMutation[] {
    const mutations: LoggedMutation[] = keys.map((key) => ({ kind: 'delete', key }));
    for (const m of mutations) this.applyMutation(m, revision, false);
    this.removeSortedKeys(keys);
    return mutations;
  }

  /** Apply one mutation. `maintainOrder` false: the caller fixes sortedKeys. */
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

  /** After a change: the sorted key list and the map hold the same keys (a cheap check: their counts). */
  assertIndexed(): void {
    assert(
      this.sortedKeys.length === this.entries.size,
      'the sorted key list and the key map disagree',
    );
  }

  // ── leases ─────────────────────────────────────────────────────────────

  /** The keys attached to a lease, as a copy. */
  keysOf(leaseId: string): string[] {
    return [...(this.keysOfLease.get(leaseId) ?? [])];
  }

  /** Every key attached to any lease, forgetting the leases (at open: those leases died with their process). */
  takeAllLeaseKeys(): string[] {
    const keys = [...this.keysOfLease.values()].flatMap((set) => [...set]);
    this.keysOfLease.clear();
    return keys;
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

  // ── ordering ───────────────────────────────────────────────────────────

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
    for (
      let i = this.lowerBound(prefix);
      i < this.sortedKeys.length && this.sortedKeys[i].startsWith(prefix);
      i++
    )
      keys.push(this.sortedKeys[i]);
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
}

function toKeyValue(key: string, e: Entry): KeyValue {
  const kv: KeyValue = {
    key,
    value: Buffer.from(e.value),
    createRevision: e.createRevision,
    modRevision: e.modRevision,
    version: e.version,
  };
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
