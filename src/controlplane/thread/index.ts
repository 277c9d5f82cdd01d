/**
 * The cluster's metadata store with its etcd client on a thread of its own
 * (see README.md in this folder).
 */
export {
  openThreadedMetadataStore,
  ThreadedMetadataStore,
  type ThreadedStoreOptions,
} from './threaded-store.js';
