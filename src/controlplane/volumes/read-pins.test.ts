/**
 * Read pins against both metadata stores: a pin names the version the
 * record named when it was checked, moves when a commit lands between the
 * pin and the check, is listed until released, and goes with its lease.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { quietLogger } from '../../../test/support/peer-helpers.js';
import { testStores, withStore } from '../../../test/support/test-stores.js';
import { VolumeCatalog } from './catalog.js';
import { listReadPins, pinCurrentVersion } from './read-pins.js';

const root = (n: number) => ({ generation: n, hashLo: n, hashHi: n });
const options = { ttlSeconds: 5, log: quietLogger() };

for (const kind of testStores()) {
  describe(`read pins: ${kind.name}`, { skip: kind.skip, concurrency: true }, () => {
    it(
      'pins the committed version, is listed until released, and stays put when newer versions commit',
      { timeout: 10_000 },
      withStore(kind, async (meta) => {
        const catalog = new VolumeCatalog(meta);
        await catalog.create({
          name: 'vol',
          size: 1 << 20,
          blockSize: 64 * 1024,
          encrypted: false,
        });
        const v1 = await catalog.commitVersion(await catalog.get('vol'), 1, root(1));
        const { pin, versioned } = await pinCurrentVersion(meta, catalog, 'vol', 'node-r', options);
        assert.deepEqual(versioned, v1);
        await catalog.commitVersion(v1, 2, root(2));
        const pins = await listReadPins(meta);
        assert.equal(pins.length, 1);
        assert.deepEqual(
          {
            node: pins[0].node,
            volume: pins[0].volume,
            id: pins[0].id,
            generation: pins[0].generation,
            root: pins[0].root,
            size: pins[0].size,
            blockSize: pins[0].blockSize,
          },
          {
            node: 'node-r',
            volume: 'vol',
            id: v1.record.id,
            generation: 1,
            root: root(1),
            size: 1 << 20,
            blockSize: 64 * 1024,
          },
        );
        assert.ok(pin.held);
        await pin.release();
        assert.equal(pin.held, false);
        assert.deepEqual(await listReadPins(meta), [], 'released with its lease');
      }),
    );

    it(
      'a commit between the pin and the check moves the pin to the newer version',
      { timeout: 10_000 },
      withStore(kind, async (meta) => {
        const catalog = new VolumeCatalog(meta);
        await catalog.create({
          name: 'busy',
          size: 1 << 20,
          blockSize: 64 * 1024,
          encrypted: false,
        });
        const v1 = await catalog.commitVersion(await catalog.get('busy'), 1, root(1));
        // The writer commits right after the reader's first read of the record.
        const get = catalog.get.bind(catalog);
        let reads = 0;
        catalog.get = async (name) => {
          const got = await get(name);
          if (++reads === 1) await catalog.commitVersion(v1, 2, root(2));
          return got;
        };
        const { pin, versioned } = await pinCurrentVersion(
          meta,
          catalog,
          'busy',
          'node-r',
          options,
        );
        assert.equal(
          versioned.record.generation,
          2,
          'opens the version the record names after the pin',
        );
        assert.deepEqual(
          (await listReadPins(meta)).map((p) => p.generation),
          [2],
          'and that is the version pinned',
        );
        assert.equal(reads, 3, 'read, pin, check (moved), check again');
        await pin.release();
      }),
    );

    it(
      'two readers on one node pin separately; a missing volume is NotFound',
      { timeout: 10_000 },
      withStore(kind, async (meta) => {
        const catalog = new VolumeCatalog(meta);
        await catalog.create({
          name: 'shared',
          size: 1 << 20,
          blockSize: 64 * 1024,
          encrypted: false,
        });
        const one = await pinCurrentVersion(meta, catalog, 'shared', 'node-r', options);
        const two = await pinCurrentVersion(meta, catalog, 'shared', 'node-r', options);
        assert.equal((await listReadPins(meta)).length, 2);
        await one.pin.release();
        assert.equal((await listReadPins(meta)).length, 1);
        await two.pin.release();
        await assert.rejects(
          pinCurrentVersion(meta, catalog, 'absent', 'node-r', options),
          /no volume named "absent"/,
        );
      }),
    );
  });
}
