/**
 * BlockLoads: how a volume's cache misses are filled — a slot taken (or a
 * partly loaded one reused), the read handed to the pool, the slot Clean
 * with what it now holds, or freed and a typed error on failure.
 *
 * Sub-block reads (plain blocks): a miss reads only the 4 KiB sub-blocks
 * the request touches (blocks/sub-sums.ts), each checked against its own
 * xxh32, which is checked against the block's xxh64 in the map — from the
 * local store, or from a replica (GET_RANGE on the peer wire, which sends
 * the entry with the bytes); a sequential reader gets the rest of the
 * block in the same read. The slot records what it holds
 * (cache/block-cache.ts, valid masks); a later miss on the same block fills
 * only what is missing. Sealed blocks are whole: the AEAD tag covers the
 * whole block. Cluster reads by a sequential reader also fetch the blocks
 * after it ahead of time (read-ahead.ts), whole.
 *
 * Completing partly written blocks: a write of whole sub-blocks to a block
 * not in the cache leaves a Dirty slot holding only those (volume.ts). The
 * rest is the stored copy's, loaded when something needs the whole block —
 * its write-back (dirty-blocks.ts), a read of a sub-block not written — into
 * a slot of its own by a worker; main then copies the sub-blocks written
 * (those written meanwhile too) into that slot, which becomes the block's
 * Dirty slot, whole (complete()).
 */
import { assert } from '../../common/assert.js';
import { ChecksumError, IoError } from '../../common/errors.js';
import { SUB_BLOCK_SIZE } from '../blocks/sub-sums.js';
import { SlotState, type CacheOwner } from '../cache/block-cache.js';
import { READ_CHECKSUM_MISMATCH, READ_OK, READ_OPEN_FAILED } from '../pool/tasks.js';
import type { ReadRemote } from '../replication/block-placement.js';
import { ENTRY_SEALED } from './block-map.js';
import { ReadAhead } from './read-ahead.js';
import type { VolumeState } from './volume-state.js';

/** Where a block's stored copy is, for a fill. */
interface BlockSource {
  /** The volume id the block is stored under (a clone's ancestor for inherited blocks). */
  owner: number;
  entry: { generation: number; flags: number; hashLo: number; hashHi: number };
  /** This node's store slot, or -1. */
  storeSlot: number;
  remote: ReadRemote | undefined;
  /** Written for the next version (not yet committed). */
  spilled: boolean;
}

/** Partly written blocks completed at once by a write-back (each holds a cache slot for its load). */
const COMPLETIONS_AT_ONCE = 32;

export class BlockLoads {
  /** In-flight cache fills, by block index: a request meeting a Loading slot waits on its fill. */
  readonly inFlight = new Map<number, Promise<void>>();
  /**
   * Sequential readers of blocks that come from peers get the next blocks
   * fetched ahead (read-ahead.ts); the volume tells it of every read. Off
   * on a single node, whose misses are local preads.
   */
  readonly readAhead: ReadAhead;
  /** Set by stop(): the volume is closing, no fill starts any more. */
  private stopped = false;
  /** Partly written blocks being completed, by index (complete()). */
  private readonly completing = new Map<number, Promise<void>>();

  constructor(
    private readonly state: VolumeState,
    /** The volume, which the cache tells of evictions. */
    private readonly owner: CacheOwner,
    /** Wait for a cache slot (write back, or fail with the write-back's error). */
    private readonly waitForCacheSpace: () => Promise<void>,
  ) {
    this.readAhead = new ReadAhead(
      state.blockSize,
      () => state.map.blockCount,
      () => state.placement.readRemote(state.id, 0) !== undefined,
      (index) => this.fetchAhead(index),
    );
  }

  /**
   * The volume is closing: no fill starts from now on (a load waiting for a
   * slot fails with ESHUTDOWN), and this resolves once those in flight have
   * answered. Until then a worker may still write their slots and mark them
   * Clean: the volume may free its slots only after this, or a fill landing
   * late would write into a slot another block (another volume's) holds.
   */
  async stop(): Promise<void> {
    this.stopped = true;
    while (this.inFlight.size > 0 || this.completing.size > 0)
      await Promise.allSettled([...this.inFlight.values(), ...this.completing.values()]);
  }

  /** Read-ahead's fetch: block `index` whole into the cache unless it is there, coming, or a hole. */
  private fetchAhead(index: number): void {
    if (this.stopped || this.state.table.has(index) || this.state.isHole(index)) return;
    // A failed fetch is the reader's to see, when (and if) it asks for the block itself.
    this.loaded(index).catch(() => undefined);
  }

  /**
   * A cache slot holding the current data of bytes [within, within + length)
   * of block `index` (the whole block by default), or -1 if the block is a
   * hole. When this resolves the slot is valid until the caller yields. A
   * miss of a plain block reads only the 4 KiB sub-blocks the range touches,
   * from the local store or a replica; a sealed block is read whole (the
   * AEAD tag covers the whole block).
   */
  async loaded(index: number, within = 0, length = this.state.blockSize): Promise<number> {
    const { cache } = this.state.services;
    const wanted = cache.maskOf(within, length);
    for (;;) {
      if (this.stopped) throw this.closing(index);
      let cacheSlot = this.state.table.get(index);
      let previous = 0;
      if (cacheSlot !== undefined) {
        if (cache.state[cacheSlot] === SlotState.Loading) {
          await this.inFlight.get(index);
          continue;
        }
        if (cache.covers(cacheSlot, wanted)) return cacheSlot;
        if (cache.state[cacheSlot] === SlotState.Flushing) {
          // Part of a block being stored as a patch: the rest reads from it once stored
          // (or, if storing fails, from the stored copy, the slot being Dirty again).
          const storing = this.state.storing;
          if (storing) await storing.catch(() => undefined);
          else await new Promise((resolve) => setImmediate(resolve));
          continue;
        }
        if (cache.state[cacheSlot] === SlotState.Dirty) {
          // Written in part: the rest comes from the stored copy first (complete()).
          await this.complete(index);
          continue;
        }
        // Clean and partly loaded: fill the rest of the range in place.
        previous = cache.validMask(cacheSlot);
      } else if (this.state.isHole(index)) {
        return -1;
      }
      const source = this.sourceOf(index);
      const { entry } = source;
      if (cacheSlot === undefined) {
        cacheSlot = cache.acquire(this.owner, index, SlotState.Loading);
        if (cacheSlot < 0) {
          await this.waitForCacheSpace();
          continue;
        }
        this.state.table.set(index, cacheSlot);
      } else {
        cache.setState(cacheSlot, SlotState.Loading);
      }
      cache.misses++;
      const sealed = (entry.flags & ENTRY_SEALED) !== 0;
      // A replica serves part of a plain block too (GET_RANGE, with its sub-sums entry).
      const whole = sealed || cache.subBlocks === 0;
      // A fill continuing a run of the two sub-blocks before it (at sub-block 1:
      // the one) is sequential too: read to the block's end. One before it is
      // not enough: a random reader's slot collects sub-blocks by chance, and
      // with a quarter of them present a quarter of its fills read 30-60 KiB
      // instead of 4 (and past the main thread's small-miss paths: session 26).
      const first = Math.floor(within / SUB_BLOCK_SIZE);
      const before = first >= 2 ? 0b11 << (first - 2) : first;
      const sequential = before !== 0 && (previous & before) === before;
      const toRead = whole
        ? cache.wholeMask
        : ((sequential ? cache.maskOf(within, this.state.blockSize - within) : wanted) &
            ~previous) >>>
          0;
      // A whole read lands straight in the slot: it must not hold sub-blocks already served from it.
      assert(!whole || previous === 0, 'a partly loaded slot is filled whole');
      await this.fill(index, cacheSlot, source, toRead, previous);
      return cacheSlot;
    }
  }

  /** Where block `index`'s stored copy is (it is not a hole): spilled for the next version, or committed. */
  private sourceOf(index: number): BlockSource {
    const spilled = this.state.spilled.get(index);
    const entry = spilled
      ? {
          generation: this.state.generation + 1,
          flags: this.state.key ? ENTRY_SEALED : 0,
          hashLo: spilled.hashLo,
          hashHi: spilled.hashHi,
        }
      : this.state.map.lookup(index)!;
    // A clone's older entries name its ancestors' blocks: read those under their owner's id.
    const owner = spilled ? this.state.id : this.state.map.ownerOf(entry.generation);
    const remote = this.state.placement.readRemote(owner, index);
    const storeSlot = this.state.services.store.lookup(owner, entry.generation, index) ?? -1;
    if (storeSlot < 0 && !remote) {
      throw new IoError(
        'EIO',
        `volume ${this.state.name}: block ${index} (gen ${entry.generation}) is missing from the local store`,
      );
    }
    return { owner, entry, storeSlot, remote, spilled: !!spilled };
  }

  /**
   * Make block `index`'s Dirty slot whole if it was written in part: its
   * sub-blocks not written are loaded from the stored copy into a slot of
   * their own (the worker never touches the Dirty slot), and that slot takes
   * the written ones, those written while the load ran too (adopt()).
   * Resolves at once when the slot is whole, or not Dirty, or gone (trimmed
   * meanwhile). One completion per block at a time.
   */
  complete(index: number): Promise<void> {
    let running = this.completing.get(index);
    if (!running) {
      running = this.completeOnce(index).finally(() => this.completing.delete(index));
      this.completing.set(index, running);
    }
    return running;
  }

  /** Is a complete() of block `index` under way (reading its stored copy)? */
  isCompleting(index: number): boolean {
    return this.completing.has(index);
  }

  /** complete() of every block in `indices` that needs it, a bounded number at a time. */
  async completeAll(indices: readonly number[]): Promise<void> {
    const partial = indices.filter((index) => this.partlyWritten(index) !== undefined);
    for (let at = 0; at < partial.length; at += COMPLETIONS_AT_ONCE)
      await Promise.all(
        partial.slice(at, at + COMPLETIONS_AT_ONCE).map((index) => this.complete(index)),
      );
  }

  private async completeOnce(index: number): Promise<void> {
    const { cache } = this.state.services;
    for (;;) {
      const dirtySlot = this.partlyWritten(index);
      if (dirtySlot === undefined) return;
      if (this.stopped) throw this.closing(index);
      // Only a stored block is written in part (a hole's slot starts as zeros, whole).
      assert(!this.state.isHole(index), 'a partly written block has no stored copy');
      const source = this.sourceOf(index);
      // Its spilled copy may be being replaced right now (a patch of the
      // round in flight, cluster: the same ref on every copy): read it once
      // the round is over. Read meanwhile, a replica already holding the new
      // one looks damaged, and the read "repairs" it with the old.
      const storing = this.state.storing;
      if (source.spilled && storing) {
        await storing.catch(() => undefined);
        continue;
      }
      const rest = cache.acquire(this.owner, index, SlotState.Loading);
      if (rest < 0) {
        await this.waitForCacheSpace();
        continue;
      }
      cache.misses++;
      const missing = (cache.wholeMask & ~cache.validMask(dirtySlot)) >>> 0;
      await new Promise<void>((resolve, reject) => {
        this.readSource(index, rest, source, missing, (status, reason) => {
          if (status === READ_OK) {
            // Only if it is still the same Dirty slot over the same stored copy: a block
            // trimmed and written again meanwhile may have its slot number back.
            if (
              this.state.table.get(index) === dirtySlot &&
              cache.state[dirtySlot] === SlotState.Dirty &&
              this.storedCopyIs(index, source.entry)
            )
              this.adopt(index, dirtySlot, rest);
            else cache.free(rest);
            resolve();
            return;
          }
          cache.free(rest);
          reject(this.readFailure(status, index, source.entry.generation, reason));
        });
      });
    }
  }

  /** Block `index`'s Dirty slot when it holds only some sub-blocks (complete() makes it whole); else undefined. */
  private partlyWritten(index: number): number | undefined {
    const { cache } = this.state.services;
    const slot = this.state.table.get(index);
    return slot !== undefined && cache.state[slot] === SlotState.Dirty && !cache.isWhole(slot)
      ? slot
      : undefined;
  }

  /** Is `entry`'s content still what block `index` holds in the store (spilled, or committed)? */
  private storedCopyIs(index: number, entry: { hashLo: number; hashHi: number }): boolean {
    if (this.state.pendingHoles.has(index)) return false;
    const now = this.state.spilled.get(index) ?? this.state.map.lookup(index);
    return now !== undefined && now.hashLo === entry.hashLo && now.hashHi === entry.hashHi;
  }

  /**
   * `rest` (Loading, filled with at least the sub-blocks `dirty` lacks)
   * becomes block `index`'s Dirty slot, whole: the sub-blocks written go
   * into it — usually a few KiB, where copying the stored ones the other
   * way would be most of the block — and `dirty` is freed (once unpinned,
   * if a reply is still sending from it).
   */
  private adopt(index: number, dirty: number, rest: number): void {
    const { cache } = this.state.services;
    const written = cache.validMask(dirty);
    const from = cache.view(dirty);
    const to = cache.view(rest);
    // Runs of consecutive written sub-blocks, one copy each.
    for (let j = 0; j < cache.subBlocks;) {
      if ((written & (1 << j)) === 0) {
        j++;
        continue;
      }
      let end = j + 1;
      while (end < cache.subBlocks && (written & (1 << end)) !== 0) end++;
      from.copy(to, j * SUB_BLOCK_SIZE, j * SUB_BLOCK_SIZE, end * SUB_BLOCK_SIZE);
      j = end;
    }
    cache.setValid(rest, cache.wholeMask);
    cache.setState(rest, SlotState.Clean);
    cache.setState(rest, SlotState.Dirty);
    cache.touch(rest);
    this.state.table.set(index, rest);
    cache.free(dirty);
  }

  /**
   * Read sub-blocks `toRead` of block `index` into cacheSlot (Loading) in the
   * pool; `previous`: the sub-blocks it held already. Resolves with the slot
   * Clean, or rejects with it freed (ChecksumError, IoError).
   */
  private fill(
    index: number,
    cacheSlot: number,
    source: BlockSource,
    toRead: number,
    previous: number,
  ): Promise<void> {
    const { cache } = this.state.services;
    const load = new Promise<void>((resolve, reject) => {
      this.readSource(index, cacheSlot, source, toRead, (status, reason, whole) => {
        this.inFlight.delete(index);
        if (status === READ_OK) {
          cache.setValid(cacheSlot, whole ? cache.wholeMask : (previous | toRead) >>> 0);
          cache.setState(cacheSlot, SlotState.Clean);
          resolve();
          return;
        }
        if (this.state.table.get(index) === cacheSlot) this.state.table.delete(index);
        cache.free(cacheSlot);
        reject(this.readFailure(status, index, source.entry.generation, reason));
      });
    });
    this.inFlight.set(index, load);
    return load;
  }

  /**
   * Hand the pool a read of sub-blocks `subBlocks` of block `index`'s stored
   * copy into cacheSlot (Loading); sealed blocks are read whole (their tag
   * covers the whole block). A bad local copy served from a replica instead
   * is dropped before `done` runs.
   */
  private readSource(
    index: number,
    cacheSlot: number,
    source: BlockSource,
    subBlocks: number,
    done: (status: number, reason: string, whole: boolean) => void,
  ): void {
    const { cache, pool } = this.state.services;
    const { owner, entry, spilled } = source;
    const sealed = (entry.flags & ENTRY_SEALED) !== 0;
    pool.read({
      volumeId: owner,
      key: sealed ? this.state.key : null,
      cacheSlot,
      storeSlot: source.storeSlot,
      baseSlot: this.state.services.store.baseOf(source.storeSlot),
      generation: entry.generation,
      index,
      hashLo: entry.hashLo,
      hashHi: entry.hashHi,
      remote: source.remote,
      noRepair: spilled,
      subBlocks: sealed || subBlocks === cache.wholeMask ? undefined : subBlocks,
      done: (status, reason, localBad, whole) => {
        if (localBad && !spilled) this.dropBadLocalCopy(owner, index, entry.generation, reason);
        done(status, reason, !!whole);
      },
    });
  }

  private closing(index: number): IoError {
    return new IoError(
      'ESHUTDOWN',
      `volume ${this.state.name} is closing: block ${index} not read`,
    );
  }

  /** A failed read of block `index`, logged, as the error its reader gets. */
  private readFailure(status: number, index: number, generation: number, reason: string): Error {
    const { log, onChecksumError } = this.state.services;
    if (status === READ_CHECKSUM_MISMATCH || status === READ_OPEN_FAILED) {
      const what =
        status === READ_CHECKSUM_MISMATCH ? 'checksum mismatch' : 'authentication failed';
      log.error(
        { volume: this.state.name, block: index, generation, reason },
        `${what}: block not served`,
      );
      onChecksumError?.(this.state.name, index, reason);
      return new ChecksumError(
        this.state.name,
        index,
        `volume ${this.state.name} block ${index}: ${what}`,
      );
    }
    log.error({ volume: this.state.name, block: index, reason }, 'block read failed');
    return new IoError('EIO', `volume ${this.state.name} block ${index}: ${reason}`);
  }

  /**
   * Cluster: this node's copy of a block failed its check and a replica's
   * good one was served. Drop ours: a node holding a good copy finds this
   * node lacking it at its next rebalance run and puts it back (rewriting
   * the slot here, from a worker, could race with the slot's reuse).
   */
  private dropBadLocalCopy(owner: number, index: number, generation: number, reason: string): void {
    this.state.services.log.error(
      { volume: this.state.name, block: index, generation, reason },
      'local copy failed its checksum; served from a replica, dropping the bad copy for rebalance to replace',
    );
    this.state.services.onChecksumError?.(this.state.name, index, reason);
    this.state.services.store.release({ volumeId: owner, generation, index });
  }
}
