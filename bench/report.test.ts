/**
 * Medians, ratios and the printed table; and the bench's flags, which must
 * reject a typo before any server starts.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { UsageError, exportBytesFor, parseBenchOptions } from './options.js';
import { formatReport, median, ratios, summarize, type RunRecord } from './report.js';

const result = (iops: number) => ({
  iops,
  readIops: iops,
  writeIops: 0,
  mibPerSecond: iops / 256,
  p99Micros: 100,
  flushCount: 0,
  serverCpuPercent: 50,
  fioCpuPercent: 40,
});

describe('report', () => {
  test('median of odd and even counts; NaN for nothing', () => {
    assert.equal(median([3, 1, 2]), 2);
    assert.equal(median([4, 1, 3, 2]), 2.5);
    assert.ok(Number.isNaN(median([])));
  });

  test('medians per job and server skip failed runs but count them; ratios are torus over each peer', () => {
    const runs: RunRecord[] = [
      { job: 'j', server: 'torus', repeat: 0, result: result(100) },
      { job: 'j', server: 'torus', repeat: 1, result: result(300) },
      { job: 'j', server: 'torus', repeat: 2, error: 'fio exited with 1' },
      { job: 'j', server: 'nbd-server', repeat: 0, result: result(400) },
      { job: 'j', server: 'nbdkit', repeat: 0, result: result(800) },
    ];
    const summaries = summarize(runs, ['j'], ['torus', 'nbd-server', 'nbdkit']);
    const torus = summaries.find((s) => s.server === 'torus')!;
    assert.equal(torus.iops, 200);
    assert.equal(torus.runs, 2);
    assert.equal(torus.failures, 1);
    assert.deepEqual(ratios(summaries), [
      { job: 'j', ours: 'torus', peer: 'nbd-server', ratio: 0.5 },
      { job: 'j', ours: 'torus', peer: 'nbdkit', ratio: 0.25 },
    ]);
    const text = formatReport(summaries, ratios(summaries), { torus: 64 * 2 ** 20 });
    assert.match(text, /torus\/nbd-server 0\.50 {3}torus\/nbdkit 0\.25/);
    assert.match(text, /2\+1err/);
    assert.match(text, /peak RSS .*torus 64\.0 MiB/);
  });

  test('a degraded cluster is also reported as a ratio of the healthy cold cluster', () => {
    const runs: RunRecord[] = [
      { job: 'j', server: 'torus-cluster-cold', repeat: 0, result: result(200) },
      { job: 'j', server: 'torus-cluster-degraded', repeat: 0, result: result(150) },
      { job: 'j', server: 'nbd-server', repeat: 0, result: result(100) },
    ];
    const r = ratios(
      summarize(runs, ['j'], ['torus-cluster-cold', 'torus-cluster-degraded', 'nbd-server']),
    );
    assert.deepEqual(
      r.find((x) => x.ours === 'torus-cluster-degraded' && x.peer === 'torus-cluster-cold')?.ratio,
      0.75,
    );
    assert.equal(r.filter((x) => x.peer === 'nbd-server').length, 2);
  });

  test('durable-write jobs get FLUSH columns: medians of the runs that flushed, - elsewhere', () => {
    const flushed = (iops: number, p50: number, p99: number) => ({
      ...result(iops),
      flushCount: iops,
      flushP50Micros: p50,
      flushP99Micros: p99,
    });
    const runs: RunRecord[] = [
      { job: 'd', server: 'torus', repeat: 0, result: flushed(200, 3000, 7000) },
      { job: 'd', server: 'torus', repeat: 1, result: flushed(300, 2000, 5000) },
      { job: 'd', server: 'nbd-server', repeat: 0, result: flushed(2000, 310, 900) },
      { job: 'r', server: 'torus', repeat: 0, result: result(100) },
    ];
    const summaries = summarize(runs, ['d', 'r'], ['torus', 'nbd-server']).filter(
      (s) => s.runs > 0,
    );
    const torus = summaries.find((s) => s.job === 'd' && s.server === 'torus')!;
    assert.equal(torus.flushP50Micros, 2500);
    assert.equal(torus.flushP99Micros, 6000);
    assert.ok(Number.isNaN(summaries.find((s) => s.job === 'r')!.flushP99Micros));
    const lines = formatReport(summaries, ratios(summaries), {}).split('\n');
    assert.match(lines[0], /p99 us +flush p50 us +flush p99 us +srv CPU%/);
    assert.match(
      lines.find((l) => l.includes('nbd-server'))!,
      /\b310 +900\b/,
    );
    assert.match(
      lines.find((l) => l.startsWith('r '))!,
      /100 +- +- +50/,
    );
  });

  test('without FLUSH jobs the table keeps its columns', () => {
    const summaries = summarize(
      [{ job: 'j', server: 'torus', repeat: 0, result: result(10) }],
      ['j'],
      ['torus'],
    );
    assert.doesNotMatch(formatReport(summaries, [], {}), /flush/);
  });

  test('without torus there are no ratios, only the peers', () => {
    const summaries = summarize(
      [{ job: 'j', server: 'nbdkit', repeat: 0, result: result(10) }],
      ['j'],
      ['nbdkit'],
    );
    assert.deepEqual(ratios(summaries), []);
  });
});

describe('bench flags', () => {
  test('defaults: every job and server, 10 s runs after 2 s ramp, 3 repeats, 512 MiB region', () => {
    const o = parseBenchOptions([])!;
    assert.equal(o.runtimeSeconds, 10);
    assert.equal(o.rampSeconds, 2);
    assert.equal(o.repeats, 3);
    assert.equal(o.jobs.length, 12);
    assert.deepEqual(o.servers, ['torus', 'nbd-server', 'nbdkit']);
    assert.equal(o.regionBytes, 512 * 2 ** 20);
    assert.equal(o.encrypt, false);
    assert.equal(o.settleSeconds, 60);
  });

  test('lists pick jobs and servers in the order given', () => {
    const o = parseBenchOptions([
      '--jobs',
      'seqread-1m-qd8,randread-4k-qd32',
      '--servers',
      'nbdkit,torus',
      '--encrypt',
      '--block-size',
      '4KiB',
      '--json',
      'r.json',
      '--settle',
      '0',
    ])!;
    assert.deepEqual(
      o.jobs.map((j) => j.name),
      ['seqread-1m-qd8', 'randread-4k-qd32'],
    );
    assert.deepEqual(o.servers, ['nbdkit', 'torus']);
    assert.equal(o.blockSize, '4KiB');
    assert.equal(o.jsonFile, 'r.json');
    assert.equal(o.settleSeconds, 0);
  });

  test('same-memory mode: a budget, and an export that grows with a region above 1 GiB', () => {
    const o = parseBenchOptions(['--memory-budget', '512MiB', '--region', '4GiB'])!;
    assert.equal(o.memoryBudgetBytes, 512 * 2 ** 20);
    assert.equal(exportBytesFor(o), 4 * 2 ** 30);
    assert.equal(exportBytesFor(parseBenchOptions([])!), 2 ** 30);
    assert.equal(parseBenchOptions([])!.memoryBudgetBytes, undefined);
  });

  test('help is not an error', () => {
    assert.equal(parseBenchOptions(['--help']), undefined);
  });

  for (const [argv, expected] of [
    [['--jobs', 'randread'], /--jobs: unknown "randread"/],
    [['--servers', 'qemu-nbd'], /--servers: unknown "qemu-nbd"/],
    [['--runtime', '0'], /--runtime: expected a positive integer/],
    [['--repeats', 'x'], /--repeats/],
    [['--region', '65GiB'], /--region: expected a whole number of MiB/],
    [
      ['--memory-budget', '10MiB'],
      /--memory-budget: expected a whole number of MiB, at least 64MiB/,
    ],
    [['--block-size', 'big'], /--block-size: not a size/],
    [['--settle', 'soon'], /--settle: expected a non-negative integer/],
    [['--frobnicate'], /frobnicate/],
  ] as [string[], RegExp][]) {
    test(`rejects ${argv.join(' ')}`, () => {
      assert.throws(
        () => parseBenchOptions(argv),
        (err: unknown) => err instanceof UsageError && expected.test(err.message),
      );
    });
  }
});
