/**
 * Deletes that wait out a storage node's linger.
 *
 * A cluster node keeps a volume open — its write lock, or its read pin —
 * for `--lock-linger` seconds (5 by default) after the volume's last NBD
 * client goes, so a client that reconnects finds its cache warm (a
 * snapshot's pin goes without linger, but only once the node has closed
 * it, a moment after the client left). To the CO,
 * though, a volume it has unstaged everywhere is no longer in use, and it
 * deletes it at once: csi-sanity deletes each volume right after
 * NodeUnstageVolume, as the external-provisioner does after the last pod
 * went. Answering FAILED_PRECONDITION ("in use") there is wrong in spirit
 * and costs a back-off round and a warning event per delete. So DeleteVolume
 * and DeleteSnapshot retry an "in use" refusal for up to `waitMs`: a
 * lingering holder lets go within that time, a real user does not, and then
 * the refusal stands (the CO retries later). Any other error is at once.
 */
import { ConflictError } from '../common/errors.js';
import { CsiError, failedPrecondition, GrpcStatus } from './csi-error.js';

/**
 * torusd's default --lock-linger (5 s) plus room for a loaded machine, and
 * less than the external-provisioner's default --timeout (10 s), so a call
 * that waits still answers before the sidecar gives up on it.
 */
export const IN_USE_WAIT_MS = 8000;

/** Between two tries: a lock's release is one etcd write, seen within this. */
const RETRY_INTERVAL_MS = 250;

/** A refusal because something holds the volume or snapshot: a Torus ConflictError, or our FAILED_PRECONDITION. */
export function isInUse(err: unknown): boolean {
  if (err instanceof ConflictError) return true;
  return err instanceof CsiError && err.code === GrpcStatus.FAILED_PRECONDITION;
}

/**
 * `work`, tried again while it is refused as in use, until `waitMs` has
 * passed; then its last refusal, as FAILED_PRECONDITION saying how long it
 * waited. `work` must be idempotent (both deletes are).
 */
export async function retryWhileInUse<T>(work: () => Promise<T>, waitMs: number): Promise<T> {
  if (!Number.isFinite(waitMs) || waitMs < 0)
    throw new RangeError(`waitMs must be a finite number ≥ 0, got ${waitMs}`);
  const deadline = Date.now() + waitMs;
  for (;;) {
    try {
      return await work();
    } catch (err) {
      if (!isInUse(err)) throw err;
      if (Date.now() + RETRY_INTERVAL_MS > deadline) {
        if (waitMs === 0) throw err;
        throw failedPrecondition(
          `${(err as Error).message} (still so after ${waitMs / 1000} s: a storage node lets go --lock-linger seconds after a volume's last client, so this one has a real user; unstage it first)`,
        );
      }
    }
    await new Promise((resolve) => setTimeout(resolve, RETRY_INTERVAL_MS));
  }
}
