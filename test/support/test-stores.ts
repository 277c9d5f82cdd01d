/**
 * Test support: the two MetadataStore implementations, so lock and catalog
 * tests run one body against both — the embedded store in a temp directory
 * and a real etcd (test/etcd-server.ts) with a key prefix per store.
 *
 * Call testStores() once at the top level of a test file: it registers the
 * hooks that start etcd before the file's tests and, after them, close every
 * store still open, stop etcd and remove the temp directories.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before } from 'node:test';
import { etcdMissing, startEtcd, type EtcdServer } from '../etcd-server.js';
import { logger } from '../../src/common/log.js';
import { openEmbeddedMetadataStore } from '../../src/controlplane/metadata/embedded/index.js';
import { openEtcdMetadataStore } from '../../src/controlplane/metadata/etcd/index.js';
import type { MetadataStore } from '../../src/controlplane/metadata/store.js';

export interface TestStoreKind {
  name: 'embedded' | 'etcd';
  /** Why this kind cannot run here (etcd not installed), for describe's skip. */
  skip?: string;
  open(): Promise<MetadataStore>;
}

/** Lease-lost warnings are expected in these tests; keep the output to failures. */
const quiet = logger('metadata').child({}, { level: 'error' });

export function testStores(): TestStoreKind[] {
  const skipEtcd = etcdMissing();
  let etcd: EtcdServer | undefined;
  let nextPrefix = 0;
  const dirs: string[] = [];
  const stores: MetadataStore[] = [];

  // The embedded store's lease timers are unref'd (a lease alone never keeps a
  // process up): with no etcd child to hold the event loop, a test that only
  // waits for a lease to lapse would leave it empty and the file would end mid-test.
  let holdLoop: NodeJS.Timeout | undefined;
  before(async () => {
    holdLoop = setInterval(() => undefined, 60_000);
    if (!skipEtcd) etcd = await startEtcd();
  });
  after(async () => {
    clearInterval(holdLoop);
    await Promise.all(stores.map((store) => store.close().catch(() => undefined)));
    await etcd?.stop();
    await Promise.all(dirs.map((dir) => rm(dir, { recursive: true, force: true })));
  });

  const embedded: TestStoreKind = {
    name: 'embedded',
    async open() {
      const dir = await mkdtemp(join(tmpdir(), 'torus-locks-'));
      dirs.push(dir);
      const store = await openEmbeddedMetadataStore(dir, { log: quiet });
      stores.push(store);
      return store;
    },
  };
  const etcdKind: TestStoreKind = {
    name: 'etcd',
    ...(skipEtcd ? { skip: skipEtcd } : {}),
    async open() {
      if (!etcd) throw new Error('etcd was not started');
      const store = await openEtcdMetadataStore({
        endpoints: etcd.endpoint,
        prefix: `/torus-locks-${process.pid}-${nextPrefix++}/`,
        callTimeoutMs: 2000,
        log: quiet,
      });
      stores.push(store);
      return store;
    },
  };
  return [embedded, etcdKind];
}

/** Run `body` with a fresh store of `kind`, closed whatever happens. */
export function withStore(
  kind: TestStoreKind,
  body: (meta: MetadataStore) => Promise<void>,
): () => Promise<void> {
  return async () => {
    const meta = await kind.open();
    try {
      await body(meta);
    } finally {
      await meta.close();
    }
  };
}
