/**
 * ClusterBlocks: what a volume on a cluster node needs besides its local
 * store — where blocks go (placement), copies of block-map pages to and from
 * peers (pages are written on the main thread at commit, data blocks go
 * through the pool workers), and making peers' copies durable at commit.
 *
 * The main thread keeps its own PeerClient per peer for these few requests;
 * the bulk of replication traffic runs on the workers' connections.
 */
import { IoError, StoreFullError } from '../../common/errors.js';
import type { Logger } from '../../common/log.js';
import type { Hasher } from '../blocks/hash.js';
import { formatRef, type BlockRef } from '../../model/block-ref.js';
import type { LocalSlotStore } from '../blocks/slot-store.js';
import { PeerClient } from '../peer/client.js';
import { PeerTimeoutError } from '../peer/errors.js';
import { wireHashMatches } from '../peer/backend.js';
import { PATIENT_GET_TIMEOUT_MS } from '../peer/client-options.js';
import type {
  BlockPlacement,
  ReadRemote,
  ReplicationStats,
  WriteRemote,
} from './block-placement.js';
import { ClusterPlacement, type PeerTarget, type WriteTargets } from './placement.js';

/** Marks a candidate that only missed its deadline (asked again, patiently). */
const LATE = ' (late)';

export type { ReplicationStats } from './block-placement.js';

export class ClusterBlocks implements BlockPlacement {
  private readonly clients = new Map<string, PeerClient>();
  readonly stats: ReplicationStats = {
    underReplicatedBlocks: 0,
    failedPeerWrites: 0,
    remoteReads: 0,
  };

  constructor(
    readonly placement: ClusterPlacement,
    private readonly hasher: Hasher,
    private readonly log: Logger,
  ) {}

  /**
   * Cluster patches, on unless TORUS_CLUSTER_PATCHES=off
   * (node/cluster-blocks.ts). Off: every block is written whole, as before
   * patches — the way back should a fault be found in them; on, they are
   * used only while every live node takes them (`patches`).
   */
  patchesEnabled = true;

  get holdsCopies(): boolean {
    return this.placement.holdsCopies;
  }

  /**
   * Patches sent to the replicas as patches (BlockPlacement.patches), over
   * this node's copy of the base or the targets' own, once every live node
   * takes them.
   */
  get patches(): 'replicated' | undefined {
    return this.patchesEnabled && this.placement.livePeersTakePatches ? 'replicated' : undefined;
  }

  replicationOf(volumeId: number): number {
    return this.placement.replicationOf(volumeId);
  }

  readRemote(volumeId: number, index: number): ReadRemote | undefined {
    const { remote: candidates, likely } = this.placement.readCandidates(volumeId, index);
    return candidates.length > 0
      ? { identity: this.placement.identity, peers: this.placement.peers, candidates, likely }
      : undefined;
  }

  /**
   * The ring's targets per block. This node's copy gets a store slot, or -1
   * when the store is full: the pool then gives it to the block's first spare.
   */
  placeWrites(
    store: LocalSlotStore,
    volumeId: number,
    indices: readonly number[],
    storeSlots: number[],
  ): WriteRemote {
    const targets: WriteTargets[] = [];
    const remote: WriteRemote = {
      identity: this.placement.identity,
      peers: this.placement.peers,
      targets,
    };
    for (const index of indices) {
      const where = this.placement.writeTargets(volumeId, index);
      storeSlots.push(where.local ? allocateUnlessFull(store) : -1);
      targets.push(where);
    }
    return remote;
  }

  /** The main thread's connection to a peer (opened on first use, kept). */
  clientFor(peer: PeerTarget): PeerClient {
    const key = `${peer.uuid}@${peer.host}:${peer.port}`;
    let client = this.clients.get(key);
    if (!client) {
      const { clusterId, nodeId, tls } = this.placement.identity;
      client = new PeerClient({
        host: peer.host,
        port: peer.port,
        clusterId,
        nodeId,
        expectedNodeId: peer.uuid,
        getTimeoutMs: 600,
        connectTimeoutMs: 500,
        deadAfterMs: 1000,
        log: this.log,
        tls,
      });
      this.clients.set(key, client);
    }
    return client;
  }

  /**
   * Store a map page on the peers its placement names (besides this node,
   * which keeps its own copy). Resolves with the uuids that stored it; never
   * rejects — the caller decides whether the copies are enough.
   */
  async putPage(
    ref: BlockRef,
    bytes: Uint8Array,
    hashLo: number,
    hashHi: number,
    flags: number,
  ): Promise<string[]> {
    const { remote } = this.placement.writeTargets(ref.volumeId, ref.index);
    const peers = this.placement.peers;
    const stored: string[] = [];
    await Promise.all(
      remote.map(async (at) => {
        const peer = peers[at];
        try {
          await this.clientFor(peer).putBlocks([
            {
              ref,
              flags,
              hashLo,
              hashHi,
              nonce: new Uint8Array(12),
              tag: new Uint8Array(16),
              data: bytes,
            },
          ]);
          stored.push(peer.uuid);
        } catch (err) {
          this.stats.failedPeerWrites++;
          this.log.warn(
            { peer: peer.uuid, block: formatRef(ref), err: (err as Error).message },
            'map page not stored on peer',
          );
        }
      }),
    );
    return stored;
  }

  /**
   * Fetch a map page (or any block) from its candidates; verified against
   * the expected hash. Candidates that only missed the get deadline are
   * asked once more, patiently, before giving up (as hedged-read.ts does).
   */
  async getBlock(ref: BlockRef, hashLo: number, hashHi: number, dest: Uint8Array): Promise<void> {
    const { remote } = this.placement.readCandidates(ref.volumeId, ref.index);
    const tried: string[] = [];
    const late: number[] = [];
    for (const at of remote) {
      if (await this.tryPeer(at, ref, hashLo, hashHi, dest, tried, undefined)) return;
      if (tried[tried.length - 1]?.endsWith(LATE)) late.push(at);
    }
    for (const at of late)
      if (await this.tryPeer(at, ref, hashLo, hashHi, dest, tried, PATIENT_GET_TIMEOUT_MS)) return;
    throw new IoError(
      'EIO',
      `${formatRef(ref)}: no good copy on any replica (${tried.join('; ') || 'no candidates'})`,
    );
  }

  /** One get of `ref` from peer `at` into dest; false (and why, in `tried`) when it gave nothing good. */
  private async tryPeer(
    at: number,
    ref: BlockRef,
    hashLo: number,
    hashHi: number,
    dest: Uint8Array,
    tried: string[],
    timeoutMs: number | undefined,
  ): Promise<boolean> {
    const peer = this.placement.peers[at];
    try {
      const block = await this.clientFor(peer).getBlock(ref, timeoutMs ? { timeoutMs } : {});
      if (!block) {
        tried.push(`${peer.uuid}: not held`);
        return false;
      }
      if (
        block.data.length !== dest.length ||
        !wireHashMatches(this.hasher, block, hashLo, hashHi)
      ) {
        tried.push(`${peer.uuid}: checksum mismatch`);
        return false;
      }
      dest.set(block.data);
      this.stats.remoteReads++;
      return true;
    } catch (err) {
      tried.push(
        `${peer.uuid}: ${(err as Error).message}${err instanceof PeerTimeoutError ? LATE : ''}`,
      );
      return false;
    }
  }

  /**
   * Make every block the given peers stored so far durable on them. Resolves
   * with the peers that could not (dead or failing): their copies do not
   * count, and the caller checks every block still has one.
   */
  async syncPeers(uuids: Iterable<string>): Promise<Set<string>> {
    const peers = this.placement.peers;
    const failed = new Set<string>();
    await Promise.all(
      [...new Set(uuids)].map(async (uuid) => {
        const at = this.placement.peerIndex(uuid);
        try {
          if (at === undefined) throw new Error('no longer known');
          await this.clientFor(peers[at]).sync();
        } catch (err) {
          failed.add(uuid);
          this.log.warn(
            { peer: uuid, err: (err as Error).message },
            'peer could not make its copies durable; they are not counted',
          );
        }
      }),
    );
    return failed;
  }

  async close(): Promise<void> {
    await Promise.all([...this.clients.values()].map((c) => c.close()));
    this.clients.clear();
  }
}

/** A slot for this node's copy, or -1 when the local store is full. */
function allocateUnlessFull(store: LocalSlotStore): number {
  try {
    return store.allocate();
  } catch (err) {
    if (err instanceof StoreFullError) return -1;
    throw err;
  }
}
