import assert from 'node:assert/strict';
import { chmod, mkdtemp, readdir, readFile, rm, stat, writeFile, mkdir } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { MasterKeyExistsError, MasterKeyFormatError, MasterKeyMissingError } from './errors.js';
import { createMasterKeyFile, loadMasterKey, masterKeyFingerprint } from './master-key.js';

const root = await mkdtemp(join(tmpdir(), 'torus-master-key-'));
after(() => rm(root, { recursive: true, force: true }));
let counter = 0;
const freshDir = async () => {
  const dir = join(root, String(counter++));
  await mkdir(dir);
  return dir;
};

test('createMasterKeyFile writes 64 hex chars and a newline, mode 0600, leaving no temp file', async () => {
  const dir = await freshDir();
  const path = join(dir, 'master.key');
  const created = await createMasterKeyFile(path);
  const text = await readFile(path, 'latin1');
  assert.match(text, /^[0-9a-f]{64}\n$/);
  assert.equal((await stat(path)).mode & 0o777, 0o600);
  assert.deepEqual(await readdir(dir), ['master.key']);
  const loaded = await loadMasterKey(path);
  assert.deepEqual(Buffer.from(loaded.key), Buffer.from(created.key));
  assert.equal(loaded.fingerprint, created.fingerprint);
  assert.equal(loaded.exposed, false);
});

test('createMasterKeyFile refuses to overwrite, even when racing itself', async () => {
  const dir = await freshDir();
  const path = join(dir, 'master.key');
  const first = await createMasterKeyFile(path);
  await assert.rejects(createMasterKeyFile(path), MasterKeyExistsError);
  assert.deepEqual(
    Buffer.from((await loadMasterKey(path)).key),
    Buffer.from(first.key),
    'the original key survived',
  );

  const racePath = join(dir, 'race.key');
  const results = await Promise.allSettled(
    Array.from({ length: 8 }, () => createMasterKeyFile(racePath)),
  );
  assert.equal(results.filter((r) => r.status === 'fulfilled').length, 1);
  for (const r of results)
    if (r.status === 'rejected') assert.ok(r.reason instanceof MasterKeyExistsError);
  assert.deepEqual(
    (await readdir(dir)).sort(),
    ['master.key', 'race.key'],
    'no temp files left behind',
  );
});

test('a missing key file is a MasterKeyMissingError naming the path', async () => {
  const path = join(await freshDir(), 'nope.key');
  await assert.rejects(loadMasterKey(path), (err: unknown) => {
    assert.ok(err instanceof MasterKeyMissingError);
    assert.equal(err.path, path);
    assert.ok(err.message.includes(path));
    return true;
  });
});

test('malformed key files are rejected with the reason', async () => {
  const dir = await freshDir();
  const hex = 'ab'.repeat(32);
  const cases: Array<[string, string | Buffer, RegExp]> = [
    ['empty', '', /0 characters/],
    ['short', `${hex.slice(2)}\n`, /62 characters/],
    ['long', `${hex}00\n`, /67 bytes/],
    ['raw bytes instead of hex', Buffer.alloc(32, 7), /32 characters/],
    ['non-hex', `${hex.slice(0, 10)}zz${hex.slice(12)}\n`, /character 11 is not a hex digit/],
    ['leading space', ` ${hex.slice(1)}\n`, /character 1 is not a hex digit/],
    ['two newlines', `${hex}\n\n`, /65 characters/],
    ['all zeros', `${'0'.repeat(64)}\n`, /all zeros/],
    ['huge', Buffer.alloc(1 << 20, 0x61), /1048576 bytes/],
  ];
  for (const [name, contents, reason] of cases) {
    const path = join(dir, name.replace(/ /g, '-'));
    await writeFile(path, contents, { mode: 0o600 });
    await assert.rejects(loadMasterKey(path), (err: unknown) => {
      assert.ok(err instanceof MasterKeyFormatError, name);
      assert.match(err.message, reason, name);
      return true;
    });
  }
  await assert.rejects(loadMasterKey(dir), MasterKeyFormatError, 'a directory is not a key file');
});

test('uppercase hex, no trailing newline and CRLF are accepted as the same key', async () => {
  const dir = await freshDir();
  const hex = '0123456789abcdef'.repeat(4);
  const fingerprints = new Set<string>();
  for (const [name, text] of [
    ['plain', `${hex}\n`],
    ['upper', `${hex.toUpperCase()}\n`],
    ['bare', hex],
    ['crlf', `${hex}\r\n`],
  ]) {
    const path = join(dir, name);
    await writeFile(path, text, { mode: 0o600 });
    fingerprints.add((await loadMasterKey(path)).fingerprint);
  }
  assert.equal(fingerprints.size, 1);
});

test('a key file group or world can access is loaded but flagged as exposed', async () => {
  const path = join(await freshDir(), 'master.key');
  await createMasterKeyFile(path);
  await chmod(path, 0o644);
  assert.equal((await loadMasterKey(path)).exposed, true);
  await chmod(path, 0o640);
  assert.equal((await loadMasterKey(path)).exposed, true);
  await chmod(path, 0o400);
  assert.equal((await loadMasterKey(path)).exposed, false);
});

test('the fingerprint is 16 hex chars, stable for a key, different between keys', () => {
  const a = new Uint8Array(32).fill(1);
  const b = new Uint8Array(32).fill(2);
  assert.match(masterKeyFingerprint(a), /^[0-9a-f]{16}$/);
  assert.equal(masterKeyFingerprint(a), masterKeyFingerprint(Uint8Array.from(a)));
  assert.notEqual(masterKeyFingerprint(a), masterKeyFingerprint(b));
  assert.throws(() => masterKeyFingerprint(new Uint8Array(16)), RangeError);
});
