/** CaptureQueue: FLUSHes that arrive while a capture waits share it; none is covered by a capture that started before it. */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { CaptureQueue } from './capture-queue.js';

/** A capture function whose runs the test finishes by hand, and what each run saw. */
function manualCaptures() {
  const runs: { seen: number; finish: (err?: Error) => void }[] = [];
  let written = 0;
  const queue = new CaptureQueue(
    () =>
      new Promise<void>((resolve, reject) => {
        runs.push({ seen: written, finish: (err) => (err ? reject(err) : resolve()) });
      }),
  );
  return { queue, runs, write: () => ++written };
}

const turn = () => new Promise<void>((resolve) => setImmediate(resolve));

describe('capture queue', () => {
  test('FLUSHes arriving while a capture runs share the next one', async () => {
    const { queue, runs, write } = manualCaptures();
    write();
    const first = queue.flush();
    await turn();
    assert.equal(runs.length, 1, 'the first FLUSH captures at once');
    write();
    const second = queue.flush();
    write();
    const third = queue.flush();
    const fourth = queue.flush();
    assert.equal(second, third, 'joined: the same capture');
    assert.equal(third, fourth);
    await turn();
    assert.equal(runs.length, 1, 'nothing more starts while the first runs');
    runs[0].finish();
    await first;
    await turn();
    assert.equal(runs.length, 2, 'one capture for the three waiting FLUSHes');
    assert.equal(runs[1].seen, 3, 'it saw every write completed before each of them');
    runs[1].finish();
    await Promise.all([second, third, fourth]);
  });

  test('a FLUSH after the waiting capture started gets a capture of its own', async () => {
    const { queue, runs, write } = manualCaptures();
    const first = queue.flush();
    await turn();
    const second = queue.flush();
    runs[0].finish();
    await first;
    await turn();
    assert.equal(runs.length, 2, 'the second capture has started');
    write();
    const third = queue.flush();
    assert.notEqual(third, second, 'a write after the second capture took its ranges');
    runs[1].finish();
    await second;
    await turn();
    assert.equal(runs.length, 3);
    assert.equal(runs[2].seen, 1);
    runs[2].finish();
    await third;
  });

  test('a failed capture fails every FLUSH that joined it, and the next one still runs', async () => {
    const { queue, runs } = manualCaptures();
    const first = queue.flush();
    await turn();
    const second = queue.flush();
    const third = queue.flush();
    runs[0].finish();
    await first;
    await turn();
    runs[1].finish(new Error('log write failed'));
    await assert.rejects(second, /log write failed/);
    await assert.rejects(third, /log write failed/);
    const fourth = queue.flush();
    await turn();
    assert.equal(runs.length, 3);
    runs[2].finish();
    await fourth;
  });
});
