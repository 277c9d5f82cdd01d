/**
 * ReadAhead's pattern rules on their own: a window that opens on the first
 * sequential read, doubles while the pattern holds up to MAX_WINDOW, never
 * asks for a block twice, stops at the volume's end, and is dropped by a
 * read anywhere else or when the volume's reads are not remote.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { INITIAL_WINDOW, MAX_WINDOW, ReadAhead } from './read-ahead.js';

const BS = 65536;

function rig(blocks = 100_000, remote = true) {
  const fetched: number[] = [];
  const ahead = new ReadAhead(
    BS,
    () => blocks,
    () => remote,
    (index) => fetched.push(index),
  );
  return { ahead, fetched };
}

describe('ReadAhead', () => {
  it('fetches nothing for a first or a random read', () => {
    const { ahead, fetched } = rig();
    ahead.note(0, 4096);
    ahead.note(10 * BS, 4096);
    ahead.note(3 * BS, BS);
    assert.deepEqual(fetched, []);
  });

  it('opens a window past a sequential read and doubles it while the pattern holds', () => {
    const { ahead, fetched } = rig();
    ahead.note(0, BS);
    ahead.note(BS, BS); // sequential: blocks 2..5
    assert.deepEqual(fetched, [2, 3, 4, 5]);
    ahead.note(2 * BS, BS); // window 8 past block 3: 6..10, not 2..5 again
    assert.deepEqual(fetched.slice(4), [6, 7, 8, 9, 10]);
    fetched.length = 0;
    for (let i = 3; i < 40; i++) ahead.note(i * BS, BS);
    assert.equal(new Set(fetched).size, fetched.length, 'no block asked for twice');
    assert.ok(
      Math.max(...fetched) - 40 <= MAX_WINDOW,
      'never more than MAX_WINDOW past the reader',
    );
  });

  it('sizes the first window by the read when that is larger', () => {
    const { ahead, fetched } = rig();
    const MiB = 16 * BS;
    ahead.note(0, MiB);
    ahead.note(MiB, MiB); // 16-block reads: 16 blocks ahead, from block 32
    assert.equal(fetched.length, Math.max(INITIAL_WINDOW, 16));
    assert.equal(fetched[0], 32);
  });

  it('stops at the last block and starts afresh after a jump', () => {
    const { ahead, fetched } = rig(6);
    ahead.note(0, BS);
    ahead.note(BS, BS);
    ahead.note(2 * BS, BS);
    assert.deepEqual(fetched, [2, 3, 4, 5]);
    fetched.length = 0;
    ahead.note(0, BS); // a new pass: not sequential
    ahead.note(BS, BS);
    assert.deepEqual(fetched, [2, 3, 4, 5], 'the same blocks again on a new pass');
  });

  it('does nothing when the volume reads no block from peers', () => {
    const { ahead, fetched } = rig(100, false);
    for (let i = 0; i < 10; i++) ahead.note(i * BS, BS);
    assert.deepEqual(fetched, []);
  });
});
