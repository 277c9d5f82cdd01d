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
 */
import { ChecksumError, IoError } from '../../common/errors.js';
import type { Logger } from '../../common/log.js';
import { RECORD_MAP_PAGE } from '../blocks/record.js';
import type { LocalSlotStore } from '../blocks/slot-store.js';
import { BlockCache, SlotState, type CacheOwner } from '../cache/block-cache.js';
import { BATCH, type DataPool } from '../pool/data-pool.js';
import { READ_CHECKSUM_MISMATCH, READ_OK, READ_OPEN_FAILED } from '../pool/tasks.js';
import type { Extent } from '../nbd/export.js';
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
  /** Commit a version's root to metadata (compare-and-swap on the previous generation). */
  commit(volume: VolumeIdentity, generation: number, root: MapRoot | undefined): Promise<void>;
  onChecksumError?(volume: string, block: number, reason: string): void;
  onFlush?(volume: string, blocks: number, seconds: number): void;
}

const DONE: Promise<void> = Promise.resolve();
/** Write back on our own once this share of the cache is dirty. */
const DIRTY_HIGH_WATER = 0.5;
/** And at the latest this long after data first became dirty. */
const WRITEBACK_DELAY_MS = 5_000;
/** Most blocks one BLOCK_STATUS reply describes; clients ask again for the rest. */
const STATUS_BLOCK_LIMIT = 65_536;
/** Most blocks one CACHE request prefetches. */
const PREFETCH_LIMIT = 256;

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
  /** Whole blocks trimmed or zeroed since the last flush started. */
  private readonly pendingHoles = new Set<number>();
  /** In-flight cache fills, by block index. */
  private readonly loads = new Map<number, Promise<void>>();
  private flushTicket = 0;
  private flushedTicket = 0;
  private flushWaiters: FlushWaiter[] = [];
  private flushLoop: Promise<void> | undefined;
  private writebackTimer: NodeJS.Timeout | undefined;
  /** Why the last flush failed, until one succeeds: writers waiting for cache space see it. */
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
        if (slot === undefined) throw new IoError('EIO', `volume ${identity.name}: map page ${level}/${pageNo} (gen ${generation}) missing from the local store`);
        const digest = await store.readBlock(slot, page);
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
      } else if (slot === undefined && (this.pendingHoles.has(index) || !this.map.isPresent(index))) {
        dest.fill(0, done, done + n);
      } else {
        (pending ??= []).push(this.readSlow(index, within, dest, done, n));
      }
      done += n;
    }
    return pending ? Promise.all(pending).then(() => undefined) : DONE;
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
      if (this.pendingHoles.has(index)) return -1;
      const entry = this.map.lookup(index);
      if (!entry) return -1;
      const storeSlot = store.lookup(this.id, entry.generation, index);
      if (storeSlot === undefined) {
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
          done: (status, reason) => {
            this.loads.delete(index);
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
      const hole = this.pendingHoles.has(index) || !this.map.isPresent(index);
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
      if (slot === undefined && !(within === 0 && n === this.blockSize) && !this.pendingHoles.has(index) && this.map.isPresent(index)) {
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
    this.writeBack();
    await cache.whenSlotFreed();
  }

  private afterWrite(): void {
    const { cache } = this.services;
    if (cache.dirtySlots > cache.slotCount * DIRTY_HIGH_WATER) this.writeBack();
    else if (!this.writebackTimer && this.dirty.size > 0) {
      this.writebackTimer = setTimeout(() => {
        this.writebackTimer = undefined;
        this.writeBack();
      }, WRITEBACK_DELAY_MS);
      this.writebackTimer.unref();
    }
  }

  /** Start a flush nobody waits for; its failure is logged, the data stays dirty. */
  private writeBack(): void {
    if (this.flushLoop || this.closed) return;
    this.flush().catch((err) => this.services.log.warn({ volume: this.name, err: String(err) }, 'background write-back failed; will retry'));
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
    if (this.map.isPresent(index)) this.pendingHoles.add(index);
  }

  // ---------------------------------------------------------------- flush

  /** Resolves once every write completed before the call is committed. */
  flush(): Promise<void> {
    if (this.closed) return Promise.reject(new IoError('ESHUTDOWN', `volume ${this.name} is closed`));
    const ticket = ++this.flushTicket;
    const waiter = new Promise<void>((resolve, reject) => this.flushWaiters.push({ ticket, resolve, reject }));
    this.flushLoop ??= this.runFlushes();
    return waiter;
  }

  private async runFlushes(): Promise<void> {
    while (this.flushedTicket < this.flushTicket) {
      const covering = this.flushTicket;
      let failure: unknown;
      try {
        await this.flushOnce();
      } catch (err) {
        failure = err;
      }
      this.flushedTicket = covering;
      this.flushFailure = failure;
      if (failure) this.services.cache.wakeWaiters();
      const waiters = this.flushWaiters;
      this.flushWaiters = [];
      for (const w of waiters) {
        if (w.ticket > covering) this.flushWaiters.push(w);
        else if (failure) w.reject(failure);
        else w.resolve();
      }
    }
    this.flushLoop = undefined;
  }

  private async flushOnce(): Promise<void> {
    if (this.dirty.size === 0 && this.pendingHoles.size === 0) return;
    const started = process.hrtime.bigint();
    const { cache, store, pool } = this.services;
    const generation = this.generation + 1;
    const indices = [...this.dirty];
    const holes = [...this.pendingHoles];
    this.dirty.clear();
    this.pendingHoles.clear();
    const cacheSlots = indices.map((index) => this.table.get(index)!);
    for (const slot of cacheSlots) cache.setState(slot, SlotState.Flushing);
    const storeSlots: number[] = [];
    const written: number[] = [];
    const writtenPages: number[] = [];
    try {
      for (let i = 0; i < indices.length; i++) storeSlots.push(store.allocate());
      const results = await pool.writeBlocks(this.id, generation, this.key, cacheSlots, storeSlots, indices);
      const draft = this.map.draft(generation);
      const flags = this.key ? ENTRY_SEALED : 0;
      for (let i = 0; i < indices.length; i++) {
        const result = results[Math.floor(i / BATCH)];
        const at = i % BATCH;
        if (result.zero[at]) {
          store.unallocate(storeSlots[i]);
          draft.clearEntry(0, indices[i]);
        } else {
          store.bind(storeSlots[i], { volumeId: this.id, generation, index: indices[i] });
          written.push(indices[i]);
          draft.setEntry(0, indices[i], flags, result.hashes[2 * at], result.hashes[2 * at + 1]);
        }
      }
      storeSlots.length = 0; // now bound or given back
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
          const top = draft.pageWritten(level, page.pageNo, digest.lo, digest.hi);
          if (top) root = top;
        }
      }
      if (draft.rootCleared()) root = undefined;
      const superseded = draft.supersededRefs();
      await store.sync();
      await this.services.commit(this.identity, generation, root);
      draft.commit(root);
      this.generation = generation;
      for (const ref of superseded) store.release(ref);
      for (let i = 0; i < indices.length; i++) {
        if (this.table.get(indices[i]) === cacheSlots[i]) cache.setState(cacheSlots[i], SlotState.Clean);
        else cache.free(cacheSlots[i]); // rewritten or trimmed meanwhile
      }
      this.services.onFlush?.(this.name, indices.length, Number(process.hrtime.bigint() - started) / 1e9);
    } catch (err) {
      for (const slot of storeSlots) store.unallocate(slot);
      for (const index of written) store.release({ volumeId: this.id, generation, index });
      for (const index of writtenPages) store.release({ volumeId: this.id, generation, index });
      for (let i = 0; i < indices.length; i++) {
        if (this.table.get(indices[i]) === cacheSlots[i]) {
          cache.setState(cacheSlots[i], SlotState.Dirty);
          this.dirty.add(indices[i]);
        } else {
          cache.free(cacheSlots[i]);
        }
      }
      for (const index of holes) if (!this.table.has(index)) this.pendingHoles.add(index);
      throw err;
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
      const hole = !this.table.has(index) && (this.pendingHoles.has(index) || !this.map.isPresent(index));
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

  /** Flush what is dirty, then drop this volume's cache slots. */
  async close(): Promise<void> {
    if (this.closed) return;
    if (this.writebackTimer) clearTimeout(this.writebackTimer);
    await this.flush();
    this.closed = true;
    for (const slot of this.table.values()) this.services.cache.free(slot);
    this.table.clear();
  }
}

let zeros = Buffer.alloc(0);
/** A shared all-zero buffer of at least n bytes (never written to). */
function zeroBuffer(n: number): Buffer {
  if (zeros.length < n) zeros = Buffer.alloc(Math.max(n, 1 << 20));
  return zeros.subarray(0, n);
}
