/**
 * Master-key rotation, one record at a time: a volume's (or snapshot's)
 * data key is unwrapped with the master key that wrapped it and wrapped
 * again with the new one. The volume key itself never changes, so no block
 * is rewritten; only the record's `wrappedKey` and `masterKeyFingerprint`
 * do, together, in one write.
 *
 * Because the fingerprint travels with the wrapped key, every record says
 * which master key opens it: a rotation stopped half way leaves each record
 * readable with exactly one of the two keys, and running it again with the
 * same two finishes it (records already under the new key are left alone).
 */
import { WrongMasterKeyError } from './errors.js';
import type { LoadedMasterKey } from './master-key.js';
import { unwrapVolumeKey, wrapVolumeKey, wrappedKeyToString } from './volume-key.js';

/** The fields of a volume or snapshot record rotation reads and rewrites. */
export interface KeyedRecord {
  encrypted: boolean;
  wrappedKey?: string;
  masterKeyFingerprint?: string;
}

/**
 * `record` with its volume key wrapped by `next`; undefined when there is
 * nothing to do (not encrypted, or already wrapped by `next`). `current`:
 * the master keys the record may be wrapped by now. A record wrapped by
 * none of them is refused (WrongMasterKeyError naming both fingerprints);
 * a damaged wrapped key fails with WrappedKeyError. `subject` names the
 * record in messages.
 */
export function rewrapRecord<T extends KeyedRecord>(
  record: T,
  current: readonly LoadedMasterKey[],
  next: LoadedMasterKey,
  subject: string,
): T | undefined {
  if (!record.encrypted || !record.wrappedKey) return undefined;
  if (record.masterKeyFingerprint === next.fingerprint) return undefined;
  const from = current.find((k) => k.fingerprint === record.masterKeyFingerprint);
  if (!from) {
    throw new WrongMasterKeyError(
      record.masterKeyFingerprint ?? 'unknown',
      current.map((k) => k.fingerprint).join(' or '),
      subject,
    );
  }
  const volumeKey = unwrapVolumeKey(record.wrappedKey, from.key);
  try {
    return {
      ...record,
      wrappedKey: wrappedKeyToString(wrapVolumeKey(volumeKey, next.key)),
      masterKeyFingerprint: next.fingerprint,
    };
  } finally {
    volumeKey.fill(0);
  }
}
