/**
 * torusctl block dump / block load against a real torusd, with real tools:
 * nbdcopy writes the data, sha256sum checks the hashes, stat the sparseness.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdtemp, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { missing, run, runOk } from './tools.js';
import {
  BIN,
  makeDataDir,
  removeDir,
  runCli,
  startTorusd,
  type TorusdProcess,
} from './torusd-process.js';

const MiB = 1024 * 1024;
const skip = missing('nbdcopy', 'sha256sum');

describe('torusctl block dump / load', { skip, timeout: 300_000 }, () => {
  let node: TorusdProcess;
  let dataDir: string;
  let dir: string;
  const ctl = (...args: string[]) => runCli('torusctl', ['--data-dir', dataDir, ...args]);
  const torusctl = `${process.execPath} ${join(BIN, 'torusctl')}`;
  const sha256sum = async (file: string) => (await runOk('sha256sum', [file])).split(/\s+/)[0];
  const printedSha = (stdout: string) => /^sha256 ([0-9a-f]{64})$/m.exec(stdout)?.[1];
  const used = async (volume: string): Promise<number> => {
    const rows = JSON.parse((await ctl('volume', 'list', '-o', 'json')).stdout) as {
      name: string;
      used: number;
    }[];
    return rows.find((r) => r.name === volume)!.used;
  };
  const volumes = async () =>
    (JSON.parse((await ctl('volume', 'list', '-o', 'json')).stdout) as { name: string }[]).map(
      (r) => r.name,
    );

  before(async () => {
    dataDir = await makeDataDir('dumpload');
    dir = await mkdtemp(join(tmpdir(), 'torus-dumpload-'));
    node = await startTorusd({ dataDir, size: '2GiB' });
    const created = await ctl('volume', 'create-block', 'src', '1GiB');
    assert.equal(created.code, 0, created.stderr);
    // 100 MiB of random data from offset 0; the rest of the GiB is holes.
    const data = join(dir, 'data.bin');
    await writeFile(data, randomBytes(100 * MiB));
    await runOk('nbdcopy', ['--', data, node.uri('src')], { timeoutMs: 120_000 });
  });
  after(async () => {
    await node?.stop();
    await removeDir(dataDir);
    await rm(dir, { recursive: true, force: true });
  });

  it('dumps a 1 GiB volume with 100 MiB written into a sparse file of ~100 MiB, with its sha256', async () => {
    const out = join(dir, 'src.img');
    const r = await ctl('block', 'dump', 'src', out);
    assert.equal(r.code, 0, r.stderr);
    const info = await stat(out);
    assert.equal(info.size, 1024 * MiB);
    const allocated = info.blocks * 512;
    assert.ok(allocated >= 100 * MiB && allocated <= 110 * MiB, `allocated ${allocated / MiB} MiB`);
    assert.equal(printedSha(r.stdout), await sha256sum(out));
    assert.equal(r.stderr, '', 'no progress line when stderr is not a terminal');
  });

  it('round trip: dump → load into a new volume → dump, identical sha256; zeros not stored', async () => {
    const first = join(dir, 'rt1.img');
    const second = join(dir, 'rt2.img');
    const dump1 = await ctl('block', 'dump', 'src', first, '-o', 'json');
    assert.equal(dump1.code, 0, dump1.stderr);
    const sha = (JSON.parse(dump1.stdout) as { sha256: string }).sha256;
    const load = await ctl('block', 'load', first, 'copy', '-o', 'json');
    assert.equal(load.code, 0, load.stderr);
    const loaded = JSON.parse(load.stdout) as {
      created: boolean;
      sha256: string;
      dataBytes: number;
      bytes: number;
    };
    assert.equal(loaded.created, true);
    assert.equal(loaded.sha256, sha);
    assert.equal(loaded.bytes, 1024 * MiB);
    assert.ok(loaded.dataBytes <= 101 * MiB, `wrote ${loaded.dataBytes / MiB} MiB as data`);
    const stored = await used('copy');
    assert.ok(stored >= 100 * MiB && stored <= 110 * MiB, `copy uses ${stored / MiB} MiB`);
    const dump2 = await ctl('block', 'dump', 'copy', second);
    assert.equal(dump2.code, 0, dump2.stderr);
    assert.equal(printedSha(dump2.stdout), sha);
    assert.equal(await sha256sum(second), sha);
  });

  it('--no-checksum copies the same bytes and says no digest was made', async () => {
    const out = join(dir, 'nosum.img');
    const r = await ctl('block', 'dump', 'src', out, '--no-checksum', '-o', 'json');
    assert.equal(r.code, 0, r.stderr);
    assert.equal((JSON.parse(r.stdout) as { sha256: string | null }).sha256, null);
    const table = await ctl('block', 'dump', 'src', out, '--no-checksum');
    assert.match(table.stdout, /sha256 not computed \(--no-checksum\)/);
    const summed = await ctl('block', 'dump', 'src', join(dir, 'summed.img'));
    assert.equal(await sha256sum(out), printedSha(summed.stdout));
  });

  it('dumps to stdout and loads from stdin', async () => {
    const piped = await runOk(
      'sh',
      ['-c', `${torusctl} --data-dir ${dataDir} block dump src - 2>/dev/null | sha256sum`],
      { timeoutMs: 120_000 },
    );
    const sha = piped.split(/\s+/)[0];
    const img = join(dir, 'src.img');
    if (!existsSync(img)) await ctl('block', 'dump', 'src', img);
    assert.equal(sha, await sha256sum(img));
    const load = await run(
      'sh',
      ['-c', `cat ${img} | ${torusctl} --data-dir ${dataDir} block load - piped 1GiB`],
      { timeoutMs: 120_000 },
    );
    assert.equal(load.code, 0, load.stderr);
    assert.equal(printedSha(load.stdout), sha);
  });

  it('loading into an existing volume covers its old content', async () => {
    assert.equal((await ctl('volume', 'create-block', 'old', '1GiB')).code, 0);
    const junk = join(dir, 'junk.bin');
    await writeFile(junk, randomBytes(8 * MiB));
    await runOk('nbdcopy', ['--', junk, node.uri('old')], { timeoutMs: 60_000 });
    const small = join(dir, 'small.bin');
    const content = Buffer.alloc(4 * MiB);
    randomBytes(MiB).copy(content, 2 * MiB); // zeros, data, zeros
    await writeFile(small, content);
    const load = await ctl('block', 'load', small, 'old');
    assert.equal(load.code, 0, load.stderr);
    assert.match(load.stdout, /into volume old/);
    const out = join(dir, 'old.img');
    const dump = await ctl('block', 'dump', 'old', out);
    assert.equal(dump.code, 0, dump.stderr);
    // The volume is the small file, then zeros: no byte of the old data shows.
    const padded = join(dir, 'small-padded.bin');
    await writeFile(padded, content);
    await runOk('truncate', ['-s', '1G', padded]);
    assert.equal(printedSha(dump.stdout), await sha256sum(padded));
  });

  it('bad input is refused with a clear error and changes nothing', async () => {
    const before = await volumes();
    const out = join(dir, 'missing.img');
    const missingVolume = await ctl('block', 'dump', 'nope', out);
    assert.equal(missingVolume.code, 1);
    assert.match(missingVolume.stderr, /no volume named "nope"/);
    assert.equal(existsSync(out), false, 'no output file for a missing volume');

    const big = join(dir, 'big.bin');
    await writeFile(big, Buffer.alloc(3 * MiB, 1));
    assert.equal((await ctl('volume', 'create-block', 'tiny', '2MiB')).code, 0);
    const tooBig = await ctl('block', 'load', big, 'tiny');
    assert.equal(tooBig.code, 2);
    assert.match(tooBig.stderr, /larger than volume tiny/);
    assert.equal(await used('tiny'), 0);

    const overSize = await ctl('block', 'load', big, 'fresh', '2MiB');
    assert.equal(overSize.code, 2);
    assert.match(overSize.stderr, /larger than SIZE/);

    // stdin (here /dev/null, not a terminal) into a new volume: its size is not known ahead.
    const noSize = await ctl('block', 'load', '-', 'fresh2');
    assert.equal(noSize.code, 2);
    assert.match(noSize.stderr, /give SIZE/);

    const noFile = await ctl('block', 'load', join(dir, 'absent.bin'), 'fresh3');
    assert.equal(noFile.code, 2);
    assert.match(noFile.stderr, /no such file/);

    const unknownFlag = await ctl('block', 'dump', 'src', out, '--bogus');
    assert.equal(unknownFlag.code, 2);
    assert.match(unknownFlag.stderr, /unknown flag --bogus/);

    assert.deepEqual((await volumes()).sort(), [...before, 'tiny'].sort());
    assert.equal(existsSync(out), false);
  });

  it('without a running torusd: exit 2, naming --nbd', async () => {
    const empty = await makeDataDir('dumpload-none');
    try {
      const r = await runCli('torusctl', ['--data-dir', empty, 'block', 'dump', 'src', '-']);
      assert.equal(r.code, 2);
      assert.match(r.stderr, /no torusd is running.*--nbd/);
    } finally {
      await removeDir(empty);
    }
  });

  it('--nbd reaches the node directly', async () => {
    const out = join(dir, 'direct.img');
    const r = await runCli('torusctl', [
      '--data-dir',
      join(dir, 'not-a-data-dir'),
      'block',
      'dump',
      'src',
      out,
      '--nbd',
      `127.0.0.1:${node.port}`,
    ]);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(printedSha(r.stdout), await sha256sum(out));
  });
});
