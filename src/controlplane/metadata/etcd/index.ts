/**
 * The etcd-backed metadata store for clusters.
 */
import { EtcdMetadataStore, type EtcdStoreOptions } from './etcd-store.js';

export { EtcdMetadataStore, type EtcdStoreOptions } from './etcd-store.js';
export { parseEndpoints, type EtcdTlsFiles } from './endpoints.js';

/**
 * Connect and check that etcd answers (one read under the call deadline), so
 * a wrong endpoint fails here with MetadataUnavailableError rather than at
 * the first real use.
 */
export async function openEtcdMetadataStore(options: EtcdStoreOptions): Promise<EtcdMetadataStore> {
  const store = new EtcdMetadataStore(options);
  try {
    await store.currentRevision();
  } catch (err) {
    await store.close();
    throw err;
  }
  return store;
}
