/**
 * The durability rule: which copies of a new version's blocks count, and
 * what a commit waits for. The same rule on one node and many; on a single
 * node (SingleNodePlacement) every block has its local copy, no peers, and a
 * commit waits for the local fdatasync only.
 *
 * - A written block counts as stored if this node's store or at least one
 *   peer (a target that acked it, or a spare that took its copy) has it;
 *   stored nowhere, its write fails and it stays dirty.
 * - A block recorded with fewer copies than its volume's replication is
 *   counted (stats.underReplicatedBlocks); so is every failed peer write
 *   (stats.failedPeerWrites). Neither fails the write: rebalance and repair
 *   restore the copies later.
 * - A commit waits for this node's fdatasync and, once every map page put is
 *   answered, OP_SYNC on every peer holding a copy of the version (pages
 *   must be on a peer before it syncs), the two side by side. A peer that
 *   cannot sync does not count: its blocks lose that copy (counted as under-
 *   replicated, and not waited on again). The commit fails if a block would
 *   have no durable copy, or — on a store-less client, whose own pages are
 *   scratch — a map page.
 */
import { IoError } from '../../common/errors.js';
import type { Logger } from '../../common/log.js';
import type { BlockRef } from '../../model/block-ref.js';
import type { BlockPlacement } from './block-placement.js';

const NONE_FAILED: ReadonlySet<string> = new Set();

/** Where a block of the next version is stored. */
export interface BlockCopies {
  /** This node's store has a copy. */
  local: boolean;
  /** Peers that stored one (uuids); trimmed of peers that failed to sync. */
  peers: readonly string[];
}

/** What the rule needs of a placement. */
export type CopyKeeper = Pick<
  BlockPlacement,
  'holdsCopies' | 'stats' | 'replicationOf' | 'putPage' | 'syncPeers'
>;

/** A written block is stored if any copy of it is: here, or on a peer. */
export function storedAnywhere(local: boolean, peers: readonly string[]): boolean {
  return local || peers.length > 0;
}

/** Count a block recorded with fewer copies than its volume should have. */
export function countShortfall(placement: CopyKeeper, volumeId: number, copies: BlockCopies): void {
  if ((copies.local ? 1 : 0) + copies.peers.length < placement.replicationOf(volumeId))
    placement.stats.underReplicatedBlocks++;
}

/** Peer writes that failed in a write round: counted and logged, not fatal while each block has a copy somewhere. */
export function notePeerWriteFailures(
  placement: CopyKeeper,
  log: Logger,
  volume: string,
  failures: readonly string[],
): void {
  if (failures.length === 0) return;
  placement.stats.failedPeerWrites += failures.length;
  log.warn(
    { volume, failures: failures.slice(0, 8), count: failures.length },
    'some copies were not stored on peers',
  );
}

/** The copies of one version being committed: its map pages' and its blocks'. */
export class VersionCopies {
  private readonly pagePuts: Promise<readonly string[]>[] = [];

  constructor(
    private readonly placement: CopyKeeper,
    private readonly volume: string,
  ) {}

  /** A map page written to this node's store: sent to its other holders now, without waiting (it never changes again). */
  putPage(ref: BlockRef, bytes: Uint8Array, hashLo: number, hashHi: number, flags: number): void {
    this.pagePuts.push(this.placement.putPage(ref, bytes, hashLo, hashHi, flags));
  }

  /**
   * Make the version durable: the local sync, and the peers' once the page
   * puts are answered, side by side. Throws when a block or page would have
   * no durable copy; the version must then not be committed.
   */
  async sync(
    store: { sync(): Promise<void> },
    blocks: readonly (readonly [number, BlockCopies])[],
  ): Promise<void> {
    await Promise.all([store.sync(), this.syncPeers(blocks, await Promise.all(this.pagePuts))]);
  }

  private async syncPeers(
    blocks: readonly (readonly [number, BlockCopies])[],
    pageCopies: readonly (readonly string[])[],
  ): Promise<void> {
    const { placement } = this;
    const peers = new Set(pageCopies.flat());
    for (const [, copies] of blocks) for (const uuid of copies.peers) peers.add(uuid);
    const failed = peers.size === 0 ? NONE_FAILED : await placement.syncPeers(peers);
    if (
      !placement.holdsCopies &&
      pageCopies.some((copies) => copies.every((uuid) => failed.has(uuid)))
    ) {
      const peersFailed = [...failed].join(', ') || 'none';
      throw new IoError(
        'EIO',
        `volume ${this.volume}: a map page of the new version is on no storage node (peers ${peersFailed} failed); nothing was committed`,
      );
    }
    if (failed.size === 0) return;
    const lost: number[] = [];
    for (const [index, copies] of blocks) {
      const kept = copies.peers.filter((uuid) => !failed.has(uuid));
      if (!copies.local && kept.length === 0) {
        lost.push(index);
      } else if (kept.length < copies.peers.length) {
        copies.peers = kept; // the next commit does not wait on them again
        placement.stats.underReplicatedBlocks++;
      }
    }
    if (lost.length > 0) {
      const peersFailed = [...failed].join(', ');
      throw new IoError(
        'EIO',
        `volume ${this.volume}: ${lost.length} block(s) have no durable copy (peers ${peersFailed} failed to sync), first ${lost.slice(0, 8).join(', ')}`,
      );
    }
  }
}
