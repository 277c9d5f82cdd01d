/**
 * readUsedRecords: the slot table read into memory page by page, copying
 * only pages that hold something, and the end of the part in use.
 */
import assert from 'node:assert/strict';
import { mkdtemp, open, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { RECORD_SIZE } from './record.js';
import { readUsedRecords } from './store-format.js';

const SLOTS = 4096; // 256 KiB of records: several 4 KiB pages, within one read chunk

async function withTable(
  table: Buffer,
  check: (records: SharedArrayBuffer, usedEnd: number) => void,
): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), 'torus-records-'));
  try {
    await writeFile(join(dir, 'slots'), table);
    const file = await open(join(dir, 'slots'), 'r');
    try {
      const records = new SharedArrayBuffer(SLOTS * RECORD_SIZE);
      check(records, await readUsedRecords(file, records));
    } finally {
      await file.close();
    }
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

test('an all-zero table: nothing in use', async () => {
  await withTable(Buffer.alloc(SLOTS * RECORD_SIZE), (records, usedEnd) => {
    assert.equal(usedEnd, 0);
    assert.ok(new Uint8Array(records).every((b) => b === 0));
  });
});

test('records anywhere are read byte for byte; the end is past the last page that holds one', async () => {
  const table = Buffer.alloc(SLOTS * RECORD_SIZE);
  for (const slot of [0, 5, 700])
    table.fill(slot % 251 || 7, slot * RECORD_SIZE, (slot + 1) * RECORD_SIZE);
  await withTable(table, (records, usedEnd) => {
    assert.deepEqual(Buffer.from(records), table);
    // Slot 700 is in the page of slots 640..703 (64 records a 4 KiB page).
    assert.equal(usedEnd, 704);
  });
});

test('a short table reads as free slots past its end', async () => {
  const table = Buffer.alloc(100 * RECORD_SIZE);
  table.fill(9, 99 * RECORD_SIZE);
  await withTable(table, (records, usedEnd) => {
    assert.equal(usedEnd, 100);
    const bytes = Buffer.from(records);
    assert.deepEqual(bytes.subarray(0, table.length), table);
    assert.ok(bytes.subarray(table.length).every((b) => b === 0));
  });
});
