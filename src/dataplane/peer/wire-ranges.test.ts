/**
 * Byte-exact checks of GET_RANGE (wire-ranges.ts): the expected bytes are
 * written out by hand from the layout in README.md, then round trips, then
 * every rejection.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import * as w from './wire.js';

const hex = (s: string) => Buffer.from(s.replace(/\s+/g, ''), 'hex');
const REF = { volumeId: 1, generation: 2, index: 3 };

function plainBlock(data: Buffer): w.WireBlock {
  return {
    ref: REF,
    flags: 0,
    hashHi: 0x01234567,
    hashLo: 0x89abcdef,
    nonce: Buffer.alloc(12),
    tag: Buffer.alloc(16),
    data,
  };
}

const payloadError = (fn: () => unknown, pattern: RegExp) =>
  assert.throws(fn, (err: Error) => err instanceof w.TbpPayloadError && pattern.test(err.message));

/** Descriptor of plainBlock(data of `length`): ref 1/2/3, flags 0, hash 0123456789abcdef, zero nonce and tag. */
const desc = (length: string) =>
  `00000001 00000002 00000000 00000003  00000000  0123456789abcdef  ${'00'.repeat(12)}  ${'00'.repeat(16)}  ${length}`;

describe('peer wire: GET_RANGE', () => {
  it('is opcode 8 and has a name', () => {
    assert.equal(w.OP_GET_RANGE, 8);
    assert.equal(w.opName(w.OP_GET_RANGE), 'OP_GET_RANGE');
    assert.ok(w.isKnownOpcode(w.OP_GET_RANGE));
  });

  it('encodes a request as header, ref, offset u32, length u32 (40 bytes)', () => {
    const buf = Buffer.alloc(w.GET_RANGE_FRAME_SIZE + 2, 0xee);
    w.encodeGetRange(buf, 2, 0x0a0b0c0d, { ref: REF, offset: 0x3000, length: 0x2000 });
    assert.equal(w.GET_RANGE_FRAME_SIZE, 40);
    assert.deepEqual(
      buf,
      hex(
        'eeee 54425021 01 08 00 00 0a0b0c0d 00000018' +
          '00000001 00000002 00000000 00000003  00003000  00002000',
      ),
    );
    assert.deepEqual(w.decodeGetRange(buf.subarray(2 + w.HEADER_SIZE)), {
      ref: REF,
      offset: 0x3000,
      length: 0x2000,
    });
  });

  it('refuses ranges that are not whole 4 KiB sub-blocks, both ways', () => {
    const buf = Buffer.alloc(w.GET_RANGE_FRAME_SIZE);
    for (const [offset, length] of [
      [1, 4096],
      [0, 4095],
      [0, 0],
    ])
      assert.throws(() => w.encodeGetRange(buf, 0, 1, { ref: REF, offset, length }), RangeError);
    payloadError(
      () => w.decodeGetRange(hex('00000001 00000002 00000000 00000003 00000800 00001000')),
      /not whole 4096-byte sub-blocks/,
    );
    payloadError(
      () => w.decodeGetRange(hex('00000001 00000002 00000000 00000003 00000000 00000000')),
      /not whole/,
    );
    payloadError(() => w.decodeGetRange(hex('00000001 00000002')), /expected 24/);
  });

  it('encodes a range-form reply: offset, entry length, entry, descriptor, then the data', () => {
    const entry = hex('5355425301020304');
    const reply: w.RangeReply = {
      offset: 0x1000,
      entry,
      block: plainBlock(Buffer.from('xy')),
    };
    const head = Buffer.alloc(w.rangeReplyHeadSize(reply));
    assert.equal(head.length, 16 + 8 + 8 + 60);
    w.encodeRangeReplyHead(head, 0, 7, reply);
    const expected = hex(
      `54425021 01 08 01 00 00000007 0000004e  00001000 00000008  5355425301020304  ${desc('00000002')}`,
    );
    assert.deepEqual(head, expected);
    const payload = Buffer.concat([head.subarray(w.HEADER_SIZE), Buffer.from('xy')]);
    // The range form must carry exactly the range asked for.
    const asked = { ref: REF, offset: 0x1000, length: 2 };
    const decoded = w.decodeRangeReply(payload, asked);
    assert.equal(decoded.offset, 0x1000);
    assert.deepEqual(Buffer.from(decoded.entry!), entry);
    assert.deepEqual(Buffer.from(decoded.block.data), Buffer.from('xy'));
    assert.equal(decoded.block.hashHi, 0x01234567);
    payloadError(
      () => w.decodeRangeReply(payload, { ref: REF, offset: 0, length: 2 }),
      /range 4096\+2 for 0\+2/,
    );
    payloadError(
      () => w.decodeRangeReply(payload, { ref: { ...REF, index: 4 }, offset: 0x1000, length: 2 }),
      /asked for 1\/2\/4, got 1\/2\/3/,
    );
  });

  it('encodes a whole-form reply: offset 0, no entry, the whole block', () => {
    const reply: w.RangeReply = {
      offset: 0,
      entry: undefined,
      block: plainBlock(Buffer.from('abc')),
    };
    const head = Buffer.alloc(w.rangeReplyHeadSize(reply));
    w.encodeRangeReplyHead(head, 0, 9, reply);
    assert.deepEqual(
      head,
      hex(`54425021 01 08 01 00 00000009 00000047  00000000 00000000  ${desc('00000003')}`),
    );
    const payload = Buffer.concat([head.subarray(w.HEADER_SIZE), Buffer.from('abc')]);
    const decoded = w.decodeRangeReply(payload, { ref: REF, offset: 0x2000, length: 0x1000 });
    assert.equal(decoded.entry, undefined);
    assert.equal(decoded.offset, 0);
    assert.deepEqual(Buffer.from(decoded.block.data), Buffer.from('abc'));
    assert.throws(
      () => w.encodeRangeReplyHead(Buffer.alloc(200), 0, 1, { ...reply, offset: 4096 }),
      RangeError,
    );
  });

  it('refuses replies that do not decode', () => {
    const asked = { ref: REF, offset: 0, length: 4096 };
    payloadError(() => w.decodeRangeReply(hex('00000000'), asked), /GET_RANGE reply of 4 bytes/);
    // Whole form (no entry) at a non-zero offset.
    const whole = Buffer.concat([hex(`00001000 00000000 ${desc('00000001')}`), hex('aa')]);
    payloadError(() => w.decodeRangeReply(whole, asked), /whole block at offset 4096/);
    // An entry longer than the payload.
    const long = Buffer.concat([hex(`00000000 00010000 ${desc('00000001')}`), hex('aa')]);
    payloadError(() => w.decodeRangeReply(long, asked), /sub-sums entry of 65536 bytes/);
    // Trailing bytes.
    const trailing = Buffer.concat([hex(`00000000 00000000 ${desc('00000001')}`), hex('aabb')]);
    payloadError(() => w.decodeRangeReply(trailing, asked), /bytes after the block/);
  });
});
