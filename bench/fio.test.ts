/**
 * fio's JSON as the nbd engine writes it, reduced to the figures we report,
 * and the command lines that produce it.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import {
  JOBS,
  fioArgs,
  flushes,
  jobBefore,
  parseFioJson,
  prefillArgs,
  readOnly,
  readsData,
} from './fio.js';

function direction(iops: number, bwBytes: number, p99Nanos?: number) {
  return {
    iops,
    bw_bytes: bwBytes,
    clat_ns:
      p99Nanos === undefined ? {} : { percentile: { '50.000000': 1, '99.000000': p99Nanos } },
  };
}

describe('fio results', () => {
  test('a mixed job sums both directions and takes the worse p99, ignoring warnings before the JSON', () => {
    const json = JSON.stringify({
      jobs: [
        {
          error: 0,
          read: direction(700, 700 * 65536, 2_000_000),
          write: direction(300, 300 * 65536, 5_000_000),
          usr_cpu: 1,
          sys_cpu: 2,
        },
      ],
    });
    const r = parseFioJson(`fio: some warning about the engine\n${json}`);
    assert.equal(r.iops, 1000);
    assert.equal(r.readIops, 700);
    assert.equal(r.writeIops, 300);
    assert.equal(r.mibPerSecond, 62.5);
    assert.equal(r.p99Micros, 5000);
  });

  test('an idle direction does not contribute a latency', () => {
    const json = JSON.stringify({
      jobs: [
        { error: 0, read: direction(100, 409600, 900_000), write: direction(0, 0, 99_000_000) },
      ],
    });
    assert.equal(parseFioJson(json).p99Micros, 900);
  });

  test('per-job output (no group reporting) is summed across connections', () => {
    const one = { error: 0, read: direction(10, 40960, 1000), write: direction(0, 0) };
    assert.equal(parseFioJson(JSON.stringify({ jobs: [one, one, one, one] })).iops, 40);
  });

  test('FLUSH latency comes from the sync section; writes alone count as IOPS', () => {
    // Shaped as fio 3.33 writes it for ioengine=nbd with --fsync=1 (trimmed).
    const json = JSON.stringify({
      jobs: [
        {
          error: 0,
          read: direction(0, 0),
          write: direction(265, 265 * 4096, 9_000_000),
          sync: {
            total_ios: 2650,
            lat_ns: {
              min: 1000,
              max: 20_000_000,
              mean: 3_000_000,
              N: 2650,
              percentile: { '50.000000': 2_899_968, '99.000000': 7_110_656 },
            },
          },
        },
      ],
    });
    const r = parseFioJson(json);
    assert.equal(r.iops, 265);
    assert.equal(r.flushCount, 2650);
    assert.equal(r.flushP50Micros, 2899.968);
    assert.equal(r.flushP99Micros, 7110.656);
  });

  test("a job that never flushed has no FLUSH latency, even with fio's empty sync section", () => {
    const json = JSON.stringify({
      jobs: [
        {
          error: 0,
          read: direction(100, 409600, 900_000),
          write: direction(0, 0),
          sync: { total_ios: 0, lat_ns: { min: 0, max: 0, mean: 0, stddev: 0, N: 0 } },
        },
      ],
    });
    const r = parseFioJson(json);
    assert.equal(r.flushCount, 0);
    assert.equal(r.flushP50Micros, undefined);
    assert.equal(r.flushP99Micros, undefined);
  });

  test('per-job FLUSH figures: counts add, the worst percentile is kept (an upper bound)', () => {
    const job = (p99: number) => ({
      error: 0,
      read: direction(0, 0),
      write: direction(10, 40960),
      sync: { total_ios: 5, lat_ns: { N: 5, percentile: { '50.000000': 100, '99.000000': p99 } } },
    });
    const r = parseFioJson(JSON.stringify({ jobs: [job(2000), job(5000)] }));
    assert.equal(r.flushCount, 10);
    assert.equal(r.flushP99Micros, 5);
  });

  test('fio errors and missing output are failures, not zeros', () => {
    assert.throws(
      () =>
        parseFioJson(
          JSON.stringify({ jobs: [{ error: 5, read: direction(0, 0), write: direction(0, 0) }] }),
        ),
      /fio reported error 5/,
    );
    assert.throws(() => parseFioJson('fio: engine nbd not loadable\n'), /no JSON/);
    assert.throws(() => parseFioJson('{"jobs": []}'), /no jobs/);
  });
});

describe('fio command lines', () => {
  const settings = {
    uri: 'nbd://127.0.0.1:1/x',
    regionBytes: 2 ** 20,
    runtimeSeconds: 7,
    rampSeconds: 2,
    outputFile: '/tmp/out.json',
  };

  test('the job table is the documented set, each name unique', () => {
    assert.deepEqual(
      JOBS.map((j) => j.name),
      [
        'randread-4k-qd32',
        'randwrite-4k-qd32',
        'randrw70-64k-qd16',
        'seqwrite-1m-qd8',
        'seqread-1m-qd8',
        'randread-4k-qd32-4conn',
        'randwrite-4k-qd1-fsync1',
        'randwrite-64k-qd4-fsync16',
        'seqwrite-1m-qd8-fsync32',
        'seqwrite-1m-qd8-flush32',
        'seqread-1m-qd8-after-randwrite',
        'seqread-1m-qd8-after-randwrite-idle',
      ],
    );
    assert.deepEqual(
      JOBS.filter((j) => j.after !== undefined).map((j) => [
        j.name,
        jobBefore(j)?.name,
        j.idleSeconds,
      ]),
      [
        ['seqread-1m-qd8-after-randwrite', 'randwrite-4k-qd32', undefined],
        ['seqread-1m-qd8-after-randwrite-idle', 'randwrite-4k-qd32', 30],
      ],
    );
    assert.deepEqual(
      JOBS.filter(flushes).map((j) => [j.name, j.iodepth, j.extra, j.flushEvery]),
      [
        ['randwrite-4k-qd1-fsync1', 1, ['--fsync=1'], undefined],
        ['randwrite-64k-qd4-fsync16', 4, ['--fsync=16'], undefined],
        ['seqwrite-1m-qd8-fsync32', 8, ['--fsync=32'], undefined],
        ['seqwrite-1m-qd8-flush32', 8, [], 32],
      ],
    );
    assert.deepEqual(
      JOBS.filter(readsData).map((j) => j.name),
      [
        'randread-4k-qd32',
        'randrw70-64k-qd16',
        'seqread-1m-qd8',
        'randread-4k-qd32-4conn',
        'seqread-1m-qd8-after-randwrite',
        'seqread-1m-qd8-after-randwrite-idle',
      ],
    );
    assert.ok(
      !readOnly(JOBS.find((j) => j.name === 'seqread-1m-qd8-after-randwrite')!),
      'a read after writes is no job for a degraded cluster',
    );
  });

  test('a timed job goes through the nbd engine with its own depth, connections and mix', () => {
    const job = JOBS.find((j) => j.name === 'randrw70-64k-qd16')!;
    const args = fioArgs(job, settings);
    for (const expected of [
      '--ioengine=nbd',
      '--uri=nbd://127.0.0.1:1/x',
      '--size=1048576',
      '--rw=randrw',
      '--bs=64k',
      '--iodepth=16',
      '--numjobs=1',
      '--rwmixread=70',
      '--time_based',
      '--runtime=7',
      '--ramp_time=2',
      '--output-format=json',
      '--output=/tmp/out.json',
    ]) {
      assert.ok(args.includes(expected), `missing ${expected} in ${args.join(' ')}`);
    }
    assert.ok(
      fioArgs(
        JOBS.find((j) => j.name === 'randread-4k-qd32-4conn')!,
        settings,
      ).includes('--numjobs=4'),
    );
    assert.ok(
      fioArgs(
        JOBS.find((j) => j.name === 'randwrite-4k-qd1-fsync1')!,
        settings,
      ).includes('--fsync=1'),
    );
  });

  test('the prefill writes the whole region once, sequentially, untimed', () => {
    const args = prefillArgs(settings);
    assert.ok(args.includes('--rw=write') && args.includes('--size=1048576'));
    assert.ok(!args.includes('--time_based'));
  });
});
