/**
 * ServedConnection's request counting: a request ended that was never begun
 * is a bug in a session, and is stopped by an assertion rather than letting
 * the in-flight counts go negative (which would lift the read limits).
 */
import assert from 'node:assert/strict';
import { Socket } from 'node:net';
import { test } from 'node:test';
import { InvariantError } from '../../common/assert.js';
import { ServedConnection } from './served-connection.js';

class CountingOnly extends ServedConnection {
  protected readonly pump = (): void => undefined;
  protected readonly onEnd = (): void => undefined;
  protected stopReading(): void {}
  protected finish(): void {}
  begin(cost: number): void {
    this.begun(cost);
  }
  end(cost: number): void {
    this.ended(cost);
  }
}

const LIMITS = { maxInflightRequests: 4, maxInflightBytes: 1 << 20, maxQueuedReplyBytes: 1 << 20 };

test('begun and ended requests balance; ending one too many is an InvariantError', () => {
  const connection = new CountingOnly(new Socket(), LIMITS, 'serving');
  connection.begin(4096);
  connection.begin(0);
  assert.equal(connection.inflightRequests, 2);
  connection.end(0);
  connection.end(4096);
  assert.equal(connection.inflightRequests, 0);
  assert.throws(() => connection.end(0), InvariantError);
});
