import assert from 'node:assert/strict';
import { closeSync, mkdtempSync, openSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import { preadvAll } from './file-io.js';

describe('preadvAll', () => {
  const dir = mkdtempSync(join(tmpdir(), 'torus-file-io-'));
  const path = join(dir, 'data');
  writeFileSync(path, Buffer.from([...Array(40).keys()]));
  const fd = openSync(path, 'r');
  after(() => {
    closeSync(fd);
    rmSync(dir, { recursive: true, force: true });
  });

  test('fills each buffer in turn from the position on', () => {
    const buffers = [Buffer.alloc(3), Buffer.alloc(5), Buffer.alloc(2)];
    preadvAll(fd, buffers, 10);
    assert.deepEqual([...Buffer.concat(buffers)], [10, 11, 12, 13, 14, 15, 16, 17, 18, 19]);
  });

  test('views of one larger buffer are filled where they point', () => {
    const whole = Buffer.alloc(8, 0xff);
    preadvAll(fd, [whole.subarray(4, 8), whole.subarray(0, 4)], 0);
    assert.deepEqual([...whole], [4, 5, 6, 7, 0, 1, 2, 3]);
  });

  test('the end of the file before the buffers are full is an error naming where', () => {
    assert.throws(() => preadvAll(fd, [Buffer.alloc(8), Buffer.alloc(8)], 30), /short read at 40/);
  });
});
