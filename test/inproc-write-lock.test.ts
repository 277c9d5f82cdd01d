/**
 * The volume write lock in an in-process cluster
 * (test/support/inproc-cluster.ts): the node whose session came first
 * writes; another node serves the volume read-only and names the writer;
 * once the writer lets go, the other node takes the lock and reads what the
 * first one committed.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { after, before, describe, test } from 'node:test';
import type { NbdExport } from '../src/dataplane/nbd/export.js';
import { createCluster, type InProcessCluster } from './support/inproc-cluster.js';

const MiB = 1024 * 1024;

describe('in-process cluster: volume write lock', { timeout: 30_000 }, () => {
  let cluster: InProcessCluster;
  before(async () => {
    cluster = await createCluster(2, { replication: 2, lockLingerMs: 0 });
  });
  after(() => cluster?.close());

  test('a second node serves read-only naming the writer; after the writer lets go it takes over', async () => {
    const [first, second] = cluster.nodes;
    await first.node.createVolume('shared', 4 * MiB);
    const data = randomBytes(MiB);

    const writer = await first.node.open('shared');
    assert.ok(writer);
    assert.equal(writer.readOnly, false);
    await writer.write(0, data, false);
    await writer.flush();

    const reader = await second.node.open('shared');
    assert.ok(reader);
    try {
      assert.equal(reader.readOnly, true);
      const writtenBy = `read-only: written by node ${first.uuid} \\(host [^,]+, pid ${process.pid}\\) \\(lock epoch \\d+\\)`;
      assert.match(reader.description, new RegExp(writtenBy));
      const seen = Buffer.alloc(data.length);
      await reader.read(0, seen);
      assert.ok(seen.equals(data), 'the reader sees the committed version');
    } finally {
      await reader.close();
    }

    // The writer's last session ends; with no linger it commits and releases the lock.
    await writer.close();
    const deadline = Date.now() + 10_000;
    let taken: NbdExport | undefined;
    while (!taken) {
      const exp = await second.node.open('shared');
      assert.ok(exp);
      if (!exp.readOnly) taken = exp;
      else {
        await exp.close();
        assert.ok(
          Date.now() < deadline,
          `the second node still serves read-only after 10 s: ${exp.description}`,
        );
        await new Promise((resolve) => setTimeout(resolve, 50));
      }
    }
    try {
      assert.doesNotMatch(taken.description, /read-only/);
      const back = Buffer.alloc(data.length);
      await taken.read(0, back);
      assert.ok(back.equals(data), 'the new writer reads what the first committed');
      // While it writes, the first node is the one told who writes.
      const again = await first.node.open('shared');
      assert.ok(again);
      await again.close();
      assert.equal(again.readOnly, true);
      assert.match(again.description, new RegExp(`written by node ${second.uuid}`));
    } finally {
      await taken.close();
    }
  });
});
