/**
 * PatchCopies: a cluster write batch's patches on their way to replicas.
 * A block the volume stores as a patch (blocks/patches.ts) over a base in
 * this node's store is written here by the worker's PatchWriter, then sent
 * to each remote target as the same patch (PUT_PATCHES, peer/wire-patches.ts):
 * its written sub-blocks, 4 KiB each, instead of the 64 KiB block, and the
 * entry whose tree hash is the block's hash in the version's map.
 *
 * A copy a replica does not take — it lacks the base (moved, never
 * written there), a node from before PUT_PATCHES (BAD_REQUEST), no answer —
 * refuses the block (PATCH_REFUSED_STORED): the volume releases the local
 * patch and stores the block whole everywhere, spares included, under the
 * same ref (a whole put replaces a patch a replica did take). So a version
 * never counts a copy that is not there, and never commits a block whose
 * copies disagree.
 *
 * A writer with no copy of the base (a store-less client; a node not
 * among the base's holders) cannot make the entry: it sends the written
 * sub-blocks with their sums and the base's hash as its map has it; each
 * target makes the entry from its own base and answers the tree hash, and
 * the block's hash is that answer if every target gave the same one (else
 * the block goes whole). One message per target, as for a whole block.
 *
 * Patches go to the chosen targets only: a spare has no base. A block one
 * of whose targets is known full or unreachable is not sent as a patch at
 * all (refused at once), so its whole copy can go to a spare.
 */
import { PeerTimeoutError, PeerUnavailableError } from '../peer/errors.js';
import { STATUS_OK, encodePatchSums, type PatchResults, type WirePatch } from '../peer/wire.js';
import { healthOf } from './peer-health.js';
import { peerClient } from './peer-links.js';
import { OFF_GENERATION, OFF_VOLUME, RECORD_SIZE } from '../blocks/record.js';
import type { PatchWriter } from './patch-write.js';
import type { Hasher } from '../blocks/hash.js';
import { subBlockCount } from '../blocks/patches.js';
import { SUB_BLOCK_SIZE } from '../blocks/sub-sums.js';
import {
  PATCH_REFUSED,
  PATCH_REFUSED_STORED,
  type RemoteTargets,
  type WriteBatchTask,
} from './tasks.js';

const NO_OLDER = { volumeId: 0, generation: 0 };
/** PatchCopies.remoteBased: a block over its targets' base, awaiting / past its first answer. */
const REMOTE_BASED = 1;
const ANSWERED = 2;

export class PatchCopies {
  /** Per peer (index into the task's table): its patches, and each one's place in `acked`. */
  private readonly perPeer = new Map<number, { patches: WirePatch[]; items: number[] }>();
  /**
   * Per block: REMOTE_BASED when only its targets hold its base (its tree
   * hash is what they answer), ANSWERED once the first answer is in `hashes`.
   */
  private readonly remoteBased: Uint8Array;
  /** Per block: PATCH_REFUSED or PATCH_REFUSED_STORED where it must be stored whole (tasks.ts). */
  readonly refused: Uint8Array;
  sent = 0;
  refusals = 0;

  constructor(
    private readonly task: WriteBatchTask,
    private readonly remote: RemoteTargets,
  ) {
    this.refused = new Uint8Array(task.cacheSlots.length);
    this.remoteBased = new Uint8Array(task.cacheSlots.length);
  }

  /** Can block `i`'s copies go as patches: are all its targets writable now? */
  writable(i: number, unwritable: (peer: number) => boolean): boolean {
    const { stride, targets } = this.remote;
    for (let t = 0; t < stride; t++) {
      const peer = targets[i * stride + t];
      if (peer < 0) break;
      if (unwritable(peer)) return false;
    }
    return true;
  }

  /**
   * Block `i` whose base only its targets hold (a store-less client; a node
   * not among the base's holders): sent as its written sub-blocks with
   * their sums and the base's hash as the map has it; each target makes the
   * entry from its own copy of the base and answers the tree hash, which
   * send() checks the targets agree on. Not when this node is to keep a
   * copy too: it has no base to write it over.
   */
  addRemoteBased(i: number, plain: Uint8Array, hash: Hasher): void {
    if (this.task.storeSlots[i] >= 0) {
      this.refused[i] = PATCH_REFUSED;
      return;
    }
    const targets = this.task.patches!;
    const written = targets.written[i];
    const data = new Uint8Array(subBlockCount(written) * SUB_BLOCK_SIZE);
    const sums: number[] = [];
    for (let k = 0; k < plain.length / SUB_BLOCK_SIZE; k++) {
      if ((written & (1 << k)) === 0) continue;
      const bytes = plain.subarray(k * SUB_BLOCK_SIZE, (k + 1) * SUB_BLOCK_SIZE);
      data.set(bytes, sums.length * SUB_BLOCK_SIZE);
      sums.push(hash.hash32(bytes));
    }
    this.remoteBased[i] = REMOTE_BASED;
    this.add(i, {
      ref: this.refOf(i, this.task.volumeId, this.task.generation),
      base: { volumeId: targets.baseVolumes[i], generation: targets.baseGenerations[i] },
      older: NO_OLDER,
      present: written,
      entry: encodePatchSums(targets.baseHashes[2 * i], targets.baseHashes[2 * i + 1], sums),
      data,
    });
  }

  /**
   * A target stored block `i` with tree hash `answers[2k..]`: for a block
   * over the targets' bases, the first answer is its hash and every other
   * must be the same (copies that disagree: the block goes whole); a block
   * over this node's base has its hash already, which the answer repeats.
   */
  private agrees(i: number, answers: Uint32Array, k: number, hashes: Uint32Array): boolean {
    const [lo, hi] = [answers[2 * k], answers[2 * k + 1]];
    if (this.remoteBased[i] === REMOTE_BASED) {
      this.remoteBased[i] = ANSWERED;
      hashes[2 * i] = lo;
      hashes[2 * i + 1] = hi;
      return true;
    }
    return hashes[2 * i] === lo && hashes[2 * i + 1] === hi;
  }

  private refOf(i: number, volumeId: number, generation: number) {
    return { volumeId, generation, index: this.task.indices[i] };
  }

  /** Block `i` of `task`, just stored here as a patch by `writer`: its copies go as the same patch. */
  addWritten(task: WriteBatchTask, i: number, writer: PatchWriter, records: DataView): void {
    const targets = task.patches!;
    const older = targets.olderSlots[i];
    const { entry, data } = writer.lastForReplicas();
    this.add(i, {
      ref: { volumeId: task.volumeId, generation: task.generation, index: task.indices[i] },
      base: { volumeId: targets.baseVolumes[i], generation: targets.baseGenerations[i] },
      older:
        older < 0
          ? NO_OLDER
          : {
              volumeId: records.getUint32(older * RECORD_SIZE + OFF_VOLUME, true),
              generation: records.getUint32(older * RECORD_SIZE + OFF_GENERATION, true),
            },
      present: writer.present,
      entry,
      data,
    });
  }

  /** Send block `i`'s patch to each of its targets (with the batch's others). */
  private add(i: number, patch: WirePatch): void {
    const { stride, targets } = this.remote;
    for (let t = 0; t < stride; t++) {
      const peer = targets[i * stride + t];
      if (peer < 0) break;
      let batch = this.perPeer.get(peer);
      if (!batch) this.perPeer.set(peer, (batch = { patches: [], items: [] }));
      batch.patches.push(patch);
      batch.items.push(i * stride + t);
    }
  }

  /**
   * Send them all, one PUT_PATCHES per peer: `acked` gets each copy stored,
   * `refused` PATCH_REFUSED_STORED for each block a target did not store.
   * Never rejects, and reports no failure: the whole copies that follow
   * do, if the peer fails them too.
   */
  async send(acked: Uint8Array, hashes: Uint32Array): Promise<void> {
    const { stride, peers, identity } = this.remote;
    await Promise.all(
      [...this.perPeer].map(async ([peer, batch]) => {
        const target = peers[peer];
        this.sent += batch.patches.length;
        let results: PatchResults | undefined;
        try {
          results = await peerClient(identity, target).putPatches(batch.patches);
        } catch (err) {
          // Dead or silent: its whole copies go straight to a spare.
          if (err instanceof PeerUnavailableError || err instanceof PeerTimeoutError)
            healthOf(target).markUnreachable(performance.now());
        }
        for (let k = 0; k < batch.items.length; k++) {
          const item = batch.items[k];
          const i = Math.floor(item / stride);
          if (results?.statuses[k] === STATUS_OK && this.agrees(i, results.hashes, k, hashes)) {
            acked[item] = 1;
          } else {
            // Stored here (over a local base) or not, the block goes whole everywhere.
            if (this.refused[i] === 0)
              this.refused[i] =
                this.task.patches!.baseSlots[i] >= 0 ? PATCH_REFUSED_STORED : PATCH_REFUSED;
            this.refusals++;
          }
        }
      }),
    );
  }
}
