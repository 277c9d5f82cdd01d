/**
 * BlockPlacement: where a volume's blocks go and where to read them — the
 * one question the volume and the pool ask, on one node or many. A single
 * node (SingleNodePlacement, single-node.ts) answers "this node's store
 * only"; a cluster node (ClusterBlocks, cluster-blocks.ts) answers from the
 * ring and the live peers. Both run the same code path in the volume; the
 * single node's answers cost nothing per block (no remote lists, no copies).
 *
 * What counts as a durable copy once the blocks are placed is durability.ts.
 */
import type { LocalSlotStore } from '../blocks/slot-store.js';
import type { BlockRef } from '../../model/block-ref.js';
import type { PeerIdentityForTasks, PeerTarget, WriteTargets } from './placement.js';

/** Counters of the copies a node made (torus_replication_* material; zero on a single node). */
export interface ReplicationStats {
  /** Blocks committed with fewer copies than the ring's replication. */
  underReplicatedBlocks: number;
  /** Peer writes that failed (each batch to each peer counts once). */
  failedPeerWrites: number;
  /** Blocks read from a peer because there was no good local copy. */
  remoteReads: number;
}

/** Peers a cache miss may fetch a block from when this node has no good copy. */
export interface ReadRemote {
  identity: PeerIdentityForTasks;
  /** The placement's peer table when the request was made; candidates index into it. */
  peers: readonly PeerTarget[];
  candidates: number[];
  /** How many leading candidates should hold a copy (a write's targets now); reads spread over those first. */
  likely: number;
}

/** Where each block of a write round also goes, besides this node's store. */
export interface WriteRemote {
  identity: PeerIdentityForTasks;
  /** The peer table the targets index into, taken in the same tick as them. */
  peers: readonly PeerTarget[];
  /** Per block (aligned with the request): placement's answer — this node or not, remote targets, spares. */
  targets: readonly WriteTargets[];
}

export interface BlockPlacement {
  /** False for a store-less client (torusblk nbdserve), whose own copy of a map page is scratch. */
  readonly holdsCopies: boolean;
  /**
   * May a block be stored as a patch over an earlier one (blocks/patches.ts)?
   * 'local': every copy is in this node's store (a single node), so also
   * in place, into a block of the version being written. 'replicated': a
   * cluster whose every live node takes patches (PUT_PATCHES) — over a base
   * in this node's store, never in place. Undefined: whole blocks only.
   */
  readonly patches?: 'local' | 'replicated';
  readonly stats: ReplicationStats;
  /** Copies each block of this volume should have. */
  replicationOf(volumeId: number): number;

  /** The peers to try for a block with no good local copy; undefined when there are none (a single node). */
  readRemote(volumeId: number, index: number): ReadRemote | undefined;
  /**
   * Choose each block's copies for a write round: pushes this node's store
   * slot for each block onto `storeSlots` (-1 where it keeps no copy; a slot
   * pushed is the caller's to bind or unallocate, also when this throws) and
   * returns the remote targets, undefined when this node's store is the only
   * one. Targets and the peer table are taken together, in one tick.
   */
  placeWrites(
    store: LocalSlotStore,
    volumeId: number,
    indices: readonly number[],
    storeSlots: number[],
  ): WriteRemote | undefined;

  /** Store a map page on the other nodes that should hold it; resolves with those that did, never rejects. */
  putPage(
    ref: BlockRef,
    bytes: Uint8Array,
    hashLo: number,
    hashHi: number,
    flags: number,
  ): Promise<readonly string[]>;
  /** Fetch a block this node's store lacks (a map page) from another node, verified against its hash. */
  getBlock(ref: BlockRef, hashLo: number, hashHi: number, dest: Uint8Array): Promise<void>;
  /** Make the peers' copies durable; resolves with the peers that could not. */
  syncPeers(uuids: Iterable<string>): Promise<ReadonlySet<string>>;
}

/** No peers: the shared answer of a block kept on this node only (never written to). */
export const NO_PEERS: readonly string[] = Object.freeze([]);
