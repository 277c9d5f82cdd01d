/**
 * Volume: one block volume's live state on this node — its committed block
 * map, its blocks in the shared cache, and what changed since the last
 * commit — and the operations the NBD layer needs.
 *
 * Consistency model
 * - Reads see every write that completed before them, on any connection.
 * - A FLUSH (or a FUA write) commits a new version: it waits until every write
 *   that completed before it is stored, synced, and the version's root is
 *   committed to metadata. Only then is it acknowledged.
 * - A version is committed atomically (one compare-and-swap of the volume
 *   record); a crash before that leaves the previous version, complete.
 * - Writes that arrive while a flush runs are not blocked: a block being
 *   flushed is copied to a fresh cache slot first (copy-on-write) and belongs
 *   to the next version.
 * - Under cache pressure dirty blocks are *spilled*: written to the local
 *   store for the next version without a sync or a commit, so their cache
 *   slots can be reused. The next FLUSH commits them with everything else and
 *   one fdatasync. A crash loses spilled blocks exactly as it loses cached
 *   ones (the start-up sweep frees them); it never exposes them.
 * - All store-writing work (spills and commits) runs one round at a time in
 *   runRounds(); that serialisation is what the bookkeeping below relies on.
 */
import { ChecksumError, IoError, StoreFullError } from '../../common/errors.js';
import type { Logger } from '../../common/log.js';
import { RECORD_MAP_PAGE } from '../blocks/record.js';
import type { LocalSlotStore } from '../blocks/slot-store.js';
import { BlockCache, SlotState, type CacheOwner } from '../cache/block-cache.js';
import { BATCH, type DataPool, type ReadRemote, type WriteRemote } from '../pool/data-pool.js';
import type { ClusterBlocks } from '../replication/cluster-blocks.js';
import { MAX_TARGETS } from '../replication/placement.js';
import { READ_CHECKSUM_MISMATCH, READ_OK, READ_OPEN_FAILED } from '../pool/tasks.js';
import type { BlockRef } from '../blocks/ref.js';
import type { Extent, ReadViews } from '../nbd/export.js';
import { BlockMap, ENTRY_SEALED, pageIndex, type MapRoot } from './block-map.js';

export interface VolumeIdentity {
  id: number;
  name: string;
  size: number;
  blockSize: number;
  encrypted: boolean;
}

export interface VolumeServices {
  store: LocalSlotStore;
  cache: BlockCache;
  pool: DataPool;
  log: Logger;
  /** On a cluster: placement and peers. Absent on a single node (every block is local). */
  cluster?: ClusterBlocks;
  /** Commit a version's root to metadata (compare-and-swap on the previous generation). */
  commit(volume: VolumeIdentity, generation: number, root: MapRoot | undefined): Promise<void>;
  onChecksumError?(volume: string, block: number, reason: string): void;
  onFlush?(volume: string, blocks: number, seconds: number): void;
}

const DONE: Promise<void> = Promise.resolve();
/** Spill dirty blocks to the store once this share of the cache is dirty… */
export const DIRTY_HIGH_WATER = 0.6;
/** …and keep spilling until it is below this. */
const DIRTY_LOW_WATER = 0.4;
/** Most blocks one spill round writes, so a FLUSH never waits long behind one. */
const SPILL_ROUND_BLOCKS = 1024;
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

interface SpilledBlock {
  hashLo: number;
  hashHi: number;
  /** Cluster: whether this node's store has a copy, and which peers stored one. */
  local?: boolean;
  peers?: string[];
}

interface FlushWaiter {
  ticket: number;
  resolve(): void;
  reject(err: unknown): void;
}

export class Volume implements CacheOwner {
  readonly id: number;
  readonly name: string;
  readonly size: number;
  readonly blockSize: number;
  readonly blockCount: number;
  private generation: number;
  private readonly map: BlockMap;
  /** Block index → cache slot, for blocks of this volume in the cache. */
  private readonly table = new Map<number, number>();
  /** Blocks written since the last flush started. */
  private readonly dirty = new Set<number>();
  /** Whole blocks trimmed or zeroed since the last commit started. */
  private readonly pendingHoles = new Set<number>();
  /**
   * Blocks spilled to the store for the next version (generation + 1) and not
   * yet committed: their hashes, by index. Never holds an index that is also
   * in pendingHoles.
   */
  private readonly spilled = new Map<number, SpilledBlock>();
  /** Spilled blocks dropped while a round ran: released once it is over (see releaseOrphans). */
  private orphans: BlockRef[] = [];
  private roundRunning = false;
  private spillRequested = false;
  /** In-flight cache fills, by block index. */
  private readonly loads = new Map<number, Promise<void>>();
  private flushTicket = 0;
  private flushedTicket = 0;
  private flushWaiters: FlushWaiter[] = [];
  private flushLoop: Promise<void> | undefined;
  private commitTimer: NodeJS.Timeout | undefined;
  /** Why the last round failed, until one succeeds: writers waiting for cache space see it. */
  private flushFailure: unknown;
  private closed = false;
  openSessions = 0;

  private constructor(
    readonly identity: VolumeIdentity,
    generation: number,
    map: BlockMap,
    private readonly key: Uint8Array | null,
    private readonly services: VolumeServices,
  ) {
    this.id = identity.id;
    this.name = identity.name;
    this.size = identity.size;
    this.blockSize = identity.blockSize;
    this.blockCount = Math.ceil(identity.size / identity.blockSize);
    this.generation = generation;
    this.map = map;
    services.cache.addOwner(this);
  }

  /** Load a committed version: read and verify every map page, top down. */
  static async open(identity: VolumeIdentity, generation: number, root: MapRoot | undefined, key: Uint8Array | null, services: VolumeServices): Promise<Volume> {
    const { store } = services;
    if (store.blockSize !== identity.blockSize) {
      throw new Error(`volume ${identity.name} has block size ${identity.blockSize}, the store ${store.blockSize}`);
    }
    const blockCount = Math.ceil(identity.size / identity.blockSize);
    const map = new BlockMap(identity.id, identity.blockSize, blockCount, root);
    if (root) {
      const page = Buffer.allocUnsafe(identity.blockSize);
      const loadPage = async (level: number, pageNo: number, generation: number, hashLo: number, hashHi: number) => {
        const slot = store.lookup(identity.id, generation, pageIndex(level, pageNo));
        if (slot === undefined) {
          if (!services.cluster) throw new IoError('EIO', `volume ${identity.name}: map page ${level}/${pageNo} (gen ${generation}) missing from the local store`);
          await services.cluster.getBlock({ volumeId: identity.id, generation, index: pageIndex(level, pageNo) }, hashLo, hashHi, page);
        }
        const digest = slot === undefined ? { lo: hashLo, hi: hashHi } : await store.readBlock(slot, page);
        if (digest.lo !== hashLo || digest.hi !== hashHi) {
          throw new ChecksumError(identity.name, -1, `volume ${identity.name}: map page ${level}/${pageNo} fails its checksum`);
        }
        const words = new Uint32Array(identity.blockSize / 4);
        new Uint8Array(words.buffer).set(page);
        map.installPage(level, pageNo, words);
      };
      await loadPage(map.height - 1, 0, root.generation, root.hashLo, root.hashHi);
      for (let level = map.height - 1; level > 0; level--) {
        for (const child of map.childPages(level)) {
          const entry = map.entryWords(level, child)!;
          await loadPage(level - 1, child, entry[0], entry[2], entry[3]);
        }
      }
    }
    return new Volume(identity, generation, map, key, services);
  }

  get committedGeneration(): number {
    return this.generation;
  }

  get dirtyBlocks(): number {
    return this.dirty.size;
  }

  /** Refs the committed version holds, for the store's sweep of unreferenced blocks. */
  referencedRefs() {
    return this.map.referencedRefs();
  }

  evicted(index: number, slot: number): void {
    if (this.table.get(index) === slot) this.table.delete(index);
  }

  /** Does the block read as zeros, going by what is not in the cache? */
  private isHole(index: number): boolean {
    return this.pendingHoles.has(index) || (!this.spilled.has(index) && !this.map.isPresent(index));
  }

  // ---------------------------------------------------------------- reads

  read(offset: number, dest: Buffer): Promise<void> {
    const bs = this.blockSize;
    const { cache } = this.services;
    let pending: Promise<void>[] | undefined;
    let done = 0;
    while (done < dest.length) {
      const position = offset + done;
      const index = Math.floor(position / bs);
      const within = position - index * bs;
      const n = Math.min(bs - within, dest.length - done);
      const slot = this.table.get(index);
      if (slot !== undefined && cache.state[slot] !== SlotState.Loading) {
        cache.view(slot).copy(dest, done, within, within + n);
        cache.touch(slot);
        cache.hits++;
      } else if (slot === undefined && this.isHole(index)) {
        dest.fill(0, done, done + n);
      } else {
        (pending ??= []).push(this.readSlow(index, within, dest, done, n));
      }
      done += n;
    }
    return pending ? Promise.all(pending).then(() => undefined) : DONE;
  }

  /**
   * Zero-copy read when every block of the range is cached or a hole: views
   * of the cache slots, pinned until release() (see NbdExport.readViews). The
   * bytes of a pinned slot may still be overwritten by a concurrent write
   * (as any overlapping requests may race), but the slot is never reused for
   * another block while pinned.
   */
  readViews(offset: number, length: number): ReadViews | undefined {
    const bs = this.blockSize;
    const { cache } = this.services;
    const end = offset + length;
    for (let position = offset; position < end; position = (Math.floor(position / bs) + 1) * bs) {
      const index = Math.floor(position / bs);
      const slot = this.table.get(index);
      if (slot === undefined ? !this.isHole(index) : cache.state[slot] === SlotState.Loading) return undefined;
    }
    const buffers: Buffer[] = [];
    const pinned: number[] = [];
    for (let position = offset; position < end; ) {
      const index = Math.floor(position / bs);
      const within = position - index * bs;
      const n = Math.min(bs - within, end - position);
      const slot = this.table.get(index);
      if (slot === undefined) {
        buffers.push(zeroBuffer(n));
      } else {
        cache.pin(slot);
        pinned.push(slot);
        cache.touch(slot);
        cache.hits++;
        buffers.push(cache.view(slot).subarray(within, within + n));
      }
      position += n;
    }
    return {
      buffers,
      release: () => {
        for (const slot of pinned) cache.unpin(slot);
      },
    };
  }

  private async readSlow(index: number, within: number, dest: Buffer, destOffset: number, n: number): Promise<void> {
    const slot = await this.loaded(index);
    if (slot < 0) dest.fill(0, destOffset, destOffset + n);
    else this.services.cache.view(slot).copy(dest, destOffset, within, within + n);
  }

  /**
   * A cache slot holding the current data of block `index`, or -1 if the block
   * is a hole. When this resolves the slot is valid until the caller yields.
   */
  private async loaded(index: number): Promise<number> {
    const { cache, store, pool } = this.services;
    for (;;) {
      const slot = this.table.get(index);
      if (slot !== undefined) {
        if (cache.state[slot] !== SlotState.Loading) return slot;
        await this.loads.get(index);
        continue;
      }
      if (this.isHole(index)) return -1;
      const spilled = this.spilled.get(index);
      const entry = spilled
        ? { generation: this.generation + 1, flags: this.key ? ENTRY_SEALED : 0, hashLo: spilled.hashLo, hashHi: spilled.hashHi }
        : this.map.lookup(index)!;
      const cluster = this.services.cluster;
      let remote: ReadRemote | undefined;
      if (cluster) {
        const candidates = cluster.placement.readCandidates(this.id, index).remote;
        if (candidates.length > 0) remote = { identity: cluster.placement.identity, peers: cluster.placement.peers, candidates };
      }
      const storeSlot = store.lookup(this.id, entry.generation, index) ?? -1;
      if (storeSlot < 0 && !remote) {
        throw new IoError('EIO', `volume ${this.name}: block ${index} (gen ${entry.generation}) is missing from the local store`);
      }
      const cacheSlot = cache.acquire(this, index, SlotState.Loading);
      if (cacheSlot < 0) {
        await this.waitForCacheSpace();
        continue;
      }
      cache.misses++;
      this.table.set(index, cacheSlot);
      const load = new Promise<void>((resolve, reject) => {
        pool.read({
          volumeId: this.id,
          key: entry.flags & ENTRY_SEALED ? this.key : null,
          cacheSlot,
          storeSlot,
          generation: entry.generation,
          index,
          hashLo: entry.hashLo,
          hashHi: entry.hashHi,
          remote,
          done: (status, reason, localBad) => {
            this.loads.delete(index);
            if (localBad && !spilled) this.dropBadLocalCopy(index, entry.generation, reason);
            if (status === READ_OK) {
              cache.setState(cacheSlot, SlotState.Clean);
              resolve();
              return;
            }
            if (this.table.get(index) === cacheSlot) this.table.delete(index);
            cache.free(cacheSlot);
            if (status === READ_CHECKSUM_MISMATCH || status === READ_OPEN_FAILED) {
              const what = status === READ_CHECKSUM_MISMATCH ? 'checksum mismatch' : 'authentication failed';
              this.services.log.error({ volume: this.name, block: index, generation: entry.generation, reason }, `${what}: block not served`);
              this.services.onChecksumError?.(this.name, index, reason);
              reject(new ChecksumError(this.name, index, `volume ${this.name} block ${index}: ${what}`));
            } else {
              this.services.log.error({ volume: this.name, block: index, reason }, 'block read failed');
              reject(new IoError('EIO', `volume ${this.name} block ${index}: ${reason}`));
            }
          },
        });
      });
      this.loads.set(index, load);
      await load;
      return cacheSlot;
    }
  }

  // --------------------------------------------------------------- writes

  write(offset: number, data: Buffer, fua: boolean): Promise<void> {
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
    if (fua) return pending ? Promise.all(pending).then(() => this.flush()) : this.flush();
    return pending ? Promise.all(pending).then(() => undefined) : DONE;
  }

  /** Copy into the cache if that needs no waiting; false if it must wait. */
  private writeFast(index: number, within: number, data: Buffer, from: number, n: number): boolean {
    const { cache } = this.services;
    let slot = this.table.get(index);
    if (slot !== undefined) {
      const state = cache.state[slot];
      if (state === SlotState.Loading) return false;
      if (state === SlotState.Flushing) {
        // The flush is reading this slot: give the new data a slot of its own.
        const copy = cache.acquire(this, index, SlotState.Dirty);
        if (copy < 0) return false;
        cache.view(slot).copy(cache.view(copy));
        this.table.set(index, copy);
        slot = copy;
      } else if (state === SlotState.Clean) {
        cache.setState(slot, SlotState.Dirty);
      }
    } else {
      const whole = within === 0 && n === this.blockSize;
      const hole = this.isHole(index);
      if (!whole && !hole) return false; // read-modify-write of a stored block
      slot = cache.acquire(this, index, SlotState.Dirty);
      if (slot < 0) return false;
      this.table.set(index, slot);
      if (!whole) cache.view(slot).fill(0);
    }
    data.copy(cache.view(slot), within, from, from + n);
    cache.touch(slot);
    this.dirty.add(index);
    this.pendingHoles.delete(index);
    return true;
  }

  private async writeSlow(index: number, within: number, data: Buffer, from: number, n: number): Promise<void> {
    for (;;) {
      const slot = this.table.get(index);
      if (slot === undefined && !(within === 0 && n === this.blockSize) && !this.isHole(index)) {
        await this.loaded(index); // bring the stored block in, then modify it
      } else if (slot !== undefined && this.services.cache.state[slot] === SlotState.Loading) {
        await this.loads.get(index);
      }
      if (this.writeFast(index, within, data, from, n)) return;
      await this.waitForCacheSpace();
    }
  }

  /**
   * Every cache slot is dirty or busy: write back and wait. If write-back
   * itself fails (a full store), fail the request rather than wait forever.
   */
  private async waitForCacheSpace(): Promise<void> {
    const { cache } = this.services;
    if (cache.freeSlots > 0) return;
    if (this.flushFailure && !this.flushLoop) throw this.flushFailure;
    cache.pressure();
    await cache.whenSlotFreed();
  }

  private afterWrite(): void {
    const { cache } = this.services;
    if (cache.dirtySlots > cache.slotCount * DIRTY_HIGH_WATER) cache.pressure();
    if (!this.commitTimer && this.dirty.size > 0) {
      this.commitTimer = setTimeout(() => {
        this.commitTimer = undefined;
        if (!this.closed) {
          this.flush().catch((err) => this.services.log.warn({ volume: this.name, err: String(err) }, 'periodic commit failed; the data stays cached and is retried'));
        }
      }, COMMIT_INTERVAL_MS);
      this.commitTimer.unref();
    }
  }

  /** Cache pressure (from the cache, on behalf of any volume): spill dirty blocks. */
  writeBack(): void {
    if (this.closed || this.dirty.size === 0) return;
    this.spillRequested = true;
    this.flushLoop ??= this.runRounds();
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
      if (offset < firstWhole * bs) partial.push(this.write(offset, zeroBuffer(firstWhole * bs - offset), false));
      if (endWhole * bs < end) partial.push(this.write(endWhole * bs, zeroBuffer(end - endWhole * bs), false));
      for (let index = firstWhole; index < endWhole; index++) await this.dropBlock(index);
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
    if (this.spilled.delete(index)) {
      const ref = { volumeId: this.id, generation: this.generation + 1, index };
      // A commit running now may be writing this entry into the new version.
      if (this.roundRunning) this.orphans.push(ref);
      else this.services.store.release(ref);
    }
    if (this.map.isPresent(index)) this.pendingHoles.add(index);
  }

  // ---------------------------------------------------------------- flush

  /** Resolves once every write completed before the call is committed. */
  flush(): Promise<void> {
    if (this.closed) return Promise.reject(new IoError('ESHUTDOWN', `volume ${this.name} is closed`));
    const ticket = ++this.flushTicket;
    const waiter = new Promise<void>((resolve, reject) => this.flushWaiters.push({ ticket, resolve, reject }));
    this.flushLoop ??= this.runRounds();
    return waiter;
  }

  /** One round at a time: commits (someone waits) before spills (memory waits). */
  private async runRounds(): Promise<void> {
    for (;;) {
      if (this.flushedTicket < this.flushTicket) {
        const covering = this.flushTicket;
        const failure = await this.round(() => this.commitOnce());
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
        if (failure) this.services.log.warn({ volume: this.name, err: String(failure) }, 'spilling dirty blocks failed; they stay cached');
        const { cache } = this.services;
        if (!failure && spilled > 0 && cache.dirtySlots > cache.slotCount * DIRTY_LOW_WATER) this.spillRequested = true;
      } else {
        break;
      }
    }
    this.flushLoop = undefined;
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
    this.flushFailure = failure;
    // Writers waiting for cache space must hear about a failure, or retry.
    this.services.cache.wakeWaiters();
    return failure;
  }

  /** Release spilled blocks dropped during a round, unless the round committed them. */
  private releaseOrphans(): void {
    if (this.orphans.length === 0) return;
    const orphans = this.orphans;
    this.orphans = [];
    for (const ref of orphans) {
      if (this.map.lookup(ref.index)?.generation === ref.generation) continue; // now part of the committed version
      if (ref.generation === this.generation + 1 && this.spilled.has(ref.index)) continue; // spilled again since
      this.services.store.release(ref);
    }
  }

  /** Spill up to one round's worth of dirty blocks; returns how many. */
  private async spillOnce(): Promise<number> {
    const indices: number[] = [];
    for (const index of this.dirty) {
      indices.push(index);
      if (indices.length === SPILL_ROUND_BLOCKS) break;
    }
    await this.writeDirty(indices);
    return indices.length;
  }

  /**
   * Store the given dirty blocks for the next version (no sync): afterwards
   * they are in `spilled` (or holes, if all zeros) and their cache slots clean.
   * On failure they are dirty again and nothing was recorded.
   */
  private async writeDirty(indices: number[]): Promise<void> {
    if (indices.length === 0) return;
    const { cache, store, pool } = this.services;
    const generation = this.generation + 1;
    const cacheSlots = indices.map((index) => this.table.get(index)!);
    for (const index of indices) this.dirty.delete(index);
    for (const slot of cacheSlots) cache.setState(slot, SlotState.Flushing);
    const storeSlots: number[] = [];
    const cluster = this.services.cluster;
    let remote: WriteRemote | undefined;
    let results;
    try {
      if (cluster) {
        // Targets and the peer table they index are taken together, in one tick.
        remote = { identity: cluster.placement.identity, peers: cluster.placement.peers, targets: [] };
        for (const index of indices) {
          const where = cluster.placement.writeTargets(this.id, index);
          storeSlots.push(where.local ? allocateUnlessFull(store) : -1);
          remote.targets.push(where.remote);
        }
      } else {
        for (let i = 0; i < indices.length; i++) storeSlots.push(store.allocate());
      }
      results = await pool.writeBlocks(this.id, generation, this.key, cacheSlots, storeSlots, indices, remote);
    } catch (err) {
      for (const slot of storeSlots) if (slot >= 0) store.unallocate(slot);
      for (let i = 0; i < indices.length; i++) {
        if (this.table.get(indices[i]) === cacheSlots[i]) {
          cache.setState(cacheSlots[i], SlotState.Dirty);
          this.dirty.add(indices[i]);
        } else {
          cache.free(cacheSlots[i]);
        }
      }
      throw err;
    }
    const unstored: string[] = [];
    for (let i = 0; i < indices.length; i++) {
      const index = indices[i];
      const result = results[Math.floor(i / BATCH)];
      const at = i % BATCH;
      const current = this.table.get(index) === cacheSlots[i];
      const ref = { volumeId: this.id, generation, index };
      const local = storeSlots[i] >= 0;
      if (result.zero[at]) {
        if (local) store.unallocate(storeSlots[i]);
        if (this.spilled.delete(index)) store.release(ref); // an earlier spill of this block
        if (current && this.map.isPresent(index)) this.pendingHoles.add(index);
      } else {
        const peers = remote ? ackedPeers(remote, i, result.acked!, at) : undefined;
        if (!local && peers!.length === 0) {
          // Not stored anywhere: the block stays dirty (or its newer data does) and the round fails below.
          unstored.push(`block ${index}: ${result.failures?.join('; ') || 'no target'}`);
          if (current) {
            cache.setState(cacheSlots[i], SlotState.Dirty);
            this.dirty.add(index);
          } else {
            cache.free(cacheSlots[i]);
          }
          continue;
        }
        if (local) store.bind(storeSlots[i], ref); // replaces (and releases) an earlier spill of this block
        if (this.pendingHoles.has(index)) {
          store.release(ref); // trimmed while it was being written
          this.spilled.delete(index);
        } else {
          const entry: SpilledBlock = { hashLo: result.hashes[2 * at], hashHi: result.hashes[2 * at + 1] };
          if (remote) {
            entry.local = local;
            entry.peers = peers;
            if ((local ? 1 : 0) + peers!.length < cluster!.placement.replicationOf(this.id)) cluster!.stats.underReplicatedBlocks++;
          }
          this.spilled.set(index, entry);
        }
      }
      if (current) cache.setState(cacheSlots[i], SlotState.Clean);
      else cache.free(cacheSlots[i]); // rewritten or trimmed meanwhile
    }
    const failures = results.flatMap((r) => r.failures ?? []);
    if (failures.length > 0) {
      cluster!.stats.failedPeerWrites += failures.length;
      this.services.log.warn({ volume: this.name, failures: failures.slice(0, 8), count: failures.length }, 'some copies were not stored on peers');
    }
    if (unstored.length > 0) {
      throw new IoError('EIO', `volume ${this.name}: ${unstored.length} block(s) could not be stored on any node: ${unstored.slice(0, 4).join(' | ')}`);
    }
  }

  /** Commit a new version: spill what is dirty, write the map pages, sync, CAS the root. */
  private async commitOnce(): Promise<void> {
    await this.writeDirty([...this.dirty]);
    if (this.spilled.size === 0 && this.pendingHoles.size === 0) return;
    const started = process.hrtime.bigint();
    const { store } = this.services;
    const generation = this.generation + 1;
    const entries = [...this.spilled];
    const holes = [...this.pendingHoles];
    this.pendingHoles.clear();
    const writtenPages: number[] = [];
    const cluster = this.services.cluster;
    const pagePuts: Promise<string[]>[] = [];
    try {
      const draft = this.map.draft(generation);
      const flags = this.key ? ENTRY_SEALED : 0;
      for (const [index, e] of entries) draft.setEntry(0, index, flags, e.hashLo, e.hashHi);
      for (const index of holes) draft.clearEntry(0, index);
      let root: MapRoot | undefined = this.map.root;
      for (let level = 0; level < this.map.height; level++) {
        for (const page of draft.pagesToWrite(level)) {
          const slot = store.allocate();
          let digest;
          try {
            digest = await store.writeBlock(slot, page.ref, page.bytes, RECORD_MAP_PAGE);
          } catch (err) {
            store.unallocate(slot);
            throw err;
          }
          writtenPages.push(page.ref.index);
          // Sent without waiting: a written page never changes again in this draft.
          if (cluster) pagePuts.push(cluster.putPage(page.ref, page.bytes, digest.lo, digest.hi, RECORD_MAP_PAGE));
          const top = draft.pageWritten(level, page.pageNo, digest.lo, digest.hi);
          if (top) root = top;
        }
      }
      if (draft.rootCleared()) root = undefined;
      const superseded = draft.supersededRefs();
      if (cluster) {
        // Pages must be on the peers before they sync; the local sync and the peers' run side by side.
        await Promise.all([store.sync(), this.syncCopies(cluster, entries, await Promise.all(pagePuts))]);
      } else {
        await store.sync();
      }
      await this.services.commit(this.identity, generation, root);
      draft.commit(root);
      this.generation = generation;
      for (const [index, e] of entries) if (this.spilled.get(index) === e) this.spilled.delete(index);
      for (const ref of superseded) store.release(ref);
      this.services.onFlush?.(this.name, entries.length, Number(process.hrtime.bigint() - started) / 1e9);
    } catch (err) {
      for (const index of writtenPages) store.release({ volumeId: this.id, generation, index });
      for (const index of holes) if (!this.table.has(index) && !this.spilled.has(index)) this.pendingHoles.add(index);
      throw err;
    }
  }

  /**
   * Cluster: make the peers' copies of this version durable. A peer that
   * cannot sync does not count; every block must keep at least one durable
   * copy (here or on a peer that synced) or the commit fails. pageCopies: the
   * peers that took each new map page; they count only on a store-less
   * client, whose own copy of a page is scratch, not storage.
   */
  private async syncCopies(cluster: ClusterBlocks, entries: [number, SpilledBlock][], pageCopies: string[][]): Promise<void> {
    const peers = new Set(pageCopies.flat());
    for (const [, e] of entries) for (const uuid of e.peers ?? []) peers.add(uuid);
    const failed = peers.size === 0 ? new Set<string>() : await cluster.syncPeers(peers);
    if (!cluster.placement.holdsCopies && pageCopies.some((copies) => copies.every((uuid) => failed.has(uuid)))) {
      throw new IoError('EIO', `volume ${this.name}: a map page of the new version is on no storage node (peers ${[...failed].join(', ') || 'none'} failed); nothing was committed`);
    }
    if (failed.size === 0) return;
    const lost: number[] = [];
    for (const [index, e] of entries) {
      const kept = e.peers?.filter((uuid) => !failed.has(uuid)) ?? [];
      if (!e.local && kept.length === 0) {
        lost.push(index);
      } else if (e.peers && kept.length < e.peers.length) {
        e.peers = kept; // the next commit does not wait on them again
        cluster.stats.underReplicatedBlocks++;
      }
    }
    if (lost.length > 0) {
      throw new IoError('EIO', `volume ${this.name}: ${lost.length} block(s) have no durable copy (peers ${[...failed].join(', ')} failed to sync), first ${lost.slice(0, 8).join(', ')}`);
    }
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
      const hole = !this.table.has(index) && this.isHole(index);
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
    for (let index = first; index < last; index++) loads.push(this.loaded(index));
    await Promise.all(loads);
  }

  /**
   * Cluster: this node's copy of a block failed its check and a replica's
   * good one was served. Drop ours: a node holding a good copy finds this
   * node lacking it at its next rebalance run and puts it back (rewriting
   * the slot here, from a worker, could race with the slot's reuse).
   */
  private dropBadLocalCopy(index: number, generation: number, reason: string): void {
    this.services.log.error({ volume: this.name, block: index, generation, reason }, 'local copy failed its checksum; served from a replica, dropping the bad copy for rebalance to replace');
    this.services.onChecksumError?.(this.name, index, reason);
    this.services.store.release({ volumeId: this.id, generation, index });
  }

  /** Flush what is dirty, then drop this volume's cache slots. */
  async close(): Promise<void> {
    if (this.closed) return;
    if (this.commitTimer) clearTimeout(this.commitTimer);
    await this.flush();
    this.closed = true;
    this.services.cache.removeOwner(this);
    for (const slot of this.table.values()) this.services.cache.free(slot);
    this.table.clear();
  }
}

/**
 * Cluster: a slot for this node's copy, or -1 when the local store is full —
 * the pool then gives the copy to the next live node of the ring instead.
 */
function allocateUnlessFull(store: LocalSlotStore): number {
  try {
    return store.allocate();
  } catch (err) {
    if (err instanceof StoreFullError) return -1;
    throw err;
  }
}

let zeros = Buffer.alloc(0);
/** A shared all-zero buffer of at least n bytes (never written to). */
function zeroBuffer(n: number): Buffer {
  if (zeros.length < n) zeros = Buffer.alloc(Math.max(n, 1 << 20));
  return zeros.subarray(0, n);
}

/** The uuids of block i's remote targets that acked it (worker result `acked` at offset `at` within its batch). */
function ackedPeers(remote: WriteRemote, i: number, acked: Uint8Array, at: number): string[] {
  const out: string[] = [];
  const targets = remote.targets[i];
  for (let t = 0; t < Math.min(targets.length, MAX_TARGETS); t++) {
    if (acked[at * MAX_TARGETS + t]) out.push(remote.peers[targets[t]].uuid);
  }
  return out;
}
