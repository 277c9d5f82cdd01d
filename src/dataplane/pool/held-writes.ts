/**
 * HeldWrites: a pool worker's per-slot writes of one write batch —
 * blocks' bytes, sub-sums entries or slot records, fixed-size items at
 * slot × itemSize in their file — kept and written at the batch's end, one
 * system call per run of consecutive slots instead of one per block. A write-back batch is mostly consecutive slots (the store hands out
 * its free slots in runs, free-slots.ts), so a 4 KiB patch goes from four system calls
 * (a read of its base's entry, its bytes, its entry, its record) to about
 * two.
 *
 * Order is what it was: every block's bytes, then every entry, then every
 * record (the caller writes them in that order), so a record never names
 * bytes or an entry not yet written. Blocks are held by reference (their
 * cache slots, which nothing writes while a task stores them), entries
 * copied, records named (they are in the slot table already). Nothing is durable before the store's
 * sync() either way.
 *
 * Around the page cache: blocks' bytes may go to a handle opened O_DIRECT
 * (worker.ts says when), with the ordinary handle as `fallbackFd`. A write
 * the kernel refuses there (EINVAL: memory or offset not aligned, a file
 * system that checks only at write time) is written again through the
 * fallback, which every later write then uses.
 *
 * A slot held twice keeps its last item. `held(slot)` answers a read of an
 * item not yet written (a patch over a block stored earlier in the same
 * batch reads that block's entry).
 */
import { writevSync } from 'node:fs';
import { pwriteAll } from './file-io.js';

/** Most buffers one writev takes (Linux's IOV_MAX is 1024). */
const MAX_IOVECS = 1024;

export class HeldWrites {
  /** Slots in the order their items were held. */
  private slots: number[] = [];
  /** Item i's bytes at i × itemSize (entries); unused for records, which live in `source`. */
  private bytes: Uint8Array;
  /** Item i itself (blocks, held by reference). */
  private readonly refs: Uint8Array[] = [];
  private order: number[] = [];
  private readonly iovecs: Uint8Array[] = [];
  /** Whether items are held (between hold() and write()); otherwise written at once. */
  holding = false;
  /** Writes went to `fallbackFd` since one was refused on the handle given first. */
  fellBack = false;

  /**
   * fd: the file the items go to. source: where the items already are
   * (the shared slot table), or undefined when put() passes each. byReference:
   * keep put()'s item itself, not a copy (it must not change until write()).
   */
  constructor(
    private fd: number,
    private readonly itemSize: number,
    private readonly source?: Uint8Array,
    private readonly byReference = false,
    private fallbackFd?: number,
  ) {
    this.bytes = new Uint8Array(source || byReference ? 0 : itemSize * 64);
  }

  /** From now until write(), items are held. */
  hold(): void {
    this.holding = true;
  }

  /** `slot`'s item: written at once, or held until write(). `item` is copied (entries); records pass none. */
  put(slot: number, item?: Uint8Array): void {
    if (!this.holding) {
      const bytes = item ?? this.sourceItem(slot);
      try {
        pwriteAll(this.fd, bytes, slot * this.itemSize);
      } catch (err) {
        if (!this.fallBack(err)) throw err;
        pwriteAll(this.fd, bytes, slot * this.itemSize);
      }
      return;
    }
    if (item && this.byReference) {
      this.refs.push(item);
    } else if (item) {
      const at = this.slots.length * this.itemSize;
      if (at + this.itemSize > this.bytes.length) {
        const grown = new Uint8Array(this.bytes.length * 2);
        grown.set(this.bytes);
        this.bytes = grown;
      }
      this.bytes.set(item, at);
    }
    this.slots.push(slot);
  }

  /** The item held for `slot` (the last one), or undefined when none is held. */
  held(slot: number): Uint8Array | undefined {
    for (let i = this.slots.length - 1; i >= 0; i--)
      if (this.slots[i] === slot) return this.itemAt(i);
    return undefined;
  }

  /** Write what is held, a run of consecutive slots per call, and stop holding. */
  write(): void {
    try {
      const { slots, order } = this;
      order.length = 0;
      for (let i = 0; i < slots.length; i++) order.push(i);
      // By slot, and of one slot the last held first: the one written.
      order.sort((a, b) => slots[a] - slots[b] || b - a);
      let k = 0;
      while (k < order.length) {
        const first = slots[order[k]];
        let next = first;
        this.iovecs.length = 0;
        while (k < order.length && slots[order[k]] === next && this.iovecs.length < MAX_IOVECS) {
          this.iovecs.push(this.itemAt(order[k]));
          next++;
          k++;
          while (k < order.length && slots[order[k]] === next - 1) k++; // older items of that slot
        }
        try {
          this.writeRun(first, next);
        } catch (err) {
          if (!this.fallBack(err)) throw err;
          this.writeRun(first, next); // the run's iovecs are still set
        }
      }
    } finally {
      this.discard();
    }
  }

  /** Drop what is held (a batch that failed) and stop holding. */
  discard(): void {
    this.slots.length = 0;
    this.refs.length = 0;
    this.iovecs.length = 0;
    this.holding = false;
  }

  /** A write failed with `err`: if the handle refused it (EINVAL) and a fallback is left, use that from now on (true: write again). */
  private fallBack(err: unknown): boolean {
    if ((err as NodeJS.ErrnoException).code !== 'EINVAL' || this.fallbackFd === undefined)
      return false;
    this.fd = this.fallbackFd;
    this.fallbackFd = undefined;
    this.fellBack = true;
    return true;
  }

  private writeRun(first: number, end: number): void {
    const position = first * this.itemSize;
    if (this.source) {
      // Records: the run is one contiguous range of the slot table.
      pwriteAll(this.fd, this.source.subarray(position, end * this.itemSize), position);
      return;
    }
    const total = (end - first) * this.itemSize;
    const done = this.iovecs.length === 1 ? 0 : writevSync(this.fd, this.iovecs, position);
    if (done === total) return;
    // One item, or a short writev (rare on a regular file): the rest an item at a time.
    for (let slot = first + Math.floor(done / this.itemSize); slot < end; slot++) {
      const item = this.iovecs[slot - first];
      const skip = slot === first + Math.floor(done / this.itemSize) ? done % this.itemSize : 0;
      pwriteAll(this.fd, item.subarray(skip), slot * this.itemSize + skip);
    }
  }

  private itemAt(i: number): Uint8Array {
    if (this.source) return this.sourceItem(this.slots[i]);
    if (this.byReference) return this.refs[i];
    return this.bytes.subarray(i * this.itemSize, (i + 1) * this.itemSize);
  }

  private sourceItem(slot: number): Uint8Array {
    return this.source!.subarray(slot * this.itemSize, (slot + 1) * this.itemSize);
  }
}
