/**
 * The one place etcd3/gRPC errors become metadata errors (see ../errors.ts).
 */
import {
  ClientClosedError,
  EtcdLeaseInvalidError,
  GRPCDeadlineExceededError,
  GRPCUnavailableError,
  isRecoverableError,
} from 'etcd3';
import {
  LeaseNotFoundError,
  MetadataClosedError,
  MetadataCompactedError,
  MetadataUnavailableError,
} from '../errors.js';

/** Thrown by our own timer when a call outlives its deadline without gRPC noticing. */
export class CallTimedOutError extends Error {
  override name = 'CallTimedOutError';
}

export function toMetadataError(err: unknown, what: string, leaseId?: string): Error {
  if (!(err instanceof Error)) return new Error(`etcd ${what} failed: ${String(err)}`);
  if (
    err instanceof MetadataUnavailableError ||
    err instanceof MetadataClosedError ||
    err instanceof MetadataCompactedError ||
    err instanceof LeaseNotFoundError
  ) {
    return err;
  }
  if (err instanceof EtcdLeaseInvalidError)
    return new LeaseNotFoundError(
      leaseId ?? 'unknown',
      `etcd ${what}: lease ${leaseId ?? ''} not found (expired or revoked)`,
    );
  if (err instanceof ClientClosedError)
    return new MetadataClosedError(`etcd ${what}: the client is closed`, { cause: err });
  if (
    err instanceof CallTimedOutError ||
    err instanceof GRPCDeadlineExceededError ||
    err instanceof GRPCUnavailableError ||
    isRecoverableError(err) ||
    /ECONNREFUSED|ECONNRESET|ETIMEDOUT|EHOSTUNREACH/.test(err.message)
  ) {
    return new MetadataUnavailableError(`etcd ${what} failed: ${err.message}`, { cause: err });
  }
  return new Error(`etcd ${what} failed: ${err.message}`, { cause: err });
}
