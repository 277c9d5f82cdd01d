/**
 * What a pool worker has lately seen of each peer: how fast it answers
 * gets, whether it failed or fell behind a hedge, whether it said its disk
 * is full. Each worker keeps its own (no locking, no messages); the numbers
 * steer that worker's next requests:
 *
 * - hedgeDelay(): how long a read waits on this peer before it also asks the
 *   next replica. Adaptive, like TCP's retransmission timer: the smoothed
 *   latency plus four deviations (about its p99 when latencies are near
 *   normal), at least 2x the smoothed latency, within [HEDGE_MIN_MS,
 *   HEDGE_MAX_MS]. A healthy peer is hedged rarely; a frozen one costs at
 *   most HEDGE_MAX_MS once.
 * - penalized(now): the peer failed (timeout, lost connection, an error:
 *   FAILED_PENALTY_MS) or a hedge fired on it (SLOW_PENALTY_MS); reads try
 *   it last until the penalty runs out. The penalty doubles with each spell
 *   of strikes, up to PENALTY_MAX_MS, so a frozen peer is tried first again
 *   about every PENALTY_MAX_MS, costing one hedge delay each time, and a
 *   peer that recovers is back in use within that.
 * - full(now): the peer answered a put with NO_SPACE; new copies go to the
 *   next ring candidate without asking it again for FULL_RETRY_MS.
 */
import type { PeerTarget } from '../replication/placement.js';

export const HEDGE_MIN_MS = 30;
export const HEDGE_MAX_MS = 250;
const SLOW_PENALTY_MS = 250;
const FAILED_PENALTY_MS = 1000;
const PENALTY_MAX_MS = 4000;
const FULL_RETRY_MS = 10_000;
/** How long writes place copies elsewhere after a put to a peer went unanswered. */
const UNREACHABLE_RETRY_MS = 2000;
/** Smoothing as in TCP (RFC 6298): 1/8 for the mean, 1/4 for the deviation. */
const ALPHA = 0.125;
const BETA = 0.25;

export class PeerHealth {
  /** Smoothed get latency (ms), and its mean deviation; 0 until the first sample. */
  srtt = 0;
  rttvar = 0;
  private strikes = 0;
  private penaltyUntil = 0;
  private fullUntil = 0;
  private unreachableUntil = 0;

  hedgeDelay(): number {
    if (this.srtt === 0) return HEDGE_MIN_MS;
    const p99ish = Math.max(2 * this.srtt, this.srtt + 4 * this.rttvar);
    return Math.min(HEDGE_MAX_MS, Math.max(HEDGE_MIN_MS, p99ish));
  }

  /** A get answered in `ms`. An answer that beat its own hedge delay lifts any penalty. */
  answered(ms: number): void {
    const inTime = ms <= this.hedgeDelay();
    if (this.srtt === 0) {
      this.srtt = ms;
      this.rttvar = ms / 2;
    } else {
      this.rttvar += BETA * (Math.abs(this.srtt - ms) - this.rttvar);
      this.srtt += ALPHA * (ms - this.srtt);
    }
    if (inTime) {
      this.strikes = 0;
      this.penaltyUntil = 0;
    }
  }

  /**
   * No usable answer: `failed` for a timeout, a lost or refused connection
   * or an error status; `slow` when a hedge fired on it (weaker evidence, a
   * shorter penalty). Strikes while already penalized (the rest of a
   * pipelined batch) only extend the penalty, they do not double it.
   */
  strike(now: number, kind: 'failed' | 'slow'): void {
    const base = kind === 'failed' ? FAILED_PENALTY_MS : SLOW_PENALTY_MS;
    if (now >= this.penaltyUntil) this.strikes++;
    const ms = Math.min(PENALTY_MAX_MS, base * 2 ** Math.min(this.strikes - 1, 5));
    this.penaltyUntil = Math.max(this.penaltyUntil, now + ms);
  }

  penalized(now: number): boolean {
    return now < this.penaltyUntil;
  }

  /** It refused a put for lack of space. Returns true the first time in a spell (for logging once). */
  markFull(now: number): boolean {
    const first = now >= this.fullUntil;
    this.fullUntil = now + FULL_RETRY_MS;
    return first;
  }

  full(now: number): boolean {
    return now < this.fullUntil;
  }

  /**
   * A put to it failed for want of an answer (refused, reset, timed out).
   * Writes skip it for UNREACHABLE_RETRY_MS: a killed node keeps looking
   * alive in etcd until its lease lapses (5 s), and every batch meanwhile
   * would otherwise wait on it again.
   */
  markUnreachable(now: number): void {
    this.unreachableUntil = now + UNREACHABLE_RETRY_MS;
  }

  unreachable(now: number): boolean {
    return now < this.unreachableUntil;
  }
}

const health = new Map<string, PeerHealth>();

/** This worker's view of a peer (keyed like its connection: uuid and address). */
export function healthOf(peer: PeerTarget): PeerHealth {
  const key = `${peer.uuid}@${peer.host}:${peer.port}`;
  let h = health.get(key);
  if (!h) health.set(key, (h = new PeerHealth()));
  return h;
}
