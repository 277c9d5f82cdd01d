/**
 * Rebalancer: block-centric rebalance and cluster GC of one node's store.
 *
 * Each node walks its own local store (LocalSlotStore.blocks()) in chunks,
 * and for every block it holds:
 *   1. garbage (gc-view.ts: of a deleted volume, or superseded by a committed
 *      version — a copy of a committed generation with a hash its version
 *      does not reference included: a block written again for that version
 *      and stored elsewhere) → released here. Every node frees its own
 *      garbage, so no DELETE goes over the wire and a node that is down when a volume is
 *      deleted frees that volume's blocks at its next run after it is back.
 *   2. otherwise, once committed (in flight, it is its writer's to place),
 *      its current write targets (placement: the first R live ring
 *      nodes) are asked which hold it (HAS_BLOCKS, one request per target per
 *      chunk); the missing copies are PUT from the local copy (the receiver
 *      re-checks the checksum) and those targets are SYNCed.
 *   3. surplus — this node is not a target, every one of R targets confirms
 *      a durable copy (held or just put, then synced), the view says a
 *      committed version references the block, and placement did not change
 *      during the chunk → the local copy is released.
 *
 * What it never drops: a block no GC view vouches for (the run had no view,
 * or the block is in flight: a generation not committed yet, which a writer
 * on this node may still be reading by ref), nor one with fewer than R
 * confirmed copies elsewhere (fewer than R live nodes, a target that failed
 * to answer, store or sync). A failure costs a later run, never a copy.
 *
 * When (a BackgroundJob, ../jobs): at start, after a ring or liveness change
 * (debounced), and every `intervalMs`. Runs never overlap; a trigger during
 * a run makes one more run after it. Copies are paced by the job's token
 * bucket (bytes/s), and the walk yields to the event loop between chunks,
 * so NBD I/O keeps its turns.
 *
 * It is the cluster's only re-replication: a block any live storage node
 * holds is pushed to its targets by that node, whoever wrote it (a
 * store-less client's writes included), so no writer walks its volumes.
 *
 * Residual risk, by design: two nodes with different views of the ring at the
 * same moment could each find itself surplus and the other a target, and both
 * drop. A copy then survives on the common targets (each drop needs R
 * confirmed copies in the dropper's view), and the next run of a holder
 * restores R; runs start 500 ms after a change, well after views converge.
 */
import type { Logger } from '../../common/log.js';
import { formatRef, type BlockRef } from '../../model/block-ref.js';
import type { LocalSlotStore } from '../blocks/slot-store.js';
import type { PeerBlockStore, WireBlock } from '../peer/backend.js';
import { classifyBlock, isGarbage, type BlockVerdict, type GcView } from './gc-view.js';
import type { CopyHash } from './map-index.js';
import { OFF_HASH_HI, OFF_HASH_LO } from '../blocks/record.js';
import type { ClusterPlacement, PeerTarget } from './placement.js';
import { BackgroundJob } from '../jobs/background-job.js';
import { RateMeter } from './rate.js';

export const DEFAULT_REBALANCE_RATE = 100 * 1024 * 1024;
export const DEFAULT_REBALANCE_INTERVAL_MS = 60_000;
/** Blocks per chunk: one HAS per target per chunk, and the work between yields. */
const CHUNK_BLOCKS = 256;
/** Blocks read locally and PUT at once: bounds memory (16 × 64 KiB) and a PUT's size. */
const COPY_BATCH = 16;
/** Wait after the last change before starting, so a burst of changes makes one run. */
const SETTLE_MS = 500;
/**
 * A run some copies failed in (a peer slow or briefly gone) runs again this
 * much later, not only at the next change or period (a minute by default):
 * until then those blocks have fewer than R copies.
 */
const RETRY_AFTER_FAILURES_MS = 5000;
/** The pre-scan of volume ids yields after this many blocks. */
const SCAN_SLICE = 8192;

/** This node's store as the Rebalancer uses it: the DiskPeerBackend over it (so drops and reads are tracked and refused after close). */
export interface LocalBlocks extends PeerBlockStore {
  readonly store: LocalSlotStore;
}

export interface RebalancerOptions {
  placement: ClusterPlacement;
  /** A peer's block store: `(peer) => clusterBlocks.clientFor(peer)` in torusd. */
  peerStore: (peer: PeerTarget) => PeerBlockStore;
  local: LocalBlocks;
  /**
   * The catalog as of now (gc-view.ts), or undefined to free nothing this run
   * (some volume could not be loaded). Called once per run, after the
   * Rebalancer has noted which volumes the store holds; it must list the
   * catalog afresh, after the call began. Without it no run frees or drops anything.
   */
  gcView?: () => Promise<GcView | undefined>;
  log: Logger;
  /** Copies' bytes per second (to all targets together). Default 100 MiB/s. */
  rateBytesPerSecond?: number;
  /** Periodic runs; 0 for none. Default 60 s. */
  intervalMs?: number;
  settleMs?: number;
  chunkBlocks?: number;
}

export interface RebalanceRunCounts {
  scanned: number;
  copied: number;
  /** Surplus local copies released. */
  dropped: number;
  garbageFreed: number;
  /** Copies that could not be checked or made (target silent, PUT or SYNC refused, local read failed). */
  failed: number;
}

export interface RebalanceStats extends RebalanceRunCounts {
  running: boolean;
  runs: number;
  copiedBytes: number;
  /** Runs that had no GC view (nothing freed or dropped in them). */
  runsWithoutGc: number;
  /** Blocks left to move after the last finished run: some target lacks a copy, or a surplus copy was kept. */
  pendingBlocks: number;
  lastStartedAt?: string;
  lastSeconds?: number;
  /** The counts of the last finished run alone. */
  last?: RebalanceRunCounts;
}

interface Item {
  ref: BlockRef;
  verdict: BlockVerdict;
  /** Remote targets' uuids, most preferred first. */
  targets: string[];
  /** This node is one of the targets. */
  local: boolean;
  /** Targets known to hold a copy (HAS yes, or PUT done); a failed SYNC takes its target out. */
  confirmed: Set<string>;
  /** A target could not be asked or given a copy. */
  failed: boolean;
  /** This node's copy's hash: a target holds the block only with the same (HAS asks by it). */
  hash: CopyHash | undefined;
}

export class Rebalancer {
  readonly stats: RebalanceStats = {
    running: false,
    runs: 0,
    scanned: 0,
    copied: 0,
    copiedBytes: 0,
    dropped: 0,
    garbageFreed: 0,
    failed: 0,
    runsWithoutGc: 0,
    pendingBlocks: 0,
  };
  /** Bytes this node's rebalance copies to peers, per second. */
  readonly meter = new RateMeter();
  /** When runs happen, and the pace of copies. */
  private readonly job: BackgroundJob;
  private readonly placement: ClusterPlacement;
  private readonly local: LocalBlocks;
  private readonly log: Logger;
  private readonly chunkBlocks: number;
  /** Work seen by the run in progress (it sets `rebalancing` before the run ends). */
  private runFoundWork = false;
  private retryTimer: NodeJS.Timeout | undefined;

  constructor(private readonly options: RebalancerOptions) {
    this.placement = options.placement;
    this.local = options.local;
    this.log = options.log;
    this.chunkBlocks = options.chunkBlocks ?? CHUNK_BLOCKS;
    const rate = options.rateBytesPerSecond ?? DEFAULT_REBALANCE_RATE;
    this.job = new BackgroundJob({
      work: () => this.runOnce(),
      onError: (err) =>
        this.log.error(
          { err: String(err) },
          'rebalance run failed; it runs again on the next change or period',
        ),
      settleMs: options.settleMs ?? SETTLE_MS,
      intervalMs: options.intervalMs ?? DEFAULT_REBALANCE_INTERVAL_MS,
      period: 'fixed',
      runAtStart: true,
      // Burst: a tenth of a second's worth, but at least one full copy batch to one target.
      pace: {
        bytesPerSecond: rate,
        burstBytes: Math.max(rate / 10, COPY_BATCH * this.local.store.blockSize),
      },
    });
  }

  /** Run soon, then every intervalMs. */
  start(): void {
    this.job.start();
  }

  /** Something changed: run soon (once, however many changes arrive meanwhile). */
  schedule(): void {
    this.job.schedule();
  }

  /** Bytes/s of copies over the last few seconds. */
  rate(): number {
    return this.meter.rate();
  }

  /** Data is moving or waiting to move: the current run found work, or the last one left some. */
  get rebalancing(): boolean {
    return (this.stats.running && this.runFoundWork) || this.stats.pendingBlocks > 0;
  }

  /** Resolves once no run is going on or due (tests, shutdown). */
  idle(): Promise<void> {
    return this.job.idle();
  }

  /** Ends a run in progress between batches (a throttled wait included) and waits for it. */
  close(): Promise<void> {
    clearTimeout(this.retryTimer);
    return this.job.close();
  }

  private get closed(): boolean {
    return this.job.closed;
  }

  private async runOnce(): Promise<void> {
    const started = performance.now();
    const stats = this.stats;
    stats.running = true;
    stats.runs++;
    stats.lastStartedAt = new Date().toISOString();
    this.runFoundWork = false;
    const run: RebalanceRunCounts & { pending: number } = {
      scanned: 0,
      copied: 0,
      dropped: 0,
      garbageFreed: 0,
      failed: 0,
      pending: 0,
    };
    let finished = false;
    try {
      const { view, presentBefore } = await this.takeView();
      if (!view) stats.runsWithoutGc++;
      const store = this.local.store;
      // A cap, so a store that keeps growing under the walk (new blocks are
      // appended to the index) still ends the run; what it skips is next run's.
      let budget = store.usedSlots;
      let chunk: BlockRef[] = [];
      for (const [ref] of store.blocks()) {
        if (this.closed) return;
        if (budget-- <= 0) break;
        chunk.push(ref);
        if (chunk.length === this.chunkBlocks) {
          await this.chunk(chunk, view, presentBefore, run);
          chunk = [];
          await new Promise((resolve) => setImmediate(resolve));
        }
      }
      if (chunk.length > 0 && !this.closed) await this.chunk(chunk, view, presentBefore, run);
      finished = !this.closed;
    } finally {
      stats.running = false;
      stats.lastSeconds = (performance.now() - started) / 1000;
      stats.last = {
        scanned: run.scanned,
        copied: run.copied,
        dropped: run.dropped,
        garbageFreed: run.garbageFreed,
        failed: run.failed,
      };
      if (finished) stats.pendingBlocks = run.pending;
      if (run.failed > 0 && !this.closed && !this.retryTimer) {
        this.retryTimer = setTimeout(() => {
          this.retryTimer = undefined;
          if (!this.closed) this.job.schedule();
        }, RETRY_AFTER_FAILURES_MS).unref();
      }
      if (run.copied + run.dropped + run.garbageFreed + run.failed > 0) {
        this.log.info(
          { ...stats.last, pending: run.pending, seconds: stats.lastSeconds.toFixed(1) },
          'rebalance run finished',
        );
      }
    }
  }

  /** Which volumes the store holds now, then the caller's view of the catalog (in that order: see gc-view.ts). */
  private async takeView(): Promise<{ view: GcView | undefined; presentBefore: Set<number> }> {
    const presentBefore = new Set<number>();
    if (!this.options.gcView) return { view: undefined, presentBefore };
    let n = 0;
    for (const [ref] of this.local.store.blocks()) {
      presentBefore.add(ref.volumeId);
      if (++n % SCAN_SLICE === 0) await new Promise((resolve) => setImmediate(resolve));
    }
    try {
      return { view: await this.options.gcView(), presentBefore };
    } catch (err) {
      this.log.warn(
        { err: (err as Error).message },
        'rebalance: no GC view this run (nothing is freed or dropped)',
      );
      return { view: undefined, presentBefore };
    }
  }

  private async chunk(
    refs: BlockRef[],
    view: GcView | undefined,
    presentBefore: ReadonlySet<number>,
    run: RebalanceRunCounts & { pending: number },
  ): Promise<void> {
    const placement = this.placement;
    const version = placement.version;
    const peers = placement.peers;
    const stats = this.stats;
    stats.scanned += refs.length;
    run.scanned += refs.length;

    // 1. Verdicts; garbage goes at once.
    const items: Item[] = [];
    const garbage: BlockRef[] = [];
    for (const ref of refs) {
      const hash = this.copyHash(ref);
      const verdict: BlockVerdict = view
        ? classifyBlock(ref, view, presentBefore, hash)
        : 'unknown';
      if (isGarbage(verdict)) {
        garbage.push(ref);
        continue;
      }
      const where = placement.writeTargets(ref.volumeId, ref.index);
      items.push({
        ref,
        verdict,
        targets: where.remote.map((at) => peers[at].uuid),
        local: where.local,
        confirmed: new Set(),
        failed: false,
        hash,
      });
    }
    if (garbage.length > 0) {
      const freed = await this.local.deleteBlocks(garbage);
      stats.garbageFreed += freed;
      run.garbageFreed += freed;
      this.runFoundWork = true;
    }

    // 2. Ask each target which of its blocks it holds: a committed block by
    // this copy's hash (the version's, as GC checked), so a stale copy there
    // — an older write under the same ref, until its GC frees it — is not
    // counted as one; without a view, by ref.
    // One ask per target and kind (by hash or by ref). A block the view says
    // is in flight (a generation its writer has not committed) is the
    // writer's business: it may spill the same ref again, elsewhere, and a
    // copy pushed from here could land on a target after the newer one, or
    // on the writer after it let its own go (seen: a block spilled twice
    // while its writer's store was full, the first copy pushed back onto
    // it). It is copied once committed, asked by hash. With no view at
    // all, every block is asked by ref and copied, as re-replication must
    // go on while a volume's map cannot be loaded.
    const inFlight = (item: Item) => view !== undefined && item.verdict !== 'referenced';
    const asks = new Map<string, { uuid: string; byHash: boolean; items: Item[] }>();
    for (const item of items) {
      if (inFlight(item)) continue;
      const byHash = item.verdict === 'referenced' && item.hash !== undefined;
      for (const uuid of item.targets) {
        const key = `${byHash ? 'hash' : 'ref'} ${uuid}`;
        let ask = asks.get(key);
        if (!ask) asks.set(key, (ask = { uuid, byHash, items: [] }));
        ask.items.push(item);
      }
    }
    const missing = new Map<Item, string[]>();
    await Promise.all(
      [...asks.values()].map(async ({ uuid, byHash, items: list }) => {
        try {
          let hashes: Uint32Array | undefined;
          if (byHash) {
            hashes = new Uint32Array(2 * list.length);
            list.forEach(({ hash }, k) => hashes!.set([hash!.lo, hash!.hi], 2 * k));
          }
          const has = await this.storeOf(uuid).hasBlocks(
            list.map((item) => item.ref),
            hashes,
          );
          list.forEach((item, k) => {
            if (has[k]) item.confirmed.add(uuid);
            else missing.set(item, [...(missing.get(item) ?? []), uuid]);
          });
        } catch (err) {
          for (const item of list) item.failed = true;
          this.countFailed(list.length, run);
          this.log.warn(
            { peer: uuid, err: (err as Error).message },
            'rebalance: target did not answer HAS; its blocks are checked next run',
          );
        }
      }),
    );

    // 3. Copy what is missing, from the local copy.
    const written = new Set<string>();
    const toCopy = [...missing];
    if (toCopy.length > 0) this.runFoundWork = true;
    for (let at = 0; at < toCopy.length && !this.closed; at += COPY_BATCH) {
      await this.copyBatch(toCopy.slice(at, at + COPY_BATCH), written, run);
    }

    // 4. Durable before anything counts on them: targets written to, and the
    // targets of blocks about to be dropped (a copy another node just put
    // there may not be synced yet).
    const dropping = items.filter((item) =>
      this.droppable(item, placement.replicationOf(item.ref.volumeId)),
    );
    const toSync = new Set(written);
    for (const item of dropping)
      for (const uuid of item.targets) if (item.confirmed.has(uuid)) toSync.add(uuid);
    await Promise.all(
      [...toSync].map(async (uuid) => {
        try {
          await this.storeOf(uuid).sync();
        } catch (err) {
          for (const item of items) {
            if (item.confirmed.delete(uuid)) item.failed = true;
          }
          this.countFailed(1, run);
          this.log.warn(
            { peer: uuid, err: (err as Error).message },
            'rebalance: target could not sync; its copies do not count',
          );
        }
      }),
    );

    // 5. Drop surplus copies whose every target confirmed — unless placement
    // moved meanwhile (the next run decides with the new one).
    const drop =
      placement.version === version
        ? dropping.filter((item) => item.targets.every((uuid) => item.confirmed.has(uuid)))
        : [];
    if (drop.length > 0) {
      const dropped = await this.local.deleteBlocks(drop.map((item) => item.ref));
      stats.dropped += dropped;
      run.dropped += dropped;
      this.runFoundWork = true;
    }
    const dropped = new Set(drop);
    for (const item of items) {
      // Whether a block in flight lacks copies is not asked: its writer's to place, not left to move.
      const lacking = !inFlight(item) && item.targets.some((uuid) => !item.confirmed.has(uuid));
      if (lacking || (!item.local && !dropped.has(item))) run.pending++;
    }
  }

  /** A surplus copy that may go once its targets confirm: committed, not a target here, R targets. */
  private droppable(item: Item, replication: number): boolean {
    return (
      !item.local &&
      item.verdict === 'referenced' &&
      !item.failed &&
      item.targets.length >= replication
    );
  }

  /** Read a batch of blocks locally once each, and PUT each to the targets lacking it (one PUT per target). */
  private async copyBatch(
    batch: [Item, string[]][],
    written: Set<string>,
    run: RebalanceRunCounts,
  ): Promise<void> {
    const blocks = await Promise.all(
      batch.map(async ([item]) => {
        try {
          return await this.local.getBlock(item.ref);
        } catch (err) {
          this.log.warn(
            { block: formatRef(item.ref), err: (err as Error).message },
            'rebalance: local copy could not be read',
          );
          return undefined;
        }
      }),
    );
    const perTarget = new Map<string, { items: Item[]; blocks: WireBlock[] }>();
    batch.forEach(([item, targets], i) => {
      const block = blocks[i];
      if (!block) {
        // Dropped meanwhile (a volume's own release), or unreadable.
        item.failed = true;
        if (
          this.local.store.lookup(item.ref.volumeId, item.ref.generation, item.ref.index) !==
          undefined
        )
          this.countFailed(targets.length, run);
        return;
      }
      for (const uuid of targets) {
        let entry = perTarget.get(uuid);
        if (!entry) perTarget.set(uuid, (entry = { items: [], blocks: [] }));
        entry.items.push(item);
        entry.blocks.push(block);
      }
    });
    const blockSize = this.local.store.blockSize;
    let bytes = 0;
    for (const entry of perTarget.values()) bytes += entry.blocks.length * blockSize;
    if (bytes === 0 || !(await this.job.pace(bytes))) return;
    await Promise.all(
      [...perTarget].map(async ([uuid, entry]) => {
        try {
          await this.storeOf(uuid).putBlocks(entry.blocks);
          for (const item of entry.items) item.confirmed.add(uuid);
          written.add(uuid);
          const n = entry.blocks.length;
          this.stats.copied += n;
          run.copied += n;
          this.stats.copiedBytes += n * blockSize;
          this.meter.add(n * blockSize);
        } catch (err) {
          for (const item of entry.items) item.failed = true;
          this.countFailed(entry.blocks.length, run);
          this.log.warn(
            { peer: uuid, blocks: entry.blocks.length, err: (err as Error).message },
            'rebalance: copies not stored on target',
          );
        }
      }),
    );
  }

  private countFailed(n: number, run: RebalanceRunCounts): void {
    this.stats.failed += n;
    run.failed += n;
    this.runFoundWork = true;
  }

  /** The hash of this node's copy of `ref` (GC frees a copy its version does not reference with that hash), if held. */
  private copyHash(ref: BlockRef): CopyHash | undefined {
    const { store } = this.local;
    const slot = store.lookup(ref.volumeId, ref.generation, ref.index);
    if (slot === undefined) return undefined;
    const record = store.record(slot);
    return { lo: record.getUint32(OFF_HASH_LO, true), hi: record.getUint32(OFF_HASH_HI, true) };
  }

  private storeOf(uuid: string): PeerBlockStore {
    const at = this.placement.peerIndex(uuid);
    if (at === undefined) throw new Error(`peer ${uuid} is no longer known`);
    return this.options.peerStore(this.placement.peers[at]);
  }
}
