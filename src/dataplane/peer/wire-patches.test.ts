/**
 * PUT_PATCHES and tree-hashed blocks on the wire, byte for byte: the frame
 * layout wire-patches.ts documents, what a decoder refuses, the reply's
 * statuses, and BLOCK_TREE_HASH's place among the block flags.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import {
  BLOCK_TREE_HASH,
  HEADER_SIZE,
  OP_PUT_PATCHES,
  STATUS_CHECKSUM,
  STATUS_NOT_FOUND,
  STATUS_OK,
  TbpPayloadError,
  decodeBlock,
  decodePutPatches,
  decodePutPatchesReply,
  encodeBlockDescriptor,
  encodePutPatchesFrame,
  encodePutPatchesReply,
  headerOpcode,
  headerPayloadLength,
  isKnownOpcode,
  carriesSums,
  encodePatchSums,
  patchSums,
  type WirePatch,
} from './wire.js';
import { MAP_PAGE_BIT } from '../../model/block-ref.js';
import { RECORD_MAP_PAGE, RECORD_SEALED } from '../blocks/record.js';

function patch(overrides: Partial<WirePatch> = {}): WirePatch {
  return {
    ref: { volumeId: 7, generation: 9, index: 300 },
    base: { volumeId: 7, generation: 4 },
    older: { volumeId: 7, generation: 6 },
    present: 0b1001,
    entry: Buffer.alloc(16 + 4 * 16, 0xab),
    data: Buffer.alloc(2 * 4096, 0x5c),
    ...overrides,
  };
}

const frameOf = (chunks: Uint8Array[]) => Buffer.concat(chunks);

test('a PUT_PATCHES frame: header, count, then per patch its fields, entry and data', () => {
  const p = patch();
  const frame = frameOf(encodePutPatchesFrame(42, [p]));
  assert.equal(headerOpcode(frame, 0), OP_PUT_PATCHES);
  assert.ok(isKnownOpcode(OP_PUT_PATCHES));
  const payload = frame.subarray(HEADER_SIZE);
  assert.equal(headerPayloadLength(frame, 0), payload.length);
  assert.equal(payload.length, 4 + 40 + 80 + 4 + 8192);
  assert.equal(payload.readUInt32BE(0), 1, 'count');
  assert.deepEqual([...payload.subarray(4, 20)], [0, 0, 0, 7, 0, 0, 0, 9, 0, 0, 0, 0, 0, 0, 1, 44]);
  assert.equal(payload.readUInt32BE(20), 7, 'base volume');
  assert.equal(payload.readUInt32BE(24), 4, 'base generation');
  assert.equal(payload.readUInt32BE(28), 7, 'older volume');
  assert.equal(payload.readUInt32BE(32), 6, 'older generation');
  assert.equal(payload.readUInt32BE(36), 0b1001, 'present');
  assert.equal(payload.readUInt32BE(40), 80, 'entry length');
  assert.equal(payload[44], 0xab);
  assert.equal(payload.readUInt32BE(124), 8192, 'data length');
  assert.equal(payload[128], 0x5c);
  const [decoded] = decodePutPatches(payload);
  assert.deepEqual(decoded.ref, p.ref);
  assert.deepEqual(decoded.base, p.base);
  assert.deepEqual(decoded.older, p.older);
  assert.equal(decoded.present, p.present);
  assert.ok(Buffer.from(decoded.entry).equals(p.entry as Buffer));
  assert.ok(Buffer.from(decoded.data).equals(p.data as Buffer));
  assert.equal(decoded.data.buffer, payload.buffer, 'views into the payload, not copies');
});

test('PUT_PATCHES: what a sender may not send and a decoder refuses', () => {
  const refusedBoth = (bad: WirePatch, why: RegExp) => {
    assert.throws(() => encodePutPatchesFrame(1, [bad]), why);
    // The same fields encoded by hand from a good patch's frame, then broken.
    const good = frameOf(encodePutPatchesFrame(1, [patch()])).subarray(HEADER_SIZE);
    const broken = Buffer.from(good);
    broken.writeUInt32BE(bad.present >>> 0, 36);
    broken.writeUInt32BE(bad.base.generation, 24);
    assert.throws(() => decodePutPatches(broken), TbpPayloadError);
  };
  refusedBoth(patch({ present: 0 }), /no sub-blocks/);
  refusedBoth(patch({ present: 0b111 }), /3 sub-blocks with 8192 bytes/);
  refusedBoth(patch({ base: { volumeId: 7, generation: 10 } }), /base of generation 10/);
  assert.throws(() => encodePutPatchesFrame(1, []), RangeError);
  const payload = frameOf(encodePutPatchesFrame(1, [patch()])).subarray(HEADER_SIZE);
  assert.throws(() => decodePutPatches(payload.subarray(0, 100)), TbpPayloadError);
  assert.throws(() => decodePutPatches(Buffer.concat([payload, Buffer.alloc(1)])), /1 bytes after/);
  const huge = Buffer.from(payload);
  huge.writeUInt32BE(1 << 20, 40); // entry length
  assert.throws(() => decodePutPatches(huge), TbpPayloadError);
  const none = Buffer.from(payload);
  none.writeUInt32BE(0, 0);
  assert.throws(() => decodePutPatches(none), /0 patches/);
});

test('PUT_PATCHES reply: a status byte per patch, only the three a patch can have, then the tree hashes', () => {
  const statuses = Uint8Array.from([STATUS_OK, STATUS_NOT_FOUND, STATUS_CHECKSUM]);
  const hashes = Uint32Array.from([0x0403_0201, 0x0807_0605, 0, 0, 0, 0]);
  const frame = encodePutPatchesReply(5, { statuses, hashes });
  const payload = frame.subarray(HEADER_SIZE);
  assert.deepEqual(
    [...payload],
    [0, 0, 0, 3, 0, 1, 2, 8, 7, 6, 5, 4, 3, 2, 1, ...new Array(16).fill(0)],
    'count, statuses, then each hash high half first',
  );
  const back = decodePutPatchesReply(payload, 3);
  assert.deepEqual([...back.statuses], [0, 1, 2]);
  assert.deepEqual([...back.hashes], [...hashes]);
  assert.throws(() => decodePutPatchesReply(payload, 2), TbpPayloadError);
  const odd = Buffer.from(payload);
  odd[6] = 4;
  assert.throws(() => decodePutPatchesReply(odd, 3), /status 4/);
});

test('PUT_PATCHES from a writer without the base: the base hash and the sent sums, never mistaken for an entry', () => {
  const sums = encodePatchSums(0x1111_2222, 0x3333_4444, [0xaabb_ccdd, 7]);
  assert.deepEqual([...sums.subarray(0, 8)], [0x33, 0x33, 0x44, 0x44, 0x11, 0x11, 0x22, 0x22]);
  const p = patch({ entry: sums });
  assert.ok(carriesSums(p));
  assert.ok(!carriesSums(patch()), 'a whole entry (16 + 4n bytes) is never 8 + 4 per sub-block');
  const read = patchSums(sums);
  assert.deepEqual(
    [read.baseHashLo, read.baseHashHi, read.sum(0), read.sum(1)],
    [0x1111_2222, 0x3333_4444, 0xaabb_ccdd, 7],
  );
  const [decoded] = decodePutPatches(frameOf(encodePutPatchesFrame(1, [p])).subarray(HEADER_SIZE));
  assert.ok(carriesSums(decoded));
});

test('BLOCK_TREE_HASH travels on plain data blocks only', () => {
  const block = {
    ref: { volumeId: 1, generation: 2, index: 3 },
    flags: BLOCK_TREE_HASH,
    hashLo: 1,
    hashHi: 2,
    nonce: new Uint8Array(12),
    tag: new Uint8Array(16),
    data: new Uint8Array(4096),
  };
  const buf = Buffer.alloc(60 + 4096);
  encodeBlockDescriptor(buf, 0, block);
  assert.equal(buf.readUInt32BE(16), 4, 'the record flag RECORD_PATCH');
  assert.equal(decodeBlock(buf, 0, buf.length).flags, BLOCK_TREE_HASH);
  assert.throws(() => encodeBlockDescriptor(buf, 0, { ...block, flags: 4 | RECORD_SEALED }));
  buf.writeUInt32BE(4 | RECORD_SEALED, 16);
  assert.throws(() => decodeBlock(buf, 0, buf.length), /tree hash on a sealed block/);
  const page = { ...block, ref: { ...block.ref, index: MAP_PAGE_BIT }, flags: 4 | RECORD_MAP_PAGE };
  assert.throws(() => encodeBlockDescriptor(buf, 0, page), RangeError);
});
