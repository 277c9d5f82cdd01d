import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { settleAll } from './settle-all.js';

describe('settleAll', () => {
  it('resolves once every promise has', async () => {
    await settleAll([Promise.resolve(1), new Promise((r) => setTimeout(r, 5))]);
    await settleAll([]);
  });

  it('rejects only after the slower ones settle, with the first failure in order', async () => {
    let slowDone = false;
    const slow = new Promise<void>((resolve) =>
      setTimeout(() => {
        slowDone = true;
        resolve();
      }, 20),
    );
    const first = Promise.reject(new Error('first'));
    const second = Promise.reject(new Error('second'));
    await assert.rejects(settleAll([slow, first, second]), /first/);
    assert.equal(slowDone, true, 'the slow one finished before the rejection');
  });
});
