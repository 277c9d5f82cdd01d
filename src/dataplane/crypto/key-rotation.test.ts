import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { test } from 'node:test';
import { WrongMasterKeyError } from './errors.js';
import { rewrapRecord } from './key-rotation.js';
import { masterKeyFingerprint, type LoadedMasterKey } from './master-key.js';
import {
  generateVolumeKey,
  unwrapVolumeKey,
  wrapVolumeKey,
  wrappedKeyToString,
} from './volume-key.js';

function master(): LoadedMasterKey {
  const key = randomBytes(32);
  return { path: 'test', key, fingerprint: masterKeyFingerprint(key), exposed: false };
}

test('rewrapRecord: the same volume key under the new master key, fingerprint with it', () => {
  const [old, next, stranger] = [master(), master(), master()];
  const volumeKey = generateVolumeKey();
  const record = {
    name: 'v',
    encrypted: true,
    wrappedKey: wrappedKeyToString(wrapVolumeKey(volumeKey, old.key)),
    masterKeyFingerprint: old.fingerprint,
  };
  const rotated = rewrapRecord(record, [old], next, 'v')!;
  assert.equal(rotated.name, 'v');
  assert.equal(rotated.masterKeyFingerprint, next.fingerprint);
  assert.deepEqual(unwrapVolumeKey(rotated.wrappedKey, next.key), volumeKey);
  assert.equal(rewrapRecord(rotated, [old], next, 'v'), undefined, 'already under the new key');
  assert.equal(rewrapRecord({ encrypted: false }, [old], next, 'plain'), undefined);
  assert.throws(() => rewrapRecord(record, [stranger], next, 'v'), WrongMasterKeyError);
});
