/**
 * BackgroundJob with fake work (counters and gates the test opens): triggers
 * coalesce, runs never overlap, both kinds of period, failures, close()
 * during a run, and pacing.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { BackgroundJob, type BackgroundJobOptions } from './background-job.js';
import { TokenBucket } from './token-bucket.js';

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** Work that records each run and, while `hold` is set, waits for the test to release it. */
function fakeWork() {
  const fake = {
    runs: 0,
    active: 0,
    maxActive: 0,
    starts: [] as number[],
    ends: [] as number[],
    hold: false,
    release: () => {},
    work: async () => {
      fake.runs++;
      fake.active++;
      fake.maxActive = Math.max(fake.maxActive, fake.active);
      fake.starts.push(performance.now());
      if (fake.hold) await new Promise<void>((resolve) => (fake.release = resolve));
      fake.active--;
      fake.ends.push(performance.now());
    },
  };
  return fake;
}

function jobOf(
  work: () => Promise<void>,
  options: Partial<BackgroundJobOptions> = {},
): BackgroundJob {
  return new BackgroundJob({
    work,
    onError: (err) => assert.fail(`unexpected run failure: ${String(err)}`),
    ...options,
  });
}

async function until(what: string, check: () => boolean, timeoutMs = 5000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > deadline) assert.fail(`timed out waiting for ${what}`);
    await sleep(5);
  }
}

describe('BackgroundJob', { timeout: 30_000 }, () => {
  test('triggers before a run make one run after settleMs; triggers during a run make exactly one more', async () => {
    const fake = fakeWork();
    const job = jobOf(fake.work, { settleMs: 50 });
    for (let i = 0; i < 5; i++) job.schedule();
    await sleep(20);
    assert.equal(fake.runs, 0, 'nothing before the settle time');
    fake.hold = true;
    await until('the first run', () => fake.runs === 1);
    assert.ok(job.running);
    for (let i = 0; i < 5; i++) job.schedule();
    fake.hold = false;
    fake.release();
    await job.idle();
    assert.equal(fake.runs, 2, 'one run, then one more for all the triggers during it');
    assert.equal(fake.maxActive, 1, 'never two at once');
    assert.ok(!job.running);
    await job.close();
  });

  test('runNow() starts at once, serves a pending schedule(), and joins a run in progress', async () => {
    const fake = fakeWork();
    const job = jobOf(fake.work, { settleMs: 200 });
    job.schedule();
    fake.hold = true;
    const first = job.runNow();
    assert.equal(fake.runs, 1, 'started synchronously');
    const joined = job.runNow();
    assert.equal(joined, first, 'a second runNow() joins the first');
    fake.hold = false;
    fake.release();
    await first;
    await sleep(300);
    assert.equal(fake.runs, 1, 'the pending schedule() was served by that run');
    await job.close();
  });

  test("'fixed' period: with runAtStart, a run at once and then one per interval", async () => {
    const fake = fakeWork();
    const job = jobOf(fake.work, {
      settleMs: 0,
      intervalMs: 60,
      period: 'fixed',
      runAtStart: true,
    });
    job.start();
    job.start(); // a second start() adds no second period
    await until('the run at start', () => fake.runs === 1, 1000);
    await sleep(400);
    assert.ok(fake.runs >= 3 && fake.runs <= 9, `${fake.runs} runs in ~0.4 s at one per 60 ms`);
    await job.close();
    const after = fake.runs;
    await sleep(150);
    assert.equal(fake.runs, after, 'no run after close()');
  });

  test("'after-run' period: the first run one interval after start(), the next one interval after it ended", async () => {
    const fake = fakeWork();
    const job = jobOf(fake.work, { intervalMs: 80, period: 'after-run' });
    const started = performance.now();
    job.start();
    await sleep(40);
    assert.equal(fake.runs, 0, 'no run at start');
    fake.hold = true;
    await until('the first periodic run', () => fake.runs === 1, 2000);
    assert.ok(
      fake.starts[0] - started >= 70,
      `first run ${(fake.starts[0] - started).toFixed(0)} ms after start()`,
    );
    await sleep(200); // longer than the interval: still no second run while the first goes on
    assert.equal(fake.runs, 1);
    fake.hold = false;
    fake.release();
    await until('the second periodic run', () => fake.runs === 2, 2000);
    const gap = fake.starts[1] - fake.ends[0];
    assert.ok(gap >= 70, `the next run ${gap.toFixed(0)} ms after the previous ended`);
    await job.close();
  });

  test('a failing run goes to onError and the job goes on', async () => {
    const errors: unknown[] = [];
    let runs = 0;
    const job = new BackgroundJob({
      work: async () => {
        if (++runs === 1) throw new Error('boom');
      },
      onError: (err) => errors.push(err),
    });
    await job.runNow();
    assert.equal(errors.length, 1);
    assert.match(String(errors[0]), /boom/);
    job.schedule();
    await job.idle();
    assert.equal(runs, 2);
    await job.close();
  });

  test('close() during a run stops new runs and waits for the one in progress, which sees closed', async () => {
    let steps = 0;
    let sawClosed = false;
    const job: BackgroundJob = jobOf(async () => {
      while (!job.closed) {
        steps++;
        await sleep(10);
      }
      sawClosed = true;
    });
    void job.runNow();
    await until('a few steps', () => steps >= 3);
    job.schedule(); // would be a follow-up run
    await job.close();
    assert.ok(sawClosed, 'close() resolved after the run returned');
    assert.ok(!job.running);
    const before = steps;
    job.schedule();
    await job.runNow();
    job.start();
    await sleep(50);
    assert.equal(steps, before, 'nothing runs once closed');
  });

  test('pace() keeps to its rate, and close() ends a throttled wait with false', async () => {
    // 100 KiB/s, 10 KiB burst: 10 KiB takes after the first wait ~100 ms each.
    const job = jobOf(async () => {}, {
      pace: { bytesPerSecond: 100 * 1024, burstBytes: 10 * 1024 },
    });
    const started = performance.now();
    for (let i = 0; i < 4; i++) assert.equal(await job.pace(10 * 1024), true);
    const ms = performance.now() - started;
    assert.ok(ms >= 250, `4 × 10 KiB at 100 KiB/s with a 10 KiB burst took ${ms.toFixed(0)} ms`);
    const slow = jobOf(async () => {}, { pace: { bytesPerSecond: 1024, burstBytes: 1024 } });
    assert.equal(await slow.pace(1024), true, 'the burst goes at once');
    const waiting = slow.pace(1024 * 1024);
    const closing = performance.now();
    await slow.close();
    assert.equal(await waiting, false, 'a wait cut short by close()');
    assert.ok(performance.now() - closing < 1000);
    assert.equal(await jobOf(async () => {}).pace(1 << 30), true, 'no pace: never waits');
    await job.close();
  });
});

describe('TokenBucket', () => {
  test('a bucket refuses a zero or negative rate', () => {
    assert.throws(() => new TokenBucket(0, 1), RangeError);
  });

  test('on a clock the test moves: the burst goes at once, then the rate; a take beyond the burst goes once full', async () => {
    let now = 0;
    const bucket = new TokenBucket(1000, 500, () => now);
    assert.equal(await bucket.take(500), true);
    let granted = false;
    const next = bucket.take(250).then((ok) => (granted = ok));
    await sleep(20);
    assert.equal(granted, false, 'the bucket is empty');
    now += 250;
    await next;
    assert.equal(granted, true, '250 bytes after 250 ms at 1000 B/s');
    now += 1000; // full again
    assert.equal(await bucket.take(5000), true, 'larger than the burst: goes once full');
    let cancelled = false;
    const owed = bucket.take(100, () => cancelled);
    cancelled = true;
    assert.equal(
      await owed,
      false,
      'it owes 4500 bytes: the next take waits, and cancelling ends the wait',
    );
  });
});
