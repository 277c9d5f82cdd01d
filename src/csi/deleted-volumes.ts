/**
 * Deleting a volume that has snapshots.
 *
 * A Kubernetes user expects a VolumeSnapshot to outlive the claim it was
 * taken of, while Torus refuses to delete a volume that has snapshots (they
 * live under its name: `<volume>@<snapshot>` is also their NBD export). So
 * DeleteVolume of such a volume hides it instead: it takes the reserved
 * snapshot DELETED_MARKER, after which every RPC but the snapshot ones
 * treats the volume as gone (ListVolumes skips it, CreateVolume of its name
 * is ALREADY_EXISTS, expand and validate are NOT_FOUND), while its snapshots
 * stay listable, restorable and deletable. When its last snapshot is
 * deleted the volume goes with the marker. Its last version's blocks stay
 * until then (hiding is metadata only). Each side re-reads after its own
 * write, so a DeleteVolume racing the last DeleteSnapshot never leaves a
 * hidden volume without snapshots behind.
 */
import { ConflictError, NotFoundError } from '../common/errors.js';
import type { Torus } from '../library/torus.js';
import { failedPrecondition } from './csi-error.js';
import { findVolume } from './controller-context.js';
import { DELETED_MARKER } from './ids.js';

/** DeleteVolume: gone (or hidden) when this resolves; idempotent. */
export async function deleteOrHide(torus: Torus, name: string): Promise<void> {
  try {
    await torus.deleteVolume(name);
    return;
  } catch (err) {
    if (err instanceof NotFoundError) return;
    if (!(err instanceof ConflictError)) throw err;
    const found = await findVolume(torus, name);
    if (!found) return;
    if (found.snapshots.length === 0) {
      if (found.hidden) return removeIfUnused(torus, name);
      throw failedPrecondition(`volume ${name} is in use: ${err.message}`);
    }
    if (found.info.lockedBy || (found.info.sessions ?? 0) > 0)
      throw failedPrecondition(
        `volume ${name} is in use${found.info.lockedBy ? ` by ${found.info.lockedBy}` : ''}: unstage it first`,
      );
    await torus.createSnapshot(name, DELETED_MARKER).catch((markErr: unknown) => {
      if (!(markErr instanceof ConflictError)) throw markErr;
    });
    await removeIfUnused(torus, name);
  }
}

/** A hidden volume whose last snapshot is gone: delete it with its marker. Anything else: nothing. */
export async function removeIfUnused(torus: Torus, name: string): Promise<void> {
  const found = await findVolume(torus, name);
  if (!found || !found.hidden || found.snapshots.length > 0) return;
  await torus.deleteVolume(name, { withSnapshots: true }).catch((err: unknown) => {
    if (!(err instanceof NotFoundError)) throw err;
  });
}
