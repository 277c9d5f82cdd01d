/**
 * Byte-exact checks of the replicated intent log's TBP messages
 * (wire-intents.ts). Expected bytes are written out by hand from the layout
 * in that file's header, not produced by the code under test; then round
 * trips, then every rejection.
 */
import { before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { StaleTokenError } from '../../common/errors.js';
import { hasher, type Hasher } from '../blocks/hash.js';
import * as w from './wire.js';

const hex = (s: string) => Buffer.from(s.replace(/\s+/g, ''), 'hex');

/** Record fields of volume 7, token 3, seq 1, offset 4096, length 3 ("abc"), as laid out from byte 8. */
const ABC_FIELDS =
  '00000007 0000 0000  0000000000000003  0000000000000001  0000000000001000  00000003 00000003';

let hash: Hasher;
before(async () => {
  hash = await hasher();
});

/** A stamped plain record of `data` (the encoder under test, checked byte by byte below). */
function record(fields: Partial<w.IntentFields> = {}, data = Buffer.from('abc')): Buffer {
  const f: w.IntentFields = {
    volumeId: 7,
    flags: 0,
    token: 3,
    seq: 1,
    offset: 4096,
    length: data.length,
    ...fields,
  };
  const out = Buffer.alloc(w.INTENT_RECORD_HEADER_BYTES + w.intentPayloadBytes(f.flags, f.length));
  w.encodeIntentHeader(out, 0, f);
  if (f.flags !== w.INTENT_ZEROS) data.copy(out, w.INTENT_RECORD_HEADER_BYTES);
  w.stampIntentRecord(out, 0, hash);
  return out;
}

/** The checksum field a record of these bytes from offset 8 on carries: xxh64, high half first. */
function checksumOf(rest: Buffer): Buffer {
  const { lo, hi } = hash.hash64(rest);
  const b = Buffer.alloc(8);
  b.writeUInt32BE(hi, 0);
  b.writeUInt32BE(lo, 4);
  return b;
}

const payloadError = (fn: () => unknown, pattern: RegExp) =>
  assert.throws(fn, (err: Error) => err instanceof w.TbpPayloadError && pattern.test(err.message));

describe('intent records', () => {
  it('are laid out as the table says, checksum of bytes 8.. high half first', () => {
    const rest = hex(ABC_FIELDS + '616263');
    assert.deepEqual(record(), Buffer.concat([checksumOf(rest), rest]));
  });

  it('carry no payload for zeros and nonce + ciphertext + tag when sealed', () => {
    const zeros = record({ flags: w.INTENT_ZEROS, length: 65536 });
    assert.equal(zeros.length, 48);
    assert.deepEqual(zeros.subarray(40, 48), hex('00010000 00000000'));
    assert.equal(zeros.readUInt16BE(12), 1);
    const sealed = record({ flags: w.INTENT_SEALED, length: 3 }, Buffer.alloc(31, 9));
    assert.equal(sealed.length, 48 + 3 + 28);
    assert.deepEqual(sealed.subarray(40, 48), hex('00000003 0000001f'));
    assert.deepEqual(w.intentAad(sealed, 0), sealed.subarray(8, 48));
  });

  it('decode to their fields with views into the bytes, and their checksum holds', () => {
    const bytes = record();
    const r = w.decodeIntentRecord(bytes, 0, bytes.length);
    assert.deepEqual(
      { ...r, bytes: undefined, payload: undefined },
      {
        volumeId: 7,
        flags: 0,
        token: 3,
        seq: 1,
        offset: 4096,
        length: 3,
        bytes: undefined,
        payload: undefined,
      },
    );
    assert.equal(r.bytes.buffer, bytes.buffer);
    assert.equal(r.payload.toString(), 'abc');
    assert.ok(w.intentRecordIntact(r, hash));
    bytes[49] ^= 1;
    assert.ok(!w.intentRecordIntact(w.decodeIntentRecord(bytes, 0, bytes.length), hash));
  });

  it('are refused when no record has such fields', () => {
    const enc = (f: Partial<w.IntentFields>) => () => record(f);
    assert.throws(enc({ flags: 4 }), /unknown intent flags 4/);
    assert.throws(enc({ flags: w.INTENT_ZEROS, length: 0 }), /intent length 0/);
    assert.throws(enc({ flags: w.INTENT_ZEROS, length: w.MAX_INTENT_LENGTH + 1 }), /intent length/);
    assert.throws(enc({ token: 0 }), /token 0/);
    assert.throws(enc({ seq: 0 }), /seq 0/);
    assert.throws(enc({ offset: 2 ** 53 }), /past 2\^53|not a u64/);
  });

  it('are refused on decode: shape, reserved bits, sizes, fields past 2^53, cut short', () => {
    const good = record();
    const with_ = (at: number, bytes: string) => {
      const b = Buffer.from(good);
      hex(bytes).copy(b, at);
      return () => w.decodeIntentRecord(b, 0, b.length);
    };
    payloadError(with_(12, '0004'), /unknown intent flags 4/);
    payloadError(with_(14, '0001'), /reserved bits/);
    payloadError(with_(40, '00000000'), /intent length 0/);
    payloadError(with_(44, '00000004'), /payload of 4 bytes for flags 0 and length 3/);
    payloadError(with_(16, '00200000'), /token past 2\^53/);
    payloadError(with_(24, '00000000 00000000'), /seq 0/);
    payloadError(with_(32, '00200000'), /offset past 2\^53/);
    payloadError(() => w.decodeIntentRecord(good, 0, 47), /cut short/);
    payloadError(() => w.decodeIntentRecord(good, 0, 50), /runs past the frame/);
  });
});

describe('INTENT_APPEND', () => {
  it('is a header, a count and the records as they are', () => {
    const r = record();
    const chunks = w.encodeIntentAppendFrame(5, [r]);
    assert.equal(chunks[1], r, 'the record is the caller’s buffer, not a copy');
    assert.deepEqual(
      Buffer.concat(chunks),
      Buffer.concat([hex('54425021 01 09 00 00 00000005 00000037  00000001'), r]),
    );
  });

  it('decodes to the records, views into the payload', () => {
    const a = record();
    const b = record({ seq: 2, flags: w.INTENT_ZEROS, offset: 0, length: 8192 });
    const payload = Buffer.concat(w.encodeIntentAppendFrame(1, [a, b])).subarray(w.HEADER_SIZE);
    const records = w.decodeIntentAppend(payload);
    assert.deepEqual(
      records.map((r) => [r.seq, r.flags, r.offset, r.length, r.bytes.length]),
      [
        [1, 0, 4096, 3, 51],
        [2, 1, 0, 8192, 48],
      ],
    );
    assert.equal(records[1].bytes.buffer, payload.buffer);
  });

  it('carries one volume and one token, refused otherwise on both sides', () => {
    assert.throws(
      () => w.encodeIntentAppendFrame(1, [record(), record({ volumeId: 8 })]),
      /one volume/,
    );
    assert.throws(
      () => w.encodeIntentAppendFrame(1, [record(), record({ token: 4 })]),
      /one token/,
    );
    assert.throws(() => w.encodeIntentAppendFrame(1, []), /0 records/);
    const mixed = Buffer.concat([hex('00000002'), record(), record({ token: 2 ** 32 + 3 })]);
    payloadError(() => w.decodeIntentAppend(mixed), /more than one volume or token/);
  });

  it('refuses counts the payload cannot hold, trailing bytes, and no count', () => {
    payloadError(() => w.decodeIntentAppend(hex('000000')), /without a record count/);
    payloadError(() => w.decodeIntentAppend(hex('00000000')), /of 0 records/);
    payloadError(() => w.decodeIntentAppend(hex('00002001')), /of 8193 records/);
    payloadError(
      () => w.decodeIntentAppend(Buffer.concat([hex('00000002'), record()])),
      /2 intent records in 51 bytes/,
    );
    payloadError(
      () => w.decodeIntentAppend(Buffer.concat([hex('00000001'), record(), hex('00')])),
      /1 bytes after the last intent record/,
    );
  });

  it('answers OK with a flags word', () => {
    const buf = Buffer.alloc(w.INTENT_APPEND_REPLY_SIZE);
    w.encodeIntentAppendReply(buf, 0, 9, w.APPEND_PRESSURE);
    assert.deepEqual(buf, hex('54425021 01 09 01 00 00000009 00000004  00000001'));
    assert.equal(w.decodeIntentAppendReply(buf.subarray(w.HEADER_SIZE)), 1);
    payloadError(() => w.decodeIntentAppendReply(hex('00')), /1 bytes, expected 4/);
  });
});

describe('INTENT_SEAL', () => {
  it('asks with volume, token and skip', () => {
    const frame = w.encodeIntentSeal(2, { volumeId: 7, token: 2 ** 32 + 5, skip: 3 });
    assert.deepEqual(
      frame,
      hex('54425021 01 0a 00 00 00000002 00000010  00000007 00000001 00000005 00000003'),
    );
    assert.deepEqual(w.decodeIntentSeal(frame.subarray(w.HEADER_SIZE)), {
      volumeId: 7,
      token: 2 ** 32 + 5,
      skip: 3,
    });
    payloadError(
      () => w.decodeIntentSeal(hex('00000007 00000000 00000000 00000000')),
      /seal token 0/,
    );
    payloadError(() => w.decodeIntentSeal(hex('00000007')), /4 bytes, expected 16/);
  });

  it('answers a page of records: count, more, the records as they are', () => {
    const a = record();
    const chunks = w.encodeIntentSealReply(2, { records: [a], more: true });
    assert.equal(chunks[1], a);
    const frame = Buffer.concat(chunks);
    assert.deepEqual(
      frame,
      Buffer.concat([hex('54425021 01 0a 01 00 00000002 0000003b  00000001 01 000000'), a]),
    );
    const page = w.decodeIntentSealReply(frame.subarray(w.HEADER_SIZE));
    assert.equal(page.more, true);
    assert.deepEqual(page.records[0].bytes, a);
    const empty = w.decodeIntentSealReply(
      Buffer.concat(w.encodeIntentSealReply(1, { records: [], more: false })).subarray(16),
    );
    assert.deepEqual(empty, { records: [], more: false });
    payloadError(() => w.decodeIntentSealReply(hex('00000000 02 000000')), /unknown bits/);
    payloadError(
      () => w.decodeIntentSealReply(hex('00000001 00 000000')),
      /1 intent records in 0 bytes/,
    );
    payloadError(() => w.decodeIntentSealReply(hex('0000')), /cut short/);
  });
});

describe('INTENT_COVERED', () => {
  it('says volume, token and seq', () => {
    const frame = w.encodeIntentCovered(4, { volumeId: 7, token: 3, seq: 12 });
    assert.deepEqual(
      frame,
      hex('54425021 01 0b 00 00 00000004 00000014  00000007 00000000 00000003 00000000 0000000c'),
    );
    assert.deepEqual(w.decodeIntentCovered(frame.subarray(w.HEADER_SIZE)), {
      volumeId: 7,
      token: 3,
      seq: 12,
    });
    payloadError(() => w.decodeIntentCovered(hex('00')), /1 bytes, expected 20/);
  });
});

describe('names and statuses', () => {
  it('knows the three opcodes and FENCED, which a stale token maps to', () => {
    assert.deepEqual([9, 10, 11].map(w.opName), [
      'OP_INTENT_APPEND',
      'OP_INTENT_SEAL',
      'OP_INTENT_COVERED',
    ]);
    assert.equal(w.statusName(8), 'STATUS_FENCED');
    assert.equal(w.statusOfError(new StaleTokenError('sealed at 4')), w.STATUS_FENCED);
  });
});
