/**
 * Torus's typed errors → CSI status codes, once, at the edge of every
 * controller handler. A handler that knows better (a NotFoundError a delete
 * must turn into OK, a ConflictError that means "exists") catches it first.
 */
import { ConflictError, IoError, NotFoundError, UsageError } from '../common/errors.js';
import { CsiError, GrpcStatus } from './csi-error.js';
import type { CsiHandler } from './handlers.js';

export function csiErrorOf(err: unknown): unknown {
  if (err instanceof CsiError) return err;
  if (err instanceof NotFoundError) return new CsiError(GrpcStatus.NOT_FOUND, err.message);
  if (err instanceof UsageError) return new CsiError(GrpcStatus.INVALID_ARGUMENT, err.message);
  // In use (a node holds the write lock), or changed under us: the CO retries with back-off.
  if (err instanceof ConflictError)
    return new CsiError(GrpcStatus.FAILED_PRECONDITION, err.message);
  if (err instanceof IoError && err.errno === 'ENOSPC')
    return new CsiError(GrpcStatus.RESOURCE_EXHAUSTED, err.message);
  // The cluster's etcd cannot be reached: transient, the CO retries.
  if (err instanceof Error && err.name === 'MetadataUnavailableError')
    return new CsiError(GrpcStatus.UNAVAILABLE, err.message);
  return err;
}

/** `handler` with Torus's errors mapped (csiErrorOf). */
export function mappingTorusErrors(handler: CsiHandler): CsiHandler {
  return async (request) => {
    try {
      return await handler(request);
    } catch (err) {
      throw csiErrorOf(err);
    }
  };
}
