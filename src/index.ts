/**
 * The public entry point of the package: `import { Torus } from 'torus'`.
 * Only what is exported here is the library's API (src/library/README.md
 * states its contract); everything else under src/ is internal and may
 * change without notice.
 */
export {
  Torus,
  openNbdVolume,
  type ClusterOptions,
  type CommonOptions,
  type EtcdOptions,
  type SingleNodeOptions,
} from './library/torus.js';
export type { NbdAddress } from './dataplane/nbd-client/client.js';
export { VolumeHandle, type OpenVolumeOptions } from './library/volume-handle.js';
export type { StreamOptions } from './library/volume-streams.js';
export type { Extent } from './library/block-device.js';
export type { ResizeInfo, SnapshotInfo, VolumeInfo } from './library/volume-operations.js';
export { HandleClosedError, ReadOnlyVolumeError } from './library/errors.js';
export { ConflictError, IoError, NotFoundError, UsageError } from './common/errors.js';
export { formatSize, parseSize } from './common/size.js';
export { peerTlsFilesIn, type PeerTlsFiles } from './dataplane/peer/peer-tls.js';
