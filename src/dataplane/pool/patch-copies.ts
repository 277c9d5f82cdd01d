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
 * Patches go to the chosen targets only: a spare has no base. A block one
 * of whose targets is known full or unreachable is not sent as a patch at
 * all (refused at once), so its whole copy can go to a spare.
 */
import { PeerTimeoutError, PeerUnavailableError } from '../peer/errors.js';
import { STATUS_OK, type WirePatch } from '../peer/wire.js';
import { healthOf } from './peer-health.js';
import { peerClient } from './peer-links.js';
import { OFF_GENERATION, OFF_VOLUME, RECORD_SIZE } from '../blocks/record.js';
import type { PatchWriter } from './patch-write.js';
import { PATCH_REFUSED_STORED, type RemoteTargets, type WriteBatchTask } from './tasks.js';

const NO_OLDER = { volumeId: 0, generation: 0 };

export class PatchCopies {
  /** Per peer (index into the task's table): its patches, and each one's place in `acked`. */
  private readonly perPeer = new Map<number, { patches: WirePatch[]; items: number[] }>();
  sent = 0;
  refused = 0;

  constructor(private readonly remote: RemoteTargets) {}

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
  async send(acked: Uint8Array, refused: Uint8Array): Promise<void> {
    const { stride, peers, identity } = this.remote;
    await Promise.all(
      [...this.perPeer].map(async ([peer, batch]) => {
        const target = peers[peer];
        this.sent += batch.patches.length;
        let statuses: Uint8Array | undefined;
        try {
          statuses = await peerClient(identity, target).putPatches(batch.patches);
        } catch (err) {
          // Dead or silent: its whole copies go straight to a spare.
          if (err instanceof PeerUnavailableError || err instanceof PeerTimeoutError)
            healthOf(target).markUnreachable(performance.now());
        }
        for (let k = 0; k < batch.items.length; k++) {
          const item = batch.items[k];
          if (statuses?.[k] === STATUS_OK) {
            acked[item] = 1;
          } else {
            refused[Math.floor(item / stride)] = PATCH_REFUSED_STORED;
            this.refused++;
          }
        }
      }),
    );
  }
}
