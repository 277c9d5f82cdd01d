/**
 * WatchHub on its own: events reach watchers only once durable, in revision
 * order; a revision applied out of order is a broken invariant.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { InvariantError } from '../../../common/assert.js';
import { logger } from '../../../common/log.js';
import { MetadataCompactedError } from '../errors.js';
import type { WatchEvent } from '../store.js';
import type { TxnRecord } from './record.js';
import { WatchHub } from './watch-hub.js';

const quiet = logger('metadata').child({}, { level: 'silent' });
const put = (revision: number, key: string): TxnRecord => ({
  revision,
  mutations: [{ kind: 'put', key, value: Buffer.from(key) }],
});
const tick = () => new Promise((resolve) => setImmediate(resolve));

test('events are delivered once durable, in order, to watches of their prefix', async () => {
  const hub = new WatchHub(10, 100, quiet);
  hub.replayed(put(11, 'a/1'));
  const seen: WatchEvent[] = [];
  hub.watch('a/', 11, (event) => seen.push(event));
  hub.applied(put(12, 'a/2'));
  hub.applied(put(13, 'b/1'));
  await tick();
  assert.deepEqual(
    seen.map((e) => e.modRevision),
    [11],
    'history at once; applied but not durable: nothing',
  );
  hub.deliverDurable(13);
  await tick();
  assert.deepEqual(
    seen.map((e) => [e.key, e.modRevision]),
    [
      ['a/1', 11],
      ['a/2', 12],
    ],
  );
  assert.throws(() => hub.watch('a/', 10, () => undefined), MetadataCompactedError);
  await hub.closeAll();
});

test('a revision applied at or below the last one is a broken invariant', () => {
  const hub = new WatchHub(10, 100, quiet);
  assert.throws(() => hub.replayed(put(10, 'x')), InvariantError);
  hub.applied(put(11, 'x'));
  const outOfOrder = (err: unknown) =>
    err instanceof InvariantError && /revision 11 applied after 11/.test(err.message);
  assert.throws(() => hub.applied(put(11, 'y')), outOfOrder);
});
