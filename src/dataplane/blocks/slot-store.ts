/**
 * LocalSlotStore: the node's local block store, a preallocated data file cut
 * into fixed-size slots plus a slot table (see record.ts) beside it.
 *
 * Contract
 * - Blocks are addressed by ref (ref.ts); a slot is where one lives locally.
 * - Slots are allocated on the main thread only; pool workers write data and
 *   records into slots they were handed (pool/worker.ts), main binds the ref
 *   once the worker reports success.
 * - Nothing written is durable until sync() resolves. Callers commit a volume
 *   version only after sync(), and release superseded slots only after the
 *   commit, so a crash at any point leaves the committed version intact; blocks
 *   of an uncommitted version are found and freed by the start-up sweep.
 * - A full store throws StoreFullError (ENOSPC); nothing is overwritten.
 *
 * Invariants, asserted (src/common/assert.ts): each slot is in exactly one
 * use (SlotUse, slot-uses.ts), and moves only free → allocated → bound →
 * (held →) releasing → free, or allocated → free (unallocate); so a slot is
 * never bound while in use, never given back twice, never among the free slots
 * while anyone holds it. The free count is FreeSlots', and the bound
 * count the ref index's.
 *
 * Patches (patches.ts): a slot bound as a patch keeps its base (another
 * slot) from being freed. A base released while patches over it are stored
 * is held: out of the ref index, its slot and record kept until the last
 * patch over it goes. Which slots are patches' bases is in memory only,
 * rebuilt at open from the patches' records.
 */
import { open, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import { assert, invariantBroken } from '../../common/assert.js';
import { StoreFullError } from '../../common/errors.js';
import { hasher, type Hasher } from './hash.js';
import {
  fillRecord,
  OFF_GENERATION,
  OFF_INDEX_HI,
  OFF_INDEX_LO,
  OFF_STATE,
  OFF_VOLUME,
  RECORD_SIZE,
  SLOT_FREE,
  SLOT_USED,
  join64,
} from './record.js';
import type { BlockRef } from '../../model/block-ref.js';
import {
  createStore,
  layoutPath,
  readLayoutForOpen,
  readUsedRecords,
  storeExists,
  subsumsPath,
  writeRecordRuns,
  type StoreLayout,
} from './store-format.js';
import { FreeSlots } from './free-slots.js';
import { RefIndex } from './ref-index.js';
import { PatchBases } from './patch-bases.js';
import { SlotUse, SlotUses, nameOf } from './slot-uses.js';
import { InlineReads } from './inline-reads.js';
import { InlineWrites, PATCH_WRITES } from '../../common/inline-writes.js';
import { SlotReads } from './slot-reads.js';
import { isPatchRecord, needsBase, patchBaseOf, patchPresent, wholeMaskOf } from './patches.js';
import { subsumsEntrySize } from './sub-sums.js';
import {
  checkReceivedBlocks,
  receivedRuns,
  writeReceivedPatches,
  writeReceivedRun,
  type ReceivedBlock,
  type ReceivedPatch,
  type ReceivedFiles,
} from './received-blocks.js';

export { STORE_FORMAT, type StoreLayout } from './store-format.js';

export interface StoreFiles {
  dataPath: string;
  slotsPath: string;
}

export class LocalSlotStore {
  readonly blockSize: number;
  readonly slotCount: number;
  readonly dataPath: string;
  readonly slotsPath: string;
  /** The sub-block checksum table (sub-sums.ts), written by pool workers and writeReceivedBlock. */
  readonly subsumsPath: string;
  readonly subsumsEntrySize: number;
  /** The present mask of a patch holding its whole block (patches.ts needsBase). */
  readonly wholeMask: number;
  /** The slot table, shared with pool workers. */
  readonly records: SharedArrayBuffer;
  private readonly recordView: DataView;
  private readonly recordBytes: Uint8Array;
  private readonly refToSlot = new RefIndex();
  private readonly free: FreeSlots;
  /** Each slot's SlotUse, and how many are in each. */
  private readonly uses: SlotUses;
  /** Patches' bases, and the pins that keep them (patch-bases.ts). */
  private readonly bases = new PatchBases();
  /** Patches whose record names a base this store did not have at open: their reads fail. */
  patchesWithoutBase = 0;
  /** Released slots whose free record is not yet on disk: not reusable until it is (see release). */
  private pendingRelease: number[] = [];
  private releaseWrite: Promise<void> | undefined;
  private closed = false;
  /** Reads of the data file from the main thread (slot-reads.ts). */
  private readonly reads: SlotReads;
  /** Whether the main thread's reads (a peer's GET, scrub, fsck) are made inline (inline-reads.ts). */
  private readonly inlineReads = new InlineReads();
  /** What writeReceivedRun writes into. */
  private readonly receivedFiles: ReceivedFiles;

  private constructor(
    readonly dir: string,
    layout: StoreLayout,
    private readonly dataFile: FileHandle,
    private readonly slotsFile: FileHandle,
    /** Absent when opened without upgrading a store that has none (fsck's check). */
    private readonly subsumsFile: FileHandle | undefined,
    records: SharedArrayBuffer,
    /** One past the last slot whose record was not all zeros at open. */
    private readonly usedEnd: number,
    private readonly hash: Hasher,
  ) {
    this.blockSize = layout.blockSize;
    this.slotCount = layout.slotCount;
    this.dataPath = join(dir, 'data');
    this.slotsPath = join(dir, 'slots');
    this.subsumsPath = subsumsPath(dir);
    this.subsumsEntrySize = subsumsEntrySize(layout.blockSize);
    this.wholeMask = wholeMaskOf(layout.blockSize);
    this.records = records;
    this.recordView = new DataView(records);
    this.recordBytes = new Uint8Array(records);
    this.free = new FreeSlots(layout.slotCount, usedEnd);
    this.uses = new SlotUses(layout.slotCount);
    const data = { file: dataFile, path: this.dataPath };
    this.reads = new SlotReads(data, subsumsFile, this.blockSize, hash, this.inlineReads);
    this.receivedFiles = {
      dataFile,
      slotsFile,
      subsumsFile,
      records,
      blockSize: this.blockSize,
      subsumsEntrySize: this.subsumsEntrySize,
      dataPath: this.dataPath,
      hash,
      patchWrites: new InlineWrites(PATCH_WRITES),
    };
  }

  static layoutPath(dir: string): string {
    return layoutPath(dir);
  }

  /**
   * Create the files of a new store; capacity is rounded down to whole
   * slots (store-format.ts, createStore: space checked first, nothing left
   * behind on failure).
   */
  static create(dir: string, options: { blockSize: number; capacityBytes: number }): Promise<void> {
    return createStore(dir, options);
  }

  static exists(dir: string): Promise<boolean> {
    return storeExists(dir);
  }

  /**
   * Open an existing store and rebuild its index from the slot table. A
   * format 1 store is upgraded to format 2 first (store-format.ts), unless
   * `upgrade` is false (fsck's check, which writes nothing): then a store
   * without a sub-sums table is opened as it is.
   */
  static async open(dir: string, options: { upgrade?: boolean } = {}): Promise<LocalSlotStore> {
    const layout = await readLayoutForOpen(dir, options.upgrade ?? true);
    const dataFile = await open(join(dir, 'data'), 'r+');
    const slotsFile = await open(join(dir, 'slots'), 'r+');
    const subsumsFile = await open(subsumsPath(dir), 'r+').catch((err: NodeJS.ErrnoException) => {
      if (err.code === 'ENOENT' && options.upgrade === false) return undefined;
      throw err;
    });
    const records = new SharedArrayBuffer(layout.slotCount * RECORD_SIZE);
    const usedEnd = await readUsedRecords(slotsFile, records);
    const store = new LocalSlotStore(
      dir,
      layout,
      dataFile,
      slotsFile,
      subsumsFile,
      records,
      usedEnd,
      await hasher(),
    );
    store.rebuildIndex();
    return store;
  }

  /** Slots from usedEnd on are free (all-zero records) and stay with FreeSlots' frontier. */
  private rebuildIndex(): void {
    for (let slot = this.usedEnd - 1; slot >= 0; slot--) {
      const record = this.record(slot);
      if (record.getUint32(OFF_STATE, true) === SLOT_USED && this.hash.recordIsIntact(record)) {
        const ref = this.refOf(slot);
        const previous = this.refToSlot.set(ref.volumeId, ref.generation, ref.index, slot);
        // Two slots claiming one ref: the same block spilled twice for a
        // version that never committed (sync() writes free records before any
        // commit), so neither is referenced; keep one, the sweep frees it.
        if (previous !== undefined) {
          this.clearRecord(previous);
          this.uses.move(previous, SlotUse.Bound, SlotUse.Free, 'the index rebuild found');
          this.free.put(previous);
        }
        this.uses.move(slot, SlotUse.Free, SlotUse.Bound, 'the index rebuild found');
      } else if (record.getUint32(OFF_STATE, true) !== SLOT_FREE) {
        this.uses.move(slot, SlotUse.Free, SlotUse.SetAside, 'the index rebuild found');
      } else {
        this.free.put(slot);
      }
    }
    // Bases after every record is in the index: a patch may come before its base.
    for (const slot of this.refToSlot.slots()) {
      if (!needsBase(this.recordBytes, slot, this.wholeMask)) continue;
      const base = patchBaseOf(this.recordBytes, slot);
      const baseSlot = this.refToSlot.get(base.volumeId, base.generation, this.refOf(slot).index);
      if (baseSlot === undefined || needsBase(this.recordBytes, baseSlot, this.wholeMask)) {
        this.patchesWithoutBase++;
        continue;
      }
      this.pinBase(baseSlot);
      this.bases.attach(slot, baseSlot);
    }
    this.assertAccounted();
  }

  /** The use counts agree with the free slots and the ref index. */
  private assertAccounted(): void {
    this.uses.assertAccounted(this.free.count, this.refToSlot.size);
  }

  record(slot: number): DataView {
    return new DataView(this.records, slot * RECORD_SIZE, RECORD_SIZE);
  }

  refOf(slot: number): BlockRef {
    const base = slot * RECORD_SIZE;
    const v = this.recordView;
    return {
      volumeId: v.getUint32(base + OFF_VOLUME, true),
      generation: v.getUint32(base + OFF_GENERATION, true),
      index: join64(v.getUint32(base + OFF_INDEX_LO, true), v.getUint32(base + OFF_INDEX_HI, true)),
    };
  }

  get freeSlots(): number {
    return this.free.count + this.pendingRelease.length;
  }

  get usedSlots(): number {
    return this.refToSlot.size;
  }

  /** Slots whose records are damaged: kept out of use until `torusctl fsck` has looked (see SlotUse.SetAside). */
  get setAsideSlots(): number {
    return this.uses.count(SlotUse.SetAside);
  }

  isSetAside(slot: number): boolean {
    return this.uses.of(slot) === SlotUse.SetAside;
  }

  /**
   * Slots only map pages may take (0 unless set; a node sets
   * `defaultMapPageReserve`). A commit is what releases the blocks a version
   * replaced, and a commit writes map pages: were data allowed the last
   * slot, a store full of spilled blocks could never commit, so never free
   * anything again.
   */
  reservedSlots = 0;

  /** The reserve a node keeps: 1/256 of the store, at least 16 slots, at most an eighth. */
  get defaultMapPageReserve(): number {
    return Math.min(Math.max(16, Math.ceil(this.slotCount / 256)), Math.floor(this.slotCount / 8));
  }

  /**
   * Take a free slot; throws StoreFullError when none is left — for data,
   * when only the map pages' reserve is left.
   */
  allocate(purpose: 'data' | 'map-page' = 'data'): number {
    if (this.free.count <= (purpose === 'data' ? this.reservedSlots : 0)) {
      throw new StoreFullError(
        `local store ${this.dir} is full (${this.slotCount} blocks of ${this.blockSize} bytes in use, ` +
          `awaiting release or kept for map pages): trim or delete data, delete snapshots, or add capacity`,
      );
    }
    const slot = this.free.take();
    this.uses.move(slot, SlotUse.Free, SlotUse.Allocated, 'the free slots held');
    return slot;
  }

  /** Give back a slot that was allocated but never bound (a failed write). */
  unallocate(slot: number): void {
    this.uses.move(slot, SlotUse.Allocated, SlotUse.Free, 'unallocate() of');
    this.free.put(slot);
    this.assertAccounted();
  }

  /** Give back an allocated slot a worker wrote, record and all, that is not to be bound: released as a bound one is. */
  discardWritten(slot: number): void {
    this.releaseSlot(slot, SlotUse.Allocated);
    this.assertAccounted();
  }

  /**
   * Record that slot now durably-to-be holds ref (after a worker wrote it).
   * `baseSlot`: the slot holds a patch over that base, which pinBase()
   * pinned for it (the pin becomes the patch's).
   */
  bind(slot: number, ref: BlockRef, baseSlot?: number): void {
    this.uses.move(slot, SlotUse.Allocated, SlotUse.Bound, 'bind() of');
    if (baseSlot !== undefined) this.bases.attach(slot, baseSlot);
    const previous = this.refToSlot.set(ref.volumeId, ref.generation, ref.index, slot);
    if (previous !== undefined && previous !== slot) this.dropSlot(previous);
    this.assertAccounted();
  }

  /** Keep `slot` (bound, or held) stored while a patch over it is written; bind() hands the pin to the patch, unpinBase() gives it back. */
  pinBase(slot: number): void {
    const use = this.uses.of(slot);
    if (use !== SlotUse.Bound && use !== SlotUse.Held)
      invariantBroken(`pinning slot ${slot} as a base, which is ${nameOf(use)}`);
    this.bases.pin(slot);
  }

  /** A pin from pinBase() no patch took (its write failed): a held base with no patch left is freed. */
  unpinBase(slot: number): void {
    if (this.bases.unpin(slot) && this.uses.of(slot) === SlotUse.Held)
      this.releaseSlot(slot, SlotUse.Held);
  }

  /** The base slot of the patch in `slot`, or -1 when it is a whole block (or a patch whose base is missing). */
  baseOf(slot: number): number {
    return this.bases.baseOf(slot);
  }

  /** Does the block in `slot` need a base (a patch holding only part of its block)? */
  needsBase(slot: number): boolean {
    return needsBase(this.recordBytes, slot, this.wholeMask);
  }

  /** Is `slot` a patch (its record says so)? */
  isPatch(slot: number): boolean {
    return isPatchRecord(this.recordBytes, slot);
  }

  /** The sub-blocks the patch in `slot` holds itself (its record's present mask). */
  presentOf(slot: number): number {
    return patchPresent(this.recordBytes, slot);
  }

  /** Every bound or held slot holding a patch over a base (not whole patches). */
  patchesOverBases(): IterableIterator<number> {
    return this.bases.patches();
  }

  /** Slots held only as bases of patches (not in usedSlots), and patches over a base. */
  get heldSlots(): number {
    return this.uses.count(SlotUse.Held);
  }
  get patchSlots(): number {
    return this.bases.patchCount;
  }

  lookup(volumeId: number, generation: number, index: number): number | undefined {
    return this.refToSlot.get(volumeId, generation, index);
  }

  /** Resolves once every slot released so far can be allocated again. */
  async whenReleased(): Promise<void> {
    while (this.releaseWrite) await this.releaseWrite;
  }

  /** Drop a block. Call only once no committed version references it. */
  release(ref: BlockRef): void {
    const slot = this.refToSlot.delete(ref.volumeId, ref.generation, ref.index);
    if (slot === undefined) return;
    this.dropSlot(slot);
    this.assertAccounted();
  }

  /** A bound slot out of the ref index: held while patches are over it, else released. */
  private dropSlot(slot: number): void {
    if (this.bases.isPinned(slot)) {
      this.uses.move(slot, SlotUse.Bound, SlotUse.Held, 'holding');
      return;
    }
    this.releaseSlot(slot);
  }

  /**
   * Mark a slot free. The free record is written without fsync (losing it only
   * leaks the slot until the next start-up sweep), but the slot is not handed
   * out again until that write has happened: a racing write of the old record
   * could otherwise land after the new owner's record and tear it.
   */
  private releaseSlot(slot: number, from = SlotUse.Bound): void {
    this.uses.move(slot, from, SlotUse.Releasing, 'releasing');
    const base = this.bases.detach(slot);
    if (base !== undefined) this.unpinBase(base);
    this.clearRecord(slot);
    this.pendingRelease.push(slot);
    // Not once closed: writeReleased() would return at once, before this
    // assignment, leaving a settled promise whenReleased() would loop on.
    if (!this.releaseWrite && !this.closed) this.releaseWrite = this.writeReleased();
  }

  private clearRecord(slot: number): void {
    new Uint8Array(this.records, slot * RECORD_SIZE, RECORD_SIZE).fill(0);
  }

  private async writeReleased(): Promise<void> {
    while (this.pendingRelease.length > 0 && !this.closed) {
      const batch = this.pendingRelease;
      this.pendingRelease = [];
      try {
        // Consecutive slots' records in one write: a commit releases what it replaced by the thousand.
        batch.sort((a, b) => a - b);
        await writeRecordRuns(this.slotsFile, this.records, batch);
      } finally {
        for (let i = 0; i < batch.length; i++) {
          this.uses.move(batch[i], SlotUse.Releasing, SlotUse.Free, 'the release batch held');
          this.free.put(batch[i]);
        }
      }
    }
    this.releaseWrite = undefined;
  }

  /** The block bound to `slot`, or undefined when the slot is free or allocated but not yet bound. */
  boundRef(slot: number): BlockRef | undefined {
    if (this.record(slot).getUint32(OFF_STATE, true) !== SLOT_USED) return undefined;
    const ref = this.refOf(slot);
    return this.lookup(ref.volumeId, ref.generation, ref.index) === slot ? ref : undefined;
  }

  /** Iterate every bound block (for the start-up sweep and volume deletion). */
  *blocks(): IterableIterator<[BlockRef, number]> {
    for (const slot of this.refToSlot.slots()) yield [this.refOf(slot), slot];
  }

  /**
   * Write a block from the main thread (block-map pages; data blocks go
   * through the pool). The hash is of the bytes as stored.
   */
  async writeBlock(
    slot: number,
    ref: BlockRef,
    bytes: Uint8Array,
    flags: number,
  ): Promise<{ lo: number; hi: number }> {
    if (bytes.length !== this.blockSize)
      throw new RangeError(`block write of ${bytes.length} bytes, expected ${this.blockSize}`);
    const digest = this.hash.hash64(bytes);
    await this.dataFile.write(bytes, 0, bytes.length, slot * this.blockSize);
    const record = this.record(slot);
    fillRecord(record, ref, flags, digest.lo, digest.hi);
    this.hash.stampRecord(record);
    await this.slotsFile.write(
      new Uint8Array(this.records, slot * RECORD_SIZE, RECORD_SIZE),
      0,
      RECORD_SIZE,
      slot * RECORD_SIZE,
    );
    this.bind(slot, ref);
    return digest;
  }

  /**
   * A block received from a peer (replication, repair) into a slot from
   * allocate(): its bytes, and a record with the sender's hash, flags and —
   * sealed — nonce and tag; then bound, releasing an earlier copy of the
   * ref. Not hashed here: the receiver checked `hash` already. Nothing given
   * is kept once it resolves. On a failed write the slot is not bound and
   * its record cleared; the caller unallocates. Durable only after sync().
   */
  async writeReceivedBlock(
    slot: number,
    ref: BlockRef,
    bytes: Uint8Array,
    flags: number,
    hash: { lo: number; hi: number },
    nonce: Uint8Array,
    tag: Uint8Array,
  ): Promise<void> {
    const [failure] = await this.writeReceivedBlocks([
      { slot, ref, bytes, flags, hash, nonce, tag },
    ]);
    if (failure !== undefined) throw failure;
  }

  /** writeReceivedBlock for a batch, a run of consecutive slots per write (received-blocks.ts): each block's failure, in order. */
  async writeReceivedBlocks(blocks: readonly ReceivedBlock[]): Promise<(unknown | undefined)[]> {
    checkReceivedBlocks(blocks, this.blockSize);
    const failures: (unknown | undefined)[] = new Array(blocks.length).fill(undefined);
    await Promise.all(
      receivedRuns(blocks).map(async (run) => {
        try {
          await writeReceivedRun(this.receivedFiles, blocks, run);
        } catch (err) {
          for (const i of run) {
            this.clearRecord(blocks[i].slot);
            failures[i] = err ?? new Error('a received block write failed');
          }
          return;
        }
        for (const i of run) this.bind(blocks[i].slot, blocks[i].ref);
      }),
    );
    return failures;
  }

  /** Received patches, checked by the caller, each over baseSlots[i] (pinned: the pin becomes the patch's); the caller unpins on failure. */
  async writeReceivedPatches(patches: ReceivedPatch[], baseSlots: number[]): Promise<void> {
    try {
      await writeReceivedPatches(this.receivedFiles, patches);
    } catch (err) {
      for (const patch of patches) this.clearRecord(patch.slot);
      throw err;
    }
    patches.forEach((patch, i) => this.bind(patch.slot, patch.ref, baseSlots[i]));
  }

  /** Bytes [within, within + dest.length) of a slot's block, from the main thread (a peer's GET_RANGE); of a patch, from its slot and its base's. */
  async readPart(slot: number, within: number, dest: Uint8Array): Promise<void> {
    assert(within >= 0 && within + dest.length <= this.blockSize, 'a part lies within its block');
    if (!this.needsBase(slot)) return this.reads.span(slot, within, dest);
    const base = this.baseOf(slot);
    if (base < 0)
      throw new Error(`slot ${slot} holds a patch whose base block is missing from ${this.dir}`);
    await this.reads.patchPart(slot, base, this.presentOf(slot), within, dest);
  }

  /** A slot's sub-sums entry as stored into `entry` (subsumsEntrySize bytes); false when this store has no table. */
  async readSubsums(slot: number, entry: Uint8Array): Promise<boolean> {
    assert(entry.length === this.subsumsEntrySize, 'an entry buffer is sized for this store');
    return this.reads.entry(slot, entry);
  }

  /** A block into dest, from the main thread, and its hash as its record has it: xxh64, or a patch's tree hash. */
  async readBlock(slot: number, dest: Uint8Array): Promise<{ lo: number; hi: number }> {
    if (!this.isPatch(slot)) return this.reads.whole(slot, dest, false);
    const base = this.baseOf(slot);
    if (base < 0 && this.needsBase(slot))
      throw new Error(`slot ${slot} holds a patch whose base block is missing from ${this.dir}`);
    return this.reads.patch(slot, base, this.presentOf(slot), dest);
  }

  /** A slot's bytes whatever its record says (fsck), and their hash: tree hash when `tree`, else xxh64. */
  readOrphan(slot: number, dest: Uint8Array, tree: boolean): Promise<{ lo: number; hi: number }> {
    return this.reads.whole(slot, dest, tree);
  }

  /**
   * Make every write so far durable: the data and the records that point at
   * it — including the free records of slots released so far. That last
   * part matters: a block spilled twice for the same version leaves its first
   * slot released but still claiming the same ref on disk until that free
   * record lands; if a commit became durable first, a crash would leave two
   * slots claiming one committed ref, and the wrong one might be picked.
   *
   * The two files are synced side by side, not data first: their order only
   * matters for a crash during sync(), and a record made durable then names
   * a block of a version not yet committed, which the start-up sweep frees.
   * (One 3-node FLUSH: 7.3-8.7 ms instead of 8.2-9.2, docs/benchmarks.md.)
   */
  async sync(): Promise<void> {
    while (this.releaseWrite) await this.releaseWrite;
    await Promise.all([this.dataFile.datasync(), this.slotsFile.datasync()]);
  }

  async close(): Promise<void> {
    if (this.closed) return;
    await this.releaseWrite;
    this.closed = true;
    await this.dataFile.close();
    await this.slotsFile.close();
    await this.subsumsFile?.close();
  }
}
