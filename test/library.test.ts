/**
 * The library as a user's program sees it: everything Torus-side comes from
 * the package's public entry point ('torus', resolved through package.json's
 * exports), nothing from src/. The same scenario runs on a single node in
 * this process (no torusd), on a single node whose torusd runs (handles over
 * its NBD socket), and on a three-node cluster (a store-less node in this
 * process). The fixtures only start and stop the servers.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { promisify } from 'node:util';
import {
  HandleClosedError,
  NotFoundError,
  ReadOnlyVolumeError,
  Torus,
  type VolumeHandle,
} from 'torus';
import { Cluster } from './cluster-fixture.js';
import { etcdMissing } from './etcd-server.js';
import {
  makeDataDir,
  PROJECT,
  removeDir,
  startTorusd,
  type TorusdProcess,
} from './torusd-process.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const VOLUME_SIZE = 8 * MiB;

/** A deterministic generator, so a failure can be replayed. */
function random(seed: number): (limit: number) => number {
  let state = seed >>> 0 || 1;
  return (limit) => {
    state ^= state << 13;
    state ^= state >>> 17;
    state ^= state << 5;
    return (state >>> 0) % limit;
  };
}

async function readAll(handle: VolumeHandle): Promise<Buffer> {
  const all = Buffer.alloc(handle.size);
  await handle.read(all, 0);
  return all;
}

/**
 * Create, write at random unaligned places (many in flight), read back,
 * flush, snapshot, move on, read the snapshot as VOL@SNAP, streams both
 * ways, trim, bounds and read-only refusals, close.
 */
async function scenario(torus: Torus, name: string): Promise<void> {
  const created = await torus.createVolume(name, VOLUME_SIZE);
  assert.equal(created.size, VOLUME_SIZE);
  assert.ok((await torus.listVolumes()).some((v) => v.name === name));

  const model = Buffer.alloc(VOLUME_SIZE);
  const volume = await torus.openVolume(name);
  assert.equal(volume.size, VOLUME_SIZE);
  assert.equal(volume.readOnly, false);
  const next = random(name.length * 7919);
  // 64 writes in flight at once, each at an unaligned place inside its own 128 KiB slot.
  const slot = VOLUME_SIZE / 64;
  const writes: Promise<number>[] = [];
  for (let i = 0; i < 64; i++) {
    const length = 1 + next(70 * KiB);
    const position = i * slot + next(slot - length);
    const data = randomBytes(length);
    data.copy(model, position);
    writes.push(volume.write(data, position));
  }
  await Promise.all(writes);
  for (let i = 0; i < 32; i++) {
    const length = 1 + next(100 * KiB);
    const position = next(VOLUME_SIZE - length);
    const back = Buffer.alloc(length);
    assert.equal(await volume.read(back, position), length);
    assert.ok(back.equals(model.subarray(position, position + length)), `read at ${position}`);
  }
  // A Uint8Array works as well as a Buffer.
  const plain = new Uint8Array(4096);
  await volume.read(plain, 4096);
  assert.ok(Buffer.from(plain).equals(model.subarray(4096, 8192)));
  await volume.flush();

  const snapshot = await torus.createSnapshot(name, 'before');
  assert.equal(snapshot.name, `${name}@before`);
  const atSnapshot = Buffer.from(model);
  const later = randomBytes(300 * KiB);
  await volume.write(later, 123_457);
  later.copy(model, 123_457);

  const snap = await torus.openVolume(`${name}@before`);
  assert.equal(snap.readOnly, true);
  assert.ok((await readAll(snap)).equals(atSnapshot), 'the snapshot reads what was flushed');
  await assert.rejects(snap.write(Buffer.alloc(1), 0), ReadOnlyVolumeError);
  await assert.rejects(snap.trim(0, 4096), ReadOnlyVolumeError);
  await snap.close();
  assert.ok((await readAll(volume)).equals(model), 'the volume moved on');

  // Streams: write 3 MiB in odd-sized chunks from an unaligned start, read them back.
  const streamed = randomBytes(3 * MiB);
  const start = 777_777;
  const chunks = [];
  for (let at = 0; at < streamed.length;) {
    const n = Math.min(1 + next(200 * KiB), streamed.length - at);
    chunks.push(streamed.subarray(at, at + n));
    at += n;
  }
  await pipeline(Readable.from(chunks), volume.createWriteStream({ start }));
  streamed.copy(model, start);
  const read: Buffer[] = [];
  for await (const chunk of volume.createReadStream({ start, end: start + streamed.length }))
    read.push(chunk as Buffer);
  assert.ok(Buffer.concat(read).equals(streamed), 'stream round trip');
  const whole: Buffer[] = [];
  for await (const chunk of volume.createReadStream({ chunkSize: 512 * KiB }))
    whole.push(chunk as Buffer);
  assert.ok(Buffer.concat(whole).equals(model), 'the whole volume as a stream');

  // Trim: zeros afterwards, and the extents say so.
  await volume.trim(MiB, 2 * MiB);
  model.fill(0, MiB, 3 * MiB);
  const trimmed = Buffer.alloc(2 * MiB, 1);
  await volume.read(trimmed, MiB);
  assert.ok(trimmed.equals(Buffer.alloc(2 * MiB)));
  await volume.flush();
  const extents = await volume.extents();
  assert.equal(extents[0].offset, 0);
  assert.equal(
    extents.reduce((sum, e) => sum + e.length, 0),
    VOLUME_SIZE,
  );
  const inTrim = extents.find(
    (e) => e.offset <= MiB + 64 * KiB && e.offset + e.length > MiB + 64 * KiB,
  );
  assert.equal(inTrim?.zero, true, `a trimmed range reads as zeros: ${JSON.stringify(extents)}`);

  // Bounds: RangeError naming offset, length and size; nothing reaches the volume.
  await assert.rejects(volume.read(Buffer.alloc(2), VOLUME_SIZE - 1), (err: Error) => {
    assert.ok(err instanceof RangeError);
    assert.match(err.message, /2 bytes at offset 8388607 .*size 8388608/);
    return true;
  });
  await assert.rejects(volume.write(Buffer.alloc(1), -1), RangeError);
  await assert.rejects(volume.write(Buffer.alloc(1), 0.5), RangeError);
  await assert.rejects(volume.trim(VOLUME_SIZE - 4096, 8192), RangeError);
  assert.throws(() => volume.createReadStream({ start: 0, end: VOLUME_SIZE + 1 }), RangeError);

  // A read-only handle on the same volume: reads, refuses writes.
  const reader = await torus.openVolume(name, { readOnly: true });
  assert.equal(reader.readOnly, true);
  await assert.rejects(reader.write(Buffer.alloc(1), 0), ReadOnlyVolumeError);
  assert.throws(() => reader.createWriteStream(), ReadOnlyVolumeError);
  const some = Buffer.alloc(64 * KiB);
  await reader.read(some, 5 * MiB);
  assert.ok(some.equals(model.subarray(5 * MiB, 5 * MiB + 64 * KiB)));
  await reader.close();

  // Closed: every later call rejects; close() again is the same promise.
  await volume.close();
  await volume.close();
  await assert.rejects(volume.read(Buffer.alloc(1), 0), HandleClosedError);
  await assert.rejects(torus.openVolume(`${name}-missing`), NotFoundError);

  // What close() flushed is there for the next handle.
  const again = await torus.openVolume(name);
  assert.ok((await readAll(again)).equals(model), 'reopened: everything written is there');
  await again.close();
  assert.deepEqual(
    (await torus.listSnapshots(name)).map((s) => s.name),
    [`${name}@before`],
  );
}

/** The client's close() closes what is still open, flushing it first. */
async function closeClosesHandles(open: () => Promise<Torus>, name: string): Promise<void> {
  const torus = await open();
  const volume = await torus.openVolume(name);
  const data = randomBytes(10_000);
  await volume.write(data, 4321);
  assert.equal(torus.openHandles.length, 1);
  await torus.close();
  assert.equal(volume.closed, true);
  await assert.rejects(volume.read(Buffer.alloc(1), 0), HandleClosedError);
  const fresh = await open();
  try {
    const back = await fresh.openVolume(name, { readOnly: true });
    const got = Buffer.alloc(data.length);
    await back.read(got, 4321);
    assert.ok(got.equals(data), 'close() flushed the handle it closed');
  } finally {
    await fresh.close();
  }
}

describe('library: a single node in this process (no torusd)', { timeout: 120_000 }, () => {
  let dataDir: string;
  before(async () => {
    dataDir = await makeDataDir('library');
  });
  after(async () => {
    await removeDir(dataDir);
  });

  it('creates, writes, reads, snapshots and reads the snapshot through handles', async () => {
    const torus = await Torus.open({ dataDir, capacity: 64 * MiB, cacheSize: 16 * MiB });
    try {
      await scenario(torus, 'local');
    } finally {
      await torus.close();
    }
  });

  it('close() closes every handle, flushing it', async () => {
    await closeClosesHandles(() => Torus.open({ dataDir, cacheSize: 16 * MiB }), 'local');
  });

  it('a fresh data directory needs a capacity', async () => {
    const empty = await makeDataDir('library-empty');
    const torus = await Torus.open({ dataDir: empty });
    try {
      await torus.createVolume('v', MiB);
      await assert.rejects(torus.openVolume('v'), /give Torus.open a capacity/);
    } finally {
      await torus.close();
      await removeDir(empty);
    }
  });

  it('examples/basic.mjs runs', async () => {
    const { stdout } = await promisify(execFile)(
      process.execPath,
      [join(PROJECT, 'examples', 'basic.mjs')],
      { cwd: PROJECT, timeout: 60_000 },
    );
    assert.match(stdout, /volume: {3}HELLO, block storage/);
    assert.match(stdout, /snapshot: hello, block storage/);
  });
});

describe('library: a single node with torusd running', { timeout: 120_000 }, () => {
  let dataDir: string;
  let node: TorusdProcess;
  before(async () => {
    dataDir = await makeDataDir('library-torusd');
    node = await startTorusd({ dataDir, size: '256MiB' });
  });
  after(async () => {
    await node?.stop();
    await removeDir(dataDir);
  });

  it('goes through torusd: same scenario over its NBD socket', async () => {
    const torus = await Torus.open({ dataDir });
    try {
      await scenario(torus, 'remote');
      // torusd served it: its status counts the volume.
      const status = (await torus.status()) as {
        volumes: number;
        used: number;
        heldAsBases: number;
        patches: number;
      };
      assert.ok(status.volumes >= 1);
      for (const field of ['used', 'heldAsBases', 'patches'] as const)
        assert.ok(Number.isInteger(status[field]) && status[field] >= 0, `status.${field}`);
    } finally {
      await torus.close();
    }
  });

  it('close() closes every handle, flushing it', async () => {
    await closeClosesHandles(() => Torus.open({ dataDir }), 'remote');
  });
});

describe('library: a cluster', { skip: etcdMissing(), timeout: 240_000 }, () => {
  let cluster: Cluster;
  before(async () => {
    cluster = await Cluster.start({ nodes: 3 });
  });
  after(async () => {
    await cluster?.stop();
  });
  const connect = () =>
    Torus.connect({ etcd: { endpoints: cluster.endpoint }, cacheSize: 16 * MiB, workers: 1 });

  it('a store-less node in this process: same scenario, no NBD hop', async () => {
    const torus = await connect();
    try {
      await scenario(torus, 'shared');
    } finally {
      await torus.close();
    }
  });

  it('close() closes every handle, flushing it and letting go of the write lock', async () => {
    await closeClosesHandles(connect, 'shared');
    const torus = await connect();
    try {
      const row = (await torus.listVolumes()).find((v) => v.name === 'shared');
      assert.equal(row?.lockedBy, undefined, 'nobody holds the lock after close()');
      await torus.deleteVolume('shared', { withSnapshots: true });
      assert.equal((await torus.listVolumes()).length, 0);
    } finally {
      await torus.close();
    }
  });
});
