/** The parts of block dump / load that need no server: input checks and the progress line. */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtemp, readFile, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { BackgroundHash, sharedBuffers } from './background-hash.js';
import {
  DIRECT_ALIGNMENT,
  DIRECT_MIN_BYTES,
  DIRECT_MIN_BYTES_HASHING,
  directWritable,
  openOutputFile,
  pageAlignedSharedBuffers,
} from './direct-file.js';
import { dumpVolume, fileSink, type DumpSink } from './volume-dump.js';
import type { VolumeHandle } from '../library/volume-handle.js';
import { BufferRing } from './buffer-ring.js';
import { dumpOutputProblem, pipedInputProblem } from './dump-load-commands.js';
import { TransferProgress, formatDuration } from './transfer-progress.js';

describe('block dump / load: input checks', () => {
  it('refuses - as input when stdin is a terminal, and takes a pipe or a file', () => {
    assert.match(pipedInputProblem({ isTTY: true }) ?? '', /nothing is piped into stdin/);
    assert.equal(pipedInputProblem({ isTTY: false }), undefined);
    assert.equal(pipedInputProblem({}), undefined);
  });

  it('refuses - as output when stdout is a terminal', () => {
    assert.match(dumpOutputProblem({ isTTY: true }) ?? '', /stdout is a terminal/);
    assert.equal(dumpOutputProblem({}), undefined);
  });
});

describe('block dump / load: the background sha256', () => {
  it('hashes views of two memories and zero runs in call order, as one sha256', async () => {
    // Two sets of shared buffers: the thread must switch memory when an update names a new one.
    const [a, b] = sharedBuffers(2, 4096);
    const [c] = sharedBuffers(1, 8192);
    const expected = createHash('sha256');
    const hash = new BackgroundHash();
    const feed = async (view: Buffer) => {
      randomBytes(view.length).copy(view);
      expected.update(view);
      await hash.update(view);
    };
    await feed(a);
    await feed(b.subarray(100, 3000));
    hash.zeros(3 * 1024 * 1024 + 5);
    expected.update(Buffer.alloc(3 * 1024 * 1024 + 5));
    await feed(c);
    await feed(a.subarray(0, 1));
    assert.equal(await hash.digest(), expected.digest('hex'));
  });

  it('keeps order past a full command ring (the backlog), with page-aligned memory', async () => {
    // 600 commands in one go: more than the ring holds, so most wait on this side.
    const [a, b] = pageAlignedSharedBuffers(2, 64 * 1024);
    randomBytes(a.length).copy(a);
    randomBytes(b.length).copy(b);
    const expected = createHash('sha256');
    const hash = new BackgroundHash();
    const updates: Promise<void>[] = [];
    for (let i = 0; i < 300; i++) {
      const view = (i % 2 ? a : b).subarray(i, i + 1000);
      expected.update(view);
      updates.push(hash.update(view));
      hash.zeros(i + 1);
      expected.update(Buffer.alloc(i + 1));
    }
    await Promise.all(updates);
    assert.equal(await hash.digest(), expected.digest('hex'));
  });

  it('refuses a buffer the thread cannot see', async () => {
    const hash = new BackgroundHash();
    await assert.rejects(hash.update(Buffer.alloc(16)), TypeError);
    await hash.close();
  });
});

describe('block dump: the output file', () => {
  it('goes around the page cache only for long aligned runs of its own memory', () => {
    const [chunk] = pageAlignedSharedBuffers(1, DIRECT_MIN_BYTES);
    assert.ok(chunk.buffer instanceof SharedArrayBuffer);
    assert.equal(directWritable(chunk, 0), true);
    assert.equal(directWritable(chunk, 3 * DIRECT_MIN_BYTES), true);
    assert.equal(directWritable(chunk, 512), false, 'offset not aligned');
    assert.equal(directWritable(chunk.subarray(0, DIRECT_MIN_BYTES / 4), 0), false, 'short');
    assert.equal(directWritable(chunk.subarray(16), 0), false, 'memory not aligned');
    assert.equal(
      directWritable(chunk.subarray(0, DIRECT_MIN_BYTES - DIRECT_ALIGNMENT / 2), 0),
      false,
      'length not aligned',
    );
    const run = chunk.subarray(0, DIRECT_MIN_BYTES_HASHING);
    assert.equal(directWritable(run, 0), false, 'a run shorter than a chunk, by default');
    assert.equal(directWritable(run, 0, DIRECT_MIN_BYTES_HASHING), true, 'while hashing');
    assert.throws(() => pageAlignedSharedBuffers(1, 1000), RangeError);
  });

  it('holds the bytes written at their offsets, direct or not, and stays sparse', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'torus-dumpfile-'));
    try {
      const path = join(dir, 'out');
      const output = await openOutputFile(path);
      const sink = fileSink(output);
      const memory = sink.buffer!(2 * DIRECT_MIN_BYTES)!;
      const whole = memory.subarray(0, DIRECT_MIN_BYTES);
      const small = memory.subarray(DIRECT_MIN_BYTES);
      randomBytes(whole.length).copy(whole);
      randomBytes(small.length).copy(small);
      const size = 64 * 1024 * 1024;
      await sink.start!(size);
      const expected = Buffer.alloc(size);
      const put = async (data: Buffer, offset: number) => {
        data.copy(expected, offset);
        await sink.data(data, offset);
      };
      await put(whole, 8 * 1024 * 1024); // direct where the file system allows
      await put(small.subarray(0, DIRECT_MIN_BYTES / 2), 20 * 1024 * 1024); // short: through the cache
      await put(small.subarray(100, 5000), 30 * 1024 * 1024 + 7); // unaligned
      await output.direct?.close();
      await output.file.close();
      assert.ok((await readFile(path)).equals(expected));
      const info = await stat(path);
      assert.equal(info.size, size);
      assert.ok(
        info.blocks * 512 < 16 * 1024 * 1024,
        `sparse: ${info.blocks * 512} bytes allocated`,
      );
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});

describe('block dump: the pipeline (a volume in memory, a slow sink)', () => {
  const MiB = 1024 * 1024;
  /** A volume of `runs` 1 MiB runs, data and zeros alternating; reads fail from `failAt` on. */
  function fakeVolume(runs: number, failAt = Infinity) {
    const content = Buffer.alloc(runs * MiB);
    for (let r = 0; r < runs; r += 2) randomBytes(MiB).copy(content, r * MiB);
    const volume = {
      size: content.length,
      async extents(position: number, length: number) {
        const out = [];
        for (let at = position; at < position + length; at += MiB)
          out.push({ offset: at, length: MiB, zero: (at / MiB) % 2 === 1 });
        return out;
      },
      async read(buffer: Buffer, position: number) {
        await new Promise((done) => setImmediate(done));
        if (position >= failAt) throw new Error(`read failed at ${position}`);
        content.copy(buffer, 0, position, position + buffer.length);
        return buffer.length;
      },
    };
    return { content, volume: volume as unknown as VolumeHandle };
  }
  /**
   * Collects what it is given, copying each piece only when its write
   * lands: writes wait and land together every 20 ms, so the ring fills and
   * a piece's memory read into again too soon would show in what it got.
   */
  function memorySink(size: number) {
    const got = Buffer.alloc(size);
    const waiting: { data: Buffer; offset: number; landed: () => void }[] = [];
    let timer: NodeJS.Timeout | undefined;
    const land = () => {
      timer = undefined;
      for (const w of waiting.splice(0)) {
        w.data.copy(got, w.offset);
        w.landed();
      }
    };
    const sink: DumpSink = {
      data(data, offset) {
        timer ??= setTimeout(land, 20);
        return new Promise<void>((landed) => waiting.push({ data, offset, landed }));
      },
      async zeros() {},
    };
    return { got, sink };
  }

  it('hands every piece over whole and in order, the ring wrapping many times', async () => {
    const { content, volume } = fakeVolume(160); // 80 data runs through a 32 MiB ring
    const { got, sink } = memorySink(content.length);
    const result = await dumpVolume(volume, sink);
    assert.ok(got.equals(content));
    assert.equal(result.sha256, createHash('sha256').update(content).digest('hex'));
    assert.equal(result.dataBytes, 80 * MiB);
    assert.equal(result.bytes, content.length);
  });

  it('a failed read fails the dump, after the reads and writes in flight have settled', async () => {
    const { volume } = fakeVolume(160, 50 * MiB);
    const { sink } = memorySink(160 * MiB);
    await assert.rejects(dumpVolume(volume, sink), /read failed at 52428800/);
  });
});

describe('block dump: the ring of buffer memory', () => {
  const KiB = 1024;
  const offsetOf = (ring: BufferRing, piece: Buffer) => piece.byteOffset - ring.buffer.byteOffset;

  it('hands out aligned pieces in order, wraps, and waits for the oldest when full', () => {
    const ring = new BufferRing(Buffer.alloc(64 * KiB), 4 * KiB);
    const a = ring.take(20 * KiB)!; // [0, 20)
    const b = ring.take(30 * KiB + 1)!; // [20, 52): rounded up to 4 KiB
    assert.deepEqual([offsetOf(ring, a), a.length], [0, 20 * KiB]);
    assert.deepEqual([offsetOf(ring, b), b.length], [20 * KiB, 30 * KiB + 1]);
    assert.equal(ring.take(16 * KiB), undefined, '12 KiB left at the end, the start held');
    const c = ring.take(12 * KiB)!; // [52, 64)
    assert.equal(offsetOf(ring, c), 52 * KiB);
    assert.equal(ring.take(4 * KiB), undefined, 'full');
    ring.giveBack(); // a
    assert.equal(ring.take(24 * KiB), undefined, 'only 20 KiB free, before b');
    const d = ring.take(20 * KiB)!; // wraps to [0, 20)
    assert.equal(offsetOf(ring, d), 0);
    assert.equal(ring.take(4 * KiB), undefined, 'b follows at once');
    ring.giveBack(); // b
    const e = ring.take(32 * KiB)!; // [20, 52)
    assert.equal(offsetOf(ring, e), 20 * KiB);
    assert.equal(ring.count, 3);
    ring.giveBack(); // c
    ring.giveBack(); // d
    ring.giveBack(); // e
    assert.equal(ring.count, 0);
    assert.equal(offsetOf(ring, ring.take(64 * KiB)!), 0, 'empty: the whole ring');
  });

  it('refuses what can never fit, a giveBack with nothing out, and unaligned memory', () => {
    const ring = new BufferRing(Buffer.alloc(8 * KiB), 4 * KiB);
    assert.throws(() => ring.take(8 * KiB + 1), RangeError);
    assert.throws(() => ring.take(0), RangeError);
    assert.throws(() => ring.giveBack(), /nothing to give back/);
    assert.throws(() => new BufferRing(Buffer.alloc(6 * KiB), 4 * KiB), RangeError);
  });
});

describe('block dump / load: the progress line', () => {
  it('says bytes of the total, the rate and the time left', () => {
    const progress = new TransferProgress('dump v', 1024 * 1024 * 1024, null);
    assert.equal(
      progress.line(512 * 1024 * 1024, 2),
      'dump v: 512 MiB / 1 GiB, 256 MiB/s, 2 s left',
    );
    assert.equal(progress.line(0, 0), 'dump v: 0 B / 1 GiB, 0 B/s');
  });

  it('prints nothing when stderr is not a terminal', () => {
    const progress = new TransferProgress('load v', 100, null);
    progress.update(50); // no stream: must not throw or write
    progress.end();
  });

  it('formats durations', () => {
    assert.equal(formatDuration(5), '5 s');
    assert.equal(formatDuration(75), '1 min 15 s');
    assert.equal(formatDuration(3 * 3600 + 120), '3 h 2 min');
  });
});
