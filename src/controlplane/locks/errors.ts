/**
 * Errors of volume write locks. Both refusals are ConflictErrors (the state
 * of the cluster forbids the operation now), so callers that only know the
 * common errors still treat them right; the subclasses carry who holds the
 * lock, for messages and for `volume list`.
 */
import { ConflictError, markExpected } from '../../common/errors.js';
import { describeHolder } from './holder.js';
import type { VolumeLockInfo } from './lock-record.js';

function describeLock(lock: VolumeLockInfo): string {
  return `${describeHolder(lock.holder)} since ${lock.acquiredAt} (epoch ${lock.epoch})`;
}

/**
 * Someone else holds the volume's write lock: a second writer, or a delete,
 * is refused at once. Not retryable as such: the holder has to stop (or die,
 * and its lease lapse) first.
 */
export class VolumeLockedError extends ConflictError {
  override name = 'VolumeLockedError';
  readonly volume: string;
  constructor(
    readonly lock: VolumeLockInfo,
    consequence?: string,
  ) {
    super(
      `volume "${lock.volume}" is locked for writing by ${describeLock(lock)}${consequence ? `; ${consequence}` : ''}`,
    );
    this.volume = lock.volume;
  }
}

/**
 * A writer's lock is no longer its own (its lease lapsed, or the lock was
 * deleted or taken over), so its write was refused and nothing of it was
 * applied. The writer must stop writing: reopening means acquiring the lock
 * again (a new epoch) and reloading the volume record.
 */
export class FencedError extends ConflictError {
  override name = 'FencedError';
  /** Who holds the lock now, when the store was asked (undefined: nobody, or not asked). */
  readonly current: VolumeLockInfo | undefined;
  constructor(
    readonly volume: string,
    /** The epoch the refused writer held. */
    readonly epoch: number,
    refused: string,
    why: { current: VolumeLockInfo | undefined } | { state: string },
  ) {
    const reason =
      'state' in why
        ? `the lock is ${why.state}`
        : why.current
          ? `now held by ${describeLock(why.current)}`
          : 'nobody holds it now';
    super(
      `volume "${volume}": write lock epoch ${epoch} is no longer held (${reason}); ${refused}`,
    );
    this.current = 'current' in why ? why.current : undefined;
  }
}

/** The reason handed to a VolumeLock's 'lost' listeners. */
export class VolumeLockLostError extends Error {
  override name = 'VolumeLockLostError';
  constructor(
    readonly volume: string,
    readonly epoch: number,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(`write lock on volume "${volume}" (epoch ${epoch}) lost: ${message}`, options);
  }
}

// Losing the lock (a partition, an etcd outage) is an operating condition, logged without a stack.
markExpected(VolumeLockLostError);
