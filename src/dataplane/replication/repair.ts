/**
 * ReplicaRepair: bring every block of the volumes this node writes back to
 * the copies placement asks for, after the ring or the set of live nodes
 * changed (a node died, was removed, or joined).
 *
 * The writer of a volume is responsible for it (it holds the volume's lock,
 * so one node repairs each volume). A run walks the committed version's
 * refs (data blocks and map pages) in chunks: asks each write target whether
 * it holds its blocks (HAS_BLOCKS, one request per target per chunk), copies
 * each missing one from a node that has it (this node's store or a peer:
 * GET then PUT, the receiver re-checks the checksum), then syncs the targets
 * it wrote to. Runs never overlap; a change during a run schedules another.
 *
 * What it does not do yet: drop copies a node no longer needs (GC, and the
 * second half of rebalance), limit its rate beyond one chunk at a time, or
 * report progress to list-peers (its counters are in status and metrics).
 */
import type { Logger } from '../../common/log.js';
import { formatRef, type BlockRef } from '../blocks/ref.js';
import type { PeerBlockStore, WireBlock } from '../peer/backend.js';
import type { ClusterBlocks } from './cluster-blocks.js';

/** Refs per round of HAS/GET/PUT: bounds memory (64 KiB each) and the work between yields. */
const CHUNK_REFS = 256;
/** Wait after the last change before starting, so a burst of changes makes one run. */
const SETTLE_MS = 500;

export interface RepairStats {
  running: boolean;
  runs: number;
  /** Refs looked at, copies made, copies that failed, in all runs. */
  scanned: number;
  copied: number;
  failed: number;
  lastStartedAt?: string;
  lastSeconds?: number;
  /** Copies made and failed by the last finished run alone. */
  lastCopied?: number;
  lastFailed?: number;
}

export class ReplicaRepair {
  readonly stats: RepairStats = { running: false, runs: 0, scanned: 0, copied: 0, failed: 0 };
  private timer: NodeJS.Timeout | undefined;
  private again = false;
  private current: Promise<void> | undefined;
  private closed = false;

  constructor(
    private readonly cluster: ClusterBlocks,
    /** This node's own store as a block store (its DiskPeerBackend), if it has one. */
    private readonly local: PeerBlockStore | undefined,
    /** The refs of every committed version this node is responsible for, read at the start of a run. */
    private readonly refs: () => Iterable<BlockRef>,
    private readonly log: Logger,
  ) {}

  /** Something changed: run soon (once, however many changes arrive meanwhile). */
  schedule(): void {
    if (this.closed) return;
    if (this.current) {
      this.again = true;
      return;
    }
    clearTimeout(this.timer);
    this.timer = setTimeout(() => {
      this.timer = undefined;
      this.current = this.runLoop().finally(() => (this.current = undefined));
    }, SETTLE_MS);
    this.timer.unref();
  }

  /** Resolves once no run is going on (tests, shutdown). */
  async idle(): Promise<void> {
    while (this.current || this.timer) {
      if (this.current) await this.current;
      else await new Promise((resolve) => setTimeout(resolve, 50));
    }
  }

  async close(): Promise<void> {
    this.closed = true;
    clearTimeout(this.timer);
    this.timer = undefined;
    await this.current;
  }

  private async runLoop(): Promise<void> {
    do {
      this.again = false;
      await this.runOnce().catch((err) => this.log.error({ err: String(err) }, 'replica repair run failed; it runs again on the next change'));
    } while (this.again && !this.closed);
  }

  private async runOnce(): Promise<void> {
    const started = performance.now();
    this.stats.running = true;
    this.stats.runs++;
    this.stats.lastStartedAt = new Date().toISOString();
    const before = { scanned: this.stats.scanned, copied: this.stats.copied, failed: this.stats.failed };
    try {
      let chunk: BlockRef[] = [];
      for (const ref of this.refs()) {
        chunk.push(ref);
        if (chunk.length === CHUNK_REFS) {
          await this.repairChunk(chunk);
          chunk = [];
          if (this.closed || this.again) return; // the picture changed: start over with it
        }
      }
      if (chunk.length > 0) await this.repairChunk(chunk);
    } finally {
      this.stats.running = false;
      this.stats.lastSeconds = (performance.now() - started) / 1000;
      const copied = this.stats.copied - before.copied;
      const failed = this.stats.failed - before.failed;
      this.stats.lastCopied = copied;
      this.stats.lastFailed = failed;
      if (copied > 0 || failed > 0) {
        this.log.info({ scanned: this.stats.scanned - before.scanned, copied, failed, seconds: this.stats.lastSeconds.toFixed(1) }, 'replica repair run finished');
      }
    }
  }

  /** Make every ref of the chunk present on each of its write targets. */
  private async repairChunk(refs: BlockRef[]): Promise<void> {
    const placement = this.cluster.placement;
    const peers = placement.peers;
    this.stats.scanned += refs.length;
    // Which targets should hold which refs: '' is this node.
    const wanted = new Map<string, number[]>();
    const want = (node: string, i: number) => {
      let list = wanted.get(node);
      if (!list) wanted.set(node, (list = []));
      list.push(i);
    };
    refs.forEach((ref, i) => {
      const where = placement.writeTargets(ref.volumeId, ref.index);
      if (where.local && this.local) want('', i);
      for (const at of where.remote) want(peers[at].uuid, i);
    });
    // Ask each target what it holds.
    const holders: string[][] = refs.map(() => []);
    const missing: { node: string; i: number }[] = [];
    await Promise.all(
      [...wanted].map(async ([node, items]) => {
        const store = this.storeOf(node);
        if (!store) return;
        try {
          const has = await store.hasBlocks(items.map((i) => refs[i]));
          items.forEach((i, k) => (has[k] ? holders[i].push(node) : missing.push({ node, i })));
        } catch (err) {
          this.log.warn({ peer: node || 'local', err: (err as Error).message }, 'replica repair: target did not answer; its copies are checked next run');
        }
      }),
    );
    if (missing.length === 0) return;
    // Copy each missing one from a holder; a target that holds none is asked of the other candidates.
    const written = new Set<string>();
    for (const { node, i } of missing) {
      const block = await this.fetch(refs[i], holders[i]);
      if (!block) {
        this.stats.failed++;
        this.log.warn({ block: formatRef(refs[i]), target: node || 'local' }, 'replica repair: no node holds a copy to repair from');
        continue;
      }
      try {
        await this.storeOf(node)!.putBlocks([block]);
        this.stats.copied++;
        written.add(node);
      } catch (err) {
        this.stats.failed++;
        this.log.warn({ block: formatRef(refs[i]), target: node || 'local', err: (err as Error).message }, 'replica repair: copy not stored');
      }
    }
    // Durable before the next chunk counts on them.
    await Promise.all(
      [...written].map((node) =>
        this.storeOf(node)!
          .sync()
          .catch((err) => this.log.warn({ peer: node || 'local', err: (err as Error).message }, 'replica repair: target could not sync')),
      ),
    );
  }

  /** One good copy of ref: from a known holder, else from any read candidate. */
  private async fetch(ref: BlockRef, holders: string[]): Promise<WireBlock | undefined> {
    const placement = this.cluster.placement;
    const candidates = [...holders];
    if (this.local && !candidates.includes('')) candidates.push('');
    for (const at of placement.readCandidates(ref.volumeId, ref.index).remote) {
      const uuid = placement.peers[at].uuid;
      if (!candidates.includes(uuid)) candidates.push(uuid);
    }
    for (const node of candidates) {
      try {
        const block = await this.storeOf(node)?.getBlock(ref);
        if (block) return block;
      } catch {
        // try the next holder
      }
    }
    return undefined;
  }

  private storeOf(node: string): PeerBlockStore | undefined {
    if (node === '') return this.local;
    const at = this.cluster.placement.peerIndex(node);
    return at === undefined ? undefined : this.cluster.clientFor(this.cluster.placement.peers[at]);
  }
}
