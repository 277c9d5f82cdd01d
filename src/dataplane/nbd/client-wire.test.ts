/**
 * Byte-exact checks of the client's codecs. Expected bytes are written out by
 * hand from the NBD protocol document, not produced by the code under test.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import * as c from './client-wire.js';
import * as w from './wire.js';

const hex = (s: string) => Buffer.from(s.replace(/\s+/g, ''), 'hex');

describe('nbd client wire: handshake', () => {
  it('decodes the server greeting', () => {
    assert.deepEqual(c.decodeServerGreeting(hex('4e42444d41474943 49484156454f5054 0003')), {
      magicOk: true,
      handshakeFlags: 3,
    });
    assert.equal(
      c.decodeServerGreeting(hex('4e42444d41474943 0000420281861253 0003')).magicOk,
      false,
    );
  });

  it('encodes options: IHAVEOPT, option, length, data', () => {
    assert.deepEqual(
      c.encodeOption(w.NBD_OPT_STRUCTURED_REPLY),
      hex('49484156454f5054 00000008 00000000'),
    );
    assert.deepEqual(
      c.encodeOption(w.NBD_OPT_EXPORT_NAME, Buffer.from('ab')),
      hex('49484156454f5054 00000001 00000002 6162'),
    );
  });

  it('encodes NBD_OPT_GO data: name, then the info requests', () => {
    assert.deepEqual(
      c.encodeGoData('vol', [w.NBD_INFO_BLOCK_SIZE]),
      hex('00000003 766f6c 0001 0003'),
    );
    assert.deepEqual(c.encodeGoData('', []), hex('00000000 0000'));
  });

  it('encodes NBD_OPT_SET_META_CONTEXT data: name, count, queries', () => {
    const expected = Buffer.concat([
      hex('00000003 766f6c 00000001 0000000f'),
      Buffer.from('base:allocation'),
    ]);
    assert.deepEqual(c.encodeMetaContextData('vol', ['base:allocation']), expected);
    assert.deepEqual(c.encodeMetaContextData('', []), hex('00000000 00000000'));
  });

  it('decodes option reply headers, NBD_REP_INFO and NBD_REP_META_CONTEXT payloads', () => {
    assert.deepEqual(
      c.decodeOptionReplyHeader(hex('0003e889045565a9 00000007 00000003 0000000c')),
      {
        magicOk: true,
        option: w.NBD_OPT_GO,
        reply: w.NBD_REP_INFO,
        length: 12,
      },
    );
    assert.deepEqual(c.decodeInfoReply(hex('0000 0000010000000005 0d0d')), {
      type: w.NBD_INFO_EXPORT,
      size: 2 ** 40 + 5,
      transmissionFlags: 0x0d0d,
    });
    assert.deepEqual(c.decodeInfoReply(hex('0003 00000001 00001000 02000000')), {
      type: w.NBD_INFO_BLOCK_SIZE,
      minimum: 1,
      preferred: 4096,
      maximumPayload: 32 * 1024 * 1024,
    });
    assert.equal(c.decodeInfoReply(hex('0001 76')), undefined);
    assert.throws(() => c.decodeInfoReply(hex('0000 00000000')), RangeError);
    assert.deepEqual(
      c.decodeRepMetaContext(Buffer.concat([hex('00000001'), Buffer.from('base:allocation')])),
      { contextId: 1, name: 'base:allocation' },
    );
  });

  it('decodes the end of NBD_OPT_EXPORT_NAME', () => {
    assert.deepEqual(c.decodeExportNameReply(hex('0000000000000400 0001')), {
      size: 1024,
      transmissionFlags: 1,
    });
  });

  it('round-trips with the server encoders', () => {
    const info = w.encodeInfoExport(123 * 4096, 0x1ff);
    assert.deepEqual(c.decodeInfoReply(info), {
      type: w.NBD_INFO_EXPORT,
      size: 123 * 4096,
      transmissionFlags: 0x1ff,
    });
  });
});

describe('nbd client wire: transmission', () => {
  it('tells reply kinds apart by magic', () => {
    assert.equal(c.replyHeaderSize(0x67446698), 16);
    assert.equal(c.replyHeaderSize(0x668e33ef), 20);
    assert.equal(c.replyHeaderSize(0x25609513), 0);
  });

  it('reads a simple reply: magic, error, cookie', () => {
    const r = hex('67446698 00000016 00000007 00000002');
    assert.equal(c.replyMagic(r, 0), w.NBD_SIMPLE_REPLY_MAGIC);
    assert.equal(c.simpleReplyError(r, 0), w.NBD_EINVAL);
    assert.equal(c.replyCookieHigh(r, 0), 7);
    assert.equal(c.replyCookieLow(r, 0), 2);
  });

  it('reads a structured chunk header: flags, type, cookie, length', () => {
    const r = hex('668e33ef 0001 0005 00000000 00000009 0000000c');
    assert.equal(c.chunkFlags(r, 0), w.NBD_REPLY_FLAG_DONE);
    assert.equal(c.chunkType(r, 0), w.NBD_REPLY_TYPE_BLOCK_STATUS);
    assert.equal(c.replyCookieLow(r, 0), 9);
    assert.equal(c.chunkLength(r, 0), 12);
  });

  it('decodes error chunks, cutting a message that overruns the payload', () => {
    assert.deepEqual(c.decodeErrorChunk(hex('00000005 0002 6f6b')), { error: 5, message: 'ok' });
    assert.deepEqual(c.decodeErrorChunk(hex('00000016 00ff 6f6b')), { error: 22, message: 'ok' });
    assert.ok(c.isErrorChunkType(w.NBD_REPLY_TYPE_ERROR));
    assert.ok(c.isErrorChunkType(w.NBD_REPLY_TYPE_ERROR_OFFSET));
    assert.ok(!c.isErrorChunkType(w.NBD_REPLY_TYPE_OFFSET_DATA));
  });

  it('walks block status descriptors', () => {
    const payload = hex('00000001 00010000 00000003 00020000 00000000 0000');
    const seen: [number, number][] = [];
    const id = c.forEachBlockStatusExtent(payload, payload.length, (length, flags) =>
      seen.push([length, flags]),
    );
    assert.equal(id, 1);
    assert.deepEqual(seen, [
      [0x10000, 3],
      [0x20000, 0],
    ]);
  });

  it('decodes what the server encodes (error and block status chunks)', () => {
    const chunk = w.encodeErrorChunk(w.NBD_REPLY_FLAG_DONE, 0, 4, w.NBD_EIO, 'bad block');
    assert.equal(c.chunkType(chunk, 0), w.NBD_REPLY_TYPE_ERROR);
    assert.deepEqual(c.decodeErrorChunk(chunk.subarray(w.STRUCTURED_REPLY_HEADER_SIZE)), {
      error: w.NBD_EIO,
      message: 'bad block',
    });
  });
});
