/**
 * WriteBackRounds: the spill/commit scheduler of one volume. All
 * store-writing work (spills and commits) runs one round at a time here;
 * that serialisation is what the bookkeeping in VolumeState relies on.
 * Commits (someone waits) go before spills (memory waits).
 */
import { StoreFullError } from '../../common/errors.js';
import type { BlockRef } from '../../model/block-ref.js';
import { storeDirty } from './dirty-blocks.js';
import { commitVersion } from './version-commit.js';
import type { VolumeState } from './volume-state.js';

/** …keep spilling until less than this share of the cache is dirty (spills start at DIRTY_HIGH_WATER, volume.ts). */
const DIRTY_LOW_WATER = 0.4;
/** Most blocks one spill round writes, so a FLUSH never waits long behind one. */
const SPILL_ROUND_BLOCKS = 1024;
/** After a spill that could not make room, the next is tried this much later (not at once: see runRounds). */
const SPILL_RETRY_MS = 1000;
/**
 * Once this many blocks are spilled and not committed, a spill round
 * commits them (commitSpilled: no dirty block stored, what they replace
 * freed). Until a commit, each spilled block is held in memory as an entry
 * of `spilled` (~150 bytes: a Map entry, an object, boxed numbers), where
 * the committed map keeps 16 bytes of a page; a writer that never flushes
 * (or flushes through the intent log, which commits every 30 s) otherwise
 * grows the heap with everything it writes past the cache: 166 MB of heap
 * after 2 GiB of 4 KiB blocks written, and the node killed in a 512 MiB
 * memory budget (docs/benchmarks.md). 131,072 entries is ~20 MB (at 64 KiB
 * blocks, 8 GiB written). Each such commit rewrites most map pages of a
 * randomly written volume: at 65,536, 4 KiB random writes in the budget
 * lost 15 % (20.5-21.9k IOPS against 25.1-25.6k without); at 131,072 they
 * did 23.4-25.9k.
 */
export const SPILLED_COMMIT_BLOCKS = 131_072;
/** After such a commit failed (etcd away, a fenced writer), the next is tried no sooner than this. */
const SPILLED_COMMIT_RETRY_MS = 10_000;

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
  /**
   * A runRounds() call is under way. A flag set before the call and cleared
   * in its `finally`, not the call's promise: a call with nothing to do
   * returns without awaiting, and a promise stored after that return would
   * say "running" forever, so no round would ever run again.
   */
  private running = false;
  /** Why the last round failed, until one succeeds: writers waiting for cache space see it. */
  private lastFailure: unknown;
  /** Spills failed to make room: none is tried before this time (Date.now()); 0 when they work. */
  private spillRetryAt = 0;
  private spillRetryTimer: NodeJS.Timeout | undefined;
  /** A commit of spilled blocks failed: none is tried before this time (Date.now()). */
  private spilledCommitRetryAt = 0;

  constructor(private readonly state: VolumeState) {}

  /**
   * Why write-back cannot make room, for writers waiting on it: the failure
   * that paused spills, while the pause lasts. Once it is over a writer asks
   * for a spill again (space may have been freed meanwhile: a snapshot
   * deleted, blocks trimmed) and fails only if that one fails too.
   */
  get failure(): unknown {
    return Date.now() < this.spillRetryAt ? this.lastFailure : undefined;
  }

  /** Resolves once every write completed before the call is committed. */
  flush(): Promise<void> {
    const ticket = ++this.flushTicket;
    const waiter = new Promise<void>((resolve, reject) =>
      this.flushWaiters.push({ ticket, resolve, reject }),
    );
    this.startRounds();
    return waiter;
  }

  /** Cache pressure: spill dirty blocks in rounds until the cache is below the low water mark. */
  spill(): void {
    this.spillRequested = true;
    const wait = this.spillRetryAt - Date.now();
    if (wait > 0) {
      // Paused after a failure: try again when the pause ends, not once per waiting writer.
      this.spillRetryTimer ??= setTimeout(() => {
        this.spillRetryTimer = undefined;
        this.startRounds();
      }, wait).unref();
      return;
    }
    this.startRounds();
  }

  /** Stop the retry timer (the volume is closing). */
  dispose(): void {
    clearTimeout(this.spillRetryTimer);
    this.spillRetryTimer = undefined;
  }

  /** A spilled block of the next version was trimmed: release it now, or after the round under way (which may be committing it). */
  dropSpilled(index: number): void {
    const ref = { volumeId: this.state.id, generation: this.state.generation + 1, index };
    if (this.roundRunning) this.orphans.push(ref);
    else this.state.services.store.release(ref);
  }

  private startRounds(): void {
    if (this.running) return;
    this.running = true;
    void this.runRounds();
  }

  /**
   * Rounds while any is wanted. `running` is cleared in the same step as the
   * last look at what is wanted (not a step later, after an await): a flush
   * asked for in between would otherwise find it set and wait forever.
   */
  private async runRounds(): Promise<void> {
    try {
      for (;;) {
        if (this.flushedTicket < this.flushTicket) await this.commitRound();
        else if (this.spillRequested && Date.now() >= this.spillRetryAt) await this.spillRound();
        else {
          // A spill still wanted is paused: its retry timer may have fired a
          // moment before spillRetryAt by Date.now() (timers run on the event
          // loop's clock, read at the start of a busy turn). Arm it again.
          if (this.spillRequested) this.spill();
          return;
        }
      }
    } finally {
      this.running = false;
    }
  }

  /** Commit everything written before the last flush() call; settle its waiters. */
  private async commitRound(): Promise<void> {
    const covering = this.flushTicket;
    // Every capture logged before the round starts holds writes the version takes (volume-intents.ts).
    const started = this.state.intents?.commitStarting();
    const failure = await this.round(() => this.commitMakingRoom());
    if (!failure) {
      this.spillRetryAt = 0; // a commit released what it replaced: room again, maybe
      if (started) this.state.intents?.committed(started, this.state.generation);
    }
    this.flushedTicket = covering;
    const waiters = this.flushWaiters;
    this.flushWaiters = [];
    for (const w of waiters) {
      if (w.ticket > covering) this.flushWaiters.push(w);
      else if (failure) w.reject(failure);
      else w.resolve();
    }
  }

  /** Spill one round's worth of dirty blocks; on failure pause spills (see SPILL_RETRY_MS). */
  private async spillRound(): Promise<void> {
    this.spillRequested = false;
    let spilled = 0;
    const started = performance.now();
    let failure = await this.round(async () => {
      spilled = await this.spillOnce();
    });
    if (!failure && spilled > 0)
      this.state.services.onSpill?.(this.state.name, spilled, (performance.now() - started) / 1000);
    if (failure instanceof StoreFullError && this.hasUncommitted()) {
      // The store holds both the committed blocks and the spilled ones
      // that replace them: committing the spilled ones releases the old.
      failure = await this.round(() => this.commitSpilled());
      if (!failure) this.spillRequested = true;
    }
    const { cache, log } = this.state.services;
    if (failure) {
      // Waiting writers are woken by every round; were the next spill
      // tried at once, they would ask for it again and the rounds would
      // spin. Pause spills, and let the writers fail meanwhile.
      if (this.spillRetryAt === 0)
        log.warn(
          { volume: this.state.name, err: String(failure) },
          `spilling dirty blocks failed; they stay cached, writes needing cache space fail, retried every ${SPILL_RETRY_MS / 1000} s`,
        );
      this.spillRetryAt = Date.now() + SPILL_RETRY_MS;
      if (this.spillRequested) this.spill();
      cache.wakeWaiters();
    } else {
      if (this.spillRetryAt !== 0)
        log.info({ volume: this.state.name }, 'spilling dirty blocks works again');
      this.spillRetryAt = 0;
      if (spilled > 0 && cache.dirtySlots > cache.slotCount * DIRTY_LOW_WATER)
        this.spillRequested = true;
      await this.commitManySpilled();
    }
  }

  /** Past SPILLED_COMMIT_BLOCKS spilled blocks, commit them (see there). */
  private async commitManySpilled(): Promise<void> {
    const limit = this.state.services.spilledCommitBlocks ?? SPILLED_COMMIT_BLOCKS;
    if (this.state.spilled.size < limit || Date.now() < this.spilledCommitRetryAt) return;
    const failure = await this.round(() => this.commitSpilled());
    if (!failure) return;
    // The blocks stay spilled, as without this commit; a FLUSH or the periodic commit will try again too.
    this.spilledCommitRetryAt = Date.now() + SPILLED_COMMIT_RETRY_MS;
    this.state.services.log.warn(
      { volume: this.state.name, spilled: this.state.spilled.size, err: String(failure) },
      `committing spilled blocks failed; retried in ${SPILLED_COMMIT_RETRY_MS / 1000} s`,
    );
  }

  private async round(work: () => Promise<void>): Promise<unknown> {
    this.roundRunning = true;
    // Spills too: a capture meanwhile cannot know whether this round commits (volume-intents.ts).
    this.state.committing = true;
    let failure: unknown;
    try {
      await work();
    } catch (err) {
      failure = err;
    }
    this.state.committing = false;
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

  private hasUncommitted(): boolean {
    return this.state.spilled.size > 0 || this.state.pendingHoles.size > 0;
  }

  /**
   * Commit what is already spilled (and trimmed), storing no dirty block:
   * frees what it replaces. Such a version may lack bytes the intent log
   * holds as covered by it: the log says so first (a partial marker).
   */
  private async commitSpilled(): Promise<void> {
    await this.state.intents?.beforePartialCommit(this.state.generation + 1);
    await commitVersion(this.state, { storeDirtyFirst: false });
    await this.state.services.store.whenReleased();
  }

  /**
   * A commit of everything written. If the store is too full to take the
   * dirty blocks, commit the spilled ones first (releasing what they
   * replace), then try again.
   */
  private async commitMakingRoom(): Promise<void> {
    try {
      await commitVersion(this.state);
    } catch (err) {
      if (!(err instanceof StoreFullError) || !this.hasUncommitted()) throw err;
      await this.commitSpilled();
      await commitVersion(this.state);
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
