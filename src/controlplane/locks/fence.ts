/**
 * Fencing: a write made under a volume lock carries the lock's identity, and
 * the write's own txn compares it, so the write lands only while that exact
 * lock still exists. A writer whose lock lapsed — even one that does not know
 * it yet (partitioned, paused, its 'lost' event not yet handled) — is refused
 * by the store, atomically with the write: never half-applied.
 *
 * Why the lock key and not only the epoch counter: the key exists exactly as
 * long as the lock is held (it goes with the lease), so comparing it also
 * refuses a writer whose lock lapsed while nobody has taken a new one yet.
 */
import { assert } from '../../common/assert.js';
import type { Compare, KeyValue } from '../metadata/store.js';
import { FencedError } from './errors.js';
import { volumeLockKey } from './lock-record.js';

/** What a VolumeLock is in its life: held, then lost (it lapsed or was taken) or released. */
export type VolumeLockState = 'held' | 'lost' | 'released';

/**
 * The identity of one life of a volume lock. A VolumeLock is one (and its
 * `fence` is a plain-data copy for handing to another component).
 */
export interface VolumeFence {
  readonly volume: string;
  readonly epoch: number;
  /** Revision of the txn that took the lock: the lock key's createRevision. */
  readonly revision: number;
  /** The lock key's exact value (holder, epoch, acquiredAt). */
  readonly value: Buffer;
  /**
   * When present and not 'held', the write is refused locally, without asking
   * the store: a holder whose lease was lost must not act as holder even if
   * the store has not yet noticed.
   */
  readonly state?: VolumeLockState;
}

/**
 * The compares that hold exactly while the lock of `fence` is still in
 * place: the key's life (createRevision), untouched since (modRevision), and
 * holding the epoch the writer believes it has (value). An absent key fails
 * all three.
 */
export function fenceCompares(fence: VolumeFence): Compare[] {
  // An absent key has revisions 0: a fence of revision 0 would pass two of the three compares on it.
  assert(
    fence.revision >= 1 && fence.epoch >= 1,
    'a fence names a lock taken at a revision ≥ 1 with an epoch ≥ 1',
  );
  const key = volumeLockKey(fence.volume);
  return [
    { key, target: 'createRevision', op: '==', value: fence.revision },
    { key, target: 'modRevision', op: '==', value: fence.revision },
    { key, target: 'value', op: '==', value: fence.value },
  ];
}

/** The same test as fenceCompares, on a key already read (e.g. by a txn's failure branch). */
export function fenceHolds(fence: VolumeFence, kv: KeyValue | undefined): boolean {
  return (
    kv !== undefined &&
    kv.createRevision === fence.revision &&
    kv.modRevision === fence.revision &&
    kv.value.equals(fence.value)
  );
}

/**
 * Refuse before asking the store when the holder already knows its lock is
 * gone. `refused` says what was not done, for the message.
 */
export function checkFenceLocally(fence: VolumeFence, refused: string): void {
  if (fence.state !== undefined && fence.state !== 'held') {
    throw new FencedError(fence.volume, fence.epoch, refused, { state: fence.state });
  }
}
