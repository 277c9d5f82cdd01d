/**
 * The request table and the reply receiver without a socket: replies are
 * written out by hand (NBD protocol document layouts) and fed in whole or a
 * byte at a time; requests go into a RequestSlots whose "wire" records what
 * was sent.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import * as w from '../nbd/wire.js';
import { NbdRequestError } from './errors.js';
import { ReplyReceiver } from './reply-receiver.js';
import { RequestSlots, type Settled, type Slot } from './request-slots.js';

const SIMPLE = w.NBD_SIMPLE_REPLY_MAGIC;
const STRUCTURED = w.NBD_STRUCTURED_REPLY_MAGIC;

function simpleReply(slot: Slot, error: number, data: Buffer = Buffer.alloc(0)): Buffer {
  const head = Buffer.alloc(16);
  head.writeUInt32BE(SIMPLE, 0);
  head.writeUInt32BE(error, 4);
  head.writeUInt32BE(slot.generation, 8);
  head.writeUInt32BE(slot.index, 12);
  return Buffer.concat([head, data]);
}

function chunk(slot: Slot, flags: number, type: number, payload: Buffer): Buffer {
  const head = Buffer.alloc(20);
  head.writeUInt32BE(STRUCTURED, 0);
  head.writeUInt16BE(flags, 4);
  head.writeUInt16BE(type, 6);
  head.writeUInt32BE(slot.generation, 8);
  head.writeUInt32BE(slot.index, 12);
  head.writeUInt32BE(payload.length, 16);
  return Buffer.concat([head, payload]);
}

function u64(n: number): Buffer {
  const b = Buffer.alloc(8);
  b.writeBigUInt64BE(BigInt(n));
  return b;
}

/** A table of `count` slots and a receiver over it; `sent` lists each request's slot as it goes out. */
function harness(count = 4, maxInFlightBytes = 1 << 20, allocationContextId = 7) {
  const sent: Slot[] = [];
  const protocolErrors: string[] = [];
  const slots = new RequestSlots(count, maxInFlightBytes, (slot) => sent.push(slot));
  const receiver = new ReplyReceiver(slots, allocationContextId, (what) => {
    protocolErrors.push(what);
    receiver.stop();
  });
  const submit = (command: number, offset: number, length: number, buffer?: Buffer) => {
    const result: { value?: Settled; error?: Error; done: boolean } = { done: false };
    const promise = new Promise<Settled>((resolve, reject) =>
      slots.submit(command, 0, offset, length, buffer, resolve, reject),
    ).then(
      (value) => Object.assign(result, { value, done: true }),
      (error: Error) => Object.assign(result, { error, done: true }),
    );
    return { result, promise };
  };
  /** Feed bytes one at a time (every state boundary split) or whole. */
  const feed = (bytes: Buffer, byteAtATime = false) => {
    if (!byteAtATime) return receiver.receive(bytes);
    for (let i = 0; i < bytes.length; i++) receiver.receive(bytes.subarray(i, i + 1));
  };
  return { slots, receiver, sent, protocolErrors, submit, feed };
}

describe('nbd client: request table and reply receiver', () => {
  for (const byteAtATime of [false, true]) {
    it(`settles a simple READ reply into the caller's buffer (${byteAtATime ? 'byte by byte' : 'whole'})`, async () => {
      const h = harness();
      const dest = Buffer.alloc(8);
      const read = h.submit(w.NBD_CMD_READ, 4096, 8, dest);
      assert.equal(h.slots.inFlight, 1);
      h.feed(simpleReply(h.sent[0], 0, Buffer.from('abcdefgh')), byteAtATime);
      await read.promise;
      assert.equal(read.result.error, undefined);
      assert.equal(dest.toString(), 'abcdefgh');
      assert.equal(h.slots.inFlight, 0);
      assert.deepEqual(h.protocolErrors, []);
    });

    it(`assembles structured data and hole chunks, answered out of order (${byteAtATime ? 'byte by byte' : 'whole'})`, async () => {
      const h = harness();
      const a = Buffer.alloc(8, 0xff);
      const b = Buffer.alloc(4, 0xff);
      const readA = h.submit(w.NBD_CMD_READ, 100, 8, a);
      const readB = h.submit(w.NBD_CMD_READ, 200, 4, b);
      const [slotA, slotB] = h.sent;
      h.feed(
        Buffer.concat([
          chunk(
            slotB,
            w.NBD_REPLY_FLAG_DONE,
            w.NBD_REPLY_TYPE_OFFSET_DATA,
            Buffer.concat([u64(200), Buffer.from('wxyz')]),
          ),
          chunk(
            slotA,
            0,
            w.NBD_REPLY_TYPE_OFFSET_DATA,
            Buffer.concat([u64(104), Buffer.from('5678')]),
          ),
          chunk(
            slotA,
            0,
            w.NBD_REPLY_TYPE_OFFSET_HOLE,
            Buffer.concat([u64(100), Buffer.from([0, 0, 0, 4])]),
          ),
          chunk(slotA, w.NBD_REPLY_FLAG_DONE, w.NBD_REPLY_TYPE_NONE, Buffer.alloc(0)),
        ]),
        byteAtATime,
      );
      await Promise.all([readA.promise, readB.promise]);
      assert.deepEqual(a, Buffer.from([0, 0, 0, 0, 0x35, 0x36, 0x37, 0x38]));
      assert.equal(b.toString(), 'wxyz');
      assert.equal(h.slots.inFlight, 0);
      assert.deepEqual(h.protocolErrors, []);
    });
  }

  it('fails a request with the first error chunk once its reply is done; the connection goes on', async () => {
    const h = harness();
    const write = h.submit(w.NBD_CMD_WRITE, 0, 4, Buffer.alloc(4));
    const message = Buffer.from('full');
    const errorPayload = Buffer.alloc(6);
    errorPayload.writeUInt32BE(w.NBD_ENOSPC, 0);
    errorPayload.writeUInt16BE(message.length, 4);
    const second = Buffer.alloc(6);
    second.writeUInt32BE(w.NBD_EPERM, 0);
    h.feed(
      Buffer.concat([
        chunk(h.sent[0], 0, w.NBD_REPLY_TYPE_ERROR, Buffer.concat([errorPayload, message])),
        chunk(h.sent[0], w.NBD_REPLY_FLAG_DONE, w.NBD_REPLY_TYPE_ERROR, second),
      ]),
    );
    await write.promise;
    const err = write.result.error;
    assert.ok(err instanceof NbdRequestError);
    assert.equal(err.errno, 'ENOSPC');
    assert.equal(err.serverMessage, 'full');
    const flush = h.submit(w.NBD_CMD_FLUSH, 0, 0);
    h.feed(simpleReply(h.sent[1], 0));
    await flush.promise;
    assert.equal(flush.result.error, undefined);
    assert.deepEqual(h.protocolErrors, []);
  });

  it('gathers block status extents of the allocation context, clipped to the range', async () => {
    const h = harness();
    const status = h.submit(w.NBD_CMD_BLOCK_STATUS, 0, 3000);
    const payload = (context: number, ...pairs: number[]) => {
      const b = Buffer.alloc(4 + pairs.length * 4);
      b.writeUInt32BE(context, 0);
      pairs.forEach((n, i) => b.writeUInt32BE(n, 4 + i * 4));
      return b;
    };
    h.feed(
      Buffer.concat([
        chunk(h.sent[0], 0, w.NBD_REPLY_TYPE_BLOCK_STATUS, payload(9, 4096, 0)),
        chunk(
          h.sent[0],
          w.NBD_REPLY_FLAG_DONE,
          w.NBD_REPLY_TYPE_BLOCK_STATUS,
          payload(7, 1024, 0, 4096, w.NBD_STATE_HOLE | w.NBD_STATE_ZERO),
        ),
      ]),
      true,
    );
    await status.promise;
    assert.deepEqual(status.result.value, [
      { offset: 0, length: 1024, hole: false, zero: false },
      { offset: 1024, length: 1976, hole: true, zero: true },
    ]);
  });

  it('lets READ data land in place: dataTarget names the rest of it, landed counts it in', async () => {
    const h = harness();
    const dest = Buffer.alloc(12);
    const read = h.submit(w.NBD_CMD_READ, 0, 12, dest);
    assert.equal(h.receiver.dataTarget(1), undefined); // no reply header yet
    h.feed(Buffer.concat([simpleReply(h.sent[0], 0), Buffer.from('abcd')]), false);
    assert.equal(h.receiver.dataTarget(9), undefined); // 8 left: under the minimum asked
    const target = h.receiver.dataTarget(8)!;
    assert.equal(target.length, 8);
    assert.equal(target.byteOffset, dest.byteOffset + 4); // a view of the caller's buffer
    Buffer.from('efg').copy(target);
    h.receiver.landed(3);
    const rest = h.receiver.dataTarget(1)!;
    assert.equal(rest.length, 5);
    Buffer.from('hijkl').copy(rest);
    h.receiver.landed(5);
    await read.promise;
    assert.equal(dest.toString(), 'abcdefghijkl');
    assert.equal(h.receiver.dataTarget(1), undefined);
    assert.throws(() => h.receiver.landed(1), /landed in a READ's buffer/);
    assert.deepEqual(h.protocolErrors, []);
  });

  it('calls a reply to a slot no longer in flight (stale generation) a protocol error, once', async () => {
    const h = harness();
    const flush = h.submit(w.NBD_CMD_FLUSH, 0, 0);
    const slot = h.sent[0];
    const stale = simpleReply(slot, 0);
    h.feed(stale);
    await flush.promise;
    const again = h.submit(w.NBD_CMD_FLUSH, 0, 0);
    assert.equal(h.sent[1], slot, 'the slot is reused');
    h.feed(Buffer.concat([stale, simpleReply(slot, 0)]));
    assert.deepEqual(h.protocolErrors, ['a reply to a request it was not sent']);
    assert.equal(again.result.done, false, 'nothing after the bad reply was consumed');
    h.slots.fail(new Error('dropped'));
    await again.promise;
    assert.equal(again.result.error?.message, 'dropped');
  });

  it('admits by slots and payload bytes, in call order; fail rejects in flight, waiting and later', async () => {
    const h = harness(2, 8);
    const r1 = h.submit(w.NBD_CMD_READ, 0, 6, Buffer.alloc(6));
    const r2 = h.submit(w.NBD_CMD_READ, 8, 6, Buffer.alloc(6)); // 12 bytes would pass 8: waits
    const f = h.submit(w.NBD_CMD_FLUSH, 0, 0); // fits, but never overtakes r2
    assert.equal(h.sent.length, 1);
    h.feed(simpleReply(h.sent[0], w.NBD_EIO));
    await r1.promise;
    assert.ok(r1.result.error instanceof NbdRequestError);
    assert.equal(h.sent.length, 3, 'r2 and then the flush went out');
    assert.equal(h.sent[1].command, w.NBD_CMD_READ);
    assert.equal(h.sent[2].command, w.NBD_CMD_FLUSH);
    const r3 = h.submit(w.NBD_CMD_WRITE, 0, 4, Buffer.alloc(4)); // no free slot: waits
    assert.equal(h.sent.length, 3);
    h.slots.fail(new Error('gone'));
    await Promise.all([r2.promise, f.promise, r3.promise]);
    for (const r of [r2, f, r3]) assert.equal(r.result.error?.message, 'gone');
    assert.equal(h.slots.inFlight, 0);
    assert.equal(h.slots.idleNow, true);
    assert.equal(h.slots.failure?.message, 'gone');
  });

  it('drops the stream on a bad magic or READ data outside the range asked for', () => {
    const bad = harness();
    bad.feed(Buffer.from('deadbeef00000000', 'hex'));
    assert.match(bad.protocolErrors[0], /bad magic 0xdeadbeef/);
    const outside = harness();
    outside.submit(w.NBD_CMD_READ, 100, 4, Buffer.alloc(4));
    outside.feed(
      chunk(
        outside.sent[0],
        w.NBD_REPLY_FLAG_DONE,
        w.NBD_REPLY_TYPE_OFFSET_DATA,
        Buffer.concat([u64(102), Buffer.from('abcd')]),
      ),
    );
    assert.deepEqual(outside.protocolErrors, ['READ data outside the range asked for']);
  });
});
