import assert from 'node:assert/strict';
import { test } from 'node:test';
import { InvariantError } from './assert.js';
import { DirectoryError } from './dirs.js';
import { ChecksumError, ConflictError, IoError, NotFoundError, StoreFullError } from './errors.js';
import { serializeError } from './log.js';

test('operating errors are one line: name, message, code, no stack', () => {
  const systemError = Object.assign(new Error('ENOSPC: no space left on device, write'), {
    code: 'ENOSPC',
    syscall: 'write',
  });
  const cases: [Error, Record<string, unknown>][] = [
    [
      new StoreFullError('store full'),
      { type: 'StoreFullError', message: 'store full', code: 'ENOSPC' },
    ],
    [
      new ChecksumError('v', 3, 'bad block'),
      { type: 'ChecksumError', message: 'bad block', code: 'EIO' },
    ],
    [new NotFoundError('no volume "x"'), { type: 'NotFoundError', message: 'no volume "x"' }],
    [new ConflictError('locked elsewhere'), { type: 'ConflictError', message: 'locked elsewhere' }],
    [
      new DirectoryError('/x', 'data directory /x: nope'),
      { type: 'DirectoryError', message: 'data directory /x: nope' },
    ],
    [systemError, { type: 'Error', message: systemError.message, code: 'ENOSPC' }],
    [
      new IoError('EIO', 'write failed', { cause: systemError }),
      {
        type: 'IoError',
        message: 'write failed',
        code: 'EIO',
        cause: { type: 'Error', message: systemError.message, code: 'ENOSPC' },
      },
    ],
  ];
  for (const [err, expected] of cases) {
    const out = serializeError(err);
    assert.deepEqual(out, expected);
    assert.doesNotMatch(JSON.stringify(out), /\\n\s+at /);
  }
});

test('bugs keep their stack, also when wrapped in an operating error', () => {
  for (const err of [
    new TypeError('x is undefined'),
    new InvariantError('slot counted twice'),
    new IoError('EIO', 'request failed', { cause: new TypeError('x is undefined') }),
  ]) {
    const out = serializeError(err) as { stack?: string };
    assert.match(out.stack ?? '', /\n\s+at /, `${err.name} lost its stack`);
  }
});
