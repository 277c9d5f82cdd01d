/**
 * PatchFolds: a volume's committed patches (../blocks/patches.ts) rewritten
 * as whole blocks once the volume is quiet.
 *
 * Why: a patch takes a slot of its own and keeps its base's, and a whole
 * read of it is two reads at two places. Random 4 KiB writes leave most
 * blocks of a volume patched: a 2 GiB volume held 1.85 GiB more as
 * patches' bases, and sequential reads after random writes ran at
 * 0.24-0.32x nbd-server (docs/benchmarks.md, session 32).
 *
 * How: a patched block is loaded whole into the cache (its base read whole
 * and its own span, judged by its tree hash) and marked dirty with nothing
 * changed, so the write-back stores it whole in a fresh slot and the
 * commit after the batch releases the patch — and, with its last patch,
 * its base. A fold is a write of the block's own bytes: it goes through the
 * cache and a version like any write, so nothing about readers or crashes
 * changes (a read of the patch in flight is a Loading cache slot the fold
 * waits on; a crash before the commit leaves the patch, as it was). A
 * batch is taken in index order, whole blocks in short gaps between
 * patches included, and its blocks take free slots in that order, in runs
 * of consecutive slots wherever the store has runs (free-slots.ts), so a
 * folded stretch reads back as one stretch of the data file. After heavy
 * random writes into a nearly full store the free slots are scattered
 * among blocks of other stretches, and runs stay short (docs/benchmarks.md,
 * session 34): contiguity there would need a compaction that moves those.
 *
 * Where: the patches are found in this node's store, so in a cluster only
 * blocks the writer holds a copy of are folded (about R of N); a folded
 * block's new version goes to every target whole, as any write does.
 *
 * When: FOLD_QUIET_MS (a node's) after the volume's last request, a batch of
 * FOLD_BATCH_BLOCKS at a time, until none is left or a request arrives
 * (which arms the wait again). A volume that is never quiet is not folded:
 * its writer would patch the blocks again.
 *
 * Not folded: a block some snapshot or clone may hold (generation at or
 * below what the last commit said is held: the patch stays for it, so a
 * fold would only add a slot), a block inherited by a clone (stored under
 * an ancestor's id), and a block cached other than Clean, spilled, or
 * trimmed (the write-back stores it anyway). A fold commits what was
 * written first: patches are made over committed blocks, so right after a
 * burst of writes most are in the version not yet committed (and what
 * snapshots hold is known only from a commit). A volume with nothing
 * written since it was opened is not folded (nothing commits to say).
 */
import { SlotState } from '../cache/block-cache.js';
import type { VolumeState } from './volume-state.js';

/** A node's volumes are quiet after this long without a request, and their patches folded (node/volume-services.ts). */
export const FOLD_QUIET_MS = 5_000;
/** Blocks folded per commit (16 MiB at 64 KiB blocks): a request waits at most about one batch. */
export const FOLD_BATCH_BLOCKS = 256;
/**
 * Whole blocks between two patches at most this many apart are folded too
 * (rewritten where they are): the batch then takes one run of free slots
 * for a whole stretch of the volume, and a sequential reader reads it as
 * one stretch of the data file. Without them, a stretch stayed split
 * between new slots and old ones (docs/benchmarks.md, session 34).
 */
export const FOLD_GAP_BLOCKS = 8;

export interface FoldAccess {
  /** Block `index` loaded whole into the cache: its cache slot (-1: a hole). */
  loaded(index: number): Promise<number>;
  /** Requests the volume has served so far (any that arrives ends quiet). */
  requests(): number;
  /** Commit what is dirty (the folded blocks). */
  commit(): Promise<void>;
  closed(): boolean;
}

export class PatchFolds {
  private timer: NodeJS.Timeout | undefined;
  /** The request count when the quiet wait was armed. */
  private armedAt = 0;
  private running: Promise<number> | undefined;

  /** How long without a request makes the volume quiet (VolumeServices.foldQuietMs; 0 or absent: never). */
  private readonly quietMs: number;

  constructor(
    private readonly state: VolumeState,
    private readonly access: FoldAccess,
  ) {
    this.quietMs = state.services.foldQuietMs ?? 0;
  }

  /** The volume was written: fold once it has been quiet for quietMs (if its store holds patches then). */
  noteWrite(): void {
    if (this.timer || this.quietMs <= 0) return;
    this.arm();
  }

  private arm(): void {
    this.armedAt = this.access.requests();
    this.timer = setTimeout(() => {
      this.timer = undefined;
      if (this.access.closed()) return;
      if (this.access.requests() !== this.armedAt) this.arm();
      else void this.foldAll(true);
    }, this.quietMs);
    this.timer.unref();
  }

  /** No fold starts from now on (the access says closed); resolves once one under way has stopped at its batch's end. */
  async stop(): Promise<void> {
    clearTimeout(this.timer);
    this.timer = undefined;
    await this.running;
  }

  /**
   * Fold batches until no patch is left to fold; with `whileQuiet`, also
   * until a request arrives (the wait is armed again). One run at a time (a
   * call meanwhile joins it). Resolves with the blocks folded; a failure is
   * logged, and the next write arms a new run.
   */
  foldAll(whileQuiet = false): Promise<number> {
    this.running ??= this.run(whileQuiet).finally(() => (this.running = undefined));
    return this.running;
  }

  private async run(whileQuiet: boolean): Promise<number> {
    const { services, name } = this.state;
    let folded = 0;
    const started = performance.now();
    try {
      if (this.access.closed()) return 0;
      // Patches are made over committed blocks, so after a burst of writes most are in the
      // version not yet committed — spilled, or (a cache larger than what was written) still
      // dirty slots holding part of their block: commit it first (the periodic commit, early).
      if (this.uncommitted() && (services.store.patchSlots > 0 || this.partlyDirty()))
        await this.access.commit();
      if (services.store.patchSlots === 0) return 0;
      // Where the patches are, looked up once (a store may hold millions); each batch is
      // checked again as it is taken: the last one's commit moved the version on.
      const patched = this.patchedBlocks();
      for (let from = 0; from < patched.length;) {
        if (this.access.closed()) break;
        if (whileQuiet && this.access.requests() !== this.armedAt) {
          this.noteWrite();
          break;
        }
        const { batch, next } = this.nextBatch(patched, from, FOLD_BATCH_BLOCKS);
        from = next;
        if (batch.length === 0) continue;
        const marked = await this.markDirty(batch);
        if (marked === 0) break; // the cache takes no dirty block now, or no load worked: after the next write
        await this.access.commit();
        folded += marked;
      }
    } catch (err) {
      services.log.warn(
        { volume: name, folded, err: String(err) },
        'folding patches into whole blocks failed; the patches stay, the next write tries again',
      );
    }
    if (folded > 0) {
      const seconds = (performance.now() - started) / 1000;
      services.log.info(
        { volume: name, blocks: folded, seconds },
        'patches folded into whole blocks',
      );
      services.onFold?.(name, folded, seconds);
    }
    return folded;
  }

  /** Written since the last commit, or not committed since opened (what snapshots hold is not known). */
  private uncommitted(): boolean {
    const { dirty, spilled, pendingHoles, heldThrough } = this.state;
    return dirty.size > 0 || spilled.size > 0 || pendingHoles.size > 0 || heldThrough === undefined;
  }

  /** Does a dirty block hold only part of its block (a commit may store it as a patch)? */
  private partlyDirty(): boolean {
    const { cache } = this.state.services;
    for (const index of this.state.dirty) {
      const slot = this.state.table.get(index);
      if (slot !== undefined && !cache.isWhole(slot)) return true;
    }
    return false;
  }

  /** The indexes of this volume's blocks stored here as patches over a base, ascending, once each. */
  private patchedBlocks(): number[] {
    const { store } = this.state.services;
    const indexes: number[] = [];
    for (const slot of store.patchesOverBases()) {
      const ref = store.refOf(slot);
      if (ref.volumeId === this.state.id) indexes.push(ref.index);
    }
    indexes.sort((a, b) => a - b);
    return indexes.filter((index, i) => i === 0 || indexes[i - 1] !== index);
  }

  /** The next batch to fold from patched[from] on: up to `limit` patches still there and foldable; and where the batch after it starts. */
  private nextBatch(
    patched: readonly number[],
    from: number,
    limit: number,
  ): { batch: number[]; next: number } {
    const { store } = this.state.services;
    const batch: number[] = [];
    let j = from;
    for (; j < patched.length && batch.length < limit; j++) {
      const index = patched[j];
      const slot = this.foldableSlot(index);
      if (slot === undefined || !store.needsBase(slot)) continue;
      // The whole blocks in a short gap since the last patch go too, so the stretch lands as one run.
      const last = batch.length > 0 ? batch[batch.length - 1] : index;
      if (index - last <= FOLD_GAP_BLOCKS + 1) {
        for (let gap = last + 1; gap < index && batch.length < limit - 1; gap++) {
          if (this.foldableSlot(gap) !== undefined) batch.push(gap);
        }
      }
      batch.push(index);
    }
    return { batch, next: j };
  }

  /**
   * The store slot of block `index`'s committed copy if a fold may rewrite
   * it: stored here under this volume's id (not an ancestor's), held by no
   * snapshot or clone, not written since, and in the cache only Clean if at
   * all; else undefined.
   */
  private foldableSlot(index: number): number | undefined {
    const { cache, store } = this.state.services;
    const { map, table, spilled, pendingHoles, dirty, heldThrough } = this.state;
    const entry = map.lookup(index);
    if (!entry || heldThrough === undefined || entry.generation <= heldThrough) return undefined;
    if (spilled.has(index) || pendingHoles.has(index) || dirty.has(index)) return undefined;
    const cached = table.get(index);
    if (cached !== undefined && cache.state[cached] !== SlotState.Clean) return undefined;
    return store.lookup(this.state.id, entry.generation, index);
  }

  /** Load each block whole and mark it Dirty unchanged, while the cache may take dirty blocks; how many were marked. */
  private async markDirty(indices: readonly number[]): Promise<number> {
    const { cache } = this.state.services;
    const { map, table, dirty } = this.state;
    const generations = indices.map((index) => map.lookup(index)!.generation);
    // A block that fails to load (its read logged and counted) is left as it is.
    const slots = await Promise.all(
      indices.map((index) => this.access.loaded(index).catch(() => -1)),
    );
    let marked = 0;
    for (let i = 0; i < indices.length; i++) {
      const index = indices[i];
      const slot = slots[i];
      // Only what is still the committed block, foldable, loaded whole and untouched since.
      if (slot < 0 || table.get(index) !== slot || !cache.isWhole(slot)) continue;
      if (this.foldableSlot(index) === undefined) continue;
      if (map.lookup(index)!.generation !== generations[i]) continue;
      if (!cache.mayDirty()) break;
      cache.setState(slot, SlotState.Dirty);
      cache.touch(slot);
      dirty.add(index);
      marked++;
    }
    return marked;
  }
}
