/** retryWhileInUse: which refusals are waited out, and what is said when the wait ends. */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { status } from '@grpc/grpc-js';
import { ConflictError, NotFoundError } from '../common/errors.js';
import { CsiError, failedPrecondition } from './csi-error.js';
import { retryWhileInUse } from './linger-wait.js';

describe('retryWhileInUse', { timeout: 30_000 }, () => {
  test('an "in use" refusal is tried again until the work succeeds', async () => {
    let tries = 0;
    const result = await retryWhileInUse(async () => {
      tries += 1;
      if (tries === 1) throw new ConflictError('locked for writing by node a');
      if (tries === 2) throw failedPrecondition('volume v is in use');
      return 'deleted';
    }, 10_000);
    assert.equal(result, 'deleted');
    assert.equal(tries, 3);
  });

  test('any other error at once, untouched', async () => {
    let tries = 0;
    const missing = new NotFoundError('no such volume');
    await assert.rejects(
      retryWhileInUse(async () => {
        tries += 1;
        throw missing;
      }, 10_000),
      (err) => err === missing,
    );
    assert.equal(tries, 1);
  });

  test('still in use when the wait ends: FAILED_PRECONDITION saying it waited', async () => {
    await assert.rejects(
      retryWhileInUse(async () => {
        throw new ConflictError('volume "v" is locked for writing by node a');
      }, 300),
      (err: unknown) => {
        assert.ok(err instanceof CsiError);
        assert.equal(err.code, status.FAILED_PRECONDITION);
        assert.match(err.message, /locked for writing by node a .*still so after 0\.3 s/);
        return true;
      },
    );
  });

  test('no wait: the refusal as it was; a nonsense wait is a programming error', async () => {
    const busy = new ConflictError('in use');
    await assert.rejects(
      retryWhileInUse(async () => {
        throw busy;
      }, 0),
      (err) => err === busy,
    );
    await assert.rejects(
      retryWhileInUse(async () => 1, -1),
      RangeError,
    );
  });
});
