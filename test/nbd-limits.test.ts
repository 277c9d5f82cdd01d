/**
 * Limits hostile clients cannot exhaust (issue 12, item 4), against a real
 * torusd: 2,000 idle TCP sockets and 1,100 idle connections past NBD_OPT_GO
 * from 127.0.0.1, then a well-behaved client from 127.0.0.2 connects and
 * does a write and a read within 1 s. Also: READ/WRITE up to 64 MiB.
 *
 * Two configurations, because the per-client cap decides what the attack
 * looks like:
 * - defaults (128 per client): 127.0.0.1 keeps a quarter of the handshake
 *   cap and 128 connections; everything else it opens sheds its own oldest
 *   handshake or is refused at once.
 * - per-client cap lifted: all 1,100 idle post-GO connections are admitted
 *   and kept, and idle sockets from eight more addresses fill the handshake
 *   cap itself, so the good client gets in by shedding the oldest of them.
 * In both, the post-GO connections still answer after the handshake
 * deadline has passed, and the test closes every socket it opened.
 *
 * The good client's time is the requirement (< 1 s); it is asserted
 * with the bound itself and printed, since it is a figure for the issue.
 */
import assert from 'node:assert/strict';
import { connect, type Socket } from 'node:net';
import { after, before, describe, test } from 'node:test';
import { freePort, until } from './cluster-fixture.js';
import { scrapeMetric } from './support/metrics-scrape.js';
import { missing, python } from './tools.js';
import { makeDataDir, removeDir, startTorusd, type TorusdProcess } from './torusd-process.js';

const MiB = 1024 * 1024;
const VOLUME = 'lim';
const IHAVEOPT = Buffer.from('IHAVEOPT');
const OPTION_REPLY_MAGIC = 0x3e889045565a9n;
const NBD_OPT_GO = 7;
const NBD_REP_ACK = 1;
const REQUEST_MAGIC = 0x25609513;
const SIMPLE_REPLY_MAGIC = 0x67446698;
const NBD_CMD_READ = 0;
const NBD_CMD_WRITE = 1;
const EINVAL = 22;

/** Every socket the test opened, so that each is destroyed whatever happens. */
const opened = new Set<Socket>();

interface Idle {
  socket: Socket;
  closed: boolean;
}

/** A TCP connection that says nothing. */
function openIdle(port: number, localAddress: string): Promise<Idle> {
  return new Promise((resolve, reject) => {
    const socket = connect({ host: '127.0.0.1', port, localAddress });
    opened.add(socket);
    const idle: Idle = { socket, closed: false };
    socket.on('error', () => undefined);
    socket.resume(); // 'close' only comes once what the server sent is read
    socket.once('close', () => {
      idle.closed = true;
      opened.delete(socket);
    });
    socket.once('connect', () => resolve(idle));
    socket.once('error', reject);
  });
}

/**
 * Fixed newstyle up to transmission with NBD_OPT_GO, sent all at once: the
 * server reads the client flags and the option after its greeting anyway.
 * Resolves with the socket in transmission (no structured replies), or
 * undefined when the server closed the connection (refused or shed).
 */
function openPostGo(port: number, localAddress: string): Promise<Socket | undefined> {
  return new Promise((resolve) => {
    const socket = connect({ host: '127.0.0.1', port, localAddress });
    opened.add(socket);
    socket.setNoDelay(true);
    let received = Buffer.alloc(0);
    let at = 18; // greeting: NBDMAGIC, IHAVEOPT, handshake flags
    let done = false;
    const finish = (result: Socket | undefined) => {
      if (done) return;
      done = true;
      socket.off('data', onData);
      if (!result) socket.destroy();
      resolve(result);
    };
    const onData = (chunk: Buffer) => {
      received = Buffer.concat([received, chunk]);
      while (received.length >= at + 20) {
        assert.equal(received.readBigUInt64BE(at), OPTION_REPLY_MAGIC);
        const type = received.readUInt32BE(at + 12);
        const length = received.readUInt32BE(at + 16);
        if (received.length < at + 20 + length) return;
        at += 20 + length;
        if (type === NBD_REP_ACK) {
          assert.equal(received.length, at, 'nothing follows the ACK');
          return finish(socket);
        }
        if (type & 0x80000000) return finish(undefined);
      }
    };
    socket.on('data', onData);
    socket.on('error', () => finish(undefined));
    socket.once('close', () => {
      opened.delete(socket);
      finish(undefined);
    });
    socket.once('connect', () => {
      const name = Buffer.from(VOLUME);
      const option = Buffer.alloc(4 + 16 + 4 + name.length + 2);
      option.writeUInt32BE(1 | 2, 0); // FIXED_NEWSTYLE | NO_ZEROES
      IHAVEOPT.copy(option, 4);
      option.writeUInt32BE(NBD_OPT_GO, 12);
      option.writeUInt32BE(4 + name.length + 2, 16);
      option.writeUInt32BE(name.length, 20);
      name.copy(option, 24);
      socket.write(option);
    });
  });
}

/** One simple-reply request on a socket in transmission; resolves with the error and any READ data. */
function request(
  socket: Socket,
  type: number,
  offset: number,
  length: number,
  payload?: Buffer,
): Promise<{ error: number; data: Buffer }> {
  return new Promise((resolve, reject) => {
    const header = Buffer.alloc(28);
    header.writeUInt32BE(REQUEST_MAGIC, 0);
    header.writeUInt16BE(type, 6);
    header.writeBigUInt64BE(7n, 8);
    header.writeBigUInt64BE(BigInt(offset), 16);
    header.writeUInt32BE(length, 24);
    const chunks: Buffer[] = [];
    let have = 0;
    let expected = 0; // known once the reply header is in
    const onData = (chunk: Buffer) => {
      chunks.push(chunk);
      have += chunk.length;
      if (expected === 0 && have >= 16) {
        const head = Buffer.concat(chunks);
        chunks.splice(0, chunks.length, head);
        assert.equal(head.readUInt32BE(0), SIMPLE_REPLY_MAGIC);
        expected = 16 + (type === NBD_CMD_READ && head.readUInt32BE(4) === 0 ? length : 0);
      }
      // Joined only once complete: joining on every chunk of a 64 MiB reply is quadratic.
      if (expected === 0 || have < expected) return;
      const all = Buffer.concat(chunks);
      assert.equal(all.length, expected, 'one reply, nothing after it');
      cleanup();
      resolve({ error: all.readUInt32BE(4), data: all.subarray(16) });
    };
    const onClose = () => {
      cleanup();
      reject(new Error('the server closed the connection'));
    };
    const cleanup = () => {
      socket.off('data', onData);
      socket.off('close', onClose);
    };
    socket.on('data', onData);
    socket.once('close', onClose);
    socket.write(header);
    if (payload) socket.write(payload);
  });
}

/** Run `count` tasks, `parallel` at a time. */
async function inBatches<T>(count: number, parallel: number, task: () => Promise<T>): Promise<T[]> {
  const results: T[] = [];
  for (let i = 0; i < count; i += parallel) {
    const n = Math.min(parallel, count - i);
    results.push(...(await Promise.all(Array.from({ length: n }, task))));
  }
  return results;
}

/** The good client from 127.0.0.2: connect, GO, write 4 KiB, read it back. Returns milliseconds. */
async function goodClient(port: number): Promise<number> {
  const started = performance.now();
  const socket = await openPostGo(port, '127.0.0.2');
  assert.ok(socket, 'the good client was admitted');
  const data = Buffer.alloc(4096, 0x5a);
  assert.equal((await request(socket, NBD_CMD_WRITE, 8192, data.length, data)).error, 0);
  const read = await request(socket, NBD_CMD_READ, 8192, data.length);
  const ms = performance.now() - started;
  assert.equal(read.error, 0);
  assert.ok(read.data.equals(data));
  socket.destroy();
  return ms;
}

async function metric(port: number, reason: string): Promise<number> {
  return (await scrapeMetric(port, `torus_nbd_connections_dropped_total{reason="${reason}"}`)) ?? 0;
}

/** Every post-GO connection still answers a READ (none was timed out or displaced). */
async function allAnswer(sockets: Socket[]): Promise<void> {
  await Promise.all(
    sockets.map(async (s) => assert.equal((await request(s, NBD_CMD_READ, 0, 512)).error, 0)),
  );
}

function closeAll(): void {
  for (const socket of opened) socket.destroy();
  opened.clear();
}

async function withTorusd(
  args: string[],
  body: (node: TorusdProcess, metricsPort: number) => Promise<void>,
): Promise<void> {
  const dir = await makeDataDir('limits');
  const metricsPort = await freePort();
  let node: TorusdProcess | undefined;
  try {
    node = await startTorusd({
      dataDir: dir,
      args: ['--ensure-volume', `${VOLUME}=256MiB`, '--port', String(metricsPort), ...args],
    });
    await body(node, metricsPort);
  } finally {
    closeAll();
    await node?.stop();
    await removeDir(dir);
  }
}

describe('NBD connection limits against a real torusd', { timeout: 240_000 }, () => {
  after(closeAll);

  test(
    'defaults: 2,000 idle sockets and 1,100 idle post-GO connections from one address leave room for another',
    { timeout: 120_000 },
    async () => {
      await withTorusd([], async (node, metricsPort) => {
        const idle = await inBatches(2000, 200, () => openIdle(node.port, '127.0.0.1'));
        // Its handshake share (256 / 4) stays; every newer socket shed an older one of its own.
        await until('the idle sockets beyond the share to be shed', async () =>
          idle.filter((i) => !i.closed).length === 64 ? true : undefined,
        );
        const postGo = (await inBatches(1100, 50, () => openPostGo(node.port, '127.0.0.1'))).filter(
          (s): s is Socket => s !== undefined,
        );
        assert.equal(postGo.length, 128, 'the per-client cap admits 128 past GO');
        assert.ok(
          idle.every((i) => i.closed),
          'the idle handshakes made room for real ones',
        );

        const ms = await goodClient(node.port);
        process.stdout.write(
          `# good client (127.0.0.2), per-client cap full: ${ms.toFixed(1)} ms\n`,
        );
        assert.ok(ms < 1000, `the good client took ${ms} ms`);

        assert.ok((await metric(metricsPort, 'shed')) >= 1936);
        assert.ok((await metric(metricsPort, 'refused-per-client')) >= 1);
        // Past the 10 s handshake deadline, the idle post-GO connections are still served.
        await new Promise((r) => setTimeout(r, 11_000));
        await allAnswer(postGo);
      });
    },
  );

  test(
    'per-client cap lifted: 1,100 idle post-GO connections are kept; idle sockets from eight addresses fill the handshake cap',
    { timeout: 120_000 },
    async () => {
      await withTorusd(
        [
          '--nbd-max-per-client',
          '5000',
          '--nbd-max-connections',
          '1500',
          '--nbd-handshake-timeout',
          '5',
        ],
        async (node, metricsPort) => {
          const postGo = (
            await inBatches(1100, 50, () => openPostGo(node.port, '127.0.0.1'))
          ).filter((s): s is Socket => s !== undefined);
          assert.equal(postGo.length, 1100);
          await inBatches(2000, 200, () => openIdle(node.port, '127.0.0.1'));
          const spread = await inBatches(1000, 200, async () => {
            const address = `127.0.0.${10 + Math.floor(Math.random() * 8)}`;
            return openIdle(node.port, address);
          });
          await until('the handshake cap to be full', async () =>
            spread.filter((i) => !i.closed).length >= 200 ? true : undefined,
          );
          const ms = await goodClient(node.port);
          process.stdout.write(
            `# good client (127.0.0.2), handshake cap full: ${ms.toFixed(1)} ms\n`,
          );
          assert.ok(ms < 1000, `the good client took ${ms} ms`);
          assert.ok((await metric(metricsPort, 'shed')) >= 1);
          // Past the 5 s handshake deadline: every idle socket is gone, every post-GO one answers.
          await new Promise((r) => setTimeout(r, 6_000));
          await until('the idle sockets to time out', async () =>
            spread.every((i) => i.closed) ? true : undefined,
          );
          assert.ok((await metric(metricsPort, 'handshake-timeout')) >= 1);
          await allAnswer(postGo);
        },
      );
    },
  );
});

describe('READ/WRITE up to 64 MiB', { timeout: 120_000 }, () => {
  let node: TorusdProcess;
  let dir: string;
  before(async () => {
    dir = await makeDataDir('payload');
    node = await startTorusd({ dataDir: dir, args: ['--ensure-volume', `${VOLUME}=256MiB`] });
  });
  after(async () => {
    closeAll();
    await node?.stop();
    await removeDir(dir);
  });

  test(
    '48 MiB and 64 MiB writes and reads through libnbd',
    { timeout: 60_000, skip: missing('nbdsh') },
    async () => {
      const result = await python(`
import nbd
h = nbd.NBD()
h.connect_uri("${node.uri(VOLUME)}")
assert h.get_block_size(nbd.SIZE_MAXIMUM) == 64 * 1024 * 1024, h.get_block_size(nbd.SIZE_MAXIMUM)
for mib, fill in ((48, 0x48), (64, 0x64)):
    data = bytes([fill]) * (mib * 1024 * 1024)
    h.pwrite(data, 4096)
    assert h.pread(len(data), 4096) == data, mib
h.shutdown()
print("ok")
`);
      assert.equal(result.code, 0, result.stderr);
      assert.match(result.stdout, /ok/);
    },
  );

  test(
    '64 MiB + 1 is refused with EINVAL and the connection goes on',
    { timeout: 60_000 },
    async () => {
      const socket = await openPostGo(node.port, '127.0.0.1');
      assert.ok(socket);
      const over = 64 * MiB + 1;
      assert.equal(
        (await request(socket, NBD_CMD_WRITE, 0, over, Buffer.alloc(over, 1))).error,
        EINVAL,
      );
      assert.equal((await request(socket, NBD_CMD_READ, 0, over)).error, EINVAL);
      const data = Buffer.alloc(64 * MiB, 0x77);
      assert.equal((await request(socket, NBD_CMD_WRITE, 0, data.length, data)).error, 0);
      const read = await request(socket, NBD_CMD_READ, 0, data.length);
      assert.equal(read.error, 0);
      assert.ok(read.data.equals(data));
      socket.destroy();
    },
  );
});
