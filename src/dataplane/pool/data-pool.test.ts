/** The pool's default size, and how a tick's cache misses are cut into tasks. */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { defaultWorkerThreads, readTaskSize } from './data-pool.js';
import { BATCH } from './tasks.js';

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

describe('readTaskSize', () => {
  test('misses are spread over the idle workers, at least one block and at most BATCH a task', () => {
    assert.equal(readTaskSize(16, 4, 0), 4); // a 1 MiB read, every worker idle: four tasks
    assert.equal(readTaskSize(16, 4, 2), 8); // two idle: two tasks
    assert.equal(readTaskSize(3, 4, 0), 1);
    assert.equal(readTaskSize(100, 4, 0), BATCH);
  });

  test("with every worker busy a tick's misses stay in one task (up to BATCH)", () => {
    assert.equal(readTaskSize(16, 4, 4), 16);
    assert.equal(readTaskSize(16, 4, 9), 16);
    assert.equal(readTaskSize(40, 4, 6), BATCH);
    assert.equal(readTaskSize(1, 1, 0), 1);
  });
});
