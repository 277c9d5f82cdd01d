/**
 * Volume capabilities: which access modes and access types Torus honours.
 *
 * A volume has one writer node at a time: the node serving it holds its
 * write lock, and every other node serves it read-only at a committed
 * version. So:
 *  - SINGLE_NODE_* (RWO, RWOP; several pods on one node share the device):
 *    yes;
 *  - MULTI_NODE_READER_ONLY (ROX): yes, through the read-only exports;
 *  - MULTI_NODE_SINGLE_WRITER / MULTI_NODE_MULTI_WRITER (RWX) with a
 *    filesystem: no — ext4 and xfs are not cluster filesystems, two nodes
 *    mounting one would corrupt it;
 *  - the same as raw block: no — a second node would get a read-only device
 *    at an old version, which is not what a multi-writer claim promises.
 */
import { invalidArgument } from './csi-error.js';
import type { CsiMessage } from './handlers.js';
import { FS_TYPES, type FsType } from './parameters.js';

const SUPPORTED_MODES = new Set([
  'SINGLE_NODE_WRITER',
  'SINGLE_NODE_READER_ONLY',
  'SINGLE_NODE_SINGLE_WRITER',
  'SINGLE_NODE_MULTI_WRITER',
  'MULTI_NODE_READER_ONLY',
]);

export interface CheckedCapabilities {
  /** Some capability asks for a raw block device. */
  block: boolean;
  /** Some capability asks for a filesystem. */
  mount: boolean;
  /** The filesystem the mount capabilities name, if any. */
  fsType?: FsType;
}

/** The capabilities list, or INVALID_ARGUMENT when missing or empty (`field` names it). */
export function requiredCapabilities(value: unknown, field: string): CsiMessage[] {
  if (!Array.isArray(value) || value.length === 0)
    throw invalidArgument(`${field} is required: at least one volume capability`);
  return value as CsiMessage[];
}

/** Why Torus cannot honour `capability`, or undefined when it can. */
export function capabilityProblem(capability: CsiMessage, field: string): string | undefined {
  const type = capability?.access_type;
  if (type !== 'block' && type !== 'mount')
    return `${field}: access_type is required (block or mount)`;
  const mode = capability.access_mode?.mode;
  if (typeof mode !== 'string' || mode === 'UNKNOWN')
    return `${field}: access_mode.mode is required`;
  if (!SUPPORTED_MODES.has(mode)) {
    if (mode === 'MULTI_NODE_SINGLE_WRITER' || mode === 'MULTI_NODE_MULTI_WRITER')
      return type === 'mount'
        ? `${field}: ${mode} (ReadWriteMany) with a filesystem is not supported: ext4 and xfs are not cluster filesystems, and two nodes mounting one volume would corrupt it; use ReadWriteOnce, ReadWriteOncePod or ReadOnlyMany`
        : `${field}: ${mode} on a raw block volume is not supported: Torus gives one node at a time the volume's write lock, so a second node would only get a read-only device; use ReadWriteOnce or ReadOnlyMany`;
    return `${field}: access mode ${mode} is not supported`;
  }
  if (type === 'mount') {
    const fsType = capability.mount?.fs_type ?? '';
    if (fsType !== '' && !(FS_TYPES as readonly string[]).includes(fsType))
      return `${field}: mount.fs_type "${fsType}" is not supported: use ${FS_TYPES.join(' or ')}`;
  }
  return undefined;
}

/** Check every capability, INVALID_ARGUMENT for the first Torus cannot honour. */
export function checkCapabilities(capabilities: CsiMessage[], field: string): CheckedCapabilities {
  const checked: CheckedCapabilities = { block: false, mount: false };
  capabilities.forEach((capability, i) => {
    const problem = capabilityProblem(capability, `${field}[${i}]`);
    if (problem) throw invalidArgument(problem);
    if (capability.access_type === 'block') checked.block = true;
    else {
      checked.mount = true;
      const fsType = capability.mount?.fs_type as string | undefined;
      if (fsType) {
        if (checked.fsType && checked.fsType !== fsType)
          throw invalidArgument(
            `${field}: capabilities ask for two filesystems, ${checked.fsType} and ${fsType}`,
          );
        checked.fsType = fsType as FsType;
      }
    }
  });
  return checked;
}
