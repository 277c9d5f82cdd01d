/** The parts of block dump / load that need no server: input checks and the progress line. */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { BackgroundHash, sharedBuffers } from './background-hash.js';
import { dumpOutputProblem, pipedInputProblem } from './dump-load-commands.js';
import { TransferProgress, formatDuration } from './transfer-progress.js';

describe('block dump / load: input checks', () => {
  it('refuses - as input when stdin is a terminal, and takes a pipe or a file', () => {
    assert.match(pipedInputProblem({ isTTY: true }) ?? '', /nothing is piped into stdin/);
    assert.equal(pipedInputProblem({ isTTY: false }), undefined);
    assert.equal(pipedInputProblem({}), undefined);
  });

  it('refuses - as output when stdout is a terminal', () => {
    assert.match(dumpOutputProblem({ isTTY: true }) ?? '', /stdout is a terminal/);
    assert.equal(dumpOutputProblem({}), undefined);
  });
});

describe('block dump / load: the background sha256', () => {
  it('hashes views of two memories and zero runs in call order, as one sha256', async () => {
    // Two sets of shared buffers: the thread must switch memory when an update names a new one.
    const [a, b] = sharedBuffers(2, 4096);
    const [c] = sharedBuffers(1, 8192);
    const expected = createHash('sha256');
    const hash = new BackgroundHash();
    const feed = async (view: Buffer) => {
      randomBytes(view.length).copy(view);
      expected.update(view);
      await hash.update(view);
    };
    await feed(a);
    await feed(b.subarray(100, 3000));
    hash.zeros(3 * 1024 * 1024 + 5);
    expected.update(Buffer.alloc(3 * 1024 * 1024 + 5));
    await feed(c);
    await feed(a.subarray(0, 1));
    assert.equal(await hash.digest(), expected.digest('hex'));
  });

  it('refuses a buffer the thread cannot see', async () => {
    const hash = new BackgroundHash();
    await assert.rejects(hash.update(Buffer.alloc(16)), TypeError);
    await hash.close();
  });
});

describe('block dump / load: the progress line', () => {
  it('says bytes of the total, the rate and the time left', () => {
    const progress = new TransferProgress('dump v', 1024 * 1024 * 1024, null);
    assert.equal(
      progress.line(512 * 1024 * 1024, 2),
      'dump v: 512 MiB / 1 GiB, 256 MiB/s, 2 s left',
    );
    assert.equal(progress.line(0, 0), 'dump v: 0 B / 1 GiB, 0 B/s');
  });

  it('prints nothing when stderr is not a terminal', () => {
    const progress = new TransferProgress('load v', 100, null);
    progress.update(50); // no stream: must not throw or write
    progress.end();
  });

  it('formats durations', () => {
    assert.equal(formatDuration(5), '5 s');
    assert.equal(formatDuration(75), '1 min 15 s');
    assert.equal(formatDuration(3 * 3600 + 120), '3 h 2 min');
  });
});
