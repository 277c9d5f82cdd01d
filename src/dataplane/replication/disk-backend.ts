/**
 * DiskPeerBackend: a node's own LocalSlotStore, served to its peers. It is
 * what a PeerServer (TBP and gRPC) runs against in torusd: the blocks other
 * nodes replicate here, read back for repair, and list for rebalance and GC.
 * The contract is PeerBlockBackend's (../peer/backend.ts); what this one adds
 * or chooses is in README.md beside it.
 *
 * A put is checked whole before anything is stored (every block's size and
 * xxh64), then given a slot per block or none (a full store refuses the
 * batch), then written — data and a 64-byte record carrying the sender's
 * hash, flags, nonce and tag — and bound, replacing an earlier copy of the
 * same ref. The received bytes are views into the server's frame, valid only
 * until putBlocks settles, so every write has completed before it does.
 * Nothing is durable until sync() (one fdatasync of data and records, shared
 * by the callers that ask while it runs).
 */
import { IoError } from '../../common/errors.js';
import type { Logger } from '../../common/log.js';
import type { Hasher } from '../blocks/hash.js';
import {
  NONCE_SIZE,
  OFF_FLAGS,
  OFF_HASH_HI,
  OFF_HASH_LO,
  OFF_NONCE,
  OFF_TAG,
  RECORD_SEALED,
  RECORD_SIZE,
  TAG_SIZE,
} from '../blocks/record.js';
import { MAP_PAGE_BIT, formatRef, type BlockRef } from '../../model/block-ref.js';
import type { LocalSlotStore } from '../blocks/slot-store.js';
import {
  checkReceived,
  formatHash,
  type IntentHolder,
  type ListBlocksFilter,
  type PeerBlockBackend,
  type PeerNodeInfo,
} from '../peer/backend.js';
import {
  STATUS_NOT_FOUND,
  STATUS_OK,
  type BlockRange,
  type ListedBlock,
  type RangeReply,
  type WireBlock,
  carriesSums,
  type PatchResults,
  type WirePatch,
} from '../peer/wire.js';
import { PATCH_MAX_SUB_BLOCKS, wholeMaskOf } from '../blocks/patches.js';
import { SUB_BLOCK_SIZE, sealedHashOf } from '../blocks/sub-sums.js';
import { PatchChecks } from './patch-checks.js';
import { RateMeter } from './rate.js';

/** A read that finds its slot rebound this many times in a row gives up (INTERNAL); each retry is a fresh lookup. */
const READ_ATTEMPTS = 3;
/** A filtered listing yields to the event loop after skipping this many blocks, so a big store never stalls the node. */
const LIST_SCAN_SLICE = 8192;

/** A patch of a PUT_PATCHES after its checks: with `patch` (as stored) and its pinned `baseSlot` when OK. */
interface CheckedPatch {
  status: number;
  patch?: WirePatch;
  baseSlot?: number;
}

export class DiskPeerBackend implements PeerBlockBackend {
  /**
   * Bytes of copies stored for peers (their writes replicated here, and
   * copies rebalance or repair moved here): the node's replication rate.
   */
  readonly received = new RateMeter();
  /** The node's holder log, when it takes part in the replicated intent log (peer/backend.ts). */
  intents: IntentHolder | undefined;
  /** The node's commit of a volume it writes, for peers about to read it (peer/backend.ts). */
  commitVolume: ((volumeId: number) => Promise<void>) | undefined;
  /** The sync now running, and the one queued behind it for callers that came after it began. */
  private syncRunning: Promise<void> | undefined;
  private syncQueued: Promise<void> | undefined;
  private inflight = 0;
  private onIdle: (() => void) | undefined;
  private closed = false;
  private closing: Promise<void> | undefined;

  /**
   * @param store the node's open local store; this backend never closes it
   * @param uuid the node's uuid, as in the ring (info(), HELLO)
   * @param hash a loaded hasher (`await hasher()` from blocks/hash.ts)
   */
  /** What a received patch is checked against before it is written. */
  private readonly checks: PatchChecks;

  constructor(
    readonly store: LocalSlotStore,
    readonly uuid: string,
    private readonly log: Logger,
    private readonly hash: Hasher,
  ) {
    this.checks = new PatchChecks(store, hash);
  }

  info(): PeerNodeInfo {
    const { store } = this;
    return {
      uuid: this.uuid,
      capacityBytes: store.slotCount * store.blockSize,
      usedBytes: store.usedSlots * store.blockSize,
      blocks: store.usedSlots,
    };
  }

  /**
   * Store a batch. Refused whole, nothing stored, when a block has the wrong
   * size (IoError EINVAL → BAD_REQUEST), does not match its hash
   * (ChecksumError → CHECKSUM) or the store has no slot for every block
   * (StoreFullError → NO_SPACE). A failed write (EIO, ENOSPC of a sparse
   * data file) leaves the blocks written before it stored, each whole.
   */
  putBlocks(blocks: readonly WireBlock[]): Promise<void> {
    return this.track(async () => {
      const { store } = this;
      for (const block of blocks) {
        if (block.data.length !== store.blockSize) {
          throw new IoError(
            'EINVAL',
            `${formatRef(block.ref)}: a block of ${block.data.length} bytes; this node stores blocks of ${store.blockSize}`,
          );
        }
        // On the main thread for now: xxh64 of a 64 KiB block is ~14 µs here,
        // so a full 16 MiB batch holds the event loop ~3.6 ms. The plan is to
        // hand it to the data pool's workers, as volume writes do, once the
        // pool takes work from callers other than volumes.
        checkReceived(this.hash, block);
      }
      const slots: number[] = [];
      try {
        for (let i = 0; i < blocks.length; i++) slots.push(store.allocate());
      } catch (err) {
        while (slots.length > 0) store.unallocate(slots.pop()!);
        throw err;
      }
      // All at once, consecutive slots sharing writes (LocalSlotStore.writeReceivedBlocks), and
      // every one settled before we return: the blocks are views into a frame that is reused as
      // soon as this promise settles.
      const received = store.writeReceivedBlocks(
        blocks.map((block, i) => ({
          slot: slots[i],
          ref: block.ref,
          bytes: block.data,
          flags: block.flags,
          hash: { lo: block.hashLo, hi: block.hashHi },
          nonce: block.nonce,
          tag: block.tag,
        })),
      );
      const results = await received.catch((err: unknown) => {
        for (const slot of slots) store.unallocate(slot); // refused before any write
        throw err;
      });
      const failures: unknown[] = [];
      for (let i = 0; i < results.length; i++) {
        if (results[i] === undefined) continue;
        store.unallocate(slots[i]);
        failures.push(results[i]);
      }
      this.received.add((blocks.length - failures.length) * store.blockSize);
      if (failures.length > 0) {
        const first = failures[0];
        this.log.warn(
          {
            err: (first as Error)?.message ?? String(first),
            failed: failures.length,
            of: blocks.length,
          },
          'writing received blocks failed',
        );
        throw first;
      }
    });
  }

  /**
   * The block as stored, in a fresh buffer, with the flags, hash, nonce and
   * tag of its record. Not verified on the way out (the receiver checks the
   * hash), though a mismatch seen here is logged: the local copy is damaged.
   */
  getBlock(
    ref: BlockRef,
    allocate: (size: number) => Buffer = Buffer.allocUnsafe,
  ): Promise<WireBlock | undefined> {
    return this.track(async () => {
      const { store } = this;
      for (let attempt = 0; attempt < READ_ATTEMPTS; attempt++) {
        const slot = store.lookup(ref.volumeId, ref.generation, ref.index);
        if (slot === undefined) return undefined;
        // The record as it is now, before the read yields: if the ref is
        // replaced or dropped while we read, its slot may be freed and
        // rewritten with another block under us, which the lookup after the
        // read notices.
        const block = this.fromRecord(ref, slot, allocate(store.blockSize));
        const digest = await store.readBlock(slot, block.data);
        if (store.lookup(ref.volumeId, ref.generation, ref.index) !== slot) continue;
        if (digest.lo !== block.hashLo || digest.hi !== block.hashHi) {
          // readBlock hashes every read anyway; sent as is, the receiver refuses it.
          this.log.warn(
            {
              ref: formatRef(ref),
              slot,
              stored: formatHash(block.hashHi, block.hashLo),
              read: formatHash(digest.hi, digest.lo),
            },
            'block read for a peer does not match its checksum: the local copy is damaged',
          );
        }
        return block;
      }
      throw new Error(
        `${formatRef(ref)} moved to another slot ${READ_ATTEMPTS} times while being read`,
      );
    });
  }

  /**
   * GET_RANGE: the range's bytes and the slot's sub-sums entry, read as
   * stored and not checked here (the reader checks both against the map's
   * xxh64). A sealed block, or a store without the table, answers whole.
   */
  getRange(
    range: BlockRange,
    allocate: (size: number) => Buffer = Buffer.allocUnsafe,
  ): Promise<RangeReply | undefined> {
    const { store } = this;
    const { ref, offset, length } = range;
    if (offset + length > store.blockSize)
      return Promise.reject(
        new IoError('EINVAL', `range ${offset}+${length} of a ${store.blockSize}-byte block`),
      );
    const slot = store.lookup(ref.volumeId, ref.generation, ref.index);
    if (slot === undefined) return Promise.resolve(undefined);
    const whole = (): Promise<RangeReply | undefined> =>
      this.getBlock(ref, allocate).then((block) =>
        block ? { offset: 0, entry: undefined, block } : undefined,
      );
    if (store.record(slot).getUint32(OFF_FLAGS, true) & RECORD_SEALED) return whole();
    return this.track(async (): Promise<RangeReply | undefined> => {
      const entry = new Uint8Array(store.subsumsEntrySize);
      const data = allocate(length);
      const block = this.fromRecord(ref, slot, data);
      // No table, or the slot rebound while we read (the bytes may be another block's): answer whole.
      // Both at once: either may be a round trip through the libuv pool (InlineReads).
      const [hasEntry] = await Promise.all([
        store.readSubsums(slot, entry),
        store.readPart(slot, offset, data),
      ]);
      if (!hasEntry) return undefined;
      if (store.lookup(ref.volumeId, ref.generation, ref.index) !== slot) return undefined;
      return { offset, entry, block };
    }).then((reply) => reply ?? whole());
  }

  /**
   * PUT_PATCHES (peer/wire-patches.ts): each patch checked against its base
   * here before anything of it is stored — the entry intact and its tree
   * hash that of its sums, each sent sub-block its sum, every other sum the
   * base's own (the base's entry intact for the base's hash) — then written
   * into a fresh slot over the base (pinned from the lookup on, so GC or a
   * commit releasing it meanwhile only makes it held). A batch with a patch
   * this store can never hold (entry size, index, mask) is refused whole
   * (EINVAL → BAD_REQUEST); a full store refuses what is left (NO_SPACE).
   */
  putPatches(patches: readonly WirePatch[]): Promise<PatchResults> {
    return this.track(async () => {
      const { store } = this;
      const wholeMask = wholeMaskOf(store.blockSize);
      for (const p of patches) {
        const problem =
          store.blockSize / SUB_BLOCK_SIZE > PATCH_MAX_SUB_BLOCKS
            ? `blocks of ${store.blockSize} bytes are never patches`
            : !carriesSums(p) && p.entry.length !== store.subsumsEntrySize
              ? `a sub-sums entry of ${p.entry.length} bytes; this node's are ${store.subsumsEntrySize}`
              : (p.present & ~wholeMask) !== 0 || p.ref.index >= MAP_PAGE_BIT
                ? `${formatRef(p.ref)}: sub-blocks 0x${(p.present >>> 0).toString(16)} of a block of ${store.blockSize} bytes`
                : undefined;
        if (problem) throw new IoError('EINVAL', problem);
      }
      const settled = await Promise.allSettled(patches.map((patch) => this.checkedPatch(patch)));
      const checked = settled.map((r) => (r.status === 'fulfilled' ? r.value : undefined));
      const ok = checked.filter((c) => c?.status === STATUS_OK) as Required<CheckedPatch>[];
      const failed = settled.find((r) => r.status === 'rejected');
      if (failed) {
        for (const c of ok) store.unpinBase(c.baseSlot);
        throw (failed as PromiseRejectedResult).reason;
      }
      const statuses = Uint8Array.from(checked, (c) => c!.status);
      const slots: number[] = [];
      try {
        for (let k = 0; k < ok.length; k++) slots.push(store.allocate());
        await store.writeReceivedPatches(
          ok.map(({ patch, baseSlot }, k) => {
            const { volumeId, generation } = store.refOf(baseSlot);
            const hash = sealedHashOf(patch.entry);
            return { ...patch, slot: slots[k], base: { volumeId, generation }, hash };
          }),
          ok.map((c) => c.baseSlot),
        );
      } catch (err) {
        for (const slot of slots) store.unallocate(slot);
        for (const c of ok) store.unpinBase(c.baseSlot);
        throw err;
      }
      this.received.add(ok.reduce((sum, c) => sum + c.patch.data.length, 0));
      const hashes = new Uint32Array(2 * patches.length);
      checked.forEach((c, i) => {
        if (c!.status !== STATUS_OK) return;
        const { lo, hi } = sealedHashOf(c!.patch!.entry);
        hashes[2 * i] = lo;
        hashes[2 * i + 1] = hi;
      });
      return { statuses, hashes };
    });
  }

  /** A patch checked against its base here: OK with the patch as it is to be stored (base pinned), or why not. */
  private async checkedPatch(sent: WirePatch): Promise<CheckedPatch> {
    const { store, checks } = this;
    const found = checks.baseFor(sent);
    if (!found) return { status: STATUS_NOT_FOUND };
    const { base: baseSlot, via } = found;
    store.pinBase(baseSlot); // before anything yields; kept for the write when OK
    let status = STATUS_NOT_FOUND;
    try {
      // From a writer without the base: its entry made here, from the named base's.
      let patch: WirePatch | undefined = sent;
      let baseEntry: Uint8Array | undefined;
      if (carriesSums(sent)) {
        const made = await checks.withEntry(sent, via < 0 ? baseSlot : via);
        patch = made?.patch;
        if (via < 0) baseEntry = made?.namedEntry;
      }
      if (patch && via >= 0) patch = await checks.keeping(patch, via);
      if (!patch) return { status };
      status = await checks.check(patch, baseSlot, baseEntry);
      return status === STATUS_OK ? { status, patch, baseSlot } : { status };
    } finally {
      if (status !== STATUS_OK) store.unpinBase(baseSlot);
    }
  }

  hasBlocks(refs: readonly BlockRef[], hashes?: Uint32Array): Promise<boolean[]> {
    return this.track(async () =>
      refs.map((ref, i) => {
        const slot = this.store.lookup(ref.volumeId, ref.generation, ref.index);
        if (slot === undefined) return false;
        if (!hashes) return true;
        const record = this.store.record(slot);
        return (
          record.getUint32(OFF_HASH_LO, true) === hashes[2 * i] &&
          record.getUint32(OFF_HASH_HI, true) === hashes[2 * i + 1]
        );
      }),
    );
  }

  /**
   * Release the blocks held (their slots are reused once the free records are
   * written). The caller — GC, rebalance — has established that no committed
   * version needs them here.
   */
  deleteBlocks(refs: readonly BlockRef[]): Promise<number> {
    return this.track(async () => {
      let dropped = 0;
      for (const ref of refs) {
        if (this.store.lookup(ref.volumeId, ref.generation, ref.index) === undefined) continue;
        this.store.release(ref);
        dropped++;
      }
      return dropped;
    });
  }

  /**
   * Make everything stored so far durable (LocalSlotStore.sync: data and
   * records). One sync at a time: a caller that comes while one runs waits
   * for the next, which it shares with everyone else who came meanwhile — the
   * running one may have started before that caller's puts had finished.
   */
  sync(): Promise<void> {
    if (!this.syncRunning) return this.startSync();
    this.syncQueued ??= this.syncRunning
      .catch(() => undefined)
      .then(() => {
        this.syncQueued = undefined;
        return this.startSync();
      });
    return this.syncQueued;
  }

  private startSync(): Promise<void> {
    const run: Promise<void> = this.track(() => this.store.sync()).finally(() => {
      if (this.syncRunning === run) this.syncRunning = undefined;
    });
    this.syncRunning = run;
    return run;
  }

  /**
   * Every block held (or those of one volume), as the store's index has them
   * when each is reached (RefIndex): blocks bound or dropped
   * during the listing may or may not appear and the rest appear once.
   */
  async *listBlocks(filter: ListBlocksFilter): AsyncIterable<ListedBlock> {
    let skipped = 0;
    for (const [ref, slot] of this.store.blocks()) {
      if (this.closed) return;
      if (filter.volumeId !== undefined && ref.volumeId !== filter.volumeId) {
        if (++skipped % LIST_SCAN_SLICE === 0)
          await new Promise((resolve) => setImmediate(resolve));
        continue;
      }
      const record = this.store.record(slot);
      yield {
        ref,
        flags: record.getUint32(OFF_FLAGS, true),
        hashLo: record.getUint32(OFF_HASH_LO, true),
        hashHi: record.getUint32(OFF_HASH_HI, true),
        length: this.store.blockSize,
      };
    }
  }

  /**
   * Refuse new requests (IoError ESHUTDOWN → SHUTTING_DOWN) and resolve once
   * the ones running have finished with the store. Call after the PeerServer
   * has closed (whose drain may give up on requests still running) and before
   * the store closes.
   */
  close(): Promise<void> {
    this.closed = true;
    this.closing ??= (async () => {
      while (this.inflight > 0) await new Promise<void>((resolve) => (this.onIdle = resolve));
    })();
    return this.closing;
  }

  private fromRecord(ref: BlockRef, slot: number, data: Buffer): WireBlock {
    const record = this.store.record(slot);
    const base = slot * RECORD_SIZE;
    return {
      ref: { volumeId: ref.volumeId, generation: ref.generation, index: ref.index },
      flags: record.getUint32(OFF_FLAGS, true),
      hashLo: record.getUint32(OFF_HASH_LO, true),
      hashHi: record.getUint32(OFF_HASH_HI, true),
      // Copies: the record table is shared memory that a later write of this slot changes.
      nonce: Buffer.from(new Uint8Array(this.store.records, base + OFF_NONCE, NONCE_SIZE)),
      tag: Buffer.from(new Uint8Array(this.store.records, base + OFF_TAG, TAG_SIZE)),
      data,
    };
  }

  private async track<T>(run: () => Promise<T>): Promise<T> {
    if (this.closed) throw new IoError('ESHUTDOWN', `node ${this.uuid} is shutting down`);
    this.inflight++;
    try {
      return await run();
    } finally {
      if (--this.inflight === 0) this.onIdle?.();
    }
  }
}
