import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { test } from 'node:test';
import { WrappedKeyError } from './errors.js';
import {
  WRAPPED_KEY_BYTES,
  generateVolumeKey,
  unwrapVolumeKey,
  wrapVolumeKey,
  wrappedKeyFromString,
  wrappedKeyToString,
} from './volume-key.js';

test('a volume key is 32 random bytes', () => {
  const a = generateVolumeKey();
  assert.equal(a.length, 32);
  assert.notDeepEqual(a, generateVolumeKey());
});

test('wrap then unwrap with the same master key gives the key back, as bytes and as base64', () => {
  const master = randomBytes(32);
  const key = generateVolumeKey();
  const wrapped = wrapVolumeKey(key, master);
  assert.equal(wrapped.length, WRAPPED_KEY_BYTES);
  assert.equal(wrapped[0], 1, 'format version first');
  assert.equal(wrapped.indexOf(Buffer.from(key)), -1, 'the key is not in clear');
  assert.deepEqual(Buffer.from(unwrapVolumeKey(wrapped, master)), Buffer.from(key));
  const text = wrappedKeyToString(wrapped);
  assert.deepEqual(Buffer.from(unwrapVolumeKey(text, master)), Buffer.from(key));
  assert.deepEqual(Buffer.from(wrappedKeyFromString(text)), wrapped);
});

test('wrapping twice uses different nonces', () => {
  const master = randomBytes(32);
  const key = generateVolumeKey();
  assert.notDeepEqual(wrapVolumeKey(key, master), wrapVolumeKey(key, master));
});

test('the wrong master key is refused, never answered with garbage', () => {
  const wrapped = wrapVolumeKey(generateVolumeKey(), randomBytes(32));
  assert.throws(
    () => unwrapVolumeKey(wrapped, randomBytes(32)),
    (err: unknown) => {
      assert.ok(err instanceof WrappedKeyError);
      assert.match(err.message, /wrong master key or corrupt wrapped key/);
      return true;
    },
  );
});

test('every corrupted byte, a truncation, an unknown version and bad base64 are refused', () => {
  const master = randomBytes(32);
  const wrapped = wrapVolumeKey(generateVolumeKey(), master);
  for (let i = 0; i < wrapped.length; i++) {
    const damaged = Buffer.from(wrapped);
    damaged[i] ^= 0x01;
    assert.throws(() => unwrapVolumeKey(damaged, master), WrappedKeyError, `byte ${i}`);
  }
  assert.throws(() => unwrapVolumeKey(wrapped.subarray(0, 72), master), /72 bytes/);
  const v2 = Buffer.from(wrapped);
  v2[0] = 2;
  assert.throws(() => unwrapVolumeKey(v2, master), /version 2 is not supported/);
  assert.throws(() => unwrapVolumeKey('not base64!', master), /not base64/);
  assert.throws(() => unwrapVolumeKey('', master), WrappedKeyError);
});

test('keys of the wrong size are programmer errors', () => {
  assert.throws(() => wrapVolumeKey(new Uint8Array(16), randomBytes(32)), RangeError);
  assert.throws(() => wrapVolumeKey(generateVolumeKey(), new Uint8Array(31)), RangeError);
  assert.throws(() => unwrapVolumeKey(new Uint8Array(73), new Uint8Array(0)), RangeError);
});
