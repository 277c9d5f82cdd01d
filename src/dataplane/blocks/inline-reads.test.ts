import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync, openSync, closeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import {
  INLINE_READ_MAX_BYTES,
  INLINE_READ_MAX_MS,
  InlineReads,
  PROBE_EVERY,
} from './inline-reads.js';

describe('InlineReads', () => {
  it('reads small reads inline, large ones through the pool', () => {
    const reads = new InlineReads();
    assert.equal(reads.inline(4096), true);
    assert.equal(reads.inline(INLINE_READ_MAX_BYTES), true);
    assert.equal(reads.inline(INLINE_READ_MAX_BYTES + 1), false);
  });

  it('goes to the pool once inline reads are slow, probing one in PROBE_EVERY', () => {
    const reads = new InlineReads();
    for (let i = 0; i < 40; i++) reads.took(INLINE_READ_MAX_MS * 10);
    assert.equal(reads.fast, false);
    const inline = Array.from({ length: 3 * PROBE_EVERY }, () => reads.inline(4096));
    assert.equal(inline.filter(Boolean).length, 3, 'one probe in PROBE_EVERY');
    // Fast probes bring it back.
    for (let i = 0; i < 40; i++) reads.took(0.01);
    assert.equal(reads.fast, true);
    assert.equal(reads.inline(4096), true);
  });

  it('readFully fills the range and stops short at the end of the file', () => {
    const dir = mkdtempSync(join(tmpdir(), 'torus-inline-reads-'));
    try {
      const path = join(dir, 'f');
      const bytes = Buffer.from(Array.from({ length: 10_000 }, (_, i) => i % 251));
      writeFileSync(path, bytes);
      const fd = openSync(path, 'r');
      try {
        const reads = new InlineReads();
        const dest = Buffer.alloc(4096);
        assert.equal(reads.readFully(fd, dest, 0, 4096, 100), 4096);
        assert.deepEqual(dest, bytes.subarray(100, 4196));
        assert.equal(reads.readFully(fd, dest, 96, 4000, 8000), 2000, 'short at the end');
        assert.deepEqual(dest.subarray(96, 2096), bytes.subarray(8000));
      } finally {
        closeSync(fd);
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
