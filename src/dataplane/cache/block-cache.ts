/**
 * BlockCache: fixed-size block slots in one SharedArrayBuffer, shared by the
 * main thread (which copies NBD payloads in and out) and the pool workers
 * (which hash, seal and write slots to disk, or read and verify into them).
 *
 * Ownership rule that makes this safe without locks: only the main thread
 * changes a slot's state. A worker touches a slot's bytes only while main has
 * it in LOADING (the worker fills it) or FLUSHING (the worker reads it), and
 * main never writes the bytes of a slot in either state: a write to a
 * FLUSHING block is redirected to a fresh slot (copy-on-write, see volume.ts).
 * So every byte range has exactly one writer at a time, and the postMessage
 * that starts and ends each task orders the accesses.
 *
 * Eviction is CLOCK over CLEAN slots; DIRTY, LOADING and FLUSHING slots are
 * never evicted. When no slot can be had, acquire() returns -1 and the caller
 * waits with whenSlotFreed() while its volume writes back.
 *
 * Reads keep a share of the cache (`readReserve` slots) that writes may not
 * make dirty (`mayDirty()`): when write-back cannot make progress (a full
 * store), writers wait or fail, and reads still find slots.
 *
 * Invariants, asserted (src/common/assert.ts) because a slot in the wrong
 * state means two writers on one byte range or a block lost from the cache:
 * - setState() makes only the transitions in ALLOWED_NEXT; a slot becomes
 *   Free only by free(), and Loading only by acquire();
 * - a slot is freed once (a second free() would put it on the free list
 *   twice and hand it to two owners);
 * - a slot taken from the free list is Free and unpinned;
 * - only a Clean, unpinned slot is evicted, and its owner's evicted() leaves
 *   it so;
 * - pin counts never go below zero (or past 0xffff).
 * Each is an integer compare on the hot path: messages are constants, or
 * built only once the check has failed.
 *
 * Partly valid slots: a slot holds a mask of its valid 4 KiB sub-blocks, so a
 * 4 KiB miss loads 4 KiB (blocks/sub-sums.ts) and a 4 KiB write to a block
 * not in the cache writes 4 KiB without reading the rest first. A Clean slot
 * may be partial (partly loaded), and so may a Dirty one (written in whole
 * sub-blocks over a stored block: its invalid sub-blocks are the stored
 * copy's). A partial Dirty slot is written back as it is when the store
 * keeps it as a patch (blocks/patches.ts), so a Flushing slot may be partial
 * too; otherwise it is completed first — the rest loaded into another slot
 * by a worker, which main then gives the written sub-blocks and makes the
 * block's Dirty slot (volume/block-loads.ts), so the ownership rule above
 * holds. A partial Clean slot is filled further by
 * Clean → Loading → Clean, the worker writing only sub-blocks not yet valid,
 * so pinned views of valid ones are undisturbed. Blocks of more than 32
 * sub-blocks (above 128 KiB) are always whole: the mask is one u32.
 */
import { pageAlignedSharedMemory } from '../../common/aligned-memory.js';
import { assert, invariantBroken } from '../../common/assert.js';
import { SUB_BLOCK_SIZE } from '../blocks/sub-sums.js';

/** Most sub-blocks a slot tracks: its valid mask is a u32. */
export const MAX_SUB_BLOCKS = 32;

export const enum SlotState {
  Free = 0,
  Clean = 1,
  Dirty = 2,
  Loading = 3,
  Flushing = 4,
}

/**
 * Bit (1 << next) is set in ALLOWED_NEXT[previous] when setState() may move a
 * slot from `previous` to `next`. Volumes use Loading → Clean (filled),
 * Clean → Dirty (written), Dirty → Flushing (written back), Flushing → Dirty
 * or Clean (write-back failed or stored), Clean → Loading (more sub-blocks of
 * a partly loaded slot are being filled); Dirty → Clean and Clean → Flushing
 * are harmless and allowed. Never from Free (the slot has no owner), never to
 * Free (free() keeps the free list), to Loading only from Clean (a worker
 * never fills a slot with unwritten changes), never from Loading to Dirty or
 * Flushing (main would write bytes the worker is still filling).
 */
const ALLOWED_NEXT = Uint8Array.of(
  0,
  (1 << SlotState.Dirty) | (1 << SlotState.Flushing) | (1 << SlotState.Loading),
  (1 << SlotState.Clean) | (1 << SlotState.Flushing),
  1 << SlotState.Clean,
  (1 << SlotState.Dirty) | (1 << SlotState.Clean),
);

const STATE_NAMES = ['Free', 'Clean', 'Dirty', 'Loading', 'Flushing'];

/** Whoever maps block indexes to slots (a volume) is told when one is evicted. */
export interface CacheOwner {
  evicted(index: number, slot: number): void;
  /** Too much of the cache is dirty: write some of yours back. */
  writeBack(): void;
}

export class BlockCache {
  readonly buffer: SharedArrayBuffer;
  /** The buffer starts on a page (as O_DIRECT wants: the pool's direct block writes); false past 4 GiB. */
  readonly pageAligned: boolean;
  readonly slotCount: number;
  readonly state: Uint8Array;
  private readonly referenced: Uint8Array;
  private readonly slotOwners: (CacheOwner | undefined)[];
  private readonly ownerIndex: Float64Array;
  /** One Buffer view per slot, made once: hot paths never allocate a view. */
  private readonly views: Buffer[];
  private readonly freeList: Int32Array;
  private freeCount: number;
  private hand = 0;
  private dirty = 0;
  private flushing = 0;
  /** Slots writes leave to reads: dirty + flushing stays below slotCount - readReserve. */
  readonly readReserve: number;
  private spaceWaiters: (() => void)[] = [];
  private readonly registered = new Set<CacheOwner>();
  /**
   * Pins: a slot's bytes are on their way out of a socket (zero-copy READ
   * replies). A pinned slot is never evicted or reused; free() of a pinned
   * slot takes effect when the last pin goes.
   */
  private readonly pins: Uint16Array;
  private readonly freeWhenUnpinned: Uint8Array;
  /** Per slot, bit i set when sub-block i holds the block's data (see the header). */
  private readonly valid: Uint32Array;
  /**
   * Per slot, 1 once it has been handed out. A SharedArrayBuffer starts
   * zeroed, so a slot never handed out still holds zeros: acquireZeroed()
   * fills only slots that held data. Besides the fill itself, this spares a
   * fresh process the first touch of 64 KiB of its cache for a 4 KiB write
   * into a hole (about 3 ms per MiB on a VM; docs/benchmarks.md).
   */
  private readonly handedOut: Uint8Array;
  /** Sub-blocks per block, or 0 when slots are always whole (blocks above MAX_SUB_BLOCKS sub-blocks). */
  readonly subBlocks: number;
  /** The mask of a whole slot (0 when subBlocks is 0: every range is then covered). */
  readonly wholeMask: number;
  hits = 0;
  misses = 0;
  evictions = 0;

  constructor(
    readonly blockSize: number,
    capacityBytes: number,
  ) {
    this.slotCount = Math.max(64, Math.floor(capacityBytes / blockSize));
    const aligned = pageAlignedSharedMemory(this.slotCount * blockSize);
    this.buffer = aligned ?? new SharedArrayBuffer(this.slotCount * blockSize);
    this.pageAligned = aligned !== undefined;
    this.readReserve = Math.max(4, Math.floor(this.slotCount / 16));
    this.state = new Uint8Array(this.slotCount);
    this.referenced = new Uint8Array(this.slotCount);
    this.pins = new Uint16Array(this.slotCount);
    this.freeWhenUnpinned = new Uint8Array(this.slotCount);
    const subBlocks = blockSize / SUB_BLOCK_SIZE;
    this.subBlocks = Number.isInteger(subBlocks) && subBlocks <= MAX_SUB_BLOCKS ? subBlocks : 0;
    this.wholeMask = this.subBlocks === 0 ? 0 : (0xffff_ffff >>> (32 - this.subBlocks)) >>> 0;
    this.valid = new Uint32Array(this.slotCount);
    this.handedOut = new Uint8Array(this.slotCount);
    this.slotOwners = new Array(this.slotCount).fill(undefined);
    this.ownerIndex = new Float64Array(this.slotCount);
    this.views = Array.from({ length: this.slotCount }, (_, slot) =>
      Buffer.from(this.buffer, slot * blockSize, blockSize),
    );
    this.freeList = new Int32Array(this.slotCount);
    for (let i = 0; i < this.slotCount; i++) this.freeList[i] = this.slotCount - 1 - i;
    this.freeCount = this.slotCount;
  }

  view(slot: number): Buffer {
    return this.views[slot];
  }

  get dirtySlots(): number {
    return this.dirty;
  }

  get freeSlots(): number {
    return this.freeCount;
  }

  /** May a write make one more slot dirty (a new slot, or a clean one)? Not past the reads' share. */
  mayDirty(): boolean {
    return this.dirty + this.flushing < this.slotCount - this.readReserve;
  }

  /**
   * A slot for (owner, index), in state `initial`, or -1 if every slot is
   * dirty or busy. Evicts a clean slot if there is no free one.
   */
  acquire(owner: CacheOwner, index: number, initial: SlotState.Dirty | SlotState.Loading): number {
    let slot: number;
    if (this.freeCount > 0) {
      slot = this.freeList[--this.freeCount];
      assert(
        this.state[slot] === SlotState.Free && this.pins[slot] === 0,
        'a slot on the free list is in use or pinned',
      );
    } else {
      slot = this.evictOne();
      if (slot < 0) return -1;
    }
    this.slotOwners[slot] = owner;
    this.ownerIndex[slot] = index;
    this.handedOut[slot] = 1;
    this.referenced[slot] = 1;
    this.state[slot] = initial;
    // Whole unless its filler or writer says otherwise (setValid): before the slot leaves
    // Loading, or before a Dirty one is written in part; no one reads a Loading slot's mask.
    this.valid[slot] = this.wholeMask;
    if (initial === SlotState.Dirty) this.dirty++;
    return slot;
  }

  /**
   * A Dirty slot for (owner, index) whose bytes are all zero (a block of a
   * hole about to be written in part), or -1 as acquire(). Only a slot that
   * has held data before is filled.
   */
  acquireZeroed(owner: CacheOwner, index: number): number {
    let slot = -1;
    if (this.freeCount > 0) slot = this.freeList[this.freeCount - 1];
    const zeroAlready = slot >= 0 && this.handedOut[slot] === 0;
    slot = this.acquire(owner, index, SlotState.Dirty);
    if (slot >= 0 && !zeroAlready) this.views[slot].fill(0);
    return slot;
  }

  /**
   * The sub-blocks that bytes [start, start + length) of a block cover
   * entirely, when the range is exactly whole sub-blocks; 0 otherwise (or
   * when slots are always whole). A write of such a range needs nothing of
   * what the block held before.
   */
  wholeSubBlocksOf(start: number, length: number): number {
    if (this.subBlocks === 0 || start % SUB_BLOCK_SIZE !== 0 || length % SUB_BLOCK_SIZE !== 0)
      return 0;
    return this.maskOf(start, length);
  }

  /** The sub-blocks that bytes [start, start + length) of a block touch, as a mask (0 when slots are always whole). */
  maskOf(start: number, length: number): number {
    if (this.subBlocks === 0) return 0;
    const first = Math.floor(start / SUB_BLOCK_SIZE);
    const end = Math.ceil((start + length) / SUB_BLOCK_SIZE);
    if (end <= first) return 0;
    return ((0xffff_ffff >>> (32 - (end - first))) << first) >>> 0;
  }

  /** True when every sub-block in `mask` of the slot holds data. */
  covers(slot: number, mask: number): boolean {
    return (this.valid[slot] & mask) >>> 0 === mask;
  }

  /** True when the whole slot holds data. */
  isWhole(slot: number): boolean {
    return this.valid[slot] === this.wholeMask;
  }

  validMask(slot: number): number {
    return this.valid[slot];
  }

  /** After a fill or a partial write: `mask` is what the slot now holds. */
  setValid(slot: number, mask: number): void {
    assert((mask & ~this.wholeMask) === 0, 'a valid mask names only sub-blocks of the block');
    this.valid[slot] = mask >>> 0;
  }

  /** CLOCK: sweep at most two rounds for a clean slot not recently used. */
  private evictOne(): number {
    for (let step = 0; step < 2 * this.slotCount; step++) {
      const slot = this.hand;
      this.hand = this.hand + 1 === this.slotCount ? 0 : this.hand + 1;
      if (this.state[slot] !== SlotState.Clean || this.pins[slot] !== 0) continue;
      if (this.referenced[slot]) {
        this.referenced[slot] = 0;
        continue;
      }
      const owner = this.slotOwners[slot];
      assert(owner !== undefined, 'a clean slot has no owner');
      owner.evicted(this.ownerIndex[slot], slot);
      // Paired with the test above: the owner forgets the slot, it does not change it.
      assert(
        this.state[slot] === SlotState.Clean && this.pins[slot] === 0,
        "an owner's evicted() changed the slot",
      );
      this.slotOwners[slot] = undefined;
      this.evictions++;
      return slot;
    }
    return -1;
  }

  touch(slot: number): void {
    this.referenced[slot] = 1;
  }

  setState(slot: number, next: SlotState): void {
    const previous = this.state[slot];
    if (previous === next) return;
    if ((ALLOWED_NEXT[previous] & (1 << next)) === 0) {
      invariantBroken(
        `slot ${slot} may not go from ${STATE_NAMES[previous]} to ${STATE_NAMES[next]}`,
      );
    }
    if (previous === SlotState.Dirty) this.dirty--;
    else if (previous === SlotState.Flushing) this.flushing--;
    if (next === SlotState.Dirty) this.dirty++;
    else if (next === SlotState.Flushing) this.flushing++;
    this.state[slot] = next;
    if (next === SlotState.Clean) this.wakeWaiters();
  }

  /** Return a slot to the free list (its owner already forgot it); deferred while pinned. */
  free(slot: number): void {
    const state = this.state[slot];
    if (state === SlotState.Free) invariantBroken(`slot ${slot} freed twice`);
    if (state === SlotState.Dirty) this.dirty--;
    else if (state === SlotState.Flushing) this.flushing--;
    this.state[slot] = SlotState.Free;
    this.slotOwners[slot] = undefined;
    if (this.pins[slot] !== 0) {
      this.freeWhenUnpinned[slot] = 1;
      return;
    }
    this.freeList[this.freeCount++] = slot;
    this.wakeWaiters();
  }

  pin(slot: number): void {
    if (this.pins[slot] === 0xffff) invariantBroken(`slot ${slot} pinned too many times`);
    this.pins[slot]++;
  }

  unpin(slot: number): void {
    if (this.pins[slot] === 0) invariantBroken(`slot ${slot} is not pinned`);
    if (--this.pins[slot] === 0 && this.freeWhenUnpinned[slot]) {
      this.freeWhenUnpinned[slot] = 0;
      this.freeList[this.freeCount++] = slot;
      this.wakeWaiters();
    }
  }

  addOwner(owner: CacheOwner): void {
    this.registered.add(owner);
  }

  removeOwner(owner: CacheOwner): void {
    this.registered.delete(owner);
  }

  /**
   * Dirty data is crowding the cache: every owner writes some back. All of
   * them, not just the one that noticed, or one busy volume's dirty blocks
   * could starve another's reads of slots.
   */
  pressure(): void {
    for (const owner of this.registered) owner.writeBack();
  }

  /** Resolves when a slot may have become available (freed or cleaned). */
  whenSlotFreed(): Promise<void> {
    return new Promise((resolve) => this.spaceWaiters.push(resolve));
  }

  wakeWaiters(): void {
    if (this.spaceWaiters.length === 0) return;
    const waiters = this.spaceWaiters;
    this.spaceWaiters = [];
    for (const wake of waiters) wake();
  }
}
