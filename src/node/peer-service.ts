/**
 * The node's store as served to its cluster peers over TBP: a PeerServer
 * over a DiskPeerBackend, started by servePeers and stopped (drained) before
 * the store closes.
 */
import type { AddressInfo } from 'node:net';
import type { Logger } from '../common/log.js';
import { hasher } from '../dataplane/blocks/hash.js';
import type { LocalSlotStore } from '../dataplane/blocks/slot-store.js';
import type { IntentHolder } from '../dataplane/peer/backend.js';
import { PeerServer } from '../dataplane/peer/server.js';
import { loadPeerTls, type PeerTlsFiles } from '../dataplane/peer/peer-tls.js';
import { DiskPeerBackend } from '../dataplane/replication/disk-backend.js';
import type { NodeMetrics } from './metrics.js';

export interface PeerServiceOptions {
  /** Where to listen for TBP (the host and port of --peer-address). */
  host: string;
  port: number;
  /** The cluster's id (membership: its settings' creation time); peers of another are refused. */
  clusterId: string;
  /** This node's uuid, as registered and in the ring. */
  nodeId: string;
  log?: Logger;
  /** Mutual TLS with the cluster CA (--peer-tls-dir): peers without a certificate it signed are refused. */
  tls?: PeerTlsFiles;
}

/** The node's store as served to its peers. */
export interface PeerService {
  server: PeerServer;
  /** What the server serves from; replication uses it for this node's own copy. */
  backend: DiskPeerBackend;
  /** Where it listens. */
  address: AddressInfo;
}

/** At most one peer service at a time, for one store. */
export class PeerServing {
  private peers: PeerService | undefined;

  constructor(
    private readonly store: LocalSlotStore,
    private readonly log: Logger,
    /** This node's holder log, served to writers' INTENT_* requests (replicated FLUSH). */
    private readonly intents?: IntentHolder,
    /** Commit a volume written here, for a peer about to serve it read-only (COMMIT_VOLUME). */
    private readonly commitVolume?: (volumeId: number) => Promise<void>,
  ) {}

  /** The running peer service, if any. */
  get current(): PeerService | undefined {
    return this.peers;
  }

  /** Rejects with the listen error (EADDRINUSE, …), leaving nothing running. */
  async serve(options: PeerServiceOptions): Promise<PeerService> {
    if (this.peers) throw new Error(`already serving peers on port ${this.peers.address.port}`);
    const log = options.log ?? this.log.child({ component: 'peer' });
    const backend = new DiskPeerBackend(this.store, options.nodeId, log, await hasher());
    if (this.intents) backend.intents = this.intents;
    if (this.commitVolume) backend.commitVolume = this.commitVolume;
    const server = new PeerServer(backend, {
      clusterId: options.clusterId,
      nodeId: options.nodeId,
      log,
      tls: options.tls ? loadPeerTls(options.tls) : undefined,
    });
    let address: AddressInfo;
    try {
      address = await server.listen(options.host, options.port);
    } catch (err) {
      await server.close({ drainMs: 0 });
      await backend.close();
      throw err;
    }
    this.peers = { server, backend, address };
    return this.peers;
  }

  /**
   * The server drains (new requests get SHUTTING_DOWN) for up to drainMs,
   * then the backend waits for what still runs on the store.
   */
  async stop(drainMs: number): Promise<void> {
    const peers = this.peers;
    if (!peers) return;
    this.peers = undefined;
    await peers.server.close({ drainMs });
    await peers.backend.close();
  }

  /** Bytes/s of copies peers store here (0 while not serving). */
  receivedRate(): number {
    return this.peers?.backend.received.rate() ?? 0;
  }

  registerGauges(metrics: NodeMetrics): void {
    metrics.gauge(
      'torus_replication_received_bytes_per_second',
      'Bytes/s of copies peers stored on this node',
      () => this.receivedRate(),
    );
  }
}
