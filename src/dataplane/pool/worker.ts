/**
 * Pool worker: the data plane's muscle. Hashes, seals/opens and moves blocks
 * between the shared cache and the local store files with plain blocking
 * syscalls — blocking here is the point: the main thread never does.
 */
import { openSync } from 'node:fs';
import { threadId, workerData } from 'node:worker_threads';
import { hasher, isAllZero, type Hasher } from '../blocks/hash.js';
import {
  OFF_NONCE,
  OFF_TAG,
  NONCE_SIZE,
  RECORD_SEALED,
  RECORD_SIZE,
  TAG_SIZE,
  fillRecord,
} from '../blocks/record.js';
import { PeerTimeoutError, PeerUnavailableError, type PeerStatusError } from '../peer/errors.js';
import { STATUS_NO_SPACE, type WireBlock } from '../peer/wire.js';
import { logger } from '../../common/log.js';
import { memoryReporter } from '../../common/memory-report.js';
import { openDirect, pwriteAll } from './file-io.js';
import { pageAlignedSharedMemory } from '../../common/aligned-memory.js';
import { HedgedRead } from './hedged-read.js';
import { HeldWrites } from './held-writes.js';
import { peerClient, workerLinks } from './peer-links.js';
import { healthOf, type PeerHealth } from './peer-health.js';
import { blockSealerFor, refAad } from './sealing.js';
import { SubBlockIo } from './sub-block-io.js';
import { LocalReads } from './local-reads.js';
import { PatchWriter } from './patch-write.js';
import { PatchCopies } from './patch-copies.js';
import {
  READ_CHECKSUM_MISMATCH,
  PATCH_REFUSED,
  READ_OK,
  READ_OPEN_FAILED,
  type PoolTask,
  type ReadBatchResult,
  type ReadBatchTask,
  type RemoteTargets,
  type WorkerSetup,
  type WriteBatchResult,
  type WriteBatchTask,
  type PatchTargets,
} from './tasks.js';

const setup = workerData as WorkerSetup;
const log = logger('pool-worker');
const reportMemory = memoryReporter(`worker-${threadId}`);
/**
 * No top-level await here (xxhash-wasm compiles asynchronously): piscina
 * require()s a task file, and on Node 20.19+ a second load of a module whose
 * graph awaits, racing the first, aborted the process (V8 "IsGraphAsync must
 * be used on an instantiated module"). The first task waits for the hasher.
 */
let hash!: Hasher;
let hashLoaded = false;
const hasherReady = hasher().then((loaded) => {
  hash = loaded;
  subBlocks = new SubBlockIo(setup.dataPath, readFd, blockSize, hash, scratch);
  localReads = new LocalReads({
    blockSize,
    dataFd: readFd,
    records,
    hash,
    subBlocks,
    scratch,
    cacheBlock,
  });
  patches = new PatchWriter(
    dataFd,
    recordWrites,
    setup.records,
    blockSize,
    hash,
    subBlocks,
    scratch,
  );
  hashLoaded = true;
});
const blockSize = setup.blockSize;
const cache = new Uint8Array(setup.cache);
const records = new Uint8Array(setup.records);
const recordView = new DataView(setup.records);
const dataFd = openSync(setup.dataPath, 'r+');
const slotsFd = openSync(setup.slotsPath, 'r+');
/** Slot records written (held for the end of a write batch: held-writes.ts). */
const recordWrites = new HeldWrites(slotsFd, RECORD_SIZE, records);
/**
 * Plain blocks' bytes written (held, by reference to their cache slots, for
 * the end of a write batch): around the page cache when asked for, with the
 * ordinary handle for what the kernel refuses there. Patches' sub-blocks and
 * sealed blocks' ciphertext (from a scratch buffer not page aligned) go
 * through the page cache on dataFd.
 */
const directFd = setup.directWrites ? openDirect(setup.dataPath) : undefined;
const blockWrites =
  directFd === undefined
    ? new HeldWrites(dataFd, blockSize, undefined, true)
    : new HeldWrites(directFd, blockSize, undefined, true, dataFd);
/**
 * Where a task reads the store: around the page cache too when it writes
 * around it. The node's block cache is then the only cache of its data; read
 * through the page cache, every block read past memory made the kernel
 * reclaim another's page within the container's limit first (a sequential
 * reader of a randomly rewritten volume spent ~4 CPU-s per GiB; see
 * docs/benchmarks.md, session 32). Reads must then be aligned: cache slots
 * are (direct writes are on only for a page-aligned cache), and so is the
 * scratch block below — without one, reads stay in the page cache.
 */
const alignedScratch = pageAlignedSharedMemory(blockSize);
const directReadFd =
  directFd === undefined || alignedScratch === undefined
    ? undefined
    : openDirect(setup.dataPath, 'read');
const readFd = directReadFd ?? dataFd;
/** Staging for sealed volumes' ciphertext and a patch's span: one block, reused by every task. */
const scratch = new Uint8Array(alignedScratch ?? new ArrayBuffer(blockSize), 0, blockSize);
/** Sub-block checksums and reads (sub-block-io.ts); made once the hasher has loaded. */
let subBlocks!: SubBlockIo;
/** Reads of the local store (local-reads.ts); made once the hasher has loaded. */
let localReads!: LocalReads;
/** Writes of blocks as patches (patch-write.ts); made once the hasher has loaded. */
let patches!: PatchWriter;
/**
 * Sealed bytes, nonces and tags of a batch while its copies are in flight to
 * peers. Replicated tasks wait on the network, so a worker runs several at
 * once (DataPool's concurrentTasksPerWorker): each takes a set of its own
 * from this free list (grown to its task's size), given back when its puts
 * are answered.
 */
type Staging = Record<'ciphertext' | 'nonces' | 'tags', Uint8Array>;
const freeStaging: Staging[] = [];
function takeStaging(blocks: number, sealed: boolean): Staging {
  const none = new Uint8Array(0);
  const staging = freeStaging.pop() ?? { ciphertext: none, nonces: none, tags: none };
  if (sealed && staging.ciphertext.length < blocks * blockSize)
    staging.ciphertext = new Uint8Array(blocks * blockSize);
  if (staging.nonces.length < blocks * NONCE_SIZE)
    [staging.nonces, staging.tags] = [
      new Uint8Array(blocks * NONCE_SIZE),
      new Uint8Array(blocks * TAG_SIZE),
    ];
  return staging;
}

export default function handle(
  task: PoolTask,
): WriteBatchResult | ReadBatchResult | Promise<WriteBatchResult | ReadBatchResult> {
  if (!hashLoaded) return hasherReady.then(() => handle(task));
  reportMemory();
  if (task.op === 'write')
    return task.remote ? writeBatchReplicated(task, task.remote) : writeBatch(task);
  return task.remote ? readBatchReplicated(task, task.remote) : localReads.read(task);
}

function cacheBlock(slot: number): Uint8Array {
  return cache.subarray(slot * blockSize, (slot + 1) * blockSize);
}

/**
 * A single node's batch: plain blocks' bytes, sub-sums entries and records
 * held and written at the end, in that order, a run of consecutive slots per
 * call (held-writes.ts); sealed blocks' and patches' bytes as they come. It
 * never yields, and a block index is in a batch once: nothing it reads is held.
 */
function writeBatch(task: WriteBatchTask): WriteBatchResult {
  const entries = subBlocks.entries;
  blockWrites.hold();
  entries?.hold();
  recordWrites.hold();
  try {
    const result = storeBatch(task);
    blockWrites.write();
    entries?.write();
    recordWrites.write();
    return result;
  } finally {
    blockWrites.discard();
    entries?.discard();
    recordWrites.discard();
  }
}

function storeBatch(task: WriteBatchTask): WriteBatchResult {
  const n = task.cacheSlots.length;
  const zero = new Uint8Array(n);
  const hashes = new Uint32Array(2 * n);
  const sealer = task.key ? blockSealerFor(task.volumeId, task.key) : undefined;
  let refused: Uint8Array | undefined;
  for (let i = 0; i < n; i++) {
    const plain = cacheBlock(task.cacheSlots[i]);
    const slot = task.storeSlots[i];
    const written = task.patches?.written[i] ?? 0;
    if (written !== 0) {
      // Never judged all zeros: the cache slot holds only the written sub-blocks.
      if (!writePatch(task, task.patches!, i, slot, plain, written, hashes))
        (refused ??= new Uint8Array(n))[i] = PATCH_REFUSED;
      continue;
    }
    if (isAllZero(plain)) {
      zero[i] = 1;
      continue;
    }
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
  return refused ? { zero, hashes, refused } : { zero, hashes };
}

function writePatch(
  task: WriteBatchTask,
  targets: PatchTargets,
  i: number,
  slot: number,
  plain: Uint8Array,
  written: number,
  hashes: Uint32Array,
): boolean {
  const stored = patches.write(
    {
      volumeId: task.volumeId,
      generation: task.generation,
      index: task.indices[i],
      written,
      baseSlot: targets.baseSlots[i],
      baseVolume: targets.baseVolumes[i],
      baseGeneration: targets.baseGenerations[i],
      olderSlot: targets.olderSlots[i],
    },
    slot,
    plain,
    hashes,
    2 * i,
  );
  if (!stored) log.debug({ index: task.indices[i], reason: patches.reason }, 'patch refused');
  return stored;
}

/**
 * writeBatch for a cluster: each block sealed (if keyed) and hashed once, stored here where its
 * store slot is ≥ 0 and sent to its targets (patches as patches: patch-copies.ts), one put per
 * peer for the batch. `acked` says where each block landed; the volume decides what is enough.
 */
async function writeBatchReplicated(
  task: WriteBatchTask,
  remote: RemoteTargets,
): Promise<WriteBatchResult> {
  const staging = takeStaging(task.cacheSlots.length, task.key !== null);
  try {
    return await replicate(task, remote, staging);
  } finally {
    freeStaging.push(staging);
  }
}

async function replicate(
  task: WriteBatchTask,
  remote: RemoteTargets,
  staging: Staging,
): Promise<WriteBatchResult> {
  const n = task.cacheSlots.length;
  const zero = new Uint8Array(n);
  const hashes = new Uint32Array(2 * n);
  const acked = new Uint8Array(n * remote.stride);
  const sealer = task.key ? blockSealerFor(task.volumeId, task.key) : undefined;
  const spares = remote.spares;
  const spareStride = spares ? spares.length / n : 0;
  const now = performance.now();
  /** Each block as sent, kept for a second round to a spare. */
  const sent: (WireBlock | undefined)[] = new Array(n);
  /** Per block: copies refused for lack of space (or meant for a peer known full) that a spare should take. */
  const owed = new Uint8Array(n);
  let perPeer: PerPeer = new Map();
  const copies = task.patches && new PatchCopies(task, remote);
  const isUnwritable = (peer: number) => unwritable(healthOf(remote.peers[peer]), now);
  for (let i = 0; i < n; i++) {
    const plain = cacheBlock(task.cacheSlots[i]);
    const written = task.patches?.written[i] ?? 0;
    if (written !== 0) {
      // Over this node's copy of the base, or the targets' own, or not at all (whole: no copy may miss it).
      const slot = task.storeSlots[i];
      if (!copies!.writable(i, isUnwritable)) copies!.refused[i] = PATCH_REFUSED;
      else if (task.patches!.baseSlots[i] < 0) copies!.addRemoteBased(i, plain, hash);
      else if (slot >= 0 && writePatch(task, task.patches!, i, slot, plain, written, hashes))
        copies!.addWritten(task, i, patches, recordView);
      else copies!.refused[i] = PATCH_REFUSED;
      continue;
    }
    if (isAllZero(plain)) {
      zero[i] = 1;
      continue;
    }
    const nonce = staging.nonces.subarray(i * NONCE_SIZE, (i + 1) * NONCE_SIZE);
    const tag = staging.tags.subarray(i * TAG_SIZE, (i + 1) * TAG_SIZE);
    let stored = plain;
    if (sealer) {
      stored = staging.ciphertext.subarray(i * blockSize, (i + 1) * blockSize);
      sealer.seal(
        plain,
        stored,
        nonce,
        tag,
        refAad(task.volumeId, task.generation, task.indices[i]),
        task.generation,
      );
    }
    hash.hash64Into(stored, hashes, 2 * i);
    const slot = task.storeSlots[i];
    if (slot >= 0) {
      storeLocally(task, i, slot, stored, sealer !== undefined, hashes, nonce, tag);
    }
    const ref = { volumeId: task.volumeId, generation: task.generation, index: task.indices[i] };
    const block: WireBlock = {
      ref,
      flags: sealer ? RECORD_SEALED : 0,
      hashLo: hashes[2 * i],
      hashHi: hashes[2 * i + 1],
      nonce,
      tag,
      data: stored,
    };
    sent[i] = block;
    for (let t = 0; t < remote.stride; t++) {
      const peer = remote.targets[i * remote.stride + t];
      if (peer < 0) break;
      // A peer that said it is full, or could not be reached, a moment ago is
      // not asked again: its copy goes straight to a spare.
      if (spareStride > 0 && unwritable(healthOf(remote.peers[peer]), now)) owed[i]++;
      else addCopy(perPeer, peer, block, i * remote.stride + t);
    }
  }
  const failures: string[] = [];
  const fullPeers: string[] = [];
  const unreachable: string[] = [];
  const placedOn = spares ? new Int16Array(spares.length).fill(-1) : undefined;
  const patchSends = copies?.send(acked, hashes);
  const nextSpare = new Uint8Array(n);
  // Round 0 goes to the targets; each later round sends the copies refused for space to the blocks' next spares.
  for (let round = 0; ; round++) {
    await Promise.all(
      [...perPeer].map(async ([peer, batch]) => {
        const target = remote.peers[peer];
        try {
          await peerClient(remote.identity, target).putBlocks(batch.blocks);
          for (const item of batch.items) {
            if (item >= 0) acked[item] = 1;
            else placedOn![-item - 1] = peer;
          }
        } catch (err) {
          const full = (err as PeerStatusError).status === STATUS_NO_SPACE;
          // Full (nothing of the batch was stored: a put takes slots for all its
          // blocks or none), or dead or silent (its lease may not have lapsed
          // yet): the copies go to the next ring candidates, not missing until
          // a rebalance. Anything else is a failure of those copies.
          const redirect =
            spareStride > 0 &&
            (full || err instanceof PeerUnavailableError || err instanceof PeerTimeoutError);
          const what = `${target.uuid} (${target.host}:${target.port}): ${(err as Error).message}`;
          if (!redirect) {
            failures.push(what);
          } else {
            if (full) {
              healthOf(target).markFull(performance.now());
              fullPeers.push(target.uuid);
            } else {
              healthOf(target).markUnreachable(performance.now());
              unreachable.push(what);
            }
            for (const item of batch.items)
              owed[
                item >= 0 ? Math.floor(item / remote.stride) : Math.floor((-item - 1) / spareStride)
              ]++;
          }
        }
      }),
    );
    if (!spares || round >= spareStride) break;
    perPeer = new Map();
    const later = performance.now();
    for (let i = 0; i < n; i++) {
      while (owed[i] > 0 && nextSpare[i] < spareStride) {
        const k = nextSpare[i]++;
        const peer = spares[i * spareStride + k];
        if (peer < 0) {
          nextSpare[i] = spareStride;
          break;
        }
        if (unwritable(healthOf(remote.peers[peer]), later)) continue;
        owed[i]--;
        addCopy(perPeer, peer, sent[i]!, -(i * spareStride + k) - 1);
      }
    }
    if (perPeer.size === 0) break;
  }
  await patchSends;
  let unplaced = 0;
  for (let i = 0; i < n; i++) unplaced += owed[i];
  if (unplaced > 0) {
    failures.push(...unreachable);
    failures.push(
      `${unplaced} cop${unplaced === 1 ? 'y' : 'ies'} refused for lack of space or unreachable (full: ${[...new Set(fullPeers)].join(', ') || 'none known'}) and no further ring candidate could take ${unplaced === 1 ? 'it' : 'them'}`,
    );
  }
  const result: WriteBatchResult = { zero, hashes, acked, failures };
  if (copies) {
    result.refused = copies.refused;
    result.patchCopies = { sent: copies.sent, refused: copies.refusals };
  }
  if (placedOn) result.placedOn = placedOn;
  if (fullPeers.length > 0) result.fullPeers = [...new Set(fullPeers)];
  return result;
}

/** A peer this worker should not send copies to right now: full, or just failed to answer. */
function unwritable(health: PeerHealth, now: number): boolean {
  return health.full(now) || health.unreachable(now);
}

/** Per peer: its blocks, and where each one's ack goes (≥ 0: `acked`; < 0: -1 - position in `spares`). */
type PerPeer = Map<number, { blocks: WireBlock[]; items: number[] }>;

function addCopy(perPeer: PerPeer, peer: number, block: WireBlock, item: number): void {
  let batch = perPeer.get(peer);
  if (!batch) perPeer.set(peer, (batch = { blocks: [], items: [] }));
  batch.blocks.push(block);
  batch.items.push(item);
}

/**
 * Write one block and its record to the local store (the slot is this
 * task's). nonce and tag, when given, are copied into the record; without
 * them a sealed block's record must hold them already.
 */
function storeLocally(
  task: WriteBatchTask,
  i: number,
  slot: number,
  stored: Uint8Array,
  sealed: boolean,
  hashes: Uint32Array,
  nonce?: Uint8Array,
  tag?: Uint8Array,
): void {
  const base = slot * RECORD_SIZE;
  // A sealed block's bytes are in a buffer the next block reuses: written now.
  if (sealed) pwriteAll(dataFd, stored, slot * blockSize);
  else blockWrites.put(slot, stored);
  // Sealed blocks are read whole (the AEAD tag covers the block): only plain ones get sub-sums.
  if (!sealed) subBlocks.writeSums(slot, stored, hashes[2 * i], hashes[2 * i + 1]);
  if (sealed && nonce && tag) {
    records.set(nonce, base + OFF_NONCE);
    records.set(tag, base + OFF_TAG);
  }
  const record = new DataView(setup.records, base, RECORD_SIZE);
  fillRecord(
    record,
    { volumeId: task.volumeId, generation: task.generation, index: task.indices[i] },
    sealed ? RECORD_SEALED : 0,
    hashes[2 * i],
    hashes[2 * i + 1],
  );
  hash.stampRecord(record);
  recordWrites.put(slot);
}

/**
 * A read task in a cluster: the local copy first where there is one, then
 * the peers, hedged (hedged-read.ts): a dead, frozen or slow replica costs
 * one hedge delay for the batch, and is tried last by the next batches.
 */
async function readBatchReplicated(
  task: ReadBatchTask,
  remote: RemoteTargets,
): Promise<ReadBatchResult> {
  const result = localReads.read(task);
  // Local copies that failed their check: if a peer serves a good one, ours is bad.
  let suspect: Uint8Array | undefined;
  for (let i = 0; i < result.status.length; i++) {
    if (
      (result.status[i] === READ_CHECKSUM_MISMATCH || result.status[i] === READ_OPEN_FAILED) &&
      task.storeSlots[i] >= 0
    )
      (suspect ??= new Uint8Array(result.status.length))[i] = 1;
  }
  const sealer = task.key ? blockSealerFor(task.volumeId, task.key) : undefined;
  const read = new HedgedRead(task, remote, result, {
    hash,
    blockSize,
    sealer,
    dest: (i) => cacheBlock(task.cacheSlots[i]),
    warn: (message) => log.warn(message),
    links: workerLinks,
  });
  await read.run();
  result.fromPeers = read.fromPeers;
  result.hedges = read.hedges;
  result.repairs = read.repairs;
  if (suspect) {
    for (let i = 0; i < suspect.length; i++) if (result.status[i] !== READ_OK) suspect[i] = 0;
    result.localBad = suspect;
  }
  return result;
}
