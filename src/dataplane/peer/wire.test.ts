/**
 * Byte-exact checks of the TBP codecs. Every expected byte string is written
 * out by hand from the layout in README.md, not produced by the code under
 * test; then round trips, then every rejection.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { ChecksumError, IoError, NotFoundError, StoreFullError } from '../../common/errors.js';
import { MAP_PAGE_BIT } from '../../model/block-ref.js';
import { RECORD_MAP_PAGE, RECORD_SEALED } from '../blocks/record.js';
import { FrameReader, IN_PLACE_MIN_BYTES } from './frame-reader.js';
import * as w from './wire.js';
import { MAX_BLOCK_SIZE } from '../../common/block-size.js';

const hex = (s: string) => Buffer.from(s.replace(/\s+/g, ''), 'hex');
const NONCE = hex('000102030405060708090a0b');
const TAG = hex('101112131415161718191a1b1c1d1e1f');

function block(overrides: Partial<w.WireBlock> = {}): w.WireBlock {
  return {
    ref: { volumeId: 1, generation: 2, index: 3 },
    flags: RECORD_SEALED,
    hashHi: 0x01234567,
    hashLo: 0x89abcdef,
    nonce: NONCE,
    tag: TAG,
    data: Buffer.from('abc'),
    ...overrides,
  };
}

/** Descriptor of block() above: ref 1/2/3, flags SEALED, hash 0123456789abcdef, nonce, tag, length 3. */
const DESC_ABC =
  '00000001 00000002 00000000 00000003  00000001  0123456789abcdef  000102030405060708090a0b  101112131415161718191a1b1c1d1e1f  00000003';

const payloadError = (fn: () => unknown, pattern?: RegExp) =>
  assert.throws(
    fn,
    (err: Error) => err instanceof w.TbpPayloadError && (!pattern || pattern.test(err.message)),
  );

describe('peer wire: header', () => {
  it('lays out magic TBP!, version, opcode, flags, status, id, length big-endian', () => {
    const buf = Buffer.alloc(w.HEADER_SIZE);
    w.encodeHeader(buf, 0, w.OP_GET_BLOCK, 0, w.STATUS_OK, 0x01020304, 16);
    assert.deepEqual(buf, hex('54425021 01 03 00 00 01020304 00000010'));
    assert.equal(buf.toString('latin1', 0, 4), 'TBP!');
    assert.equal(w.headerMagic(buf, 0), w.TBP_MAGIC);
    assert.equal(w.headerVersion(buf, 0), 1);
    assert.equal(w.headerOpcode(buf, 0), w.OP_GET_BLOCK);
    assert.equal(w.headerRequestId(buf, 0), 0x01020304);
    assert.equal(w.headerPayloadLength(buf, 0), 16);
  });

  it('encodes at an offset and keeps request ids as u32', () => {
    const buf = Buffer.alloc(20, 0xee);
    w.encodeHeader(buf, 4, w.OP_PING, w.FLAG_REPLY, w.STATUS_INTERNAL, 0xffffffff, 0);
    assert.deepEqual(buf, hex('eeeeeeee 54425021 01 06 01 05 ffffffff 00000000'));
    assert.equal(w.headerStatus(buf, 4), w.STATUS_INTERNAL);
    assert.equal(w.headerFlags(buf, 4), w.FLAG_REPLY);
  });

  it('accepts a good header and names every framing error', () => {
    const ok = hex('54425021 01 03 00 00 00000001 00000010');
    assert.equal(w.checkFrameHeader(ok, 0, false), undefined);
    assert.match(
      w.checkFrameHeader(hex('54425022 01 03 00 00 00000001 00000010'), 0, false)!,
      /bad magic 0x54425022/,
    );
    assert.match(
      w.checkFrameHeader(hex('47455420 2f204854 54502f31 2e310d0a'), 0, false)!,
      /bad magic/,
    ); // "GET / HTTP/1.1\r\n"
    assert.match(
      w.checkFrameHeader(hex('54425021 02 03 00 00 00000001 00000010'), 0, false)!,
      /unsupported version 2/,
    );
    // Exactly the limit is fine, one byte more is not.
    assert.equal(
      w.checkFrameHeader(hex('54425021 01 02 00 00 00000001 01000000'), 0, false),
      undefined,
    );
    assert.match(
      w.checkFrameHeader(hex('54425021 01 02 00 00 00000001 01000001'), 0, false)!,
      /exceeds the 16777216-byte limit/,
    );
    assert.match(
      w.checkFrameHeader(hex('54425021 01 02 00 00 00000001 ffffffff'), 0, false)!,
      /exceeds/,
    );
    // Direction: the server takes only requests, the client only replies.
    assert.match(
      w.checkFrameHeader(hex('54425021 01 03 01 00 00000001 00000000'), 0, false)!,
      /a reply where a request was expected/,
    );
    assert.match(w.checkFrameHeader(ok, 0, true)!, /a request where a reply was expected/);
    assert.equal(
      w.checkFrameHeader(hex('54425021 01 03 01 00 00000001 00000000'), 0, true),
      undefined,
    );
  });

  it('names opcodes and statuses, and unknown values readably', () => {
    assert.equal(w.opName(w.OP_GET_BLOCK), 'OP_GET_BLOCK');
    assert.equal(w.opName(w.OP_PUT_BLOCKS), 'OP_PUT_BLOCKS');
    assert.equal(w.opName(w.OP_SYNC), 'OP_SYNC');
    assert.equal(w.isKnownOpcode(w.OP_SYNC), true);
    assert.equal(w.opName(99), 'OP(99)');
    assert.equal(w.statusName(w.STATUS_CHECKSUM), 'STATUS_CHECKSUM');
    assert.equal(w.statusName(200), 'STATUS(200)');
    assert.deepEqual(
      [
        w.OP_HELLO,
        w.OP_PUT_BLOCKS,
        w.OP_GET_BLOCK,
        w.OP_HAS_BLOCKS,
        w.OP_DELETE_BLOCKS,
        w.OP_PING,
        w.OP_SYNC,
      ],
      [1, 2, 3, 4, 5, 6, 7],
    );
    assert.deepEqual(
      [
        w.STATUS_OK,
        w.STATUS_NOT_FOUND,
        w.STATUS_CHECKSUM,
        w.STATUS_NO_SPACE,
        w.STATUS_BAD_REQUEST,
        w.STATUS_INTERNAL,
        w.STATUS_WRONG_CLUSTER,
        w.STATUS_SHUTTING_DOWN,
      ],
      [0, 1, 2, 3, 4, 5, 6, 7],
    );
  });

  it('maps typed errors to statuses in one place', () => {
    assert.equal(w.statusOfError(new ChecksumError('1', 3, 'bad')), w.STATUS_CHECKSUM);
    assert.equal(w.statusOfError(new StoreFullError('full')), w.STATUS_NO_SPACE);
    assert.equal(w.statusOfError(new IoError('ENOSPC', 'full')), w.STATUS_NO_SPACE);
    assert.equal(
      w.statusOfError(Object.assign(new Error('disk'), { code: 'ENOSPC' })),
      w.STATUS_NO_SPACE,
    );
    assert.equal(w.statusOfError(new IoError('EINVAL', 'no')), w.STATUS_BAD_REQUEST);
    assert.equal(w.statusOfError(new w.TbpPayloadError('no')), w.STATUS_BAD_REQUEST);
    assert.equal(w.statusOfError(new IoError('ESHUTDOWN', 'bye')), w.STATUS_SHUTTING_DOWN);
    assert.equal(w.statusOfError(new NotFoundError('gone')), w.STATUS_NOT_FOUND);
    assert.equal(w.statusOfError(new IoError('EIO', 'disk')), w.STATUS_INTERNAL);
    assert.equal(w.statusOfError(new Error('bug')), w.STATUS_INTERNAL);
    assert.equal(w.statusOfError('a string'), w.STATUS_INTERNAL);
  });
});

describe('peer wire: refs', () => {
  it('encodes volume, generation and a 64-bit index', () => {
    const buf = Buffer.alloc(w.REF_SIZE);
    w.encodeRef(buf, 0, { volumeId: 7, generation: 0x12, index: 2 ** 40 + 5 });
    assert.deepEqual(buf, hex('00000007 00000012 00000100 00000005'));
    assert.deepEqual(w.decodeRef(buf, 0), { volumeId: 7, generation: 0x12, index: 2 ** 40 + 5 });
  });

  it('carries the largest safe index and map-page indexes exactly', () => {
    const buf = Buffer.alloc(w.REF_SIZE);
    w.encodeRef(buf, 0, {
      volumeId: 0xffffffff,
      generation: 0xffffffff,
      index: Number.MAX_SAFE_INTEGER,
    });
    assert.deepEqual(buf, hex('ffffffff ffffffff 001fffff ffffffff'));
    assert.equal(w.decodeRef(buf, 0).index, Number.MAX_SAFE_INTEGER);
    w.encodeRef(buf, 0, { volumeId: 1, generation: 1, index: MAP_PAGE_BIT + 2 ** 40 + 9 });
    assert.deepEqual(buf.subarray(8), hex('00010100 00000009'));
  });

  it('refuses an index at or above 2^53 rather than rounding it', () => {
    payloadError(
      () => w.decodeRef(hex('00000001 00000001 00200000 00000000'), 0),
      /not below 2\^53/,
    );
    payloadError(() => w.decodeRef(hex('00000001 00000001 ffffffff ffffffff'), 0));
  });

  it('will not encode a ref no node could hold', () => {
    const buf = Buffer.alloc(w.REF_SIZE);
    for (const ref of [
      { volumeId: -1, generation: 0, index: 0 },
      { volumeId: 2 ** 32, generation: 0, index: 0 },
      { volumeId: 1, generation: 1.5, index: 0 },
      { volumeId: 1, generation: 1, index: -1 },
      { volumeId: 1, generation: 1, index: 2 ** 53 },
      { volumeId: 1, generation: 1, index: NaN },
    ]) {
      assert.throws(() => w.encodeRef(buf, 0, ref), RangeError, JSON.stringify(ref));
    }
  });
});

describe('peer wire: HELLO', () => {
  it('encodes cluster and node id with one length byte each, both ways', () => {
    assert.deepEqual(
      w.encodeHello(1, { clusterId: 'c1', nodeId: 'n' }),
      hex('54425021 01 01 00 00 00000001 00000005  02 6331  01 6e'),
    );
    assert.deepEqual(
      w.encodeHelloReply(1, { clusterId: 'c1', nodeId: 'n' }),
      hex('54425021 01 01 01 00 00000001 00000005  02 6331  01 6e'),
    );
    assert.deepEqual(w.decodeHello(hex('02 6331 01 6e')), { clusterId: 'c1', nodeId: 'n' });
  });

  it('round-trips UTF-8 and 255-byte ids', () => {
    const hello = { clusterId: 'x'.repeat(255), nodeId: 'nœud-é' };
    assert.deepEqual(w.decodeHello(w.encodeHello(9, hello).subarray(w.HEADER_SIZE)), hello);
  });

  it('rejects empty, overlong, cut short and padded HELLOs', () => {
    assert.throws(() => w.encodeHello(1, { clusterId: '', nodeId: 'n' }), RangeError);
    assert.throws(() => w.encodeHello(1, { clusterId: 'c', nodeId: 'x'.repeat(256) }), RangeError);
    payloadError(() => w.decodeHello(hex('')), /before the cluster id/);
    payloadError(() => w.decodeHello(hex('00 01 6e')), /empty cluster id/);
    payloadError(() => w.decodeHello(hex('05 6331')), /cluster id runs past/);
    payloadError(() => w.decodeHello(hex('02 6331')), /before the node id/);
    payloadError(() => w.decodeHello(hex('02 6331 01 6e 00')), /1 bytes after/);
  });
});

describe('peer wire: blocks and PUT_BLOCKS', () => {
  it('lays out a block descriptor: ref, flags, hash (high half first), nonce, tag, length', () => {
    const buf = Buffer.alloc(w.BLOCK_DESCRIPTOR_SIZE);
    w.encodeBlockDescriptor(buf, 0, block());
    assert.deepEqual(buf, hex(DESC_ABC));
  });

  it('encodes a PUT_BLOCKS frame as chunks whose block data are the callers own buffers', () => {
    const a = block();
    const b = block({
      ref: { volumeId: 1, generation: 2, index: 4 },
      flags: 0,
      hashHi: 0,
      hashLo: 0xff,
      nonce: Buffer.alloc(12),
      tag: Buffer.alloc(16),
      data: Buffer.from('z'),
    });
    const chunks = w.encodePutBlocksFrame(5, [a, b]);
    assert.equal(chunks.length, 4);
    assert.equal(chunks[1], a.data, 'no copy of block data');
    assert.equal(chunks[3], b.data, 'no copy of block data');
    // payload = count 4 + (60 + 3) + (60 + 1) = 128
    assert.deepEqual(
      Buffer.concat(chunks),
      hex(`54425021 01 02 00 00 00000005 00000080  00000002
           ${DESC_ABC} 616263
           00000001 00000002 00000000 00000004  00000000  00000000000000ff  000000000000000000000000  00000000000000000000000000000000  00000001 7a`),
    );
    assert.equal(w.putBlocksPayloadLength([a, b]), 128);
  });

  it('decodes PUT_BLOCKS into views of the payload, not copies', () => {
    const payload = Buffer.concat(
      w.encodePutBlocksFrame(5, [
        block(),
        block({
          ref: { volumeId: 9, generation: 9, index: MAP_PAGE_BIT + 1 },
          flags: RECORD_MAP_PAGE,
          data: Buffer.from('page'),
        }),
      ]),
    ).subarray(w.HEADER_SIZE);
    const blocks = w.decodePutBlocks(payload);
    assert.equal(blocks.length, 2);
    assert.deepEqual(blocks[0].ref, { volumeId: 1, generation: 2, index: 3 });
    assert.equal(blocks[0].flags, RECORD_SEALED);
    assert.equal(blocks[0].hashHi, 0x01234567);
    assert.equal(blocks[0].hashLo, 0x89abcdef);
    assert.deepEqual(Buffer.from(blocks[0].nonce), NONCE);
    assert.deepEqual(Buffer.from(blocks[0].tag), TAG);
    assert.equal(Buffer.from(blocks[0].data).toString(), 'abc');
    assert.equal(blocks[0].data.buffer, payload.buffer, 'a view into the received frame');
    assert.equal(blocks[0].data.byteOffset, payload.byteOffset + 4 + 60);
    assert.deepEqual(blocks[1].ref, { volumeId: 9, generation: 9, index: MAP_PAGE_BIT + 1 });
    assert.equal(Buffer.from(blocks[1].data).toString(), 'page');
  });

  it('rejects every malformed PUT_BLOCKS payload', () => {
    const one = Buffer.concat(w.encodePutBlocksFrame(1, [block()])).subarray(w.HEADER_SIZE);
    const withCount = (n: number) =>
      Buffer.concat([hex(n.toString(16).padStart(8, '0')), one.subarray(4)]);
    payloadError(() => w.decodePutBlocks(hex('000000')), /without a block count/);
    payloadError(() => w.decodePutBlocks(withCount(0)), /PUT_BLOCKS of 0 blocks/);
    payloadError(() => w.decodePutBlocks(withCount(w.MAX_BATCH_BLOCKS + 1)), /1025 blocks/);
    payloadError(() => w.decodePutBlocks(withCount(2)), /2 blocks in 67 bytes/);
    payloadError(
      () => w.decodePutBlocks(Buffer.concat([one, hex('00')])),
      /1 bytes after the last block/,
    );
    payloadError(() => w.decodePutBlocks(one.subarray(0, one.length - 1)), /runs past the payload/);
    // Block length fields: zero, and one byte more than there is.
    const zero = Buffer.from(one);
    zero.writeUInt32BE(0, 4 + 56);
    payloadError(
      () => w.decodePutBlocks(Buffer.concat([zero.subarray(0, 64), hex('000000')])),
      /empty block/,
    );
    const long = Buffer.from(one);
    long.writeUInt32BE(4, 4 + 56);
    payloadError(
      () => w.decodePutBlocks(long),
      /block of 4 bytes runs past the payload \(3 left\)/,
    );
    // Flags: unknown bits; map-page flag and map-page index must agree.
    const flags = (f: number, index?: number) => {
      const copy = Buffer.from(one);
      copy.writeUInt32BE(f, 4 + 16);
      if (index !== undefined) w.encodeRef(copy, 4, { volumeId: 1, generation: 2, index });
      return copy;
    };
    payloadError(() => w.decodePutBlocks(flags(8)), /unknown block flags 0x8/);
    payloadError(() => w.decodePutBlocks(flags(RECORD_MAP_PAGE)), /map-page flag on data index 3/);
    payloadError(() => w.decodePutBlocks(flags(0, MAP_PAGE_BIT)), /without the map-page flag/);
    assert.equal(
      w.decodePutBlocks(flags(RECORD_MAP_PAGE, MAP_PAGE_BIT))[0].ref.index,
      MAP_PAGE_BIT,
    );
    // Unsafe index.
    const unsafe = Buffer.from(one);
    unsafe.writeUInt32BE(0x00200000, 4 + 8);
    payloadError(() => w.decodePutBlocks(unsafe), /2\^53/);
    payloadError(() => w.decodePutBlocks(one.subarray(0, 30)), /1 blocks in 30 bytes/);
  });

  it('refuses to encode a batch that breaks the limits, before writing anything', () => {
    assert.throws(() => w.encodePutBlocksFrame(1, []), RangeError);
    assert.throws(
      () => w.encodePutBlocksFrame(1, new Array(w.MAX_BATCH_BLOCKS + 1).fill(block())),
      RangeError,
    );
    assert.throws(
      () => w.encodePutBlocksFrame(1, [block({ data: Buffer.alloc(w.MAX_PAYLOAD_BYTES) })]),
      /exceeds/,
    );
    assert.throws(
      () => w.encodePutBlocksFrame(1, [block({ nonce: Buffer.alloc(11) })]),
      RangeError,
    );
    assert.throws(
      () => w.encodePutBlocksFrame(1, [block({ data: Buffer.alloc(0) })]),
      /empty block/,
    );
    assert.throws(() => w.encodePutBlocksFrame(1, [block({ flags: 8 })]), /unknown block flags/);
    assert.throws(
      () => w.checkPutBatch([block(), block({ ref: { volumeId: 1, generation: 1, index: -2 } })]),
      RangeError,
    );
    // The biggest batch that fits: 16 MiB of payload exactly.
    const big = block({ data: Buffer.alloc(w.MAX_PAYLOAD_BYTES - 4 - w.BLOCK_DESCRIPTOR_SIZE) });
    assert.equal(w.checkPutBatch([big]), w.MAX_PAYLOAD_BYTES);
  });
});

describe('peer wire: GET_BLOCK', () => {
  it('is a 32-byte frame written into the callers buffer', () => {
    const buf = Buffer.alloc(40, 0xee);
    w.encodeGetBlock(buf, 4, 9, { volumeId: 1, generation: 2, index: 3 });
    assert.deepEqual(
      buf,
      hex(
        'eeeeeeee 54425021 01 03 00 00 00000009 00000010 00000001 00000002 00000000 00000003 eeeeeeee',
      ),
    );
    assert.equal(w.GET_BLOCK_FRAME_SIZE, 32);
    assert.deepEqual(w.decodeGetBlock(buf.subarray(20, 36)), {
      volumeId: 1,
      generation: 2,
      index: 3,
    });
    payloadError(() => w.decodeGetBlock(buf.subarray(20, 35)), /15 bytes, expected 16/);
    payloadError(() => w.decodeGetBlock(buf.subarray(20, 37)), /17 bytes/);
  });

  it('replies with a 76-byte head (header and descriptor) followed by the data', () => {
    const head = Buffer.alloc(w.BLOCK_REPLY_HEAD_SIZE);
    w.encodeBlockReplyHead(head, 0, 9, block());
    assert.deepEqual(head, hex(`54425021 01 03 01 00 00000009 0000003f ${DESC_ABC}`));
    const payload = Buffer.concat([head.subarray(w.HEADER_SIZE), Buffer.from('abc')]);
    const got = w.decodeBlockReply(payload);
    assert.equal(Buffer.from(got.data).toString(), 'abc');
    assert.equal(got.data.buffer, payload.buffer);
    payloadError(
      () => w.decodeBlockReply(Buffer.concat([payload, hex('00')])),
      /bytes after the block/,
    );
    payloadError(() => w.decodeBlockReply(payload.subarray(0, 59)), /descriptor cut short/);
  });

  it('says NOT_FOUND (or any error) as a status and a message', () => {
    assert.deepEqual(
      w.encodeErrorReply(w.OP_GET_BLOCK, 4, w.STATUS_NOT_FOUND, 'no'),
      hex('54425021 01 03 01 01 00000004 00000002 6e6f'),
    );
    assert.equal(w.decodeErrorMessage(hex('6e6f')), 'no');
  });

  it('cuts long messages to 1024 bytes on a character boundary', () => {
    const reply = w.encodeErrorReply(w.OP_PUT_BLOCKS, 1, w.STATUS_INTERNAL, '€'.repeat(400)); // 1200 bytes of 3-byte characters
    assert.equal(w.headerPayloadLength(reply, 0), 1023);
    assert.equal(w.decodeErrorMessage(reply.subarray(w.HEADER_SIZE)), '€'.repeat(341));
  });
});

describe('peer wire: HAS_BLOCKS, DELETE_BLOCKS, PING, SYNC', () => {
  const r1 = { volumeId: 1, generation: 2, index: 3 };
  const r2 = { volumeId: 4, generation: 5, index: 2 ** 32 };

  it('sends a count and the refs', () => {
    assert.deepEqual(
      w.encodeRefsFrame(w.OP_HAS_BLOCKS, 3, [r1, r2]),
      hex(
        '54425021 01 04 00 00 00000003 00000024  00000002  00000001 00000002 00000000 00000003  00000004 00000005 00000001 00000000',
      ),
    );
    const del = w.encodeRefsFrame(w.OP_DELETE_BLOCKS, 3, [r1]);
    assert.equal(w.headerOpcode(del, 0), w.OP_DELETE_BLOCKS);
    assert.deepEqual(
      w.decodeRefs(w.encodeRefsFrame(w.OP_HAS_BLOCKS, 3, [r1, r2]).subarray(w.HEADER_SIZE)),
      [r1, r2],
    );
    assert.deepEqual(w.encodeRefList([r1]), hex('00000001 00000001 00000002 00000000 00000003'));
  });

  it("HAS_BLOCKS by hash: each ref's copy hash after the refs (hi, lo); plain lists decode without", () => {
    const hashes = Uint32Array.from([0x0a0b0c0d, 0x01020304, 0xfffffffe, 0x7f000001]);
    const frame = w.encodeRefsFrame(w.OP_HAS_BLOCKS, 3, [r1, r2], hashes);
    assert.deepEqual(
      frame,
      hex(
        '54425021 01 04 00 00 00000003 00000034  00000002  00000001 00000002 00000000 00000003  00000004 00000005 00000001 00000000  01020304 0a0b0c0d  7f000001 fffffffe',
      ),
    );
    const decoded = w.decodeHasRequest(frame.subarray(w.HEADER_SIZE));
    assert.deepEqual(decoded.refs, [r1, r2]);
    assert.deepEqual(decoded.hashes, hashes);
    const plain = w.decodeHasRequest(w.encodeRefList([r1, r2]));
    assert.deepEqual(plain, { refs: [r1, r2] });
    assert.deepEqual(
      w.encodeRefList([r1], hashes.subarray(0, 2)),
      hex('00000001 00000001 00000002 00000000 00000003 01020304 0a0b0c0d'),
    );
    // A node from before hashes reads the longer payload as a mis-sized ref list (BAD_REQUEST).
    payloadError(() => w.decodeRefs(frame.subarray(w.HEADER_SIZE)), /2 refs in 52 bytes/);
    payloadError(
      () => w.decodeHasRequest(hex('00000002 00000001 00000002 00000000 00000003')),
      /expected 36/,
    );
    assert.throws(() => w.encodeRefsFrame(w.OP_HAS_BLOCKS, 1, [r1], hashes), RangeError);
    assert.throws(
      () => w.encodeRefsFrame(w.OP_DELETE_BLOCKS, 1, [r1], hashes.subarray(0, 2)),
      RangeError,
    );
  });

  it('rejects empty, oversized and mis-sized ref lists', () => {
    payloadError(() => w.decodeRefs(hex('0000')), /without a count/);
    payloadError(() => w.decodeRefs(hex('00000000')), /0 refs/);
    payloadError(() => w.decodeRefs(hex('00002001')), /8193 refs/);
    payloadError(
      () => w.decodeRefs(hex('00000002 00000001 00000002 00000000 00000003')),
      /2 refs in 20 bytes, expected 36/,
    );
    assert.throws(() => w.encodeRefsFrame(w.OP_HAS_BLOCKS, 1, []), RangeError);
    assert.throws(
      () => w.encodeRefsFrame(w.OP_HAS_BLOCKS, 1, new Array(w.MAX_BATCH_REFS + 1).fill(r1)),
      RangeError,
    );
  });

  it('answers HAS_BLOCKS with a count and a bitmap, least significant bit first', () => {
    const bits = [true, false, true, true, false, false, false, false, true];
    // bits 0, 2, 3 → 0x0d; bit 8 → second byte 0x01
    assert.deepEqual(
      w.encodeBitmapReply(3, bits),
      hex('54425021 01 04 01 00 00000003 00000006 00000009 0d 01'),
    );
    assert.deepEqual(w.decodeBitmapReply(hex('00000009 0d 01'), 9), bits);
    assert.deepEqual(w.encodeBitmap([false, true]), hex('00000002 02'));
    payloadError(() => w.decodeBitmapReply(hex('00000009 0d 01'), 8), /9 bits for 8 refs/);
    payloadError(() => w.decodeBitmapReply(hex('00000009 0d'), 9), /9 bits in 5 bytes/);
    payloadError(() => w.decodeBitmapReply(hex('000000'), 9), /without a count/);
  });

  it('answers DELETE_BLOCKS with the count dropped', () => {
    const buf = Buffer.alloc(w.COUNT_REPLY_SIZE);
    w.encodeCountReply(buf, 0, 7, 3);
    assert.deepEqual(buf, hex('54425021 01 05 01 00 00000007 00000004 00000003'));
    assert.equal(w.decodeCountReply(hex('00000003')), 3);
    payloadError(() => w.decodeCountReply(hex('0003')), /2 bytes, expected 4/);
  });

  it('PING and the OK of PUT_BLOCKS are bare headers', () => {
    const buf = Buffer.alloc(w.HEADER_SIZE);
    w.encodeEmptyFrame(buf, 0, w.OP_PING, 0, 11);
    assert.deepEqual(buf, hex('54425021 01 06 00 00 0000000b 00000000'));
    w.encodeEmptyFrame(buf, 0, w.OP_PUT_BLOCKS, w.FLAG_REPLY, 11);
    assert.deepEqual(buf, hex('54425021 01 02 01 00 0000000b 00000000'));
  });

  it('SYNC is a bare header both ways: opcode 7, no payload', () => {
    const buf = Buffer.alloc(w.HEADER_SIZE + 4, 0xee);
    w.encodeEmptyFrame(buf, 2, w.OP_SYNC, 0, 0x0102);
    assert.deepEqual(buf, hex('eeee 54425021 01 07 00 00 00000102 00000000 eeee'));
    assert.equal(w.checkFrameHeader(buf, 2, false), undefined, 'a request the server accepts');
    w.encodeEmptyFrame(buf, 2, w.OP_SYNC, w.FLAG_REPLY, 0xfffffffe);
    assert.deepEqual(buf, hex('eeee 54425021 01 07 01 00 fffffffe 00000000 eeee'));
    assert.equal(w.checkFrameHeader(buf, 2, true), undefined, 'a reply the client accepts');
    // A SYNC that failed on the peer (its fdatasync did) carries a message like any other error.
    assert.deepEqual(
      w.encodeErrorReply(w.OP_SYNC, 3, w.STATUS_INTERNAL, 'EIO'),
      hex('54425021 01 07 01 05 00000003 00000003 45494f'),
    );
  });
});

describe('peer wire: listings', () => {
  it('lists 32 bytes per block: ref, flags, hash, length', () => {
    const entry = {
      ref: { volumeId: 1, generation: 2, index: 3 },
      flags: RECORD_SEALED,
      hashHi: 0x01234567,
      hashLo: 0x89abcdef,
      length: 65536,
    };
    const buf = w.encodeListing([entry]);
    assert.deepEqual(
      buf,
      hex('00000001  00000001 00000002 00000000 00000003  00000001  0123456789abcdef  00010000'),
    );
    assert.deepEqual(w.decodeListing(buf), [entry]);
    assert.deepEqual(w.decodeListing(w.encodeListing([])), []);
    payloadError(() => w.decodeListing(buf.subarray(0, 35)), /1 entries in 35 bytes/);
    payloadError(() => w.decodeListing(hex('00002001')), /8193 entries/);
  });
});

describe('peer frame reader', () => {
  const frame = (id: number, payload: Buffer) => {
    const buf = Buffer.alloc(w.HEADER_SIZE + payload.length);
    w.encodeHeader(buf, 0, w.OP_PUT_BLOCKS, 0, 0, id, payload.length);
    payload.copy(buf, w.HEADER_SIZE);
    return buf;
  };

  it('finds the same frames however the bytes are cut', () => {
    const stream = Buffer.concat([
      frame(1, Buffer.from('hello')),
      frame(2, Buffer.alloc(0)),
      frame(3, Buffer.from('x'.repeat(40))),
    ]);
    for (let cut = 1; cut < stream.length; cut++) {
      const gathered: number[] = [];
      const reader = new FrameReader((size) => (gathered.push(size), Buffer.alloc(size)));
      const seen: [number, string][] = [];
      for (const chunk of [stream.subarray(0, cut), stream.subarray(cut)]) {
        reader.push(Buffer.from(chunk));
        while (reader.peekHeader()) {
          const length = w.headerPayloadLength(reader.headerBuf, reader.headerAt);
          if (reader.available < w.HEADER_SIZE + length) break;
          const id = w.headerRequestId(reader.headerBuf, reader.headerAt);
          seen.push([id, reader.takeFrame(length).toString()]);
        }
      }
      assert.deepEqual(
        seen,
        [
          [1, 'hello'],
          [2, ''],
          [3, 'x'.repeat(40)],
        ],
        `cut at ${cut}`,
      );
      assert.equal(reader.available, 0);
      // Only a payload that straddles the cut is gathered, and only once.
      assert.ok(gathered.length <= 1, `cut at ${cut}: gathered ${gathered}`);
    }
  });

  /**
   * Feed `stream` through one reused read buffer, `readSize` bytes a read,
   * scribbling over it after every read as the socket would. The consumer
   * parses after each read unless stall(read) says it is held back (as by
   * backpressure), and copies transient payloads as the server and client do.
   */
  function readThroughReusedBuffer(
    stream: Buffer,
    readSize: number,
    stall: (read: number) => boolean = () => false,
  ) {
    const allocations: number[] = [];
    const reader = new FrameReader((size) => (allocations.push(size), Buffer.alloc(size)));
    const readBuf = Buffer.alloc(readSize);
    const seen: [number, string][] = [];
    const parse = () => {
      while (reader.peekHeader()) {
        const length = w.headerPayloadLength(reader.headerBuf, reader.headerAt);
        if (reader.available < w.HEADER_SIZE + length) break;
        const id = w.headerRequestId(reader.headerBuf, reader.headerAt);
        const payload = reader.takeFrame(length);
        seen.push([id, (reader.payloadTransient ? Buffer.from(payload) : payload).toString()]);
      }
    };
    let read = 0;
    for (let at = 0; at < stream.length; at += readSize, read++) {
      const n = stream.copy(readBuf, 0, at, at + readSize);
      reader.push(readBuf.subarray(0, n), true);
      if (!stall(read)) parse();
      reader.settle();
      readBuf.fill(0xee);
    }
    parse();
    return { seen, allocations, reader };
  }

  it('keeps nothing pointing into a reused read buffer, however the reads are cut', () => {
    const frames = [
      frame(1, Buffer.from('hello')),
      frame(2, Buffer.alloc(0)),
      frame(3, Buffer.from('x'.repeat(40))),
      frame(4, Buffer.from('y'.repeat(100))),
    ];
    const stream = Buffer.concat(frames);
    const want: [number, string][] = [
      [1, 'hello'],
      [2, ''],
      [3, 'x'.repeat(40)],
      [4, 'y'.repeat(100)],
    ];
    for (let readSize = 1; readSize <= stream.length; readSize++) {
      const { seen, reader } = readThroughReusedBuffer(stream, readSize);
      assert.deepEqual(seen, want, `reads of ${readSize}`);
      assert.equal(reader.pending, 0);
      // Held back on every other read: whole frames left over are kept too.
      assert.deepEqual(
        readThroughReusedBuffer(stream, readSize, (r) => r % 2 === 0).seen,
        want,
        `stalled reads of ${readSize}`,
      );
    }
  });

  /** Every whole frame buffered, its payload copied when it lies in the read buffer, onto `got`. */
  function takeWholeFrames(reader: FrameReader, got: Buffer[]): void {
    while (reader.peekHeader()) {
      const length = w.headerPayloadLength(reader.headerBuf, reader.headerAt);
      if (reader.available < w.HEADER_SIZE + length) break;
      const p = reader.takeFrame(length);
      got.push(reader.payloadTransient ? Buffer.from(p) : p);
    }
  }

  it('fills a frame that spans reads in place: one allocation of exactly its size', () => {
    const payload = Buffer.alloc(200_000);
    for (let i = 0; i < payload.length; i++) payload[i] = i % 251;
    const stream = Buffer.concat([
      frame(1, Buffer.from('ab')),
      frame(2, payload),
      frame(3, Buffer.from('cd')),
    ]);
    const allocations: number[] = [];
    const reader = new FrameReader((size) => (allocations.push(size), Buffer.alloc(size)));
    const readBuf = Buffer.alloc(65536);
    const got: Buffer[] = [];
    for (let at = 0; at < stream.length; at += readBuf.length) {
      const n = stream.copy(readBuf, 0, at, at + readBuf.length);
      reader.push(readBuf.subarray(0, n), true);
      takeWholeFrames(reader, got);
      reader.settle();
      readBuf.fill(0xee);
    }
    assert.equal(got.length, 3);
    assert.ok(got[1].equals(payload));
    assert.deepEqual(
      allocations,
      [w.HEADER_SIZE + payload.length],
      'the big frame, once, nothing else',
    );
    assert.equal(got[1].byteOffset, w.HEADER_SIZE, 'the payload is a view of that frame buffer');
    assert.equal(got[2].toString(), 'cd');
  });

  it('lets reads land in a large frame being filled, never past its end', () => {
    // As a socket with an onread buffer function: each read goes where
    // inPlaceTarget() says, else into the reused read buffer.
    const payload = Buffer.alloc(200_000);
    for (let i = 0; i < payload.length; i++) payload[i] = i % 253;
    const small = Buffer.alloc(IN_PLACE_MIN_BYTES - 1, 7);
    const stream = Buffer.concat([
      frame(1, Buffer.from('ab')),
      frame(2, payload),
      frame(3, small),
      frame(4, Buffer.from('cd')),
    ]);
    for (const readSize of [4096, 65536, 100_000]) {
      const allocations: number[] = [];
      const reader = new FrameReader((size) => (allocations.push(size), Buffer.alloc(size)));
      const readBuf = Buffer.alloc(readSize);
      const got: Buffer[] = [];
      let inPlaceBytes = 0;
      for (let at = 0; at < stream.length;) {
        const target = reader.inPlaceTarget(IN_PLACE_MIN_BYTES) ?? readBuf;
        const n = stream.copy(target, 0, at, at + Math.min(readSize, target.length));
        at += n;
        if (target === readBuf) reader.push(readBuf.subarray(0, n), true);
        else {
          reader.filledInPlace(n);
          inPlaceBytes += n;
        }
        takeWholeFrames(reader, got);
        reader.settle();
        readBuf.fill(0xee);
      }
      const what = `reads of ${readSize}`;
      assert.deepEqual(
        got.map((g) => g.length),
        [2, payload.length, small.length, 2],
        what,
      );
      assert.ok(got[1].equals(payload), what);
      assert.ok(got[2].equals(small), what);
      assert.equal(got[3].toString(), 'cd', what);
      assert.ok(
        inPlaceBytes >= payload.length - readSize - IN_PLACE_MIN_BYTES,
        `${what}: ${inPlaceBytes} bytes in place`,
      );
      assert.equal(allocations.filter((a) => a === w.HEADER_SIZE + payload.length).length, 1);
      assert.equal(reader.pending, 0);
    }
  });

  it('refuses bytes read in place past the frame being filled', () => {
    const reader = new FrameReader((size) => Buffer.alloc(size));
    assert.equal(reader.inPlaceTarget(1), undefined, 'no frame being filled');
    const big = frame(1, Buffer.alloc(100_000));
    reader.push(big.subarray(0, 1000), true);
    reader.settle();
    const target = reader.inPlaceTarget(IN_PLACE_MIN_BYTES)!;
    assert.equal(target.length, big.length - 1000);
    assert.throws(() => reader.filledInPlace(target.length + 1), /past the frame/);
  });

  it('does not allocate for a header that claims more than the limit', () => {
    const reader = new FrameReader(() => assert.fail('must not allocate'));
    const bad = Buffer.alloc(w.HEADER_SIZE + 10);
    w.encodeHeader(bad, 0, w.OP_PUT_BLOCKS, 0, 0, 1, 0xffffffff);
    reader.push(bad, true);
    reader.settle();
    assert.ok(reader.peekHeader());
    assert.match(w.checkFrameHeader(reader.headerBuf, reader.headerAt, false)!, /exceeds/);
  });

  it('hands out a payload inside one chunk as a view of that chunk', () => {
    const chunk = Buffer.concat([frame(1, Buffer.from('abc')), Buffer.from('tail')]);
    const reader = new FrameReader(() => assert.fail('must not gather'));
    reader.push(chunk);
    assert.ok(reader.peekHeader());
    assert.equal(reader.headerBuf, chunk);
    const payload = reader.takeFrame(3);
    assert.equal(payload.buffer, chunk.buffer);
    assert.equal(reader.available, 4);
  });
});

describe('block size limit', () => {
  it('the largest block a cluster may have fits one PUT_BLOCKS frame', () => {
    const largest = block({ data: Buffer.alloc(MAX_BLOCK_SIZE) });
    assert.equal(w.checkPutBatch([largest]), 4 + w.BLOCK_DESCRIPTOR_SIZE + MAX_BLOCK_SIZE);
    assert.ok(
      4 + w.BLOCK_DESCRIPTOR_SIZE + 2 * MAX_BLOCK_SIZE > w.MAX_PAYLOAD_BYTES,
      'MAX_BLOCK_SIZE is the largest power of two that fits; raise both together',
    );
  });
});
