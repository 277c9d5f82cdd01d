/**
 * WrittenRanges: the byte ranges of a volume written or zeroed since a
 * FLUSH last captured them — what an intent log (a single node's,
 * volume-intents.ts, or the cluster's replicated one,
 * replicated-intents.ts) logs at the next FLUSH. Parallel arrays, no
 * object per write; a write contained in or extending the last range of
 * its kind grows that range (a rewrite, a sequential run). Past its limits
 * it gives up (`overflow`): that FLUSH commits a version instead, where
 * whole blocks cost no more than logging.
 */

/** Ranges taken by a capture, and the data bytes among them (zeros carry none). */
export interface TakenRanges {
  offsets: number[];
  lengths: number[];
  zeros: boolean[];
  dataBytes: number;
}

/** What a capture reads the current content through (a client read's view of the volume). */
export interface ContentSource {
  read(offset: number, dest: Buffer): Promise<void>;
}

export class WrittenRanges {
  private offsets: number[] = [];
  private lengths: number[] = [];
  private zeros: boolean[] = [];
  private dataBytes = 0;
  /** More than the limits were noted since the last capture: the next FLUSH commits instead. */
  overflow = false;

  constructor(
    private readonly maxDataBytes: number,
    private readonly maxRanges: number,
  ) {}

  get empty(): boolean {
    return this.offsets.length === 0;
  }

  note(offset: number, length: number, zeros: boolean): void {
    if (length === 0 || this.overflow) return;
    const last = this.offsets.length - 1;
    if (last >= 0 && this.zeros[last] === zeros) {
      const end = this.offsets[last] + this.lengths[last];
      if (offset >= this.offsets[last] && offset <= end) {
        const grow = Math.max(0, offset + length - end);
        this.lengths[last] += grow;
        if (!zeros) this.dataBytes += grow;
        this.checkLimits();
        return;
      }
    }
    this.offsets.push(offset);
    this.lengths.push(length);
    this.zeros.push(zeros);
    if (!zeros) this.dataBytes += length;
    this.checkLimits();
  }

  /** The ranges noted so far, handed over; noting starts afresh. */
  take(): TakenRanges {
    const taken = {
      offsets: this.offsets,
      lengths: this.lengths,
      zeros: this.zeros,
      dataBytes: this.dataBytes,
    };
    this.offsets = [];
    this.lengths = [];
    this.zeros = [];
    this.dataBytes = 0;
    return taken;
  }

  /** Forget everything noted, the overflow too (a commit is covering it all). */
  reset(): void {
    this.overflow = false;
    this.clear();
  }

  private checkLimits(): void {
    if (this.dataBytes > this.maxDataBytes || this.offsets.length > this.maxRanges) {
      this.overflow = true;
      this.clear();
    }
  }

  private clear(): void {
    this.offsets.length = 0;
    this.lengths.length = 0;
    this.zeros.length = 0;
    this.dataBytes = 0;
  }
}

/**
 * Read the current content of the taken data ranges into `scratch` (grown
 * when short), back to back in range order; returns the buffer holding it.
 */
export async function readContent(
  source: ContentSource,
  taken: TakenRanges,
  scratch: Buffer,
): Promise<Buffer> {
  if (scratch.length < taken.dataBytes)
    scratch = Buffer.alloc(Math.max(taken.dataBytes, 64 * 1024));
  const reads: Promise<void>[] = [];
  let at = 0;
  for (let i = 0; i < taken.offsets.length; i++) {
    if (taken.zeros[i]) continue;
    reads.push(source.read(taken.offsets[i], scratch.subarray(at, at + taken.lengths[i])));
    at += taken.lengths[i];
  }
  await Promise.all(reads);
  return scratch;
}
