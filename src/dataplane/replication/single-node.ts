/**
 * SingleNodePlacement: the placement of a node that is the whole system —
 * every block's one copy is in this node's store, there is no other node to
 * read from, copy to or sync. The volume runs its cluster code path against
 * it; what it answers costs nothing per block (as coreos/torus's ring/single
 * made one node the same code path as many).
 */
import { IoError } from '../../common/errors.js';
import type { LocalSlotStore } from '../blocks/slot-store.js';
import { formatRef, type BlockRef } from '../../model/block-ref.js';
import {
  NO_PEERS,
  type BlockPlacement,
  type ReadRemote,
  type ReplicationStats,
  type WriteRemote,
} from './block-placement.js';

const NOTHING_FAILED: Promise<ReadonlySet<string>> = Promise.resolve(new Set<string>());
const NO_PAGE_COPIES: Promise<readonly string[]> = Promise.resolve(NO_PEERS);

export class SingleNodePlacement implements BlockPlacement {
  readonly holdsCopies = true;
  readonly patches = 'local';
  /** Always zero: one copy is all a single node is asked for. */
  readonly stats: ReplicationStats = {
    underReplicatedBlocks: 0,
    failedPeerWrites: 0,
    remoteReads: 0,
  };

  replicationOf(): number {
    return 1;
  }

  readRemote(): ReadRemote | undefined {
    return undefined;
  }

  /** A slot of this node's store for every block; a full store throws (StoreFullError): there is nowhere else. */
  placeWrites(
    store: LocalSlotStore,
    _volumeId: number,
    indices: readonly number[],
    storeSlots: number[],
  ): WriteRemote | undefined {
    for (let i = 0; i < indices.length; i++) storeSlots.push(store.allocate());
    return undefined;
  }

  putPage(): Promise<readonly string[]> {
    return NO_PAGE_COPIES;
  }

  getBlock(ref: BlockRef): Promise<void> {
    return Promise.reject(
      new IoError(
        'EIO',
        `${formatRef(ref)} is missing from the local store, and a single node has no other copy`,
      ),
    );
  }

  syncPeers(): Promise<ReadonlySet<string>> {
    return NOTHING_FAILED;
  }
}
