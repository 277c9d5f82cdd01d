/**
 * What the controller's handlers share: the Torus client, whether it is a
 * cluster, and the reads several RPCs need (the block size, one volume as
 * the CSI layer sees it — including whether it is a deleted volume kept for
 * its snapshots).
 */
import type { Torus } from '../library/torus.js';
import type { SnapshotInfo, VolumeInfo } from '../library/volume-operations.js';
import { NotFoundError } from '../common/errors.js';
import { DELETED_MARKER } from './ids.js';

export interface ControllerContext {
  torus: Torus;
  cluster: boolean;
  /** A master key file was given: encrypted volumes can be made (a single node has a default one). */
  canEncrypt: boolean;
  /** How long DeleteVolume and DeleteSnapshot wait for a storage node's linger to end (linger-wait.ts). */
  inUseWaitMs: number;
  /** The pool's block size, read once. */
  blockSize(): Promise<number>;
}

export interface FoundVolume {
  info: VolumeInfo;
  /** Its snapshots, the deleted marker excluded. */
  snapshots: SnapshotInfo[];
  /** Deleted through CSI and kept only for its snapshots: invisible to every RPC but the snapshot ones. */
  hidden: boolean;
}

/** Volume `name` and its snapshots, or undefined when there is none. */
export async function findVolume(torus: Torus, name: string): Promise<FoundVolume | undefined> {
  const [volumes, snapshots] = await Promise.all([
    torus.listVolumes(),
    torus.listSnapshots(name).catch((err: unknown) => {
      if (err instanceof NotFoundError) return [];
      throw err;
    }),
  ]);
  const info = volumes.find((v) => v.name === name);
  if (!info) return undefined;
  return {
    info,
    snapshots: snapshots.filter((s) => s.snapshot !== DELETED_MARKER),
    hidden: snapshots.some((s) => s.snapshot === DELETED_MARKER),
  };
}

/** Is a snapshot listing entry the deleted marker? */
export function isMarker(snapshot: SnapshotInfo): boolean {
  return snapshot.snapshot === DELETED_MARKER;
}
