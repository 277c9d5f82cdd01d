/**
 * Values the embedded store keeps (in the key space and in the watch
 * history, for as long as 10,000 events) own their memory: never a slice of
 * Node's shared 8 KiB buffer slab, nor a view into a whole log segment or
 * snapshot file. A kept slice pins all of the memory under it; under the
 * fuzz soak that was one 8 KiB slab per volume commit, about 1.5 MiB of RSS
 * a minute (see common/owned-copy.ts).
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { KeySpace } from './key-space.js';
import { encodeRecord, readFrame, type LoggedMutation } from './record.js';
import { decodeSnapshot, encodeSnapshot } from './snapshot.js';

/** True when `value` is the whole of its ArrayBuffer, so keeping it keeps nothing else. */
function ownsItsMemory(value: Buffer): boolean {
  return value.byteOffset === 0 && value.buffer.byteLength === value.length;
}

test('a put value from the shared slab is kept as a copy of its own', () => {
  const fromSlab = Buffer.from('{"generation":7}');
  assert.ok(!ownsItsMemory(fromSlab), 'premise: a small Buffer.from is a slab slice');
  const keys = new KeySpace();
  const mutations: LoggedMutation[] = [];
  keys.applyOp({ type: 'put', key: 'volumes/a', value: fromSlab }, 2, mutations);
  const logged = mutations[0];
  assert.equal(logged.kind, 'put');
  const kept = logged.kind === 'put' ? logged.value : Buffer.alloc(0);
  assert.ok(ownsItsMemory(kept), 'the value the log and the watch history keep');
  const [entry] = keys.snapshotEntries();
  assert.ok(ownsItsMemory(entry.value), 'the value the key space keeps');
  assert.deepEqual(entry.value, fromSlab);
  fromSlab.fill(0);
  assert.equal(keys.get('volumes/a')!.value.toString(), '{"generation":7}', 'a copy');
});

test('values replayed from a log segment are not views into the segment', () => {
  const frame = encodeRecord({
    revision: 5,
    mutations: [{ kind: 'put', key: 'volumes/a', value: Buffer.from('v1') }],
  });
  const segment = Buffer.concat([Buffer.alloc(64 * 1024), frame]);
  const read = readFrame(segment, 64 * 1024);
  assert.ok(read.ok);
  const m = read.record.mutations[0];
  assert.ok(m.kind === 'put' && ownsItsMemory(m.value) && m.value.toString() === 'v1');
});

test('values loaded from a snapshot own their memory', () => {
  const encoded = encodeSnapshot({
    revision: 9,
    entries: [{ key: 'k', value: Buffer.from('v'), createRevision: 1, modRevision: 9, version: 3 }],
  });
  const [entry] = decodeSnapshot(encoded, 'test').entries;
  assert.ok(ownsItsMemory(entry.value) && entry.value.toString() === 'v');
});
