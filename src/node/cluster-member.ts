/**
 * torusd's side of cluster membership, when it runs against etcd (--etcd):
 *
 *   prepareClusterDataDir  before the node opens its store: the cluster must
 *                          be initialised; the data directory is bound to it
 *                          (and refused if it belongs elsewhere); the node's
 *                          uuid is read or created.
 *   ClusterMember.join     once the node serves: register under a lease
 *                          (heartbeat, usage), watch peers and ring, and with
 *                          --auto-join add this node to the ring if absent.
 *
 * Nothing here moves data: a node's blocks stay in its local store until
 * replication between nodes exists. The peer table is what that work reads;
 * torusd serves the store to peers (StorageNode.servePeers) on the
 * registered address.
 */
import { access } from 'node:fs/promises';
import { join } from 'node:path';
import { ConflictError, NotFoundError } from '../common/errors.js';
import type { Logger } from '../common/log.js';
import type { MetadataStore } from '../controlplane/metadata/store.js';
import {
  bindToCluster,
  loadOrCreateNodeId,
  readClusterBinding,
} from '../controlplane/membership/node-identity.js';
import type { PeerInfo } from '../controlplane/membership/peer-info.js';
import { PeerTable, type MemberStatus } from '../controlplane/membership/peer-table.js';
import {
  NodeRegistration,
  type NodeRates,
  type NodeUsage,
} from '../controlplane/membership/registration.js';
import { addMembers, casRing, readRing } from '../controlplane/membership/ring-store.js';
import type { RingDescription } from '../model/ring/ring.js';
import { VolumeCatalog } from '../controlplane/volumes/catalog.js';

export interface PreparedDataDir {
  uuid: string;
  /** The cluster's id (its settings' creation time), as bound to the directory; peers say it in HELLO. */
  clusterId: string;
  /** The directory got its uuid just now: a new member. */
  newNode: boolean;
}

/**
 * Check the cluster is initialised and that `dataDir` may join it; bind it and
 * return the node's uuid. `etcd` is the endpoints as given, for messages.
 */
export async function prepareClusterDataDir(
  meta: MetadataStore,
  dataDir: string,
  etcd: string,
): Promise<PreparedDataDir> {
  const settings = await new VolumeCatalog(meta).settings();
  const ring = await readRing(meta);
  if (!settings || !ring)
    throw new NotFoundError(
      `the cluster in etcd ${etcd} is not initialised: run torusctl -C ${etcd} init first`,
    );
  if (!(await readClusterBinding(dataDir)) && (await exists(join(dataDir, 'blocks')))) {
    throw new ConflictError(
      `data directory ${dataDir} holds a single-node store: its volumes are not in the cluster's catalog, so joining would free their blocks. Use a new --data-dir to join the cluster`,
    );
  }
  await bindToCluster(dataDir, { clusterId: settings.createdAt, etcd });
  const { uuid, created } = await loadOrCreateNodeId(dataDir);
  return { uuid, clusterId: settings.createdAt, newNode: created };
}

async function exists(path: string): Promise<boolean> {
  return access(path).then(
    () => true,
    () => false,
  );
}

export interface ClusterMemberOptions {
  meta: MetadataStore;
  uuid: string;
  /** --peer-address */
  address: string;
  usage: () => NodeUsage;
  /** Rebalance and replication rates, reported with usage (list-peers REB/REP DATA). */
  rates?: () => NodeRates;
  version: string;
  /** Add this node to the ring (weight = capacity) if it is not a member. */
  autoJoin: boolean;
  log: Logger;
  ttlSeconds?: number;
}

export class ClusterMember {
  /** The ring this process itself wrote (auto-join), until the watch delivers it or a newer one. */
  private ownWrite: RingDescription | undefined;

  private constructor(
    private readonly meta: MetadataStore,
    readonly uuid: string,
    readonly registration: NodeRegistration,
    /** Every live node and the ring, kept current: what placement and replication read. */
    readonly peers: PeerTable,
    private readonly log: Logger,
  ) {}

  static async join(options: ClusterMemberOptions): Promise<ClusterMember> {
    const { meta, uuid, log } = options;
    const registration = await NodeRegistration.start({
      meta,
      uuid,
      address: options.address,
      usage: options.usage,
      rates: options.rates,
      version: options.version,
      ttlSeconds: options.ttlSeconds,
      log,
    });
    let peers: PeerTable | undefined;
    try {
      peers = await PeerTable.open(meta, { log });
      const member = new ClusterMember(meta, uuid, registration, peers, log);
      member.watch();
      if (options.autoJoin) await member.autoJoin(options.usage().capacity);
      return member;
    } catch (err) {
      await peers?.close();
      await registration.stop();
      throw err;
    }
  }

  private watch(): void {
    this.peers.on(
      'ring',
      (ring: RingDescription | undefined, previous: RingDescription | undefined) => {
        const wasMember = previous?.members.some((m) => m.uuid === this.uuid) ?? false;
        const isMember = ring?.members.some((m) => m.uuid === this.uuid) ?? false;
        this.log.info(
          {
            version: ring?.version,
            replication: ring?.replication,
            members: ring?.members.length,
            member: isMember,
          },
          wasMember === isMember
            ? 'ring changed'
            : isMember
              ? 'ring changed: this node is now a member'
              : 'ring changed: this node is no longer a member',
        );
      },
    );
    this.peers.on('peer-up', (peer: PeerInfo) => {
      if (peer.uuid !== this.uuid)
        this.log.info({ peer: peer.uuid, address: peer.address }, 'peer up');
    });
    this.peers.on('peer-down', (uuid: string, last: PeerInfo) => {
      if (uuid !== this.uuid) this.log.info({ peer: uuid, address: last.address }, 'peer down');
    });
  }

  private async autoJoin(capacity: number): Promise<void> {
    const change = await casRing(
      this.meta,
      undefined,
      addMembers([{ uuid: this.uuid, weight: Math.max(1, capacity) }]),
    );
    this.ownWrite = change.ring.description;
    if (change.changed)
      this.log.info(
        { version: change.ring.description.version },
        'auto-join: added this node to the ring',
      );
    else
      this.log.info(
        { version: change.ring.description.version },
        'auto-join: already a ring member',
      );
  }

  /** The newest ring known here: the watched one, or this node's own write if the watch has not caught up. */
  ring(): RingDescription | undefined {
    const watched = this.peers.ring();
    return this.ownWrite && (!watched || watched.version < this.ownWrite.version)
      ? this.ownWrite
      : watched;
  }

  /** OK (in the ring), Avail (not in the ring). A node that reports is never DOWN to itself. */
  get memberStatus(): MemberStatus {
    return this.ring()?.members.some((m) => m.uuid === this.uuid) ? 'OK' : 'Avail';
  }

  status(): Record<string, unknown> {
    const ring = this.ring();
    return {
      uuid: this.uuid,
      address: this.registration.info?.address,
      registration: this.registration.state,
      member: this.memberStatus,
      ring: ring
        ? {
            version: ring.version,
            type: ring.type,
            replication: ring.replication,
            members: ring.members.length,
          }
        : undefined,
      peers: this.peers.peers().length,
    };
  }

  /** Leave: revoke the registration (the node disappears from the cluster at once), stop watching. */
  async stop(): Promise<void> {
    await this.registration.stop();
    await this.peers.close();
  }
}
