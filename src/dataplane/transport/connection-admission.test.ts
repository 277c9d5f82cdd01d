/**
 * ConnectionAdmission's rules, without sockets: who is refused, whose
 * handshake is shed, and that an established connection is never displaced.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { logger } from '../../common/log.js';
import {
  ConnectionAdmission,
  type AdmissionLimits,
  type AdmissionOutcome,
  type AdmissionTicket,
} from './connection-admission.js';

function setUp(limits: AdmissionLimits) {
  const outcomes: AdmissionOutcome[] = [];
  const shed: string[] = [];
  const admission = new ConnectionAdmission(limits, logger('test'), 'test connection', (o) =>
    outcomes.push(o),
  );
  const open = (client: string, label: string): AdmissionTicket | undefined =>
    admission.admit(client, () => shed.push(label));
  return { admission, outcomes, shed, open };
}

describe('ConnectionAdmission', { timeout: 10_000 }, () => {
  test('a full handshake cap sheds the oldest handshake, never an established connection', () => {
    const { admission, shed, open } = setUp({
      maxConnections: 10,
      maxHandshakes: 4,
      maxPerClient: 10,
    });
    const established = open('10.0.0.9', 'established')!;
    admission.establish(established);
    for (let i = 0; i < 4; i++) open(`10.0.0.${i}`, `idle${i}`);
    assert.deepEqual(shed, []);
    open('10.0.0.5', 'newcomer');
    assert.deepEqual(shed, ['idle0']);
    assert.equal(admission.handshakingCount, 4);
    assert.equal(admission.establishedCount, 1);
    admission.dispose();
  });

  test('one address sheds only its own handshakes once it holds its share', () => {
    const { admission, shed, open } = setUp({
      maxConnections: 100,
      maxHandshakes: 8,
      maxPerClient: 100,
    });
    open('10.0.0.2', 'other');
    for (let i = 0; i < 2; i++) open('10.0.0.1', `mine${i}`); // share = 8 / 4
    open('10.0.0.1', 'mine2');
    assert.deepEqual(shed, ['mine0']);
    admission.dispose();
  });

  test('per-client cap: established ones refuse the next, handshakes make room', () => {
    const { admission, outcomes, shed, open } = setUp({
      maxConnections: 100,
      maxHandshakes: 100,
      maxPerClient: 2,
    });
    open('unix', 'a');
    open('unix', 'b');
    open('unix', 'c'); // at the cap, both handshaking: the oldest (a) goes
    assert.deepEqual(shed, ['a']);
    const d = open('unix', 'd')!; // b goes
    admission.establish(d);
    const e = open('unix', 'e')!; // d established + c handshaking: c goes
    assert.deepEqual(shed, ['a', 'b', 'c']);
    admission.establish(e);
    assert.equal(open('unix', 'f'), undefined, 'two established: refused');
    assert.deepEqual(outcomes, ['shed', 'shed', 'shed', 'refused-per-client']);
    assert.ok(open('10.0.0.1', 'other address'));
    admission.release(d);
    assert.ok(open('unix', 'g'), 'a closed connection frees its place');
    admission.dispose();
  });

  test('a total full of established connections refuses at once; handshakes fit in what is left', () => {
    const { admission, outcomes, shed, open } = setUp({
      maxConnections: 3,
      maxHandshakes: 3,
      maxPerClient: 3,
    });
    admission.establish(open('10.0.0.1', 'e1')!);
    admission.establish(open('10.0.0.2', 'e2')!);
    open('10.0.0.3', 'h1');
    open('10.0.0.4', 'h2'); // one place left: h1 is shed for it
    assert.deepEqual(shed, ['h1']);
    assert.equal(admission.handshakingCount, 1);
    admission.dispose();
    const full = setUp({ maxConnections: 1, maxHandshakes: 1, maxPerClient: 1 });
    full.admission.establish(full.open('10.0.0.1', 'only')!);
    assert.equal(full.open('10.0.0.2', 'late'), undefined);
    assert.deepEqual(full.outcomes, ['refused-full']);
    full.admission.dispose();
    assert.deepEqual(outcomes, ['shed']);
  });

  test('release is idempotent and a shed ticket stays released', () => {
    const { admission, open } = setUp({ maxConnections: 1, maxHandshakes: 1, maxPerClient: 1 });
    const first = open('10.0.0.1', 'first')!;
    open('10.0.0.2', 'second');
    assert.equal(first.state, 'released');
    admission.release(first);
    admission.establish(first);
    assert.equal(admission.establishedCount, 0);
    assert.equal(admission.handshakingCount, 1);
    admission.dispose();
  });

  test('limits must be positive integers', () => {
    assert.throws(
      () =>
        new ConnectionAdmission(
          { maxConnections: 0, maxHandshakes: 1, maxPerClient: 1 },
          logger('test'),
          'x',
        ),
      /maxConnections must be a positive integer/,
    );
  });
});
