/**
 * The write-ahead log's group commit: every append is acknowledged once a
 * sync covers it, whenever it was queued.
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { test } from 'node:test';
import { logger } from '../../../common/log.js';
import { encodeRecord } from './record.js';
import { replayLog, WriteAheadLog } from './wal.js';

test('an append made the moment the previous one is acknowledged is written too', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'torus-wal-'));
  try {
    const wal = await WriteAheadLog.open(dir, await replayLog(dir, 0, logger('test')), () => {});
    // Each append waits directly on the last: it is queued in the step its
    // acknowledgement resumes it, before the flush loop has quite finished.
    // It must start a new loop, not wait on the one that is ending.
    const appended = (async () => {
      for (let revision = 1; revision <= 20; revision++)
        await wal.append(encodeRecord({ revision, mutations: [] }), revision);
      return 'all acknowledged';
    })();
    const outcome = await Promise.race([appended, sleep(10_000).then(() => 'an append hangs')]);
    assert.equal(outcome, 'all acknowledged');
    await wal.close();
    const replayed = await replayLog(dir, 0, logger('test'));
    assert.equal(replayed.revision, 20);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
