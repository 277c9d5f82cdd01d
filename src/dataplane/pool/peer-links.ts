/**
 * A worker's own connections to peers, one PeerClient per peer address,
 * opened on first use and kept: replication runs in the pool workers (the
 * design card), so each worker talks to peers directly instead of funnelling
 * block bytes back through the main thread.
 */
import { logger } from '../../common/log.js';
import { PeerClient } from '../peer/client.js';
import type { PeerIdentityForTasks, PeerTarget } from '../replication/placement.js';

const clients = new Map<string, PeerClient>();
const log = logger('pool-peer');

/**
 * Deadlines: a get is given up after GET_TIMEOUT_MS (reads do not wait that
 * long for a slow replica: they hedge to the next one after a few times its
 * usual latency, hedged-read.ts; the deadline bounds a block every replica
 * of which is silent); a put batch of up to 1 MiB may take PUT_TIMEOUT_MS.
 */
export const GET_TIMEOUT_MS = 600;
export const PUT_TIMEOUT_MS = 5000;

export function peerClient(identity: PeerIdentityForTasks, peer: PeerTarget): PeerClient {
  const key = `${peer.uuid}@${peer.host}:${peer.port}`;
  let client = clients.get(key);
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
    clients.set(key, client);
  }
  return client;
}
