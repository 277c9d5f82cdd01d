/**
 * The intent log's record and file-header codecs, byte by byte: where each
 * field sits, what the checksum covers, and that damaged or foreign bytes
 * never decode as a record; and which records a replay applies.
 */
import assert from 'node:assert/strict';
import { before, describe, test } from 'node:test';
import { hasher, type Hasher } from '../blocks/hash.js';
import {
  FILE_HEADER_BYTES,
  FLAG_COMMITTED,
  FLAG_PARTIAL,
  FLAG_SEALED,
  FLAG_ZEROS,
  RECORD_HEADER_BYTES,
  RECORDS_START,
  SEAL_OVERHEAD,
  decodeFileHeader,
  decodeRecordHeader,
  encodeFileHeader,
  encodeRecordHeader,
  recordBytes,
  recordIsIntact,
  sealAad,
  stampRecord,
} from './record.js';
import { recordsToReplay } from './replay.js';
import { IntentSealer } from './seal.js';

describe('intent-log record codec', () => {
  let hash: Hasher;
  before(async () => {
    hash = await hasher();
  });

  function record(payload: Buffer, fields: Partial<Parameters<typeof encodeRecordHeader>[0]> = {}) {
    const out = Buffer.alloc(RECORD_HEADER_BYTES + payload.length);
    encodeRecordHeader(
      {
        flags: 0,
        volumeId: 7,
        coveredBy: 0x1_0000_0003,
        offset: 0x2_0000_1000,
        length: payload.length,
        ...fields,
      },
      out,
      0,
    );
    payload.copy(out, RECORD_HEADER_BYTES);
    stampRecord(out, 0, 5, 0x3_0000_0009, hash);
    return out;
  }

  test('record header: every field at its offset, little-endian, u64 as lo/hi', () => {
    const out = record(Buffer.from('abcd'));
    assert.equal(out.toString('latin1', 8, 12), 'TILR');
    assert.equal(out.readUInt16LE(12), 1); // format version
    assert.equal(out.readUInt16LE(14), 0); // flags
    assert.equal(out.readUInt32LE(16), 5); // epoch
    assert.equal(out.readUInt32LE(20), 4); // payload bytes
    assert.deepEqual([out.readUInt32LE(24), out.readUInt32LE(28)], [9, 3]); // seq
    assert.equal(out.readUInt32LE(32), 7); // volume id
    assert.equal(out.readUInt32LE(36), 0);
    assert.deepEqual([out.readUInt32LE(40), out.readUInt32LE(44)], [3, 1]); // coveredBy
    assert.deepEqual([out.readUInt32LE(48), out.readUInt32LE(52)], [0x1000, 2]); // offset
    assert.equal(out.readUInt32LE(56), 4); // length
    assert.equal(out.readUInt32LE(60), 0);
    assert.equal(out.toString('latin1', 64), 'abcd');
    const { lo, hi } = hash.hash64(out.subarray(8));
    assert.deepEqual([out.readUInt32LE(0), out.readUInt32LE(4)], [lo, hi]);
  });

  test('decode gives back what was encoded', () => {
    const out = record(Buffer.from('abcd'));
    const header = decodeRecordHeader(out, 0);
    assert.deepEqual(header, {
      flags: 0,
      epoch: 5,
      payloadBytes: 4,
      seq: 0x3_0000_0009,
      volumeId: 7,
      coveredBy: 0x1_0000_0003,
      offset: 0x2_0000_1000,
      length: 4,
    });
    assert.ok(recordIsIntact(out, 0, header, hash));
  });

  test('any flipped byte, header or payload, fails the checksum or the decode', () => {
    const good = record(Buffer.from('payload bytes'));
    for (let i = 0; i < good.length; i++) {
      const bad = Buffer.from(good);
      bad[i] ^= 0x40;
      const header = decodeRecordHeader(bad, 0);
      assert.ok(!header || !recordIsIntact(bad, 0, header, hash), `byte ${i}`);
    }
  });

  test('a torn record (payload cut short) is not intact; zeros are not a record', () => {
    const good = record(Buffer.alloc(100, 1));
    const header = decodeRecordHeader(good, 0)!;
    assert.ok(!recordIsIntact(good.subarray(0, good.length - 1), 0, header, hash));
    assert.equal(decodeRecordHeader(Buffer.alloc(RECORD_HEADER_BYTES), 0), undefined);
  });

  test('sizes: zeros records have no payload, sealed ones nonce and tag', () => {
    assert.equal(recordBytes(0, 4096), RECORD_HEADER_BYTES + 4096);
    assert.equal(recordBytes(FLAG_ZEROS, 1 << 20), RECORD_HEADER_BYTES);
    assert.equal(recordBytes(FLAG_SEALED, 4096), RECORD_HEADER_BYTES + 4096 + SEAL_OVERHEAD);
    const zeros = Buffer.alloc(RECORD_HEADER_BYTES);
    const payload = encodeRecordHeader(
      { flags: FLAG_ZEROS, volumeId: 1, coveredBy: 1, offset: 0, length: 1 << 20 },
      zeros,
      0,
    );
    assert.equal(payload, 0);
    stampRecord(zeros, 0, 1, 1, hash);
    assert.equal(decodeRecordHeader(zeros, 0)?.length, 1 << 20);
  });

  test('bad flags and lengths are refused on encode and never decoded', () => {
    const out = Buffer.alloc(RECORD_HEADER_BYTES);
    const base = { volumeId: 1, coveredBy: 1, offset: 0, length: 4096 };
    assert.throws(() => encodeRecordHeader({ ...base, flags: FLAG_ZEROS | FLAG_SEALED }, out, 0));
    assert.throws(() => encodeRecordHeader({ ...base, flags: 8 }, out, 0));
    assert.throws(() => encodeRecordHeader({ ...base, flags: 0, length: 0 }, out, 0));
    const good = record(Buffer.alloc(4));
    good.writeUInt16LE(8, 14);
    assert.equal(decodeRecordHeader(good, 0), undefined);
  });

  test('file header: fields, checksum, and damage', () => {
    const out = Buffer.alloc(FILE_HEADER_BYTES);
    const header = {
      epoch: 3,
      firstSeq: 0x1_0000_0002,
      fileBytes: 64 << 20,
      tailPosition: 0x10_2000,
    };
    encodeFileHeader(header, out, hash);
    assert.equal(out.toString('latin1', 8, 12), 'TILH');
    assert.equal(out.readUInt16LE(12), 1);
    assert.equal(out.readUInt32LE(16), 3);
    assert.deepEqual([out.readUInt32LE(24), out.readUInt32LE(28)], [2, 1]);
    assert.equal(out.readUInt32LE(32), 64 << 20);
    assert.deepEqual([out.readUInt32LE(40), out.readUInt32LE(44)], [0x10_2000, 0]);
    assert.ok(out.subarray(48).every((b) => b === 0));
    assert.deepEqual(decodeFileHeader(out, hash), header);
    for (let i = 0; i < FILE_HEADER_BYTES; i++) {
      const bad = Buffer.from(out);
      bad[i] ^= 1;
      assert.equal(decodeFileHeader(bad, hash), undefined, `byte ${i}`);
    }
  });

  test('file header: a tail at RECORDS_START is written as 0, as logs that never wrapped have it', () => {
    const out = Buffer.alloc(FILE_HEADER_BYTES);
    const header = { epoch: 1, firstSeq: 1, fileBytes: 16 << 20, tailPosition: RECORDS_START };
    encodeFileHeader(header, out, hash);
    assert.deepEqual([out.readUInt32LE(40), out.readUInt32LE(44)], [0, 0]);
    assert.deepEqual(decodeFileHeader(out, hash), header);
  });

  test('file header: a tail outside the records area does not decode', () => {
    const out = Buffer.alloc(FILE_HEADER_BYTES);
    for (const tailPosition of [100, 16 << 20, (16 << 20) + 4096]) {
      encodeFileHeader({ epoch: 1, firstSeq: 1, fileBytes: 16 << 20, tailPosition }, out, hash);
      assert.equal(decodeFileHeader(out, hash), undefined, `tail ${tailPosition}`);
    }
  });

  test('a sealed payload opens only with its header: the aad binds it to the record', () => {
    const key = Buffer.alloc(32, 9);
    const sealer = new IntentSealer(key);
    const plain = Buffer.from('secret volume bytes');
    const out = Buffer.alloc(recordBytes(FLAG_SEALED, plain.length));
    encodeRecordHeader(
      { flags: FLAG_SEALED, volumeId: 2, coveredBy: 4, offset: 8192, length: plain.length },
      out,
      0,
    );
    sealer.seal(plain, out, RECORD_HEADER_BYTES, sealAad(out, 0));
    stampRecord(out, 0, 1, 1, hash);
    assert.ok(!out.includes(plain), 'the plaintext is not in the record');
    const payload = out.subarray(RECORD_HEADER_BYTES);
    assert.deepEqual(sealer.open(payload, sealAad(out, 0), 'test'), plain);
    const moved = Buffer.from(out);
    moved.writeUInt32LE(16384, 48); // another offset
    assert.throws(() => sealer.open(payload, sealAad(moved, 0), 'test'), /authentication/);
    assert.throws(() => new IntentSealer(Buffer.alloc(32, 1)).open(payload, sealAad(out, 0), 't'));
  });
});

describe('which records replay', () => {
  /** A record of volumeId; `offset` names data records, and is a commit marker's first uncovered seq. */
  const rec = (volumeId: number, coveredBy: number, flags = 0, offset = 0) => ({
    flags,
    epoch: 1,
    payloadBytes: 0,
    seq: 0,
    volumeId,
    coveredBy,
    offset,
    length: flags & (FLAG_COMMITTED | FLAG_PARTIAL) ? 0 : 4096,
  });
  /** Records numbered in log order from 100, as the log stamps them. */
  const logOf = (...records: ReturnType<typeof rec>[]) =>
    records.map((r, i) => ({ ...r, seq: 100 + i }));
  const replayed = (log: ReturnType<typeof rec>[], volumeId: number, generation: number) =>
    recordsToReplay(log, volumeId, generation).map((r) => r.offset);

  test("a volume's records above its committed generation, in log order; other volumes' never", () => {
    const log = logOf(rec(1, 3, 0, 1), rec(2, 9, 0, 2), rec(1, 4, 0, 3), rec(1, 4, FLAG_ZEROS, 4));
    assert.deepEqual(replayed(log, 1, 3), [3, 4]);
    assert.deepEqual(replayed(log, 1, 4), []);
    assert.deepEqual(replayed(log, 2, 0), [2]);
  });

  test('nothing numbered below the marker a version reaches, whatever its coveredBy', () => {
    // Captured while a commit that failed ran (coveredBy ran ahead to 5), then a flush committed
    // version 4 instead of logging: its marker says version 4 holds every record below seq 101.
    const log = logOf(rec(1, 5, 0, 1), rec(1, 4, FLAG_COMMITTED, 101), rec(1, 5, 0, 2));
    assert.deepEqual(replayed(log, 1, 4), [2]);
    // A marker the committed version does not reach (its commit was lost) cuts nothing.
    assert.deepEqual(replayed(log, 1, 3), [1, 2]);
  });

  test('a record captured while the commit ran comes before its marker and still replays', () => {
    // Commit of version 4 started when seq 101 was next; record 101 was captured meanwhile.
    const log = logOf(rec(1, 4, 0, 1), rec(1, 5, 0, 2), rec(1, 4, FLAG_COMMITTED, 101));
    assert.deepEqual(replayed(log, 1, 4), [2]);
    assert.deepEqual(replayed(log, 1, 5), []);
  });

  test('a partial version covers none of the records before its marker', () => {
    // Version 4 was committed from spilled blocks only: record 1 (coveredBy 4) may not be in it.
    const log = logOf(rec(1, 4, 0, 1), rec(1, 4, FLAG_PARTIAL), rec(1, 5, 0, 2), rec(2, 4, 0, 3));
    assert.deepEqual(replayed(log, 1, 4), [1, 2]);
    assert.deepEqual(replayed(log, 1, 5), []);
    // Another volume's partial marker says nothing of volume 2.
    assert.deepEqual(replayed(log, 2, 4), []);
    // Two partial versions in a row: the record waits for the full version after both.
    const twice = logOf(rec(1, 4, 0, 1), rec(1, 4, FLAG_PARTIAL), rec(1, 5, FLAG_PARTIAL));
    assert.deepEqual(replayed(twice, 1, 5), [1]);
    assert.deepEqual(replayed(twice, 1, 6), []);
  });

  test('a commit marker encodes with no payload and length 0, and nothing else may', () => {
    const out = Buffer.alloc(RECORD_HEADER_BYTES);
    const fields = { flags: FLAG_COMMITTED, volumeId: 1, coveredBy: 4, offset: 0, length: 0 };
    assert.equal(encodeRecordHeader(fields, out, 0), 0);
    assert.throws(() => encodeRecordHeader({ ...fields, length: 4096 }, out, 0));
    assert.throws(() =>
      encodeRecordHeader({ ...fields, flags: FLAG_COMMITTED | FLAG_ZEROS }, out, 0),
    );
  });
});
