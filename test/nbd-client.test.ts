/**
 * NbdClient against real servers: Torus's NbdServer over MemoryExport in this
 * process (every command, pipelining, splitting, typed errors, a dropped
 * connection), a real torusd, and nbdkit when it is installed (it is not one
 * of the tools `npm test` installs, so that part skips without it).
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { NotFoundError } from '../src/common/errors.js';
import { NbdClient, type NbdAddress } from '../src/dataplane/nbd-client/client.js';
import { NbdConnectionError, NbdRequestError } from '../src/dataplane/nbd-client/errors.js';
import type { NbdExport } from '../src/dataplane/nbd/export.js';
import { NbdServer } from '../src/dataplane/nbd/server.js';
import { MemoryExport, MemoryExportProvider } from './support/memory-export.js';
import { have } from './tools.js';
import {
  makeDataDir,
  removeDir,
  runCli,
  startTorusd,
  type TorusdProcess,
} from './torusd-process.js';

const MiB = 1024 * 1024;
const quiet = pino({ level: process.env.TORUS_LOG_LEVEL ?? 'silent' });

/** The behaviour every server must show this client; `start` gives an address of a 64 MiB export named `name`. */
function commonChecks(
  label: string,
  start: () => Promise<{ address: NbdAddress; name: string; stop(): Promise<void> }>,
  namesChecked = true,
) {
  describe(`NbdClient against ${label}`, () => {
    let server: Awaited<ReturnType<typeof start>>;
    before(async () => (server = await start()));
    after(async () => server?.stop());

    it('handshakes: size, flags, block status', async () => {
      const client = await NbdClient.connect(server.address, server.name);
      try {
        assert.equal(client.size, 64 * MiB);
        assert.equal(client.readOnly, false);
        assert.ok(client.canFlush && client.canTrim && client.canWriteZeroes);
        assert.ok(client.structuredReplies);
        assert.ok(client.canBlockStatus);
        assert.ok(client.maxRequestBytes > 0 && client.maxRequestBytes <= 64 * MiB);
      } finally {
        await client.close();
      }
    });

    it('writes and reads back, pipelined, across request splits', async () => {
      const client = await NbdClient.connect(server.address, server.name);
      try {
        const data = randomBytes(40 * MiB); // over 32 MiB: split into two requests at least
        await client.write(data, 4 * MiB);
        const small = Array.from({ length: 100 }, (_, i) => randomBytes(4096).fill(i, 0, 1));
        await Promise.all(small.map((b, i) => client.write(b, 50 * MiB + i * 4096)));
        await client.flush();
        const back = Buffer.alloc(data.length);
        await client.read(back, 4 * MiB);
        assert.ok(back.equals(data));
        const backs = small.map(() => Buffer.alloc(4096));
        await Promise.all(backs.map((b, i) => client.read(b, 50 * MiB + i * 4096)));
        backs.forEach((b, i) => assert.ok(b.equals(small[i]), `block ${i}`));
      } finally {
        await client.close();
      }
    });

    it('reports holes and data, and zeroes ranges', async () => {
      const client = await NbdClient.connect(server.address, server.name);
      try {
        await client.trim(0, 64 * MiB);
        await client.write(Buffer.alloc(MiB, 7), 8 * MiB);
        await client.flush();
        const extents = await client.blockStatus(0, 64 * MiB);
        // Extents are in order, contiguous, within the range.
        let at = 0;
        for (const e of extents) {
          assert.equal(e.offset, at);
          at += e.length;
        }
        assert.ok(at <= 64 * MiB && at > 0);
        const covering = (offset: number) =>
          extents.find((e) => e.offset <= offset && offset < e.offset + e.length);
        assert.equal(covering(0)?.zero, true);
        assert.equal(covering(8 * MiB)?.zero, false);
        await client.writeZeroes(8 * MiB, MiB);
        const back = Buffer.alloc(MiB, 1);
        await client.read(back, 8 * MiB);
        assert.ok(back.every((b) => b === 0));
      } finally {
        await client.close();
      }
    });

    it('a bad request fails alone with a typed error naming the errno', async () => {
      const client = await NbdClient.connect(server.address, server.name);
      try {
        const failed = await client.read(Buffer.alloc(4096), 64 * MiB).then(
          () => undefined,
          (err: unknown) => err,
        );
        assert.ok(failed instanceof NbdRequestError, String(failed));
        assert.equal(failed.errno, 'EINVAL');
        assert.match(failed.message, /NBD_CMD_READ of 4096 bytes at 67108864 failed: NBD_EINVAL/);
        // The connection goes on.
        await client.read(Buffer.alloc(4096), 0);
      } finally {
        await client.close();
      }
    });

    it(
      'an unknown export is NotFoundError',
      { skip: !namesChecked && 'this server serves any name' },
      async () => {
        await assert.rejects(NbdClient.connect(server.address, 'no-such-export'), NotFoundError);
      },
    );
  });
}

// ── Torus's NbdServer over MemoryExport, in this process ─────────────────

async function memoryServer(exportOf: () => NbdExport) {
  const provider = {
    list: () => [{ name: 'mem', description: '' }],
    open: async (name: string) => (name === 'mem' ? exportOf() : undefined),
    describe: async (name: string) => (name === 'mem' ? exportOf() : undefined),
  };
  const server = new NbdServer(provider, { log: quiet });
  const { port } = await server.listenTcp('127.0.0.1', 0);
  return {
    server,
    address: { host: '127.0.0.1', port },
    stop: () => server.close({ drainMs: 1000 }),
  };
}

commonChecks('NbdServer + MemoryExport (TCP)', async () => {
  const store = new MemoryExport({ name: 'mem', size: 64 * MiB });
  const s = await memoryServer(() => store);
  return { address: s.address, name: 'mem', stop: s.stop };
});

commonChecks('NbdServer + MemoryExport (unix socket)', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'nbd-client-'));
  const provider = new MemoryExportProvider([new MemoryExport({ name: 'mem', size: 64 * MiB })]);
  const server = new NbdServer(provider, { log: quiet });
  const path = join(dir, 'nbd.sock');
  await server.listenUnix(path);
  return {
    address: { path },
    name: 'mem',
    async stop() {
      await server.close({ drainMs: 1000 });
      await rm(dir, { recursive: true, force: true });
    },
  };
});

describe('NbdClient: limits and failures', () => {
  it('splits at the maximum payload the server announces', async () => {
    const store = new MemoryExport({ name: 'mem', size: 16 * MiB, maximumPayload: MiB });
    const seen: number[] = [];
    const s = await memoryServer(
      () =>
        new Proxy(store, {
          get(target, key) {
            if (key === 'write')
              return (offset: number, data: Buffer, fua: boolean) => {
                seen.push(data.length);
                return target.write(offset, data, fua);
              };
            const value = Reflect.get(target, key) as unknown;
            return typeof value === 'function' ? (value as () => unknown).bind(target) : value;
          },
        }),
    );
    const client = await NbdClient.connect(s.address, 'mem');
    try {
      assert.equal(client.maxRequestBytes, MiB);
      const data = randomBytes(5 * MiB + 4096);
      await client.write(data, 0);
      assert.deepEqual(
        seen.sort((a, b) => a - b),
        [4096, MiB, MiB, MiB, MiB, MiB],
      );
      const back = Buffer.alloc(data.length);
      await client.read(back, 0);
      assert.ok(back.equals(data));
    } finally {
      await client.close();
      await s.stop();
    }
  });

  it('keeps at most maxInFlight requests out, and settles every one', async () => {
    const store = new MemoryExport({ name: 'mem', size: 16 * MiB });
    let inExport = 0;
    let most = 0;
    const s = await memoryServer(
      () =>
        new Proxy(store, {
          get(target, key) {
            if (key === 'read')
              return async (offset: number, dest: Buffer) => {
                most = Math.max(most, ++inExport);
                await new Promise((r) => setTimeout(r, 1));
                inExport--;
                return target.read(offset, dest);
              };
            const value = Reflect.get(target, key) as unknown;
            return typeof value === 'function' ? (value as () => unknown).bind(target) : value;
          },
        }),
    );
    const client = await NbdClient.connect(s.address, 'mem', { maxInFlight: 4 });
    try {
      await Promise.all(
        Array.from({ length: 50 }, (_, i) => client.read(Buffer.alloc(4096), i * 4096)),
      );
      assert.ok(most >= 2, `pipelined: ${most} reads at once`);
      assert.ok(most <= 4, `${most} reads at once with maxInFlight 4`);
      assert.equal(client.inFlight, 0);
    } finally {
      await client.close();
      await s.stop();
    }
  });

  it('a dropped connection fails every pending request, and every later one', async () => {
    const store = new MemoryExport({ name: 'mem', size: 16 * MiB });
    let release!: () => void;
    const stuck = new Promise<void>((r) => (release = r));
    const s = await memoryServer(
      () =>
        new Proxy(store, {
          get(target, key) {
            if (key === 'read') return () => stuck; // never answers until released
            const value = Reflect.get(target, key) as unknown;
            return typeof value === 'function' ? (value as () => unknown).bind(target) : value;
          },
        }),
    );
    const client = await NbdClient.connect(s.address, 'mem');
    const pending = Array.from({ length: 5 }, (_, i) => client.read(Buffer.alloc(4096), i * 4096));
    while (client.inFlight < 5) await new Promise((r) => setImmediate(r));
    const closing = s.server.close({ drainMs: 0 }); // destroys the connection
    for (const p of pending) await assert.rejects(p, NbdConnectionError);
    await assert.rejects(client.read(Buffer.alloc(4096), 0), NbdConnectionError);
    release();
    await closing;
    client.destroy();
  });

  it('refuses a connection to nothing with NbdConnectionError', async () => {
    const s = await memoryServer(() => new MemoryExport({ name: 'mem', size: MiB }));
    const { port } = s.address;
    await s.stop();
    await assert.rejects(NbdClient.connect({ host: '127.0.0.1', port }, 'mem'), NbdConnectionError);
  });

  it('works without structured replies: plain replies, block status says all data', async () => {
    const store = new MemoryExport({ name: 'mem', size: 16 * MiB });
    const s = await memoryServer(() => store);
    const client = await NbdClient.connect(s.address, 'mem', { structuredReplies: false });
    try {
      assert.equal(client.structuredReplies, false);
      assert.equal(client.canBlockStatus, false);
      assert.deepEqual(await client.blockStatus(0, 16 * MiB), [
        { offset: 0, length: 16 * MiB, hole: false, zero: false },
      ]);
      const data = randomBytes(MiB);
      await client.write(data, MiB);
      const back = Buffer.alloc(MiB);
      await client.read(back, MiB);
      assert.ok(back.equals(data));
      await assert.rejects(
        client.read(Buffer.alloc(4096), 16 * MiB),
        (err: NbdRequestError) => err.errno === 'EINVAL',
      );
    } finally {
      await client.close();
      await s.stop();
    }
  });
});

// ── a real torusd ─────────────────────────────────────────────────────────

let torusd: TorusdProcess | undefined;
commonChecks('torusd', async () => {
  const dataDir = await makeDataDir('nbd-client');
  torusd = await startTorusd({ dataDir, size: '512MiB' });
  const created = await runCli('torusctl', [
    '--data-dir',
    dataDir,
    'volume',
    'create-block',
    'vol',
    '64MiB',
  ]);
  assert.equal(created.code, 0, created.stderr);
  return {
    address: { host: '127.0.0.1', port: torusd.port },
    name: 'vol',
    async stop() {
      await torusd?.stop();
      await removeDir(dataDir);
    },
  };
});

// ── nbdkit, when installed ────────────────────────────────────────────────

const nbdkitMissing = have('nbdkit')
  ? false
  : 'nbdkit is not installed (apt-get install nbdkit); it is not one of the tools npm test installs';

describe('NbdClient against nbdkit memory', { skip: nbdkitMissing }, () => {
  let child: ChildProcess;
  let dir: string;
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'nbdkit-'));
  });
  after(async () => {
    child?.kill('SIGKILL');
    await rm(dir, { recursive: true, force: true });
  });

  commonChecks(
    'nbdkit memory 64M',
    async () => {
      const path = join(dir, 'nbdkit.sock');
      // -f: stay in the foreground, our child; -U: a unix socket of our own; no export name check.
      child = spawn('nbdkit', ['-f', '-U', path, '--exit-with-parent', 'memory', '64M'], {
        stdio: 'ignore',
      });
      for (let i = 0; i < 100; i++) {
        try {
          const probe = await NbdClient.connect({ path }, '');
          await probe.close();
          break;
        } catch {
          await new Promise((r) => setTimeout(r, 100));
        }
      }
      return {
        address: { path },
        name: 'mem',
        async stop() {
          child.kill('SIGTERM');
        },
      };
    },
    false,
  );
});
