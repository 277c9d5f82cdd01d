/**
 * Volume: one block volume's live state on this node — its committed block
 * map, its blocks in the shared cache, and what changed since the last
 * commit — and the operations the NBD layer needs. This file is the cache
 * side (reads, writes, trims, status); storing and committing is the
 * write-back's (write-back.ts, dirty-blocks.ts, version-commit.ts), resizing
 * is volume-resize.ts's, and where blocks go is the placement's
 * (replication/block-placement.ts), the same code path on a single node and
 * on a cluster.
 *
 * Consistency model
 * - Reads see every write that completed before them, on any connection.
 * - A FLUSH (or a FUA write) is acknowledged once every write completed before
 *   it is durable: logged (single node, ../intent-log) or committed (cluster).
 * - A version is committed atomically (one compare-and-swap of the volume
 *   record); a crash before that leaves the previous version, complete.
 * - Writes that arrive while a flush runs are not blocked: a block being
 *   flushed is copied to a fresh cache slot first (copy-on-write) and belongs
 *   to the next version.
 * - Under cache pressure dirty blocks are *spilled*: written to the local
 *   store for the next version without a sync or a commit, so their cache
 *   slots can be reused. The next commit takes them with everything else and
 *   one fdatasync. A crash loses spilled blocks exactly as it loses cached
 *   ones (the start-up sweep frees them); it never exposes them.
 * - All store-writing work (spills and commits) runs one round at a time
 *   (WriteBackRounds); that serialisation is what the bookkeeping relies on.
 */
import { settleAll } from '../../common/settle-all.js';
import { assert } from '../../common/assert.js';
import { IoError } from '../../common/errors.js';
import { SlotState, type CacheOwner } from '../cache/block-cache.js';
import type { Extent, ReadViews } from '../nbd/export.js';
import { BlockLoads } from './block-loads.js';
import { loadViews, readViews, zeroBuffer } from './cache-views.js';
import { BlockMap } from './block-map.js';
import { loadCommittedMap } from './map-load.js';
import { type MapRoot } from '../../model/map-root.js';
import {
  VolumeState,
  type SpilledBlock,
  type VolumeIdentity,
  type VolumeServices,
} from './volume-state.js';
import { VolumeResize } from './volume-resize.js';
import { VolumeIntents, type FlushLog } from '../intent-log/volume-intents.js';
import {
  ReplicatedIntents,
  type ReplicatedIntentsSetup,
} from '../intent-log/replicated-intents.js';
import type { IntentState } from '../../model/intent-state.js';
import { WriteBackRounds } from './write-back.js';
import { PatchFolds } from './patch-folds.js';

export type { VolumeIdentity, VolumeServices } from './volume-state.js';

const DONE: Promise<void> = Promise.resolve();
/** Spill dirty blocks to the store once this share of the cache is dirty (until below DIRTY_LOW_WATER, write-back.ts). */
export const DIRTY_HIGH_WATER = 0.6;
/**
 * Commit on our own at the latest this long after data first became dirty,
 * so a client that never flushes loses at most this much on a crash — the
 * kernel's own dirty-page expiry is 30 s for the same reason.
 */
export const COMMIT_INTERVAL_MS = 30_000;
/** Most blocks one BLOCK_STATUS reply describes; clients ask again for the rest. */
const STATUS_BLOCK_LIMIT = 65_536;
/** Most blocks one CACHE request prefetches. */
const PREFETCH_LIMIT = 256;

export class Volume implements CacheOwner {
  readonly identity: VolumeIdentity;
  readonly id: number;
  readonly name: string;
  readonly blockSize: number;
  private readonly state: VolumeState;
  private readonly rounds: WriteBackRounds;
  private readonly resize: VolumeResize;
  // The state's collections and services, held here too: the cache paths use them on every request.
  private readonly services: VolumeServices;
  private readonly map: BlockMap;
  private readonly key: Uint8Array | null;
  private readonly table: Map<number, number>;
  private readonly dirty: Set<number>;
  private readonly pendingHoles: Set<number>;
  private readonly spilled: Map<number, SpilledBlock>;
  /** Cache misses and their fills (block-loads.ts). */
  private readonly blockLoads: BlockLoads;
  /** In-flight cache fills, by block index (the BlockLoads' own map). */
  private readonly loads: Map<number, Promise<void>>;
  /** Where the last read ended: a read starting there is sequential and its miss reads to the block's end. */
  private readCursor = -1;
  private commitTimer: NodeJS.Timeout | undefined;
  /** Patches rewritten whole once the volume is quiet (patch-folds.ts). */
  private readonly folds: PatchFolds;
  /** Reads and writes served: a fold waits for this to stand still. */
  private requests = 0;
  private closing = false;
  private closed = false;
  openSessions = 0;

  private constructor(state: VolumeState) {
    const { identity } = state;
    this.identity = identity;
    this.id = identity.id;
    this.name = identity.name;
    this.blockSize = identity.blockSize;
    this.state = state;
    this.rounds = new WriteBackRounds(state);
    this.resize = new VolumeResize(state, {
      openSessions: () => this.openSessions,
      writeZeros: (offset, length) => this.write(offset, zeroBuffer(length), false),
      dropBlock: (index) => this.dropBlock(index),
      flush: () => this.commit(),
    });
    this.services = state.services;
    this.map = state.map;
    this.key = state.key;
    this.table = state.table;
    this.dirty = state.dirty;
    this.pendingHoles = state.pendingHoles;
    this.spilled = state.spilled;
    this.blockLoads = new BlockLoads(state, this, () => this.waitForCacheSpace());
    this.loads = this.blockLoads.inFlight;
    state.services.cache.addOwner(this);
    state.intents = state.services.intentLog && new VolumeIntents(state, this);
    state.completeBlocks = (indices) => this.blockLoads.completeAll(indices);
    state.isCompleting = (index) => this.blockLoads.isCompleting(index);
    this.folds = new PatchFolds(state, {
      loaded: (index) => this.blockLoads.loaded(index),
      requests: () => this.requests,
      commit: () => this.commit(),
      closed: () => this.closing,
    });
  }

  /**
   * Load a committed version: read and verify every map page, top down (a
   * page missing here comes from a peer). `mapHeight`: the height of the
   * tree `root` tops, as the record says (absent: the height the size needs).
   */
  static async open(
    identity: VolumeIdentity,
    generation: number,
    root: MapRoot | undefined,
    key: Uint8Array | null,
    services: VolumeServices,
    mapHeight?: number,
  ): Promise<Volume> {
    const { store } = services;
    if (store.blockSize !== identity.blockSize) {
      throw new Error(
        `volume ${identity.name} has block size ${identity.blockSize}, the store ${store.blockSize}`,
      );
    }
    const blockCount = Math.ceil(identity.size / identity.blockSize);
    const map = new BlockMap(
      identity.id,
      identity.blockSize,
      blockCount,
      root,
      mapHeight,
      identity.ancestors,
    );
    const state = new VolumeState(identity, generation, map, key, services);
    if (root) await loadCommittedMap(map, root, identity.name, store, state.placement);
    return new Volume(state);
  }

  /** The volume's size now: sessions opened from now on get it (an open one keeps its own). */
  get size(): number {
    return this.identity.size;
  }

  get blockCount(): number {
    return Math.ceil(this.identity.size / this.blockSize);
  }

  get committedGeneration(): number {
    return this.state.generation;
  }

  get dirtyBlocks(): number {
    return this.dirty.size;
  }

  /**
   * The committed version's map, for GC: read it synchronously (a commit
   * replaces its pages in place once the version lands).
   */
  get committedMap(): BlockMap {
    return this.map;
  }

  /** Refs the committed version holds, for the store's sweep of unreferenced blocks. */
  referencedRefs() {
    return this.map.referencedRefs();
  }

  evicted(index: number, slot: number): void {
    if (this.table.get(index) === slot) this.table.delete(index);
  }

  // ---------------------------------------------------------------- reads

  read(offset: number, dest: Buffer): Promise<void> {
    this.requests++;
    const bs = this.blockSize;
    const { cache } = this.services;
    let pending: Promise<void>[] | undefined;
    let done = 0;
    const sequential = offset === this.readCursor;
    this.readCursor = offset + dest.length;
    while (done < dest.length) {
      const position = offset + done;
      const index = Math.floor(position / bs);
      const within = position - index * bs;
      const n = Math.min(bs - within, dest.length - done);
      const slot = this.table.get(index);
      if (
        slot !== undefined &&
        cache.state[slot] !== SlotState.Loading &&
        cache.covers(slot, cache.maskOf(within, n))
      ) {
        cache.view(slot).copy(dest, done, within, within + n);
        cache.touch(slot);
        cache.hits++;
      } else if (slot === undefined && this.state.isHole(index)) {
        dest.fill(0, done, done + n);
      } else {
        (pending ??= []).push(this.readSlow(index, within, dest, done, n, sequential));
      }
      done += n;
    }
    this.blockLoads.readAhead.note(offset, dest.length); // after this read's own misses: they go first
    // settleAll, not Promise.all: dest goes back to the session's pool once this settles.
    return pending ? settleAll(pending) : DONE;
  }

  /** Zero copy when every block of the range is cached or a hole (cache-views.ts). */
  readViews(offset: number, length: number): ReadViews | undefined {
    this.requests++;
    return readViews(this.state, this.blockLoads, offset, length);
  }

  /** Zero copy once what is missing is loaded (cache-views.ts). */
  loadViews(offset: number, length: number): Promise<ReadViews | undefined> {
    const sequential = offset === this.readCursor;
    this.readCursor = offset + length;
    return loadViews(this.state, this.blockLoads, offset, length, sequential);
  }

  private async readSlow(
    index: number,
    within: number,
    dest: Buffer,
    destOffset: number,
    n: number,
    sequential: boolean,
  ): Promise<void> {
    // A sequential reader will want the rest of the block next: read it now, in the same task.
    const slot = await this.blockLoads.loaded(
      index,
      within,
      sequential ? this.blockSize - within : n,
    );
    if (slot < 0) dest.fill(0, destOffset, destOffset + n);
    else this.services.cache.view(slot).copy(dest, destOffset, within, within + n);
  }

  // --------------------------------------------------------------- writes

  write(offset: number, data: Buffer, fua: boolean): Promise<void> {
    this.requests++;
    const bs = this.blockSize;
    let pending: Promise<void>[] | undefined;
    let done = 0;
    while (done < data.length) {
      const position = offset + done;
      const index = Math.floor(position / bs);
      const within = position - index * bs;
      const n = Math.min(bs - within, data.length - done);
      if (!this.writeFast(index, within, data, done, n)) {
        (pending ??= []).push(this.writeSlow(index, within, data, done, n));
      }
      done += n;
    }
    this.afterWrite();
    // settleAll, not Promise.all: the payload goes back to the session's pool once this settles.
    if (pending) return settleAll(pending).then(() => this.written(offset, data.length, fua));
    return this.written(offset, data.length, fua);
  }

  /** A write completed: noted for the intent log only now (a flush before need not log it, and must not drop its range). */
  private written(offset: number, length: number, fua: boolean): Promise<void> {
    this.state.intents?.noteWrite(offset, length);
    return fua ? this.flush() : DONE;
  }

  /**
   * Copy into the cache if that needs no waiting; false if it must wait.
   * A write of whole 4 KiB sub-blocks needs nothing of the block's stored
   * copy: into a block not in the cache, or one partly loaded or written,
   * it marks just those sub-blocks valid, and the rest is read when the
   * whole block is needed (BlockLoads.complete()). Any other write to a
   * stored block reads the rest of it first (writeSlow).
   */
  private writeFast(index: number, within: number, data: Buffer, from: number, n: number): boolean {
    const { cache } = this.services;
    let slot = this.table.get(index);
    if (slot !== undefined) {
      let state = cache.state[slot];
      if (state === SlotState.Loading) return false;
      if (state !== SlotState.Dirty && !cache.mayDirty()) return false;
      if (state === SlotState.Flushing) {
        // The flush is reading this slot: give the new data a slot of its own.
        const copy = cache.acquire(this, index, SlotState.Dirty);
        if (copy < 0) return false;
        cache.view(slot).copy(cache.view(copy));
        cache.setValid(copy, cache.validMask(slot)); // a patch being stored holds part of its block
        this.table.set(index, copy);
        // Dirty from now on, even if this write must wait (below): should the flush fail,
        // this copy is all that holds what it was writing.
        this.dirty.add(index);
        slot = copy;
        state = SlotState.Dirty;
      }
      if (!cache.isWhole(slot)) {
        // Partly loaded (Clean) or partly written (Dirty): only whole sub-blocks go in as they are.
        const covered = cache.wholeSubBlocksOf(within, n);
        if (covered === 0) return false;
        if (state === SlotState.Clean) cache.setState(slot, SlotState.Dirty);
        cache.setValid(slot, (cache.validMask(slot) | covered) >>> 0);
        return this.copyIn(index, slot, within, data, from, n);
      }
      if (state === SlotState.Clean) {
        cache.setState(slot, SlotState.Dirty);
      }
    } else {
      const whole = within === 0 && n === this.blockSize;
      const hole = this.state.isHole(index);
      // A stored block written in whole sub-blocks: the slot holds just those.
      const covered = whole || hole ? 0 : cache.wholeSubBlocksOf(within, n);
      if (!whole && !hole && covered === 0) return false; // read-modify-write of a stored block
      if (!cache.mayDirty()) return false;
      // Part of a hole: the rest of the block is zeros.
      slot =
        whole || !hole
          ? cache.acquire(this, index, SlotState.Dirty)
          : cache.acquireZeroed(this, index);
      if (slot < 0) return false;
      this.table.set(index, slot);
      if (covered !== 0) cache.setValid(slot, covered);
    }
    return this.copyIn(index, slot, within, data, from, n);
  }

  private copyIn(
    index: number,
    slot: number,
    within: number,
    data: Buffer,
    from: number,
    n: number,
  ): true {
    const { cache } = this.services;
    data.copy(cache.view(slot), within, from, from + n);
    cache.touch(slot);
    this.dirty.add(index);
    this.pendingHoles.delete(index);
    return true;
  }

  private async writeSlow(
    index: number,
    within: number,
    data: Buffer,
    from: number,
    n: number,
  ): Promise<void> {
    for (;;) {
      const slot = this.table.get(index);
      if (
        slot === undefined &&
        !(within === 0 && n === this.blockSize) &&
        !this.state.isHole(index)
      ) {
        await this.blockLoads.loaded(index); // bring the stored block in, then modify it
      } else if (slot !== undefined && this.services.cache.state[slot] === SlotState.Loading) {
        await this.loads.get(index);
      } else if (slot !== undefined && !this.services.cache.isWhole(slot)) {
        await this.blockLoads.loaded(index); // the rest of a partly loaded or written block, then modify it
      }
      if (this.writeFast(index, within, data, from, n)) return;
      await this.waitForDirtyRoom();
    }
  }

  /**
   * A read found every cache slot dirty, loading or pinned: wait for one.
   * Writes leave reads a share of the cache (BlockCache.mayDirty), so this
   * waits on other reads' loads and on write-back, never on a full store.
   */
  private async waitForCacheSpace(): Promise<void> {
    const { cache } = this.services;
    if (cache.freeSlots > 0) return;
    cache.pressure();
    await cache.whenSlotFreed();
  }

  /**
   * A write may dirty no more of the cache: write back and wait. If
   * write-back is failing (a full store), fail the write rather than wait
   * forever; reads go on meanwhile.
   */
  private async waitForDirtyRoom(): Promise<void> {
    const { cache } = this.services;
    if (cache.mayDirty() && cache.freeSlots > 0) return;
    const failure = this.rounds.failure;
    if (failure) throw failure;
    cache.pressure();
    await cache.whenSlotFreed();
  }

  private afterWrite(): void {
    const { cache } = this.services;
    this.folds.noteWrite();
    if (cache.dirtySlots > cache.slotCount * DIRTY_HIGH_WATER) cache.pressure();
    if (!this.commitTimer && this.dirty.size > 0) {
      this.commitTimer = setTimeout(() => {
        this.commitTimer = undefined;
        if (!this.closed) {
          this.commit().catch((err) =>
            this.services.log.warn(
              { volume: this.name, err: String(err) },
              'periodic commit failed; the data stays cached and is retried',
            ),
          );
        }
      }, COMMIT_INTERVAL_MS);
      this.commitTimer.unref();
    }
  }

  /** Cache pressure (from the cache, on behalf of any volume): spill dirty blocks. */
  writeBack(): void {
    if (this.closed || this.dirty.size === 0) return;
    this.rounds.spill();
  }

  // ------------------------------------------------------ trims and zeroes

  /** Trim and write-zeroes: whole blocks become holes, partial ones get zeros. */
  async zeroRange(offset: number, length: number, fua: boolean): Promise<void> {
    const bs = this.blockSize;
    const end = offset + length;
    const firstWhole = Math.ceil(offset / bs);
    const endWhole = Math.floor(end / bs);
    const partial: Promise<void>[] = [];
    if (firstWhole >= endWhole) {
      partial.push(this.write(offset, zeroBuffer(length), false));
    } else {
      if (offset < firstWhole * bs)
        partial.push(this.write(offset, zeroBuffer(firstWhole * bs - offset), false));
      if (endWhole * bs < end)
        partial.push(this.write(endWhole * bs, zeroBuffer(end - endWhole * bs), false));
      for (let index = firstWhole; index < endWhole; index++) await this.dropBlock(index);
      this.state.intents?.noteZeros(firstWhole * bs, (endWhole - firstWhole) * bs);
    }
    await Promise.all(partial);
    if (fua) await this.flush();
  }

  private async dropBlock(index: number): Promise<void> {
    const { cache } = this.services;
    let slot = this.table.get(index);
    while (slot !== undefined && cache.state[slot] === SlotState.Loading) {
      await this.loads.get(index)?.catch(() => undefined);
      slot = this.table.get(index);
    }
    if (slot !== undefined) {
      this.table.delete(index);
      // A flushing slot is freed by its flush once it sees the table moved on.
      if (cache.state[slot] !== SlotState.Flushing) cache.free(slot);
    }
    this.dirty.delete(index);
    if (this.spilled.delete(index)) this.rounds.dropSpilled(index);
    if (this.map.isPresent(index)) this.pendingHoles.add(index);
  }

  // ---------------------------------------------------------------- flush

  /** Resolves once every write completed before the call is durable: logged (intent log) or committed. */
  flush(): Promise<void> {
    return this.commit(this.state.intents);
  }

  /** Resolves once every write completed before the call is committed (snapshots, clones, close read that); logged in `log`. */
  commit(log?: FlushLog): Promise<void> {
    if (this.closed)
      return Promise.reject(new IoError('ESHUTDOWN', `volume ${this.name} is closed`));
    return log ? log.flush() : this.rounds.flush();
  }

  /**
   * From now on a FLUSH is made durable on the replicated intent log's
   * holders instead of by a commit (a cluster writer, once it has taken the
   * volume over: node/intent-takeover.ts). `opened`: what the record of the
   * version opened says of the log. The next commit names the new holders.
   */
  replicateFlushes(setup: ReplicatedIntentsSetup, opened: IntentState | undefined): void {
    assert(!this.state.intents, `volume ${this.name} already has a fast FLUSH`);
    this.state.intents = new ReplicatedIntents(this.state, this, setup, opened);
  }

  /**
   * A writer that commits every FLUSH took the volume over at lock epoch
   * `token` and replayed the records the record did not hold: its next
   * commit (forced, even with no block changed) says it holds every record
   * below `token` and names no holders, so no later writer replays them
   * again over newer data (node/intent-replication.ts).
   */
  holdIntentsBelow(token: number): void {
    assert(!this.state.intents, `volume ${this.name} logs its FLUSHes: its log moves the bound`);
    this.state.intentState = { epoch: token, seq: 1, holders: [] };
    this.state.intentPending = true;
  }

  // --------------------------------------------------------------- resize

  /**
   * Grow to `size` bytes: metadata only; sessions opened from now on see the
   * new size, open ones keep theirs (volume-resize.ts).
   */
  grow(size: number): void {
    this.resize.grow(size);
  }

  /**
   * Shrink to `size` bytes: refused while sessions are open; the tail becomes
   * holes and zeros, committed; on failure the old size is back
   * (volume-resize.ts).
   */
  shrink(size: number): Promise<void> {
    return this.resize.shrink(size);
  }

  // ------------------------------------------------------- status, prefetch

  blockStatus(offset: number, length: number): Extent[] {
    const bs = this.blockSize;
    const extents: Extent[] = [];
    const end = Math.min(offset + length, this.size, offset + STATUS_BLOCK_LIMIT * bs);
    let position = offset;
    while (position < end) {
      const index = Math.floor(position / bs);
      const blockEnd = Math.min((index + 1) * bs, end);
      const hole = !this.table.has(index) && this.state.isHole(index);
      const flags = hole ? 3 : 0; // NBD_STATE_HOLE | NBD_STATE_ZERO
      const last = extents[extents.length - 1];
      if (last && last.flags === flags) last.length += blockEnd - position;
      else extents.push({ length: blockEnd - position, flags });
      position = blockEnd;
    }
    return extents;
  }

  async prefetch(offset: number, length: number): Promise<void> {
    const first = Math.floor(offset / this.blockSize);
    const last = Math.min(Math.ceil((offset + length) / this.blockSize), first + PREFETCH_LIMIT);
    const loads: Promise<number>[] = [];
    for (let index = first; index < last; index++) loads.push(this.blockLoads.loaded(index));
    await Promise.all(loads);
  }

  /** Rewrite the committed patches whole now, busy or not (patch-folds.ts; on its own once quiet): how many. */
  foldPatches(): Promise<number> {
    return this.folds.foldAll();
  }

  /** Flush what is dirty, then drop this volume's cache slots. */
  async close(): Promise<void> {
    if (this.closed) return;
    if (this.commitTimer) clearTimeout(this.commitTimer);
    this.closing = true;
    await this.folds.stop();
    await this.commit();
    this.state.intents?.close();
    this.closed = true;
    this.rounds.dispose();
    // Fills still in flight (read-ahead past a reader's last request, a prefetch) own their slots until they answer.
    await this.blockLoads.stop();
    const { cache } = this.services;
    cache.removeOwner(this);
    for (const slot of this.table.values()) {
      assert(cache.state[slot] !== SlotState.Loading, 'a closing volume frees a slot being filled');
      cache.free(slot);
    }
    this.table.clear();
  }
}
