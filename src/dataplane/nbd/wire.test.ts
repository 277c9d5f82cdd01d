/**
 * Byte-exact checks of the NBD codecs. Every expected byte string is written
 * out by hand from doc/proto.md, not produced by the code under test.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import * as w from './wire.js';
import { parseInfoRequest, parseMetaContextRequest, transmissionFlags } from './handshake.js';
import { Inbound } from './inbound.js';

const hex = (s: string) => Buffer.from(s.replace(/\s+/g, ''), 'hex');

describe('nbd wire: handshake', () => {
  it('greets with NBDMAGIC, IHAVEOPT and FIXED_NEWSTYLE|NO_ZEROES', () => {
    assert.deepEqual(w.encodeServerGreeting(), hex('4e42444d41474943 49484156454f5054 0003'));
    assert.equal(w.encodeServerGreeting().toString('latin1', 0, 16), 'NBDMAGICIHAVEOPT');
  });

  it('decodes an option header', () => {
    const h = w.decodeOptionHeader(hex('49484156454f5054 00000007 00000010'));
    assert.deepEqual(h, { magicOk: true, option: w.NBD_OPT_GO, length: 16 });
    assert.equal(w.decodeOptionHeader(hex('49484156454f5055 00000007 00000010')).magicOk, false);
  });

  it('encodes option replies with the 0x3e889045565a9 magic', () => {
    assert.deepEqual(
      w.encodeOptionReply(w.NBD_OPT_LIST, w.NBD_REP_ACK),
      hex('0003e889045565a9 00000003 00000001 00000000'),
    );
    assert.deepEqual(
      w.encodeOptionReply(w.NBD_OPT_STARTTLS, w.NBD_REP_ERR_POLICY, Buffer.from('no')),
      hex('0003e889045565a9 00000005 80000002 00000002 6e6f'),
    );
    assert.equal(w.NBD_REP_ERR_UNSUP, 0x80000001);
    assert.equal(w.NBD_REP_ERR_UNKNOWN, 0x80000006);
    assert.equal(w.NBD_REP_ERR_TOO_BIG, 0x80000009);
  });

  it('encodes NBD_REP_SERVER, NBD_REP_META_CONTEXT and the NBD_REP_INFO payloads', () => {
    assert.deepEqual(w.encodeRepServer('ab', 'x'), hex('00000002 6162 78'));
    assert.deepEqual(
      w.encodeRepMetaContext(1, 'base:allocation'),
      Buffer.concat([hex('00000001'), Buffer.from('base:allocation')]),
    );
    // NBD_INFO_EXPORT: type 0, size 2^40 + 5, flags 0x0d0d; length 12.
    assert.deepEqual(w.encodeInfoExport(2 ** 40 + 5, 0x0d0d), hex('0000 0000010000000005 0d0d'));
    assert.deepEqual(w.encodeInfoString(w.NBD_INFO_NAME, 'v'), hex('0001 76'));
    assert.deepEqual(w.encodeInfoString(w.NBD_INFO_DESCRIPTION, 'd'), hex('0002 64'));
    assert.deepEqual(
      w.encodeInfoBlockSize(1, 4096, 33554432),
      hex('0003 00000001 00001000 02000000'),
    );
  });

  it('ends NBD_OPT_EXPORT_NAME with size, flags and 124 zeroes unless NO_ZEROES', () => {
    assert.deepEqual(w.encodeExportNameReply(1024, 0x0001, true), hex('0000000000000400 0001'));
    const full = w.encodeExportNameReply(1024, 0x0001, false);
    assert.equal(full.length, 8 + 2 + 124);
    assert.ok(full.subarray(10).every((b) => b === 0));
  });

  it('advertises transmission flags by export capability', () => {
    // HAS_FLAGS|SEND_FLUSH|SEND_FUA|SEND_TRIM|SEND_WRITE_ZEROES|SEND_CACHE|SEND_FAST_ZERO = 0x0c6d
    assert.equal(transmissionFlags({ readOnly: false, canMultiConn: false }, false), 0x0c6d);
    // + CAN_MULTI_CONN (0x100) + SEND_DF (0x80) once structured replies are on
    assert.equal(transmissionFlags({ readOnly: false, canMultiConn: true }, true), 0x0ded);
    // READ_ONLY (0x2) drops TRIM, WRITE_ZEROES and FAST_ZERO
    assert.equal(transmissionFlags({ readOnly: true, canMultiConn: false }, false), 0x040f);
  });

  it('parses NBD_OPT_GO data and rejects inconsistent lengths', () => {
    assert.deepEqual(parseInfoRequest(hex('00000003 616263 0002 0003 0001')), {
      name: 'abc',
      infos: [3, 1],
    });
    assert.deepEqual(parseInfoRequest(hex('00000000 0000')), { name: '', infos: [] });
    assert.equal(typeof parseInfoRequest(hex('00000009 616263 0000')), 'string');
    assert.equal(typeof parseInfoRequest(hex('00000003 616263 0002 0003')), 'string');
    assert.equal(typeof parseInfoRequest(hex('0000')), 'string');
  });

  it('parses meta context queries and rejects ones that run past the data', () => {
    const ok = Buffer.concat([
      hex('00000001 61 00000001 0000000f'),
      Buffer.from('base:allocation'),
    ]);
    assert.deepEqual(parseMetaContextRequest(ok), { name: 'a', queries: ['base:allocation'] });
    assert.deepEqual(parseMetaContextRequest(hex('00000000 00000000')), { name: '', queries: [] });
    assert.equal(typeof parseMetaContextRequest(hex('00000000 00000001 00000010 61')), 'string');
    assert.equal(typeof parseMetaContextRequest(hex('00000000 ffffffff')), 'string');
  });
});

describe('nbd wire: transmission', () => {
  it('decodes a request header at fixed offsets, also inside a larger buffer', () => {
    const req = hex('ff ff 25609513 0001 0004 0102030405060708 0000000100000200 00010000');
    assert.equal(w.requestMagic(req, 2), w.NBD_REQUEST_MAGIC);
    assert.equal(w.requestFlags(req, 2), w.NBD_CMD_FLAG_FUA);
    assert.equal(w.requestType(req, 2), w.NBD_CMD_TRIM);
    assert.equal(w.requestCookieHigh(req, 2), 0x01020304);
    assert.equal(w.requestCookieLow(req, 2), 0x05060708);
    assert.equal(w.requestOffset(req, 2), 2 ** 32 + 512);
    assert.equal(w.requestLength(req, 2), 65536);
  });

  it('encodes a request header (used by test clients)', () => {
    const buf = Buffer.alloc(w.REQUEST_HEADER_SIZE);
    w.encodeRequest(buf, 0, 0, w.NBD_CMD_READ, 0xdeadbeef, 1, 4096, 512);
    assert.deepEqual(buf, hex('25609513 0000 0000 deadbeef00000001 0000000000001000 00000200'));
  });

  it('offsets beyond 2^53 still compare as past any export', () => {
    assert.ok(w.readU64(hex('ffffffffffffffff'), 0) > 2 ** 53);
  });

  it('encodes a simple reply into a caller-owned buffer', () => {
    const buf = Buffer.alloc(20, 0xaa);
    w.encodeSimpleReply(buf, 2, w.NBD_EINVAL, 0xdeadbeef, 0xcafef00d);
    assert.deepEqual(buf, hex('aaaa 67446698 00000016 deadbeefcafef00d aaaa'));
  });

  it('encodes a structured OFFSET_DATA chunk header ahead of its data', () => {
    const buf = Buffer.alloc(w.STRUCTURED_READ_DATA_AT + 3);
    buf.write('xyz', w.STRUCTURED_READ_DATA_AT);
    w.encodeOffsetDataHeader(buf, 0, w.NBD_REPLY_FLAG_DONE, 0, 7, 4096, 3);
    assert.deepEqual(
      buf,
      hex('668e33ef 0001 0001 0000000000000007 0000000b 0000000000001000 78797a'),
    );
  });

  it('encodes a READ reply header, simple or structured, ahead of its data', () => {
    const simple = Buffer.alloc(w.SIMPLE_READ_DATA_AT);
    w.encodeReadReplyHeader(simple, false, 1, 2, 4096, 3);
    assert.deepEqual(simple, hex('67446698 00000000 0000000100000002'));
    const structured = Buffer.alloc(w.STRUCTURED_READ_DATA_AT);
    w.encodeReadReplyHeader(structured, true, 0, 7, 4096, 3);
    assert.deepEqual(
      structured,
      hex('668e33ef 0001 0001 0000000000000007 0000000b 0000000000001000'),
    );
  });

  it('encodes error chunks, with and without an offset', () => {
    assert.deepEqual(
      w.encodeErrorChunk(w.NBD_REPLY_FLAG_DONE, 0, 9, w.NBD_EIO, 'bad'),
      hex('668e33ef 0001 8001 0000000000000009 00000009 00000005 0003 626164'),
    );
    assert.deepEqual(
      w.encodeErrorChunk(w.NBD_REPLY_FLAG_DONE, 0, 9, w.NBD_EIO, '', 512),
      hex('668e33ef 0001 8002 0000000000000009 0000000e 00000005 0000 0000000000000200'),
    );
  });

  it('caps error messages on a UTF-8 character boundary', () => {
    const chunk = w.encodeErrorChunk(0, 0, 0, w.NBD_EIO, 'é'.repeat(2000));
    const messageLength = chunk.readUInt16BE(24);
    assert.ok(messageLength <= w.MAX_ERROR_MESSAGE_BYTES && messageLength % 2 === 0);
  });

  it('encodes a block status chunk', () => {
    const chunk = w.encodeBlockStatusChunk(w.NBD_REPLY_FLAG_DONE, 0, 1, 1, [
      { length: 65536, flags: 0 },
      { length: 4096, flags: w.NBD_STATE_HOLE | w.NBD_STATE_ZERO },
    ]);
    assert.deepEqual(
      chunk,
      hex(
        '668e33ef 0001 0005 0000000000000001 00000014 00000001 00010000 00000000 00001000 00000003',
      ),
    );
  });

  it('maps every errno name to its NBD error value', () => {
    assert.deepEqual(
      (
        ['EPERM', 'EIO', 'ENOMEM', 'EINVAL', 'ENOSPC', 'EOVERFLOW', 'ENOTSUP', 'ESHUTDOWN'] as const
      ).map(w.errnoToNbd),
      [1, 5, 12, 22, 28, 75, 95, 108],
    );
  });

  it('names commands, options, replies and flags for logs', () => {
    assert.equal(w.commandName(4), 'NBD_CMD_TRIM');
    assert.equal(w.commandName(99), 'NBD_CMD(99)');
    assert.equal(w.optionName(7), 'NBD_OPT_GO');
    assert.equal(w.replyName(0x80000001), 'NBD_REP_ERR_UNSUP');
    assert.equal(w.errorName(28), 'NBD_ENOSPC');
    assert.equal(
      w.commandFlagNames(w.NBD_CMD_FLAG_FUA | w.NBD_CMD_FLAG_NO_HOLE | 0x100),
      'FUA|NO_HOLE|0x100',
    );
    assert.equal(w.transmissionFlagNames(0x0103), 'HAS_FLAGS|READ_ONLY|CAN_MULTI_CONN');
  });
});

describe('nbd inbound buffer', () => {
  const source = { pause() {}, resume() {} };

  it('hands out subarrays inside one chunk and gathers across chunks', () => {
    const inbound = new Inbound(source);
    const first = Buffer.from('abcdef');
    inbound.push(first);
    inbound.push(Buffer.from('ghij'));
    const inside = inbound.take(2);
    assert.equal(inside.buffer, first.buffer, 'no copy inside one chunk');
    assert.equal(inside.toString(), 'ab');
    assert.equal(inbound.take(6).toString(), 'cdefgh');
    assert.equal(inbound.available, 2);
  });

  it('peeks a header that straddles chunks without losing what follows', () => {
    const inbound = new Inbound(source);
    inbound.push(Buffer.from('xx0123'));
    inbound.take(2);
    inbound.push(Buffer.from('4567'));
    inbound.push(Buffer.from('89'));
    const { buf, at } = inbound.peek(6);
    assert.equal(buf.toString('latin1', at, at + 6), '012345');
    assert.equal(inbound.take(10).toString(), '0123456789');
  });

  it('discards bytes that have not arrived yet', () => {
    const inbound = new Inbound(source);
    inbound.push(Buffer.from('abc'));
    inbound.discard(5);
    assert.equal(inbound.available, 0);
    inbound.push(Buffer.from('dexyz'));
    assert.equal(inbound.take(3).toString(), 'xyz');
  });

  it('keeps what is left of a transient view once push() returns', () => {
    const inbound = new Inbound(source);
    const readBuffer = Buffer.from('HEAD0123');
    inbound.onData = () => {
      inbound.take(4);
    };
    inbound.push(readBuffer, true);
    readBuffer.fill('#'); // the socket reuses its buffer for the next read
    inbound.onData = undefined;
    assert.equal(inbound.take(4).toString(), '0123');
  });

  it('keeps a transient rest that a straddling peek left behind', () => {
    const inbound = new Inbound(source);
    inbound.push(Buffer.from('ab'));
    const readBuffer = Buffer.from('cdefgh');
    inbound.onData = () => {
      inbound.peek(4); // "ab" + "cd": gathered, and the read buffer's rest is re-sliced
      inbound.take(4);
    };
    inbound.push(readBuffer, true);
    readBuffer.fill('#');
    inbound.onData = undefined;
    assert.equal(inbound.take(4).toString(), 'efgh');
  });

  it('takeToKeep copies out of a transient view but not out of an owned chunk', () => {
    const inbound = new Inbound(source);
    const owned = Buffer.from('owned!');
    inbound.push(owned);
    assert.equal(inbound.takeToKeep(6).buffer, owned.buffer);
    let kept: Buffer | undefined;
    const readBuffer = Buffer.from('transient');
    inbound.onData = () => {
      kept = inbound.takeToKeep(9);
    };
    inbound.push(readBuffer, true);
    readBuffer.fill('#');
    assert.equal(kept!.toString(), 'transient');
  });

  it('fills a target from what is buffered and then straight from later pushes', () => {
    const inbound = new Inbound(source);
    inbound.push(Buffer.from('12'));
    const target = Buffer.alloc(6);
    let full = 0;
    inbound.fill(target, () => full++);
    assert.equal(inbound.available, 0);
    assert.equal(inbound.filling, 4);
    inbound.push(Buffer.from('34'), true);
    assert.equal(full, 0);
    inbound.push(Buffer.from('56NEXT'), true);
    assert.equal(full, 1);
    assert.equal(target.toString(), '123456');
    assert.equal(inbound.filling, 0);
    assert.equal(
      inbound.take(4).toString(),
      'NEXT',
      'bytes after the target are buffered as usual',
    );
    assert.throws(() => {
      inbound.push(Buffer.from('xyz'));
      inbound.fill(Buffer.alloc(2), () => undefined);
    }, /enough is buffered/);
  });

  it('resolves need() when enough arrives and rejects it when the stream fails', async () => {
    const inbound = new Inbound(source);
    const waiting = inbound.need(4);
    inbound.push(Buffer.from('ab'));
    inbound.push(Buffer.from('cd'));
    await waiting;
    const never = inbound.need(10);
    inbound.fail(new Error('gone'));
    await assert.rejects(never, /gone/);
  });
});
