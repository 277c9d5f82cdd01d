/**
 * Pool worker: the data plane's muscle. Hashes, seals/opens and moves blocks
 * between the shared cache and the local store files with plain blocking
 * syscalls — blocking here is the point: the main thread never does.
 */
import { openSync, readSync, writeSync } from 'node:fs';
import { workerData } from 'node:worker_threads';
import { hasher } from '../blocks/hash.js';
import { isAllZero } from '../blocks/hash.js';
import { OFF_NONCE, OFF_TAG, NONCE_SIZE, RECORD_SEALED, RECORD_SIZE, TAG_SIZE, fillRecord } from '../blocks/record.js';
import type { WireBlock } from '../peer/wire.js';
import { peerClient } from './peer-links.js';
import { blockSealerFor, refAad } from './sealing.js';
import {
  READ_CHECKSUM_MISMATCH, READ_IO_ERROR, READ_OK, READ_OPEN_FAILED,
  type PoolTask, type ReadBatchResult, type ReadBatchTask, type RemoteTargets, type WorkerSetup, type WriteBatchResult, type WriteBatchTask,
} from './tasks.js';

const setup = workerData as WorkerSetup;
const hash = await hasher();
const blockSize = setup.blockSize;
const cache = new Uint8Array(setup.cache);
const records = new Uint8Array(setup.records);
const dataFd = openSync(setup.dataPath, 'r+');
const slotsFd = openSync(setup.slotsPath, 'r+');
/** Ciphertext staging for sealed volumes: one block, reused by every task. */
const scratch = new Uint8Array(blockSize);
const hashOut = new Uint32Array(2);
/**
 * Sealed bytes, nonces and tags of a batch while its copies are in flight to
 * peers. Replicated tasks wait on the network, so a worker runs several at
 * once (DataPool's concurrentTasksPerWorker): each takes a set of its own
 * from this free list and gives it back when its puts are answered.
 */
interface Staging {
  ciphertext: Uint8Array;
  nonces: Uint8Array;
  tags: Uint8Array;
}
const freeStaging: Staging[] = [];
function takeStaging(blocks: number, sealed: boolean): Staging {
  const staging = freeStaging.pop() ?? { ciphertext: new Uint8Array(0), nonces: new Uint8Array(64 * NONCE_SIZE), tags: new Uint8Array(64 * TAG_SIZE) };
  if (sealed && staging.ciphertext.length < blocks * blockSize) staging.ciphertext = new Uint8Array(blocks * blockSize);
  return staging;
}

export default function handle(task: PoolTask): WriteBatchResult | ReadBatchResult | Promise<WriteBatchResult | ReadBatchResult> {
  if (task.op === 'write') return task.remote ? writeBatchReplicated(task, task.remote) : writeBatch(task);
  return task.remote ? readBatchReplicated(task, task.remote) : readBatch(task);
}

function cacheBlock(slot: number): Uint8Array {
  return cache.subarray(slot * blockSize, (slot + 1) * blockSize);
}

function pwriteAll(fd: number, bytes: Uint8Array, position: number): void {
  let done = 0;
  while (done < bytes.length) done += writeSync(fd, bytes, done, bytes.length - done, position + done);
}

function preadAll(fd: number, bytes: Uint8Array, position: number): void {
  let done = 0;
  while (done < bytes.length) {
    const n = readSync(fd, bytes, done, bytes.length - done, position + done);
    if (n === 0) throw new Error(`short read at ${position + done}`);
    done += n;
  }
}

function writeBatch(task: WriteBatchTask): WriteBatchResult {
  const n = task.cacheSlots.length;
  const zero = new Uint8Array(n);
  const hashes = new Uint32Array(2 * n);
  const sealer = task.key ? blockSealerFor(task.volumeId, task.key) : undefined;
  for (let i = 0; i < n; i++) {
    const plain = cacheBlock(task.cacheSlots[i]);
    if (isAllZero(plain)) {
      zero[i] = 1;
      continue;
    }
    const slot = task.storeSlots[i];
    const base = slot * RECORD_SIZE;
    let stored = plain;
    if (sealer) {
      sealer.seal(
        plain,
        scratch,
        records.subarray(base + OFF_NONCE, base + OFF_NONCE + NONCE_SIZE),
        records.subarray(base + OFF_TAG, base + OFF_TAG + TAG_SIZE),
        refAad(task.volumeId, task.generation, task.indices[i]),
        task.generation,
      );
      stored = scratch;
    }
    hash.hash64Into(stored, hashes, 2 * i);
    // The sealer wrote nonce and tag into the record already.
    storeLocally(task, i, slot, stored, sealer !== undefined, hashes);
  }
  return { zero, hashes };
}

/**
 * writeBatch for a cluster: each block is sealed (if keyed) and hashed once,
 * stored locally where its store slot is ≥ 0, and sent to its remote targets,
 * one putBlocks per peer for the whole batch. `acked` says where each block
 * landed; the volume decides what is enough.
 */
async function writeBatchReplicated(task: WriteBatchTask, remote: RemoteTargets): Promise<WriteBatchResult> {
  const staging = takeStaging(task.cacheSlots.length, task.key !== null);
  try {
    return await replicate(task, remote, staging);
  } finally {
    freeStaging.push(staging);
  }
}

async function replicate(task: WriteBatchTask, remote: RemoteTargets, staging: Staging): Promise<WriteBatchResult> {
  const n = task.cacheSlots.length;
  const zero = new Uint8Array(n);
  const hashes = new Uint32Array(2 * n);
  const acked = new Uint8Array(n * remote.stride);
  const sealer = task.key ? blockSealerFor(task.volumeId, task.key) : undefined;
  /** Per peer: its blocks, and where each one's ack goes in `acked`. */
  const perPeer = new Map<number, { blocks: WireBlock[]; items: number[] }>();
  for (let i = 0; i < n; i++) {
    const plain = cacheBlock(task.cacheSlots[i]);
    if (isAllZero(plain)) {
      zero[i] = 1;
      continue;
    }
    const nonce = staging.nonces.subarray(i * NONCE_SIZE, (i + 1) * NONCE_SIZE);
    const tag = staging.tags.subarray(i * TAG_SIZE, (i + 1) * TAG_SIZE);
    let stored = plain;
    if (sealer) {
      stored = staging.ciphertext.subarray(i * blockSize, (i + 1) * blockSize);
      sealer.seal(plain, stored, nonce, tag, refAad(task.volumeId, task.generation, task.indices[i]), task.generation);
    }
    hash.hash64Into(stored, hashes, 2 * i);
    const slot = task.storeSlots[i];
    if (slot >= 0) {
      storeLocally(task, i, slot, stored, sealer !== undefined, hashes, nonce, tag);
    }
    const ref = { volumeId: task.volumeId, generation: task.generation, index: task.indices[i] };
    for (let t = 0; t < remote.stride; t++) {
      const peer = remote.targets[i * remote.stride + t];
      if (peer < 0) break;
      let batch = perPeer.get(peer);
      if (!batch) perPeer.set(peer, (batch = { blocks: [], items: [] }));
      batch.blocks.push({ ref, flags: sealer ? RECORD_SEALED : 0, hashLo: hashes[2 * i], hashHi: hashes[2 * i + 1], nonce, tag, data: stored });
      batch.items.push(i * remote.stride + t);
    }
  }
  const failures: string[] = [];
  await Promise.all(
    [...perPeer].map(async ([peer, batch]) => {
      const target = remote.peers[peer];
      try {
        await peerClient(remote.identity, target).putBlocks(batch.blocks);
        for (const at of batch.items) acked[at] = 1;
      } catch (err) {
        failures.push(`${target.uuid} (${target.host}:${target.port}): ${(err as Error).message}`);
      }
    }),
  );
  return { zero, hashes, acked, failures };
}

/**
 * Write one block and its record to the local store (the slot is this
 * task's). nonce and tag, when given, are copied into the record; without
 * them a sealed block's record must hold them already.
 */
function storeLocally(task: WriteBatchTask, i: number, slot: number, stored: Uint8Array, sealed: boolean, hashes: Uint32Array, nonce?: Uint8Array, tag?: Uint8Array): void {
  const base = slot * RECORD_SIZE;
  pwriteAll(dataFd, stored, slot * blockSize);
  if (sealed && nonce && tag) {
    records.set(nonce, base + OFF_NONCE);
    records.set(tag, base + OFF_TAG);
  }
  const record = new DataView(setup.records, base, RECORD_SIZE);
  fillRecord(record, { volumeId: task.volumeId, generation: task.generation, index: task.indices[i] }, sealed ? RECORD_SEALED : 0, hashes[2 * i], hashes[2 * i + 1]);
  hash.stampRecord(record);
  pwriteAll(slotsFd, records.subarray(base, base + RECORD_SIZE), base);
}

/**
 * readBatch for a cluster: the local copy first where there is one, then
 * each remote candidate in order, each with its own deadline, until one
 * copy passes its checksum (and opens, if sealed). A replica that is dead,
 * frozen, missing the block or holding a bad copy only costs its deadline.
 */
async function readBatchReplicated(task: ReadBatchTask, remote: RemoteTargets): Promise<ReadBatchResult> {
  const local = readBatch(task);
  const n = task.cacheSlots.length;
  const sealer = task.key ? blockSealerFor(task.volumeId, task.key) : undefined;
  await Promise.all(
    Array.from({ length: n }, async (_, i) => {
      if (local.status[i] === READ_OK) return;
      const tried: string[] = task.storeSlots[i] >= 0 ? [`local: ${local.reasons[i]}`] : [];
      const ref = { volumeId: task.volumeId, generation: task.generations[i], index: task.indices[i] };
      const dest = cacheBlock(task.cacheSlots[i]);
      for (let t = 0; t < remote.stride; t++) {
        const peer = remote.targets[i * remote.stride + t];
        if (peer < 0) break;
        const target = remote.peers[peer];
        try {
          const block = await peerClient(remote.identity, target).getBlock(ref);
          if (!block) {
            tried.push(`${target.uuid}: not held`);
            continue;
          }
          const got = new Uint32Array(2);
          hash.hash64Into(block.data, got, 0);
          if (got[0] !== task.hashes[2 * i] || got[1] !== task.hashes[2 * i + 1] || block.data.length !== blockSize) {
            tried.push(`${target.uuid}: checksum mismatch`);
            continue;
          }
          if (sealer) {
            sealer.open(block.data, dest, block.nonce, block.tag, refAad(task.volumeId, task.generations[i], task.indices[i]), task.generations[i]);
          } else {
            dest.set(block.data);
          }
          local.status[i] = READ_OK;
          local.reasons[i] = '';
          return;
        } catch (err) {
          tried.push(`${target.uuid}: ${(err as Error).message}`);
        }
      }
      if (tried.length > 0) local.reasons[i] = tried.join('; ');
    }),
  );
  return local;
}

function readBatch(task: ReadBatchTask): ReadBatchResult {
  const n = task.cacheSlots.length;
  const status = new Uint8Array(n);
  const reasons: string[] = new Array(n).fill('');
  const sealer = task.key ? blockSealerFor(task.volumeId, task.key) : undefined;
  for (let i = 0; i < n; i++) {
    const slot = task.storeSlots[i];
    if (slot < 0) {
      status[i] = READ_IO_ERROR;
      reasons[i] = 'no local copy';
      continue;
    }
    const dest = cacheBlock(task.cacheSlots[i]);
    const landing = sealer ? scratch : dest;
    try {
      preadAll(dataFd, landing, slot * blockSize);
    } catch (err) {
      status[i] = READ_IO_ERROR;
      reasons[i] = (err as Error).message;
      continue;
    }
    hash.hash64Into(landing, hashOut, 0);
    if (hashOut[0] !== task.hashes[2 * i] || hashOut[1] !== task.hashes[2 * i + 1]) {
      status[i] = READ_CHECKSUM_MISMATCH;
      reasons[i] = `stored xxh64 ${hex(hashOut[1], hashOut[0])}, expected ${hex(task.hashes[2 * i + 1], task.hashes[2 * i])}`;
      continue;
    }
    if (sealer) {
      const base = slot * RECORD_SIZE;
      try {
        sealer.open(
          landing,
          dest,
          records.subarray(base + OFF_NONCE, base + OFF_NONCE + NONCE_SIZE),
          records.subarray(base + OFF_TAG, base + OFF_TAG + TAG_SIZE),
          refAad(task.volumeId, task.generations[i], task.indices[i]),
          task.generations[i],
        );
      } catch (err) {
        status[i] = READ_OPEN_FAILED;
        reasons[i] = (err as Error).message;
        continue;
      }
    }
    status[i] = READ_OK;
  }
  return { status, reasons };
}

function hex(hi: number, lo: number): string {
  return hi.toString(16).padStart(8, '0') + lo.toString(16).padStart(8, '0');
}
