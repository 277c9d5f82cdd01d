/**
 * The embedded metadata store: single-node Torus keeps its metadata in its
 * data directory (`<data-dir>/meta`), with the same contract as etcd.
 */
import { ensureDirectory } from '../../../common/dirs.js';
import { EmbeddedMetadataStore, type EmbeddedStoreOptions } from './embedded-store.js';

export {
  EmbeddedMetadataStore,
  type EmbeddedStoreOptions,
  type EmbeddedStoreStats,
} from './embedded-store.js';

/**
 * Open (creating if needed) the store in `dir`. Fails with ConflictError if
 * another live process — or this one — already has it open.
 */
export async function openEmbeddedMetadataStore(
  dir: string,
  options: EmbeddedStoreOptions = {},
): Promise<EmbeddedMetadataStore> {
  await ensureDirectory(dir, 'metadata directory');
  return EmbeddedMetadataStore.open(dir, options);
}
