/**
 * Shrinking a cluster volume from torusctl: the trimmed version has to be
 * written by a holder of the volume's write lock, and torusctl is nobody's
 * node. So it becomes one for the moment, the way `torusblk nbdserve` does
 * (nbdserve.ts): a StorageNode with a scratch store that holds no copies,
 * following the ring, taking the volume's write lock as a client opening it
 * would. It then shrinks the volume through that open Volume
 * (node/volume-resize.ts: trim the tail, commit under the lock, change the
 * record's size fenced by it) and closes, releasing the lock.
 */
import { randomUUID } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ConflictError, NotFoundError } from '../common/errors.js';
import { logger } from '../common/log.js';
import { PeerTable } from '../controlplane/membership/peer-table.js';
import type { MetadataStore } from '../controlplane/metadata/store.js';
import type { ClusterSettings } from '../controlplane/volumes/catalog.js';
import { StorageNode } from '../node/storage-node.js';

/** The scratch store for the map pages the trimmed version writes (they also go to storage nodes). */
const SCRATCH_BYTES = 64 * 1024 * 1024;
const CACHE_BYTES = 32 * 1024 * 1024;
/** Long enough that the volume stays held between opening it and shrinking it; close() lets go sooner. */
const HOLD_MS = 10 * 60 * 1000;

export async function shrinkClusterVolume(
  meta: MetadataStore,
  settings: ClusterSettings,
  name: string,
  size: number,
  keyFile: string | undefined,
): Promise<void> {
  const log = logger('torusctl');
  log.level = 'warn'; // the node's start and stop would bury the command's one line of output
  const scratch = await mkdtemp(join(tmpdir(), 'torusctl-shrink-'));
  try {
    const node = await StorageNode.open({
      dataDir: scratch,
      capacityBytes: SCRATCH_BYTES,
      cacheBytes: CACHE_BYTES,
      workers: 1,
      keyFile,
      log,
      meta,
      cluster: { uuid: randomUUID(), clusterId: settings.createdAt, holdsCopies: false },
      lockLingerMs: HOLD_MS,
    });
    try {
      const peers = await PeerTable.open(meta, { log });
      try {
        node.followMembership(peers);
        // Opened as a client would (taking the write lock, or read-only
        // naming the writer), then the session closed: the volume stays
        // held, with no session, until close().
        const session = await node.open(name);
        if (!session) throw new NotFoundError(`no volume named "${name}"`);
        const readOnly = session.readOnly;
        await session.close();
        if (readOnly)
          throw new ConflictError(
            `volume "${name}" is written by another node: disconnect its clients before shrinking it`,
          );
        await node.resizeVolume(name, size, { shrink: true });
      } finally {
        await peers.close();
        await node.close();
      }
    } catch (err) {
      await node.close().catch(() => undefined);
      throw err;
    }
  } finally {
    await rm(scratch, { recursive: true, force: true });
  }
}
