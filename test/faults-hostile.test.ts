/**
 * Fault suite: hostile NBD input, repeated. While a seeded fuzzer
 * (support/nbd-fuzz.ts) throws malformed handshakes, lying option lengths,
 * bad requests and abandoned connections at one export, a well-behaved
 * client (libnbd, through nbdsh's Python binding) writes, flushes and reads
 * back its own volume after every round. Then torusd is killed with SIGKILL
 * and restarted, and everything the good client flushed must read back.
 *
 * Reported (as a test diagnostic, one row of the fault table): rounds, bytes
 * lost (must be 0), whether the node kept serving, and torusd's RSS before
 * and after, for a first look at growth (the 30-minute soak is
 * bench/fuzz-soak.ts).
 */
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { after, before, describe, test } from 'node:test';
import { NbdSession } from './nbd-session.js';
import { Rng, fuzzRound } from './support/nbd-fuzz.js';
import { makeDataDir, removeDir, startTorusd, type TorusdProcess } from './torusd-process.js';
import { missing } from './tools.js';

const ROUNDS = 20;
const CASES_PER_ROUND = 24;
const CHUNK = 1024 * 1024;
const FUZZ_BYTES = 64 * 1024 * 1024;

const skip = missing('nbdsh');

export async function rssBytes(pid: number): Promise<number> {
  const status = await readFile(`/proc/${pid}/status`, 'utf8');
  const m = /VmRSS:\s+(\d+) kB/.exec(status);
  return m ? Number(m[1]) * 1024 : 0;
}

describe('fault suite: hostile NBD input', { skip, timeout: 240_000 }, () => {
  let dir: string;
  let node: TorusdProcess | undefined;
  let good: NbdSession | undefined;
  before(async () => {
    dir = await makeDataDir('faults-hostile');
  });
  after(async () => {
    await good?.kill();
    await node?.stop('SIGKILL');
    await removeDir(dir);
  });

  test(`${ROUNDS} rounds of hostile input: a good client loses nothing and is never refused`, async (t) => {
    const start = () =>
      startTorusd({
        dataDir: dir,
        args: [
          '--cache-size',
          '64MiB',
          '--ensure-volume',
          'good=256MiB',
          '--ensure-volume',
          'fuzz=64MiB',
        ],
      });
    node = await start();
    const seed = Number(process.env.TORUS_FUZZ_SEED ?? Date.now() % 2 ** 31);
    t.diagnostic(`fuzz seed ${seed} (repeat with TORUS_FUZZ_SEED=${seed})`);
    const rng = new Rng(seed);
    const target = {
      host: '127.0.0.1',
      port: node.port,
      exportName: 'fuzz',
      exportBytes: FUZZ_BYTES,
    };
    const flushed: { offset: number; sha: string }[] = [];
    const rssBefore = await rssBytes(node.pid);
    let lost = 0;

    for (let round = 0; round < ROUNDS; round++) {
      await fuzzRound(target, rng, CASES_PER_ROUND);
      assert.equal(node.child.exitCode, null, `torusd exited in round ${round}:\n${node.output()}`);
      // A fresh connection each round: being admitted is part of "kept serving".
      good = await NbdSession.open(node.uri('good'), 10);
      const data = randomBytes(CHUNK);
      const offset = round * CHUNK;
      assert.ok((await good.write(offset, data)).ok, `good write in round ${round}`);
      assert.ok((await good.flush()).ok, `good flush in round ${round}`);
      flushed.push({ offset, sha: sha(data) });
      for (const chunk of flushed)
        if (sha(await good.read(chunk.offset, CHUNK)) !== chunk.sha) lost += CHUNK;
      await good.close();
      good = undefined;
    }
    const rssAfter = await rssBytes(node.pid);

    // Crash: what was flushed must survive kill -9 too.
    assert.equal(await node.stop('SIGKILL'), 'SIGKILL');
    node = await start();
    good = await NbdSession.open(node.uri('good'), 10);
    let lostAfterCrash = 0;
    for (const chunk of flushed)
      if (sha(await good.read(chunk.offset, CHUNK)) !== chunk.sha) lostAfterCrash += CHUNK;
    await good.close();
    good = undefined;

    t.diagnostic(
      `fault-row | hostile NBD input | ${ROUNDS} rounds x ${CASES_PER_ROUND} cases | bytes lost ${lost} (after kill -9: ${lostAfterCrash}) | kept serving others; RSS ${mib(rssBefore)} -> ${mib(rssAfter)} MiB`,
    );
    assert.equal(lost, 0, 'bytes the good client flushed changed during the fuzzing');
    assert.equal(lostAfterCrash, 0, 'flushed bytes lost across kill -9');
  });
});

function sha(data: Buffer): string {
  return createHash('sha256').update(data).digest('hex');
}

function mib(bytes: number): string {
  return (bytes / 2 ** 20).toFixed(0);
}
