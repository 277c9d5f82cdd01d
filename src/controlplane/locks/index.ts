/**
 * Volume write locks with fencing epochs: one writer per volume, a dead
 * writer's lock lapses with its lease, and a writer that lost its lock has
 * its commits refused by compare-and-swap. See README.md for the contract.
 */
export { acquireVolumeLock, VolumeLock, type AcquireVolumeLockOptions } from './volume-lock.js';
export {
  checkFenceLocally,
  fenceCompares,
  fenceHolds,
  type VolumeFence,
  type VolumeLockState,
} from './fence.js';
export { describeHolder, localHolder, type LockHolder } from './holder.js';
export {
  assertVolumeUnlocked,
  listVolumeLocks,
  readVolumeLock,
  volumeEpochKey,
  volumeLockKey,
  type LockRecord,
  type VolumeLockInfo,
} from './lock-record.js';
export { FencedError, VolumeLockedError, VolumeLockLostError } from './errors.js';
