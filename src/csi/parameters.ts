/**
 * StorageClass parameters (CreateVolume's and GetCapacity's `parameters`).
 *
 *   replication  copies of each block, 1-8 (cluster only); default: the ring's
 *   encrypted    "true" | "false": AES-256-GCM at rest (needs the controller's --key-file)
 *   fsType       "ext4" (default) | "xfs": the filesystem the node makes on first stage
 *
 * Keys under `csi.storage.k8s.io/` are the external-provisioner's own (secrets'
 * names, PVC name and namespace with --extra-create-metadata): accepted and
 * ignored. Anything else, or a malformed value, is INVALID_ARGUMENT naming
 * the parameter, so a typo in a StorageClass fails the claim loudly instead
 * of making a volume that is not what was asked for.
 */
import { MAX_REPLICATION } from '../model/replication.js';
import { invalidArgument } from './csi-error.js';

export const FS_TYPES = ['ext4', 'xfs'] as const;
export type FsType = (typeof FS_TYPES)[number];
export const DEFAULT_FS_TYPE: FsType = 'ext4';

const KNOWN = ['replication', 'encrypted', 'fsType'];
const PROVISIONER_PREFIX = 'csi.storage.k8s.io/';

export interface VolumeParameters {
  replication?: number;
  encrypted: boolean;
  fsType?: FsType;
}

export function parseParameters(
  parameters: Record<string, string> | undefined,
  where: { cluster: boolean },
): VolumeParameters {
  const parsed: VolumeParameters = { encrypted: false };
  for (const [key, value] of Object.entries(parameters ?? {})) {
    if (key.startsWith(PROVISIONER_PREFIX)) continue;
    switch (key) {
      case 'replication': {
        const copies = /^\d+$/.test(value) ? Number(value) : NaN;
        if (!(copies >= 1 && copies <= MAX_REPLICATION))
          throw invalidArgument(
            `parameter replication: expected a whole number from 1 to ${MAX_REPLICATION}, got "${value}"`,
          );
        if (!where.cluster && copies !== 1)
          throw invalidArgument(
            `parameter replication: this driver serves a single node, which keeps one copy; remove replication or set it to 1`,
          );
        if (where.cluster) parsed.replication = copies;
        break;
      }
      case 'encrypted':
        if (value !== 'true' && value !== 'false')
          throw invalidArgument(`parameter encrypted: expected "true" or "false", got "${value}"`);
        parsed.encrypted = value === 'true';
        break;
      case 'fsType':
        parsed.fsType = fsTypeOf(value, 'parameter fsType');
        break;
      default:
        throw invalidArgument(
          `unknown StorageClass parameter "${key}": the Torus driver takes ${KNOWN.join(', ')} (and ignores ${PROVISIONER_PREFIX}*)`,
        );
    }
  }
  return parsed;
}

export function fsTypeOf(value: string, field: string): FsType {
  if (!(FS_TYPES as readonly string[]).includes(value))
    throw invalidArgument(`${field}: expected ${FS_TYPES.join(' or ')}, got "${value}"`);
  return value as FsType;
}
