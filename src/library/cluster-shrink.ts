/**
 * Shrinking a cluster volume from torusctl or the library: the trimmed
 * version has to be written by a holder of the volume's write lock, and the
 * caller is nobody's node. So it becomes one for the moment: a store-less
 * client node (client-node.ts, as `torusblk nbdserve` runs), taking the
 * volume's write lock as a client opening it would. It then shrinks the
 * volume through that open Volume (node/volume-resize.ts: trim the tail,
 * commit under the lock, change the record's size fenced by it) and closes,
 * releasing the lock.
 */
import { ConflictError, NotFoundError } from '../common/errors.js';
import { logger } from '../common/log.js';
import type { MetadataStore } from '../controlplane/metadata/store.js';
import { openClientNode } from './client-node.js';
import type { PeerTlsFiles } from '../dataplane/peer/peer-tls.js';

/** The scratch store for the map pages the trimmed version writes (they also go to storage nodes). */
const SCRATCH_BYTES = 64 * 1024 * 1024;
const CACHE_BYTES = 32 * 1024 * 1024;
/** Long enough that the volume stays held between opening it and shrinking it; close() lets go sooner. */
const HOLD_MS = 10 * 60 * 1000;

export async function shrinkClusterVolume(
  meta: MetadataStore,
  endpoints: string,
  name: string,
  size: number,
  keyFile: string | undefined,
  peerTls: PeerTlsFiles | undefined,
): Promise<void> {
  const log = logger('torusctl');
  log.level = 'warn'; // the node's start and stop would bury the command's one line of output
  const client = await openClientNode({
    meta,
    endpoints,
    label: 'torusctl-shrink',
    scratchBytes: SCRATCH_BYTES,
    cacheBytes: CACHE_BYTES,
    workers: 1,
    keyFile,
    peerTls,
    log,
    lockLingerMs: HOLD_MS,
  });
  try {
    const { node } = client;
    // Opened as a client would (taking the write lock, or read-only naming
    // the writer), then the session closed: the volume stays held, with no
    // session, until close().
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
    await client.close();
  }
}
