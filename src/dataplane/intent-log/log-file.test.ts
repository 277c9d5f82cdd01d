/**
 * InlineWrites: which log batches are written on the event loop's thread,
 * and writevFullySync on a real file.
 */
import assert from 'node:assert/strict';
import { closeSync, mkdtempSync, openSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import {
  INLINE_MAX_BYTES,
  INLINE_MAX_MS,
  InlineWrites,
  PATCH_WRITES,
  PROBE_EVERY,
  writevFullySync,
} from '../../common/inline-writes.js';
import { overlapsRun } from './log-file.js';

test('small batches go inline while the disk is fast, through the pool once it is slow', () => {
  const policy = new InlineWrites();
  assert.ok(policy.inline(4096), 'a fresh log: inline');
  assert.ok(!policy.inline(INLINE_MAX_BYTES + 1), 'a large batch never holds up the loop');
  for (let i = 0; i < 20; i++) policy.took(0.2);
  assert.ok(policy.inline(4096), 'fast writes: inline');
  for (let i = 0; i < 20; i++) policy.took(10 * INLINE_MAX_MS);
  assert.ok(!policy.inline(4096), 'slow writes: through the pool');
  for (let i = 0; i < 40; i++) policy.took(0.2);
  assert.ok(policy.inline(4096), 'the disk fast again: inline again');
});

test('one slow write among fast ones does not send batches to the pool', () => {
  const policy = new InlineWrites();
  for (let i = 0; i < 20; i++) policy.took(0.2);
  policy.took(5 * INLINE_MAX_MS);
  assert.ok(policy.inline(4096));
});

test('patch batches: large ones inline; once slow, pooled (untimed) with one probe in PROBE_EVERY', async () => {
  const policy = new InlineWrites(PATCH_WRITES);
  assert.ok(policy.inline(1024 * 1024), 'a PUT_PATCHES of 1 MiB: inline');
  assert.ok(!policy.inline(PATCH_WRITES.maxBytes + 1));
  for (let i = 0; i < 20; i++) policy.took(10 * PATCH_WRITES.maxMs);
  let inline = 0;
  let pooled = 0;
  for (let i = 0; i < 2 * PROBE_EVERY; i++)
    await policy.write(
      4096,
      () => inline++,
      async () => {
        pooled++;
        // A pooled batch's time is the loop's wait: never counted.
        await new Promise((resolve) => setTimeout(resolve, 5));
      },
    );
  assert.equal(inline, 2, 'one probe in PROBE_EVERY');
  assert.equal(pooled, 2 * PROBE_EVERY - 2);
  for (let i = 0; i < 40; i++) policy.took(0.5);
  assert.ok(policy.inline(4096), 'fast probes bring batches back inline');
});

test('writevFullySync writes every chunk in order at the position', () => {
  const dir = mkdtempSync(join(tmpdir(), 'torus-logfile-'));
  try {
    const path = join(dir, 'f');
    const fd = openSync(path, 'w+');
    try {
      writevFullySync(fd, [Buffer.from('abc'), Buffer.alloc(0), Buffer.from('defg')], 2);
    } finally {
      closeSync(fd);
    }
    assert.deepEqual(readFileSync(path), Buffer.from('\0\0abcdefg'));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('overlapsRun: a batch against the run from the tail to the head, wrapped or not', () => {
  // Run [100, 200): before it, touching it, inside, across its end, after it.
  assert.equal(overlapsRun(100, 200, 50, 50), false);
  assert.equal(overlapsRun(100, 200, 50, 51), true);
  assert.equal(overlapsRun(100, 200, 150, 10), true);
  assert.equal(overlapsRun(100, 200, 199, 10), true);
  assert.equal(overlapsRun(100, 200, 200, 10), false);
  // Wrapped run: [300, end of file) and [start, 100); free is [100, 300).
  assert.equal(overlapsRun(300, 100, 100, 200), false);
  assert.equal(overlapsRun(300, 100, 100, 201), true);
  assert.equal(overlapsRun(300, 100, 99, 1), true);
  assert.equal(overlapsRun(300, 100, 400, 10), true);
  // Tail at the head: the run is the whole ring.
  assert.equal(overlapsRun(100, 100, 100, 1), true);
});
