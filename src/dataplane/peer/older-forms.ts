/**
 * OlderForms: a client's memory of the request forms a peer refused as a
 * node from before them (TBP grows by new opcodes and longer payloads; an
 * older node answers BAD_REQUEST). A refused form is asked the older way on
 * that connection from then on — the refused request included — and tried
 * again on the next connection, which may reach an upgraded node.
 */
import type { Logger } from '../../common/log.js';
import { PeerStatusError } from './errors.js';
import { STATUS_BAD_REQUEST } from './wire.js';

export class OlderForms<Connection extends object> {
  /** Per form, the connection whose peer refused it. */
  private readonly refused = new Map<string, Connection>();

  constructor(
    /** The client's current connection (the one a reply that arrives now came on). */
    private readonly current: () => Connection | undefined,
    private readonly log: Logger,
  ) {}

  /** `newer()`, or `older()` where the peer refused `form` (now or before, on this connection). */
  ask<T>(form: string, newer: () => Promise<T>, older: () => Promise<T>): Promise<T> {
    const conn = this.current();
    if (conn !== undefined && this.refused.get(form) === conn) return older();
    return newer().catch((err: unknown) => {
      if (!(err instanceof PeerStatusError) || err.status !== STATUS_BAD_REQUEST) throw err;
      // The reply came on the current connection (a lost one rejects otherwise).
      const now = this.current();
      if (now && this.refused.get(form) !== now) {
        this.refused.set(form, now);
        this.log.info({ reason: err.message }, `peer refuses ${form} (a node from before it)`);
      }
      return older();
    });
  }
}
