/**
 * CSI ids and names ↔ Torus names. A volume id is the Torus volume name (the
 * CreateVolume `name`, e.g. pvc-<uuid>); a snapshot id is `<volume>@<snapshot>`,
 * which is also the read-only NBD export every node serves for it. An id
 * that could not be a Torus name was not made by this driver: `undefined`
 * here, and each RPC answers as the spec says for an id it does not know
 * (NOT_FOUND, or OK for the deletes).
 */
import { invalidArgument } from './csi-error.js';

/** Torus volume and snapshot names (controlplane/volumes/catalog.ts's rule). */
const NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/;

/**
 * The snapshot that marks a deleted volume kept for its snapshots (see
 * README "Deleting a volume that has snapshots"); never a CSI snapshot.
 */
export const DELETED_MARKER = 'torus-csi-deleted';

/** A required string field, or INVALID_ARGUMENT naming it. */
export function requiredString(value: unknown, field: string): string {
  if (typeof value !== 'string' || value === '') throw invalidArgument(`${field} is required`);
  return value;
}

/** The volume a volume id names, or undefined when it cannot be one of ours. */
export function volumeOfId(id: string): string | undefined {
  return NAME.test(id) ? id : undefined;
}

export function snapshotId(volume: string, snapshot: string): string {
  return `${volume}@${snapshot}`;
}

/** The volume and snapshot a snapshot id names, or undefined when it cannot be one of ours. */
export function snapshotOfId(id: string): { volume: string; snapshot: string } | undefined {
  const at = id.indexOf('@');
  if (at < 0) return undefined;
  const volume = id.slice(0, at);
  const snapshot = id.slice(at + 1);
  if (!NAME.test(volume) || !NAME.test(snapshot) || snapshot === DELETED_MARKER) return undefined;
  return { volume, snapshot };
}

/** CreateVolume's `name` as a Torus volume name, or INVALID_ARGUMENT saying the rule. */
export function volumeNameOf(name: string): string {
  if (!NAME.test(name))
    throw invalidArgument(
      `name "${name}" cannot be a Torus volume name: use 1-128 letters, digits, '.', '_' or '-', starting with a letter or digit`,
    );
  return name;
}

/** CreateSnapshot's `name` as a Torus snapshot name, or INVALID_ARGUMENT saying the rule. */
export function snapshotNameOf(name: string): string {
  if (!NAME.test(name))
    throw invalidArgument(
      `name "${name}" cannot be a Torus snapshot name: use 1-128 letters, digits, '.', '_' or '-', starting with a letter or digit`,
    );
  if (name === DELETED_MARKER)
    throw invalidArgument(`name "${DELETED_MARKER}" is reserved by the Torus CSI driver`);
  return name;
}
