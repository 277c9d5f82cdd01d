/** The run's counters from /metrics text: summed over labels, differenced, printed. */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { counterDeltas, formatCounters, parseCounters } from './server-counters.js';

const exposition = (commits: number, seconds: number, full: number) =>
  [
    '# HELP torus_flush_seconds Time to commit a volume version',
    '# TYPE torus_flush_seconds histogram',
    `torus_flush_seconds_bucket{le="0.001"} 0`,
    `torus_flush_seconds_sum ${seconds}`,
    `torus_flush_seconds_count ${commits}`,
    'torus_flushed_blocks_total 40',
    `torus_intent_log_full_total{volume="a"} ${full}`,
    `torus_intent_log_full_total{volume="b"} 1`,
    'torus_intent_log_wraps_total 3',
    'torus_nbd_requests_total{command="write",result="ok"} 99',
    '',
  ].join('\n');

describe('server counters', () => {
  test('counters are summed over their labels; others and comments are ignored', () => {
    const sample = parseCounters(exposition(4, 0.2, 2));
    assert.equal(sample.torus_flush_seconds_count, 4);
    assert.equal(sample.torus_flush_seconds_sum, 0.2);
    assert.equal(sample.torus_intent_log_full_total, 3);
    assert.equal(sample.torus_intent_log_wraps_total, 3);
  });

  test('a counter the node does not export reads 0', () => {
    assert.equal(parseCounters('torus_volumes 1\n').torus_intent_log_full_total, 0);
  });

  test("deltas give commits, their mean in ms and the log's events", () => {
    const c = counterDeltas(
      parseCounters(exposition(4, 0.25, 2)),
      parseCounters(exposition(9, 0.75, 7)),
    );
    assert.deepEqual(c, {
      commits: 5,
      commitMeanMs: 100,
      committedBlocks: 0,
      logFull: 5,
      logWraps: 0,
    });
    assert.equal(formatCounters(c), '5 commits of 100 ms mean, log full 5, wraps 0');
  });

  test('no commits: no mean', () => {
    const same = parseCounters(exposition(4, 0.2, 2));
    assert.equal(formatCounters(counterDeltas(same, same)), '0 commits, log full 0, wraps 0');
  });
});
