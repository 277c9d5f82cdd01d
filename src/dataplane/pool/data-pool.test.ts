/** The pool's default size: a single node's workers also wait on the disk, a cluster's tasks on peers. */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { defaultWorkerThreads } from './data-pool.js';

describe('defaultWorkerThreads', () => {
  test('a single node gets two per core, a cluster one; never more than 4 or fewer than 1', () => {
    assert.deepEqual(
      [1, 2, 3, 8].map((cores) => defaultWorkerThreads('single-node', cores)),
      [2, 4, 4, 4],
    );
    assert.deepEqual(
      [1, 2, 3, 8].map((cores) => defaultWorkerThreads('cluster', cores)),
      [1, 2, 3, 4],
    );
    assert.equal(defaultWorkerThreads('cluster', 0), 1);
  });
});
