/**
 * What the volume operations need only when they work on a catalog directly
 * (a cluster's etcd, or a single node's metadata store with no torusd
 * running): the metadata stores, the catalogs, locks and pins, keys.
 *
 * VolumeOperations imports this module when such an operation first runs,
 * never at load: torusctl loads the library for every command, and these
 * modules were two thirds of its start-up (~0.2 s of ~90 modules) even for
 * a dump or load that a running torusd serves.
 */
export { readClusterBinding } from '../controlplane/membership/node-identity.js';
export { DEFAULT_REPLICATION, initRing, readRing } from '../controlplane/membership/ring-store.js';
export { openEmbeddedMetadataStore } from '../controlplane/metadata/embedded/index.js';
export { VolumeCatalog } from '../controlplane/volumes/catalog.js';
export { cloneVolume } from '../controlplane/volumes/clones.js';
export { forgetIntentLog } from '../controlplane/volumes/intent-forget.js';
export { assertNoReaders, listReadPins } from '../controlplane/volumes/read-pins.js';
export { assertNoSnapshotReaders } from '../controlplane/volumes/snapshot-pins.js';
export { SnapshotCatalog, snapshotStatus } from '../controlplane/volumes/snapshots.js';
export { describeHolder, listVolumeLocks } from '../controlplane/locks/index.js';
export { KeyRing } from '../dataplane/crypto/key-ring.js';
export { openClusterStore } from './cluster-store.js';
export { clusterSnapshotSpace, readPoolSpace, singleNodeSpace } from './pool-space.js';
export { resizeOffline, resizeOnCluster } from './volume-resize-offline.js';

/** This module's exports, as VolumeOperations receives them. */
export type CatalogModules = typeof import('./catalog-modules.js');
