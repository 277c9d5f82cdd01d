/**
 * What a live node says about itself, under `nodes/<uuid>` in the metadata
 * store. The key is attached to the node's lease, so it exists exactly while
 * the node is alive: its presence is the liveness signal, its value the
 * node's latest report. One module owns the format (encode, decode, checks).
 */
import type { KeyValue } from '../metadata/store.js';

/** Registrations live under this prefix; the rest of the key is the node's uuid. */
export const NODES_PREFIX = 'nodes/';

export const UUID_PATTERN = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

export interface PeerInfo {
  /** The node's identity: created once per data directory (node-identity.ts). */
  uuid: string;
  /** Where peers reach this node (--peer-address), e.g. http://10.0.0.5:40000. */
  address: string;
  hostname: string;
  pid: number;
  /** Random per process start: tells this process's registration from a predecessor's. */
  instance: string;
  /** Local block store capacity and bytes in use. */
  capacity: number;
  used: number;
  /** ms since the epoch, by the node's clock: when it was started and when it last reported. */
  startedAt: number;
  lastSeen: number;
  /** The node's rebalancer found data to move in its current or last run (list-peers: "Balanced"). */
  rebalancing: boolean;
  /** Bytes/s this node's rebalancer copies to peers, over the last few seconds. */
  rebalanceRate: number;
  /** Bytes/s of copies this node stores for peers (replicated writes, moved blocks). */
  replicationRate: number;
  /** Bytes this node's last finished rebalance run left to move; absent from nodes that do not say. */
  rebalancePending?: number;
  /** torusd's version (package.json). */
  version: string;
  /** What its peer protocol understands beyond the first nodes' (model/node-features.ts); absent: nothing. */
  features?: string[];
}

export class PeerInfoFormatError extends Error {
  override name = 'PeerInfoFormatError';
}

export function nodeKey(uuid: string): string {
  return NODES_PREFIX + uuid;
}

export function encodePeerInfo(info: PeerInfo): Buffer {
  checkPeerInfo(info);
  return Buffer.from(JSON.stringify(info));
}

/** Decode and check a registration; the key must name the same uuid as the value. */
export function decodePeerInfo(kv: Pick<KeyValue, 'key' | 'value'>): PeerInfo {
  let info: PeerInfo;
  try {
    info = JSON.parse(kv.value.toString('utf8')) as PeerInfo;
  } catch {
    throw new PeerInfoFormatError(`registration ${kv.key} is not JSON`);
  }
  checkPeerInfo(info, kv.key);
  if (kv.key !== nodeKey(info.uuid))
    throw new PeerInfoFormatError(`registration ${kv.key} names uuid ${info.uuid}`);
  return info;
}

function checkPeerInfo(info: PeerInfo, where = 'registration'): void {
  const bad = (field: string) => new PeerInfoFormatError(`${where}: bad or missing ${field}`);
  if (typeof info !== 'object' || info === null)
    throw new PeerInfoFormatError(`${where} is not an object`);
  if (typeof info.uuid !== 'string' || !UUID_PATTERN.test(info.uuid)) throw bad('uuid');
  for (const field of ['address', 'hostname', 'instance', 'version'] as const) {
    if (typeof info[field] !== 'string') throw bad(field);
  }
  for (const field of [
    'pid',
    'capacity',
    'used',
    'startedAt',
    'lastSeen',
    'rebalanceRate',
    'replicationRate',
  ] as const) {
    if (!Number.isSafeInteger(info[field]) || info[field] < 0) throw bad(field);
  }
  if (typeof info.rebalancing !== 'boolean') throw bad('rebalancing');
  if (
    info.features !== undefined &&
    (!Array.isArray(info.features) || info.features.some((f) => typeof f !== 'string'))
  )
    throw bad('features');
  if (
    info.rebalancePending !== undefined &&
    (!Number.isSafeInteger(info.rebalancePending) || info.rebalancePending < 0)
  )
    throw bad('rebalancePending');
}
