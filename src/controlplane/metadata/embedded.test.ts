import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import {
  appendFile,
  mkdtemp,
  readdir,
  readFile,
  rm,
  stat,
  truncate,
  writeFile,
} from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { after, describe, it } from 'node:test';
import { ConflictError } from '../../common/errors.js';
import { logger } from '../../common/log.js';
import { openEmbeddedMetadataStore, type EmbeddedStoreOptions } from './embedded/index.js';
import { MetadataCompactedError, MetadataCorruptError } from './errors.js';
import { eventually, registerStoreSuite } from '../../../test/support/store-suite.js';
import { childScript } from '../../../test/support/child-scripts.js';

const quiet = logger('metadata').child({}, { level: 'error' });
const WRITER = childScript('embedded-writer');
const b = (s: string) => Buffer.from(s);

const tempDirs: string[] = [];
const children: ChildProcess[] = [];

async function tempDir(): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'torus-meta-'));
  tempDirs.push(dir);
  return dir;
}

after(async () => {
  for (const child of children)
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  await Promise.all(tempDirs.map((dir) => rm(dir, { recursive: true, force: true })));
});

const open = (dir: string, options: EmbeddedStoreOptions = {}) =>
  openEmbeddedMetadataStore(dir, { log: quiet, ...options });

registerStoreSuite('embedded', {
  async open() {
    const dir = await mkdtemp(join(tmpdir(), 'torus-meta-'));
    const store = await open(dir);
    return { store, cleanup: () => rm(dir, { recursive: true, force: true }) };
  },
});

/** Start the writer fixture; resolves once it printed "ready". */
function startWriter(dir: string, mode: 'write' | 'hold') {
  const child = spawn(process.execPath, [WRITER, dir, mode], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, TORUS_LOG_LEVEL: 'error' },
  });
  children.push(child);
  let stderr = '';
  child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  const lines = createInterface({ input: child.stdout! });
  const acked = new Map<string, number>();
  let onAck: (() => void) | undefined;
  const ready = new Promise<void>((resolve, reject) => {
    child.once('exit', (code, signal) =>
      reject(new Error(`writer exited (${code ?? signal}) before ready: ${stderr}`)),
    );
    lines.on('line', (line) => {
      const [word, key, revision] = line.split(' ');
      if (word === 'ready') resolve();
      if (word === 'ack') {
        acked.set(key, Number(revision));
        onAck?.();
      }
    });
  });
  const kill9 = async () => {
    child.kill('SIGKILL');
    await exited; // reaped: its pid is really gone before the lock is judged
  };
  const ackedAtLeast = (n: number) =>
    new Promise<void>((resolve) => {
      onAck = () => acked.size >= n && resolve();
      onAck();
    });
  return { child, ready, acked, ackedAtLeast, kill9 };
}

async function segments(dir: string): Promise<string[]> {
  return (await readdir(dir)).filter((n) => n.startsWith('wal-')).sort();
}

describe('embedded metadata store: durability', { concurrency: true }, () => {
  it('keeps keys, values and revisions across close and reopen', { timeout: 10_000 }, async () => {
    const dir = await tempDir();
    let store = await open(dir);
    await store.put('a', b('1'));
    await store.put('a', b('2'));
    const last = await store.put('b', b('3'));
    await store.close();
    store = await open(dir);
    const a = await store.get('a');
    assert.equal(a?.value.toString(), '2');
    assert.equal(a?.version, 2);
    assert.equal(a?.createRevision, 1);
    assert.equal(await store.currentRevision(), last);
    assert.equal(await store.put('c', b('4')), last + 1, 'revisions continue after a restart');
    await store.close();
  });

  it('group commit: concurrent writes share fsyncs', { timeout: 10_000 }, async () => {
    const dir = await tempDir();
    const store = await open(dir);
    const before = store.stats().syncs;
    await Promise.all(Array.from({ length: 200 }, (_, i) => store.put(`g/${i}`, b(String(i)))));
    const syncs = store.stats().syncs - before;
    assert.ok(syncs < 50, `200 concurrent puts took ${syncs} fsyncs`);
    assert.equal((await store.getPrefix('g/')).length, 200);
    await store.close();
  });

  it(
    'every acknowledged write survives kill -9 mid-stream; leased keys of the dead process are deleted',
    { timeout: 20_000 },
    async () => {
      const dir = await tempDir();
      const writer = startWriter(dir, 'write');
      await writer.ready;
      await writer.ackedAtLeast(400);
      await writer.kill9();
      const acked = new Map(writer.acked);
      // The lock still names the dead writer: taking it over is part of the test.
      assert.equal((await readFile(join(dir, 'LOCK'), 'utf8')).trim(), String(writer.child.pid));
      const store = await open(dir);
      const kvs = await store.getPrefix('crash/');
      const stored = new Map(kvs.map((kv) => [kv.key, kv]));
      for (const [key, revision] of acked) {
        const kv = stored.get(key);
        assert.ok(kv, `acknowledged ${key} (revision ${revision}) lost`);
        assert.equal(kv.modRevision, revision);
        const [, id, i] = key.split('/');
        assert.equal(kv.value.toString(), `value ${id} ${Number(i)}`);
      }
      assert.equal(
        await store.get('leased'),
        undefined,
        'keys of a lease from the dead process are gone',
      );
      const revision = await store.currentRevision();
      assert.ok(revision > Math.max(...acked.values()));
      // Still writable, and what it writes now survives too.
      const next = await store.put('after-crash', b('ok'));
      assert.equal(next, revision + 1);
      await store.close();
      const reopened = await open(dir);
      assert.equal((await reopened.get('after-crash'))?.value.toString(), 'ok');
      await reopened.close();
    },
  );

  it('a torn last record is truncated, never misread', { timeout: 10_000 }, async () => {
    const dir = await tempDir();
    let store = await open(dir);
    await store.put('a', b('1'));
    const keep = await store.put('b', b('2'));
    await store.put('c', b('3'));
    await store.close();
    const [segment] = await segments(dir);
    const path = join(dir, segment);
    const size = (await stat(path)).size;
    await truncate(path, size - 3); // the last record lost its final bytes

    store = await open(dir);
    assert.equal((await store.get('b'))?.value.toString(), '2');
    assert.equal(await store.get('c'), undefined);
    assert.equal(await store.currentRevision(), keep);
    assert.equal(await store.put('d', b('4')), keep + 1);
    await store.close();
    store = await open(dir);
    assert.equal((await store.get('d'))?.value.toString(), '4');
    await store.close();
  });

  it(
    'a corrupted byte or zero-filled space at the tail is detected and cut off',
    { timeout: 10_000 },
    async () => {
      const dir = await tempDir();
      let store = await open(dir);
      await store.put('a', b('1'));
      const keep = await store.put('b', b('2'));
      await store.put('c', b('value of c'));
      await store.close();
      const [segment] = await segments(dir);
      const path = join(dir, segment);
      const bytes = await readFile(path);
      bytes[bytes.length - 2] ^= 0x40; // inside c's value: only the checksum can tell
      await writeFile(path, bytes);
      await appendFile(path, Buffer.alloc(4096)); // and a zero-filled extent after it

      store = await open(dir);
      assert.equal(await store.get('c'), undefined);
      assert.equal((await store.get('b'))?.value.toString(), '2');
      assert.equal(await store.currentRevision(), keep);
      await store.close();
      assert.ok((await stat(path)).size < bytes.length, 'the bad tail was truncated');
    },
  );

  it(
    'a damaged snapshot refuses to open rather than serve a wrong state',
    { timeout: 10_000 },
    async () => {
      const dir = await tempDir();
      const store = await open(dir);
      await store.put('a', b('1'));
      await store.compact();
      await store.close();
      const bytes = await readFile(join(dir, 'snapshot'));
      bytes[30] ^= 0xff;
      await writeFile(join(dir, 'snapshot'), bytes);
      await assert.rejects(open(dir), MetadataCorruptError);
      // The failed open released the lock.
      assert.deepEqual(
        (await readdir(dir)).filter((n) => n === 'LOCK'),
        [],
      );
    },
  );

  it(
    'compaction folds the log into a snapshot; state, revisions and lease cleanup survive it',
    { timeout: 15_000 },
    async () => {
      const dir = await tempDir();
      let store = await open(dir, { compactAfterBytes: 8 * 1024 });
      for (let i = 0; i < 300; i++) await store.put(`c/${i % 50}`, b(`v${i}`));
      await store.deletePrefix('c/4');
      await eventually('a size-triggered compaction', () => store.stats().compactions >= 1);
      await store.compact();
      const revision = await store.currentRevision();
      const expected = (await store.getPrefix('')).map((kv) => [
        kv.key,
        kv.value.toString(),
        kv.modRevision,
        kv.version,
      ]);
      await store.close();
      assert.equal((await segments(dir)).length, 1, 'old segments are deleted');
      assert.ok((await readdir(dir)).includes('snapshot'));

      store = await open(dir);
      assert.equal(await store.currentRevision(), revision);
      assert.deepEqual(
        (await store.getPrefix('')).map((kv) => [
          kv.key,
          kv.value.toString(),
          kv.modRevision,
          kv.version,
        ]),
        expected,
      );
      // History before the snapshot is gone: a watch that needs it is told so.
      await assert.rejects(
        store.watchPrefix('', { fromRevision: 1 }, () => undefined),
        MetadataCompactedError,
      );
      await store.close();
    },
  );

  it(
    'opens a store of 20 000 keys quickly, from a snapshot and from the log alone',
    { timeout: 30_000 },
    async () => {
      const dir = await tempDir();
      let store = await open(dir, { compactAfterBytes: 1024 * 1024 * 1024 });
      const value = b('x'.repeat(100));
      const txns = [];
      for (let t = 0; t < 200; t++) {
        txns.push(
          store.txn({
            compare: [],
            success: Array.from({ length: 100 }, (_, i) => ({
              type: 'put' as const,
              key: `volumes/${t}/${i}`,
              value,
            })),
          }),
        );
      }
      await Promise.all(txns);
      await store.close();

      let started = performance.now();
      store = await open(dir);
      const fromLog = performance.now() - started;
      assert.equal(store.stats().keys, 20_000);
      await store.compact();
      await store.close();

      started = performance.now();
      store = await open(dir);
      const fromSnapshot = performance.now() - started;
      assert.equal((await store.getPrefix('volumes/1/')).length, 100);
      await store.close();
      assert.ok(fromLog < 2000, `open replaying the log took ${fromLog.toFixed(0)} ms`);
      assert.ok(fromSnapshot < 1000, `open from a snapshot took ${fromSnapshot.toFixed(0)} ms`);
    },
  );
});

describe('embedded metadata store: directory lock', { concurrency: true }, () => {
  it(
    'a second open in the same process is refused with the pid and path',
    { timeout: 10_000 },
    async () => {
      const dir = await tempDir();
      const store = await open(dir);
      await assert.rejects(open(dir), (err: Error) => {
        assert.ok(err instanceof ConflictError);
        assert.match(err.message, new RegExp(`pid ${process.pid}`));
        assert.ok(err.message.includes(join(dir, 'LOCK')), err.message);
        return true;
      });
      await store.close();
      const again = await open(dir);
      await again.close();
    },
  );

  it(
    'an open while another process holds it is refused, naming that pid',
    { timeout: 10_000 },
    async () => {
      const dir = await tempDir();
      const holder = startWriter(dir, 'hold');
      await holder.ready;
      await assert.rejects(open(dir), (err: Error) => {
        assert.ok(err instanceof ConflictError);
        assert.match(err.message, new RegExp(`pid ${holder.child.pid}\\b`));
        return true;
      });
      await holder.kill9();
      const store = await open(dir); // stale now: taken over
      assert.equal((await readFile(join(dir, 'LOCK'), 'utf8')).trim(), String(process.pid));
      await store.close();
    },
  );

  it(
    'a lock left by a dead pid, or by an earlier process with our own pid, is taken over',
    { timeout: 10_000 },
    async () => {
      const dir = await tempDir();
      // Pids are below 2^22 on Linux; this one is never alive.
      await writeFile(join(dir, 'LOCK'), '4194303\n');
      let store = await open(dir);
      await store.close();
      // Same pid as ours but not held by this process: a restarted container's pid 1, say.
      await writeFile(join(dir, 'LOCK'), `${process.pid}\n`);
      store = await open(dir);
      await store.close();
    },
  );
});
