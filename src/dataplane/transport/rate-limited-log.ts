/**
 * RateLimitedLog: one log line per reason and interval, however many
 * times the event happens. A client opening thousands of sockets a second
 * must not turn each refusal into a log line (the log would be the next
 * thing it exhausts), yet the operator must still learn that it happens,
 * from whom, and how often.
 *
 * Contract: the first event of a reason is logged at once; later ones within
 * `intervalMs` are counted, and when the interval is over one line says how
 * many there were (with the fields of the last one). Nothing is logged for an
 * interval without events. dispose() logs what is still counted and stops
 * the timer; the timer never keeps the process alive.
 */
import type { Logger } from '../../common/log.js';

type Level = 'info' | 'warn';

interface Pending {
  level: Level;
  count: number;
  fields: Record<string, unknown>;
}

export class RateLimitedLog {
  private readonly pending = new Map<string, Pending>();
  /** Reasons logged within the current interval (their next event is only counted). */
  private readonly quiet = new Set<string>();
  private timer: NodeJS.Timeout | undefined;

  constructor(
    private readonly log: Logger,
    private readonly intervalMs = 1000,
  ) {}

  /** An event: `message` is also the key that rate-limits it. */
  note(level: Level, message: string, fields: Record<string, unknown>): void {
    if (!this.quiet.has(message)) {
      this.quiet.add(message);
      this.log[level](fields, message);
      this.arm();
      return;
    }
    const p = this.pending.get(message);
    if (p) {
      p.count++;
      p.fields = fields;
    } else this.pending.set(message, { level, count: 1, fields });
  }

  /** Log what is counted and stop. */
  dispose(): void {
    clearTimeout(this.timer);
    this.timer = undefined;
    this.flush();
  }

  private arm(): void {
    if (this.timer) return;
    this.timer = setTimeout(() => {
      this.timer = undefined;
      // Reasons with nothing counted go quiet no longer; the others stay
      // quiet for one more interval, summarised now.
      const counted = this.flush();
      this.quiet.clear();
      for (const message of counted) this.quiet.add(message);
      if (counted.length > 0) this.arm();
    }, this.intervalMs);
    this.timer.unref();
  }

  private flush(): string[] {
    const counted = [...this.pending.keys()];
    for (const [message, { level, count, fields }] of this.pending)
      this.log[level](
        { ...fields, times: count, withinMs: this.intervalMs },
        `${message} (${count} more)`,
      );
    this.pending.clear();
    return counted;
  }
}
