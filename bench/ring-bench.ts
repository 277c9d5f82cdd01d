/**
 * The ring's figures, for README.md: hash cost, build time, placement cost,
 * balance and movement on 500 members. Not a test (nothing is asserted on
 * time); run after `npm run build`:
 *
 *   node dist/bench/ring-bench.js [--blocks N]
 *
 * Times are the best of several rounds, each long enough (≥ 10^5 calls)
 * for the JIT to have settled: the best round is the one least disturbed by
 * whatever else the machine was doing (the median is printed beside it).
 */
import { createHash, hash as oneShotHash } from 'node:crypto';
import xxhash from 'xxhash-wasm';
import { blockPoint, xxh32 } from '../src/model/ring/hash.js';
import { KetamaRing } from '../src/model/ring/ketama.js';
import type { RingDescription } from '../src/model/ring/ring.js';

const MEMBERS = 500;
const TIB = 2 ** 40;

function argValue(name: string, fallback: number): number {
  const at = process.argv.indexOf(name);
  return at >= 0 ? Number(process.argv[at + 1]) : fallback;
}

function uuidOf(i: number): string {
  const bytes = new TextEncoder().encode(`bench/${i}`);
  const hex = [1, 2, 3, 4].map((seed) => xxh32(bytes, seed).toString(16).padStart(8, '0')).join('');
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-4${hex.slice(13, 16)}-8${hex.slice(17, 20)}-${hex.slice(20, 32)}`;
}

function description(n: number, weight: number, first = 0): RingDescription {
  return {
    version: 1,
    type: 'ketama',
    replication: 3,
    members: Array.from({ length: n }, (_, i) => ({ uuid: uuidOf(first + i), weight })),
  };
}

function median(xs: number[]): number {
  const sorted = [...xs].sort((a, b) => a - b);
  return sorted[sorted.length >> 1];
}

/** Nanoseconds per call of `body(i)` over `calls` calls: "best (median)" of 7 rounds. */
function nsPerCall(calls: number, body: (i: number) => number): string {
  const rounds: number[] = [];
  let sink = 0;
  for (let r = 0; r < 7; r++) {
    const start = process.hrtime.bigint();
    for (let i = 0; i < calls; i++) sink ^= body(i);
    rounds.push(Number(process.hrtime.bigint() - start) / calls);
  }
  if (sink === 0.5) console.log(sink); // keep the work observable
  const digits = rounds[0] < 100 ? 1 : 0;
  return `${Math.min(...rounds).toFixed(digits)} ns (${median(rounds).toFixed(digits)})`;
}

// Block refs: random volumes and indexes, precomputed so their cost is not
// measured (4096 of them, cycled: more than the caches would keep hot).
const REFS = 1 << 12;
const volumes = new Float64Array(REFS);
const indexes = new Float64Array(REFS);
for (let i = 0; i < REFS; i++) {
  volumes[i] = 1 + Math.floor(Math.random() * 1000);
  indexes[i] = Math.floor(Math.random() * 2 ** 40);
}

async function hashes(): Promise<void> {
  const api = await xxhash();
  const key = new Uint8Array(16);
  const view = new DataView(key.buffer);
  const encode = (i: number) => {
    const v = volumes[i & (REFS - 1)];
    const x = indexes[i & (REFS - 1)];
    view.setUint32(0, v >>> 0, true);
    view.setUint32(4, Math.floor(v / 2 ** 32), true);
    view.setUint32(8, x >>> 0, true);
    view.setUint32(12, Math.floor(x / 2 ** 32), true);
  };
  const plain = nsPerCall(4_000_000, (i) =>
    blockPoint(volumes[i & (REFS - 1)], indexes[i & (REFS - 1)]),
  );
  const wasm = nsPerCall(1_000_000, (i) => (encode(i), api.h32Raw(key, 0)));
  const md5 = nsPerCall(
    100_000,
    (i) => (encode(i), oneShotHash('md5', key, 'buffer').readUInt32LE(0)),
  );
  const sha = nsPerCall(
    100_000,
    (i) => (encode(i), createHash('sha256').update(key).digest().readUInt32LE(0)),
  );
  console.log(
    `hash of a block key: blockPoint ${plain}, xxhash-wasm h32Raw ${wasm}, crypto.hash md5 ${md5}, createHash sha256 ${sha}`,
  );
}

function build(): KetamaRing {
  for (const [label, weight] of [
    ['4 TiB each', 4 * TIB],
    ['2^41.5 - 1 each (1023 points, the most a smallest member gets)', 2 ** 41.5 - 1],
  ] as const) {
    const times: number[] = [];
    let ring: KetamaRing | undefined;
    for (let r = 0; r < 7; r++) {
      const start = performance.now();
      ring = new KetamaRing(description(MEMBERS, weight));
      times.push(performance.now() - start);
    }
    const ms = (x: number) => `${x.toFixed(1)} ms`;
    console.log(
      `build ${MEMBERS} members, ${label}: ${ring!.pointCount} points, ${ms(Math.min(...times))} (median ${ms(median(times))}, first ${ms(times[0])})`,
    );
  }
  return new KetamaRing(description(MEMBERS, 4 * TIB));
}

function placementCost(ring: KetamaRing): void {
  const out = new Uint32Array(8);
  for (const count of [1, 2, 3]) {
    const into = nsPerCall(2_000_000, (i) =>
      ring.placeInto(volumes[i & (REFS - 1)], indexes[i & (REFS - 1)], count, out),
    );
    const ref = { volumeId: 0, generation: 1, index: 0 };
    const allocating = nsPerCall(2_000_000, (i) => {
      ref.volumeId = volumes[i & (REFS - 1)];
      ref.index = indexes[i & (REFS - 1)];
      return ring.placement(ref, count).length;
    });
    console.log(
      `placement on ${MEMBERS} members, count ${count}: placeInto ${into}, placement() ${allocating}`,
    );
  }
}

function balance(ring: KetamaRing, blocks: number): void {
  const out = new Uint32Array(8);
  for (const count of [1, 2, 3]) {
    const load = new Float64Array(ring.members.length);
    for (let b = 0; b < blocks; b++) {
      const n = ring.placeInto(1 + (b % 61), b, count, out);
      for (let c = 0; c < n; c++) load[out[c]]++;
    }
    const mean = (blocks * count) / ring.members.length;
    const max = Math.max(...load) / mean;
    const min = Math.min(...load) / mean;
    const sd = Math.sqrt(load.reduce((s, x) => s + (x - mean) ** 2, 0) / load.length) / mean;
    console.log(
      `balance, ${blocks} blocks × ${count} on ${ring.members.length}: max/mean ${max.toFixed(3)}, min/mean ${min.toFixed(3)}, ` +
        `sd ${(sd * 100).toFixed(2)}% (of which sampling ≈ ${(100 / Math.sqrt(mean)).toFixed(2)}%)`,
    );
  }
}

function movement(blocks: number): void {
  const count = 3;
  const base = new KetamaRing(description(MEMBERS, 4 * TIB));
  const grown = new KetamaRing(description(MEMBERS + 1, 4 * TIB));
  const shrunk = new KetamaRing({
    ...base.description,
    members: base.description.members.filter((_m, i) => i !== 123),
  });
  for (const [label, next, ideal] of [
    ['add 1 to 500', grown, 1 / (MEMBERS + 1)],
    ['remove 1 of 500', shrunk, 1 / MEMBERS],
  ] as const) {
    // Both rings' member indexes, as indexes into the grown ring's members.
    const everyone = new Map(grown.members.map((uuid, i) => [uuid, i]));
    const fromBase = Uint32Array.from(base.members, (uuid) => everyone.get(uuid)!);
    const fromNext = Uint32Array.from(next.members, (uuid) => everyone.get(uuid)!);
    const a = new Uint32Array(count);
    const b = new Uint32Array(count);
    let copies = 0;
    let changedBlocks = 0;
    let primaries = 0;
    for (let x = 0; x < blocks; x++) {
      base.placeInto(1 + (x % 61), x, count, a);
      next.placeInto(1 + (x % 61), x, count, b);
      let moved = 0;
      for (const m of b) if (!a.some((o) => fromBase[o] === fromNext[m])) moved++;
      copies += moved;
      if (moved > 0) changedBlocks++;
      if (fromBase[a[0]] !== fromNext[b[0]]) primaries++;
    }
    const share = copies / (blocks * count);
    console.log(
      `movement, ${label}, ${blocks} blocks × ${count}: copies moved ${(share * 100).toFixed(3)}% (${(share / ideal).toFixed(3)}× the ideal ` +
        `${(ideal * 100).toFixed(3)}%), blocks touched ${((changedBlocks / blocks) * 100).toFixed(3)}%, primaries changed ${((primaries / blocks) * 100).toFixed(3)}%`,
    );
  }
}

const blocks = argValue('--blocks', 10_000_000);
await hashes();
const ring = build();
placementCost(ring);
balance(ring, blocks);
movement(Math.min(blocks, 2_000_000));
