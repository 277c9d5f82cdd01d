/**
 * WriteBackRounds: the spill/commit scheduler of one volume. All
 * store-writing work (spills and commits) runs one round at a time here;
 * that serialisation is what the bookkeeping in VolumeState relies on.
 * Commits (someone waits) go before spills (memory waits).
 */
import type { BlockRef } from '../../model/block-ref.js';
import { storeDirty } from './dirty-blocks.js';
import { commitVersion } from './version-commit.js';
import type { VolumeState } from './volume-state.js';

/** …keep spilling until less than this share of the cache is dirty (spills start at DIRTY_HIGH_WATER, volume.ts). */
const DIRTY_LOW_WATER = 0.4;
/** Most blocks one spill round writes, so a FLUSH never waits long behind one. */
const SPILL_ROUND_BLOCKS = 1024;

interface FlushWaiter {
  ticket: number;
  resolve(): void;
  reject(err: unknown): void;
}

export class WriteBackRounds {
  /** Spilled blocks dropped while a round ran: released once it is over (see releaseOrphans). */
  private orphans: BlockRef[] = [];
  private roundRunning = false;
  private spillRequested = false;
  private flushTicket = 0;
  private flushedTicket = 0;
  private flushWaiters: FlushWaiter[] = [];
  private loop: Promise<void> | undefined;
  /** Why the last round failed, until one succeeds: writers waiting for cache space see it. */
  private lastFailure: unknown;

  constructor(private readonly state: VolumeState) {}

  /** The last round's failure, once no round runs (a round under way may yet succeed). */
  get failure(): unknown {
    return this.loop ? undefined : this.lastFailure;
  }

  /** Resolves once every write completed before the call is committed. */
  flush(): Promise<void> {
    const ticket = ++this.flushTicket;
    const waiter = new Promise<void>((resolve, reject) =>
      this.flushWaiters.push({ ticket, resolve, reject }),
    );
    this.loop ??= this.runRounds();
    return waiter;
  }

  /** Cache pressure: spill dirty blocks in rounds until the cache is below the low water mark. */
  spill(): void {
    this.spillRequested = true;
    this.loop ??= this.runRounds();
  }

  /** A spilled block of the next version was trimmed: release it now, or after the round under way (which may be committing it). */
  dropSpilled(index: number): void {
    const ref = { volumeId: this.state.id, generation: this.state.generation + 1, index };
    if (this.roundRunning) this.orphans.push(ref);
    else this.state.services.store.release(ref);
  }

  private async runRounds(): Promise<void> {
    for (;;) {
      if (this.flushedTicket < this.flushTicket) {
        const covering = this.flushTicket;
        // Every capture logged before the round starts holds writes the version takes (volume-intents.ts).
        const captured = this.state.intents?.captured ?? 0;
        this.state.committing = true;
        const failure = await this.round(() => commitVersion(this.state));
        this.state.committing = false;
        if (!failure) this.state.intents?.committed(captured, this.state.generation);
        this.flushedTicket = covering;
        const waiters = this.flushWaiters;
        this.flushWaiters = [];
        for (const w of waiters) {
          if (w.ticket > covering) this.flushWaiters.push(w);
          else if (failure) w.reject(failure);
          else w.resolve();
        }
      } else if (this.spillRequested) {
        this.spillRequested = false;
        let spilled = 0;
        const failure = await this.round(async () => {
          spilled = await this.spillOnce();
        });
        const { cache, log } = this.state.services;
        if (failure)
          log.warn(
            { volume: this.state.name, err: String(failure) },
            'spilling dirty blocks failed; they stay cached',
          );
        if (!failure && spilled > 0 && cache.dirtySlots > cache.slotCount * DIRTY_LOW_WATER)
          this.spillRequested = true;
      } else {
        break;
      }
    }
    this.loop = undefined;
  }

  private async round(work: () => Promise<void>): Promise<unknown> {
    this.roundRunning = true;
    let failure: unknown;
    try {
      await work();
    } catch (err) {
      failure = err;
    }
    this.roundRunning = false;
    this.releaseOrphans();
    this.lastFailure = failure;
    // Writers waiting for cache space must hear about a failure, or retry.
    this.state.services.cache.wakeWaiters();
    return failure;
  }

  /** Release spilled blocks dropped during a round, unless the round committed them. */
  private releaseOrphans(): void {
    if (this.orphans.length === 0) return;
    const orphans = this.orphans;
    this.orphans = [];
    const { map, spilled } = this.state;
    for (const ref of orphans) {
      if (map.lookup(ref.index)?.generation === ref.generation) continue; // now part of the committed version
      if (ref.generation === this.state.generation + 1 && spilled.has(ref.index)) continue; // spilled again since
      this.state.services.store.release(ref);
    }
  }

  /** Spill up to one round's worth of dirty blocks; returns how many. */
  private async spillOnce(): Promise<number> {
    const indices: number[] = [];
    for (const index of this.state.dirty) {
      indices.push(index);
      if (indices.length === SPILL_ROUND_BLOCKS) break;
    }
    await storeDirty(this.state, indices);
    return indices.length;
  }
}
