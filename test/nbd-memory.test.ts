/**
 * The NBD protocol layer on its own: NbdServer over MemoryExport, in this
 * process, held to the real-client conformance suite, plus the server's own
 * promises (export lifetime, read-only, metrics, limits, shutdown).
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { IoError, type Errno } from '../src/common/errors.js';
import { MemoryExport, MemoryExportProvider } from './support/memory-export.js';
import { NbdServer, type NbdServerOptions } from '../src/dataplane/nbd/server.js';
import { NbdClient } from '../src/dataplane/nbd-client/client.js';
import type { ExportProvider, NbdExport } from '../src/dataplane/nbd/export.js';
import { RawClient, nbdClientSuite } from './nbd-clients.js';
import { NBD_CMD_FLUSH, NBD_ESHUTDOWN } from '../src/dataplane/nbd/wire.js';

const MiB = 1024 * 1024;
const quiet = pino({ level: process.env.TORUS_LOG_LEVEL ?? 'silent' });

async function serve(provider: ExportProvider, options: NbdServerOptions = {}) {
  const server = new NbdServer(provider, { log: quiet, ...options });
  const dir = await mkdtemp(join(tmpdir(), 'nbd-mem-'));
  const socketPath = join(dir, 'nbd.sock');
  // A stale socket file from an earlier run must not stop us.
  await writeFile(socketPath, '').catch(() => undefined);
  await rm(socketPath);
  const { port } = await server.listenTcp('127.0.0.1', 0);
  await server.listenUnix(socketPath);
  return {
    server,
    port,
    uri: (name: string) => `nbd://127.0.0.1:${port}/${name}`,
    unixUri: (name: string) => `nbd+unix:///${name}?socket=${socketPath}`,
    async stop() {
      await server.close({ drainMs: 2000 });
      await rm(dir, { recursive: true, force: true });
    },
  };
}

nbdClientSuite('NbdServer + MemoryExport', async () => {
  const provider = new MemoryExportProvider([new MemoryExport({ name: 'mem', size: 256 * MiB })]);
  const s = await serve(provider);
  return { uri: s.uri('mem'), unixUri: s.unixUri('mem'), stop: s.stop };
});

const python = ['/usr/bin/python3', 'python3'].find(
  (p) => spawnSync(p, ['-c', 'import nbd'], { stdio: 'ignore', timeout: 20_000 }).status === 0,
);
const needsPython = python ? false : 'python3 cannot import nbd: apt-get install python3-libnbd';

/** Run a libnbd python snippet (uri bound) without blocking this process's event loop, which serves it. */
function libnbd(script: string, uri: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = spawn(
      python!,
      ['-c', `import errno, sys, nbd\nuri = sys.argv[1]\n${script}`, uri],
      { stdio: ['ignore', 'pipe', 'pipe'] },
    );
    let out = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => (out += d));
    child.stderr.setEncoding('utf8').on('data', (d: string) => (out += d));
    const timer = setTimeout(() => child.kill('SIGKILL'), 20_000);
    child.on('error', reject);
    child.on('close', (code) => {
      clearTimeout(timer);
      if (code === 0) resolve(out);
      else reject(new Error(`python exited ${code}:\n${out}`));
    });
  });
}

/** An export that forwards to `inner` except for the methods in `overrides` (a fault or delay layer). */
function delegate(inner: NbdExport, overrides: Partial<NbdExport>): NbdExport {
  return new Proxy(inner, {
    get(target, key) {
      if (key in overrides) return overrides[key as keyof NbdExport];
      const value = Reflect.get(target, key);
      return typeof value === 'function' ? value.bind(target) : value;
    },
  });
}

/** An export whose every I/O fails with the given errno, to see how failures are answered. */
function failing(exp: MemoryExport, errno: Errno): MemoryExportProvider & ExportProvider {
  const provider = new MemoryExportProvider([exp]);
  const fail = async () => {
    throw new IoError(errno, 'injected failure');
  };
  provider.open = async (name) => {
    const opened = await MemoryExportProvider.prototype.open.call(provider, name);
    if (!opened) return undefined;
    return delegate(opened, { read: fail, write: fail, blockStatus: fail });
  };
  return provider;
}

describe('NbdServer promises', () => {
  it(
    'closes each opened export exactly once, after its clients leave',
    { skip: needsPython, timeout: 30_000 },
    async () => {
      const exp = new MemoryExport({ name: 'x', size: 16 * MiB });
      const s = await serve(new MemoryExportProvider([exp]));
      try {
        await libnbd(
          `h = nbd.NBD(); h.connect_uri(uri); h.pwrite(b"a" * 4096, 0); h.shutdown()\ng = nbd.NBD(); g.connect_uri(uri); g.pread(4096, 0)`,
          s.uri('x'),
        );
        for (let i = 0; i < 50 && (exp.openSessions !== 0 || s.server.connectionCount !== 0); i++)
          await new Promise((r) => setTimeout(r, 20));
        assert.equal(exp.openSessions, 0);
        assert.equal(s.server.connectionCount, 0);
      } finally {
        await s.stop();
      }
    },
  );

  it(
    'refuses writes to a read-only export with EPERM and does not offer trim or zero',
    { skip: needsPython, timeout: 30_000 },
    async () => {
      const s = await serve(
        new MemoryExportProvider([new MemoryExport({ name: 'ro', size: MiB, readOnly: true })]),
      );
      try {
        const out = await libnbd(
          `h = nbd.NBD(); h.connect_uri(uri); h.set_strict_mode(0)
assert h.is_read_only() and not h.can_trim() and not h.can_zero()
try:
    h.pwrite(b"a" * 512, 0)
    raise SystemExit("write succeeded")
except nbd.Error as e:
    assert e.errnum == errno.EPERM, e.errno
assert h.pread(512, 0) == bytes(512)
print("ok")`,
          s.uri('ro'),
        );
        assert.match(out, /ok/);
      } finally {
        await s.stop();
      }
    },
  );

  it(
    'answers export failures with their errno, as simple and as structured replies',
    { skip: needsPython, timeout: 30_000 },
    async () => {
      const s = await serve(failing(new MemoryExport({ name: 'bad', size: MiB }), 'EIO'));
      try {
        const out = await libnbd(
          `for structured in (False, True):
    h = nbd.NBD(); h.set_request_structured_replies(structured); h.connect_uri(uri)
    for op in (lambda: h.pread(4096, 0), lambda: h.pwrite(b"a" * 4096, 0)):
        try:
            op()
            raise SystemExit("succeeded")
        except nbd.Error as e:
            assert e.errnum == errno.EIO, e.errno
    h.flush()
    h.shutdown()
print("ok")`,
          s.uri('bad'),
        );
        assert.match(out, /ok/);
      } finally {
        await s.stop();
      }
    },
  );

  it(
    'reports each request to the metrics hooks and counts connections',
    { skip: needsPython, timeout: 30_000 },
    async () => {
      const requests: [string, number, Errno | undefined][] = [];
      let connections = 0;
      const s = await serve(
        new MemoryExportProvider([new MemoryExport({ name: 'm', size: MiB })]),
        {
          metrics: {
            onRequest: (command, bytes, seconds, errno) => {
              assert.ok(seconds >= 0);
              requests.push([command, bytes, errno]);
            },
            onConnection: (delta) => (connections += delta),
          },
        },
      );
      try {
        await libnbd(
          `h = nbd.NBD(); h.connect_uri(uri); h.set_strict_mode(0); h.pwrite(b"a" * 4096, 0); h.pread(512, 0)
try:
    h.pread(512, 2 * 1024 * 1024)
except nbd.Error:
    pass
h.shutdown()`,
          s.uri('m'),
        );
        for (let i = 0; i < 50 && connections !== 0; i++)
          await new Promise((r) => setTimeout(r, 20));
        assert.deepEqual(requests, [
          ['NBD_CMD_WRITE', 4096, undefined],
          ['NBD_CMD_READ', 512, undefined],
          ['NBD_CMD_READ', 0, 'EINVAL'],
        ]);
        assert.equal(connections, 0);
      } finally {
        await s.stop();
      }
    },
  );

  it(
    'drops clients that stall in the handshake, the oldest first when a newcomer needs the place',
    { timeout: 30_000 },
    async () => {
      const s = await serve(
        new MemoryExportProvider([new MemoryExport({ name: 'm', size: MiB })]),
        { handshakeTimeoutMs: 300, admission: { maxConnections: 2 } },
      );
      try {
        const open = () =>
          new Promise<{ closed: Promise<void> }>((resolve, reject) => {
            const socket = connect({ host: '127.0.0.1', port: s.port });
            socket.on('error', () => undefined);
            socket.resume(); // 'close' only comes once the stream is read to its end
            const closed = new Promise<void>((r) => socket.once('close', () => r()));
            socket.once('connect', () => resolve({ closed }));
            socket.once('error', reject);
          });
        const [a, b] = [await open(), await open()];
        const third = await open();
        await a.closed; // shed at once to admit the third
        await Promise.all([b.closed, third.closed]); // silent: closed by the handshake deadline
      } finally {
        await s.stop();
      }
    },
  );

  it(
    'the handshake deadline stops while the server opens the export (a cluster may wait out a dead writer)',
    { timeout: 30_000 },
    async () => {
      const provider = new MemoryExportProvider([new MemoryExport({ name: 'm', size: MiB })]);
      provider.open = async (name) => {
        await new Promise((r) => setTimeout(r, 900));
        return MemoryExportProvider.prototype.open.call(provider, name);
      };
      const s = await serve(provider, { handshakeTimeoutMs: 300 });
      try {
        const client = await NbdClient.connect({ host: '127.0.0.1', port: s.port }, 'm');
        try {
          assert.equal(client.size, MiB, 'served after an open three times the deadline');
        } finally {
          await client.close();
        }
      } finally {
        await s.stop();
      }
    },
  );

  it(
    'close() lets an in-flight request finish, then closes the connection',
    { timeout: 30_000 },
    async () => {
      const exp = new MemoryExport({ name: 'slow', size: MiB });
      const provider = new MemoryExportProvider([exp]);
      let release!: () => void;
      const gate = new Promise<void>((r) => (release = r));
      provider.open = async (name) => {
        const opened = await MemoryExportProvider.prototype.open.call(provider, name);
        return opened && delegate(opened, { flush: () => gate });
      };
      const s = await serve(provider);
      const { client } = await RawClient.ready(s.uri('slow'));
      client.request(NBD_CMD_FLUSH, 0, 0, 7);
      await new Promise((r) => setTimeout(r, 50));
      const closing = s.server.close({ drainMs: 5000 });
      await new Promise((r) => setTimeout(r, 50));
      // A request arriving while the server closes is refused, not served.
      client.request(NBD_CMD_FLUSH, 0, 0, 8);
      assert.deepEqual(await client.reply(), {
        error: NBD_ESHUTDOWN,
        cookie: 8,
        data: Buffer.alloc(0),
      });
      release();
      assert.deepEqual(await client.reply(), { error: 0, cookie: 7, data: Buffer.alloc(0) });
      await closing;
      assert.ok(await client.closedWithin(1000));
      assert.equal(exp.openSessions, 0);
      await s.stop();
    },
  );
});
