/**
 * HolderLog on a real file: records held across restarts until covered,
 * seals that refuse older writers and outlive restarts and epochs, a seal
 * that waits for appends already staged, a torn batch never followed by a
 * stale record, paging, full logs, retries; and holder-record's bytes.
 */
import assert from 'node:assert/strict';
import { mkdtemp, open, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { ChecksumError, IoError, StaleTokenError } from '../../common/errors.js';
import { logger } from '../../common/log.js';
import { hasher, type Hasher } from '../blocks/hash.js';
import * as w from '../peer/wire.js';
import { HOLDER_LOG_FILE, HolderLog, MIN_HOLDER_LOG_BYTES } from './holder-log.js';
import {
  HOLDER_FRAME_BYTES,
  HOLDER_RECORDS_START,
  KIND_INTENT,
  decodeHolderFrame,
  decodeHolderHeader,
  encodeHolderFrame,
  encodeHolderHeader,
  holderFrameIntact,
} from './holder-record.js';

const log = logger('holder-log-test');
const hex = (s: string) => Buffer.from(s.replace(/\s+/g, ''), 'hex');
let hash: Hasher;

/** A stamped plain intent record of `length` bytes of `fill`. */
function intent(
  volumeId: number,
  token: number,
  seq: number,
  length = 4096,
  fill = seq,
): w.IntentRecord {
  const bytes = Buffer.alloc(w.INTENT_RECORD_HEADER_BYTES + length);
  w.encodeIntentHeader(bytes, 0, { volumeId, flags: 0, token, seq, offset: seq * length, length });
  bytes.fill(fill & 0xff, w.INTENT_RECORD_HEADER_BYTES);
  w.stampIntentRecord(bytes, 0, hash);
  return w.decodeIntentRecord(bytes, 0, bytes.length);
}

/** Every record a seal at `token` answers, all pages, as (token, seq) pairs; checked intact. */
async function sealAll(holder: HolderLog, volumeId: number, token: number): Promise<string[]> {
  const got: string[] = [];
  for (let skip = 0; ;) {
    const page = await holder.seal({ volumeId, token, skip });
    for (const bytes of page.records) {
      const r = w.decodeIntentRecord(bytes, 0, bytes.length);
      assert.ok(w.intentRecordIntact(r, hash), 'a held record comes back intact');
      got.push(`${r.token}/${r.seq}`);
    }
    skip += page.records.length;
    if (!page.more) return got;
  }
}

describe('holder-record bytes', () => {
  before(async () => {
    hash = await hasher();
  });

  test('the file header is laid out as the table says', () => {
    const out = Buffer.alloc(64);
    const header = { epoch: 3, firstSeq: 2 ** 32 + 1, fileBytes: 64 << 20, tailPosition: 0x12345 };
    encodeHolderHeader(header, out, hash);
    const rest = hex(
      '54484c48 0001 0000 00000003 00000000 00000001 00000001 00000000 04000000' +
        '00000000 00012345' +
        '00'.repeat(16),
    );
    const { lo, hi } = hash.hash64(rest);
    assert.deepEqual(out.subarray(8), rest);
    assert.deepEqual([out.readUInt32BE(0), out.readUInt32BE(4)], [hi, lo]);
    assert.deepEqual(decodeHolderHeader(out, hash), header);
    out[20] = 1;
    assert.equal(decodeHolderHeader(out, hash), undefined);
  });

  test('a tail at the start of the records is written as 0, as headers from before the ring were', () => {
    const out = Buffer.alloc(64);
    const header = {
      epoch: 1,
      firstSeq: 5,
      fileBytes: 1 << 24,
      tailPosition: HOLDER_RECORDS_START,
    };
    encodeHolderHeader(header, out, hash);
    assert.deepEqual(out.subarray(40, 64), Buffer.alloc(24));
    assert.deepEqual(decodeHolderHeader(out, hash), header);
  });

  test('a header whose tail is past the file or inside the header page is refused', () => {
    const out = Buffer.alloc(64);
    for (const tailPosition of [1 << 24, (1 << 24) + 4096, 100]) {
      encodeHolderHeader({ epoch: 1, firstSeq: 1, fileBytes: 1 << 24, tailPosition }, out, hash);
      assert.equal(decodeHolderHeader(out, hash), undefined, String(tailPosition));
    }
  });

  test('a frame checksums itself and the body’s first 48 bytes only', () => {
    const body = intent(7, 3, 1, 100).bytes;
    const frame = Buffer.alloc(HOLDER_FRAME_BYTES);
    encodeHolderFrame(frame, KIND_INTENT, 2, 9, body, hash);
    assert.deepEqual(
      frame.subarray(8),
      hex('54484c52 01 000000 00000002 00000094 00000000 00000009'),
    );
    const { lo, hi } = hash.hash64(Buffer.concat([frame.subarray(8), body.subarray(0, 48)]));
    assert.deepEqual([frame.readUInt32BE(0), frame.readUInt32BE(4)], [hi, lo]);
    assert.deepEqual(decodeHolderFrame(frame), { kind: 1, epoch: 2, bodyBytes: 148, seq: 9 });
    body[120] ^= 1; // payload: the intent record's own checksum notices, not the frame's
    assert.ok(holderFrameIntact(frame, body, hash));
    body[20] ^= 1;
    assert.ok(!holderFrameIntact(frame, body, hash));
    frame[12] = 3;
    assert.equal(decodeHolderFrame(frame), undefined, 'unknown kind');
  });
});

describe('HolderLog', { timeout: 60_000 }, () => {
  let root: string;
  let n = 0;
  const dir = async () => {
    const d = join(root, `h${n++}`);
    await rm(d, { recursive: true, force: true });
    await import('node:fs/promises').then((fs) => fs.mkdir(d));
    return d;
  };
  before(async () => {
    hash = await hasher();
    root = await mkdtemp(join(tmpdir(), 'torus-holder-'));
  });
  after(async () => {
    await rm(root, { recursive: true, force: true });
  });

  test('records are held across a restart, in append order, until covered', async () => {
    const d = await dir();
    let holder = await HolderLog.open(d, MIN_HOLDER_LOG_BYTES, log);
    await holder.append([intent(7, 3, 1), intent(7, 3, 2)]);
    await holder.append([intent(8, 1, 1)]);
    await holder.append([intent(7, 3, 3, 100)]);
    await holder.close();
    holder = await HolderLog.open(d, MIN_HOLDER_LOG_BYTES, log);
    assert.equal(holder.stats.liveRecords, 4);
    await holder.covered({ volumeId: 7, token: 3, seq: 2 });
    assert.deepEqual(await sealAll(holder, 7, 4), ['3/2', '3/3']);
    await holder.close();
    holder = await HolderLog.open(d, MIN_HOLDER_LOG_BYTES, log);
    assert.deepEqual(await sealAll(holder, 7, 4), ['3/2', '3/3'], 'the COVERED note was logged');
    assert.deepEqual(await sealAll(holder, 8, 2), ['1/1']);
    await holder.close();
  });

  test('a seal refuses older writers from then on, across restarts, and answers only below it', async () => {
    const d = await dir();
    let holder = await HolderLog.open(d, MIN_HOLDER_LOG_BYTES, log);
    await holder.append([intent(7, 3, 1)]);
    assert.deepEqual(await sealAll(holder, 7, 5), ['3/1']);
    await assert.rejects(holder.append([intent(7, 4, 1)]), StaleTokenError);
    await holder.append([intent(7, 5, 1)]); // the new writer itself
    assert.deepEqual(
      await sealAll(holder, 7, 5),
      ['3/1'],
      'the sealer’s own records are not answered',
    );
    await holder.append([intent(9, 1, 1)]); // other volumes are not sealed
    await holder.append([intent(9, 3, 1)]);
    // No seal for volume 9, but a newer writer appends there: the older one is refused all the same.
    await assert.rejects(holder.append([intent(9, 1, 2)]), StaleTokenError);
    await holder.close();
    holder = await HolderLog.open(d, MIN_HOLDER_LOG_BYTES, log);
    await assert.rejects(holder.append([intent(7, 3, 2)]), StaleTokenError);
    assert.deepEqual(await sealAll(holder, 7, 6), ['3/1', '5/1']);
    assert.deepEqual(await sealAll(holder, 9, 4), ['1/1', '3/1']);
    await holder.close();
  });

  test('a seal waits for appends staged before it, and answers them', async () => {
    const d = await dir();
    const holder = await HolderLog.open(d, MIN_HOLDER_LOG_BYTES, log);
    // Large enough that writing it takes longer than the seal's own small synced file.
    const big = w.MAX_INTENT_LENGTH;
    const pending = holder.append([
      intent(7, 3, 1, big),
      intent(7, 3, 2, big),
      intent(7, 3, 3, big),
    ]);
    const sealed = sealAll(holder, 7, 4);
    await pending;
    assert.deepEqual(await sealed, ['3/1', '3/2', '3/3']);
    await holder.close();
  });

  test('a retried append is held once; a record that does not match its checksum is refused', async () => {
    const d = await dir();
    const holder = await HolderLog.open(d, MIN_HOLDER_LOG_BYTES, log);
    await holder.append([intent(7, 3, 1), intent(7, 3, 2)]);
    await holder.append([intent(7, 3, 1), intent(7, 3, 2), intent(7, 3, 3)]);
    const bad = intent(7, 3, 4);
    bad.payload[0] ^= 1;
    await assert.rejects(holder.append([bad]), ChecksumError);
    assert.deepEqual(await sealAll(holder, 7, 4), ['3/1', '3/2', '3/3']);
    await holder.close();
  });

  test('records covered no longer count as used, and stay covered across a restart', async () => {
    const d = await dir();
    let holder = await HolderLog.open(d, MIN_HOLDER_LOG_BYTES, log);
    await holder.append([intent(7, 3, 1), intent(7, 3, 2)]);
    await holder.covered({ volumeId: 7, token: 3, seq: 3 });
    assert.equal(holder.stats.liveRecords, 0);
    await holder.append([intent(7, 3, 3)]);
    // The live record's batch: the COVERED note staged before it, and it.
    const note = HOLDER_FRAME_BYTES + 20;
    assert.equal(holder.stats.usedBytes, note + HOLDER_FRAME_BYTES + 48 + 4096);
    await holder.close();
    holder = await HolderLog.open(d, MIN_HOLDER_LOG_BYTES, log);
    assert.deepEqual(await sealAll(holder, 7, 4), ['3/3']);
    await holder.close();
  });

  test('a writer that appends and is covered steadily goes round the ring, never full, across restarts', async () => {
    const d = await dir();
    let holder = await HolderLog.open(d, MIN_HOLDER_LOG_BYTES, log);
    const big = w.MAX_INTENT_LENGTH;
    // Each append is an eighth of the file; a commit covers all but the newest two records,
    // as one that started before the last FLUSH would.
    let seq = 0;
    let wraps = 0;
    for (let round = 0; round < 30; round++) {
      await holder.append([intent(7, 3, ++seq, big, round)]);
      await holder.covered({ volumeId: 7, token: 3, seq: seq - 1 });
      if (round % 5 === 4) {
        wraps += holder.stats.wraps;
        await holder.close();
        holder = await HolderLog.open(d, MIN_HOLDER_LOG_BYTES, log);
        assert.equal(holder.stats.liveRecords, 2, `round ${round}: the two newest, found again`);
      }
    }
    wraps += holder.stats.wraps;
    assert.ok(wraps >= 3, `went round the ring (${wraps} times)`);
    assert.deepEqual(await sealAll(holder, 7, 4), [`3/${seq - 1}`, `3/${seq}`]);
    await holder.close();
    holder = await HolderLog.open(d, MIN_HOLDER_LOG_BYTES, log);
    assert.deepEqual(await sealAll(holder, 7, 4), [`3/${seq - 1}`, `3/${seq}`]);
    await holder.close();
  });

  test('a record held at the tail stops the ring: ENOSPC, then room again once it is covered', async () => {
    const d = await dir();
    const holder = await HolderLog.open(d, MIN_HOLDER_LOG_BYTES, log);
    const big = w.MAX_INTENT_LENGTH;
    await holder.append([intent(8, 1, 1)]); // volume 8's record stays live: the tail
    let seq = 0;
    let refused: unknown;
    while (!refused && seq < 40) {
      await holder.append([intent(7, 3, ++seq, big)]).catch((err: unknown) => (refused = err));
      if (!refused) await holder.covered({ volumeId: 7, token: 3, seq: seq + 1 });
    }
    assert.ok(refused instanceof IoError && refused.errno === 'ENOSPC', String(refused));
    await holder.covered({ volumeId: 8, token: 1, seq: 2 });
    // The refused record was not taken for held: the same append goes through now.
    await holder.append([intent(7, 3, seq, big)]);
    assert.ok(holder.stats.wraps >= 1, 'written at the start again');
    assert.deepEqual(await sealAll(holder, 7, 4), [`3/${seq}`]);
    assert.deepEqual(await sealAll(holder, 8, 2), []);
    await holder.close();
  });

  test('a torn batch: what followed it is never read after new records land there', async () => {
    const d = await dir();
    let holder = await HolderLog.open(d, MIN_HOLDER_LOG_BYTES, log);
    await holder.append([intent(7, 3, 1)]);
    // Two records in one batch: tear the first, leave the second intact, as a crash mid-write can.
    await holder.append([intent(7, 3, 2), intent(7, 3, 3)]);
    await holder.close();
    const file = await open(join(d, HOLDER_LOG_FILE), 'r+');
    const recordBytes = HOLDER_FRAME_BYTES + 48 + 4096;
    await file.write(Buffer.from([0xff]), 0, 1, HOLDER_RECORDS_START + recordBytes + 40);
    await file.close();
    holder = await HolderLog.open(d, MIN_HOLDER_LOG_BYTES, log);
    assert.deepEqual(await sealAll(holder, 7, 4), ['3/1']);
    // A new record of the same size lands where the torn one was; the old third must not follow it.
    await holder.append([intent(9, 1, 1)]);
    await holder.close();
    holder = await HolderLog.open(d, MIN_HOLDER_LOG_BYTES, log);
    assert.deepEqual(await sealAll(holder, 7, 4), ['3/1']);
    assert.deepEqual(await sealAll(holder, 9, 2), ['1/1']);
    await holder.close();
  });

  test('a torn batch that wrapped to the start: what followed it there is never read after new records land', async () => {
    const d = await dir();
    let holder = await HolderLog.open(d, MIN_HOLDER_LOG_BYTES, log);
    const big = w.MAX_INTENT_LENGTH;
    // Eight large records, each covered once the next is held: the head ends near the file's end.
    let seq = 0;
    for (let i = 0; i < 8; i++) {
      await holder.append([intent(7, 3, ++seq, big)]);
      await holder.covered({ volumeId: 7, token: 3, seq });
    }
    // Closed and opened again so that the last COVERED note is written now, not in the next batch.
    await holder.close();
    holder = await HolderLog.open(d, MIN_HOLDER_LOG_BYTES, log);
    const large = 2 << 20; // more than is left before the end
    // Two records in one batch, too large for what is left: written at the start.
    await holder.append([intent(7, 3, 9, large), intent(7, 3, 10)]);
    assert.equal(holder.stats.wraps, 1);
    await holder.close();
    // Tear the first of them, leave the second intact, as a crash mid-write can.
    const file = await open(join(d, HOLDER_LOG_FILE), 'r+');
    await file.write(Buffer.from([0xff]), 0, 1, HOLDER_RECORDS_START + 40);
    await file.close();
    holder = await HolderLog.open(d, MIN_HOLDER_LOG_BYTES, log);
    assert.equal(holder.stats.liveRecords, 1, 'the eighth; neither after the torn one');
    // A record of the same size lands at the start again, numbered as the torn one was.
    await holder.append([intent(9, 1, 1, large)]);
    assert.equal(holder.stats.wraps, 1);
    await holder.close();
    holder = await HolderLog.open(d, MIN_HOLDER_LOG_BYTES, log);
    assert.deepEqual(await sealAll(holder, 9, 2), ['1/1']);
    assert.deepEqual(
      await sealAll(holder, 7, 4),
      ['3/8'],
      'the stale second one does not follow it',
    );
    await holder.close();
  });

  test('a deleted volume’s records are forgotten, across a restart, and no longer stop the ring', async () => {
    const d = await dir();
    let holder = await HolderLog.open(d, MIN_HOLDER_LOG_BYTES, log);
    await holder.append([intent(8, 1, 1), intent(8, 1, 2)]); // volume 8: its writer is gone, then it is deleted
    await holder.append([intent(7, 3, 1)]);
    assert.deepEqual(holder.heldVolumes().sort(), [7, 8]);
    assert.equal(holder.forgetVolumes([8, 9]), 2, 'volume 9 had nothing here');
    assert.deepEqual(holder.heldVolumes(), [7]);
    await holder.close();
    holder = await HolderLog.open(d, MIN_HOLDER_LOG_BYTES, log);
    assert.deepEqual(holder.heldVolumes(), [7], 'the forgetting was logged');
    // Volume 7 appends and is covered steadily: the ring goes round past where volume 8's records were.
    const big = w.MAX_INTENT_LENGTH;
    for (let seq = 2; seq <= 20; seq++) {
      await holder.append([intent(7, 3, seq, big)]);
      await holder.covered({ volumeId: 7, token: 3, seq });
    }
    assert.equal(holder.stats.refusals, 0);
    assert.deepEqual(await sealAll(holder, 7, 4), ['3/20']);
    await holder.close();
  });

  test('a seal’s answer comes in pages within a frame', async () => {
    const d = await dir();
    const holder = await HolderLog.open(d, MIN_HOLDER_LOG_BYTES, log);
    const big = w.MAX_INTENT_LENGTH;
    for (let seq = 1; seq <= 5; seq++) await holder.append([intent(7, 3, seq, big)]);
    const first = await holder.seal({ volumeId: 7, token: 4, skip: 0 });
    assert.equal(first.records.length, 3);
    assert.equal(first.more, true);
    assert.ok(w.sealReplyPayloadBytes(first.records) <= w.MAX_PAYLOAD_BYTES);
    assert.deepEqual(await sealAll(holder, 7, 4), ['3/1', '3/2', '3/3', '3/4', '3/5']);
    await holder.close();
  });

  test('a full log refuses appends with ENOSPC, keeping what it holds', async () => {
    const d = await dir();
    const holder = await HolderLog.open(d, MIN_HOLDER_LOG_BYTES, log);
    let seq = 0;
    let refused: unknown;
    while (!refused && seq < 20) {
      await holder
        .append([intent(7, 3, ++seq, w.MAX_INTENT_LENGTH)])
        .catch((err: unknown) => (refused = err));
    }
    assert.ok(refused instanceof IoError && refused.errno === 'ENOSPC', String(refused));
    assert.equal(holder.stats.refusals, 1);
    assert.equal((await sealAll(holder, 7, 4)).length, seq - 1);
    await holder.close();
  });
});
