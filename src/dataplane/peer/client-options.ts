/**
 * What a PeerClient can be told (PeerClientOptions, RequestOptions), each
 * option's default, and what follows from them.
 *
 * Contract: `clientSettings` fills in every default (the table in README.md,
 * "Deadlines and dead peers") and derives `deadlineTickMs`, how often the
 * client checks deadlines while requests are outstanding: 5% of the shortest
 * default deadline, kept within 5..50 ms. A request's own `timeoutMs`
 * replaces the default for its kind; the tick does not follow it.
 */
import type { Logger } from '../../common/log.js';
import type { PeerTlsFiles } from './peer-tls.js';

/**
 * The deadline of a last, patient get: readers give a replica that only
 * missed its usual get deadline (busy, not gone) this long before a block
 * fails (pool/hedged-read.ts, replication/cluster-blocks.ts).
 */
export const PATIENT_GET_TIMEOUT_MS = 5000;

export interface PeerClientOptions {
  host: string;
  port: number;
  /** Our cluster; the peer must say the same in its HELLO. */
  clusterId: string;
  /** Our node id, sent in HELLO. */
  nodeId: string;
  /** The peer's node id, if known (from the ring): a peer that says otherwise is refused (PeerIdentityError). */
  expectedNodeId?: string;
  /** TCP connect plus HELLO must finish within this. Default 1000 ms. */
  connectTimeoutMs?: number;
  /** Deadline of getBlock. Default 1000 ms. */
  getTimeoutMs?: number;
  /** Deadline of putBlocks (a batch may be 16 MiB). Default 5000 ms. */
  putTimeoutMs?: number;
  /** Deadline of hasBlocks, deleteBlocks, ping. Default 2000 ms. */
  timeoutMs?: number;
  /** Deadline of sync (an fdatasync of a busy disk can take seconds). Default 10 000 ms. */
  syncTimeoutMs?: number;
  /** Silence after a timed-out request that declares the connection dead. Default 2000 ms. */
  deadAfterMs?: number;
  /** Backoff after a failed connection attempt: first and longest wait. Default 50 and 2000 ms. */
  reconnectBackoffMs?: { min: number; max: number };
  log?: Logger;
  /** Mutual TLS with the cluster CA (peer-tls.ts); plaintext when absent. */
  tls?: PeerTlsFiles;
}

export interface RequestOptions {
  /** This request's deadline, replacing the default for its kind. */
  timeoutMs?: number;
}

/** PeerClientOptions' durations with every default filled in. */
export interface ClientSettings {
  readonly connectTimeoutMs: number;
  readonly getTimeoutMs: number;
  readonly putTimeoutMs: number;
  readonly timeoutMs: number;
  readonly syncTimeoutMs: number;
  readonly deadAfterMs: number;
  readonly reconnectBackoffMs: { readonly min: number; readonly max: number };
  /** How often deadlines are checked while requests are outstanding. */
  readonly deadlineTickMs: number;
}

export function clientSettings(options: PeerClientOptions): ClientSettings {
  const connectTimeoutMs = options.connectTimeoutMs ?? 1000;
  const getTimeoutMs = options.getTimeoutMs ?? 1000;
  const putTimeoutMs = options.putTimeoutMs ?? 5000;
  const timeoutMs = options.timeoutMs ?? 2000;
  const syncTimeoutMs = options.syncTimeoutMs ?? 10_000;
  const shortest = Math.min(getTimeoutMs, putTimeoutMs, timeoutMs, syncTimeoutMs, connectTimeoutMs);
  return {
    connectTimeoutMs,
    getTimeoutMs,
    putTimeoutMs,
    timeoutMs,
    syncTimeoutMs,
    deadAfterMs: options.deadAfterMs ?? 2000,
    reconnectBackoffMs: options.reconnectBackoffMs ?? { min: 50, max: 2000 },
    deadlineTickMs: Math.max(5, Math.min(50, shortest / 20)),
  };
}
