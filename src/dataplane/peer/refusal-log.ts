/**
 * RefusalLog: a refused peer is logged once, not once per connection
 * attempt. A misconfigured node retries every few milliseconds to 2 s
 * (reconnect-backoff.ts), and a hostile one as fast as it likes; either
 * would flood the log.
 *
 * Contract: the first refusal of a key (a remote IP, a peer address) is
 * logged at warn with its reason; later ones within `intervalMs` are only
 * counted, and the next line after the interval says how many were
 * suppressed. A different reason for the same key is logged at once (the
 * operator fixed one thing and hit the next). At most `maxKeys` keys are
 * remembered; beyond, the oldest are forgotten (and may be logged again).
 */
import type { Logger } from '../../common/log.js';

interface Entry {
  reason: string;
  loggedAt: number;
  suppressed: number;
}

export class RefusalLog {
  private readonly entries = new Map<string, Entry>();

  constructor(
    private readonly intervalMs = 60_000,
    private readonly maxKeys = 1024,
  ) {}

  /** Note one refusal of `key`; logs it unless it was logged recently for the same reason. */
  note(log: Logger, key: string, reason: string, message: string, now = Date.now()): void {
    const entry = this.entries.get(key);
    if (entry && entry.reason === reason && now - entry.loggedAt < this.intervalMs) {
      entry.suppressed++;
      return;
    }
    const suppressed = entry?.suppressed ?? 0;
    this.entries.delete(key);
    if (this.entries.size >= this.maxKeys) {
      const oldest = this.entries.keys().next().value;
      if (oldest !== undefined) this.entries.delete(oldest);
    }
    this.entries.set(key, { reason, loggedAt: now, suppressed: 0 });
    log.warn({ refused: key, reason, ...(suppressed > 0 ? { suppressed } : {}) }, message);
  }
}
