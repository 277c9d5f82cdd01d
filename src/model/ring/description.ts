/**
 * Checking a ring description before building from it: what placement relies
 * on, so a corrupt or hand-edited record fails loudly at build time rather
 * than placing blocks somewhere odd.
 */
import { RingDescriptionError, type RingDescription } from './ring.js';

/** Member indexes are stored as u16 (ketama.ts owners). */
export const MAX_MEMBERS = 0xffff;

/**
 * Weights are relative (by convention, store bytes); anything this small is a
 * mistake, and keeps ketama.ts's point-count arithmetic away from denormals.
 */
export const MIN_WEIGHT = 2 ** -32;

/**
 * A private, frozen copy of a description, after checking what placement
 * relies on: unique non-empty uuids, finite weights ≥ MIN_WEIGHT, a sane
 * replication factor, and no more members than owners can index.
 */
export function checkedCopy(description: RingDescription): RingDescription {
  const { version, type, replication, members } = description;
  if (!Number.isSafeInteger(version) || version < 0)
    throw new RingDescriptionError(`ring version ${version} is not a non-negative integer`);
  if (!Number.isSafeInteger(replication) || replication < 1)
    throw new RingDescriptionError(`ring replication ${replication} is not a positive integer`);
  if (!Array.isArray(members)) throw new RingDescriptionError('ring members is not a list');
  if (members.length > MAX_MEMBERS)
    throw new RingDescriptionError(
      `${members.length} ring members, at most ${MAX_MEMBERS} supported`,
    );
  const seen = new Set<string>();
  const copy = members.map(({ uuid, weight }) => {
    if (typeof uuid !== 'string' || uuid.length === 0)
      throw new RingDescriptionError(
        `ring member uuid ${JSON.stringify(uuid)} is not a non-empty string`,
      );
    if (seen.has(uuid)) throw new RingDescriptionError(`ring member ${uuid} is listed twice`);
    seen.add(uuid);
    if (typeof weight !== 'number' || !Number.isFinite(weight) || weight < MIN_WEIGHT) {
      throw new RingDescriptionError(
        `ring member ${uuid} has weight ${weight}; weights are finite and at least 2^-32 (remove a member to stop placing on it)`,
      );
    }
    return Object.freeze({ uuid, weight });
  });
  return Object.freeze({
    version,
    type,
    replication,
    members: Object.freeze(copy) as RingDescription['members'],
  });
}

/**
 * A block's placement inputs are non-negative safe integers (ref.ts): a
 * fraction or a negative number is a caller's bug, and would otherwise be
 * placed somewhere quietly (the hash reads whole u32 halves).
 */
export function checkBlock(volumeId: number, index: number): void {
  if (!(
    Number.isSafeInteger(volumeId) &&
    volumeId >= 0 &&
    Number.isSafeInteger(index) &&
    index >= 0
  )) {
    throw new RangeError(
      `cannot place block ${index} of volume ${volumeId}: both must be non-negative integers`,
    );
  }
}
