/**
 * Snapshots and clones in a 3-node cluster (real etcd, real torusd, R = 2):
 * a snapshot is taken (on etcd, by torusctl) while a client writes through
 * another node and reads back through a third as VOL@SNAP; restore is
 * refused naming the writer while the volume is open, then works; clones
 * diverge both ways, are readable from every node, survive a kill -9 of
 * torusctl while being created (there or not, never half), and outlive their
 * source across GC runs; deleting a snapshot frees R copies of what only it
 * held, counted in the nodes' used bytes.
 */
import assert from 'node:assert/strict';
import { createInterface } from 'node:readline';
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { openEtcdMetadataStore } from '../src/controlplane/metadata/etcd/index.js';
import { VolumeCatalog } from '../src/controlplane/volumes/catalog.js';
import { SnapshotCatalog } from '../src/controlplane/volumes/snapshots.js';
import { Cluster, sha256, until } from './cluster-fixture.js';
import { etcdMissing } from './etcd-server.js';
import { missing, runOk, SYSTEM_PYTHON, toolEnv } from './tools.js';
import { BIN, makeDataDir, removeDir } from './torusd-process.js';
import { exitOf } from './support/child-exit.js';

const MiB = 1024 * 1024;

/** The next whole line a child prints: a pipe may deliver "open\n" as "open" then "\n". */
function lineReader(stream: NodeJS.ReadableStream): () => Promise<string> {
  const lines = createInterface({ input: stream })[Symbol.asyncIterator]();
  return async () => {
    const { value, done } = await lines.next();
    assert.ok(!done, 'the nbdsh child exited');
    return (value as string).trim();
  };
}
const VOLUME = 8 * MiB;

/** Holds a session: each line "OFFSET FILE" on stdin is written and flushed, answered "ok". */
const SESSION = String.raw`
import nbd, sys
h = nbd.NBD()
h.connect_uri(sys.argv[1])
assert not h.is_read_only(), "read-only"
print("open", flush=True)
for line in sys.stdin:
    offset, path = line.split()
    h.pwrite(open(path, "rb").read(), int(offset))
    h.flush()
    print("ok", flush=True)
`;

/** Holds a read session: each line on stdin reads the whole export, answered with its sha256. */
const READER = String.raw`
import hashlib, nbd, sys
h = nbd.NBD()
h.connect_uri(sys.argv[1])
print("open", flush=True)
for line in sys.stdin:
    print(hashlib.sha256(h.pread(h.get_size(), 0)).hexdigest(), flush=True)
`;

describe(
  'snapshots and clones in a 3-node cluster',
  { skip: etcdMissing() ?? missing('nbdcopy', 'nbdsh'), timeout: 300_000 },
  () => {
    let cluster: Cluster;
    let work: string;
    let session: ChildProcessWithoutNullStreams | undefined;
    let sessionLine: (() => Promise<string>) | undefined;
    let image: Buffer;

    before(async () => {
      work = await makeDataDir('csnap-work');
      cluster = await Cluster.start({
        nodes: 3,
        replication: 2,
        args: ['--lock-linger', '0', '--rebalance-interval', '2'],
      });
      const created = await cluster.ctl('volume', 'create', 'vol', '8MiB');
      assert.equal(created.code, 0, created.stderr);
    });
    after(async () => {
      session?.kill('SIGKILL');
      await cluster?.stop();
      await removeDir(work);
    });

    async function read(node: number, exportName: string): Promise<Buffer> {
      const file = join(work, `out-${node}`);
      await runOk('nbdcopy', [cluster.nodes[node].uri(exportName), file]);
      return readFile(file);
    }
    async function ctlOk(...args: string[]): Promise<string> {
      const r = await cluster.ctl(...args);
      assert.equal(r.code, 0, `torusctl ${args.join(' ')}: ${r.stderr}\n${cluster.diagnostics()}`);
      return r.stdout;
    }
    /** Write through the held session, flushed. */
    async function sessionWrite(offset: number, bytes: Buffer): Promise<void> {
      const file = join(work, `chunk-${offset}`);
      await writeFile(file, bytes);
      session!.stdin.write(`${offset} ${file}\n`);
      assert.equal(await sessionLine!(), 'ok');
    }

    test('a snapshot taken while another node writes reads back what was flushed before it', async () => {
      session = spawn(SYSTEM_PYTHON, ['-c', SESSION, cluster.nodes[0].uri('vol')], {
        env: { ...process.env, ...toolEnv },
      });
      sessionLine = lineReader(session.stdout);
      assert.equal(await sessionLine(), 'open');
      image = randomBytes(VOLUME);
      await sessionWrite(0, image);
      assert.match(
        await ctlOk('block', 'snapshot', 'create', 'vol@one'),
        /created snapshot vol@one/,
      );
      const snapshot = Buffer.from(image);
      const newer = randomBytes(2 * MiB);
      await sessionWrite(MiB, newer);
      newer.copy(image, MiB);
      assert.equal(sha256(await read(1, 'vol@one')), sha256(snapshot), 'through node 1');
      assert.equal(sha256(await read(2, 'vol@one')), sha256(snapshot), 'through node 2');
    });

    test('restore is refused naming the writer while it has the volume open', async () => {
      const r = await cluster.ctl('block', 'snapshot', 'restore', 'vol@one');
      assert.equal(r.code, 1, r.stderr);
      assert.match(r.stderr, new RegExp(`node ${cluster.nodes[0].uuid}`));
    });

    test('clones diverge both ways and read the same through every node', async () => {
      await ctlOk('volume', 'clone', 'vol@one', 'c1');
      const snapshot = await read(1, 'vol@one');
      assert.equal(sha256(await read(2, 'c1')), sha256(snapshot));
      // c1 is written through node 2 (it takes c1's lock), vol through node 0's session.
      const file = join(work, 'c1-part');
      const part = randomBytes(MiB);
      await writeFile(file, part);
      await runOk('nbdcopy', ['--flush', file, cluster.nodes[2].uri('c1')]);
      const cloneImage = Buffer.from(snapshot);
      part.copy(cloneImage, 0);
      const mine = randomBytes(MiB);
      await sessionWrite(6 * MiB, mine);
      mine.copy(image, 6 * MiB);
      assert.equal(sha256(await read(1, 'c1')), sha256(cloneImage), "the clone's own write");
      assert.equal(sha256(await read(1, 'vol@one')), sha256(snapshot), 'the snapshot unchanged');
      // Node 1 reads vol read-only at the writer's committed version.
      assert.equal(sha256(await read(1, 'vol')), sha256(image), "the source's own write");
    });

    test('a clone being created when torusctl is killed is there whole or not at all', async () => {
      const expected = sha256(await read(1, 'vol@one'));
      for (const [i, delayMs] of [0, 30, 80, 150, 300].entries()) {
        const name = `k${i}`;
        const child = spawn(
          process.execPath,
          [join(BIN, 'torusctl'), '-C', cluster.endpoint, 'volume', 'clone', 'vol@one', name],
          { stdio: 'ignore' },
        );
        await new Promise((done) => setTimeout(done, delayMs));
        child.kill('SIGKILL');
        await exitOf(child, 'killed writer');
        const list = JSON.parse(await ctlOk('volume', 'list', '-o', 'json')) as { name: string }[];
        if (list.some((v) => v.name === name)) {
          assert.equal(sha256(await read(2, name)), expected, `clone ${name} is whole`);
          await ctlOk('volume', 'delete', name);
        }
      }
    });

    test('a snapshot being read on one node: delete is refused naming it; deleted anyway, its blocks stay until the reader goes', async () => {
      await ctlOk('block', 'snapshot', 'create', 'vol@two');
      const expected = sha256(await read(1, 'vol@two'));
      const reader = spawn(SYSTEM_PYTHON, ['-c', READER, cluster.nodes[2].uri('vol@two')], {
        env: { ...process.env, ...toolEnv },
      });
      const nextLine = lineReader(reader.stdout);
      try {
        assert.equal(await nextLine(), 'open');
        const readAll = async () => {
          reader.stdin.write('read\n');
          return nextLine();
        };
        assert.equal(await readAll(), expected);
        const refused = await cluster.ctl('block', 'snapshot', 'delete', 'vol@two');
        assert.equal(refused.code, 1, refused.stderr);
        assert.match(refused.stderr, new RegExp(`vol@two on node ${cluster.nodes[2].uuid}`));
        // Past the check (as a delete crossing a new reader would be): straight on etcd.
        const meta = await openEtcdMetadataStore({ endpoints: cluster.endpoint });
        try {
          await new SnapshotCatalog(meta, new VolumeCatalog(meta)).remove('vol', 'two');
        } finally {
          await meta.close();
        }
        // Overwrite all of it: only the deleted snapshot references its blocks now.
        const over = randomBytes(VOLUME);
        await sessionWrite(0, over);
        over.copy(image, 0);
        // A reader on another node has the writer commit (its FLUSH went to the
        // replicated intent log): the overwrite's blocks are then stored before
        // the space is measured.
        assert.equal(sha256(await read(1, 'vol')), sha256(image), 'the overwrite reads back');
        const settle = async () => {
          await cluster.waitForRebalance(Date.now(), 60_000);
          await cluster.waitForRebalance(Date.now(), 60_000);
          return cluster.usedBytes();
        };
        const usedWhileRead = await settle();
        assert.equal(await readAll(), expected, 'the deleted snapshot still reads whole');
        reader.kill('SIGKILL');
        await exitOf(reader, 'killed reader');
        // The node lets go of the pin when its last client goes; GC frees then.
        // At least MiB 1-3 ('newer') were only the deleted snapshot's: R = 2 copies.
        const freed = await until(
          'the blocks only the read snapshot held freed once its reader went',
          async () => {
            const drop = usedWhileRead - (await settle());
            return drop >= 2 * 2 * MiB ? drop : undefined;
          },
          120_000,
        );
        assert.ok(freed <= 2 * VOLUME + MiB, `freed ${freed} bytes`);
      } finally {
        reader.kill('SIGKILL');
      }
    });

    test('after the writer leaves: restore, delete the snapshot (R copies of what only it held are freed), delete the source; the clone lives on', async () => {
      session!.stdin.end();
      await new Promise((done) => session!.once('exit', done));
      session = undefined;
      const snapshot = await read(1, 'vol@one');
      const restored = await until(
        'restore once the lock is let go',
        async () => {
          const r = await cluster.ctl('block', 'snapshot', 'restore', 'vol@one');
          return r.code === 0 ? r.stdout : undefined;
        },
        20_000,
      );
      assert.match(restored, /restored volume vol/);
      assert.equal(sha256(await read(2, 'vol')), sha256(snapshot));
      // Overwrite 4 MiB: only the snapshot holds the old 4 MiB now (c1 holds its first MiB too).
      const file = join(work, 'over');
      await writeFile(file, randomBytes(4 * MiB));
      await runOk('nbdcopy', ['--flush', file, cluster.nodes[1].uri('vol')]);
      const settle = async () => {
        await new Promise((done) => setTimeout(done, 3000)); // the writer's lock lingers 0 s; let it go
        await cluster.waitForRebalance(Date.now(), 60_000);
        return cluster.usedBytes();
      };
      const before = await settle();
      // What `snapshot list` says deleting it frees: each node's count, summed (R copies).
      const listed = await until(
        'snapshot list to count what only vol@one holds',
        async () => {
          const rows = JSON.parse(
            await ctlOk('block', 'snapshot', 'list', 'vol', '-o', 'json'),
          ) as {
            name: string;
            exclusive?: number;
          }[];
          const exclusive = rows.find((r) => r.name === 'vol@one')?.exclusive;
          return exclusive !== undefined && exclusive >= 2 * MiB ? exclusive : undefined;
        },
        60_000,
      );
      assert.ok(listed <= 2 * (MiB + 8 * 64 * 1024), `snapshot list says ${listed} bytes`);
      const volumes = JSON.parse(await ctlOk('volume', 'list', '-o', 'json')) as {
        name: string;
        snapshots?: number;
        snapshotOnly?: number;
      }[];
      const row = volumes.find((v) => v.name === 'vol');
      assert.equal(row?.snapshots, 1, 'volume list counts the snapshot');
      assert.ok((row?.snapshotOnly ?? 0) >= 2 * MiB, `volume list: ${JSON.stringify(row)}`);
      await ctlOk('block', 'snapshot', 'delete', 'vol@one');
      const afterDelete = await settle();
      // The overwritten 0-4 MiB of the snapshot's version: c1 shares 1-4 MiB of it (it rewrote
      // only its first MiB), so what the snapshot alone held is MiB 0-1; R = 2 copies of it.
      const freed = before - afterDelete;
      assert.ok(
        freed >= 2 * MiB && freed <= 2 * (MiB + 8 * 64 * 1024),
        `freed ${freed} bytes, expected about ${2 * MiB}\n${cluster.diagnostics()}`,
      );
      const cloneImage = await read(0, 'c1');
      await ctlOk('volume', 'delete', 'vol');
      await settle();
      await settle();
      assert.equal(
        sha256(await read(2, 'c1')),
        sha256(cloneImage),
        'the clone after its source went',
      );
      await ctlOk('volume', 'delete', 'c1');
      await settle();
      assert.equal(await cluster.usedBytes(), 0, 'nothing left once every volume is gone');
    });
  },
);
