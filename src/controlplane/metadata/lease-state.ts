/**
 * The lease state machine both implementations share (see Lease in
 * store.ts): legal transitions are checked here, events are emitted here,
 * and only here, so the two stores cannot drift apart in what listeners see.
 */
import { EventEmitter } from 'node:events';
import type { Lease, LeaseState } from './store.js';

const NEXT: Record<LeaseState, readonly LeaseState[]> = {
  pending: ['alive', 'lost', 'revoked'],
  alive: ['lost', 'revoked'],
  lost: [],
  revoked: [],
};

export abstract class LeaseStateMachine extends EventEmitter implements Lease {
  private current: LeaseState = 'pending';
  abstract readonly id: string;
  abstract readonly ttlSeconds: number;

  get state(): LeaseState {
    return this.current;
  }

  /** Whether the lease has ended (lost or revoked). */
  get ended(): boolean {
    return this.current === 'lost' || this.current === 'revoked';
  }

  /**
   * Move to `next`. Returns false (and does nothing) if the lease already
   * ended: the first ending wins, so 'lost' and 'revoked' are each emitted at
   * most once and never both.
   */
  protected transition(next: LeaseState, reason?: Error): boolean {
    if (!NEXT[this.current].includes(next)) {
      if (this.ended) return false;
      throw new Error(`lease ${this.id}: illegal transition ${this.current} → ${next}`);
    }
    this.current = next;
    if (this.ended) this.onEnded(next);
    // A 'lost' with no listener must not crash the process as an unhandled
    // 'error' would: losing a lease is an expected operating event.
    if (next === 'lost') this.emit('lost', reason);
    if (next === 'revoked') this.emit('revoked');
    return true;
  }

  /** Release timers and streams when the lease reaches a terminal state. */
  protected onEnded(_state: LeaseState): void {}

  abstract keepAliveOnce(): Promise<void>;
  abstract revoke(): Promise<void>;
}
