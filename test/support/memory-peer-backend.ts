/**
 * MemoryPeerBackend: a node's blocks in RAM, with the real semantics of the
 * contract (src/dataplane/peer/backend.ts): every put is verified against its xxh64 before
 * anything is stored, capacity is enforced, deletes count what they dropped.
 * Used by tests and as an in-memory node in multi-node tests; never a mock.
 *
 * A batch is all-or-nothing here (checked whole before any block is stored),
 * which the contract allows but does not require.
 */
import { StoreFullError } from '../../src/common/errors.js';
import { hasher, type Hasher } from '../../src/dataplane/blocks/hash.js';
import { refKey, type BlockRef } from '../../src/model/block-ref.js';
import {
  checkReceived,
  type ListBlocksFilter,
  type PeerBlockBackend,
  type PeerNodeInfo,
} from '../../src/dataplane/peer/backend.js';
import type { ListedBlock, WireBlock } from '../../src/dataplane/peer/wire.js';

export interface MemoryPeerBackendOptions {
  /** Node UUID reported by info(). */
  uuid: string;
  /** Bytes of block data it will hold before refusing with StoreFullError. Default 1 GiB. */
  capacityBytes?: number;
}

export class MemoryPeerBackend implements PeerBlockBackend {
  readonly uuid: string;
  readonly capacityBytes: number;
  private readonly blocks = new Map<string, WireBlock>();
  private usedBytes = 0;
  private hash: Hasher | undefined;

  constructor(options: MemoryPeerBackendOptions) {
    this.uuid = options.uuid;
    this.capacityBytes = options.capacityBytes ?? 1024 ** 3;
  }

  get size(): number {
    return this.blocks.size;
  }

  info(): PeerNodeInfo {
    return {
      uuid: this.uuid,
      capacityBytes: this.capacityBytes,
      usedBytes: this.usedBytes,
      blocks: this.blocks.size,
    };
  }

  async putBlocks(blocks: readonly WireBlock[]): Promise<void> {
    this.hash ??= await hasher();
    // Verify the whole batch, and that it fits, before storing any of it.
    let growth = 0;
    for (const block of blocks) {
      checkReceived(this.hash, block);
      growth += block.data.length - (this.blocks.get(key(block.ref))?.data.length ?? 0);
    }
    if (this.usedBytes + growth > this.capacityBytes) {
      throw new StoreFullError(
        `memory backend ${this.uuid} is full (${this.usedBytes} of ${this.capacityBytes} bytes used, batch needs ${growth} more)`,
      );
    }
    for (const block of blocks) {
      // Copies: the received frame's memory is reused once we resolve.
      const stored: WireBlock = {
        ref: {
          volumeId: block.ref.volumeId,
          generation: block.ref.generation,
          index: block.ref.index,
        },
        flags: block.flags,
        hashLo: block.hashLo >>> 0,
        hashHi: block.hashHi >>> 0,
        nonce: Uint8Array.from(block.nonce),
        tag: Uint8Array.from(block.tag),
        data: Buffer.from(block.data),
      };
      const k = key(block.ref);
      this.usedBytes -= this.blocks.get(k)?.data.length ?? 0;
      this.blocks.set(k, stored);
      this.usedBytes += stored.data.length;
    }
  }

  /** The stored block itself (not a copy): stored blocks are never modified, only replaced or dropped. */
  async getBlock(ref: BlockRef): Promise<WireBlock | undefined> {
    return this.blocks.get(key(ref));
  }

  async hasBlocks(refs: readonly BlockRef[], hashes?: Uint32Array): Promise<boolean[]> {
    return refs.map((ref, i) => {
      const block = this.blocks.get(key(ref));
      if (!block || !hashes) return block !== undefined;
      return block.hashLo === hashes[2 * i] && block.hashHi === hashes[2 * i + 1];
    });
  }

  async deleteBlocks(refs: readonly BlockRef[]): Promise<number> {
    let dropped = 0;
    for (const ref of refs) {
      const k = key(ref);
      const block = this.blocks.get(k);
      if (!block) continue;
      this.blocks.delete(k);
      this.usedBytes -= block.data.length;
      dropped++;
    }
    return dropped;
  }

  /** Nothing to do: a put is as durable as RAM gets when it resolves. */
  async sync(): Promise<void> {}

  async *listBlocks(filter: ListBlocksFilter): AsyncIterable<ListedBlock> {
    // Map iteration tolerates changes underneath: entries deleted before they
    // are reached are skipped, and one that stays is visited exactly once.
    for (const block of this.blocks.values()) {
      if (filter.volumeId !== undefined && block.ref.volumeId !== filter.volumeId) continue;
      yield {
        ref: block.ref,
        flags: block.flags,
        hashLo: block.hashLo,
        hashHi: block.hashHi,
        length: block.data.length,
      };
    }
  }
}

function key(ref: BlockRef): string {
  return refKey(ref.volumeId, ref.generation, ref.index);
}
