/**
 * RateMeter on a clock the test moves: the rate is the average of the last
 * whole seconds, readers do not disturb it, and it falls to 0 once traffic
 * stops.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { RateMeter } from './rate.js';

describe('RateMeter', () => {
  test('averages whole seconds over its window; the current second does not count yet', () => {
    let now = 1_000_000;
    const meter = new RateMeter(() => now);
    meter.add(5000);
    assert.equal(meter.rate(), 0, 'the second in progress is not counted');
    for (let s = 1; s <= 5; s++) {
      now += 1000;
      meter.add(5000);
    }
    // Seconds 0..4 complete, 5000 bytes each: 5000 B/s (the 5th second is still running).
    assert.equal(meter.rate(), 5000);
    assert.equal(meter.rate(), 5000, 'reading does not reset');
    assert.equal(meter.total, 30_000);
    now += 10_000;
    assert.equal(meter.rate(), 0, 'falls to 0 once traffic stops');
  });
});
