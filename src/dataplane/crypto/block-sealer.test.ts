import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { test } from 'node:test';
import { Worker } from 'node:worker_threads';
import type { WorkerSealer } from '../pool/sealing.js';
import { BlockSealer, NONCE_BYTES, TAG_BYTES } from './block-sealer.js';
import { BlockAuthError } from './errors.js';
import { generateVolumeKey } from './volume-key.js';

const BLOCK = 64 * 1024;

/** The identity bytes a caller binds a block to: volume, generation, index (like pool/sealing refAad). */
function identity(volume: number, generation: number, index: number): Uint8Array {
  const aad = new Uint8Array(16);
  const view = new DataView(aad.buffer);
  view.setUint32(0, volume, true);
  view.setUint32(4, generation, true);
  view.setUint32(8, index, true);
  return aad;
}

function sealed(sealer: BlockSealer, plain: Uint8Array, aad: Uint8Array, generation: number) {
  const ciphertext = new Uint8Array(plain.length);
  const nonce = new Uint8Array(NONCE_BYTES);
  const tag = new Uint8Array(TAG_BYTES);
  sealer.seal(plain, ciphertext, nonce, tag, aad, generation);
  return { ciphertext, nonce, tag };
}

test('the pool worker can use a BlockSealer as its WorkerSealer', () => {
  const asWorkerSealer: WorkerSealer = new BlockSealer(generateVolumeKey());
  assert.ok(asWorkerSealer);
});

test('round trip keeps the block size and restores the data', () => {
  const sealer = new BlockSealer(generateVolumeKey());
  const plain = randomBytes(BLOCK);
  const aad = identity(1, 7, 42);
  const { ciphertext, nonce, tag } = sealed(sealer, plain, aad, 7);
  assert.equal(ciphertext.length, BLOCK);
  assert.notDeepEqual(Buffer.from(ciphertext), plain);
  const out = new Uint8Array(BLOCK);
  sealer.open(ciphertext, out, nonce, tag, aad, 7);
  assert.deepEqual(Buffer.from(out), plain);
});

test('a second sealer with the same key opens what the first sealed (workers each build their own)', () => {
  const key = generateVolumeKey();
  const plain = randomBytes(4096);
  const aad = identity(1, 3, 0);
  const { ciphertext, nonce, tag } = sealed(new BlockSealer(key), plain, aad, 3);
  const out = new Uint8Array(plain.length);
  new BlockSealer(key).open(ciphertext, out, nonce, tag, aad, 3);
  assert.deepEqual(Buffer.from(out), plain);
});

test('sealing in place works', () => {
  const sealer = new BlockSealer(generateVolumeKey());
  const plain = randomBytes(4096);
  const block = Uint8Array.from(plain);
  const nonce = new Uint8Array(NONCE_BYTES);
  const tag = new Uint8Array(TAG_BYTES);
  const aad = identity(1, 1, 1);
  sealer.seal(block, block, nonce, tag, aad, 1);
  sealer.open(block, block, nonce, tag, aad, 1);
  assert.deepEqual(Buffer.from(block), plain);
});

test('sealing the same block twice gives different nonces and ciphertexts', () => {
  const sealer = new BlockSealer(generateVolumeKey());
  const plain = randomBytes(4096);
  const aad = identity(1, 1, 1);
  const a = sealed(sealer, plain, aad, 1);
  const b = sealed(sealer, plain, aad, 1);
  assert.notDeepEqual(a.nonce, b.nonce);
  assert.notDeepEqual(a.ciphertext, b.ciphertext);
});

test('nonces stay distinct across many seals (the random pool is never reused)', () => {
  const sealer = new BlockSealer(generateVolumeKey());
  const seen = new Set<string>();
  const plain = new Uint8Array(16);
  const aad = identity(1, 1, 1);
  for (let i = 0; i < 2000; i++)
    seen.add(Buffer.from(sealed(sealer, plain, aad, 1).nonce).toString('hex'));
  assert.equal(seen.size, 2000);
});

test('any tampering fails with BlockAuthError and leaves the output untouched', () => {
  const sealer = new BlockSealer(generateVolumeKey());
  const plain = randomBytes(4096);
  const aad = identity(1, 5, 9);
  const good = sealed(sealer, plain, aad, 5);
  const flip = (bytes: Uint8Array, at: number) => {
    const copy = Uint8Array.from(bytes);
    copy[at] ^= 1;
    return copy;
  };
  const cases: Array<[string, () => void]> = [];
  const out = new Uint8Array(plain.length).fill(0xee);
  const open = (c: Uint8Array, n: Uint8Array, t: Uint8Array, a: Uint8Array, g: number) => () =>
    sealer.open(c, out, n, t, a, g);
  cases.push([
    'ciphertext first byte',
    open(flip(good.ciphertext, 0), good.nonce, good.tag, aad, 5),
  ]);
  cases.push([
    'ciphertext last byte',
    open(flip(good.ciphertext, plain.length - 1), good.nonce, good.tag, aad, 5),
  ]);
  cases.push(['tag', open(good.ciphertext, good.nonce, flip(good.tag, 15), aad, 5)]);
  cases.push(['nonce', open(good.ciphertext, flip(good.nonce, 0), good.tag, aad, 5)]);
  cases.push([
    'aad: another block index',
    open(good.ciphertext, good.nonce, good.tag, identity(1, 5, 10), 5),
  ]);
  cases.push([
    'aad: another volume',
    open(good.ciphertext, good.nonce, good.tag, identity(2, 5, 9), 5),
  ]);
  cases.push(['generation sub-key', open(good.ciphertext, good.nonce, good.tag, aad, 6)]);
  for (const [what, attempt] of cases) {
    assert.throws(attempt, BlockAuthError, what);
    assert.ok(
      out.every((b) => b === 0xee),
      `${what}: output was written`,
    );
  }
  const err = (() => {
    try {
      cases[0][1]();
    } catch (e) {
      return e as BlockAuthError;
    }
  })();
  assert.equal(err?.errno, 'EIO');
});

test('two sealed blocks swapped between identities are both detected', () => {
  const sealer = new BlockSealer(generateVolumeKey());
  const aadA = identity(1, 2, 100);
  const aadB = identity(1, 2, 101);
  const a = sealed(sealer, randomBytes(4096), aadA, 2);
  const b = sealed(sealer, randomBytes(4096), aadB, 2);
  const out = new Uint8Array(4096);
  assert.throws(() => sealer.open(b.ciphertext, out, b.nonce, b.tag, aadA, 2), BlockAuthError);
  assert.throws(() => sealer.open(a.ciphertext, out, a.nonce, a.tag, aadB, 2), BlockAuthError);
});

test('a wrong volume key fails authentication', () => {
  const plain = randomBytes(4096);
  const aad = identity(1, 1, 1);
  const { ciphertext, nonce, tag } = sealed(new BlockSealer(generateVolumeKey()), plain, aad, 1);
  assert.throws(
    () =>
      new BlockSealer(generateVolumeKey()).open(
        ciphertext,
        new Uint8Array(4096),
        nonce,
        tag,
        aad,
        1,
      ),
    BlockAuthError,
  );
});

test('old generations stay readable after their sub-keys fall out of the cache', () => {
  const sealer = new BlockSealer(generateVolumeKey(), { cachedGenerations: 2 });
  const blocks = [];
  for (let generation = 0; generation < 10; generation++) {
    const plain = randomBytes(512);
    blocks.push({
      plain,
      generation,
      aad: identity(1, generation, 0),
      ...sealed(sealer, plain, identity(1, generation, 0), generation),
    });
  }
  for (const b of blocks.reverse()) {
    const out = new Uint8Array(512);
    sealer.open(b.ciphertext, out, b.nonce, b.tag, b.aad, b.generation);
    assert.deepEqual(Buffer.from(out), b.plain);
  }
});

test('the largest u32 generation works; out-of-range generations and wrong sizes are programmer errors', () => {
  const sealer = new BlockSealer(generateVolumeKey());
  const plain = randomBytes(64);
  const { ciphertext, nonce, tag } = sealed(
    sealer,
    plain,
    identity(1, 0xffff_ffff, 0),
    0xffff_ffff,
  );
  sealer.open(ciphertext, new Uint8Array(64), nonce, tag, identity(1, 0xffff_ffff, 0), 0xffff_ffff);
  const aad = identity(1, 1, 1);
  for (const generation of [-1, 2 ** 32, 1.5, Number.NaN]) {
    assert.throws(() => sealed(sealer, plain, aad, generation), RangeError, String(generation));
  }
  assert.throws(
    () => sealer.seal(plain, new Uint8Array(63), new Uint8Array(12), new Uint8Array(16), aad, 1),
    RangeError,
  );
  assert.throws(
    () => sealer.seal(plain, new Uint8Array(64), new Uint8Array(8), new Uint8Array(16), aad, 1),
    RangeError,
  );
  assert.throws(
    () => sealer.open(ciphertext, new Uint8Array(64), nonce, new Uint8Array(12), aad, 1),
    RangeError,
  );
  assert.throws(() => new BlockSealer(new Uint8Array(16)), RangeError);
});

test('works on views into a SharedArrayBuffer (shared cache and slot records)', () => {
  const sealer = new BlockSealer(generateVolumeKey());
  const cache = new SharedArrayBuffer(4 * BLOCK);
  const records = new SharedArrayBuffer(4 * 64);
  const plainView = new Uint8Array(cache, 1 * BLOCK, BLOCK);
  const sealedView = new Uint8Array(cache, 2 * BLOCK, BLOCK);
  const openedView = new Uint8Array(cache, 3 * BLOCK, BLOCK);
  // Nonce and tag at odd offsets inside a record, as in blocks/record.ts.
  const nonce = new Uint8Array(records, 64 + 32, NONCE_BYTES);
  const tag = new Uint8Array(records, 64 + 44, TAG_BYTES);
  const aadBuffer = new SharedArrayBuffer(16);
  const aad = new Uint8Array(aadBuffer);
  aad.set(identity(3, 4, 5));
  const plain = randomBytes(BLOCK);
  plainView.set(plain);
  sealer.seal(plainView, sealedView, nonce, tag, aad, 4);
  assert.ok(nonce.some((b) => b !== 0));
  assert.ok(tag.some((b) => b !== 0));
  sealer.open(sealedView, openedView, nonce, tag, aad, 4);
  assert.deepEqual(Buffer.from(openedView), plain);
  sealedView[7] ^= 0x80;
  assert.throws(() => sealer.open(sealedView, openedView, nonce, tag, aad, 4), BlockAuthError);
});

test('a worker thread seals into shared memory and the main thread opens it', async () => {
  const key = generateVolumeKey();
  const shared = new SharedArrayBuffer(BLOCK * 2 + NONCE_BYTES + TAG_BYTES);
  const plain = randomBytes(BLOCK);
  new Uint8Array(shared, 0, BLOCK).set(plain);
  const aad = identity(9, 8, 7);
  // An eval'd worker is CommonJS, so it reaches this (ESM) module through import().
  const source = `
    const { workerData, parentPort } = require('node:worker_threads');
    import(workerData.module).then(({ BlockSealer }) => {
      const { shared, key, aad, block } = workerData;
      new BlockSealer(key).seal(
        new Uint8Array(shared, 0, block), new Uint8Array(shared, block, block),
        new Uint8Array(shared, 2 * block, 12), new Uint8Array(shared, 2 * block + 12, 16), aad, 8);
      parentPort.postMessage('sealed');
    });`;
  const worker = new Worker(source, {
    eval: true,
    workerData: {
      module: new URL('./block-sealer.js', import.meta.url).href,
      shared,
      key,
      aad,
      block: BLOCK,
    },
  });
  const message = await new Promise((resolve, reject) => {
    worker.once('message', resolve);
    worker.once('error', reject);
  });
  await worker.terminate();
  assert.equal(message, 'sealed');
  const out = new Uint8Array(BLOCK);
  new BlockSealer(key).open(
    new Uint8Array(shared, BLOCK, BLOCK),
    out,
    new Uint8Array(shared, 2 * BLOCK, NONCE_BYTES),
    new Uint8Array(shared, 2 * BLOCK + NONCE_BYTES, TAG_BYTES),
    aad,
    8,
  );
  assert.deepEqual(Buffer.from(out), plain);
});

test('throughput on 64 KiB blocks (printed, not asserted)', () => {
  const sealer = new BlockSealer(generateVolumeKey());
  const plain = randomBytes(BLOCK);
  const ciphertext = new Uint8Array(BLOCK);
  const opened = new Uint8Array(BLOCK);
  const nonce = new Uint8Array(NONCE_BYTES);
  const tag = new Uint8Array(TAG_BYTES);
  const aad = identity(1, 1, 1);
  const rounds = 2000;
  for (let i = 0; i < 100; i++) sealer.seal(plain, ciphertext, nonce, tag, aad, 1);
  let start = process.hrtime.bigint();
  for (let i = 0; i < rounds; i++) sealer.seal(plain, ciphertext, nonce, tag, aad, 1);
  const sealSeconds = Number(process.hrtime.bigint() - start) / 1e9;
  start = process.hrtime.bigint();
  for (let i = 0; i < rounds; i++) sealer.open(ciphertext, opened, nonce, tag, aad, 1);
  const openSeconds = Number(process.hrtime.bigint() - start) / 1e9;
  const mb = (rounds * BLOCK) / 1e6;
  console.log(
    `# AES-256-GCM 64 KiB blocks, one thread: seal ${(mb / sealSeconds).toFixed(0)} MB/s, open ${(mb / openSeconds).toFixed(0)} MB/s`,
  );
});
