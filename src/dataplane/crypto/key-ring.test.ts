import assert from 'node:assert/strict';
import { chmod, mkdtemp, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { BlockSealer } from './block-sealer.js';
import {
  MasterKeyFormatError,
  MasterKeyMissingError,
  WrappedKeyError,
  WrongMasterKeyError,
} from './errors.js';
import { KeyRing } from './key-ring.js';

const root = await mkdtemp(join(tmpdir(), 'torus-key-ring-'));
after(() => rm(root, { recursive: true, force: true }));

test('the first encrypted volume creates the master key; its record unwraps to a usable key', async () => {
  const path = join(root, 'a.key');
  const ring = new KeyRing(path);
  const wrapped = await ring.newWrappedKey();
  assert.equal((await stat(path)).mode & 0o777, 0o600);
  assert.equal(wrapped.masterKeyFingerprint, (await ring.masterKey()).fingerprint);
  const key = await new KeyRing(path).unwrap({ name: 'v', ...wrapped });
  assert.equal(key.length, 32);
  new BlockSealer(key);
  const again = await ring.newWrappedKey();
  assert.equal(
    again.masterKeyFingerprint,
    wrapped.masterKeyFingerprint,
    'the existing key file is reused',
  );
  assert.notEqual(again.wrappedKey, wrapped.wrappedKey);
});

test('concurrent first volumes agree on one master key', async () => {
  const path = join(root, 'race.key');
  const ring = new KeyRing(path);
  const results = await Promise.all([
    ring.newWrappedKey(),
    ring.newWrappedKey(),
    new KeyRing(path).newWrappedKey(),
  ]);
  assert.equal(new Set(results.map((r) => r.masterKeyFingerprint)).size, 1);
  for (const r of results) await ring.unwrap({ name: 'v', ...r });
});

test('opening an encrypted volume never creates a key: a missing file names the volume', async () => {
  const wrapped = await new KeyRing(join(root, 'b.key')).newWrappedKey();
  const path = join(root, 'missing.key');
  await assert.rejects(new KeyRing(path).unwrap({ name: 'photos', ...wrapped }), (err: unknown) => {
    assert.ok(err instanceof MasterKeyMissingError);
    assert.match(err.message, /"photos" is encrypted/);
    return true;
  });
  await assert.rejects(stat(path), { code: 'ENOENT' });
});

test('a different master key file is reported as the wrong key, by fingerprint', async () => {
  const wrapped = await new KeyRing(join(root, 'c.key')).newWrappedKey();
  const other = new KeyRing(join(root, 'd.key'));
  await other.newWrappedKey();
  await assert.rejects(other.unwrap({ name: 'v', ...wrapped }), WrongMasterKeyError);
  // Without a recorded fingerprint the unwrap itself still refuses.
  await assert.rejects(
    other.unwrap({ name: 'v', wrappedKey: wrapped.wrappedKey }),
    /wrong master key or corrupt wrapped key/,
  );
});

test('a damaged wrapped key with the right fingerprint is reported as corrupt', async () => {
  const ring = new KeyRing(join(root, 'e.key'));
  const wrapped = await ring.newWrappedKey();
  const bytes = Buffer.from(wrapped.wrappedKey, 'base64');
  bytes[40] ^= 1;
  await assert.rejects(
    ring.unwrap({ name: 'v', ...wrapped, wrappedKey: bytes.toString('base64') }),
    (err: unknown) => {
      assert.ok(err instanceof WrappedKeyError);
      assert.match(err.message, /"v".*corrupt/);
      return true;
    },
  );
  await assert.rejects(ring.unwrap({ name: 'v' }), /no wrapped key/);
});

test('a malformed key file is not replaced by newWrappedKey', async () => {
  const path = join(root, 'bad.key');
  await writeFile(path, 'oops\n', { mode: 0o600 });
  await assert.rejects(new KeyRing(path).newWrappedKey(), MasterKeyFormatError);
});

test('a master key file group or others can read is reported once when it loads', async () => {
  const path = join(root, 'exposed.key');
  await new KeyRing(path).newWrappedKey(); // creates it, owner-only
  await chmod(path, 0o644);
  const reported: string[] = [];
  const ring = new KeyRing(path, (p) => reported.push(p));
  await ring.newWrappedKey();
  await ring.newWrappedKey();
  assert.deepEqual(reported, [path]);
  await chmod(path, 0o600);
  const quiet: string[] = [];
  await new KeyRing(path, (p) => quiet.push(p)).newWrappedKey();
  assert.deepEqual(quiet, []);
});
