/**
 * Faults a user meets, against the real torusd: a store that fills up, a
 * volume deleted while a client has it open, a thin volume far larger than
 * the store, a block corrupted on disk. Each must give a clear error, lose
 * nothing already acknowledged, and leave the server serving everyone else.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { open } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, before, describe, test } from 'node:test';
import {
  makeDataDir,
  removeDir,
  runCli,
  startTorusd,
  type TorusdProcess,
} from './torusd-process.js';
import { SYSTEM_PYTHON, missing, python } from './tools.js';
import { exitOf } from './support/child-exit.js';

const skip = missing('nbdsh');

describe('faults', { skip, timeout: 180_000 }, () => {
  let dir: string;
  let node: TorusdProcess | undefined;
  before(async () => {
    dir = await makeDataDir('faults');
  });
  after(async () => {
    await node?.stop('SIGKILL');
    await removeDir(dir);
  });

  test('a full store answers ENOSPC, keeps what was flushed, and keeps serving', async (t) => {
    const data = join(dir, 'full');
    // 4 MiB of store (64 blocks of 64 KiB) under a 64 MiB thin volume.
    node = await startTorusd({ dataDir: data, size: '4MiB', args: ['--ensure-volume', 'v=64MiB'] });
    const r = await python(`
import nbd, os
h = nbd.NBD()
h.connect_uri(${JSON.stringify(node.uri('v'))})
keep = os.urandom(1 << 20)
h.pwrite(keep, 0)
h.flush()
try:
    for i in range(1, 16):
        h.pwrite(os.urandom(1 << 20), i << 20)
    h.flush()
    print("no error")
except nbd.Error as e:
    print("error", e.errno)
assert h.pread(1 << 20, 0) == keep, "flushed data changed"
h.trim(15 << 20, 1 << 20)
g = nbd.NBD()
g.connect_uri(${JSON.stringify(node.uri('v'))})
assert g.pread(1 << 20, 0) == keep
print("still serving")
`);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /error ENOSPC/);
    assert.match(r.stdout, /still serving/);
    t.diagnostic(
      'fault-row | store fills mid-write (4 MiB store, 64 MiB thin volume) | 1 | bytes lost 0 | ENOSPC at FLUSH; flushed data intact; a second client served',
    );
    assert.equal(
      await node.stop('SIGTERM'),
      0,
      'shuts down cleanly even with data it could not store',
    );
    node = undefined;
  });

  test('a store a snapshot holds full: writes get ENOSPC, reads go on, one log line; deleting the snapshot makes room', async (t) => {
    const data = join(dir, 'held');
    // 256 MiB of store, a 136 MiB volume and its snapshot: overwriting it all
    // needs 272 MiB. The cache (64 MiB) is smaller than the volume, so dirty
    // blocks must be spilled to the store, which is what fails.
    node = await startTorusd({
      dataDir: data,
      size: '256MiB',
      args: ['--ensure-volume', 'v=136MiB', '--cache-size', '64MiB'],
    });
    const uri = JSON.stringify(node.uri('v'));
    const filled = await python(`
import hashlib, nbd, os
h = nbd.NBD()
h.connect_uri(${uri})
image = os.urandom(136 << 20)
for i in range(136):
    h.pwrite(image[i << 20:(i + 1) << 20], i << 20)
h.flush()
print(hashlib.sha256(image).hexdigest())
`);
    assert.equal(filled.code, 0, filled.stderr);
    const snapshotHash = filled.stdout.trim();
    const snap = await runCli('torusctl', ['-d', data, 'block', 'snapshot', 'create', 'v@s1']);
    assert.equal(snap.code, 0, snap.stderr);
    const full = await python(`
import hashlib, nbd, os, random
h = nbd.NBD()
h.connect_uri(${uri})
rng = random.Random(7)
written = 0
try:
    for i in range(8000):
        h.pwrite(os.urandom(65536), rng.randrange(136 * 16) * 65536)
        written += 1
    h.flush()
    print("no error")
except nbd.Error as e:
    print("error", e.errno, "after", written)
# Full: reads go on, on this connection and on new ones, the snapshot whole.
for i in range(136):
    h.pread(1 << 20, i << 20)
s = nbd.NBD()
s.connect_uri(${JSON.stringify(node.uri('v@s1'))})
print("snapshot", hashlib.sha256(b"".join(s.pread(1 << 20, i << 20) for i in range(136))).hexdigest())
`);
    assert.equal(full.code, 0, full.stderr);
    assert.match(full.stdout, /error ENOSPC after \d+/);
    assert.match(full.stdout, new RegExp(`snapshot ${snapshotHash}`));
    const failedSpills = node.output().split('spilling dirty blocks failed').length - 1;
    assert.ok(failedSpills <= 2, `the spill failure was logged ${failedSpills} times`);

    const deleted = await runCli('torusctl', ['-d', data, 'block', 'snapshot', 'delete', 'v@s1']);
    assert.equal(deleted.code, 0, deleted.stderr);
    const after = await python(`
import nbd, os
h = nbd.NBD()
h.connect_uri(${uri})
block = os.urandom(4 << 20)
for attempt in range(50):
    try:
        h.pwrite(block, 64 << 20)
        h.flush()
        break
    except nbd.Error as e:
        # Spills retry once a second after failing: the first tries may still see it.
        last = e
        import time; time.sleep(0.2)
else:
    raise SystemExit(f"writes still fail after 50 tries: {last}")
assert h.pread(4 << 20, 64 << 20) == block
print("writes work again after", attempt, "retries")
`);
    assert.equal(after.code, 0, after.stderr);
    t.diagnostic(
      `fault-row | store held full by a snapshot (256 MiB store, 136 MiB volume) | 1 | bytes lost 0 | ENOSPC on writes, reads and the snapshot whole; ${after.stdout.trim()}`,
    );
    assert.equal(await node.stop('SIGTERM'), 0);
    node = undefined;
  });

  test('deleting a volume a client holds open is refused, naming it; a 1 TiB thin volume works in a small store', async () => {
    const data = join(dir, 'busy');
    node = await startTorusd({
      dataDir: data,
      size: '64MiB',
      args: ['--ensure-volume', 'busy=16MiB'],
    });
    const env = { TORUS_DATA_DIR: data };
    const holder = spawn(
      SYSTEM_PYTHON,
      [
        '-c',
        `
import nbd, sys, time
h = nbd.NBD()
h.connect_uri(${JSON.stringify(node.uri('busy'))})
print("connected", flush=True)
sys.stdin.read()
`,
      ],
      { stdio: ['pipe', 'pipe', 'inherit'] },
    );
    await new Promise<void>((resolve) =>
      holder.stdout.on('data', (d: Buffer) => d.toString().includes('connected') && resolve()),
    );
    const refused = await runCli('torusctl', ['volume', 'delete', 'busy'], env);
    assert.equal(refused.code, 1);
    assert.match(refused.stderr, /volume "busy" is in use/);
    holder.stdin.end();
    await exitOf(holder, 'nbdsh holder');
    await sleep(200);
    const deleted = await runCli('torusctl', ['volume', 'delete', 'busy'], env);
    assert.equal(deleted.code, 0, deleted.stderr);

    const huge = await runCli('torusctl', ['volume', 'create-block', 'huge', '1T'], env);
    assert.equal(huge.code, 0, huge.stderr);
    const r = await python(`
import nbd
h = nbd.NBD()
h.connect_uri(${JSON.stringify(node.uri('huge'))})
assert h.get_size() == 1 << 40
end = (1 << 40) - 65536
h.pwrite(b"\\x5a" * 65536, end)
h.flush()
assert h.pread(65536, end) == b"\\x5a" * 65536
assert h.pread(4096, 1 << 39) == bytes(4096)
print("ok")
`);
    assert.equal(r.code, 0, r.stderr);
    await node.stop('SIGTERM');
    node = undefined;
  });

  test('a block corrupted on disk reads as an error, never as data', async () => {
    const data = join(dir, 'corrupt');
    node = await startTorusd({
      dataDir: data,
      size: '64MiB',
      args: ['--ensure-volume', 'c=16MiB'],
    });
    const w = await python(`
import nbd
h = nbd.NBD()
h.connect_uri(${JSON.stringify(node.uri('c'))})
h.pwrite(b"\\x11" * (1 << 20), 0)
h.flush()
`);
    assert.equal(w.code, 0, w.stderr);
    assert.equal(await node.stop('SIGTERM'), 0);
    // Flip a byte in every used data slot (the map page included: either way, no garbage).
    const file = await open(join(data, 'blocks', 'data'), 'r+');
    for (let slot = 0; slot < 32; slot++)
      await file.write(Buffer.from([0xee]), 0, 1, slot * 65536 + 4242);
    await file.close();
    node = await startTorusd({ dataDir: data, size: '64MiB' });
    const r = await python(`
import nbd
h = nbd.NBD()
try:
    h.connect_uri(${JSON.stringify(node.uri('c'))})
    h.pread(1 << 20, 0)
    print("read garbage")
except nbd.Error as e:
    print("error", e.errno)
`);
    assert.equal(r.code, 0, r.stderr);
    assert.doesNotMatch(r.stdout, /read garbage/);
    assert.match(node.output(), /checksum|fails its checksum/);
    await node.stop('SIGTERM');
    node = undefined;
  });

  test('an encrypted volume with a missing or wrong master key is not served, and no data is touched', async () => {
    const data = join(dir, 'keys');
    const env = { TORUS_DATA_DIR: data };
    assert.equal(
      (await runCli('torusctl', ['volume', 'create-block', 'secret', '16MiB', '--encrypt'], env))
        .code,
      0,
    );
    node = await startTorusd({ dataDir: data, size: '64MiB' });
    const w = await python(`
import nbd
h = nbd.NBD()
h.connect_uri(${JSON.stringify(node.uri('secret'))})
h.pwrite(b"\x42" * 65536, 0)
h.flush()
`);
    assert.equal(w.code, 0, w.stderr);
    assert.equal(await node.stop('SIGTERM'), 0);
    const keyFile = join(data, 'master.key');
    const { readFile, writeFile, rename } = await import('node:fs/promises');
    const rightKey = await readFile(keyFile);
    await writeFile(keyFile, 'ab'.repeat(32) + '\n', { mode: 0o600 });
    node = await startTorusd({ dataDir: data, size: '64MiB' });
    await sleep(200);
    assert.match(node.output(), /wrong master key|master key/i);
    const refused = await python(`
import nbd
h = nbd.NBD()
try:
    h.connect_uri(${JSON.stringify(node.uri('secret'))})
    print("served")
except nbd.Error as e:
    print("refused")
`);
    assert.match(refused.stdout, /refused/);
    assert.equal(await node.stop('SIGTERM'), 0);
    await rename(keyFile, keyFile + '.wrong');
    await writeFile(keyFile, rightKey, { mode: 0o600 });
    node = await startTorusd({ dataDir: data, size: '64MiB' });
    const r = await python(`
import nbd
h = nbd.NBD()
h.connect_uri(${JSON.stringify(node.uri('secret'))})
assert h.pread(65536, 0) == b"\x42" * 65536
print("ok")
`);
    assert.equal(r.code, 0, r.stderr);
    await node.stop('SIGTERM');
    node = undefined;
  });
});
