/**
 * Snapshots and clones on a single node, end to end: a real torusd, its
 * torusctl, real NBD clients (nbdcopy, libnbd). What a snapshot captured
 * reads back through the export VOL@SNAP after overwrites and trims, and
 * after a restore; clones diverge both ways and outlive their source;
 * deleting a snapshot frees exactly what only it held; restore is refused
 * while a client has the volume open and is atomic under kill -9; bad names
 * and sizes are refused with the usage or refusal exit status.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { sha256 } from './cluster-fixture.js';
import { missing, runOk, SYSTEM_PYTHON, toolEnv } from './tools.js';
import {
  makeDataDir,
  removeDir,
  runCli,
  startTorusd,
  type TorusdProcess,
} from './torusd-process.js';
import { exitOf } from './support/child-exit.js';

const MiB = 1024 * 1024;
const VOLUME = 16 * MiB;

/** Writes FILE at OFFSET, FLUSHes, and with "trim" as the fourth argument trims LENGTH at OFFSET instead. */
const WRITE = String.raw`
import nbd, sys
uri, offset, what = sys.argv[1], int(sys.argv[2]), sys.argv[3]
h = nbd.NBD()
h.connect_uri(uri)
if what.startswith("trim:"):
    h.trim(int(what[5:]), offset)
else:
    h.pwrite(open(what, "rb").read(), offset)
h.flush()
h.shutdown()
`;

describe(
  'snapshots and clones on a single node',
  { skip: missing('nbdcopy', 'nbdsh'), timeout: 240_000 },
  () => {
    let dir: string;
    let work: string;
    let node: TorusdProcess;
    /** The volume's content, as it must read. */
    let image: Buffer;

    const ctl = (...args: string[]) => runCli('torusctl', ['-d', dir, ...args]);
    async function ctlOk(...args: string[]): Promise<string> {
      const r = await ctl(...args);
      assert.equal(r.code, 0, `torusctl ${args.join(' ')}: ${r.stderr}`);
      return r.stdout;
    }
    async function write(volume: string, offset: number, bytes: Buffer): Promise<void> {
      const file = join(work, 'chunk');
      await writeFile(file, bytes);
      await runOk(SYSTEM_PYTHON, ['-c', WRITE, node.uri(volume), String(offset), file]);
    }
    async function trim(volume: string, offset: number, length: number): Promise<void> {
      await runOk(SYSTEM_PYTHON, ['-c', WRITE, node.uri(volume), String(offset), `trim:${length}`]);
    }
    async function read(exportName: string): Promise<Buffer> {
      const file = join(work, 'out');
      await runOk('nbdcopy', [node.uri(exportName), file]);
      return readFile(file);
    }
    async function used(): Promise<number> {
      return (JSON.parse(await ctlOk('status')) as { used: number }).used;
    }

    before(async () => {
      dir = await makeDataDir('snap');
      work = await makeDataDir('snap-work');
      node = await startTorusd({
        dataDir: dir,
        size: '256MiB',
        args: ['--cache-size', '32MiB', '--workers', '1'],
      });
      await ctlOk('volume', 'create', 'vol', '16MiB');
      image = randomBytes(VOLUME);
      await write('vol', 0, image);
    });
    after(async () => {
      await node?.stop('SIGKILL');
      await removeDir(dir);
      await removeDir(work);
    });

    test('a snapshot reads back what was flushed before it, through VOL@SNAP, whatever the volume does next', async () => {
      const out = await ctlOk('block', 'snapshot', 'create', 'vol@before');
      assert.match(out, /created snapshot vol@before/);
      const before = Buffer.from(image);
      const newer = randomBytes(4 * MiB);
      await write('vol', 2 * MiB, newer);
      newer.copy(image, 2 * MiB);
      await trim('vol', 10 * MiB, 2 * MiB);
      image.fill(0, 10 * MiB, 12 * MiB);
      assert.equal(sha256(await read('vol@before')), sha256(before), 'the snapshot as taken');
      assert.equal(sha256(await read('vol')), sha256(image), 'the volume as written since');
      // Read-only: a write through the snapshot's export is refused.
      const refused = await new Promise<number>((done) => {
        const child = spawn(
          SYSTEM_PYTHON,
          [
            '-c',
            'import nbd,sys\nh=nbd.NBD()\nh.connect_uri(sys.argv[1])\nsys.exit(3 if h.is_read_only() else 0)',
            node.uri('vol@before'),
          ],
          { env: { ...process.env, ...toolEnv } },
        );
        child.on('exit', (code) => done(code ?? -1));
      });
      assert.equal(refused, 3, 'the snapshot export says it is read-only');
      const list = JSON.parse(await ctlOk('block', 'snapshot', 'list', 'vol', '-o', 'json')) as {
        name: string;
        size: number;
        exclusive: number;
      }[];
      assert.deepEqual(
        list.map((s) => [s.name, s.size]),
        [['vol@before', VOLUME]],
      );
      // It alone holds the 4 MiB overwritten and the 2 MiB trimmed (64 KiB blocks), and a map page or so.
      assert.ok(
        list[0].exclusive >= 6 * MiB && list[0].exclusive <= 6 * MiB + 256 * 1024,
        String(list[0].exclusive),
      );
    });

    test('clones share blocks copy-on-write and diverge both ways', async () => {
      const snapshotImage = await read('vol@before');
      await ctlOk('volume', 'clone', 'vol@before', 'from-snap');
      await ctlOk('volume', 'clone', 'vol', 'from-vol');
      assert.equal(sha256(await read('from-snap')), sha256(snapshotImage));
      assert.equal(sha256(await read('from-vol')), sha256(image));
      const cloneBytes = randomBytes(MiB);
      await write('from-vol', 0, cloneBytes);
      const volBytes = randomBytes(MiB);
      await write('vol', 5 * MiB, volBytes);
      const cloneImage = Buffer.from(image);
      cloneBytes.copy(cloneImage, 0);
      volBytes.copy(image, 5 * MiB);
      assert.equal(
        sha256(await read('from-vol')),
        sha256(cloneImage),
        "the clone's write is its own",
      );
      assert.equal(sha256(await read('vol')), sha256(image), "the source's write is its own");
      assert.equal(
        sha256(await read('vol@before')),
        sha256(snapshotImage),
        'the snapshot is untouched',
      );
    });

    test('restore is refused while a client has the volume open, then makes the content the snapshot’s', async () => {
      const holder = spawn(
        SYSTEM_PYTHON,
        [
          '-c',
          'import nbd,sys\nh=nbd.NBD()\nh.connect_uri(sys.argv[1])\nprint("open",flush=True)\nsys.stdin.read()',
          node.uri('vol'),
        ],
        { stdio: ['pipe', 'pipe', 'inherit'], env: { ...process.env, ...toolEnv } },
      );
      try {
        await new Promise((done) => holder.stdout.once('data', done));
        const refused = await ctl('block', 'snapshot', 'restore', 'vol@before');
        assert.equal(refused.code, 1, refused.stderr);
        assert.match(refused.stderr, /in use by 1 NBD connection\(s\) on this node/);
      } finally {
        holder.stdin.end();
        await exitOf(holder, 'nbdsh holder');
      }
      const snapshotImage = await read('vol@before');
      assert.match(
        await ctlOk('block', 'snapshot', 'restore', 'vol@before'),
        /restored volume vol/,
      );
      image = snapshotImage;
      assert.equal(sha256(await read('vol')), sha256(image));
    });

    test('deleting a snapshot frees exactly the blocks only it held; a source with snapshots is kept unless asked', async () => {
      await write('vol', 0, randomBytes(3 * MiB)); // the snapshot alone now holds these 3 MiB of old data
      const [snap] = JSON.parse(await ctlOk('block', 'snapshot', 'list', 'vol', '-o', 'json')) as {
        exclusive: number;
      }[];
      const before = await used();
      const out = await ctlOk('block', 'snapshot', 'delete', 'vol@before');
      assert.match(out, /freed/);
      assert.equal(before - (await used()), snap.exclusive, 'used space drops by what list said');
      await ctlOk('block', 'snapshot', 'create', 'vol@second');
      const refused = await ctl('volume', 'delete', 'vol');
      assert.equal(refused.code, 1);
      assert.match(refused.stderr, /has 1 snapshot\(s\) \(second\).*--with-snapshots/);
    });

    test('clones outlive their source, across a kill -9; deleting everything frees everything', async () => {
      const fromSnap = await read('from-snap');
      const fromVol = await read('from-vol');
      await ctlOk('volume', 'delete', 'vol', '--with-snapshots');
      await node.stop('SIGKILL');
      node = await startTorusd({
        dataDir: dir,
        size: '256MiB',
        args: ['--cache-size', '32MiB', '--workers', '1'],
      });
      assert.equal(sha256(await read('from-snap')), sha256(fromSnap));
      assert.equal(sha256(await read('from-vol')), sha256(fromVol));
      await ctlOk('volume', 'delete', 'from-snap');
      await ctlOk('volume', 'delete', 'from-vol');
      assert.equal(await used(), 0);
    });

    test('restore under kill -9: the volume is the old version or the snapshot, never a mix', async () => {
      await ctlOk('volume', 'create', 'atomic', '4MiB');
      const old = randomBytes(4 * MiB);
      await write('atomic', 0, old);
      await ctlOk('block', 'snapshot', 'create', 'atomic@s');
      const current = randomBytes(4 * MiB);
      await write('atomic', 0, current);
      const outcomes = new Set<string>();
      for (const delayMs of [0, 5, 20, 60]) {
        const restore = runCli('torusctl', ['-d', dir, 'block', 'snapshot', 'restore', 'atomic@s']);
        await new Promise((done) => setTimeout(done, delayMs));
        await node.stop('SIGKILL');
        await restore;
        node = await startTorusd({
          dataDir: dir,
          size: '256MiB',
          args: ['--cache-size', '32MiB', '--workers', '1'],
        });
        const seen = sha256(await read('atomic'));
        assert.ok(
          seen === sha256(old) || seen === sha256(current),
          `after a kill ${delayMs} ms into a restore: neither version`,
        );
        outcomes.add(seen === sha256(old) ? 'restored' : 'as it was');
        if (seen === sha256(old)) await write('atomic', 0, current);
      }
      assert.ok(outcomes.size >= 1);
    });

    test('an encrypted volume: its snapshot and its clone stay encrypted and read back', async () => {
      await ctlOk('volume', 'create', 'secret', '4MiB', '--encrypt');
      const plain = randomBytes(4 * MiB);
      await write('secret', 0, plain);
      await ctlOk('block', 'snapshot', 'create', 'secret@s');
      await ctlOk('volume', 'clone', 'secret@s', 'secret-copy');
      await write('secret', 0, randomBytes(MiB));
      assert.equal(sha256(await read('secret@s')), sha256(plain));
      assert.equal(sha256(await read('secret-copy')), sha256(plain));
      const rows = JSON.parse(await ctlOk('volume', 'list', '-o', 'json')) as {
        name: string;
        encrypted: boolean;
      }[];
      assert.equal(rows.find((r) => r.name === 'secret-copy')?.encrypted, true);
      // Nothing of the plaintext is in the store: every block is sealed.
      const data = await readFile(join(dir, 'blocks', 'data'));
      assert.equal(data.indexOf(plain.subarray(0, 64)), -1, 'plaintext found in the store');
      await ctlOk('volume', 'delete', 'secret-copy');
      await ctlOk('volume', 'delete', 'secret', '--with-snapshots');
    });

    test('bad names and sizes: usage errors exit 2, refusals exit 1, nothing changes', async () => {
      const cases: [string[], number, RegExp][] = [
        [['block', 'snapshot', 'create', 'atomic'], 2, /expected VOLUME@SNAPSHOT/],
        [['block', 'snapshot', 'create', 'atomic@a/b'], 2, /invalid snapshot name/],
        [
          ['block', 'snapshot', 'create', 'atomic@a\u0001b'],
          2,
          /invalid snapshot name "a\\u0001b"/,
        ],
        [['block', 'snapshot', 'create', 'nope@x'], 1, /no volume named "nope"/],
        [['block', 'snapshot', 'create', 'atomic@s'], 1, /already exists/],
        [['block', 'snapshot', 'restore', 'atomic@missing'], 1, /has no snapshot "missing"/],
        [['block', 'snapshot', 'delete', 'atomic@missing'], 1, /has no snapshot "missing"/],
        [['block', 'snapshot', 'list', 'nope'], 1, /no volume named "nope"/],
        [['volume', 'clone', 'atomic@missing', 'x'], 1, /has no snapshot "missing"/],
        [['volume', 'clone', 'atomic', 'atomic'], 1, /already exists/],
        [['volume', 'clone', 'atomic', 'small', '--size', '1MiB'], 2, /cannot be smaller/],
      ];
      const before = await ctlOk('volume', 'list', '-o', 'json');
      for (const [args, code, message] of cases) {
        const r = await ctl(...args);
        assert.equal(r.code, code, `torusctl ${args.join(' ')}: ${r.stderr}`);
        assert.match(r.stderr, message, `torusctl ${args.join(' ')}`);
      }
      assert.equal(await ctlOk('volume', 'list', '-o', 'json'), before, 'no volume changed');
      const snaps = JSON.parse(
        await ctlOk('block', 'snapshot', 'list', 'atomic', '-o', 'json'),
      ) as unknown[];
      assert.equal(snaps.length, 1);
    });
  },
);
