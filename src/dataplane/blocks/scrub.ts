/**
 * Scrubber: reads every block of the local store in the background, at a
 * bounded rate, and checks it against the hash in its slot record — so a
 * copy that rotted on disk is found while the other copies are still good,
 * not the day a client reads it.
 *
 * A bad copy is repaired when there is a good one elsewhere (`fetchGood`:
 * in a cluster, a replica, whose bytes are checked against the same hash):
 * it is written to a fresh slot under the same ref, which releases the bad
 * slot, and synced. With no good copy (a single node, or every replica bad
 * or away) it is counted and logged, and left in place: the read path
 * already answers EIO for it, and the next pass tries again.
 *
 * When (a BackgroundJob, ../jobs): a pass intervalMs after start(), then
 * intervalMs after each periodic pass ended, or at once with scrubNow();
 * one at a time; reads paced by the job's token bucket (a burst of one
 * block); close() ends a pass between blocks.
 *
 * The store may change under a pass (writes, GC, rebalance): a slot is
 * checked only if it is still bound to the same ref with the same hash
 * after its bytes were read, so a block released or replaced meanwhile is
 * never called bad.
 */
import type { Logger } from '../../common/log.js';
import { StoreFullError } from '../../common/errors.js';
import { BackgroundJob } from '../jobs/background-job.js';
import {
  NONCE_SIZE,
  OFF_FLAGS,
  OFF_HASH_HI,
  OFF_HASH_LO,
  OFF_NONCE,
  OFF_TAG,
  TAG_SIZE,
} from './record.js';
import { formatRef, type BlockRef } from '../../model/block-ref.js';
import type { LocalSlotStore } from './slot-store.js';

export interface ScrubOptions {
  store: LocalSlotStore;
  /** Bytes per second a pass reads. */
  rateBytesPerSecond: number;
  /** A pass starts this long after the last periodic one ended (and once, this long after start()); 0: only scrubNow(). */
  intervalMs: number;
  /** Fill `dest` with a good copy of `ref` (its hash checked) from elsewhere, or reject. Absent: nowhere to repair from. */
  fetchGood?: (ref: BlockRef, hashLo: number, hashHi: number, dest: Uint8Array) => Promise<void>;
  log: Logger;
}

export interface ScrubStats {
  running: boolean;
  passes: number;
  /** Blocks checked, all passes. */
  checked: number;
  checkedBytes: number;
  /** Copies whose bytes did not match their hash. */
  bad: number;
  /** Of those, rewritten from a good copy. */
  repaired: number;
  /** Of those, left as they were (no good copy reachable, or no room). */
  unrepaired: number;
  /** Slots of the store the running pass has looked at, of `slotCount`. */
  passSlot: number;
  lastStartedAt?: string;
  lastFinishedAt?: string;
}

export class Scrubber {
  readonly stats: ScrubStats = {
    running: false,
    passes: 0,
    checked: 0,
    checkedBytes: 0,
    bad: 0,
    repaired: 0,
    unrepaired: 0,
    passSlot: 0,
  };
  /** When passes happen, and the pace of reads. */
  private readonly job: BackgroundJob;
  private readonly buffer: Uint8Array;

  constructor(private readonly options: ScrubOptions) {
    if (!(options.rateBytesPerSecond > 0))
      throw new RangeError(
        `scrub rate must be positive, got ${options.rateBytesPerSecond} bytes/s`,
      );
    this.buffer = new Uint8Array(options.store.blockSize);
    this.job = new BackgroundJob({
      work: () => this.runPass(),
      onError: (err) =>
        this.options.log.error({ err: (err as Error).message }, 'scrub pass failed'),
      intervalMs: options.intervalMs,
      period: 'after-run',
      // Never ahead of the rate: one block at a time, the first of a pass at once.
      pace: { bytesPerSecond: options.rateBytesPerSecond, burstBytes: options.store.blockSize },
    });
  }

  /** Schedule passes every intervalMs (the first one intervalMs from now). */
  start(): void {
    this.job.start();
  }

  /** Run a pass now (or join the one running). */
  scrubNow(): Promise<void> {
    return this.job.runNow();
  }

  /** Ends a pass between blocks and waits for it. */
  close(): Promise<void> {
    return this.job.close();
  }

  private get closed(): boolean {
    return this.job.closed;
  }

  private async runPass(): Promise<void> {
    const { store, log } = this.options;
    const stats = this.stats;
    stats.running = true;
    stats.passSlot = 0;
    stats.lastStartedAt = new Date().toISOString();
    const started = performance.now();
    let bytes = 0;
    let bad = 0;
    try {
      for (let slot = 0; slot < store.slotCount && !this.closed; slot++) {
        stats.passSlot = slot;
        const ref = store.boundRef(slot);
        if (!ref) continue;
        if (!(await this.job.pace(store.blockSize)) || this.closed) break;
        if (await this.check(slot, ref)) bad++;
        bytes += store.blockSize;
      }
    } finally {
      stats.running = false;
      if (!this.closed) {
        stats.passes++;
        stats.passSlot = store.slotCount;
        stats.lastFinishedAt = new Date().toISOString();
        log[bad > 0 ? 'warn' : 'info'](
          {
            checkedBytes: bytes,
            bad,
            seconds: Math.round((performance.now() - started) / 100) / 10,
          },
          'scrub pass finished',
        );
      }
    }
  }

  /** Check one slot; true when it held a bad copy. */
  private async check(slot: number, ref: BlockRef): Promise<boolean> {
    const { store } = this.options;
    const record = store.record(slot);
    const hashLo = record.getUint32(OFF_HASH_LO, true);
    const hashHi = record.getUint32(OFF_HASH_HI, true);
    let digest: { lo: number; hi: number } | undefined;
    try {
      digest = await store.readBlock(slot, this.buffer);
    } catch (err) {
      // An unreadable sector is a bad copy too; rewriting it moves it off that sector.
      if (this.stillHolds(slot, ref, hashLo, hashHi))
        this.options.log.error(
          { block: formatRef(ref), slot, err: (err as Error).message },
          'scrub: stored copy could not be read',
        );
    }
    if (!this.stillHolds(slot, ref, hashLo, hashHi)) return false;
    this.stats.checked++;
    this.stats.checkedBytes += store.blockSize;
    if (digest && digest.lo === hashLo >>> 0 && digest.hi === hashHi >>> 0) return false;
    this.stats.bad++;
    await this.repair(slot, ref, hashLo, hashHi);
    return true;
  }

  private stillHolds(slot: number, ref: BlockRef, hashLo: number, hashHi: number): boolean {
    const now = this.options.store.boundRef(slot);
    if (
      !now ||
      now.volumeId !== ref.volumeId ||
      now.generation !== ref.generation ||
      now.index !== ref.index
    )
      return false;
    const record = this.options.store.record(slot);
    return (
      record.getUint32(OFF_HASH_LO, true) === hashLo &&
      record.getUint32(OFF_HASH_HI, true) === hashHi
    );
  }

  private async repair(slot: number, ref: BlockRef, hashLo: number, hashHi: number): Promise<void> {
    const { store, fetchGood, log } = this.options;
    const block = formatRef(ref);
    if (!fetchGood) {
      this.stats.unrepaired++;
      log.error(
        { block, slot },
        'scrub: stored copy fails its checksum and there is no other copy to repair it from',
      );
      return;
    }
    const record = store.record(slot);
    const flags = record.getUint32(OFF_FLAGS, true);
    const nonce = new Uint8Array(record.buffer, record.byteOffset + OFF_NONCE, NONCE_SIZE).slice();
    const tag = new Uint8Array(record.buffer, record.byteOffset + OFF_TAG, TAG_SIZE).slice();
    try {
      await fetchGood(ref, hashLo, hashHi, this.buffer);
    } catch (err) {
      this.stats.unrepaired++;
      log.error(
        { block, slot, err: (err as Error).message },
        'scrub: stored copy fails its checksum and no good copy could be fetched; tried again next pass',
      );
      return;
    }
    // Released or replaced while the good copy was fetched: nothing left to repair.
    if (!this.stillHolds(slot, ref, hashLo, hashHi)) return;
    let fresh: number;
    try {
      fresh = store.allocate();
    } catch (err) {
      if (!(err instanceof StoreFullError)) throw err;
      this.stats.unrepaired++;
      log.error(
        { block, slot },
        'scrub: stored copy fails its checksum; the store is full, so it was not rewritten',
      );
      return;
    }
    try {
      // Binding the ref to the fresh slot releases the bad one.
      await store.writeReceivedBlock(
        fresh,
        ref,
        this.buffer,
        flags,
        { lo: hashLo, hi: hashHi },
        nonce,
        tag,
      );
    } catch (err) {
      store.unallocate(fresh);
      throw err;
    }
    await store.sync();
    this.stats.repaired++;
    log.warn(
      { block, badSlot: slot, slot: fresh },
      'scrub: stored copy failed its checksum; rewritten from a good copy',
    );
  }
}
