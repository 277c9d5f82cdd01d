/**
 * What CreateVolume tells the node plugin about a volume, through the
 * CO (Kubernetes keeps it in the PV and passes it to NodeStage and
 * NodePublish as `volume_context`):
 *
 *   fsType     ext4 | xfs: the filesystem to make when the device has none.
 *              The stage request's volume_capability.mount.fs_type, when
 *              set, is the same or wins (CreateVolume refuses a mismatch).
 *   blockSize  the pool's block size in bytes (decimal): the device's
 *              natural I/O size, e.g. for mkfs stride hints.
 *
 * Also: where a content source is read from a request.
 */
import { invalidArgument } from './csi-error.js';
import type { CsiMessage } from './handlers.js';
import type { FsType } from './parameters.js';

export const CONTEXT_FS_TYPE = 'fsType';
export const CONTEXT_BLOCK_SIZE = 'blockSize';

export function volumeContext(fields: {
  blockSize: number;
  fsType?: FsType;
}): Record<string, string> {
  return {
    [CONTEXT_BLOCK_SIZE]: String(fields.blockSize),
    ...(fields.fsType ? { [CONTEXT_FS_TYPE]: fields.fsType } : {}),
  };
}

/** A CreateVolume content source: a snapshot id or a volume id, or undefined when there is none. */
export function contentSourceOf(
  source: CsiMessage | null | undefined,
): { kind: 'snapshot' | 'volume'; id: string } | undefined {
  if (!source || !source.type) return undefined;
  if (source.type === 'snapshot') {
    const id = source.snapshot?.snapshot_id;
    if (typeof id !== 'string' || id === '')
      throw invalidArgument('volume_content_source.snapshot.snapshot_id is required');
    return { kind: 'snapshot', id };
  }
  if (source.type === 'volume') {
    const id = source.volume?.volume_id;
    if (typeof id !== 'string' || id === '')
      throw invalidArgument('volume_content_source.volume.volume_id is required');
    return { kind: 'volume', id };
  }
  throw invalidArgument(`volume_content_source: unknown type ${String(source.type)}`);
}
