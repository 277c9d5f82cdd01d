/**
 * DataPool: the Piscina pool of data-plane workers, and the batching that
 * makes it worth using. One pool round trip costs 25–75 µs here, more than
 * hashing a 64 KiB block inline, so work is always handed over in batches:
 * a write-back is cut into one task per worker (BATCH to
 * LOCAL_WRITE_BATCH_MAX blocks a task; BATCH when copies go to peers), and
 * cache misses that arrive in the same tick share a task of up to BATCH. Small
 * misses of plain local blocks are read on the main thread instead while
 * the disk answers fast (inline-misses.ts).
 */
import { availableParallelism } from 'node:os';
import { fileURLToPath } from 'node:url';
import { Piscina } from 'piscina';
import { logger } from '../../common/log.js';
import { hasher } from '../blocks/hash.js';
import type { ReadRemote, WriteRemote } from '../replication/block-placement.js';
import {
  MAX_TARGETS,
  SPARE_CANDIDATES,
  type PeerIdentityForTasks,
  type PeerTarget,
  type WriteTargets,
} from '../replication/placement.js';
import {
  BATCH,
  type ReadBatchResult,
  type ReadBatchTask,
  type RemoteTargets,
  type WorkerSetup,
  type WriteBatchResult,
  type WriteBatchTask,
  type PatchTargets,
} from './tasks.js';
import { WrittenBlocks } from './written-blocks.js';
import { workerExecArgv } from '../../common/worker-exec-argv.js';
import { InlineReads } from '../blocks/inline-reads.js';
import { INLINE_MISS_SYNC_MS, InlineMisses } from './inline-misses.js';
import { InlineRemoteMisses } from './inline-remote-misses.js';

/** A block to store as a patch (tasks.ts PatchTargets, one block's worth). */
export interface PatchSource {
  written: number;
  /** The base's slot in this node's store; -1: the base is on the block's targets only (pool/patch-copies.ts). */
  baseSlot: number;
  baseVolume: number;
  baseGeneration: number;
  /** The base's hash (the block map's), when it is not in this node's store: its entry is fetched and checked by it. */
  baseHashLo?: number;
  baseHashHi?: number;
  olderSlot: number;
  /** Written into olderSlot itself (a patch of the same version), not into a new slot. */
  inPlace: boolean;
}

/** The batch's patches as a task carries them; undefined when none of its blocks is one. */
function patchTargets(batch: readonly (PatchSource | undefined)[]): PatchTargets | undefined {
  if (!batch.some((p) => p !== undefined)) return undefined;
  const n = batch.length;
  const targets: PatchTargets = {
    written: new Uint32Array(n),
    baseSlots: new Int32Array(n).fill(-1),
    baseVolumes: new Uint32Array(n),
    baseGenerations: new Uint32Array(n),
    olderSlots: new Int32Array(n).fill(-1),
    baseHashes: new Uint32Array(2 * n),
  };
  for (let i = 0; i < n; i++) {
    const p = batch[i];
    if (!p) continue;
    targets.written[i] = p.written;
    targets.baseSlots[i] = p.baseSlot;
    targets.baseVolumes[i] = p.baseVolume;
    targets.baseGenerations[i] = p.baseGeneration;
    targets.olderSlots[i] = p.olderSlot;
    targets.baseHashes[2 * i] = p.baseHashLo ?? 0;
    targets.baseHashes[2 * i + 1] = p.baseHashHi ?? 0;
  }
  return targets;
}

export interface ReadRequest {
  volumeId: number;
  key: Uint8Array | null;
  cacheSlot: number;
  storeSlot: number;
  generation: number;
  index: number;
  hashLo: number;
  hashHi: number;
  /** Peers to fetch from when there is no good local copy (storeSlot -1 for none); the placement's readRemote. */
  remote?: ReadRemote;
  /** Only these 4 KiB sub-blocks (a mask, see ReadBatchTask.subBlocks); absent: the whole block. */
  subBlocks?: number;
  /** storeSlot holds a patch: its base's slot (LocalSlotStore.baseOf). */
  baseSlot?: number;
  /**
   * A block of the version being written (spilled): a replica's copy that
   * disagrees with the hash may be newer (the same ref rewritten by a round
   * in flight), not damaged, so it is never "repaired" with this one.
   */
  noRepair?: boolean;
  /**
   * localBad: this node's copy failed its check and a peer's served instead
   * (cluster); whole: the whole block was read, though sub-blocks were asked.
   */
  done(status: number, reason: string, localBad?: boolean, whole?: boolean): void;
}

/** Cluster counters of the data path, summed over every task (torus_replication_* material). */
export interface PoolReplicationStats {
  /** Blocks read from a peer (no good local copy). */
  remoteReads: number;
  /** Gets sent to a second (or third) replica because the first was slow to answer. */
  hedgedReads: number;
  /** Good copies sent to replicas that returned a block with the wrong checksum. */
  replicaRepairs: number;
  /** Copies placed on a spare candidate because a target (or this node) was full. */
  placedElsewhere: number;
  /** Peer puts refused with NO_SPACE. */
  fullRefusals: number;
  /** Blocks' copies sent to replicas as patches (PUT_PATCHES), and those a replica did not store (then sent whole). */
  patchCopiesSent: number;
  patchCopiesRefused: number;
}

const log = logger('data-pool');

const READ_STRIDE = MAX_TARGETS + SPARE_CANDIDATES;

/** The flag turning require(esm) off, where this Node has it (20.17 and later). */
const NO_REQUIRE_ESM = process.allowedNodeEnvironmentFlags.has('--experimental-require-module')
  ? ['--no-experimental-require-module']
  : [];

/**
 * Most blocks one task of a local write-back takes: 8 MiB of 64 KiB blocks.
 * A write-back of 512 blocks used to be 32 tasks of 16, each a round trip
 * and a writev of its own; cut into one task per worker, each stores its
 * share with one writev per run of slots, and its entries and records with
 * as few. Within a 512 MiB budget (by hand, alternating): 4 KiB random
 * writes 20.3-25.0k -> 30.6-32.8k IOPS, 1 MiB writes 888-982 ->
 * 1,082-1,183 MiB/s.
 */
export const LOCAL_WRITE_BATCH_MAX = 128;

/**
 * Most blocks one task of a replicated write-back takes. Each task sends
 * every target one frame (PUT_BLOCKS, PUT_PATCHES), and on this VM a
 * message costs more CPU than its bytes: a spill round of 1,024 blocks used
 * to be 64 tasks of 16. By hand (3 nodes, R = 2, 4 KiB random writes at
 * queue depth 32, 15 s, two rounds): through a node 4,269 / 5,122 -> 5,286
 * / 5,669 IOPS, through nbdserve 3,523 / 4,125 -> 4,148 / 4,616; 128 was
 * no better than 64.
 */
export const REPLICATED_WRITE_BATCH_MAX = 64;
/** A replicated task's whole blocks stay within half the peer wire's largest payload (MAX_PAYLOAD_BYTES). */
const REPLICATED_TASK_BYTES = 8 * 1024 * 1024;

/**
 * Blocks per task for a write of `blocks` (of `blockSize` bytes) over
 * `threads` workers: an even share each, from BATCH to
 * LOCAL_WRITE_BATCH_MAX, or to REPLICATED_WRITE_BATCH_MAX when the blocks
 * also go to peers — and then no more than REPLICATED_TASK_BYTES of them
 * (a PUT per target carries them all).
 */
export function writeBatchSize(
  blocks: number,
  threads: number,
  replicated: boolean,
  blockSize = 64 * 1024,
): number {
  const share = Math.max(BATCH, Math.ceil(blocks / Math.max(1, threads)));
  if (!replicated) return Math.min(LOCAL_WRITE_BATCH_MAX, share);
  const fits = Math.max(1, Math.floor(REPLICATED_TASK_BYTES / blockSize));
  return Math.min(REPLICATED_WRITE_BATCH_MAX, fits, share);
}

/**
 * Workers unless told otherwise: on a single node two per core, at most 4;
 * in a cluster (and in tests' pools) one per core, at most 4. A single
 * node's worker reads and writes synchronously, so with one per core a
 * 2-core node had two disk reads in flight at most, and past the page
 * cache (data larger than memory) its workers sat in pread while the cores
 * idled (38 % idle during 1 MiB sequential reads of a randomly rewritten
 * volume). Within a 512 MiB budget, 4 workers on 2 cores: sequential reads
 * 642-784 → 866-1,093 MiB/s, 64 KiB random read/write +15-35 %, sequential
 * writes +18-39 %, cached work the same. A cluster's tasks wait on peers
 * without holding a worker (several share one), and there the extra
 * threads only competed for the cores: the cold cluster's 4 KiB random
 * reads fell 28.2k → 22.8k IOPS (docs/benchmarks.md, session 22).
 */
export function defaultWorkerThreads(
  role: 'single-node' | 'cluster' = 'cluster',
  cores = availableParallelism(),
): number {
  return Math.max(1, Math.min(4, role === 'single-node' ? 2 * cores : cores));
}

export class DataPool {
  private readonly pool: Piscina;
  private pendingReads: ReadRequest[] = [];
  private readScheduled = false;
  /** Read tasks posted to the pool and not yet answered: a tick's misses are spread only over the idle workers. */
  private readTasksInFlight = 0;
  /** Tasks posted to the workers since start, and the blocks they carried (torus_pool_* metrics). */
  readonly taskCounts = { reads: 0, readBlocks: 0, writes: 0, writeBlocks: 0 };
  private readonly threadCount: number;
  private readonly blockSize: number;
  /** Main-thread reads of small local misses (inline-misses.ts); set once the hasher has loaded. */
  private inlineMisses: InlineMisses | undefined;
  /** Main-thread fetches of small misses from peers (inline-remote-misses.ts); set once the hasher has loaded. */
  private remoteMisses: InlineRemoteMisses | undefined;
  private closed = false;
  readonly replicationStats: PoolReplicationStats = {
    remoteReads: 0,
    hedgedReads: 0,
    replicaRepairs: 0,
    placedElsewhere: 0,
    fullRefusals: 0,
    patchCopiesSent: 0,
    patchCopiesRefused: 0,
  };
  /** Peers already logged as full (once per peer, not per block or batch). */
  private readonly loggedFull = new Set<string>();

  /**
   * tasksPerWorker: how many tasks Piscina posts to a worker at once. A
   * single node's tasks never yield, so they still run one at a time; a
   * second posted waits in the worker's port and starts as soon as the first
   * ends (torusd gives 2). In a cluster replicated tasks wait on peers and
   * several share a worker (torusd gives 4). The default, 1, keeps a worker
   * idle until the event loop hands it the next task.
   */
  constructor(
    setup: WorkerSetup,
    threads = defaultWorkerThreads(),
    tasksPerWorker = 1,
    /** When misses are read on this thread synchronously (tests that must see them so pass one that always says so). */
    inlinePolicy: () => InlineReads = () => new InlineReads(INLINE_MISS_SYNC_MS),
  ) {
    this.threadCount = threads;
    this.blockSize = setup.blockSize;
    this.pool = new Piscina({
      filename: fileURLToPath(new URL('./worker.js', import.meta.url)),
      workerData: setup,
      minThreads: threads,
      maxThreads: threads,
      idleTimeout: 60_000,
      concurrentTasksPerWorker: tasksPerWorker,
      // Piscina's default ('sync') parks an idle worker in Atomics.wait, so its
      // event loop stops between tasks. In a cluster the workers own peer
      // connections: parked, they never see a restarted peer's FIN and the
      // next PUT goes out on the dead socket. 'async' keeps the loop running.
      atomics: tasksPerWorker > 1 ? 'async' : 'sync',
      // Piscina loads the worker with require() first; on Node 20 that is
      // require(esm), which has aborted the whole process in its module
      // linking (a V8/Node assertion, seen once in CI). Off, require() fails
      // cleanly and Piscina falls back to import(). V8's per-process flags
      // (node --perf-basic-prof …) hold for the workers already and a Worker
      // refuses them: left out (common/worker-exec-argv.ts).
      execArgv: [...workerExecArgv(), ...NO_REQUIRE_ESM],
    });
    // Until it has loaded (at start-up, before any volume is open), every miss goes to the pool.
    hasher()
      .then((hash) => {
        if (this.closed) return;
        this.inlineMisses = new InlineMisses(
          setup,
          hash,
          (r) => this.dispatchToWorkers([r as ReadRequest]),
          inlinePolicy(),
        );
        this.remoteMisses = new InlineRemoteMisses(setup, hash);
      })
      .catch((err: Error) =>
        log.warn({ err: err.message }, 'cache misses are read in the pool only'),
      );
  }

  /** Misses read on the main thread synchronously, those it started in libuv's pool, and those it fetched from peers. */
  get inlineMissCounts(): { inline: number; async: number; remote: number } {
    return {
      inline: this.inlineMisses?.inline ?? 0,
      async: this.inlineMisses?.async ?? 0,
      remote: this.remoteMisses?.answered ?? 0,
    };
  }

  get threads(): number {
    return this.pool.threads.length;
  }

  /**
   * Write blocks in parallel tasks (writeBatchSize()). `storeSlots`: this
   * node's slot per block (-1 for none); `remote`: where the blocks also go
   * (the placement's placeWrites). The result is per block, in request order.
   */
  async writeBlocks(
    volumeId: number,
    generation: number,
    key: Uint8Array | null,
    cacheSlots: readonly number[],
    storeSlots: readonly number[],
    indices: readonly number[],
    remote?: WriteRemote,
    patches?: readonly (PatchSource | undefined)[],
  ): Promise<WrittenBlocks> {
    const tasks: WriteBatchTask[] = [];
    const runs: Promise<WriteBatchResult>[] = [];
    const batch = writeBatchSize(
      cacheSlots.length,
      this.threadCount,
      remote !== undefined,
      this.blockSize,
    );
    for (let start = 0; start < cacheSlots.length; start += batch) {
      const end = Math.min(start + batch, cacheSlots.length);
      const task: WriteBatchTask = {
        op: 'write',
        volumeId,
        generation,
        key,
        cacheSlots: Int32Array.from(cacheSlots.slice(start, end)),
        storeSlots: Int32Array.from(storeSlots.slice(start, end)),
        indices: Float64Array.from(indices.slice(start, end)),
      };
      const patched = patches && patchTargets(patches.slice(start, end));
      if (patched) task.patches = patched;
      if (remote) {
        const where = remote.targets.slice(start, end);
        task.remote = remoteTargets(
          remote.identity,
          remote.peers,
          MAX_TARGETS,
          where.map((w) => w.remote),
        );
        task.remote.spares = sparesFor(where, task.storeSlots, task.remote.targets);
      }
      tasks.push(task);
      runs.push(this.pool.run(task));
      this.taskCounts.writes++;
      this.taskCounts.writeBlocks += end - start;
    }
    const results = await Promise.all(runs);
    const written = new WrittenBlocks(cacheSlots.length, remote, batch);
    for (let b = 0; b < results.length; b++) {
      this.replicationStats.placedElsewhere += written.record(
        b * batch,
        results[b],
        tasks[b].remote,
      );
      this.noteFullPeers(results[b].fullPeers);
      const patchCopies = results[b].patchCopies;
      if (patchCopies) {
        this.replicationStats.patchCopiesSent += patchCopies.sent;
        this.replicationStats.patchCopiesRefused += patchCopies.refused;
      }
    }
    return written;
  }

  /** Count NO_SPACE refusals; log each full peer once (not per block or batch). */
  private noteFullPeers(uuids: readonly string[] | undefined): void {
    if (!uuids) return;
    for (const uuid of uuids) {
      this.replicationStats.fullRefusals++;
      if (this.loggedFull.has(uuid)) continue;
      this.loggedFull.add(uuid);
      log.warn(
        { peer: uuid },
        'peer refused copies for lack of space: they go to the next node on the ring (logged once per peer)',
      );
    }
  }

  /** Queue a cache-miss read; misses queued in the same tick share tasks. */
  read(request: ReadRequest): void {
    this.pendingReads.push(request);
    if (!this.readScheduled) {
      this.readScheduled = true;
      setImmediate(() => this.dispatchReads());
    }
  }

  private dispatchReads(): void {
    this.readScheduled = false;
    let all = this.pendingReads;
    this.pendingReads = [];
    const inline = this.inlineMisses;
    // Small local misses are this thread's (inline-misses.ts): read here now
    // while the store answers from memory, else started in libuv's pool. The
    // rest are posted to the workers first, so their preads and this
    // thread's overlap.
    let here: ReadRequest[] | undefined;
    if (inline) {
      const rest: ReadRequest[] = [];
      for (const r of all) {
        if (!inline.qualifies(r)) rest.push(r);
        else if (inline.synchronously()) (here ??= []).push(r);
        else if (!inline.start(r)) rest.push(r);
      }
      all = rest;
    }
    // Small misses with only peers to ask are fetched by this thread too (inline-remote-misses.ts).
    const remote = this.remoteMisses;
    let fromPeers: ReadRequest[] | undefined;
    if (remote) {
      const rest: ReadRequest[] = [];
      for (const r of all) (remote.qualifies(r) ? (fromPeers ??= []) : rest).push(r);
      all = rest;
    }
    this.dispatchToWorkers(all);
    if (fromPeers) for (const batch of groupReads(fromPeers)) this.runReads(batch, remote);
    if (here) this.dispatchToWorkers(here.filter((r) => !inline!.read(r)));
  }

  /** Cut misses into tasks for the workers (grouped by volume and peer table). */
  private dispatchToWorkers(all: ReadRequest[]): void {
    if (all.length === 0) return;
    // Reads only from peers (nbdserve, a node holding no copy) wait on the
    // network, not on a worker: kept in one task, each peer gets the tick's
    // requests in one write and answers them in one, where split they cost a
    // write, a read and a wake-up per peer per task (docs/benchmarks.md,
    // session 19). Local reads: readTaskSize.
    for (const list of groupReads(all)) {
      const peersOnly = list.every((r) => r.storeSlot < 0 && r.remote !== undefined);
      const size = peersOnly
        ? BATCH
        : readTaskSize(list.length, this.threadCount, this.readTasksInFlight);
      for (let start = 0; start < list.length; start += size)
        this.runReads(list.slice(start, start + size));
    }
  }

  /** Run a batch of misses as one task: in the pool, or on this thread when `here` takes it. */
  private runReads(batch: ReadRequest[], here?: InlineRemoteMisses): void {
    const n = batch.length;
    const task: ReadBatchTask = {
      op: 'read',
      volumeId: batch[0].volumeId,
      key: batch[0].key,
      cacheSlots: new Int32Array(n),
      storeSlots: new Int32Array(n),
      generations: new Uint32Array(n),
      indices: new Float64Array(n),
      hashes: new Uint32Array(2 * n),
    };
    for (let i = 0; i < n; i++) {
      const r = batch[i];
      task.cacheSlots[i] = r.cacheSlot;
      task.storeSlots[i] = r.storeSlot;
      task.generations[i] = r.generation;
      task.indices[i] = r.index;
      task.hashes[2 * i] = r.hashLo;
      task.hashes[2 * i + 1] = r.hashHi;
      if (r.subBlocks !== undefined) (task.subBlocks ??= new Uint32Array(n))[i] = r.subBlocks;
      if (r.baseSlot !== undefined && r.baseSlot >= 0)
        (task.baseSlots ??= new Int32Array(n).fill(-1))[i] = r.baseSlot;
      if (r.noRepair) (task.noRepair ??= new Uint8Array(n))[i] = 1;
    }
    const remote = batch[0].remote;
    if (remote) {
      task.remote = remoteTargets(
        remote.identity,
        remote.peers,
        READ_STRIDE,
        batch.map((r) => r.remote!.candidates),
      );
      task.remote.likely = Uint8Array.from(batch, (r) => r.remote!.likely);
    }
    const run: Promise<ReadBatchResult> = here ? here.run(task) : this.pool.run(task);
    if (!here) {
      this.readTasksInFlight++;
      this.taskCounts.reads++;
      this.taskCounts.readBlocks += n;
    }
    run.then(
      (result: ReadBatchResult) => {
        if (!here) this.readTasksInFlight--;
        const stats = this.replicationStats;
        stats.remoteReads += result.fromPeers ?? 0;
        stats.hedgedReads += result.hedges ?? 0;
        stats.replicaRepairs += result.repairs ?? 0;
        for (let i = 0; i < n; i++)
          batch[i].done(
            result.status[i],
            result.reasons[i],
            result.localBad?.[i] === 1,
            result.whole?.[i] === 1,
          );
      },
      (err: Error) => {
        if (!here) this.readTasksInFlight--;
        for (const r of batch) r.done(3, `pool task failed: ${err.message}`);
      },
    );
  }

  async close(): Promise<void> {
    this.closed = true;
    this.inlineMisses?.close();
    this.inlineMisses = undefined;
    const remote = this.remoteMisses;
    this.remoteMisses = undefined;
    await remote?.close();
    await this.pool.close();
  }
}

/** Misses grouped as tasks need them: one volume (one key) and one peer table a task. */
function groupReads(all: readonly ReadRequest[]): ReadRequest[][] {
  const groups = new Map<string, ReadRequest[]>();
  const tables = new Map<readonly PeerTarget[] | undefined, number>();
  for (const r of all) {
    const table = r.remote?.peers;
    if (!tables.has(table)) tables.set(table, tables.size);
    const group = `${r.volumeId}/${tables.get(table)}`;
    let list = groups.get(group);
    if (!list) groups.set(group, (list = []));
    list.push(r);
  }
  return [...groups.values()];
}

function remoteTargets(
  identity: PeerIdentityForTasks,
  peers: readonly PeerTarget[],
  stride: number,
  perBlock: readonly (readonly number[])[],
): RemoteTargets {
  const targets = new Int16Array(perBlock.length * stride).fill(-1);
  perBlock.forEach((list, i) => {
    for (let t = 0; t < Math.min(stride, list.length); t++) targets[i * stride + t] = list[t];
  });
  return { identity, peers: peers as PeerTarget[], stride, targets };
}

/**
 * Blocks a task of `count` local misses carries. A task's local reads are one
 * worker's blocking preads, one after another: the misses are spread over the
 * workers with no read task in flight, so their reads reach the disk at once
 * (a 4 KiB miss is mostly waiting on the disk), but no finer, and at most
 * BATCH a task. With every worker busy they stay in one task: a further split
 * only queues behind the busy workers and costs a pool round trip (two
 * messages and two wake-ups, 50-60 µs of CPU here) per piece. A sequential
 * reader at depth 8 then costs one task per 1 MiB read instead of four
 * (docs/benchmarks.md, session 35).
 */
export function readTaskSize(count: number, threads: number, tasksInFlight: number): number {
  const idle = Math.max(1, threads - tasksInFlight);
  return Math.max(1, Math.min(BATCH, Math.ceil(count / idle)));
}

/**
 * Spares for a batch: per block, the next live ring candidates after its
 * targets, SPARE_CANDIDATES a block (-1 padded). A block placement wanted on
 * this node whose store slot is -1 (this node's store is full) takes its
 * first spare as an extra target at once (written into `targets`).
 */
function sparesFor(
  where: readonly WriteTargets[],
  storeSlots: Int32Array,
  targets: Int16Array,
): Int16Array {
  const spares = new Int16Array(where.length * SPARE_CANDIDATES).fill(-1);
  for (let i = 0; i < where.length; i++) {
    const { local, remote, spare } = where[i];
    let from = 0;
    if (local && storeSlots[i] < 0 && spare.length > 0 && remote.length < MAX_TARGETS) {
      targets[i * MAX_TARGETS + remote.length] = spare[0];
      from = 1;
    }
    for (let k = 0; k < Math.min(SPARE_CANDIDATES, spare.length - from); k++)
      spares[i * SPARE_CANDIDATES + k] = spare[from + k];
  }
  return spares;
}
