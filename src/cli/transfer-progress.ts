/**
 * The progress line of a long transfer (torusctl block dump / load): one line
 * on stderr, rewritten in place at most every 250 ms, with bytes done of the
 * total, the rate, and the time left. Only when stderr is a terminal: in a
 * pipe, a log or a test it prints nothing, so output stays clean.
 */
import { formatSize } from '../common/size.js';

const REDRAW_MS = 250;

export class TransferProgress {
  private readonly startedAt = performance.now();
  private lastDrawn = 0;
  private drawn = false;

  constructor(
    private readonly label: string,
    private readonly total: number,
    /** Where the line goes; null: nowhere (the default unless stderr is a terminal). */
    private readonly out: NodeJS.WritableStream | null = process.stderr.isTTY
      ? process.stderr
      : null,
  ) {}

  /** `done` bytes of the total are through. Cheap when nothing is drawn. */
  update(done: number): void {
    if (!this.out) return;
    const now = performance.now();
    if (now - this.lastDrawn < REDRAW_MS) return;
    this.lastDrawn = now;
    this.out.write(`\r\x1b[K${this.line(done, (now - this.startedAt) / 1000)}`);
    this.drawn = true;
  }

  /** Clear the line, so what is printed next starts clean. */
  end(): void {
    if (this.out && this.drawn) this.out.write('\r\x1b[K');
    this.drawn = false;
  }

  /** "dump vol: 512 MiB / 1 GiB, 220.3 MiB/s, 3 s left" */
  line(done: number, seconds: number): string {
    const rate = seconds > 0 ? done / seconds : 0;
    const left = rate > 0 ? Math.ceil((this.total - done) / rate) : undefined;
    return (
      `${this.label}: ${formatSize(done)} / ${formatSize(this.total)}` +
      `, ${formatSize(Math.round(rate))}/s` +
      (left === undefined ? '' : `, ${formatDuration(left)} left`)
    );
  }
}

/** 75 → "1 min 15 s". */
export function formatDuration(seconds: number): string {
  if (seconds < 60) return `${seconds} s`;
  const minutes = Math.floor(seconds / 60);
  if (minutes < 60) return `${minutes} min ${seconds % 60} s`;
  return `${Math.floor(minutes / 60)} h ${minutes % 60} min`;
}
