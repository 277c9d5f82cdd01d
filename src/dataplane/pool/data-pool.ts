/**
 * DataPool: the Piscina pool of data-plane workers, and the batching that
 * makes it worth using. One pool round trip costs 25–75 µs here, more than
 * hashing a 64 KiB block inline, so work is always handed over in batches of
 * up to BATCH blocks: writes are cut into batches by the flush that makes
 * them, and cache misses that arrive in the same tick share a task.
 */
import { availableParallelism } from 'node:os';
import { fileURLToPath } from 'node:url';
import { Piscina } from 'piscina';
import { MAX_TARGETS, SPARE_CANDIDATES, type PeerIdentityForTasks, type PeerTarget } from '../replication/placement.js';
import type { ReadBatchResult, ReadBatchTask, RemoteTargets, WorkerSetup, WriteBatchResult, WriteBatchTask } from './tasks.js';

export const BATCH = 16;

export interface ReadRequest {
  volumeId: number;
  key: Uint8Array | null;
  cacheSlot: number;
  storeSlot: number;
  generation: number;
  index: number;
  hashLo: number;
  hashHi: number;
  /** Cluster: peers to fetch from when there is no good local copy (storeSlot -1 for none). */
  remote?: ReadRemote;
  done(status: number, reason: string): void;
}

export interface ReadRemote {
  identity: PeerIdentityForTasks;
  /** The placement's peer table when the request was made; candidates index into it. */
  peers: readonly PeerTarget[];
  candidates: number[];
}

/** Cluster: where each block of a write also goes. */
export interface WriteRemote {
  identity: PeerIdentityForTasks;
  peers: readonly PeerTarget[];
  /** Per block (same order as the blocks), indexes into peers. */
  targets: number[][];
}

const READ_STRIDE = MAX_TARGETS + SPARE_CANDIDATES;

export class DataPool {
  private readonly pool: Piscina;
  private pendingReads: ReadRequest[] = [];
  private readScheduled = false;

  /**
   * tasksPerWorker: 1 on a single node (every task blocks its worker, and an
   * idle worker should take the next one); more in a cluster, where
   * replicated tasks wait on peers and several should share a worker.
   */
  constructor(setup: WorkerSetup, threads = Math.max(1, Math.min(4, availableParallelism())), tasksPerWorker = 1) {
    this.pool = new Piscina({
      filename: fileURLToPath(new URL('./worker.js', import.meta.url)),
      workerData: setup,
      minThreads: threads,
      maxThreads: threads,
      idleTimeout: 60_000,
      concurrentTasksPerWorker: tasksPerWorker,
    });
  }

  get threads(): number {
    return this.pool.threads.length;
  }

  /** Write blocks, BATCH at a time in parallel tasks; results in input order. */
  async writeBlocks(volumeId: number, generation: number, key: Uint8Array | null, cacheSlots: number[], storeSlots: number[], indices: number[], remote?: WriteRemote): Promise<WriteBatchResult[]> {
    const tasks: Promise<WriteBatchResult>[] = [];
    for (let start = 0; start < cacheSlots.length; start += BATCH) {
      const end = Math.min(start + BATCH, cacheSlots.length);
      const task: WriteBatchTask = {
        op: 'write',
        volumeId,
        generation,
        key,
        cacheSlots: Int32Array.from(cacheSlots.slice(start, end)),
        storeSlots: Int32Array.from(storeSlots.slice(start, end)),
        indices: Float64Array.from(indices.slice(start, end)),
      };
      if (remote) task.remote = remoteTargets(remote.identity, remote.peers, MAX_TARGETS, remote.targets.slice(start, end));
      tasks.push(this.pool.run(task));
    }
    return Promise.all(tasks);
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
    const all = this.pendingReads;
    this.pendingReads = [];
    // A task serves one volume (one key) and one peer table; group, then cut into batches.
    const byVolume = new Map<unknown, ReadRequest[]>();
    const tables = new Map<readonly PeerTarget[] | undefined, number>();
    for (const r of all) {
      const table = r.remote?.peers;
      if (!tables.has(table)) tables.set(table, tables.size);
      const group = `${r.volumeId}/${tables.get(table)}`;
      let list = byVolume.get(group);
      if (!list) byVolume.set(group, (list = []));
      list.push(r);
    }
    for (const list of byVolume.values()) {
      for (let start = 0; start < list.length; start += BATCH) this.runReads(list.slice(start, start + BATCH));
    }
  }

  private runReads(batch: ReadRequest[]): void {
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
    }
    const remote = batch[0].remote;
    if (remote) task.remote = remoteTargets(remote.identity, remote.peers, READ_STRIDE, batch.map((r) => r.remote!.candidates));
    this.pool.run(task).then(
      (result: ReadBatchResult) => {
        for (let i = 0; i < n; i++) batch[i].done(result.status[i], result.reasons[i]);
      },
      (err: Error) => {
        for (const r of batch) r.done(3, `pool task failed: ${err.message}`);
      },
    );
  }

  async close(): Promise<void> {
    await this.pool.close();
  }
}

function remoteTargets(identity: PeerIdentityForTasks, peers: readonly PeerTarget[], stride: number, perBlock: number[][]): RemoteTargets {
  const targets = new Int16Array(perBlock.length * stride).fill(-1);
  perBlock.forEach((list, i) => {
    for (let t = 0; t < Math.min(stride, list.length); t++) targets[i * stride + t] = list[t];
  });
  return { identity, peers: peers as PeerTarget[], stride, targets };
}
