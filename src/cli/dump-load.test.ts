/** The parts of block dump / load that need no server: input checks and the progress line. */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
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
