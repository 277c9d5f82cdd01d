/**
 * The replicated intent log (docs/cluster-flush.md) in a real 3-node
 * cluster (real etcd, real torusd with --replicated-flush, R = 2): a FLUSH
 * is acknowledged once this writer's holders have its bytes, not committed.
 *
 * - The writer killed -9 right after its FLUSHes: another node seals a
 *   holder, replays what it holds, and every flushed byte reads back there.
 * - A frozen writer (SIGSTOP) whose lock lapsed while another node took the
 *   volume over: once it runs again, its FLUSH fails (a sealed holder
 *   refuses its records, etcd its commit), and nothing it wrote then shows.
 * - A holder down: FLUSHes commit versions instead, and still hold.
 * - A dead writer's volume nobody reopens: its remote holder takes it over
 *   and commits it (the records would otherwise stay in its log for good).
 */
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { Torus, type VolumeHandle } from 'torus';
import { Cluster, type ClusterNode } from './cluster-fixture.js';
import { etcdMissing } from './etcd-server.js';
import { missing, run, SYSTEM_PYTHON, toolEnv } from './tools.js';
import { makeDataDir, removeDir } from './torusd-process.js';

const MiB = 1024 * 1024;
const VOLUME_BYTES = 8 * MiB;
/** A dead or frozen writer's lock lapses with its 10 s lease; then a write must go through. */
const TAKEOVER_MS = 40_000;

/**
 * A writer session driven line by line on stdin:
 *   "w OFFSET PATH"  pwrite the file's bytes at OFFSET
 *   "f"              flush; prints "flushed" or "flush failed: …"
 * Prints "open rw" once connected to a writable export ("open ro" otherwise, and exits).
 */
const SESSION = String.raw`
import nbd, sys
h = nbd.NBD()
h.set_full_info(True)
h.connect_uri(sys.argv[1])
if h.is_read_only():
    print("open ro " + h.get_export_description(), flush=True)
    sys.exit(3)
print("open rw", flush=True)
for line in sys.stdin:
    parts = line.split()
    try:
        if parts[0] == "w":
            h.pwrite(open(parts[2], "rb").read(), int(parts[1]))
            print("written", flush=True)
        elif parts[0] == "f":
            h.flush()
            print("flushed", flush=True)
    except Exception as e:
        print("failed: " + str(e).replace("\n", " "), flush=True)
`;

class Session {
  private said = '';
  private seen = 0;
  constructor(readonly child: ChildProcess) {
    child.stdout!.on('data', (d: Buffer) => (this.said += d.toString()));
    child.stderr!.on('data', (d: Buffer) => (this.said += d.toString()));
  }

  /** The next line the session prints (waits up to `timeoutMs`). */
  async next(timeoutMs = 30_000): Promise<string> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const lines = this.said.split('\n');
      if (lines.length - 1 > this.seen) return lines[this.seen++];
      if (Date.now() > deadline) throw new Error(`session said nothing more: ${this.said}`);
      if (this.child.exitCode !== null && lines.length - 1 <= this.seen)
        throw new Error(`session exited ${this.child.exitCode}: ${this.said}`);
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
  }

  async say(line: string): Promise<string> {
    this.child.stdin!.write(line + '\n');
    return this.next();
  }

  kill(): void {
    this.child.kill('SIGKILL');
  }
}

describe(
  'replicated intent log: a FLUSH acknowledged by its holders',
  { skip: etcdMissing() ?? missing('nbdcopy', 'nbdsh'), timeout: 240_000 },
  () => {
    let cluster: Cluster;
    let work: string;
    const sessions: Session[] = [];

    before(async () => {
      work = await makeDataDir('intent-work');
      cluster = await Cluster.start({
        nodes: 3,
        replication: 2,
        // GC runs every 5 s, and a holder takes over a volume whose writer is gone after
        // 15 s: long after the tests that reopen such a volume have (within 0.5 s of its lock lapsing).
        args: ['--lock-linger', '1', '--rebalance-interval', '5', '--adopt-orphans-after', '15'],
      });
    });
    after(async () => {
      for (const s of sessions) s.kill();
      await cluster?.stop();
      if (work) await removeDir(work);
    });

    async function create(name: string): Promise<void> {
      const r = await cluster.ctl('volume', 'create-block', name, `${VOLUME_BYTES / MiB}MiB`);
      assert.equal(r.code, 0, r.stderr);
    }

    /** A session on `node`'s export of `volume`, writable (retried while read-only, up to TAKEOVER_MS). */
    async function open(node: ClusterNode, volume: string): Promise<Session> {
      const started = Date.now();
      for (;;) {
        const session = new Session(
          spawn(SYSTEM_PYTHON, ['-c', SESSION, node.uri(volume)], {
            stdio: ['pipe', 'pipe', 'pipe'],
            env: { ...process.env, ...toolEnv },
          }),
        );
        sessions.push(session);
        const first = await session.next(60_000).catch((err: Error) => err.message);
        if (first === 'open rw') return session;
        session.kill();
        if (Date.now() - started > TAKEOVER_MS)
          assert.fail(
            `no writable session on node ${node.index}: ${first}\n${cluster.diagnostics()}`,
          );
        await new Promise((resolve) => setTimeout(resolve, 500));
      }
    }

    async function write(session: Session, offset: number, bytes: Buffer): Promise<void> {
      const file = join(work, `w-${offset}.bin`);
      await writeFile(file, bytes);
      assert.equal(await session.say(`w ${offset} ${file}`), 'written');
    }

    /** A write, then a FLUSH that must be acknowledged. */
    async function writeFlushed(session: Session, offset: number, bytes: Buffer): Promise<void> {
      await write(session, offset, bytes);
      assert.equal(await session.say('f'), 'flushed');
    }

    /** How many of `node`'s log lines say `message` about `volume`. */
    function said(node: ClusterNode, message: string, volume: string): number {
      return node
        .output()
        .split('\n')
        .filter((l) => l.includes(message))
        .filter((l) => (JSON.parse(l) as { volume?: string }).volume === volume).length;
    }

    /** 4 KiB of random bytes written and FLUSHed at each offset: what the volume must then read back. */
    async function flushedAt(session: Session, offsets: number[]): Promise<Buffer> {
      const image = Buffer.alloc(VOLUME_BYTES);
      for (const at of offsets) {
        const bytes = randomBytes(4096);
        await writeFlushed(session, at, bytes);
        bytes.copy(image, at);
      }
      return image;
    }

    async function readAll(node: ClusterNode, volume: string): Promise<Buffer> {
      const out = join(work, `${volume}-out.bin`);
      const r = await run('nbdcopy', [node.uri(volume), out], { timeoutMs: 60_000, env: toolEnv });
      assert.equal(
        r.code,
        0,
        `nbdcopy out of node ${node.index}: ${r.stderr}\n${cluster.diagnostics()}`,
      );
      const bytes = await readFile(out);
      await rm(out, { force: true });
      return bytes;
    }

    /** The 'FLUSH goes to the replicated intent log' lines a node logged for `volume`. */
    function takeovers(
      node: ClusterNode,
      volume: string,
    ): { replayed: number; holders: string[] }[] {
      return node
        .output()
        .split('\n')
        .filter((l) => l.includes('FLUSH goes to the replicated intent log'))
        .map((l) => JSON.parse(l) as { volume: string; replayed: number; holders: string[] })
        .filter((l) => l.volume === volume);
    }

    test('the writer killed -9 after its FLUSHes: another node replays them, every flushed byte reads back', async () => {
      await create('kill');
      const [writer, reader] = cluster.nodes;
      const session = await open(writer, 'kill');
      // Sixteen small writes, each FLUSHed on its own: a database's commits.
      const image = await flushedAt(
        session,
        Array.from({ length: 16 }, (_, i) => i * 256 * 1024 + 4096 * i),
      );
      assert.ok(takeovers(writer, 'kill').length === 1, writer.output().slice(-2000));
      await writer.kill('SIGKILL');
      session.kill();

      // Writable through the reader once the dead writer's lock lapsed: it has taken the volume over.
      (await open(reader, 'kill')).kill();
      const back = await readAll(reader, 'kill');
      assert.ok(back.equals(image), 'every FLUSHed write reads back');
      const [took] = takeovers(reader, 'kill');
      assert.ok(took, `node ${reader.index} took the volume over: ${reader.output().slice(-3000)}`);
      assert.ok(
        took.replayed >= 16,
        `the FLUSHes were in the log, not committed: ${took.replayed} replayed`,
      );
      await writer.start();
      await cluster.waitForMembers(3);
    });

    test('a frozen writer whose lock lapsed cannot acknowledge a FLUSH once another node took over', async () => {
      await create('frozen');
      const [, writer, other] = cluster.nodes;
      const a = randomBytes(64 * 1024);
      const b = randomBytes(64 * 1024);
      const c = randomBytes(64 * 1024);
      const frozen = await open(writer, 'frozen');
      await writeFlushed(frozen, 0, a);
      await write(frozen, 1 * MiB, b);
      writer.process!.child.kill('SIGSTOP');
      try {
        // The frozen node's lease lapses; the other node takes the volume over (a seal) and writes C.
        const taker = await open(other, 'frozen');
        await writeFlushed(taker, 2 * MiB, c);
        taker.kill();
      } finally {
        writer.process!.child.kill('SIGCONT');
      }
      const answer = await frozen.say('f');
      assert.match(answer, /^failed/, `the frozen writer's FLUSH after the takeover: ${answer}`);
      frozen.kill();
      const back = await readAll(other, 'frozen');
      assert.ok(back.subarray(0, a.length).equals(a), 'A (flushed before the freeze) reads back');
      assert.ok(back.subarray(2 * MiB, 2 * MiB + c.length).equals(c), 'C reads back');
      assert.ok(
        back.subarray(1 * MiB, 1 * MiB + b.length).every((x) => x === 0),
        'B, written by the writer that lost its lock, never shows',
      );
      const [took] = takeovers(other, 'frozen');
      assert.ok(
        took && took.replayed >= 1,
        `node ${other.index} replayed A: ${JSON.stringify(took)}`,
      );
    });

    test('a holder down: the FLUSH commits instead, new holders are chosen, and later FLUSHes survive the writer', async () => {
      await create('holder');
      const writer = cluster.nodes[0];
      const session = await open(writer, 'holder');
      const image = Buffer.alloc(VOLUME_BYTES);
      const put = async (at: number) => {
        const bytes = randomBytes(4096);
        await writeFlushed(session, at, bytes);
        bytes.copy(image, at);
      };
      await put(0);
      const [first] = takeovers(writer, 'holder');
      const holder = cluster.nodes.find((n) => n.uuid === first.holders[1] && n !== writer)!;
      assert.ok(holder, `a remote holder among ${first.holders.join(', ')}`);
      const third = cluster.nodes.find((n) => n !== writer && n !== holder)!;
      await holder.kill('SIGKILL');
      // Known down first, so that the commit below places its pages on live nodes (one fault at a time).
      await cluster.waitForStatus(holder.uuid, 'DOWN', 30_000);
      await put(64 * 1024); // commits instead, naming new holders: the writer and the third node
      assert.match(writer.output(), /committing instead, with new holders/);
      for (let i = 2; i < 10; i++) await put(i * 64 * 1024);
      await writer.kill('SIGKILL');
      session.kill();
      (await open(third, 'holder')).kill();
      const back = await readAll(third, 'holder');
      assert.ok(back.equals(image), 'every FLUSHed write reads back through the third node');
      const [took] = takeovers(third, 'holder');
      assert.ok(
        took && took.replayed >= 8,
        `the later FLUSHes were logged: ${JSON.stringify(took)}`,
      );
      await holder.start();
      await writer.start();
      await cluster.waitForMembers(3);
    });

    test('a volume deleted after its writer died: its holders drop the records nobody will commit', async () => {
      await create('gone');
      const writer = cluster.nodes[1];
      const session = await open(writer, 'gone');
      for (let i = 0; i < 4; i++) await writeFlushed(session, i * 4096, randomBytes(4096));
      const [took] = takeovers(writer, 'gone');
      assert.ok(took, writer.output().slice(-2000));
      await writer.kill('SIGKILL');
      session.kill();
      // Refused while the dead writer's lock lasts; then the records are of a volume that is gone.
      const started = Date.now();
      for (;;) {
        const r = await cluster.ctl('volume', 'delete', 'gone');
        if (r.code === 0) break;
        if (Date.now() - started > TAKEOVER_MS) assert.fail(`volume delete: ${r.stderr}`);
        await new Promise((resolve) => setTimeout(resolve, 1000));
      }
      // The restart is a membership change: every storage node runs its GC, which lists the volumes.
      await writer.start();
      await cluster.waitForMembers(3);
      const remote = cluster.nodes.find((n) => n.uuid === took.holders[1])!;
      assert.ok(remote, `a remote holder among ${took.holders.join(', ')}`);
      const until = Date.now() + 30_000;
      while (!remote.output().includes('dropped the records of deleted volumes')) {
        if (Date.now() > until)
          assert.fail(`holder ${remote.index} kept the records: ${remote.output().slice(-3000)}`);
        await new Promise((resolve) => setTimeout(resolve, 500));
      }
    });

    test('a volume whose writer died and that nobody reopens: its remote holder takes it over, commits its FLUSHes and lets it go', async () => {
      await create('orphan');
      const writer = cluster.nodes[1];
      const session = await open(writer, 'orphan');
      const image = await flushedAt(
        session,
        [0, 1, 2, 3].map((i) => i * MiB),
      );
      const [took] = takeovers(writer, 'orphan');
      assert.ok(took, writer.output().slice(-2000));
      const holder = cluster.nodes.find((n) => n.uuid === took.holders[1])!;
      assert.ok(holder && holder !== writer, `a remote holder among ${took.holders.join(', ')}`);
      await writer.kill('SIGKILL');
      session.kill();
      try {
        // The lock lapses in 10 s; 15 s later a GC run (every 5 s) on the holder adopts the volume.
        const adoptions = () => said(holder, 'volume committed for its gone writer', 'orphan');
        const until = Date.now() + 60_000;
        while (adoptions() === 0) {
          if (Date.now() > until)
            assert.fail(
              `holder ${holder.index} did not take the volume over: ${holder.output().slice(-3000)}`,
            );
          await new Promise((resolve) => setTimeout(resolve, 500));
        }
        const [adopted] = takeovers(holder, 'orphan');
        assert.ok(
          adopted && adopted.replayed >= 4,
          `the holder replayed the FLUSHes: ${JSON.stringify(adopted)}`,
        );
        // Its records are gone from the holder's log: no second adoption though nobody holds the lock.
        await new Promise((resolve) => setTimeout(resolve, 25_000));
        assert.equal(adoptions(), 1, `adopted once: ${holder.output().slice(-3000)}`);
        // Committed: a node that holds none of its records opens it with nothing to replay, every byte there.
        const reader = cluster.nodes.find((n) => n !== writer && n !== holder)!;
        (await open(reader, 'orphan')).kill();
        assert.ok(
          (await readAll(reader, 'orphan')).equals(image),
          'every FLUSHed write reads back',
        );
        const [opened] = takeovers(reader, 'orphan');
        assert.ok(
          opened && opened.replayed === 0,
          `nothing left to replay: ${JSON.stringify(opened)}`,
        );
      } finally {
        await writer.start();
        await cluster.waitForMembers(3);
      }
    });

    test('a reader on another node and a snapshot both see what the writer FLUSHed (it commits for them)', async () => {
      await create('seen');
      const [writer, , reader] = cluster.nodes;
      const session = await open(writer, 'seen');
      const bytes = randomBytes(64 * 1024);
      await writeFlushed(session, 3 * MiB, bytes);
      const back = await readAll(reader, 'seen');
      assert.ok(back.subarray(3 * MiB, 3 * MiB + bytes.length).equals(bytes), 'read-only reader');
      const later = randomBytes(64 * 1024);
      await writeFlushed(session, 5 * MiB, later);
      const snap = await cluster.ctl('snapshot', 'create', 'seen@s1');
      assert.equal(snap.code, 0, snap.stderr);
      const snapped = await readAll(reader, 'seen@s1');
      assert.ok(snapped.subarray(5 * MiB, 5 * MiB + later.length).equals(later), 'snapshot');
      session.kill();
    });

    test('a node that commits every FLUSH takes a logged volume over: it replays the records, and no later writer replays them again over newer data', async () => {
      await create('mixed');
      const logger = cluster.nodes[0];
      const first = await open(logger, 'mixed');
      const logged = await flushedAt(
        first,
        [0, 1, 2, 3].map((i) => i * 64 * 1024),
      );
      // The logger's other holder turns into a node that commits every FLUSH;
      // the third node, which holds nothing, writes last.
      const [took] = takeovers(logger, 'mixed');
      const committer = cluster.nodes.find((n) => n !== logger && took.holders.includes(n.uuid))!;
      const later = cluster.nodes.find((n) => n !== logger && n !== committer)!;
      assert.ok(committer && later, `holders ${took.holders.join(', ')}`);
      committer.options.args = ['--commit-every-flush'];
      try {
        await committer.kill('SIGTERM');
        await committer.start();
        await cluster.waitForMembers(3);
        await logger.kill('SIGKILL');
        first.kill();

        // The committing node takes over: the logged FLUSHes are replayed there.
        const second = await open(committer, 'mixed');
        assert.match(
          committer.output(),
          /intent records replayed; FLUSH commits a version here/,
          'the committing node replayed the logged records',
        );
        assert.ok((await readAll(committer, 'mixed')).equals(logged), 'every logged FLUSH is back');
        // Newer data over the same bytes, committed by its FLUSH; then the client leaves.
        const newer = Buffer.alloc(VOLUME_BYTES);
        for (let i = 0; i < 4; i++) {
          const bytes = randomBytes(4096);
          await write(second, i * 64 * 1024, bytes);
          bytes.copy(newer, i * 64 * 1024);
        }
        assert.equal(await second.say('f'), 'flushed');
        second.kill();
        // The logger comes back still holding its records (it was down when
        // they were covered), and it is the first holder a seal would ask.
        await logger.start();
        await cluster.waitForMembers(3);

        (await open(later, 'mixed')).kill();
        const back = await readAll(later, 'mixed');
        assert.ok(back.equals(newer), 'the newer data, not the old records replayed over it');
      } finally {
        committer.options.args = [];
        await committer.kill('SIGTERM');
        await committer.start();
        await cluster.waitForMembers(3);
      }
    });

    test('a store-less client (the library, as torusblk nbdserve) takes a logged volume over: every FLUSH reads back', async () => {
      await create('client');
      const writer = cluster.nodes[1];
      const session = await open(writer, 'client');
      const image = Buffer.alloc(VOLUME_BYTES);
      for (let i = 0; i < 8; i++) {
        const at = i * 128 * 1024;
        const bytes = randomBytes(4096);
        await writeFlushed(session, at, bytes);
        bytes.copy(image, at);
      }
      await writer.kill('SIGKILL');
      session.kill();
      const torus = await Torus.connect({
        etcd: { endpoints: cluster.endpoint },
        cacheSize: 16 * MiB,
        workers: 1,
      });
      try {
        // Writable once the dead writer's lock lapsed; the client seals a holder and replays.
        const started = Date.now();
        let volume: VolumeHandle | undefined;
        while (!volume) {
          try {
            volume = await torus.openVolume('client');
          } catch (err) {
            if (Date.now() - started > TAKEOVER_MS) throw err;
            await new Promise((resolve) => setTimeout(resolve, 500));
          }
        }
        const back = Buffer.alloc(VOLUME_BYTES);
        await volume.read(back, 0);
        assert.ok(back.equals(image), 'every FLUSHed write reads back through the client');
        // Its own FLUSH commits (it has no holder log): a node reads it at once.
        const more = randomBytes(4096);
        await volume.write(more, 2 * MiB);
        await volume.flush();
        more.copy(image, 2 * MiB);
        await volume.close();
      } finally {
        await torus.close();
      }
      assert.ok((await readAll(cluster.nodes[2], 'client')).equals(image), 'through a node');
      await writer.start();
      await cluster.waitForMembers(3);
    });

    test('every holder of the log gone: the volume is refused, naming them, until forget-log, which serves the last committed version', async () => {
      await create('lost');
      const writer = cluster.nodes[0];
      const session = await open(writer, 'lost');
      for (let i = 0; i < 2; i++) {
        await writeFlushed(session, i * 64 * 1024, randomBytes(4096));
      }
      const [took] = takeovers(writer, 'lost');
      const holder = cluster.nodes.find((n) => n !== writer && took.holders.includes(n.uuid))!;
      const survivor = cluster.nodes.find((n) => n !== writer && n !== holder)!;
      await writer.kill('SIGKILL');
      await holder.kill('SIGKILL');
      session.kill();
      try {
        const refused = await run('nbdcopy', [survivor.uri('lost'), join(work, 'lost.bin')], {
          timeoutMs: 60_000,
          env: toolEnv,
        });
        assert.notEqual(refused.code, 0, 'no holder answers: not served');
        assert.match(survivor.output(), /none of which answered.*volume forget-log lost/);
        const without = await cluster.ctl('volume', 'forget-log', 'lost');
        assert.equal(without.code, 2, 'the loss must be said');
        // Refused while the dead writer's lock has not lapsed yet; then done.
        const started = Date.now();
        for (;;) {
          const r = await cluster.ctl('volume', 'forget-log', 'lost', '--lose-flushed-writes');
          if (r.code === 0) {
            assert.match(r.stdout, /no longer waits for its intent log holders/);
            break;
          }
          assert.ok(Date.now() - started < TAKEOVER_MS, `forget-log: ${r.stderr}`);
          await new Promise((resolve) => setTimeout(resolve, 500));
        }
        const back = await readAll(survivor, 'lost');
        assert.ok(back.equals(Buffer.alloc(VOLUME_BYTES)), 'the last committed version: empty');
      } finally {
        await writer.start();
        await holder.start();
        await cluster.waitForMembers(3);
      }
      // The writer is back with its records: a later writer still does not replay them.
      (await open(writer, 'lost')).kill();
      assert.ok((await readAll(writer, 'lost')).equals(Buffer.alloc(VOLUME_BYTES)), 'not replayed');
    });
  },
);
