import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { parsePskFile, PskFileError } from './tls-psk.js';

const KEY = '00112233445566778899aabbccddeeff';

describe('parsePskFile', () => {
  it('reads identity:hexkey lines as psktool writes them, skipping blank lines', () => {
    const keys = parsePskFile(`alice:${KEY}\n\nbob:${KEY.toUpperCase()}ff\r\n`, 'k.psk');
    assert.deepEqual([...keys.keys()], ['alice', 'bob']);
    assert.equal(keys.get('alice')!.toString('hex'), KEY);
    assert.equal(keys.get('bob')!.length, 17);
  });

  it('names the file and line of what is wrong', () => {
    const bad: Array<[string, RegExp]> = [
      [`${KEY}`, /k\.psk line 1: expected IDENTITY:HEXKEY/],
      [`alice:${KEY}\nbob:xyz`, /line 2: the key must be an even number of hex digits/],
      ['alice:0011', /line 1: a 2-byte key/],
      [`alice:${KEY}\nalice:${KEY}`, /line 2: identity "alice" appears twice/],
      ['\n\n', /k\.psk: no keys/],
    ];
    for (const [text, message] of bad)
      assert.throws(
        () => parsePskFile(text, 'k.psk'),
        (err: Error) => err instanceof PskFileError && message.test(err.message),
      );
  });
});
