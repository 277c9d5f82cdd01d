/**
 * WatchHub: the embedded store's watch fan-out. Holds the events of applied
 * writes until their record is durable, then hands them to every watcher and
 * keeps them, up to a limit, as history for watches from a past revision.
 *
 * Contract
 * - An event reaches a watcher only after the sync that made it durable, and
 *   watchers see events in revision order, each once.
 * - A new watch replays history and joins live delivery in the same tick: no
 *   gap, no duplicate. One from before the kept history is refused with
 *   MetadataCompactedError.
 * - Asserted: revisions are applied in increasing order, and each watcher's
 *   queue never goes back in revision.
 */
import { assert, invariantBroken } from '../../../common/assert.js';
import type { Logger } from '../../../common/log.js';
import { MetadataCompactedError } from '../errors.js';
import type { WatchEvent, Watcher } from '../store.js';
import type { TxnRecord } from './record.js';

export class WatchHub {
  private readonly watchers = new Set<EmbeddedWatcher>();
  /** Durable events kept for watches from a past revision, in order. */
  private history: WatchEvent[] = [];
  /** Every event at or after this revision is in `history` (or still undelivered). */
  private historyStart: number;
  /** Applied writes whose record is not yet durable, in revision order. */
  private undelivered: Array<{ revision: number; events: WatchEvent[] }> = [];
  /** The revision of the last record replayed or applied. */
  private lastRevision: number;

  constructor(
    snapshotRevision: number,
    private readonly historyLimit: number,
    private readonly log: Logger,
  ) {
    this.historyStart = snapshotRevision + 1;
    this.lastRevision = snapshotRevision;
  }

  /** A record replayed at open: durable already, so straight into history. */
  replayed(record: TxnRecord): void {
    this.advanceTo(record.revision);
    this.history.push(...eventsOf(record));
    this.trimHistory();
  }

  /** A record just applied to memory: its events wait for deliverDurable(). */
  applied(record: TxnRecord): void {
    this.advanceTo(record.revision);
    this.undelivered.push({ revision: record.revision, events: eventsOf(record) });
  }

  private advanceTo(revision: number): void {
    if (revision <= this.lastRevision)
      invariantBroken(`revision ${revision} applied after ${this.lastRevision}`);
    this.lastRevision = revision;
  }

  /** The log made everything up to `revision` durable: deliver those events in order. */
  deliverDurable(revision: number): void {
    while (this.undelivered.length > 0 && this.undelivered[0].revision <= revision) {
      const { events } = this.undelivered.shift()!;
      this.history.push(...events);
      for (const watcher of this.watchers) watcher.enqueue(events);
    }
    this.trimHistory();
  }

  /** Watch `prefix` from revision `from` (the caller checked it is a revision). */
  watch(prefix: string, from: number, onEvent: (event: WatchEvent) => void): Watcher {
    if (from < this.historyStart) throw new MetadataCompactedError(from, this.historyStart - 1);
    // options.onError is never called: this store does not end a watch on its own.
    const watcher = new EmbeddedWatcher(prefix, from, onEvent, this.log, () =>
      this.watchers.delete(watcher),
    );
    // Same tick: replay durable history, then join live delivery — no gap, no duplicate.
    watcher.enqueue(this.history);
    this.watchers.add(watcher);
    return watcher;
  }

  async closeAll(): Promise<void> {
    for (const watcher of [...this.watchers]) await watcher.close();
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
  /** The revision of the last event queued: the next one is not below it. */
  private lastQueued = 0;

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
      if (event.modRevision >= this.fromRevision && event.key.startsWith(this.prefix)) {
        assert(event.modRevision >= this.lastQueued, 'watch events queued out of revision order');
        this.lastQueued = event.modRevision;
        this.queue.push(event);
      }
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
