/** Unit tests of the controller's pure parts: parameters, capacity rounding, paging tokens, ids, capabilities, endpoints. */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { status } from '@grpc/grpc-js';
import { capacityRangeOf, DEFAULT_VOLUME_BYTES, satisfies, sizeFor } from './capacity.js';
import { capabilityProblem } from './capabilities.js';
import { CsiError } from './csi-error.js';
import { parseEndpoint } from './endpoint.js';
import { snapshotOfId, volumeOfId } from './ids.js';
import { decodeToken, encodeToken, paginate } from './paging.js';
import { parseParameters } from './parameters.js';

function code(fn: () => unknown): string {
  try {
    fn();
  } catch (err) {
    assert.ok(err instanceof CsiError, String(err));
    return status[err.code];
  }
  return 'OK';
}

describe('StorageClass parameters', () => {
  test('known ones parsed, provisioner keys ignored', () => {
    assert.deepEqual(
      parseParameters(
        { replication: '3', encrypted: 'true', fsType: 'xfs', 'csi.storage.k8s.io/pvc/name': 'x' },
        { cluster: true },
      ),
      { replication: 3, encrypted: true, fsType: 'xfs' },
    );
    assert.deepEqual(parseParameters(undefined, { cluster: true }), { encrypted: false });
    assert.deepEqual(parseParameters({ replication: '1' }, { cluster: false }), {
      encrypted: false,
    });
  });
  test('unknown or malformed: INVALID_ARGUMENT naming the parameter', () => {
    for (const [parameters, name] of [
      [{ replicas: '2' }, 'replicas'],
      [{ replication: '0' }, 'replication'],
      [{ replication: '9' }, 'replication'],
      [{ replication: '2.5' }, 'replication'],
      [{ encrypted: 'True' }, 'encrypted'],
      [{ fsType: 'ext3' }, 'fsType'],
    ] as const) {
      assert.throws(
        () => parseParameters(parameters, { cluster: true }),
        (err: CsiError) => err.code === status.INVALID_ARGUMENT && err.message.includes(name),
      );
    }
    assert.equal(
      code(() => parseParameters({ replication: '2' }, { cluster: false })),
      'INVALID_ARGUMENT',
    );
  });
});

describe('capacity', () => {
  const block = 65536;
  test('rounded up to the block size; zero is the default; the limit caps a default', () => {
    assert.equal(sizeFor(capacityRangeOf({ required_bytes: '1' }), block), block);
    assert.equal(sizeFor(capacityRangeOf({ required_bytes: String(block) }), block), block);
    assert.equal(sizeFor(capacityRangeOf({ required_bytes: String(block + 1) }), block), 2 * block);
    assert.equal(sizeFor(capacityRangeOf(undefined), block), DEFAULT_VOLUME_BYTES);
    assert.equal(
      sizeFor(capacityRangeOf({ required_bytes: '0', limit_bytes: '0' }), block),
      DEFAULT_VOLUME_BYTES,
    );
    assert.equal(
      sizeFor(capacityRangeOf({ limit_bytes: String(3 * block + 5) }), block),
      3 * block,
    );
  });
  test('absurd sizes are OUT_OF_RANGE, malformed ones INVALID_ARGUMENT', () => {
    assert.equal(
      code(() => capacityRangeOf({ required_bytes: '9223372036854775807' })),
      'OUT_OF_RANGE',
    );
    assert.equal(
      code(() => capacityRangeOf({ required_bytes: String(2 ** 50 + 1) })),
      'OUT_OF_RANGE',
    );
    assert.equal(
      code(() => capacityRangeOf({ required_bytes: '10', limit_bytes: '5' })),
      'OUT_OF_RANGE',
    );
    assert.equal(
      code(() => sizeFor(capacityRangeOf({ required_bytes: '10', limit_bytes: '20' }), block)),
      'OUT_OF_RANGE',
    );
    assert.equal(
      code(() => sizeFor(capacityRangeOf({ limit_bytes: '100' }), block)),
      'OUT_OF_RANGE',
    );
    assert.equal(
      code(() => capacityRangeOf({ required_bytes: '-5' })),
      'INVALID_ARGUMENT',
    );
    assert.equal(
      code(() => capacityRangeOf({ required_bytes: '1e9' })),
      'INVALID_ARGUMENT',
    );
  });
  test('an existing size satisfies a range when within it', () => {
    assert.ok(satisfies(10, { required: 10, limit: 0 }));
    assert.ok(satisfies(10, { required: 0, limit: 10 }));
    assert.ok(!satisfies(10, { required: 11, limit: 0 }));
    assert.ok(!satisfies(10, { required: 0, limit: 9 }));
  });
});

describe('paging tokens', () => {
  const items = ['c', 'a', 'e', 'b', 'd'];
  test('pages follow on from the token, in id order, the last with no token', () => {
    const first = paginate(items, (x) => x, 2, '');
    assert.deepEqual(first.entries, ['a', 'b']);
    const second = paginate(items, (x) => x, 2, first.next_token);
    assert.deepEqual(second.entries, ['c', 'd']);
    const third = paginate(items, (x) => x, 2, second.next_token);
    assert.deepEqual(third, { entries: ['e'], next_token: '' });
    assert.deepEqual(paginate(items, (x) => x, 0, undefined).entries, ['a', 'b', 'c', 'd', 'e']);
  });
  test('an entry removed between pages does not shift the next page', () => {
    const first = paginate(items, (x) => x, 2, '');
    assert.deepEqual(paginate(['c', 'd', 'e'], (x) => x, 2, first.next_token).entries, ['c', 'd']);
  });
  test('tokens round-trip; foreign ones are ABORTED; negative max_entries INVALID_ARGUMENT', () => {
    assert.equal(decodeToken(encodeToken('pvc-1@snap')), 'pvc-1@snap');
    for (const bad of ['garbage', 't1.', 't1.!!', 't2.cHZj', 't1.cHZj='])
      assert.equal(
        code(() => decodeToken(bad)),
        'ABORTED',
        bad,
      );
    assert.equal(
      code(() => paginate(items, (x) => x, -1, '')),
      'INVALID_ARGUMENT',
    );
  });
});

describe('ids', () => {
  test('volume and snapshot ids that cannot be ours are undefined', () => {
    assert.equal(volumeOfId('pvc-1'), 'pvc-1');
    for (const id of ['', '../x', 'a b', 'vol@snap', '-x', 'x'.repeat(129)])
      assert.equal(volumeOfId(id), undefined, id);
    assert.deepEqual(snapshotOfId('pvc-1@snapshot-2'), { volume: 'pvc-1', snapshot: 'snapshot-2' });
    for (const id of ['pvc-1', '@s', 'v@', 'v@s@t', 'v@torus-csi-deleted'])
      assert.equal(snapshotOfId(id), undefined, id);
  });
});

describe('capabilities', () => {
  const mode = (m: string, type: 'mount' | 'block' = 'mount') => ({
    access_type: type,
    [type]: {},
    access_mode: { mode: m },
  });
  test('single-node modes and ROX are honoured; RWX refused with the reason', () => {
    for (const m of [
      'SINGLE_NODE_WRITER',
      'SINGLE_NODE_READER_ONLY',
      'SINGLE_NODE_SINGLE_WRITER',
      'SINGLE_NODE_MULTI_WRITER',
      'MULTI_NODE_READER_ONLY',
    ])
      assert.equal(capabilityProblem(mode(m), 'c'), undefined, m);
    assert.match(
      capabilityProblem(mode('MULTI_NODE_MULTI_WRITER'), 'c')!,
      /not cluster filesystems/,
    );
    assert.match(capabilityProblem(mode('MULTI_NODE_SINGLE_WRITER', 'block'), 'c')!, /write lock/);
    assert.match(
      capabilityProblem({ access_mode: { mode: 'SINGLE_NODE_WRITER' } }, 'c')!,
      /access_type/,
    );
    assert.match(capabilityProblem({ access_type: 'mount', mount: {} }, 'c')!, /access_mode/);
  });
});

describe('endpoints', () => {
  test('unix sockets, explicit tcp, nothing guessed', () => {
    assert.deepEqual(parseEndpoint('unix:///csi/csi.sock'), {
      kind: 'unix',
      path: '/csi/csi.sock',
    });
    assert.deepEqual(parseEndpoint('/csi/csi.sock'), { kind: 'unix', path: '/csi/csi.sock' });
    assert.deepEqual(parseEndpoint('tcp://127.0.0.1:10000'), {
      kind: 'tcp',
      host: '127.0.0.1',
      port: 10000,
    });
    for (const bad of ['', 'localhost:9000', 'unix://relative.sock', 'http://x:1', 'tcp://x'])
      assert.throws(() => parseEndpoint(bad), /endpoint/, bad);
  });
});
