/**
 * Pool worker: the data plane's muscle. Hashes, seals/opens and moves blocks
 * between the shared cache and the local store files with plain blocking
 * syscalls — blocking here is the point: the main thread never does.
 */
import { openSync, readSync, writeSync } from 'node:fs';
import { workerData } from 'node:worker_threads';
import { hasher } from '../blocks/hash.js';
import { isAllZero } from '../blocks/hash.js';
import {
  OFF_FLAGS, OFF_GENERATION, OFF_HASH_HI, OFF_HASH_LO, OFF_INDEX_HI, OFF_INDEX_LO, OFF_NONCE, OFF_STATE, OFF_TAG,
  OFF_VOLUME, NONCE_SIZE, RECORD_SEALED, RECORD_SIZE, SLOT_USED, TAG_SIZE, hi32, lo32,
} from '../blocks/record.js';
import { blockSealerFor, refAad } from './sealing.js';
import {
  READ_CHECKSUM_MISMATCH, READ_IO_ERROR, READ_OK, READ_OPEN_FAILED,
  type PoolTask, type ReadBatchResult, type ReadBatchTask, type WorkerSetup, type WriteBatchResult, type WriteBatchTask,
} from './tasks.js';

const setup = workerData as WorkerSetup;
const hash = await hasher();
const blockSize = setup.blockSize;
const cache = new Uint8Array(setup.cache);
const records = new Uint8Array(setup.records);
const recordView = new DataView(setup.records);
const dataFd = openSync(setup.dataPath, 'r+');
const slotsFd = openSync(setup.slotsPath, 'r+');
/** Ciphertext staging for sealed volumes: one block, reused by every task. */
const scratch = new Uint8Array(blockSize);
const hashOut = new Uint32Array(2);

export default function handle(task: PoolTask): WriteBatchResult | ReadBatchResult {
  return task.op === 'write' ? writeBatch(task) : readBatch(task);
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
    pwriteAll(dataFd, stored, slot * blockSize);
    const index = task.indices[i];
    recordView.setUint32(base + OFF_VOLUME, task.volumeId, true);
    recordView.setUint32(base + OFF_GENERATION, task.generation, true);
    recordView.setUint32(base + OFF_FLAGS, sealer ? RECORD_SEALED : 0, true);
    recordView.setUint32(base + OFF_INDEX_LO, lo32(index), true);
    recordView.setUint32(base + OFF_INDEX_HI, hi32(index), true);
    recordView.setUint32(base + OFF_HASH_LO, hashes[2 * i], true);
    recordView.setUint32(base + OFF_HASH_HI, hashes[2 * i + 1], true);
    recordView.setUint32(base + OFF_STATE, SLOT_USED, true);
    hash.stampRecord(new DataView(setup.records, base, RECORD_SIZE));
    pwriteAll(slotsFd, records.subarray(base, base + RECORD_SIZE), base);
  }
  return { zero, hashes };
}

function readBatch(task: ReadBatchTask): ReadBatchResult {
  const n = task.cacheSlots.length;
  const status = new Uint8Array(n);
  const reasons: string[] = new Array(n).fill('');
  const sealer = task.key ? blockSealerFor(task.volumeId, task.key) : undefined;
  for (let i = 0; i < n; i++) {
    const slot = task.storeSlots[i];
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
