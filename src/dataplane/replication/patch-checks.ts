/**
 * PatchChecks: a received patch (PUT_PATCHES, peer/wire-patches.ts) against
 * what this store holds, before anything of it is written — where it goes
 * (its base, and an older patch it replaces), its entry when the writer sent
 * only sums, the older patch's sub-blocks it keeps, and whether it all holds
 * together. DiskPeerBackend.putPatches pins the base, runs these, and writes
 * what passed.
 */
import type { Hasher } from '../blocks/hash.js';
import { wantedRunEnd, subBlockCount } from '../blocks/patches.js';
import { OFF_FLAGS, OFF_HASH_HI, OFF_HASH_LO, RECORD_SEALED } from '../blocks/record.js';
import type { LocalSlotStore } from '../blocks/slot-store.js';
import {
  SUB_BLOCK_SIZE,
  sealSubsums,
  sealedHashOf,
  setSubSum,
  subSum,
  subsumsMatch,
  treeHashInto,
} from '../blocks/sub-sums.js';
import {
  STATUS_CHECKSUM,
  STATUS_NOT_FOUND,
  STATUS_OK,
  patchSums,
  type WirePatch,
} from '../peer/wire.js';

export class PatchChecks {
  constructor(
    private readonly store: LocalSlotStore,
    private readonly hash: Hasher,
  ) {}

  /**
   * Where a patch goes here: over `base`, and — when the base it names is
   * itself a patch (a writer without a copy knows only the map's ref) —
   * keeping that patch's other sub-blocks (`via`). The named base is found
   * by ref, or, let go by every version and held for its patches (out of the
   * index), as the base of the older patch the new one replaces. Only a
   * plain whole block (or a patch holding every sub-block) is a base.
   */
  baseFor(patch: WirePatch): { base: number; via: number } | undefined {
    const { store } = this;
    const { base, older, ref } = patch;
    let slot = store.lookup(base.volumeId, base.generation, ref.index);
    if (slot === undefined && older.generation !== 0) {
      const olderSlot = store.lookup(older.volumeId, older.generation, ref.index);
      const held = olderSlot === undefined ? -1 : store.baseOf(olderSlot);
      if (held >= 0) {
        const heldRef = store.refOf(held);
        if (heldRef.volumeId === base.volumeId && heldRef.generation === base.generation)
          slot = held;
      }
    }
    if (slot === undefined) return undefined;
    let via = -1;
    if (store.needsBase(slot)) {
      via = slot;
      slot = store.baseOf(via);
      if (slot < 0) return undefined;
    } else if (base.volumeId === ref.volumeId && base.generation === ref.generation) {
      return undefined; // a whole block spilled for this very ref is no base for it
    }
    if (store.record(slot).getUint32(OFF_FLAGS, true) & RECORD_SEALED) return undefined;
    return { base: slot, via };
  }

  /**
   * A patch that carries sums (wire-patches.ts) with its whole entry: the
   * named base's sums, the sent ones for its sub-blocks, sealed with their
   * tree hash, and the named base's entry (checked against its record's
   * hash); undefined when the named base here is not the one the writer's
   * map names (another hash) or its entry is unusable.
   */
  async withEntry(
    sent: WirePatch,
    named: number,
  ): Promise<{ patch: WirePatch; namedEntry: Uint8Array } | undefined> {
    const { store, hash } = this;
    const { baseHashLo, baseHashHi, sum } = patchSums(sent.entry);
    const record = store.record(named);
    if (
      record.getUint32(OFF_HASH_LO, true) !== baseHashLo ||
      record.getUint32(OFF_HASH_HI, true) !== baseHashHi
    )
      return undefined;
    const namedEntry = new Uint8Array(store.subsumsEntrySize);
    if (
      !(await store.readSubsums(named, namedEntry)) ||
      !subsumsMatch(namedEntry, baseHashLo, baseHashHi, hash)
    )
      return undefined;
    const entry = new Uint8Array(store.subsumsEntrySize);
    let sentAt = 0;
    for (let k = 0; k < store.blockSize / SUB_BLOCK_SIZE; k++)
      setSubSum(entry, k, sent.present & (1 << k) ? sum(sentAt++) : subSum(namedEntry, k));
    const tree = new Uint32Array(2);
    treeHashInto(entry, hash, tree);
    sealSubsums(entry, tree[0], tree[1], hash);
    return { patch: { ...sent, entry }, namedEntry };
  }

  /**
   * The patch as stored over `via`'s base: the sent sub-blocks, and those of
   * `via` not sent again, read here (checked with the rest by check());
   * undefined when `via` went meanwhile.
   */
  async keeping(patch: WirePatch, via: number): Promise<WirePatch | undefined> {
    const { store } = this;
    const kept = (store.presentOf(via) & ~patch.present) >>> 0;
    if (kept === 0) return patch;
    const present = (patch.present | kept) >>> 0;
    const data = new Uint8Array(subBlockCount(present) * SUB_BLOCK_SIZE);
    let from = 0;
    let at = 0;
    try {
      for (let k = 0; k < store.blockSize / SUB_BLOCK_SIZE; k++) {
        if ((present & (1 << k)) === 0) continue;
        if (patch.present & (1 << k)) {
          data.set(patch.data.subarray(from, from + SUB_BLOCK_SIZE), at);
          from += SUB_BLOCK_SIZE;
          at += SUB_BLOCK_SIZE;
          continue;
        }
        // A run of kept sub-blocks sits together in `data` as in via's slot: one read.
        const end = wantedRunEnd(kept, kept, k);
        const bytes = (end - k) * SUB_BLOCK_SIZE;
        await store.readPart(via, k * SUB_BLOCK_SIZE, data.subarray(at, at + bytes));
        at += bytes;
        k = end - 1;
      }
    } catch {
      return undefined; // released and reused while read
    }
    return { ...patch, present, data };
  }

  /**
   * Does the patch hold together, and with its base here? STATUS_OK, or
   * STATUS_CHECKSUM (it does not), or STATUS_NOT_FOUND (the base's entry is
   * missing or stale: its sums cannot be compared, so it cannot be a base).
   * `knownBaseEntry`: the base's entry when the caller read and checked it
   * already (withEntry over a plain base), not read again.
   */
  async check(patch: WirePatch, baseSlot: number, knownBaseEntry?: Uint8Array): Promise<number> {
    const { store, hash } = this;
    const { entry, present, data } = patch;
    const tree = sealedHashOf(entry);
    const treeHash = new Uint32Array(2);
    treeHashInto(entry, hash, treeHash);
    if (
      !subsumsMatch(entry, tree.lo, tree.hi, hash) ||
      treeHash[0] !== tree.lo ||
      treeHash[1] !== tree.hi
    )
      return STATUS_CHECKSUM;
    const record = store.record(baseSlot);
    const baseEntry = knownBaseEntry ?? new Uint8Array(store.subsumsEntrySize);
    if (
      (!knownBaseEntry && !(await store.readSubsums(baseSlot, baseEntry))) ||
      !subsumsMatch(
        baseEntry,
        record.getUint32(OFF_HASH_LO, true),
        record.getUint32(OFF_HASH_HI, true),
        hash,
      )
    )
      return STATUS_NOT_FOUND;
    let at = 0;
    for (let k = 0; k < store.blockSize / SUB_BLOCK_SIZE; k++) {
      if (present & (1 << k)) {
        const sum = hash.hash32(data.subarray(at, at + SUB_BLOCK_SIZE));
        at += SUB_BLOCK_SIZE;
        if (sum !== subSum(entry, k)) return STATUS_CHECKSUM;
      } else if (subSum(baseEntry, k) !== subSum(entry, k)) {
        return STATUS_CHECKSUM;
      }
    }
    return STATUS_OK;
  }
}
