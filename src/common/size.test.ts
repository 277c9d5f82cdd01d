import assert from 'node:assert/strict';
import { test } from 'node:test';
import { formatSize, parseSize } from './size.js';

test('parseSize reads binary units the way storage tools do', () => {
  assert.equal(parseSize('4096'), 4096);
  assert.equal(parseSize('64k'), 65536);
  assert.equal(parseSize('512MiB'), 512 * 2 ** 20);
  assert.equal(parseSize('10GiB'), 10 * 2 ** 30);
  assert.equal(parseSize('10G'), 10 * 2 ** 30);
  assert.equal(parseSize('1T'), 2 ** 40);
  assert.equal(parseSize('1.5GiB'), 1.5 * 2 ** 30);
  assert.equal(parseSize('1GB'), 1e9);
});

test('parseSize rejects what is not a size, naming it', () => {
  for (const bad of ['', 'ten', '10X', '-1G', '1.5']) assert.throws(() => parseSize(bad), /size/);
});

test('formatSize is short and exact where it can be', () => {
  assert.equal(formatSize(0), '0 B');
  assert.equal(formatSize(65536), '64 KiB');
  assert.equal(formatSize(1.5 * 2 ** 30), '1.5 GiB');
  assert.equal(formatSize(2 ** 40), '1 TiB');
});
