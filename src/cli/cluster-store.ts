/** Opening a cluster's etcd for the binaries, with a message that names the endpoints. */
import { MetadataUnavailableError } from '../controlplane/metadata/errors.js';
import { openEtcdMetadataStore } from '../controlplane/metadata/etcd/index.js';
import type { MetadataStore } from '../controlplane/metadata/store.js';
import type { EtcdConfig } from './common-flags.js';

/** Connect and check etcd answers (within the store's call deadline, 5 s). */
export async function openClusterStore(etcd: EtcdConfig): Promise<MetadataStore> {
  try {
    return await openEtcdMetadataStore({ endpoints: etcd.endpoints, tls: etcd.tls });
  } catch (err) {
    if (err instanceof MetadataUnavailableError) throw new MetadataUnavailableError(`cannot reach etcd at ${etcd.endpoints}: ${err.message}`, { cause: err });
    throw err;
  }
}

/** Run `work` with the cluster's store, closed afterwards whatever happens. */
export async function withClusterStore<T>(etcd: EtcdConfig, work: (meta: MetadataStore) => Promise<T>): Promise<T> {
  const meta = await openClusterStore(etcd);
  try {
    return await work(meta);
  } finally {
    await meta.close();
  }
}
