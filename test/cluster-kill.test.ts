/**
 * An 8-node loopback cluster under kill -9: real etcd, eight real torusd
 * processes (64 MiB stores, 16 MiB caches, one worker each), replication 2.
 * 32 MiB of random data is written through one node with nbdcopy --flush;
 * then each node in turn is killed without warning, and while it is down
 * every byte must read back through another node and a fresh write (with
 * FLUSH) must go through a third and read back through yet another; then the
 * node is restarted on its data directory before the next one goes, so at
 * most one node is ever down.
 *
 * The first node killed is the volume's writer at that moment: a libnbd
 * client holds a session on it with flushed and unflushed writes. Flushed
 * data must survive; each 64 KiB block of the unflushed region may read as
 * the old or the new bytes, never anything else. Writes through another node
 * must work again once the dead writer's lock lapses.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { randomBytes, randomInt } from 'node:crypto';
import { readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, test, type TestContext } from 'node:test';
import { Cluster, type ClusterNode } from './cluster-fixture.js';
import { etcdMissing } from './etcd-server.js';
import { missing, run, SYSTEM_PYTHON, toolEnv } from './tools.js';
import { makeDataDir, removeDir } from './torusd-process.js';

const MiB = 1024 * 1024;
const BLOCK = 64 * 1024;
const NODES = 8;
const VOLUME_BYTES = 32 * MiB;
const CHUNK_BYTES = 2 * MiB;
/** How long a write may be refused (read-only export): a dead writer's lock lapses with its 10 s lease; a live one lingers 1 s. */
const TAKEOVER_MS = 30_000;

/**
 * Holds a session on the writer: writes and flushes A, writes B without a
 * flush, says so, then waits to be killed with its node.
 */
const HOLDING_WRITER = String.raw`
import nbd, sys
uri, a_off, a_path, b_off, b_path = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), sys.argv[5]
h = nbd.NBD()
h.connect_uri(uri)
assert not h.is_read_only(), "the export is read-only"
h.pwrite(open(a_path, "rb").read(), a_off)
h.flush()
h.pwrite(open(b_path, "rb").read(), b_off)
print("ready", flush=True)
sys.stdin.read()
`;

describe(
  'an 8-node cluster loses one node at a time (kill -9)',
  { skip: etcdMissing() ?? missing('nbdcopy', 'nbdinfo', 'nbdsh'), timeout: 360_000 },
  () => {
    let cluster: Cluster;
    let work: string;
    /** What every byte of the volume must read as (all but the regions in `either`). */
    const image = Buffer.alloc(VOLUME_BYTES);

    before(async () => {
      work = await makeDataDir('kill-work');
      // A volume's lock stays with a node 1 s after its last client left (default 5 s): rounds move the writer often.
      cluster = await Cluster.start({
        nodes: NODES,
        replication: 2,
        size: '64MiB',
        cacheSize: '16MiB',
        args: ['--lock-linger', '1'],
      });
    });
    after(async () => {
      await cluster?.stop();
      if (work) await removeDir(work);
    });

    const alive = () => cluster.nodes.filter((n) => n.alive);
    const pick = (from: ClusterNode[]) => from[randomInt(from.length)];

    /** nbdcopy a file into the volume at `offset` through `node`, retrying while the export is read-only (another node's lock). */
    async function writeThrough(
      node: ClusterNode,
      offset: number,
      bytes: Buffer,
      label: string,
    ): Promise<number> {
      const file = join(work, `${label}.bin`);
      await writeFile(file, bytes);
      const started = Date.now();
      for (;;) {
        // libnbd's pwrite at the offset (nbdcopy writes from the start of its destination).
        const r = await run(
          SYSTEM_PYTHON,
          ['-c', WRITE_AT, node.uri('vol'), String(offset), file],
          { timeoutMs: 60_000, env: toolEnv },
        );
        if (r.code === 0) break;
        if (!/read-only/.test(r.stdout + r.stderr) || Date.now() - started > TAKEOVER_MS) {
          assert.fail(
            `write of ${label} through node ${node.index} failed after ${Date.now() - started} ms:\n${r.stdout}${r.stderr}\n${cluster.diagnostics()}`,
          );
        }
        await new Promise((resolve) => setTimeout(resolve, 500));
      }
      await rm(file, { force: true });
      return Date.now() - started;
    }

    /** Every byte through `node` (nbdcopy), compared with `image` except the blocks in `either`, which may hold old or new. */
    async function readBackThrough(
      node: ClusterNode,
      either?: { offset: number; old: Buffer; next: Buffer },
    ): Promise<void> {
      const out = join(work, 'out.bin');
      const r = await run('nbdcopy', [node.uri('vol'), out], { timeoutMs: 90_000, env: toolEnv });
      assert.equal(
        r.code,
        0,
        `nbdcopy out of node ${node.index} failed:\n${r.stderr}\n${cluster.diagnostics()}`,
      );
      const back = await readFile(out);
      await rm(out, { force: true });
      assert.equal(back.length, VOLUME_BYTES);
      const bad: string[] = [];
      for (let at = 0; at < VOLUME_BYTES; at += BLOCK) {
        const got = back.subarray(at, at + BLOCK);
        if (either && at >= either.offset && at < either.offset + either.next.length) {
          const old = either.old.subarray(at - either.offset, at - either.offset + BLOCK);
          const next = either.next.subarray(at - either.offset, at - either.offset + BLOCK);
          if (got.equals(old) || got.equals(next)) {
            got.copy(image, at); // whichever it is, it is what must read back from now on
            continue;
          }
          bad.push(`block ${at / BLOCK} (unflushed region): neither the old nor the new bytes`);
        } else if (!got.equals(image.subarray(at, at + BLOCK))) {
          bad.push(
            `block ${at / BLOCK}${got.every((b) => b === 0) ? ' reads as zeros' : ' differs'}`,
          );
        }
      }
      assert.deepEqual(
        bad,
        [],
        `read back through node ${node.index}: ${bad.length} of ${VOLUME_BYTES / BLOCK} blocks wrong\n${cluster.diagnostics()}`,
      );
    }

    test('8 nodes join the ring, all OK and balanced', async () => {
      const table = await cluster.ctl('list-peers');
      assert.equal(table.code, 0, table.stderr);
      const rows = table.stdout.split('\n').filter((line) => /^http:\/\//.test(line));
      assert.equal(rows.length, NODES, table.stdout);
      for (const row of rows) assert.match(row, /\sOK\s/, row);
      assert.match(table.stdout, /\nBalanced: true\n/);
      const ring = await cluster.ctl('ring', 'get', '-o', 'json');
      assert.equal(ring.code, 0, ring.stderr);
      assert.equal(JSON.parse(ring.stdout).replication, 2);

      // Created after the nodes started: every node must serve it.
      const created = await cluster.ctl(
        'volume',
        'create-block',
        'vol',
        `${VOLUME_BYTES / MiB}MiB`,
      );
      assert.equal(created.code, 0, created.stderr);
    });

    test('32 MiB through one node with nbdcopy --flush reads back through another', async () => {
      const data = randomBytes(VOLUME_BYTES);
      const input = join(work, 'input.bin');
      await writeFile(input, data);
      const [writer, reader] = [cluster.nodes[0], cluster.nodes[NODES - 1]];
      const started = Date.now();
      for (;;) {
        const r = await run('nbdcopy', ['--flush', input, writer.uri('vol')], {
          timeoutMs: 90_000,
          env: toolEnv,
        });
        if (r.code === 0) break;
        // A volume created a moment ago may take a watch event to reach the node.
        if (Date.now() - started > 15_000)
          assert.fail(
            `nbdcopy into node 0 failed:\n${r.stderr}\n--- node log tail\n${writer.output().slice(-3000)}`,
          );
        await new Promise((resolve) => setTimeout(resolve, 500));
      }
      data.copy(image);
      await rm(input, { force: true });
      await readBackThrough(reader);
    });

    /**
     * One round: kill -9 the victim (with a holding session on it first, if
     * asked), read every byte through a survivor straight away (its lease still
     * looks alive), write 2 MiB with a FLUSH through another survivor, read
     * all back through a third, then restart the victim on its directory.
     */
    async function round(t: TestContext, victim: ClusterNode, holding: boolean): Promise<string> {
      const roundStarted = Date.now();
      let either: { offset: number; old: Buffer; next: Buffer } | undefined;
      let holder: ReturnType<typeof spawn> | undefined;
      if (holding) {
        // The victim is the writer of the moment: a session with a flushed region A and an unflushed region B.
        const a = { offset: 4 * MiB, bytes: randomBytes(CHUNK_BYTES) };
        const b = { offset: 20 * MiB, bytes: randomBytes(CHUNK_BYTES) };
        await writeFile(join(work, 'a.bin'), a.bytes);
        await writeFile(join(work, 'b.bin'), b.bytes);
        holder = spawn(
          SYSTEM_PYTHON,
          [
            '-c',
            HOLDING_WRITER,
            victim.uri('vol'),
            String(a.offset),
            join(work, 'a.bin'),
            String(b.offset),
            join(work, 'b.bin'),
          ],
          {
            stdio: ['pipe', 'pipe', 'pipe'],
            env: { ...process.env, ...toolEnv },
          },
        );
        let said = '';
        holder.stdout!.on('data', (d: Buffer) => (said += d.toString()));
        holder.stderr!.on('data', (d: Buffer) => (said += d.toString()));
        const deadline = Date.now() + 30_000;
        while (!/ready/.test(said)) {
          if (holder.exitCode !== null || Date.now() > deadline) {
            holder.kill('SIGKILL');
            assert.fail(
              `the holding writer on node ${victim.index} did not get ready:\n${said}\n${cluster.diagnostics()}`,
            );
          }
          await new Promise((resolve) => setTimeout(resolve, 100));
        }
        a.bytes.copy(image, a.offset);
        either = {
          offset: b.offset,
          old: Buffer.from(image.subarray(b.offset, b.offset + CHUNK_BYTES)),
          next: b.bytes,
        };
      }
      try {
        await victim.kill('SIGKILL');
      } finally {
        holder?.kill('SIGKILL');
      }

      const others = alive();
      const reader = pick(others);
      await readBackThrough(reader, either);
      const writer = pick(others.filter((n) => n !== reader));
      const offset = randomInt(VOLUME_BYTES / BLOCK - CHUNK_BYTES / BLOCK) * BLOCK;
      const chunk = randomBytes(CHUNK_BYTES);
      const refusedMs = await writeThrough(writer, offset, chunk, `round-${victim.index}`);
      chunk.copy(image, offset);
      const checker = pick(others.filter((n) => n !== writer));
      await readBackThrough(checker);

      const backAt = Date.now();
      await victim.start();
      await cluster.waitForMembers(NODES);
      // The copies missed while it was down (and those its lease still drew) are made once it is back.
      const rebalanced = await cluster.waitForRebalance(backAt, 30_000);
      const line = `node ${victim.index} killed${holding ? ' (the writer, with a session open)' : ''}: read via ${reader.index}, 2 MiB at block ${offset / BLOCK} written via ${writer.index} (refused for ${refusedMs} ms first), checked via ${checker.index}; back and rebalanced (${rebalanced.seconds.toFixed(1)} s; blocks still pending per node: ${rebalanced.pending.join(' ')}) after ${((Date.now() - roundStarted) / 1000).toFixed(1)} s`;
      process.stdout.write(`# ${line}\n`);
      // readBackThrough asserted every flushed byte, so a row is only printed with 0 lost.
      t.diagnostic(
        `fault-row | kill -9 cluster node ${victim.index}${holding ? ' (the writer, session open)' : ' (a replica)'}, 8 nodes R=2 | 1 | bytes lost 0 | writes refused ${refusedMs} ms; back and rebalanced ${((Date.now() - backAt) / 1000).toFixed(1)} s after restart`,
      );
      return line;
    }

    test('the writer killed with a session open: flushed data reads back, unflushed blocks are old or new, writes move to another node', async (t) => {
      await round(t, cluster.nodes[0], true);
    });

    test('then each other node in turn, restarted before the next goes: every flushed byte reads back and writes go on', async (t) => {
      for (const victim of cluster.nodes.slice(1)) await round(t, victim, false);
      // And with every node back, one last full read through a random node.
      await readBackThrough(pick(cluster.nodes));
    });
  },
);

/** pwrite a file at an offset and flush; exit 3 saying "read-only" when the export is. */
const WRITE_AT = String.raw`
import nbd, sys
uri, off, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
h = nbd.NBD()
h.set_full_info(True)
h.connect_uri(uri)
if h.is_read_only():
    print("export is read-only: " + h.get_export_description(), flush=True)
    sys.exit(3)
data = open(path, "rb").read()
step = 1 << 20
for i in range(0, len(data), step):
    h.pwrite(data[i:i + step], off + i)
h.flush()
h.shutdown()
`;
