/**
 * ReplicatedIntents: a cluster volume's FLUSH through the replicated intent
 * log (docs/cluster-flush.md), the writer's side. Like a single node's
 * VolumeIntents it notes the ranges written since the last FLUSH and, at
 * the FLUSH, captures their current content as records (sealed for an
 * encrypted volume); instead of one local log it appends them to every
 * holder the volume's record names — this node's own holder log among them
 * — and acknowledges once all of them have them on disk. The version is
 * committed later (periodic, cache pressure, a holder's log filling), and
 * each commit's record says which records it holds (IntentState), so a
 * writer that takes over replays exactly the rest.
 *
 * Records are numbered 1, 2, … under the writer's lock epoch, in capture
 * order; one capture at a time per volume, so holders receive them in
 * order. A FLUSH whose append any holder refuses or does not answer in time
 * commits a version instead (today's path: a dead holder costs speed, not
 * safety), and the writer chooses its holders again without the one that
 * failed: the commit names the new set, and no record is appended to it
 * before that commit has landed (a writer that dies meanwhile is taken over
 * from the holders the record names). With no other node to choose, FLUSHes
 * commit for HOLDER_BACKOFF_MS before trying the same holders again. A writer
 * that lost its lock is refused by a sealed holder (FENCED), and its commit
 * by etcd: the FLUSH fails, as before.
 */
import { assert } from '../../common/assert.js';
import type { Logger } from '../../common/log.js';
import type { IntentState } from '../../model/intent-state.js';
import type { Hasher } from '../blocks/hash.js';
import type { IntentCovered, IntentRecord } from '../peer/wire.js';
import {
  INTENT_RECORD_HEADER_BYTES,
  INTENT_SEALED,
  INTENT_ZEROS,
  MAX_INTENT_LENGTH,
  encodeIntentHeader,
  intentAad,
  intentPayloadBytes,
  stampIntentRecord,
} from '../peer/wire.js';
import type { VolumeState } from '../volume/volume-state.js';
import { CaptureQueue } from './capture-queue.js';
import { IntentSealer } from './seal.js';
import type { CommitStart, FlushLog, IntentSource } from './volume-intents.js';
import { MAX_LOGGED_BYTES_PER_FLUSH, MAX_LOGGED_RANGES } from './volume-intents.js';
import { WrittenRanges, readContent } from './written-ranges.js';

/** After a holder failed an append, FLUSHes commit versions for this long before trying it again. */
export const HOLDER_BACKOFF_MS = 5_000;
/** How long a FLUSH waits for a holder's append before committing instead. */
export const APPEND_TIMEOUT_MS = 1_000;

/** One holder of the volume's records, as the writer reaches it: its own log in-process, or a peer. */
export interface IntentChannel {
  /** The holder's node uuid. */
  readonly node: string;
  /** Records made by this process (their checksums right); a peer is sent their bytes. */
  append(records: IntentRecord[], timeoutMs: number): Promise<{ pressure: boolean }>;
  covered(covered: IntentCovered): Promise<void>;
}

export interface ReplicatedIntentsSetup {
  /** The writer's lock epoch: its records' token. */
  token: number;
  /** Every holder, this node's first. */
  holders: IntentChannel[];
  /** Holders chosen again without `failed` (live nodes only); the same set when there is no other. */
  rechoose?: (failed: string) => IntentChannel[];
  hash: Hasher;
  log: Logger;
}

const DONE = Promise.resolve();

export class ReplicatedIntents implements FlushLog {
  private readonly ranges = new WrittenRanges(MAX_LOGGED_BYTES_PER_FLUSH, MAX_LOGGED_RANGES);
  private readonly token: number;
  private holders: IntentChannel[];
  private nodes: string[];
  private readonly rechoose: ((failed: string) => IntentChannel[]) | undefined;
  /** The holders commitStarting() wrote into the record being committed. */
  private committingNodes: string[] | undefined;
  private readonly hash: Hasher;
  private readonly log: Logger;
  private readonly sealer: IntentSealer | undefined;
  private nextSeq = 1;
  private captures = 0;
  /** FLUSHes captured one at a time; one arriving while a capture waits joins it. */
  private readonly captureQueue = new CaptureQueue(() => this.capture());
  private lastDurable: Promise<void> = DONE;
  private scratch: Buffer = Buffer.alloc(0);
  /** What the record of the last version that landed says (the state before this writer, at first). */
  private committedState: IntentState | undefined;
  /** No appends before this time (Date.now()): a holder failed one. */
  private skipUntil = 0;
  private pressing = false;

  constructor(
    private readonly state: VolumeState,
    private readonly source: IntentSource,
    setup: ReplicatedIntentsSetup,
    /** The intent state of the version opened (the record's). */
    opened: IntentState | undefined,
  ) {
    assert(setup.holders.length > 0, 'a replicated intent log without holders');
    this.token = setup.token;
    this.holders = setup.holders;
    this.nodes = setup.holders.map((h) => h.node);
    this.rechoose = setup.rechoose;
    this.hash = setup.hash;
    this.log = setup.log.child({ volume: state.name });
    this.sealer = state.key ? new IntentSealer(state.key) : undefined;
    this.committedState = opened;
    // The next commit names this writer's holders even if it holds no block (see version-commit.ts).
    state.intentState = this.stateAt(1);
    state.intentPending = true;
  }

  get captured(): number {
    return this.captures;
  }

  noteWrite(offset: number, length: number): void {
    this.ranges.note(offset, length, false);
  }

  noteZeros(offset: number, length: number): void {
    this.ranges.note(offset, length, true);
  }

  flush(): Promise<void> {
    return this.captureQueue.flush();
  }

  /** A full commit starts: it holds every record numbered so far (their content was read before it). */
  commitStarting(): CommitStart {
    this.state.intentState = this.stateAt(this.nextSeq);
    this.committingNodes = this.nodes;
    return { capture: this.captures, nextSeq: this.nextSeq };
  }

  /** The commit that started at `start` landed: holders may drop what it holds. */
  committed(start: CommitStart): void {
    const named = this.committingNodes ?? this.nodes;
    this.committedState = { epoch: this.token, seq: start.nextSeq, holders: named };
    if (named === this.nodes) {
      this.state.intentPending = false;
    }
    const covered = { volumeId: this.state.id, token: this.token, seq: start.nextSeq };
    for (const holder of this.holders)
      holder
        .covered(covered)
        .catch((err: unknown) =>
          this.log.debug({ holder: holder.node, err: String(err) }, 'INTENT_COVERED not delivered'),
        );
  }

  /** A commit of spilled blocks only may lack records' bytes: its record keeps the last bound. */
  beforePartialCommit(): Promise<void> {
    this.state.intentState = this.committedState ?? this.stateAt(1);
    return DONE;
  }

  close(): void {}

  private stateAt(seq: number): IntentState {
    return { epoch: this.token, seq, holders: this.nodes };
  }

  private commitInstead(): Promise<void> {
    return this.source.commit();
  }

  /** Log the noted ranges' content on every holder (one capture at a time); resolves when durable. */
  private async capture(): Promise<void> {
    // intentPending: the record does not name the current holders yet, so nothing is appended to them.
    if (this.ranges.overflow || this.state.intentPending || Date.now() < this.skipUntil) {
      this.ranges.reset();
      return this.commitInstead();
    }
    if (this.ranges.empty) return this.lastDurable;
    const taken = this.ranges.take();
    const capture = ++this.captures;
    this.scratch = await readContent(this.source, taken, this.scratch);
    const records = this.encode(taken.offsets, taken.lengths, taken.zeros);
    assert(capture === this.captures, 'two captures of one volume at once');
    this.lastDurable = this.append(records);
    return this.lastDurable;
  }

  /** The records of one capture, each its own view into one buffer, numbered from nextSeq. */
  private encode(offsets: number[], lengths: number[], zeros: boolean[]): IntentRecord[] {
    const flagsOf = (i: number) => (zeros[i] ? INTENT_ZEROS : this.sealer ? INTENT_SEALED : 0);
    let total = 0;
    for (let i = 0; i < offsets.length; i++)
      for (let done = 0; done < lengths[i]; done += MAX_INTENT_LENGTH)
        total +=
          INTENT_RECORD_HEADER_BYTES +
          intentPayloadBytes(flagsOf(i), Math.min(MAX_INTENT_LENGTH, lengths[i] - done));
    const out = Buffer.allocUnsafe(total);
    const records: IntentRecord[] = [];
    let at = 0;
    let data = 0;
    for (let i = 0; i < offsets.length; i++) {
      for (let done = 0; done < lengths[i]; done += MAX_INTENT_LENGTH) {
        const length = Math.min(MAX_INTENT_LENGTH, lengths[i] - done);
        const flags = flagsOf(i);
        const fields = {
          volumeId: this.state.id,
          flags,
          token: this.token,
          seq: this.nextSeq++,
          offset: offsets[i] + done,
          length,
        };
        const size = encodeIntentHeader(out, at, fields);
        if (flags !== INTENT_ZEROS) {
          const plain = this.scratch.subarray(data, data + length);
          const payloadAt = at + INTENT_RECORD_HEADER_BYTES;
          if (this.sealer) this.sealer.seal(plain, out, payloadAt, intentAad(out, at));
          else plain.copy(out, payloadAt);
          data += length;
        }
        stampIntentRecord(out, at, this.hash);
        records.push({
          ...fields,
          bytes: out.subarray(at, at + size),
          payload: out.subarray(at + INTENT_RECORD_HEADER_BYTES, at + size),
        });
        at += size;
      }
    }
    assert(at === total, 'intent records: encoded bytes differ from those counted');
    return records;
  }

  /** Every holder has the records on disk; if one does not, a commit holds them instead. */
  private async append(records: IntentRecord[]): Promise<void> {
    const answers = await Promise.allSettled(
      this.holders.map((h) => h.append(records, APPEND_TIMEOUT_MS)),
    );
    const failed = answers.findIndex((a) => a.status === 'rejected');
    if (failed >= 0) {
      const reason = (answers[failed] as PromiseRejectedResult).reason as Error;
      const node = this.holders[failed].node;
      const next = this.rechoose?.(node) ?? this.holders;
      const changed = next.map((h) => h.node).join() !== this.nodes.join();
      if (changed) {
        // The commit below names the new holders; nothing is appended to them before it lands.
        this.holders = next;
        this.nodes = next.map((h) => h.node);
        this.state.intentPending = true;
      } else {
        this.skipUntil = Date.now() + HOLDER_BACKOFF_MS;
      }
      this.log.warn(
        { holder: node, err: reason?.message ?? String(reason), holders: this.nodes },
        changed
          ? "intent holder did not take a FLUSH's records: committing instead, with new holders"
          : `intent holder did not take a FLUSH's records: FLUSHes commit versions for ${HOLDER_BACKOFF_MS / 1000} s`,
      );
      return this.commitInstead();
    }
    if (answers.some((a) => a.status === 'fulfilled' && a.value.pressure)) this.press();
  }

  /** A holder's log is past half full: commit, so its records can go. */
  private press(): void {
    if (this.pressing) return;
    this.pressing = true;
    this.source
      .commit()
      .catch(() => undefined) // the commit's failure is its own to report; retried later
      .finally(() => {
        this.pressing = false;
      });
  }
}
