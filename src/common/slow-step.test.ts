import assert from 'node:assert/strict';
import { test } from 'node:test';
import { pino } from 'pino';
import { reportIfSlow } from './slow-step.js';

function recordingLogger() {
  const lines: Record<string, unknown>[] = [];
  const log = pino({ level: 'info' }, { write: (line: string) => lines.push(JSON.parse(line)) });
  return { log, lines };
}

test('a step that outlasts the report interval is named in the log until it ends', async () => {
  const { log, lines } = recordingLogger();
  const result = await reportIfSlow(
    log,
    'close volumes',
    () => new Promise((resolve) => setTimeout(() => resolve(7), 60)),
    20,
  );
  assert.equal(result, 7);
  assert.ok(lines.length >= 1, 'reported at least once');
  for (const line of lines) {
    assert.equal(line.step, 'close volumes');
    assert.equal(line.msg, 'step still running');
  }
  const count = lines.length;
  await new Promise((resolve) => setTimeout(resolve, 50));
  assert.equal(lines.length, count, 'no report once it ended');
});

test('a failing step fails with its own error and stops reporting', async () => {
  const { log, lines } = recordingLogger();
  await assert.rejects(
    reportIfSlow(log, 'release', () => Promise.reject(new Error('etcd away')), 5),
    /etcd away/,
  );
  await new Promise((resolve) => setTimeout(resolve, 20));
  assert.equal(lines.length, 0);
});
