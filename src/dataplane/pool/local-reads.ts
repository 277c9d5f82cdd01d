/**
 * LocalReads: a read task's blocks from this node's store into their cache
 * slots (a pool worker's half of a read; worker.ts), each checked against
 * the map's hash or, read in part or as a patch, its sub-sums entry
 * (sub-block-io.ts), and opened if sealed. Whole plain blocks in consecutive
 * store slots are read by one readv. A block that fails is reported in the
 * result, never left in its slot as data.
 */
import type { Hasher } from '../blocks/hash.js';
import { isPatchRecord, patchPresent, wholeMaskOf } from '../blocks/patches.js';
import { NONCE_SIZE, OFF_NONCE, OFF_TAG, RECORD_SIZE, TAG_SIZE } from '../blocks/record.js';
import { preadAll, preadvAll } from './file-io.js';
import { blockSealerFor, refAad } from './sealing.js';
import type { PatchLayout, SubBlockIo } from './sub-block-io.js';
import {
  READ_CHECKSUM_MISMATCH,
  READ_IO_ERROR,
  READ_OK,
  READ_OPEN_FAILED,
  type ReadBatchResult,
  type ReadBatchTask,
} from './tasks.js';

/** Most blocks one readv reads (a read task carries BATCH; far below the kernel's 1024 buffers a call). */
const RUN_MAX_BLOCKS = 64;

/** What a worker reads with: its store, its view of the shared cache, its hasher. */
export interface LocalReadIo {
  blockSize: number;
  /** The store's data file (blocks at slot × blockSize). */
  dataFd: number;
  /** The store's slot records (shared with the main thread). */
  records: Uint8Array;
  hash: Hasher;
  subBlocks: SubBlockIo;
  /** A block-sized buffer for sealed bytes before they are opened. */
  scratch: Uint8Array;
  /** A cache slot's bytes. */
  cacheBlock(slot: number): Uint8Array;
}

export class LocalReads {
  private readonly patchLayout: PatchLayout = { baseSlot: -1, present: 0 };
  private readonly hashOut = new Uint32Array(2);
  private readonly wholeMask: number;

  constructor(private readonly io: LocalReadIo) {
    this.wholeMask = wholeMaskOf(io.blockSize);
  }

  /** A read task's blocks from this node's store into their cache slots, each with its status. */
  read(task: ReadBatchTask): ReadBatchResult {
    const n = task.cacheSlots.length;
    const status = new Uint8Array(n);
    const reasons: string[] = new Array(n).fill('');
    const sealer = task.key ? blockSealerFor(task.volumeId, task.key) : undefined;
    let whole: Uint8Array | undefined;
    // Blocks before this index were read already, by one readv of their run.
    let readUntil = 0;
    for (let i = 0; i < n; i++) {
      const slot = task.storeSlots[i];
      if (slot < 0) {
        status[i] = READ_IO_ERROR;
        reasons[i] = 'no local copy';
        continue;
      }
      const dest = this.io.cacheBlock(task.cacheSlots[i]);
      const wanted = task.subBlocks?.[i] ?? 0;
      if (!sealer && i >= readUntil) readUntil = this.readRun(task, i);
      if (isPatchRecord(this.io.records, slot)) {
        status[i] = this.readPatch(task, i, slot, dest, wanted, i < readUntil);
        reasons[i] = this.io.subBlocks.reason;
        if (this.io.subBlocks.readWhole) (whole ??= new Uint8Array(n))[i] = 1;
        continue;
      }
      if (wanted !== 0 && !sealer) {
        status[i] = this.io.subBlocks.read(
          slot,
          dest,
          wanted,
          task.hashes[2 * i],
          task.hashes[2 * i + 1],
        );
        reasons[i] = this.io.subBlocks.reason;
        if (this.io.subBlocks.readWhole) (whole ??= new Uint8Array(n))[i] = 1;
        continue;
      }
      const landing = sealer ? this.io.scratch : dest;
      try {
        if (i >= readUntil) preadAll(this.io.dataFd, landing, slot * this.io.blockSize);
      } catch (err) {
        status[i] = READ_IO_ERROR;
        reasons[i] = (err as Error).message;
        continue;
      }
      this.io.hash.hash64Into(landing, this.hashOut, 0);
      if (this.hashOut[0] !== task.hashes[2 * i] || this.hashOut[1] !== task.hashes[2 * i + 1]) {
        status[i] = READ_CHECKSUM_MISMATCH;
        reasons[i] =
          `stored xxh64 ${hex(this.hashOut[1], this.hashOut[0])}, expected ${hex(task.hashes[2 * i + 1], task.hashes[2 * i])}`;
        continue;
      }
      if (sealer) {
        const base = slot * RECORD_SIZE;
        try {
          sealer.open(
            landing,
            dest,
            this.io.records.subarray(base + OFF_NONCE, base + OFF_NONCE + NONCE_SIZE),
            this.io.records.subarray(base + OFF_TAG, base + OFF_TAG + TAG_SIZE),
            refAad(task.volumeId, task.generations[i], task.indices[i]),
            task.generations[i],
          );
        } catch (err) {
          status[i] = READ_OPEN_FAILED;
          reasons[i] = (err as Error).message;
          continue;
        }
      }
      status[i] = READ_OK;
    }
    return whole ? { status, reasons, whole } : { status, reasons };
  }

  /**
   * Blocks asked whole from `first` on whose first reads follow one another
   * in the store — a plain block's slot, a patch's base — read by one readv
   * into their cache slots: one system call, and one request the kernel's
   * read-ahead sees whole, instead of one per block. A sequential reader's
   * blocks were mostly stored in order, and so were the bases of the patches
   * random writes left over them. Returns the end of the run read, or
   * `first` when there is no run or the readv failed (each block is then
   * read, and fails, on its own).
   */
  private readRun(task: ReadBatchTask, first: number): number {
    const { cacheSlots } = task;
    const start = this.firstRead(task, first);
    if (start < 0) return first;
    let from = start;
    let end = first + 1;
    while (end < cacheSlots.length && end - first < RUN_MAX_BLOCKS) {
      const next = this.firstRead(task, end);
      if (next !== from + 1) break;
      from = next;
      end++;
    }
    if (end === first + 1) return first;
    const dests: Uint8Array[] = [];
    for (let i = first; i < end; i++) dests.push(this.io.cacheBlock(cacheSlots[i]));
    try {
      preadvAll(this.io.dataFd, dests, start * this.io.blockSize);
    } catch {
      return first;
    }
    return end;
  }

  /**
   * The store slot whose whole block block `i` of an unsealed task reads
   * first — its own, or a patch's base's — or -1 when it is not read whole
   * from one slot (sub-blocks wanted, no local copy, a patch with no base).
   */
  private firstRead(task: ReadBatchTask, i: number): number {
    const slot = task.storeSlots[i];
    if (slot < 0 || (task.subBlocks?.[i] ?? 0) !== 0) return -1;
    if (!isPatchRecord(this.io.records, slot)) return slot;
    if (patchPresent(this.io.records, slot) === this.wholeMask) return slot;
    return task.baseSlots?.[i] ?? -1;
  }

  /**
   * A patch's sub-blocks `wanted` into dest, each from its slot or its
   * base's, checked against the patch's sub-sums entry; asked whole (0), its
   * base and its span read whole and judged by the tree hash
   * (sub-block-io.ts).
   */
  private readPatch(
    task: ReadBatchTask,
    i: number,
    slot: number,
    dest: Uint8Array,
    wanted: number,
    firstReadDone: boolean,
  ): number {
    this.patchLayout.baseSlot = task.baseSlots?.[i] ?? -1;
    this.patchLayout.present = patchPresent(this.io.records, slot);
    if (this.patchLayout.baseSlot < 0 && this.patchLayout.present !== this.wholeMask) {
      this.io.subBlocks.reason = `slot ${slot} holds a patch whose base block is missing`;
      this.io.subBlocks.readWhole = false;
      return READ_IO_ERROR;
    }
    if (wanted === 0)
      return this.io.subBlocks.readPatchWhole(
        slot,
        dest,
        task.hashes[2 * i],
        task.hashes[2 * i + 1],
        this.patchLayout,
        firstReadDone,
      );
    return this.io.subBlocks.read(
      slot,
      dest,
      wanted,
      task.hashes[2 * i],
      task.hashes[2 * i + 1],
      this.patchLayout,
    );
  }
}

function hex(hi: number, lo: number): string {
  return hi.toString(16).padStart(8, '0') + lo.toString(16).padStart(8, '0');
}
