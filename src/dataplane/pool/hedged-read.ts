/**
 * Reading a batch's blocks from peers, in a pool worker: hedged, so a slow,
 * dead or frozen replica costs one hedge delay, not a deadline per block.
 *
 * Per block that had no good local copy:
 *   - Its candidates (ring order, live first, from the task) are reordered
 *     by this worker's view of each peer (peer-health.ts): healthy ones
 *     first, then those answering more than twice as slowly as the fastest,
 *     then penalized ones (recent failures or hedges); within each, the
 *     likely holders (the task's `likely`) before spares, each group in
 *     ring order rotated by the block's index, so a run of blocks is spread
 *     over every copy instead of queueing on the first.
 *   - One get goes to the first. If no good answer has come within that
 *     peer's hedge delay, the next candidate is asked too (a hedge); a
 *     failure (error, not held, bad checksum) asks the next one at once.
 *     The first copy whose xxh64 matches the block map (and that opens, if
 *     sealed) is taken; later answers are ignored (the TBP client drops
 *     replies whose request settled; there is no cancel on the wire).
 *   - A replica that sent bytes with the wrong checksum is sent the good copy
 *     (a put of the same ref, which replaces its copy) once one is found;
 *     the task ends when that put is answered (at most REPAIR_TIMEOUT_MS).
 * Every get still has its own deadline (GET_TIMEOUT_MS), which bounds a
 * block whose every candidate is silent. When every candidate has failed
 * and some of them only by missing that deadline (busy, not gone: a
 * loaded machine, a long GC pause), those are asked once more with
 * PATIENT_GET_TIMEOUT_MS before the block fails: a slow read beats an EIO
 * when the only other copy is on a dead node.
 *
 * Allocation: typed arrays per batch, one closure pair per get; the bytes
 * are hashed from the client's reply buffer and copied (or opened) straight
 * into the cache slot. A reply's buffer goes back to the client's pool
 * (recycleReceived) once nothing needs it: a range's once copied or
 * refused; a whole block's at once when it is not taken, at the end of the
 * batch when it is, never when a repair put was sent from it (a put that
 * timed out may still be in the socket).
 */
import type { Hasher } from '../blocks/hash.js';
import { SUB_BLOCK_SIZE, subSum, subsumsMatch } from '../blocks/sub-sums.js';
import type { BlockRef } from '../../model/block-ref.js';
import { PATIENT_GET_TIMEOUT_MS } from '../peer/client-options.js';
import { wireHashInto } from '../peer/backend.js';
import { recycleReceived } from '../peer/reply-memory.js';
import { PeerTimeoutError, type PeerError } from '../peer/errors.js';
import type { RangeReply, WireBlock } from '../peer/wire.js';
import type { PeerTarget } from '../replication/placement.js';
import { GET_TIMEOUT_MS, type PeerLinks } from './peer-links.js';
import { healthOf, type PeerHealth } from './peer-health.js';
import { refAad, type WorkerSealer } from './sealing.js';
import {
  READ_CHECKSUM_MISMATCH,
  READ_OK,
  READ_OPEN_FAILED,
  type ReadBatchResult,
  type ReadBatchTask,
  type RemoteTargets,
} from './tasks.js';

export interface HedgedReadDeps {
  hash: Hasher;
  blockSize: number;
  /** The cache slot's bytes for block i of the task. */
  dest(i: number): Uint8Array;
  sealer: WorkerSealer | undefined;
  /** Where a failed repair is reported. */
  warn(message: string): void;
  /** This thread's connections to peers (a worker's, or the main thread's own). */
  links: PeerLinks;
}

const hashOut = new Uint32Array(2);
/** A repair put's deadline: it holds up its batch, so it is short. */
const REPAIR_TIMEOUT_MS = 1000;

export class HedgedRead {
  private readonly n: number;
  private readonly stride: number;
  /** Candidates per block, reordered by health: n x stride peer indexes, -1 padded. */
  private readonly order: Int16Array;
  /** Next position in `order` to ask, per block. */
  private readonly next: Uint8Array;
  private readonly inFlight: Uint8Array;
  /** 1 once the block has a good copy or nobody left to ask. */
  private readonly settled: Uint8Array;
  /** When to hedge (performance.now() ms), per block with a get outstanding; Infinity otherwise. */
  private readonly hedgeAt: Float64Array;
  /** The peer asked last, per block (the one a hedge goes around). */
  private readonly lastAsked: Int16Array;
  private readonly health: PeerHealth[];
  /** Per block, what went wrong where (only built for blocks that need it). */
  private readonly tried: (string[] | undefined)[];
  /** Per block, peers that sent a copy with the wrong checksum (repaired once a good copy is found). */
  private readonly bad: (number[] | undefined)[];
  /** Per block, the good copy taken (kept while the batch runs, to repair a bad copy that arrives late). */
  private readonly good: (WireBlock | undefined)[];
  /** 1 where good[i]'s bytes were sent to a repair: not recycled. */
  private readonly lent: Uint8Array;
  /** Per block, peers whose get missed its deadline (asked again, patiently, before the block fails). */
  private readonly timedOut: (number[] | undefined)[];
  /** 1 once block i's patient round has been sent. */
  private readonly patient: Uint8Array;
  /**
   * Per block, the sub-blocks wanted when only part of it is (a plain
   * block's 4 KiB miss: GET_RANGE); 0 asks for the whole block (GET_BLOCK).
   * Set to 0 when a peer's sub-sums entry did not fit the block's hash: the
   * entry, not the data, may be stale, so the block is then asked whole.
   */
  private readonly partOf: Uint32Array;
  private open = 0;
  private readonly repairing: Promise<void>[] = [];
  private timer: NodeJS.Timeout | undefined;
  private timerAt = Infinity;
  private finish: (() => void) | undefined;
  fromPeers = 0;
  hedges = 0;
  /** Bad replicas sent the good copy (and that stored it). */
  repairs = 0;

  constructor(
    private readonly task: ReadBatchTask,
    private readonly remote: RemoteTargets,
    private readonly result: ReadBatchResult,
    private readonly deps: HedgedReadDeps,
  ) {
    this.n = task.cacheSlots.length;
    this.stride = remote.stride;
    this.order = new Int16Array(this.n * this.stride).fill(-1);
    this.next = new Uint8Array(this.n);
    this.inFlight = new Uint8Array(this.n);
    this.settled = new Uint8Array(this.n);
    this.hedgeAt = new Float64Array(this.n).fill(Infinity);
    this.lastAsked = new Int16Array(this.n).fill(-1);
    this.health = remote.peers.map((p) => healthOf(p));
    this.tried = new Array(this.n);
    this.bad = new Array(this.n);
    this.good = new Array(this.n);
    this.lent = new Uint8Array(this.n);
    this.timedOut = new Array(this.n);
    this.patient = new Uint8Array(this.n);
    this.partOf = new Uint32Array(this.n);
    if (task.subBlocks && !deps.sealer) this.partOf.set(task.subBlocks);
  }

  /** Resolves once every block the local store could not serve has a good copy or has run out of candidates, and repairs are done. */
  run(): Promise<void> {
    const now = performance.now();
    const rank = this.ranks(now);
    for (let i = 0; i < this.n; i++) {
      if (this.result.status[i] === READ_OK) {
        this.settled[i] = 1;
        continue;
      }
      if (this.task.storeSlots[i] >= 0) this.note(i, `local: ${this.result.reasons[i]}`);
      this.orderCandidates(i, rank);
      this.open++;
    }
    if (this.open === 0) return Promise.resolve();
    return new Promise<void>((resolve) => {
      this.finish = resolve;
      for (let i = 0; i < this.n; i++) if (!this.settled[i]) this.askNext(i);
      this.arm();
    });
  }

  /** Per peer of the table: 0 healthy, 1 slow (over twice the fastest's latency), 2 penalized. */
  private ranks(now: number): Uint8Array {
    const rank = new Uint8Array(this.health.length);
    let fastest = Infinity;
    for (const h of this.health)
      if (!h.penalized(now) && h.srtt > 0 && h.srtt < fastest) fastest = h.srtt;
    for (let p = 0; p < this.health.length; p++) {
      const h = this.health[p];
      rank[p] = h.penalized(now) ? 2 : h.srtt > 2 * fastest + 1 ? 1 : 0;
    }
    return rank;
  }

  /**
   * Block i's candidates by rank; within a rank, the likely holders (the
   * targets a write would choose now) before the rest, and each of those
   * two groups in ring order rotated by the block's index, so consecutive
   * blocks (a sequential reader, read-ahead) start on different replicas and
   * every copy serves its share, not the first replica all of them. Rotating
   * over a spare too would send a third of first asks (3 nodes, R = 2) to a
   * node that holds no copy: a NOT_FOUND round trip each.
   */
  private orderCandidates(i: number, rank: Uint8Array): void {
    const likely = this.remote.likely?.[i] ?? this.stride;
    let k = i * this.stride;
    for (let r = 0; r <= 2; r++) {
      k = this.placeRotated(i, k, rank, r, 0, likely);
      k = this.placeRotated(i, k, rank, r, likely, this.stride);
    }
  }

  /** Block i's targets at positions [from, to) of rank r into `order` from k on, rotated by its index; returns the next free position. */
  private placeRotated(
    i: number,
    k: number,
    rank: Uint8Array,
    r: number,
    from: number,
    to: number,
  ): number {
    const base = i * this.stride;
    let count = 0;
    for (let t = from; t < to; t++) {
      const peer = this.remote.targets[base + t];
      if (peer < 0) break;
      if (rank[peer] === r) count++;
    }
    if (count === 0) return k;
    let skip = this.task.indices[i] % count;
    const start = k;
    for (let t = from; t < to; t++) {
      const peer = this.remote.targets[base + t];
      if (peer < 0) break;
      if (rank[peer] !== r) continue;
      // The first `skip` of this group go after the rest.
      if (skip > 0) {
        this.order[start + count - skip--] = peer;
        continue;
      }
      this.order[k++] = peer;
    }
    return start + count;
  }

  private note(i: number, what: string): void {
    (this.tried[i] ??= []).push(what);
  }

  private ref(i: number): BlockRef {
    return {
      volumeId: this.task.volumeId,
      generation: this.task.generations[i],
      index: this.task.indices[i],
    };
  }

  /** Ask block i's next candidate. False when there is none left. */
  private askNext(i: number): boolean {
    const pos = this.next[i];
    if (pos >= this.stride) return false;
    const peer = this.order[i * this.stride + pos];
    if (peer < 0) return false;
    this.next[i] = pos + 1;
    this.inFlight[i]++;
    this.lastAsked[i] = peer;
    this.hedgeAt[i] = performance.now() + this.health[peer].hedgeDelay();
    this.get(i, peer, GET_TIMEOUT_MS);
    return true;
  }

  private get(i: number, peer: number, timeoutMs: number): void {
    const sent = performance.now();
    const client = this.deps.links.client(this.remote.identity, this.remote.peers[peer]);
    const part = this.partOf[i];
    if (part === 0) {
      client.getBlock(this.ref(i), { timeoutMs }).then(
        (block) => this.onAnswer(i, peer, sent, block),
        (err: PeerError) => this.onFailure(i, peer, err),
      );
      return;
    }
    // The span from the first wanted sub-block to the last; only the wanted ones are copied.
    const first = 31 - Math.clz32(part & -part);
    const last = 31 - Math.clz32(part);
    const range = {
      ref: this.ref(i),
      offset: first * SUB_BLOCK_SIZE,
      length: (last - first + 1) * SUB_BLOCK_SIZE,
    };
    client.getRange(range, { timeoutMs }).then(
      (reply) =>
        reply?.entry
          ? this.onRange(i, peer, sent, reply)
          : this.onAnswer(i, peer, sent, reply?.block),
      (err: PeerError) => this.onFailure(i, peer, err),
    );
  }

  /**
   * A range-form GET_RANGE answer: the entry must be the one for the map's
   * xxh64, and each wanted sub-block must match its sum in it. Only the
   * wanted sub-blocks are copied into the slot.
   */
  private onRange(i: number, peer: number, sent: number, reply: RangeReply): void {
    this.inFlight[i]--;
    this.health[peer].answered(performance.now() - sent);
    // A range is never lent to a repair: its bytes are free once copied, or refused.
    const data = reply.block.data;
    if (this.settled[i]) return recycleReceived(data);
    const target = this.remote.peers[peer];
    const { hash } = this.deps;
    const entry = reply.entry!;
    if (!subsumsMatch(entry, this.task.hashes[2 * i], this.task.hashes[2 * i + 1], hash)) {
      // A stale or damaged entry says nothing about the data: ask the same peer for the whole block.
      this.note(i, `${target.uuid}: sub-sums entry does not fit the block's hash`);
      this.partOf[i] = 0;
      this.inFlight[i]++;
      this.get(i, peer, GET_TIMEOUT_MS);
      return recycleReceived(data);
    }
    // The task's mask, not partOf: a hedge's range may answer after an entry that did not fit reset partOf.
    const part = this.task.subBlocks![i];
    for (let j = 0; j < 32; j++) {
      if ((part & (1 << j)) === 0) continue;
      const at = j * SUB_BLOCK_SIZE - reply.offset;
      if (hash.hash32(data.subarray(at, at + SUB_BLOCK_SIZE)) !== subSum(entry, j)) {
        this.note(i, `${target.uuid}: sub-block ${j} does not match its sum`);
        (this.bad[i] ??= []).push(peer);
        recycleReceived(data);
        return this.moveOn(i);
      }
    }
    const dest = this.deps.dest(i);
    for (let j = 0; j < 32; j++) {
      if ((part & (1 << j)) === 0) continue;
      const at = j * SUB_BLOCK_SIZE - reply.offset;
      dest.set(data.subarray(at, at + SUB_BLOCK_SIZE), j * SUB_BLOCK_SIZE);
    }
    recycleReceived(data);
    this.result.status[i] = READ_OK;
    this.result.reasons[i] = '';
    this.fromPeers++;
    this.settle(i);
  }

  private onAnswer(i: number, peer: number, sent: number, block: WireBlock | undefined): void {
    this.inFlight[i]--;
    this.health[peer].answered(performance.now() - sent);
    const target = this.remote.peers[peer];
    if (this.settled[i]) {
      // A loser of the race. If it sent a bad copy and the batch is still running, it is repaired all the same.
      const good = this.good[i];
      if (block && good && this.open > 0 && !this.matches(i, block)) this.repair(i, peer, good);
      if (block) recycleReceived(block.data);
      return;
    }
    if (!block) {
      this.note(i, `${target.uuid}: not held`);
      return this.moveOn(i);
    }
    const sealer = this.deps.sealer;
    if (!this.matches(i, block)) {
      this.note(i, `${target.uuid}: checksum mismatch`);
      (this.bad[i] ??= []).push(peer);
      recycleReceived(block.data);
      return this.moveOn(i);
    }
    const dest = this.deps.dest(i);
    if (sealer) {
      try {
        const generation = this.task.generations[i];
        sealer.open(
          block.data,
          dest,
          block.nonce,
          block.tag,
          refAad(this.task.volumeId, generation, this.task.indices[i]),
          generation,
        );
      } catch (err) {
        this.note(i, `${target.uuid}: ${(err as Error).message}`);
        this.result.status[i] = READ_OPEN_FAILED;
        recycleReceived(block.data);
        return this.moveOn(i);
      }
    } else {
      dest.set(block.data);
    }
    // Asked for part of it, given all of it: the whole slot now holds checked bytes.
    if (this.task.subBlocks?.[i]) (this.result.whole ??= new Uint8Array(this.n))[i] = 1;
    this.result.status[i] = READ_OK;
    this.result.reasons[i] = '';
    this.fromPeers++;
    const bad = this.bad[i];
    if (bad) for (const p of bad) this.repair(i, p, block);
    this.good[i] = block;
    this.settle(i);
  }

  /** The copy is whole and hashes (its xxh64, or its tree hash when it says so) to what the block map says. */
  private matches(i: number, block: WireBlock): boolean {
    if (block.data.length !== this.deps.blockSize) return false;
    if (!wireHashInto(this.deps.hash, block, hashOut)) return false;
    return hashOut[0] === this.task.hashes[2 * i] && hashOut[1] === this.task.hashes[2 * i + 1];
  }

  private onFailure(i: number, peer: number, err: PeerError): void {
    this.inFlight[i]--;
    this.health[peer].strike(performance.now(), 'failed');
    if (this.settled[i]) return;
    this.note(i, `${this.remote.peers[peer].uuid}: ${err.message}`);
    if (err instanceof PeerTimeoutError && !this.patient[i]) (this.timedOut[i] ??= []).push(peer);
    this.moveOn(i);
  }

  /** That candidate failed: ask the next now; with nobody left and nothing outstanding, the block has failed. */
  private moveOn(i: number): void {
    if (this.askNext(i)) return this.arm();
    if (this.inFlight[i] > 0) {
      this.hedgeAt[i] = Infinity; // nobody left to hedge to; wait for what is outstanding
      return;
    }
    const slow = this.timedOut[i];
    if (slow && !this.patient[i]) {
      // Everyone failed, some only by being late: once more, patiently.
      this.patient[i] = 1;
      this.hedgeAt[i] = Infinity;
      for (const peer of slow) {
        this.inFlight[i]++;
        this.get(i, peer, PATIENT_GET_TIMEOUT_MS);
      }
      return;
    }
    const status = this.result.status;
    if (this.bad[i] && status[i] !== READ_OPEN_FAILED) status[i] = READ_CHECKSUM_MISMATCH;
    this.result.reasons[i] = this.tried[i]?.join('; ') ?? 'no candidates';
    this.settle(i);
  }

  private settle(i: number): void {
    this.settled[i] = 1;
    this.hedgeAt[i] = Infinity;
    if (--this.open === 0) {
      clearTimeout(this.timer);
      this.timer = undefined;
      // Every block has its answer; a late loser is no longer repaired, so the good copies not lent to a repair are free.
      for (let b = 0; b < this.n; b++) {
        const good = this.good[b];
        if (good && !this.lent[b]) recycleReceived(good.data);
        this.good[b] = undefined;
      }
      if (this.repairing.length === 0) this.finish!();
      else void Promise.all(this.repairing).then(this.finish);
    }
  }

  /** One timer per batch, at the earliest hedge due. */
  private arm(): void {
    let at = Infinity;
    for (let i = 0; i < this.n; i++)
      if (!this.settled[i] && this.hedgeAt[i] < at) at = this.hedgeAt[i];
    if (at === Infinity || (this.timer && at >= this.timerAt)) return;
    clearTimeout(this.timer);
    this.timerAt = at;
    this.timer = setTimeout(this.onTimer, Math.max(0, at - performance.now()));
  }

  private readonly onTimer = (): void => {
    this.timer = undefined;
    this.timerAt = Infinity;
    const now = performance.now();
    for (let i = 0; i < this.n; i++) {
      if (this.settled[i] || this.hedgeAt[i] > now) continue;
      // The peer asked last is slow now: later batches try it last for a while.
      const slow = this.lastAsked[i];
      if (slow >= 0) this.health[slow].strike(now, 'slow');
      if (this.askNext(i)) this.hedges++;
      else this.hedgeAt[i] = Infinity;
    }
    this.arm();
  };

  /**
   * Send block i's good copy to a peer that returned a bad one. Awaited
   * before the task ends (the counts are then exact, and a pool that parks
   * idle workers would otherwise strand it): it costs the batch a put's
   * round trip, only when a replica was found bad, at most REPAIR_TIMEOUT_MS.
   */
  private repair(i: number, peer: number, good: WireBlock): void {
    if (this.task.noRepair?.[i]) return; // a newer copy of an uncommitted block is not damage
    this.lent[i] = 1;
    const target: PeerTarget = this.remote.peers[peer];
    const copy: WireBlock = {
      ref: this.ref(i),
      flags: good.flags,
      hashLo: this.task.hashes[2 * i],
      hashHi: this.task.hashes[2 * i + 1],
      nonce: good.nonce,
      tag: good.tag,
      data: good.data,
    };
    this.repairing.push(
      this.deps.links
        .client(this.remote.identity, target)
        .putBlocks([copy], { timeoutMs: REPAIR_TIMEOUT_MS })
        .then(
          () => void this.repairs++,
          (err: Error) =>
            this.deps.warn(
              `repairing block ${this.task.volumeId}/${copy.ref.generation}/${copy.ref.index} on ${target.uuid} failed: ${err.message}`,
            ),
        ),
    );
  }
}
