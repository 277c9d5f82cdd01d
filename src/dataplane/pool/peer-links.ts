/**
 * A thread's own connections to peers, one PeerClient per peer address,
 * opened on first use and kept: replication runs in the pool workers (the
 * design card), so each worker talks to peers directly instead of funnelling
 * block bytes back through the main thread. The main thread has links of
 * its own for small reads from peers (inline-remote-misses.ts).
 */
import { logger } from '../../common/log.js';
import { PeerClient } from '../peer/client.js';
import type { PeerIdentityForTasks, PeerTarget } from '../replication/placement.js';

const log = logger('pool-peer');

/**
 * Deadlines: a get is given up after GET_TIMEOUT_MS (reads do not wait that
 * long for a slow replica: they hedge to the next one after a few times its
 * usual latency, hedged-read.ts; the deadline bounds a block every replica
 * of which is silent); a put batch of up to 1 MiB may take PUT_TIMEOUT_MS.
 */
export const GET_TIMEOUT_MS = 600;
export const PUT_TIMEOUT_MS = 5000;

export class PeerLinks {
  private readonly clients = new Map<string, PeerClient>();

  /** The connection to `peer`, opened on first use and kept. */
  client(identity: PeerIdentityForTasks, peer: PeerTarget): PeerClient {
    const key = `${peer.uuid}@${peer.host}:${peer.port}`;
    let client = this.clients.get(key);
    if (!client) {
      client = new PeerClient({
        host: peer.host,
        port: peer.port,
        clusterId: identity.clusterId,
        nodeId: identity.nodeId,
        expectedNodeId: peer.uuid,
        getTimeoutMs: GET_TIMEOUT_MS,
        putTimeoutMs: PUT_TIMEOUT_MS,
        connectTimeoutMs: 500,
        deadAfterMs: 1000,
        log,
        tls: identity.tls,
      });
      this.clients.set(key, client);
    }
    return client;
  }

  /** Close every connection (the main thread's, at the pool's close; a worker's end with it). */
  async close(): Promise<void> {
    const open = [...this.clients.values()];
    this.clients.clear();
    await Promise.all(open.map((c) => c.close()));
  }
}

/** A worker's links: one set per thread, living as long as it. */
export const workerLinks = new PeerLinks();

export function peerClient(identity: PeerIdentityForTasks, peer: PeerTarget): PeerClient {
  return workerLinks.client(identity, peer);
}
