/**
 * The single node's intent log under kill -9: a FLUSH (or FUA write) is
 * acknowledged once its bytes are in the log, so data acknowledged that way
 * must come back after a kill at any moment — replayed at start-up — also
 * with FLUSHes and writes in flight together (a client at queue depth 8),
 * when the log's tail is torn, when torusd is killed again during the
 * replay, for an encrypted volume (whose bytes never reach the log in
 * clear), and once the log has wrapped over records already committed, lap
 * after lap. A snapshot taken right after a FLUSH holds the flushed data.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { open, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, before, describe, test } from 'node:test';
import { IntentLog } from '../src/dataplane/intent-log/intent-log.js';
import { hasher } from '../src/dataplane/blocks/hash.js';
import {
  FILE_HEADER_BYTES,
  FLAG_SEALED,
  RECORD_HEADER_BYTES,
  decodeFileHeader,
} from '../src/dataplane/intent-log/record.js';
import {
  BIN,
  makeDataDir,
  removeDir,
  runCli,
  startTorusd,
  type TorusdProcess,
} from './torusd-process.js';
import { SYSTEM_PYTHON, missing, python } from './tools.js';

const skip = missing('nbdsh');
// The intent log is on by default; durability.test.ts checks the path without it (--intent-log-size 0).
const KiB4 = 4096;
const MiB = 1024 * 1024;
/** Region the writers touch: write i goes to a slot of it no other write of the run uses. */
const SLOTS = 4096;

/**
 * 4 KiB writes at scattered offsets, each acknowledged by FLUSH (even i) or
 * FUA (odd i), "acked i" printed after each; unacknowledged noise after.
 */
function writerScript(uri: string, seed: number, count: number, bytes = KiB4): string {
  return `
import nbd, hashlib
h = nbd.NBD()
h.connect_uri(${JSON.stringify(uri)})
for i in range(${count}):
    data = hashlib.sha256(b"%d-%d" % (${seed}, i)).digest() * ${bytes / 32}
    offset = (i * 2053 % ${SLOTS}) * ${bytes}
    if i % 2 == 0:
        h.pwrite(data, offset)
        h.flush()
    else:
        h.pwrite(data, offset, nbd.CMD_FLAG_FUA)
    h.pwrite(b"\\xee" * 512, ${SLOTS * bytes} + (i % 64) * 4096)
    print("acked", i, flush=True)
`;
}

function checkScript(uri: string, seed: number, upTo: number, bytes = KiB4): string {
  return `
import nbd, hashlib
h = nbd.NBD()
h.connect_uri(${JSON.stringify(uri)})
bad = []
for i in range(${upTo} + 1):
    data = hashlib.sha256(b"%d-%d" % (${seed}, i)).digest() * ${bytes / 32}
    if h.pread(${bytes}, (i * 2053 % ${SLOTS}) * ${bytes}) != data:
        bad.append(i)
print("bad", bad)
`;
}

/**
 * Run the writer against `node` and kill -9 torusd `killAfterMs` after the
 * `fromAck`th acknowledgement (the first by default); the highest write
 * acknowledged. Writes are 4 KiB unless `bytes` says otherwise.
 */
async function writeAndKill(
  node: TorusdProcess,
  volume: string,
  seed: number,
  killAfterMs: number,
  { fromAck = 0, bytes = KiB4 } = {},
): Promise<number> {
  const script = writerScript(node.uri(volume), seed, SLOTS, bytes);
  const writer = spawn(SYSTEM_PYTHON, ['-c', script], { stdio: ['ignore', 'pipe', 'pipe'] });
  let acked = -1;
  let firstAck!: () => void;
  const acking = new Promise<void>((r) => (firstAck = r));
  writer.stdout.on('data', (d: Buffer) => {
    for (const m of d.toString().matchAll(/acked (\d+)/g)) acked = Math.max(acked, Number(m[1]));
    if (acked >= fromAck) firstAck();
  });
  const writerDone = new Promise((r) => writer.once('exit', r));
  try {
    // The kill comes while acknowledgements flow: timed from one of them (a loaded machine starts slowly).
    await Promise.race([acking, writerDone, sleep(120_000, undefined, { ref: false })]);
    await sleep(killAfterMs);
    process.kill(node.pid, 'SIGKILL');
    await node.stop('SIGKILL');
  } finally {
    await writerDone;
  }
  return acked;
}

async function lostWrites(
  node: TorusdProcess,
  volume: string,
  seed: number,
  upTo: number,
  bytes = KiB4,
) {
  const check = await python(checkScript(node.uri(volume), seed, upTo, bytes));
  assert.equal(check.code, 0, check.stderr);
  return (/bad \[(.*)\]/.exec(check.stdout)?.[1] ?? '').split(',').filter((x) => x.trim());
}

/**
 * Writes and FLUSHes `depth` at a time (libnbd's asynchronous calls), a
 * FLUSH after every `every` writes, each write to a slot of its own (of
 * `count`: 2053 is prime). Prints
 * "done i" as write i completes and "flushed n" as a FLUSH completes, n the
 * number of writes that had completed when it was sent: those are the ones
 * it acknowledges.
 */
function pipelinedWriterScript(
  uri: string,
  seed: number,
  { count, bytes, every, depth }: { count: number; bytes: number; every: number; depth: number },
): string {
  return `
import nbd, hashlib, sys
h = nbd.NBD()
h.connect_uri(${JSON.stringify(uri)})
done = 0
def wrote(i):
    def cb(err):
        global done
        if err: sys.exit("write %d failed: %d" % (i, err))
        done += 1
        print("done", i, flush=True)
        return 1
    return cb
def flushed(n):
    def cb(err):
        if err: sys.exit("flush failed: %d" % err)
        print("flushed", n, flush=True)
        return 1
    return cb
i = 0
sent = 0
while i < ${count}:
    while h.aio_in_flight() < ${depth} and i < ${count}:
        if sent % ${every + 1} == ${every}:
            h.aio_flush(completion=flushed(done))
        else:
            data = hashlib.sha256(b"%d-%d" % (${seed}, i)).digest() * ${bytes / 32}
            h.aio_pwrite(data, (i * 2053 % ${count}) * ${bytes}, completion=wrote(i))
            i += 1
        sent += 1
    h.poll(-1)
while h.aio_in_flight() > 0:
    h.poll(-1)
`;
}

/** Which of `writes` (seed, slot and size as the pipelined writer's) read back wrong. */
async function wrongWrites(
  node: TorusdProcess,
  volume: string,
  seed: number,
  writes: number[],
  { bytes, slots }: { bytes: number; slots: number },
) {
  const check = await python(`
import nbd, hashlib
h = nbd.NBD()
h.connect_uri(${JSON.stringify(node.uri(volume))})
bad = []
for i in ${JSON.stringify(writes)}:
    data = hashlib.sha256(b"%d-%d" % (${seed}, i)).digest() * ${bytes / 32}
    if h.pread(${bytes}, (i * 2053 % ${slots}) * ${bytes}) != data:
        bad.append(i)
print("bad", bad)
`);
  assert.equal(check.code, 0, check.stderr);
  return (/bad \[(.*)\]/.exec(check.stdout)?.[1] ?? '').split(',').filter((x) => x.trim());
}

describe('intent log under kill -9', { skip, timeout: 300_000 }, () => {
  let dir: string;
  let node: TorusdProcess | undefined;

  before(async () => {
    dir = await makeDataDir('intentlog');
  });
  after(async () => {
    await node?.stop('SIGKILL');
    await removeDir(dir);
  });

  test('4 KiB writes acknowledged by FLUSH or FUA survive kill -9 right after, round after round', async (t) => {
    const rounds = 4;
    let lost = 0;
    for (let round = 0; round < rounds; round++) {
      node = await startTorusd({
        dataDir: dir,
        size: '1GiB',
        args: ['--ensure-volume', 'd=64MiB'],
      });
      const acked = await writeAndKill(node, 'd', 100 + round, 500 + Math.random() * 1500);
      assert.ok(acked >= 0, 'the writer got at least one acknowledgement before the kill');
      node = await startTorusd({ dataDir: dir, size: '1GiB' });
      const bad = await lostWrites(node, 'd', 100 + round, acked);
      lost += bad.length;
      assert.deepEqual(bad, [], `round ${round}: writes 0..${acked} were acknowledged`);
      assert.equal(await node.stop('SIGTERM'), 0);
      node = undefined;
    }
    t.diagnostic(
      `fault-row | kill -9 single-node torusd right after FLUSH/FUA acks (4 KiB, intent log) | ${rounds} | bytes lost ${lost * KiB4} | -`,
    );
  });

  test('FLUSHes in flight together, on the log and past it, acknowledge what they cover through kill -9', async (t) => {
    // 8 requests in flight: FLUSHes wait behind one another's captures, or
    // join the one waiting to start (capture-queue.ts), while writes keep
    // completing, and each must cover exactly the writes completed before it
    // was sent. 4 KiB writes, a FLUSH every 3, go to the log; 1 MiB writes, a
    // FLUSH every 12 (more than the 8 MiB a capture logs), commit versions
    // instead.
    for (const [round, { bytes, every, count }] of [
      { bytes: KiB4, every: 3, count: SLOTS },
      { bytes: MiB, every: 12, count: 512 },
    ].entries()) {
      const volume = `pipelined${round}`;
      node = await startTorusd({
        dataDir: dir,
        size: '1GiB',
        args: ['--ensure-volume', `${volume}=${(count * bytes) / MiB}MiB`],
      });
      const seed = 300 + round;
      const script = pipelinedWriterScript(node.uri(volume), seed, {
        count,
        bytes,
        every,
        depth: 8,
      });
      const writer = spawn(SYSTEM_PYTHON, ['-c', script], { stdio: ['ignore', 'pipe', 'pipe'] });
      const completed: number[] = [];
      let flushedUpTo = 0;
      let stderr = '';
      let firstFlush!: () => void;
      const flushing = new Promise<void>((r) => (firstFlush = r));
      let pending = '';
      writer.stdout.on('data', (d: Buffer) => {
        const lines = (pending + d.toString()).split('\n');
        pending = lines.pop()!;
        for (const line of lines) {
          const [what, n] = line.split(' ');
          if (what === 'done') completed.push(Number(n));
          else if (what === 'flushed') {
            flushedUpTo = Math.max(flushedUpTo, Number(n));
            if (flushedUpTo > 0) firstFlush();
          }
        }
      });
      writer.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
      const writerDone = new Promise((r) => writer.once('exit', r));
      try {
        await Promise.race([flushing, writerDone, sleep(120_000, undefined, { ref: false })]);
        await sleep(300 + Math.random() * 700);
        process.kill(node.pid, 'SIGKILL');
        await node.stop('SIGKILL');
      } finally {
        await writerDone;
      }
      assert.ok(
        flushedUpTo > 0,
        `round ${round}: a FLUSH acknowledged writes before the kill ${stderr}`,
      );
      node = await startTorusd({ dataDir: dir, size: '1GiB' });
      const acknowledged = completed.slice(0, flushedUpTo);
      t.diagnostic(
        `round ${round}: ${acknowledged.length} of ${completed.length} completed writes acknowledged by FLUSHes before the kill`,
      );
      assert.deepEqual(
        await wrongWrites(node, volume, seed, acknowledged, { bytes, slots: count }),
        [],
        `round ${round}: ${acknowledged.length} writes were acknowledged by FLUSHes`,
      );
      assert.equal(await node.stop('SIGTERM'), 0);
      node = undefined;
    }
  });

  test('a torn last record is ignored; everything before it is replayed', async () => {
    node = await startTorusd({
      dataDir: dir,
      size: '1GiB',
      args: ['--ensure-volume', 'torn=64MiB'],
    });
    const acked = await writeAndKill(node, 'torn', 7, 1500);
    node = undefined;
    const path = join(dir, 'intent.log');
    const records = await IntentLog.peek(path);
    assert.ok(records.length > 0, 'the kill left records to replay');
    // Tear the last record: flip a byte of its payload where it lies in the file.
    let position = 4096;
    for (const r of records.slice(0, -1)) position += RECORD_HEADER_BYTES + r.payloadBytes;
    const file = await open(path, 'r+');
    const byte = Buffer.alloc(1);
    await file.read(byte, 0, 1, position + RECORD_HEADER_BYTES + 10);
    byte[0] ^= 0xff;
    await file.write(byte, 0, 1, position + RECORD_HEADER_BYTES + 10);
    await file.close();
    assert.equal((await IntentLog.peek(path)).length, records.length - 1);
    node = await startTorusd({ dataDir: dir, size: '1GiB' });
    // The torn record was the last acknowledged write at most: all before it must be there.
    const bad = await lostWrites(node, 'torn', 7, acked);
    assert.ok(
      bad.every((i) => Number(i) === acked),
      `lost ${bad.join(',')} of 0..${acked}`,
    );
    assert.equal(await node.stop('SIGTERM'), 0);
    node = undefined;
  });

  test('killed again during the replay, the next start replays again: nothing lost', async () => {
    node = await startTorusd({
      dataDir: dir,
      size: '1GiB',
      args: ['--ensure-volume', 'twice=64MiB'],
    });
    const acked = await writeAndKill(node, 'twice', 11, 2500);
    node = undefined;
    assert.ok((await IntentLog.peek(join(dir, 'intent.log'))).length > 0);
    for (const delay of [150, 400, 800]) {
      // Started without waiting for it to listen: killed wherever its start-up is.
      const child = spawn(
        process.execPath,
        [
          join(BIN, 'torusd'),
          '--data-dir',
          dir,
          '--size',
          '1GiB',
          '--nbd',
          '127.0.0.1:0',
          '--cache-size',
          '128MiB',
        ],
        { stdio: 'ignore' },
      );
      const exited = new Promise((r) => child.once('exit', r));
      await sleep(delay);
      child.kill('SIGKILL');
      await exited;
    }
    node = await startTorusd({ dataDir: dir, size: '1GiB' });
    assert.deepEqual(await lostWrites(node, 'twice', 11, acked), []);
    assert.equal(await node.stop('SIGTERM'), 0);
    node = undefined;
    assert.deepEqual(
      await IntentLog.peek(join(dir, 'intent.log')),
      [],
      'a clean stop leaves nothing to replay',
    );
  });

  test('after the log wrapped lap after lap, flushed data survives kill -9', async () => {
    // 64 KiB flushes into the smallest log: a lap every ~250; past half full the volume commits.
    const bytes = 64 * 1024;
    node = await startTorusd({
      dataDir: dir,
      size: '1GiB',
      args: [
        '--ensure-volume',
        `laps=${(SLOTS * bytes) / MiB + 1}MiB`,
        '--intent-log-size',
        '16MiB',
      ],
    });
    const acked = await writeAndKill(node, 'laps', 31, Math.random() * 300, {
      fromAck: 700,
      bytes,
    });
    node = undefined;
    assert.ok(acked >= 700, `only ${acked + 1} writes acknowledged`);
    const head = Buffer.alloc(FILE_HEADER_BYTES);
    const file = await open(join(dir, 'intent.log'), 'r');
    await file.read(head, 0, FILE_HEADER_BYTES, 0);
    await file.close();
    const header = decodeFileHeader(head, await hasher());
    assert.ok(header && header.firstSeq > 1, 'the log wrapped: its tail moved');
    node = await startTorusd({ dataDir: dir, size: '1GiB' });
    assert.deepEqual(await lostWrites(node, 'laps', 31, acked, bytes), []);
    assert.equal(await node.stop('SIGTERM'), 0);
    node = undefined;
  });

  test('an encrypted volume: flushed data comes back, and the log never holds it in clear', async () => {
    const env = { TORUS_DATA_DIR: dir };
    const created = await runCli(
      'torusctl',
      ['volume', 'create-block', 'sealed', '64MiB', '--encrypt'],
      env,
    );
    assert.equal(created.code, 0, created.stderr);
    node = await startTorusd({ dataDir: dir, size: '1GiB' });
    const acked = await writeAndKill(node, 'sealed', 21, 1200);
    node = undefined;
    const records = await IntentLog.peek(join(dir, 'intent.log'));
    assert.ok(
      records.some((r) => r.flags & FLAG_SEALED),
      'the flushes went to the log, sealed',
    );
    const log = await readFile(join(dir, 'intent.log'));
    const first = (
      await python(`import hashlib; print(hashlib.sha256(b"21-0").hexdigest())`)
    ).stdout.trim();
    assert.equal(
      log.indexOf(Buffer.from(first, 'hex')),
      -1,
      'plaintext of write 0 found in the log',
    );
    node = await startTorusd({ dataDir: dir, size: '1GiB' });
    assert.deepEqual(await lostWrites(node, 'sealed', 21, acked), []);
    assert.equal(await node.stop('SIGTERM'), 0);
    node = undefined;
  });

  test('a snapshot taken right after a FLUSH holds the flushed data', async () => {
    node = await startTorusd({
      dataDir: dir,
      size: '1GiB',
      args: ['--ensure-volume', 'snap=16MiB'],
    });
    const w = await python(`
import nbd
h = nbd.NBD()
h.connect_uri(${JSON.stringify(node.uri('snap'))})
h.pwrite(b"\\x5a" * 4096, 12288)
h.flush()
`);
    assert.equal(w.code, 0, w.stderr);
    const snap = await runCli('torusctl', ['-d', dir, 'block', 'snapshot', 'create', 'snap@now']);
    assert.equal(snap.code, 0, snap.stderr);
    const r = await python(`
import nbd
h = nbd.NBD()
h.connect_uri(${JSON.stringify(node.uri('snap@now'))})
print(h.pread(4096, 12288) == b"\\x5a" * 4096)
`);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /True/);
    assert.equal(await node.stop('SIGTERM'), 0);
    node = undefined;
  });
});
