/**
 * IntentLog on a real file: what a start-up scan finds after appends, after
 * a torn tail, after the log wrapped (laps over settled records, never over
 * a needed one), and when it asks its volumes to commit.
 */
import assert from 'node:assert/strict';
import { mkdtemp, open, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { logger } from '../../common/log.js';
import { IntentLog, MIN_INTENT_LOG_BYTES, defaultIntentLogBytes } from './intent-log.js';
import { RECORD_HEADER_BYTES, RECORDS_START, encodeRecordHeader, recordBytes } from './record.js';

const log = logger('intent-log-test');
const MiB = 1024 * 1024;

/** Stage one plain record of `fill` bytes for `volumeId` at `offset`. */
function put(intents: IntentLog, volumeId: number, offset: number, length: number, fill: number) {
  const { buffer, at } = intents.stage(recordBytes(0, length));
  encodeRecordHeader({ flags: 0, volumeId, coveredBy: 1, offset, length }, buffer, at);
  buffer.fill(fill, at + RECORD_HEADER_BYTES, at + RECORD_HEADER_BYTES + length);
}

/** What a start would replay from the log at `path`: each record's volume and first payload byte, read again as replay reads it. */
async function replayable(path: string): Promise<[number, number][]> {
  const reopened = await IntentLog.open(path, MIN_INTENT_LOG_BYTES, log);
  try {
    const found: [number, number][] = [];
    for (const r of reopened.recovered)
      found.push([r.volumeId, (await reopened.recordContent(r)).payload[0]]);
    return found;
  } finally {
    await reopened.close();
  }
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
    await first.durable(2);
    put(first, 1, 4096, 4096, 0xa3);
    await first.durable(1);
    await first.close();
    const handle = await open(path, 'r');
    assert.equal((await handle.stat()).size, MIN_INTENT_LOG_BYTES);
    await handle.close();

    const again = await IntentLog.open(path, MIN_INTENT_LOG_BYTES, log);
    const found = [];
    for (const r of again.recovered)
      found.push([r.volumeId, r.offset, r.length, (await again.recordContent(r)).payload[0]]);
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
      waits.push(intents.durable(1 + (i % 3)));
    }
    await Promise.all(waits);
    // At most two batches: the first record's, and everything staged while it synced.
    assert.ok(new Set(waits).size <= 2, `${new Set(waits).size} batches`);
    await intents.close();
    assert.equal((await IntentLog.peek(path)).length, 50);
  });

  test('the default size is a sixteenth of the store, from 64 MiB to 256 MiB', () => {
    assert.equal(defaultIntentLogBytes(256 * MiB), 64 * MiB);
    assert.equal(defaultIntentLogBytes(1024 * MiB), 64 * MiB);
    assert.equal(defaultIntentLogBytes(2048 * MiB), 128 * MiB);
    assert.equal(defaultIntentLogBytes(3072 * MiB + 12345), 192 * MiB);
    assert.equal(defaultIntentLogBytes(8192 * MiB), 256 * MiB);
    assert.equal(defaultIntentLogBytes(2 ** 50), 256 * MiB);
  });

  test('a log smaller than asked for is replayed at its size, then grows; a larger one stays', async () => {
    const path = join(root, 'grow.log');
    const small = await IntentLog.open(path, MIN_INTENT_LOG_BYTES, log);
    await small.startAfterReplay();
    put(small, 1, 0, 4096, 0x31);
    await small.durable(1);
    await small.close();

    const grown = await IntentLog.open(path, 2 * MIN_INTENT_LOG_BYTES, log);
    assert.equal(grown.fileBytes, MIN_INTENT_LOG_BYTES, 'the old size until replay is done');
    assert.deepEqual(
      grown.recovered.map((r) => r.offset),
      [0],
    );
    await grown.startAfterReplay();
    assert.equal(grown.fileBytes, 2 * MIN_INTENT_LOG_BYTES);
    put(grown, 1, 4096, 4096, 0x32);
    await grown.durable(1);
    await grown.close();
    const handle = await open(path, 'r');
    assert.equal((await handle.stat()).size, 2 * MIN_INTENT_LOG_BYTES);
    await handle.close();

    const again = await IntentLog.open(path, MIN_INTENT_LOG_BYTES, log);
    assert.equal(again.fileBytes, 2 * MIN_INTENT_LOG_BYTES, 'never shrunk');
    assert.deepEqual(
      again.recovered.map((r) => r.offset),
      [4096],
    );
    await again.close();
  });

  test('a torn or damaged tail ends the scan; what came before it stands', async () => {
    const path = join(root, 'torn.log');
    const intents = await IntentLog.open(path, MIN_INTENT_LOG_BYTES, log);
    await intents.startAfterReplay();
    for (let i = 0; i < 3; i++) {
      put(intents, 1, i * 4096, 4096, 0x10 + i);
      await intents.durable(1);
    }
    await intents.close();
    const handle = await open(path, 'r+');
    const third = RECORDS_START + 2 * recordBytes(0, 4096);
    await handle.write(Buffer.from([0xff]), 0, 1, third + RECORD_HEADER_BYTES + 100);
    await handle.close();
    assert.deepEqual(
      (await replayable(path)).map(([, first]) => first),
      [0x10, 0x11],
    );
  });

  test('a record is read again for replay, not kept from the scan; one damaged since is refused', async () => {
    const path = join(root, 'reread.log');
    const intents = await IntentLog.open(path, MIN_INTENT_LOG_BYTES, log);
    await intents.startAfterReplay();
    put(intents, 1, 0, 4096, 0x21);
    put(intents, 1, 4096, 4096, 0x22);
    await intents.durable(1);
    await intents.close();
    const reopened = await IntentLog.open(path, MIN_INTENT_LOG_BYTES, log);
    try {
      const [first, second] = reopened.recovered;
      assert.equal(first.position, RECORDS_START);
      assert.equal(second.position, RECORDS_START + recordBytes(0, 4096));
      assert.ok(!('payload' in first), 'the scan keeps no payload');
      const handle = await open(path, 'r+');
      await handle.write(Buffer.from([0xff]), 0, 1, second.position + RECORD_HEADER_BYTES + 7);
      await handle.close();
      const content = await reopened.recordContent(first);
      assert.equal(content.payload.length, 4096);
      assert.ok(content.payload.every((b) => b === 0x21));
      await assert.rejects(reopened.recordContent(second), /changed since the scan/);
    } finally {
      await reopened.close();
    }
  });

  test('the log wraps over settled records; a scan finds every needed one, in order', async () => {
    const path = join(root, 'wrap.log');
    const intents = await IntentLog.open(path, MIN_INTENT_LOG_BYTES, log);
    await intents.startAfterReplay();
    const record = recordBytes(0, MiB);
    const perLap = Math.floor((MIN_INTENT_LOG_BYTES - RECORDS_START) / record);
    // Volume 1 writes and commits steadily for two and a half laps; volume 2
    // logs one record two laps in and never commits.
    let volume2Seq = -1;
    for (let i = 0; i < (perLap * 5) / 2; i++) {
      if (i === perLap * 2) {
        volume2Seq = intents.nextSeqToStage;
        put(intents, 2, 0, 4096, 0xb2);
        await intents.durable(2);
      }
      const seq = intents.nextSeqToStage;
      assert.ok(intents.fits(record), `record ${i} fits`);
      put(intents, 1, i * MiB, MiB, i & 0xff);
      await intents.durable(1);
      intents.settled(1, seq + 1);
    }
    await intents.close();
    const found = await IntentLog.peek(path);
    const seqs = found.map((r) => r.seq);
    assert.deepEqual(
      seqs,
      seqs.map((_, i) => seqs[0] + i),
      'consecutive',
    );
    assert.equal(seqs.at(-1), intents.nextSeqToStage - 1, 'up to the last one written');
    assert.ok(seqs[0] <= volume2Seq, 'from the oldest needed record or before it');
    assert.ok(found.length < (perLap * 5) / 2, 'not the whole history: the file was written over');
    assert.deepEqual(
      (await replayable(path)).filter(([volume]) => volume === 2).map(([, first]) => first),
      [0xb2],
    );
  });

  test('a needed record holds the tail: the log fills, and has room again once it is settled', async () => {
    const path = join(root, 'held.log');
    const intents = await IntentLog.open(path, MIN_INTENT_LOG_BYTES, log);
    await intents.startAfterReplay();
    let asked = 0;
    intents.register(2, () => asked++);
    put(intents, 2, 0, 4096, 0xc2);
    await intents.durable(2);
    const record = recordBytes(0, MiB);
    let written = 0;
    while (intents.fits(record)) {
      const seq = intents.nextSeqToStage;
      put(intents, 1, written * MiB, MiB, 0xc1);
      await intents.durable(1);
      intents.settled(1, seq + 1);
      written++;
      assert.ok(written < 100, 'the log never fills');
    }
    assert.equal(written, Math.floor((MIN_INTENT_LOG_BYTES - RECORDS_START - 4160) / record));
    assert.ok(asked >= 1, 'volume 2 was asked to commit');
    intents.settled(2, intents.nextSeqToStage);
    assert.ok(intents.fits(record), 'room again');
    assert.equal(intents.usedBytes(), 0);
    put(intents, 1, 0, MiB, 0xc3);
    await intents.durable(1);
    await intents.close();
    // The wrapped batch moved the header's tail to itself: it is all a scan finds.
    assert.deepEqual(await replayable(path), [[1, 0xc3]]);
  });

  test('past half full the live volumes are asked to commit, again after each commit lands', async () => {
    const path = join(root, 'press.log');
    const intents = await IntentLog.open(path, MIN_INTENT_LOG_BYTES, log);
    await intents.startAfterReplay();
    let asked = 0;
    intents.register(1, () => asked++);
    const record = recordBytes(0, MiB);
    const half = Math.ceil((MIN_INTENT_LOG_BYTES - RECORDS_START) / 2 / record);
    for (let i = 0; i < half - 1; i++) {
      assert.ok(intents.fits(record));
      put(intents, 1, i * MiB, MiB, 1);
      await intents.durable(1);
    }
    assert.equal(asked, 0, 'below half: nobody asked');
    intents.fits(record);
    intents.fits(record);
    assert.equal(asked, 1, 'past half: asked once');
    intents.settled(1, 1); // a commit that holds none of them
    intents.fits(record);
    assert.equal(asked, 2, 'asked again after a commit landed');
    await intents.close();
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
