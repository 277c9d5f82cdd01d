/**
 * The default cache size: a share of the machine's memory or of the
 * container's limit, bounded; and the cgroup limit read from /proc and
 * /sys as cgroup v1 and v2 lay them out.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import {
  CLIENT_CACHE,
  STORAGE_NODE_CACHE,
  cgroupMemoryLimit,
  directWritesWanted,
  readMemoryFacts,
  sizeCache,
} from './memory-budget.js';

const MiB = 2 ** 20;
const GiB = 2 ** 30;

describe('sizeCache', () => {
  test('a storage node takes a quarter of the machine', () => {
    assert.deepEqual(sizeCache({ totalBytes: 8 * GiB }, STORAGE_NODE_CACHE), {
      bytes: 2 * GiB,
      reason: '25 % of 8 GiB memory',
    });
  });

  test('a cgroup limit below the machine is what counts, and the log says so', () => {
    assert.deepEqual(
      sizeCache({ totalBytes: 24 * GiB, cgroupLimitBytes: 4 * GiB }, STORAGE_NODE_CACHE),
      { bytes: GiB, reason: '25 % of 4 GiB cgroup limit' },
    );
  });

  test('a cgroup limit above the machine changes nothing', () => {
    assert.equal(
      sizeCache({ totalBytes: 2 * GiB, cgroupLimitBytes: 64 * GiB }, STORAGE_NODE_CACHE).bytes,
      512 * MiB,
    );
  });

  test('bounded by the floor and the ceiling', () => {
    const small = sizeCache(
      { totalBytes: 24 * GiB, cgroupLimitBytes: 128 * MiB },
      STORAGE_NODE_CACHE,
    );
    assert.equal(small.bytes, 64 * MiB);
    assert.match(small.reason, /^floor \(25 % of 128 MiB cgroup limit is less\)$/);
    const big = sizeCache({ totalBytes: 256 * GiB }, STORAGE_NODE_CACHE);
    assert.equal(big.bytes, 4 * GiB);
    assert.match(big.reason, /^ceiling/);
  });

  test('whole MiB, even from an odd limit', () => {
    const { bytes } = sizeCache(
      { totalBytes: 24 * GiB, cgroupLimitBytes: 1000 * MiB + 12345 },
      STORAGE_NODE_CACHE,
    );
    assert.equal(bytes, 250 * MiB);
  });

  test('a client takes a sixteenth, at most its old 256 MiB', () => {
    assert.equal(sizeCache({ totalBytes: 24 * GiB }, CLIENT_CACHE).bytes, 256 * MiB);
    assert.deepEqual(sizeCache({ totalBytes: 2 * GiB }, CLIENT_CACHE), {
      bytes: 128 * MiB,
      reason: '6.25 % of 2 GiB memory',
    });
  });
});

describe('cgroupMemoryLimit', () => {
  const files = (entries: Record<string, string>) => (path: string) => entries[path];

  test("v1: the hierarchical limit of the memory controller's cgroup", () => {
    const read = files({
      '/proc/self/cgroup': '5:devices:/\n4:memory:/kubepods/pod1/c:x\n0::/',
      '/sys/fs/cgroup/memory/kubepods/pod1/c:x/memory.stat':
        'cache 0\nhierarchical_memory_limit 1073741824\nhierarchical_memsw_limit 9223372036854771712',
    });
    assert.equal(cgroupMemoryLimit(read), GiB);
  });

  test('v1 without a limit (2^63 rounded to a page) is no limit', () => {
    const read = files({
      '/proc/self/cgroup': '4:memory:/\n',
      '/sys/fs/cgroup/memory/memory.stat': 'hierarchical_memory_limit 9223372036854771712',
    });
    assert.equal(cgroupMemoryLimit(read), undefined);
  });

  test('v2: the smallest memory.max of the cgroup and its ancestors; "max" is no limit', () => {
    const read = files({
      '/proc/self/cgroup': '0::/system.slice/torusd.service',
      '/sys/fs/cgroup/system.slice/torusd.service/memory.max': 'max',
      '/sys/fs/cgroup/system.slice/memory.max': '2147483648',
    });
    assert.equal(cgroupMemoryLimit(read), 2 * GiB);
    assert.equal(
      cgroupMemoryLimit(
        files({ '/proc/self/cgroup': '0::/a', '/sys/fs/cgroup/a/memory.max': 'max' }),
      ),
      undefined,
    );
  });

  test('nothing readable: no limit', () => {
    assert.equal(
      cgroupMemoryLimit(() => undefined),
      undefined,
    );
  });

  test('on this machine the facts are plausible', () => {
    const facts = readMemoryFacts();
    assert.ok(facts.totalBytes > 0);
    if (facts.cgroupLimitBytes !== undefined) assert.ok(facts.cgroupLimitBytes > 0);
  });
});

describe('directWritesWanted', () => {
  test('auto: around the page cache under a cgroup limit below the machine, through it otherwise', () => {
    assert.deepEqual(
      directWritesWanted('auto', { totalBytes: 24 * GiB, cgroupLimitBytes: 512 * MiB }),
      { on: true, reason: 'a 512 MiB cgroup limit' },
    );
    assert.equal(directWritesWanted('auto', { totalBytes: 24 * GiB }).on, false);
    // A limit above the machine's memory limits nothing.
    assert.equal(
      directWritesWanted('auto', { totalBytes: 2 * GiB, cgroupLimitBytes: 64 * GiB }).on,
      false,
    );
  });

  test('on and off are what the operator said, limit or not', () => {
    assert.deepEqual(directWritesWanted('on', { totalBytes: 24 * GiB }), {
      on: true,
      reason: '--direct-writes on',
    });
    assert.equal(
      directWritesWanted('off', { totalBytes: 24 * GiB, cgroupLimitBytes: 512 * MiB }).on,
      false,
    );
  });
});
