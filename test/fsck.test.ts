/**
 * torusctl fsck against a real data directory: a torusd writes known data to
 * two volumes and stops; the test damages one of them on disk the three ways
 * the store can be damaged (64 bytes of a slot record, a data block, a map
 * page); torusd then names the damaged volume and serves the other; fsck
 * reports each damage with its volume and byte range, refuses while torusd
 * runs, salvages, and the salvaged volume reads back everything outside the
 * reported ranges (and the block whose record alone was lost, found by hash).
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { open, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import {
  makeDataDir,
  removeDir,
  runCli,
  startTorusd,
  type TorusdProcess,
} from './torusd-process.js';
import { missing, python } from './tools.js';

const skip = missing('nbdsh');
const KiB = 1024;
const MiB = 1024 * KiB;
const BLOCK = 4 * KiB;
const SIZE = 4 * MiB; // 1024 blocks of 4 KiB: four leaf map pages (256 entries each) under a root
const RECORD = 64;
const SLOT_USED = 0x544f5253;
const MAP_PAGE_BIT = 2 ** 48;

interface SlotRecord {
  slot: number;
  volumeId: number;
  generation: number;
  index: number;
}

/** The used records of the store's slot table, as the test reads the format (blocks/record.ts). */
async function usedRecords(dataDir: string): Promise<SlotRecord[]> {
  const table = await readFile(join(dataDir, 'blocks', 'slots'));
  const out: SlotRecord[] = [];
  for (let slot = 0; slot * RECORD < table.length; slot++) {
    const at = slot * RECORD;
    if (table.readUInt32LE(at) !== SLOT_USED) continue;
    out.push({
      slot,
      volumeId: table.readUInt32LE(at + 4),
      generation: table.readUInt32LE(at + 8),
      index: table.readUInt32LE(at + 16) + table.readUInt32LE(at + 20) * 2 ** 32,
    });
  }
  return out;
}

/** The slot holding the newest copy of (volume, index): the committed one (generations only go up). */
function slotOf(records: SlotRecord[], volumeId: number, index: number): number {
  const found = records
    .filter((r) => r.volumeId === volumeId && r.index === index)
    .sort((a, b) => b.generation - a.generation)[0];
  assert.ok(found, `no slot holds block ${index} of volume ${volumeId}`);
  return found.slot;
}

async function overwrite(path: string, offset: number, bytes: Buffer): Promise<void> {
  const file = await open(path, 'r+');
  try {
    await file.write(bytes, 0, bytes.length, offset);
  } finally {
    await file.close();
  }
}

async function writeVolume(node: TorusdProcess, name: string, image: string): Promise<void> {
  const r = await python(`
import nbd
h = nbd.NBD()
h.connect_uri(${JSON.stringify(node.uri(name))})
h.pwrite(open(${JSON.stringify(image)}, 'rb').read(), 0)
h.flush()
h.shutdown()
`);
  assert.equal(r.code, 0, r.stderr);
}

async function readVolume(node: TorusdProcess, name: string, into: string): Promise<Buffer> {
  const r = await python(`
import nbd
h = nbd.NBD()
h.connect_uri(${JSON.stringify(node.uri(name))})
open(${JSON.stringify(into)}, 'wb').write(h.pread(${SIZE}, 0))
h.shutdown()
`);
  assert.equal(r.code, 0, r.stderr);
  return readFile(into);
}

interface FsckJson {
  clean: boolean;
  salvaged: boolean;
  reportFile?: string;
  damagedSlots: { slot: number }[];
  volumes: {
    name: string;
    state: string;
    damage: { kind: string; offset: number; length: number; recoverableFrom?: number }[];
  }[];
}

describe('torusctl fsck', { skip, timeout: 240_000 }, () => {
  let dir: string;
  let data: string;
  let node: TorusdProcess | undefined;
  const images = { a: randomBytes(SIZE), b: randomBytes(SIZE) };
  // Volume b's damage: the record of block 10, the data of block 300, leaf map page 3 (blocks 768-1023).
  const recordLost = 10;
  const dataFlipped = 300;
  const pageFlipped = 3;

  before(async () => {
    dir = await makeDataDir('fsck');
    data = join(dir, 'data');
  });
  after(async () => {
    await node?.stop('SIGKILL');
    await removeDir(dir);
  });

  /** A torusd on the directory, once it has printed its start-up lines (the last is "try: …"). */
  const start = async () => {
    const started = await startTorusd({
      dataDir: data,
      size: '64MiB',
      args: ['--block-size', '4KiB', '--ensure-volume', 'a=4MiB', '--ensure-volume', 'b=4MiB'],
    });
    node = started;
    for (let waited = 0; !/try: nbdinfo/.test(started.output()); waited += 50) {
      assert.ok(waited < 10_000, `torusd printed no "try:" line:\n${started.output()}`);
      await sleep(50);
    }
    return started;
  };

  test('known data in two volumes, flushed; a clean directory checks clean', async () => {
    node = await start();
    for (const name of ['a', 'b'] as const) {
      const image = join(dir, `${name}.img`);
      await writeFile(image, images[name]);
      await writeVolume(node, name, image);
    }
    assert.equal(await node.stop(), 0);
    node = undefined;
    const r = await runCli('torusctl', ['fsck', data]);
    assert.equal(r.code, 0, r.stdout + r.stderr);
    assert.match(r.stdout, /: clean/);
  });

  test('damage is reported with its volume and byte range; torusd names the damaged volume', async () => {
    const list = await runCli('torusctl', ['volume', 'list', '-o', 'json', '--data-dir', data]);
    assert.equal(list.code, 0, list.stderr);
    const ids = new Map(
      (JSON.parse(list.stdout) as { name: string; id: number }[]).map((v) => [v.name, v.id]),
    );
    const b = ids.get('b')!;
    const records = await usedRecords(data);
    // The damage: 64 bytes of the slot table, one whole record.
    await overwrite(
      join(data, 'blocks', 'slots'),
      slotOf(records, b, recordLost) * RECORD,
      randomBytes(RECORD),
    );
    await overwrite(
      join(data, 'blocks', 'data'),
      slotOf(records, b, dataFlipped) * BLOCK + 100,
      randomBytes(8),
    );
    await overwrite(
      join(data, 'blocks', 'data'),
      slotOf(records, b, MAP_PAGE_BIT + pageFlipped) * BLOCK + 16,
      randomBytes(8),
    );

    const r = await runCli('torusctl', ['fsck', data, '-o', 'json']);
    assert.equal(r.code, 1, r.stdout + r.stderr);
    const report = JSON.parse(r.stdout) as FsckJson;
    assert.equal(report.clean, false);
    assert.equal(report.damagedSlots.length, 1);
    const [va, vb] = ['a', 'b'].map((n) => report.volumes.find((v) => v.name === n)!);
    assert.equal(va.state, 'clean');
    assert.deepEqual(va.damage, []);
    assert.equal(vb.state, 'damaged');
    const byKind = new Map(vb.damage.map((d) => [d.kind, d]));
    assert.equal(vb.damage.length, 3, JSON.stringify(vb.damage));
    const lost = byKind.get('missing-block')!;
    assert.deepEqual([lost.offset, lost.length], [recordLost * BLOCK, BLOCK]);
    assert.equal(lost.recoverableFrom, slotOf(records, b, recordLost), 'found again by its hash');
    const bad = byKind.get('bad-block')!;
    assert.deepEqual([bad.offset, bad.length], [dataFlipped * BLOCK, BLOCK]);
    const page = byKind.get('bad-map-page')!;
    assert.deepEqual([page.offset, page.length], [pageFlipped * 256 * BLOCK, 256 * BLOCK]);
    const human = await runCli('torusctl', ['fsck', data]);
    assert.equal(human.code, 1);
    assert.match(human.stdout, /b\s+3145728-4194303\s+bad-map-page/);

    node = await start();
    assert.match(node.output(), /NOT serving volume b: .*map page/);
    assert.doesNotMatch(node.output(), /no volumes yet/);
    assert.match(node.output(), /serving nbd:\/\/[^\n]*\/a\n/);
    const listed = await runCli('torusctl', ['volume', 'list', '-o', 'json', '--data-dir', data]);
    const rows = JSON.parse(listed.stdout) as { name: string; state?: string; reason?: string }[];
    assert.equal(rows.find((v) => v.name === 'b')?.state, 'unavailable');
    assert.match(rows.find((v) => v.name === 'b')?.reason ?? '', /map page/);
    assert.equal(rows.find((v) => v.name === 'a')?.state, undefined);
    assert.ok(
      (await readVolume(node, 'a', join(dir, 'a.read'))).equals(images.a),
      'a serves intact',
    );
    const busy = await runCli('torusctl', ['fsck', data]);
    assert.equal(busy.code, 8, busy.stdout + busy.stderr);
    assert.match(busy.stderr, new RegExp(`in use by pid ${node.pid}`));
    assert.equal(await node.stop(), 0);
    node = undefined;
  });

  test('--salvage keeps what checks out; both volumes load and read back', async () => {
    const r = await runCli('torusctl', ['fsck', data, '--salvage', '-o', 'json']);
    assert.equal(r.code, 1, r.stdout + r.stderr);
    const report = JSON.parse(r.stdout) as FsckJson;
    assert.equal(report.salvaged, true);
    assert.ok(report.reportFile && JSON.parse(await readFile(report.reportFile, 'utf8')));
    assert.equal(report.volumes.find((v) => v.name === 'b')?.state, 'salvaged');
    const again = await runCli('torusctl', ['fsck', data]);
    assert.equal(again.code, 0, again.stdout + again.stderr);

    node = await start();
    assert.doesNotMatch(node.output(), /NOT serving/);
    assert.ok((await readVolume(node, 'a', join(dir, 'a.read'))).equals(images.a), 'a intact');
    const got = await readVolume(node, 'b', join(dir, 'b.read'));
    const expected = Buffer.from(images.b);
    expected.fill(0, dataFlipped * BLOCK, (dataFlipped + 1) * BLOCK);
    expected.fill(0, pageFlipped * 256 * BLOCK, SIZE);
    for (let block = 0; block < SIZE / BLOCK; block++) {
      const at = block * BLOCK;
      assert.ok(
        got.subarray(at, at + BLOCK).equals(expected.subarray(at, at + BLOCK)),
        `block ${block} of b`,
      );
    }
    assert.equal(await node.stop(), 0);
    node = undefined;
  });

  test('usage errors exit 2', async () => {
    const r = await runCli('torusctl', ['fsck']);
    assert.equal(r.code, 2, r.stderr);
    const notDir = await runCli('torusctl', ['fsck', join(dir, 'nothing-here')]);
    assert.equal(notDir.code, 2, notDir.stderr);
  });
});
