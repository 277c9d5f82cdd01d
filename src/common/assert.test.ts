/**
 * The assertion module: a broken invariant throws InvariantError, which an
 * NBD client sees as EIO (the session's reply path is in
 * test/invariant-reply.test.ts); a lazy message is built only on failure.
 */
import nodeAssert from 'node:assert/strict';
import { test } from 'node:test';
import { assert, InvariantError, invariantBroken } from './assert.js';
import { errnoOf, IoError } from './errors.js';

test('a holding assertion does nothing and never builds its message', () => {
  let built = 0;
  assert(true, 'never thrown');
  assert(1 + 1 === 2, () => `${++built}`);
  nodeAssert.equal(built, 0);
});

test('a failing assertion throws InvariantError with its message, constant or lazy', () => {
  nodeAssert.throws(
    () => assert(false, 'slot freed twice'),
    (err: unknown) => {
      nodeAssert.ok(err instanceof InvariantError && !(err instanceof IoError));
      nodeAssert.equal(err.name, 'InvariantError');
      nodeAssert.match(err.message, /^invariant broken: slot freed twice$/);
      return true;
    },
  );
  const slot = 7;
  nodeAssert.throws(
    () => assert(slot < 0, () => `slot ${slot} is busy`),
    /invariant broken: slot 7 is busy/,
  );
  nodeAssert.throws(() => invariantBroken('generation went back'), InvariantError);
});

test('a broken invariant maps to EIO for the client', () => {
  nodeAssert.equal(errnoOf(new InvariantError('x')), 'EIO');
  nodeAssert.equal(
    errnoOf(new IoError('ENOSPC', 'full')),
    'ENOSPC',
    'handled errors keep their errno',
  );
});
