import assert from 'node:assert/strict';
import { test } from 'node:test';
import { InvariantError } from '../../common/assert.js';
import { SlotUse, SlotUses } from './slot-uses.js';

test('moves keep the counts: every slot starts free, each move shifts one slot', () => {
  const uses = new SlotUses(4);
  assert.equal(uses.count(SlotUse.Free), 4);
  uses.move(2, SlotUse.Free, SlotUse.Allocated, 'allocating');
  uses.move(2, SlotUse.Allocated, SlotUse.Bound, 'binding');
  uses.move(3, SlotUse.Free, SlotUse.SetAside, 'setting aside');
  assert.equal(uses.of(2), SlotUse.Bound);
  assert.deepEqual(
    [SlotUse.Free, SlotUse.Allocated, SlotUse.Bound, SlotUse.SetAside].map((u) => uses.count(u)),
    [2, 0, 1, 1],
  );
  uses.assertAccounted(2, 1);
});

test('a move from the wrong use fails, naming what the slot is, and changes nothing', () => {
  const uses = new SlotUses(2);
  assert.throws(
    () => uses.move(1, SlotUse.Bound, SlotUse.Releasing, 'releasing'),
    (err: Error) =>
      err instanceof InvariantError &&
      /releasing slot 1, which is free, not bound/.test(err.message),
  );
  assert.equal(uses.of(1), SlotUse.Free);
  assert.equal(uses.count(SlotUse.Releasing), 0);
});

test('counts that disagree with the free slots or the ref index fail', () => {
  const uses = new SlotUses(3);
  uses.move(0, SlotUse.Free, SlotUse.Bound, 'binding');
  assert.throws(() => uses.assertAccounted(3, 1), InvariantError);
  assert.throws(() => uses.assertAccounted(2, 0), InvariantError);
  uses.assertAccounted(2, 1);
});
