/**
 * Reading the fields of Node requests: required strings, and the volume
 * capability turned into what staging needs (block or a filesystem, its
 * type and flags, whether the access is read-only). Every refusal is
 * INVALID_ARGUMENT naming the field, as the CSI spec asks.
 */
import { invalidArgument } from '../csi-error.js';
import type { CsiMessage } from '../handlers.js';
import { SUPPORTED_FS_TYPES, type FsType } from './filesystem.js';

export const DEFAULT_FS_TYPE: FsType = 'ext4';

const READ_ONLY_MODES = new Set(['SINGLE_NODE_READER_ONLY', 'MULTI_NODE_READER_ONLY']);
const SUPPORTED_MODES = new Set([
  'SINGLE_NODE_WRITER',
  'SINGLE_NODE_SINGLE_WRITER',
  'SINGLE_NODE_MULTI_WRITER',
  'SINGLE_NODE_READER_ONLY',
  'MULTI_NODE_READER_ONLY',
  'MULTI_NODE_SINGLE_WRITER',
]);

export interface NodeCapability {
  accessType: 'mount' | 'block';
  /** Mount volumes only. */
  fsType?: FsType;
  mountFlags: string[];
  /** The access mode only reads (ROX, or a single-node reader). */
  readOnlyAccess: boolean;
}

export function requireString(request: CsiMessage, field: string): string {
  const value: unknown = request[field];
  if (typeof value !== 'string' || value === '') throw invalidArgument(`${field} is required`);
  return value;
}

/** The capability of a stage or publish request; volume_context's fsType is the class's choice. */
export function parseCapability(request: CsiMessage): NodeCapability {
  const capability = request.volume_capability as CsiMessage | null | undefined;
  if (!capability) throw invalidArgument('volume_capability is required');
  const mode = String(capability.access_mode?.mode ?? 'UNKNOWN');
  if (!SUPPORTED_MODES.has(mode))
    throw invalidArgument(
      mode === 'MULTI_NODE_MULTI_WRITER'
        ? 'access mode MULTI_NODE_MULTI_WRITER (RWX) is not supported: a Torus volume has one writer; ' +
            'use ReadWriteOnce, or ReadOnlyMany to share it read-only'
        : `volume_capability.access_mode.mode ${mode} is not supported`,
    );
  const readOnlyAccess = READ_ONLY_MODES.has(mode);
  const kind =
    capability.access_type ?? (capability.block ? 'block' : capability.mount ? 'mount' : undefined);
  if (kind === 'block') return { accessType: 'block', mountFlags: [], readOnlyAccess };
  if (kind !== 'mount')
    throw invalidArgument('volume_capability needs an access type: mount or block');
  const mount = capability.mount as CsiMessage;
  const contextFsType = (request.volume_context as Record<string, string> | null)?.fsType;
  const fsType = String(mount.fs_type || contextFsType || DEFAULT_FS_TYPE);
  if (!SUPPORTED_FS_TYPES.includes(fsType as FsType))
    throw invalidArgument(
      `fs_type ${fsType} is not supported: use ${SUPPORTED_FS_TYPES.join(' or ')}`,
    );
  const mountFlags = ((mount.mount_flags as string[] | undefined) ?? []).map(String);
  for (const flag of mountFlags)
    if (!/^[A-Za-z0-9_=.:/-]+$/.test(flag))
      throw invalidArgument(`mount flag ${JSON.stringify(flag)} is not a plain mount option`);
  return { accessType: 'mount', fsType: fsType as FsType, mountFlags, readOnlyAccess };
}
