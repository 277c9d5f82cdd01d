/**
 * Before a writable stage: wait until this machine's storage node serves the
 * export writable.
 *
 * In a cluster one node writes a volume (it holds the write lock); every
 * other node serves it read-only. The writer keeps the lock --lock-linger
 * seconds (5 by default) after its last client left, so a pod that moves —
 * unstaged on one machine, staged on another within those seconds — was
 * staged read-only: the stage succeeded and the pod's first write failed
 * with EROFS. Connecting to the export asks this node to take the lock; a
 * read-only answer means another node still holds it. So a writable stage
 * connects, and while the answer is read-only tries again every 250 ms for
 * up to `waitMs`: a lingering holder lets go within it, a pod still running
 * elsewhere does not, and the stage is refused (FAILED_PRECONDITION, the
 * kubelet retries) with nothing attached.
 */
import { NbdClient, type NbdAddress } from '../../dataplane/nbd-client/client.js';
import { failedPrecondition } from '../csi-error.js';
import { NBD_HANDSHAKE_TIMEOUT_MS } from './nbd-address.js';

/** torusd's default --lock-linger (5 s) plus room for a loaded machine. */
export const WRITABLE_WAIT_MS = 8000;

const RETRY_INTERVAL_MS = 250;

/**
 * Resolves once `exportName` is served writable at `nbd`; FAILED_PRECONDITION
 * when it is still read-only after `waitMs`. A NotFoundError (no such
 * export) or a connection error passes through at once.
 */
export async function waitUntilWritable(
  nbd: NbdAddress,
  exportName: string,
  waitMs: number,
): Promise<void> {
  if (!Number.isFinite(waitMs) || waitMs < 0)
    throw new RangeError(`waitMs must be a finite number ≥ 0, got ${waitMs}`);
  const deadline = Date.now() + waitMs;
  for (;;) {
    const probe = await NbdClient.connect(nbd, exportName, {
      handshakeTimeoutMs: NBD_HANDSHAKE_TIMEOUT_MS,
    });
    const readOnly = probe.readOnly;
    await probe.close();
    if (!readOnly) return;
    if (Date.now() + RETRY_INTERVAL_MS > deadline)
      throw failedPrecondition(
        `${exportName} is served read-only here: another node holds its write lock (a pod still using it elsewhere, ` +
          `or a storage node keeping it --lock-linger seconds after its last client; waited ${waitMs / 1000} s). ` +
          'Unstage it on the other node first',
      );
    await new Promise((resolve) => setTimeout(resolve, RETRY_INTERVAL_MS));
  }
}
