/**
 * Errors of the metadata layer. Both implementations throw only these (or the
 * common ConflictError / NotFoundError), converted once at their boundary, so
 * callers can drive retries from `retryable` without knowing which store
 * they talk to.
 */
import { markExpected, NotFoundError } from '../../common/errors.js';

/** True when trying the same call again later may succeed. */
export function isRetryable(err: unknown): boolean {
  return (err as { retryable?: unknown } | undefined)?.retryable === true;
}

/**
 * The store could not be reached in time: etcd down, partitioned, frozen, or
 * a call past its deadline. Retryable. For a write the outcome is unknown —
 * it may have been applied — so a retry should be a compare-and-swap that
 * tolerates its own earlier success.
 */
export class MetadataUnavailableError extends Error {
  override name = 'MetadataUnavailableError';
  readonly retryable = true;
}

/** The store was closed; nothing more can be done with this handle. */
export class MetadataClosedError extends Error {
  override name = 'MetadataClosedError';
  readonly retryable = false;
}

/** A watch asked for history older than the store still keeps. */
export class MetadataCompactedError extends Error {
  override name = 'MetadataCompactedError';
  readonly retryable = false;
  constructor(
    readonly requestedRevision: number,
    readonly compactRevision: number,
    message?: string,
  ) {
    super(
      message ??
        `revision ${requestedRevision} is compacted (history starts after ${compactRevision}); reload and watch from the current revision`,
    );
  }
}

/**
 * The embedded store's files are damaged beyond a torn tail (a bad snapshot,
 * a gap in the log): opening refuses rather than serve a wrong state.
 */
export class MetadataCorruptError extends Error {
  override name = 'MetadataCorruptError';
  readonly retryable = false;
}

/**
 * The embedded store failed to write or fsync its log. It stops (every later
 * call fails) because after a failed fsync the kernel may have dropped the
 * dirty pages: retrying the fsync would report success for lost data.
 */
export class MetadataStorageError extends Error {
  override name = 'MetadataStorageError';
  readonly retryable = false;
}

/** A put or keepalive named a lease that does not exist (expired, revoked, unknown). */
export class LeaseNotFoundError extends NotFoundError {
  override name = 'LeaseNotFoundError';
  constructor(
    readonly leaseId: string,
    message?: string,
  ) {
    super(message ?? `lease ${leaseId} does not exist (expired or revoked)`);
  }
}

/** The reason handed to a lease's 'lost' listeners. */
export class LeaseLostError extends Error {
  override name = 'LeaseLostError';
  constructor(
    readonly leaseId: string,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}

// An etcd outage, a closed store and a lapsed lease are operating conditions, logged without a stack.
markExpected(MetadataUnavailableError, MetadataClosedError, LeaseLostError);
