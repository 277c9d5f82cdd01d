/**
 * ClusterPlacement: where the blocks of this cluster live, as the data path
 * needs it — per block, is it stored here, and which peers hold (or should
 * receive) it.
 *
 * Policy (documented in README.md):
 *   - The ring names, for each block, an ordered list of nodes. A write goes
 *     to the first R of them that are alive (R = the ring's replication);
 *     a DOWN node in that list is skipped and the next one on the ring takes
 *     its copy, so a write never waits on a dead node and a block never has
 *     fewer copies than there are live nodes to take them.
 *   - A read tries this node first if it holds the block, then the live
 *     candidates in ring order, then DOWN ones (a node may be back before its
 *     lease says so). The leading live ones that a write would choose now
 *     (`likely`) are where a copy should be; a reader spreads its first asks
 *     over those only, since a spare holds a copy only after a target was
 *     down or full (asking one first costs a NOT_FOUND round trip).
 *   - Candidates are the first R + SPARE_CANDIDATES nodes of the ring: enough
 *     to find a block written while up to SPARE_CANDIDATES preferred nodes
 *     were down or full.
 *   - A write also names its spares: the live nodes after the R chosen,
 *     within those candidates. A target that refuses a copy for lack of
 *     space (NO_SPACE) has it placed on the next spare instead (the pool
 *     worker does that), where reads will look for it.
 *
 * Peers are numbered in `peers` (a table rebuilt when the ring or the live
 * set changes); tasks for the pool carry that table and per-block indexes
 * into it, so a worker can open its own connections without knowing the ring.
 */
import { FEATURE_PATCHES } from '../../model/node-features.js';
import { MAX_REPLICATION } from '../../model/replication.js';
import { buildRing, type IndexedRing, type RingDescription } from '../../model/ring/index.js';
import type { PeerTlsFiles } from '../peer/peer-tls.js';

/** Extra ring positions looked at beyond R, for writes while nodes were down. */
export const SPARE_CANDIDATES = 2;
/** Most remote targets one block can have in a task (R ≤ this). */
export const MAX_TARGETS = MAX_REPLICATION;

export interface PeerTarget {
  uuid: string;
  host: string;
  port: number;
}

/** The cluster identity a worker's peer connections present. */
export interface PeerIdentityForTasks {
  clusterId: string;
  nodeId: string;
  /** Mutual TLS on the peer port (peer/peer-tls.ts): paths, so tasks carry them cheaply. */
  tls?: PeerTlsFiles;
}

export interface BlockTargets {
  /** This node stores (or holds) the block. */
  local: boolean;
  /** Remote peers, as indexes into `peers`, most preferred first. */
  remote: number[];
}

export interface ReadTargets extends BlockTargets {
  /** How many of `remote`'s first entries are among the R live nodes a write would choose now. */
  likely: number;
}

export interface WriteTargets extends BlockTargets {
  /**
   * Live remote candidates after the chosen ones, in ring order: where a copy
   * goes when a target (or this node) is full.
   */
  spare: number[];
}

export class ClusterPlacement {
  private ring: IndexedRing | undefined;
  private description: RingDescription | undefined;
  /** Live nodes by uuid → peer address. */
  private live = new Map<string, PeerTarget>();
  private known = new Map<string, PeerTarget>();
  private table: PeerTarget[] = [];
  private tableIndex = new Map<string, number>();
  private readonly scratch = new Uint32Array(MAX_TARGETS + SPARE_CANDIDATES);
  private readonly volumeReplication = new Map<number, number>();
  /** Bumped on every change: tasks built under an old version still work (the table travels with them). */
  version = 0;
  /** Every live node takes patches (model/node-features.ts FEATURE_PATCHES). */
  livePeersTakePatches = false;

  constructor(
    readonly localUuid: string,
    readonly identity: PeerIdentityForTasks,
    /**
     * False for a store-less client (torusblk nbdserve): its scratch store is
     * not storage, so no block is ever placed on it, even when no ring node
     * is live (the write then fails instead).
     */
    readonly holdsCopies = true,
  ) {}

  /** The ring or the set of live nodes changed. `addresses`: every node's peer address, live or not. */
  update(
    description: RingDescription | undefined,
    live: Iterable<{ uuid: string; address: string; features?: readonly string[] }>,
    addresses: Iterable<{ uuid: string; address: string }> = [],
  ): void {
    if (description && description !== this.description) {
      this.description = description;
      this.ring = buildRing(description);
    }
    this.live = new Map();
    let takePatches = true;
    for (const node of live) {
      this.live.set(node.uuid, { uuid: node.uuid, ...parsePeerAddress(node.address) });
      if (node.uuid !== this.localUuid && !node.features?.includes(FEATURE_PATCHES))
        takePatches = false;
    }
    this.livePeersTakePatches = takePatches;
    for (const node of addresses)
      this.known.set(node.uuid, { uuid: node.uuid, ...parsePeerAddress(node.address) });
    for (const [uuid, target] of this.live) this.known.set(uuid, target);
    this.table = [...this.known.values()].filter((t) => t.uuid !== this.localUuid);
    this.tableIndex = new Map(this.table.map((t, i) => [t.uuid, i]));
    this.version++;
  }

  /** Peers that tasks index into; a fresh array after each update (old tasks keep theirs). */
  get peers(): readonly PeerTarget[] {
    return this.table;
  }

  /** The ring's replication: every volume's unless it has its own. */
  get replication(): number {
    return Math.min(this.description?.replication ?? 1, MAX_TARGETS);
  }

  /** A volume's own replication factor (its record's), or undefined for the ring's. */
  setVolumeReplication(volumeId: number, replication: number | undefined): void {
    if (replication === undefined) this.volumeReplication.delete(volumeId);
    else this.volumeReplication.set(volumeId, replication);
  }

  /** Copies each block of this volume should have. */
  replicationOf(volumeId: number): number {
    const own = this.volumeReplication.get(volumeId);
    return own === undefined ? this.replication : Math.min(own, MAX_TARGETS);
  }

  peerIndex(uuid: string): number | undefined {
    return this.tableIndex.get(uuid);
  }

  isLive(uuid: string): boolean {
    return uuid === this.localUuid || this.live.has(uuid);
  }

  /** Where a write of block (volumeId, index) goes: the first R live nodes of its ring candidates; then its spares. */
  writeTargets(volumeId: number, index: number): WriteTargets {
    const ring = this.ring;
    if (!ring || ring.members.length === 0) return { local: true, remote: [], spare: [] };
    const r = this.replicationOf(volumeId);
    const n = ring.placeInto(
      volumeId,
      index,
      Math.min(r + SPARE_CANDIDATES, this.scratch.length),
      this.scratch,
    );
    let local = false;
    const remote: number[] = [];
    const spare: number[] = [];
    let chosen = 0;
    for (let i = 0; i < n; i++) {
      const uuid = ring.members[this.scratch[i]];
      if (!this.isLive(uuid)) continue;
      if (chosen >= r) {
        const at = uuid === this.localUuid ? undefined : this.tableIndex.get(uuid);
        if (at !== undefined) spare.push(at);
        continue;
      }
      chosen++;
      if (uuid === this.localUuid) local = true;
      else {
        const at = this.tableIndex.get(uuid);
        if (at !== undefined) remote.push(at);
        else chosen--; // a live member whose address we do not know yet cannot take a copy
      }
    }
    // No live member at all (a node outside the ring, whose ring is all down):
    // keep the block here rather than nowhere.
    if (chosen === 0 && this.holdsCopies) local = true;
    return { local, remote, spare };
  }

  /** Where to look for block (volumeId, index): live candidates first, then the rest, in ring order. */
  readCandidates(volumeId: number, index: number): ReadTargets {
    const ring = this.ring;
    if (!ring || ring.members.length === 0) return { local: true, remote: [], likely: 0 };
    const r = this.replicationOf(volumeId);
    const n = ring.placeInto(
      volumeId,
      index,
      Math.min(r + SPARE_CANDIDATES, this.scratch.length),
      this.scratch,
    );
    let local = false;
    let likely = 0;
    // Live members counted as targets() counts them: the first R make a write's copies.
    let chosen = 0;
    const alive: number[] = [];
    const down: number[] = [];
    for (let i = 0; i < n; i++) {
      const uuid = ring.members[this.scratch[i]];
      if (uuid === this.localUuid) {
        local = true;
        chosen++;
        continue;
      }
      const at = this.tableIndex.get(uuid);
      if (at === undefined) continue;
      if (this.live.has(uuid)) {
        alive.push(at);
        if (chosen++ < r) likely++;
      } else down.push(at);
    }
    return { local, remote: alive.concat(down), likely };
  }
}

/** `http://127.0.0.1:40000`, `127.0.0.1:40000` or `[::1]:40000` → host and port. */
export function parsePeerAddress(address: string): { host: string; port: number } {
  const text = address.includes('://') ? new URL(address).host : address;
  const match = /^(?:\[([^\]]+)\]|([^:]+)):(\d+)$/.exec(text);
  if (!match)
    throw new RangeError(`peer address "${address}" is not host:port or a URL with a port`);
  const port = Number(match[3]);
  if (!Number.isInteger(port) || port < 1 || port > 65535)
    throw new RangeError(`peer address "${address}" has no valid port`);
  return { host: match[1] ?? match[2], port };
}
