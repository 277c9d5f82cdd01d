import assert from 'node:assert/strict';
import { test } from 'node:test';
import { workerExecArgv } from './worker-exec-argv.js';

test('per-process V8 flags are left out of a worker thread’s flags; node flags are kept', () => {
  assert.deepEqual(
    workerExecArgv(['--perf-basic-prof', '--cpu-prof', '--expose-gc', '--max-old-space-size=512']),
    ['--cpu-prof'],
  );
  assert.deepEqual(workerExecArgv(['--cpu-prof', '--cpu-prof-dir=/tmp']), [
    '--cpu-prof',
    '--cpu-prof-dir=/tmp',
  ]);
  assert.deepEqual(workerExecArgv([]), []);
});
