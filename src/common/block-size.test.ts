import assert from 'node:assert/strict';
import { test } from 'node:test';
import { blockSizeProblem, MAX_BLOCK_SIZE, MIN_BLOCK_SIZE } from './block-size.js';

test('a block size is a power of two from 4 KiB to 8 MiB', () => {
  for (const good of [MIN_BLOCK_SIZE, 64 * 1024, 1024 * 1024, MAX_BLOCK_SIZE])
    assert.equal(blockSizeProblem(good), undefined, String(good));
  for (const bad of [0, 3, 2048, 48 * 1024, MAX_BLOCK_SIZE * 2, 2 ** 40, -4096, 4096.5, NaN])
    assert.match(
      blockSizeProblem(bad) ?? 'accepted',
      /power of two from 4 KiB to 8 MiB/,
      String(bad),
    );
});
