/**
 * IntentLog on a real file: what a start-up scan finds after appends, after
 * a torn tail, after the log started over (a new epoch), and that a volume
 * stays live until a commit covers its last capture.
 */
import assert from 'node:assert/strict';
import { mkdtemp, open, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { logger } from '../../common/log.js';
import { IntentLog, MIN_INTENT_LOG_BYTES } from './intent-log.js';
import { RECORD_HEADER_BYTES, RECORDS_START, encodeRecordHeader, recordBytes } from './record.js';

const log = logger('intent-log-test');

/** Stage one plain record of `fill` bytes for `volumeId` at `offset`. */
function put(intents: IntentLog, volumeId: number, offset: number, length: number, fill: number) {
  const { buffer, at } = intents.stage(recordBytes(0, length));
  encodeRecordHeader({ flags: 0, volumeId, coveredBy: 1, offset, length }, buffer, at);
  buffer.fill(fill, at + RECORD_HEADER_BYTES, at + RECORD_HEADER_BYTES + length);
}

describe('IntentLog', { timeout: 60_000 }, () => {
  let root: string;
  before(async () => {
    root = await mkdtemp(join(tmpdir(), 'torus-intent-'));
  });
  after(async () => {
    await rm(root, { recursive: true, force: true });
  });

  test('a fresh log is preallocated; what was made durable is found again, in order', async () => {
    const path = join(root, 'fresh.log');
    const first = await IntentLog.open(path, MIN_INTENT_LOG_BYTES, log);
    assert.deepEqual(first.recovered, []);
    assert.equal(first.usable, false, 'no appends before replay is done');
    await first.startAfterReplay();
    put(first, 1, 0, 4096, 0xa1);
    put(first, 2, 8192, 100, 0xa2);
    await first.durable(2, 1);
    put(first, 1, 4096, 4096, 0xa3);
    await first.durable(1, 1);
    await first.close();
    const handle = await open(path, 'r');
    assert.equal((await handle.stat()).size, MIN_INTENT_LOG_BYTES);
    await handle.close();

    const again = await IntentLog.open(path, MIN_INTENT_LOG_BYTES, log);
    const found = again.recovered.map((r) => [r.volumeId, r.offset, r.length, r.payload[0]]);
    assert.deepEqual(found, [
      [1, 0, 4096, 0xa1],
      [2, 8192, 100, 0xa2],
      [1, 4096, 4096, 0xa3],
    ]);
    assert.deepEqual(
      (await IntentLog.peek(path)).map((r) => r.seq),
      again.recovered.map((r) => r.seq),
    );
    // A start that replayed begins a new epoch: nothing is found twice.
    await again.startAfterReplay();
    await again.close();
    assert.deepEqual(await IntentLog.peek(path), []);
  });

  test('group commit: records staged while a batch syncs all ride the next one', async () => {
    const path = join(root, 'group.log');
    const intents = await IntentLog.open(path, MIN_INTENT_LOG_BYTES, log);
    await intents.startAfterReplay();
    const waits: Promise<void>[] = [];
    for (let i = 0; i < 50; i++) {
      put(intents, 1 + (i % 3), i * 4096, 4096, i);
      waits.push(intents.durable(1 + (i % 3), i));
    }
    await Promise.all(waits);
    // At most two batches: the first record's, and everything staged while it synced.
    assert.ok(new Set(waits).size <= 2, `${new Set(waits).size} batches`);
    await intents.close();
    assert.equal((await IntentLog.peek(path)).length, 50);
  });

  test('a torn or damaged tail ends the scan; what came before it stands', async () => {
    const path = join(root, 'torn.log');
    const intents = await IntentLog.open(path, MIN_INTENT_LOG_BYTES, log);
    await intents.startAfterReplay();
    for (let i = 0; i < 3; i++) {
      put(intents, 1, i * 4096, 4096, 0x10 + i);
      await intents.durable(1, i);
    }
    await intents.close();
    const handle = await open(path, 'r+');
    const third = RECORDS_START + 2 * recordBytes(0, 4096);
    await handle.write(Buffer.from([0xff]), 0, 1, third + RECORD_HEADER_BYTES + 100);
    await handle.close();
    const found = await IntentLog.peek(path);
    assert.deepEqual(
      found.map((r) => r.payload[0]),
      [0x10, 0x11],
    );
  });

  test('once no volume is live the log starts over; older records are never read again', async () => {
    const path = join(root, 'epochs.log');
    const intents = await IntentLog.open(path, MIN_INTENT_LOG_BYTES, log);
    await intents.startAfterReplay();
    for (let i = 0; i < 4; i++) put(intents, 1, i * 65536, 65536, 0x20 + i);
    await intents.durable(1, 1);
    intents.settled(1, 0);
    put(intents, 2, 0, 4096, 0x30);
    await intents.durable(2, 1);
    assert.equal((await IntentLog.peek(path)).length, 5, 'volume 1 still live: no reset');
    intents.settled(1, 1);
    intents.settled(2, 1);
    put(intents, 3, 0, 100, 0x40);
    await intents.durable(3, 1);
    await intents.close();
    // The new epoch's one record overwrote the start; the old ones after it are stale.
    const found = await IntentLog.peek(path);
    assert.deepEqual(
      found.map((r) => [r.volumeId, r.payload[0]]),
      [[3, 0x40]],
    );
  });

  test('fits() says no past the end of the file', async () => {
    const path = join(root, 'full.log');
    const intents = await IntentLog.open(path, MIN_INTENT_LOG_BYTES, log);
    await intents.startAfterReplay();
    assert.ok(intents.fits(1 << 20));
    assert.ok(!intents.fits(MIN_INTENT_LOG_BYTES));
    await intents.close();
  });
});
