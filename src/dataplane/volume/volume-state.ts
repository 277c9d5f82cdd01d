/**
 * VolumeState: one volume's block bookkeeping on this node — its committed
 * map, which blocks are cached, dirty, spilled or trimmed — shared by its
 * cache paths (volume.ts) and its write-back (write-back.ts, dirty-blocks.ts,
 * version-commit.ts). The services a volume runs on are declared here too.
 */
import type { Logger } from '../../common/log.js';
import type { LocalSlotStore } from '../blocks/slot-store.js';
import type { BlockCache } from '../cache/block-cache.js';
import type { DataPool } from '../pool/data-pool.js';
import type { BlockPlacement } from '../replication/block-placement.js';
import type { BlockCopies } from '../replication/durability.js';
import type { IntentLog } from '../intent-log/intent-log.js';
import type { FlushLog } from '../intent-log/volume-intents.js';
import type { IntentState } from '../../model/intent-state.js';
import type { BlockMap } from './block-map.js';
import type { Ancestor } from '../../model/lineage.js';
import type { MapRoot } from '../../model/map-root.js';

export interface VolumeIdentity {
  id: number;
  name: string;
  size: number;
  blockSize: number;
  encrypted: boolean;
  /** A clone's ancestors (model/lineage.ts); absent or empty for a volume that owns all its blocks. */
  ancestors?: readonly Ancestor[];
}

export interface VolumeServices {
  store: LocalSlotStore;
  cache: BlockCache;
  pool: DataPool;
  log: Logger;
  /**
   * Where blocks go and where to read them: on a cluster its ClusterBlocks;
   * a node alone has a SingleNodePlacement (every block in `store`).
   */
  placement: BlockPlacement;
  /**
   * Commit a version's root to metadata (compare-and-swap on the previous
   * generation); `mapHeight` is the height of the tree the root tops (the
   * record's `mapHeight`). Resolves with the highest generation a snapshot
   * or clone of the volume holds, read in the commit's own transaction
   * (nothing: none holds any): the version's own superseded blocks at or
   * below it are kept.
   */
  commit(
    volume: VolumeIdentity,
    generation: number,
    root: MapRoot | undefined,
    mapHeight: number,
    /** A cluster volume's replicated intent log: what the version holds of it (absent: unchanged). */
    intent?: IntentState,
  ): Promise<number | void>;
  /**
   * A single node's intent log: a FLUSH is made durable there and the
   * version committed in the background. Absent (a cluster): a FLUSH
   * commits a version.
   */
  intentLog?: IntentLog;
  /** Spilled blocks past which a spill round commits them (write-back.ts SPILLED_COMMIT_BLOCKS; tests set fewer). */
  spilledCommitBlocks?: number;
  onChecksumError?(volume: string, block: number, reason: string): void;
  onFlush?(volume: string, blocks: number, seconds: number): void;
  /** A spill round stored `blocks` dirty blocks in `seconds` (write-back.ts). */
  onSpill?(volume: string, blocks: number, seconds: number): void;
  /** How long a volume must go without a request before its patches are folded (a node's: patch-folds.ts FOLD_QUIET_MS; 0 or absent: only when asked). */
  foldQuietMs?: number;
  /** Patches folded into `blocks` whole blocks in `seconds` (patch-folds.ts). */
  onFold?(volume: string, blocks: number, seconds: number): void;
}

/** A block stored for the next version and not yet committed: its hash, and where its copies are. */
export interface SpilledBlock extends BlockCopies {
  hashLo: number;
  hashHi: number;
  /** Stored as a patch (else whole: no base for a patch of its own ref, patch-plan.ts). */
  patch?: boolean;
}

export class VolumeState {
  readonly id: number;
  readonly name: string;
  readonly blockSize: number;
  readonly placement: BlockPlacement;
  /** The committed version's generation; the next one is generation + 1. */
  generation: number;
  /** Block index → cache slot, for blocks of this volume in the cache. */
  readonly table = new Map<number, number>();
  /** Blocks written since the last flush started. */
  readonly dirty = new Set<number>();
  /** Whole blocks trimmed or zeroed since the last commit started. */
  readonly pendingHoles = new Set<number>();
  /**
   * Blocks spilled to the store for the next version (generation + 1) and not
   * yet committed, by index. Never holds an index that is also in pendingHoles.
   */
  readonly spilled = new Map<number, SpilledBlock>();
  /**
   * Make the Dirty slots of these blocks whole where they were written in
   * part (block-loads.ts complete()); volume.ts sets it. The write-back
   * calls it before storing: the store writes blocks whole.
   */
  completeBlocks: (indices: readonly number[]) => Promise<void> = async () => undefined;
  /** Is block `index`'s completion (a read of its stored copy) under way? volume.ts sets it. */
  isCompleting: (index: number) => boolean = () => false;
  /**
   * The volume's fast FLUSH: a single node's intent log (volume.ts sets it)
   * or a cluster's replicated one (Volume.replicateFlushes); a commit
   * settles its captures.
   */
  intents: FlushLog | undefined;
  /** What the next commit's record says of the replicated intent log (absent: unchanged). */
  intentState: IntentState | undefined;
  /** The record does not name this writer's holders yet: the next commit lands even with no block changed. */
  intentPending = false;
  /**
   * Blocks a worker could not store as patches (a sub-sums entry missing or
   * stale): stored whole until then (patch-plan.ts), forgotten once they are.
   */
  readonly patchRefused = new Set<number>();
  /**
   * The pool write of a store round while it runs (dirty-blocks.ts): a read
   * that finds a partly written slot Flushing waits for it, then reads the
   * rest from what was stored.
   */
  storing: Promise<unknown> | undefined;
  /**
   * The highest generation a snapshot or clone held when this volume last
   * committed (its own blocks at or below it stay for them); undefined
   * before its first commit here.
   */
  heldThrough: number | undefined;
  /** A commit round runs (write-back.ts); it may have taken its dirty blocks already. */
  committing = false;
  /**
   * Set when a commit's fate is unknown (CommitOutcomeUnknownError): the
   * version may have landed, so nothing more is stored under its generation
   * (or any: every spill and commit fails with this) until the volume is
   * opened again from what the metadata store holds.
   */
  storeRefused: Error | undefined;

  constructor(
    readonly identity: VolumeIdentity,
    generation: number,
    readonly map: BlockMap,
    /** The volume's data key when it is encrypted. */
    readonly key: Uint8Array | null,
    readonly services: VolumeServices,
  ) {
    this.id = identity.id;
    this.name = identity.name;
    this.blockSize = identity.blockSize;
    this.generation = generation;
    this.placement = services.placement;
  }

  /** Does the block read as zeros, going by what is not in the cache? */
  isHole(index: number): boolean {
    return this.pendingHoles.has(index) || (!this.spilled.has(index) && !this.map.isPresent(index));
  }
}
