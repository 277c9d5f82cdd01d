/**
 * A storage node whose open is refused part-way (here a bad intent log
 * size, checked after the store and the pool are open) leaves nothing open
 * behind: no file of its data directory stays open in this process. It
 * used to leave the store's files and the pool's to the garbage collector
 * ("Closing file descriptor N on garbage collection"), which in a library
 * user's process (Torus.open) is a leak.
 */
import assert from 'node:assert/strict';
import { existsSync, readdirSync, readlinkSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { UsageError } from '../src/common/errors.js';
import { logger } from '../src/common/log.js';
import { StorageNode } from '../src/node/storage-node.js';

const MiB = 1024 * 1024;

/** Paths under `dir` this process has open (Linux: /proc/self/fd). */
function openUnder(dir: string): string[] {
  return readdirSync('/proc/self/fd')
    .map((fd) => {
      try {
        return readlinkSync(join('/proc/self/fd', fd));
      } catch {
        return ''; // closed while we looked
      }
    })
    .filter((path) => path.startsWith(dir));
}

test(
  'a storage node refused part-way through its open closes what it had opened',
  { skip: existsSync('/proc/self/fd') ? false : 'needs /proc/self/fd', timeout: 30_000 },
  async () => {
    const dir = await mkdtemp(join(tmpdir(), 'torus-open-refused-'));
    try {
      await assert.rejects(
        StorageNode.open({
          dataDir: dir,
          capacityBytes: 64 * MiB,
          cacheBytes: 16 * MiB,
          intentLogBytes: 1 * MiB, // below the 16 MiB minimum: refused after the store opened
          log: logger('open-refused-test'),
        }),
        (err: unknown) => err instanceof UsageError && /intent log size/.test(err.message),
      );
      assert.deepEqual(openUnder(dir), [], 'no file of the data directory left open');
      // And the directory opens again, as it would after a corrected flag.
      const node = await StorageNode.open({
        dataDir: dir,
        capacityBytes: 64 * MiB,
        cacheBytes: 16 * MiB,
        log: logger('open-refused-test'),
      });
      await node.close();
      assert.deepEqual(openUnder(dir), [], 'closed again');
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  },
);
