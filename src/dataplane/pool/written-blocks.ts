/**
 * WrittenBlocks: what DataPool.writeBlocks did with each block of a request,
 * by the block's position in the request (the batches it was cut into stay
 * inside the pool). Per block: all zeros (nothing stored), its hash, and the
 * peers that hold a copy — the targets that acked it, then any spares that
 * took a copy in a full or unreachable target's place.
 *
 * Allocation: one object per request; on a cluster, one list of holders per
 * block (the volume records it); none per block on a single node.
 */
import { NO_PEERS, type WriteRemote } from '../replication/block-placement.js';
import { MAX_TARGETS, SPARE_CANDIDATES } from '../replication/placement.js';
import { BATCH, PATCH_REFUSED_STORED, type RemoteTargets, type WriteBatchResult } from './tasks.js';

export class WrittenBlocks {
  private readonly batches: WriteBatchResult[];
  /** Cluster: per block, the uuids of the peers holding a copy. */
  private readonly holders: (readonly string[])[] | undefined;
  /** One line per failed peer write, over every batch (empty on a single node). */
  readonly failures: string[] = [];

  constructor(
    readonly count: number,
    private readonly remote: WriteRemote | undefined,
    /** Blocks per task the request was cut into (the last task may have fewer). */
    private readonly batch: number = BATCH,
  ) {
    this.batches = new Array(Math.ceil(count / batch));
    this.holders = remote ? new Array(count) : undefined;
  }

  isZero(i: number): boolean {
    return this.batches[Math.floor(i / this.batch)].zero[i % this.batch] === 1;
  }

  /** Block i was to be a patch and could not be: it must be stored whole. */
  isRefused(i: number): boolean {
    return (this.batches[Math.floor(i / this.batch)].refused?.[i % this.batch] ?? 0) !== 0;
  }

  /** Refused, but this node's store holds it as a patch (a replica did not take it): the volume releases that. */
  refusedAfterStoring(i: number): boolean {
    return (
      this.batches[Math.floor(i / this.batch)].refused?.[i % this.batch] === PATCH_REFUSED_STORED
    );
  }

  hashLo(i: number): number {
    return this.batches[Math.floor(i / this.batch)].hashes[2 * (i % this.batch)];
  }

  hashHi(i: number): number {
    return this.batches[Math.floor(i / this.batch)].hashes[2 * (i % this.batch) + 1];
  }

  /** The failed peer writes of the batch block i went in. */
  failuresOf(i: number): readonly string[] {
    return this.batches[Math.floor(i / this.batch)].failures ?? NO_PEERS;
  }

  /** The peers holding block i (uuids): none on a single node. */
  peers(i: number): readonly string[] {
    return this.holders?.[i] ?? NO_PEERS;
  }

  /**
   * Record the result of the batch starting at block `start`, sent with
   * `sent` (its remote targets, spares promoted for this node included).
   * Returns how many copies went to a node placement did not choose.
   */
  record(start: number, result: WriteBatchResult, sent: RemoteTargets | undefined): number {
    this.batches[start / this.batch] = result;
    if (result.failures) for (const failure of result.failures) this.failures.push(failure);
    if (!sent || !this.remote || !this.holders) return 0;
    const { peers, targets } = this.remote;
    const acked = result.acked!;
    const placed = result.placedOn;
    let elsewhere = 0;
    const n = Math.min(this.batch, this.count - start);
    for (let at = 0; at < n; at++) {
      const holders: string[] = [];
      const chosen = targets[start + at].remote.length;
      let listed = 0;
      for (; listed < MAX_TARGETS; listed++) {
        const peer = sent.targets[at * MAX_TARGETS + listed];
        if (peer < 0) break;
        if (!acked[at * MAX_TARGETS + listed]) continue;
        holders.push(peers[peer].uuid);
        if (listed >= chosen) elsewhere++; // a spare that took this node's copy
      }
      for (let k = 0; placed && k < SPARE_CANDIDATES; k++) {
        const peer = placed[at * SPARE_CANDIDATES + k];
        if (peer < 0 || listed >= MAX_TARGETS) continue;
        listed++;
        holders.push(peers[peer].uuid);
        elsewhere++;
      }
      this.holders[start + at] = holders;
    }
    return elsewhere;
  }
}
