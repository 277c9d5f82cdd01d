/**
 * torusctl key rotate --new-key-file NEW [--key-file OLD] [-C ETCD]: wrap
 * every encrypted volume's and snapshot's data key with a new master key
 * (dataplane/crypto/key-rotation.ts). No block is rewritten.
 *
 * Each record changes by its own compare-and-swap, wrapped key and
 * fingerprint together, so a rotation stopped half way leaves every volume
 * readable with the key its record's fingerprint names; run it again with
 * the same two files to finish.
 *
 * Single node: offline, on the data directory's metadata store (its lock:
 * refused while torusd runs). The running node keeps its volume keys in
 * memory and its key file open to the old key; it must restart with the new
 * one anyway, so stopping it first costs nothing and needs no admin call.
 * Cluster: on etcd, nodes running. A node that writes a volume commits on
 * top of the re-wrapped record (only the key fields changed, not the
 * version: VolumeOwnership merges as after a resize); restart each node with
 * the new key file, since one still holding the old refuses to open a
 * rotated volume (WrongMasterKeyError, naming both fingerprints).
 */
import { join } from 'node:path';
import { ConflictError } from '../common/errors.js';
import { openEmbeddedMetadataStore } from '../controlplane/metadata/embedded/index.js';
import type { MetadataStore } from '../controlplane/metadata/store.js';
import { readClusterBinding } from '../controlplane/membership/node-identity.js';
import { ALL_SNAPSHOTS, volumeKey } from '../controlplane/volumes/catalog.js';
import { MasterKeyMissingError } from '../dataplane/crypto/errors.js';
import { rewrapRecord, type KeyedRecord } from '../dataplane/crypto/key-rotation.js';
import {
  createMasterKeyFile,
  loadMasterKey,
  type LoadedMasterKey,
} from '../dataplane/crypto/master-key.js';
import { openClusterStore } from '../library/cluster-store.js';
import { ArgumentError } from './args.js';
import type { Command } from './commands.js';
import { dataDirFlag, etcdFlags, etcdOrSingleNode, keyFileFlag } from './common-flags.js';

/** Tries per record when a writer keeps committing it between our read and our swap. */
const SWAP_ATTEMPTS = 20;

export interface RotationResult {
  /** Records now wrapped by the new key ("vol" or "vol@snap"). */
  rewrapped: string[];
  /** Encrypted records that already were. */
  already: string[];
}

export function keyCommands(): Command[] {
  return [
    {
      words: ['key', 'rotate'],
      spec: {
        usage: 'key rotate --new-key-file NEW [--key-file OLD] [-C ETCD]',
        summary:
          'wrap every encrypted volume key with a new master key (no data rewritten); then restart torusd with --key-file NEW',
        flags: {
          'data-dir': dataDirFlag,
          'key-file': {
            ...keyFileFlag,
            help: 'the master key the volumes are wrapped with now (single node default: DATA_DIR/master.key)',
          },
          'new-key-file': {
            type: 'string',
            help: 'the new master key file (created, mode 0600, if it does not exist)',
          },
          ...etcdFlags,
        },
      },
      async run(args) {
        const newFile = args.values['new-key-file'] as string | undefined;
        if (!newFile) throw new ArgumentError('--new-key-file: required (the new master key file)');
        const dataDir = args.values['data-dir'] as string;
        const etcd = await etcdOrSingleNode(args);
        const oldFile =
          (args.values['key-file'] as string | undefined) ??
          (etcd ? undefined : join(dataDir, 'master.key'));
        if (!oldFile)
          throw new ArgumentError('--key-file: required on a cluster (the master key in use now)');
        const old = await loadMasterKey(oldFile);
        let meta: MetadataStore;
        if (etcd) meta = await openClusterStore(etcd, { thread: false });
        else {
          const binding = await readClusterBinding(dataDir);
          if (binding)
            throw new ArgumentError(
              `${dataDir} belongs to a cluster: its volumes are in etcd; use -C ${binding.etcd}`,
            );
          meta = await openEmbeddedMetadataStore(join(dataDir, 'meta'));
        }
        let result: RotationResult;
        let next: LoadedMasterKey;
        let created: boolean;
        try {
          // Created only once the metadata is ours: a refused run leaves no new key behind.
          ({ key: next, created } = await loadOrCreate(newFile));
          if (next.fingerprint === old.fingerprint)
            throw new ArgumentError(`--new-key-file ${newFile} holds the same key as ${oldFile}`);
          result = await rotateMasterKey(meta, [old], next);
        } finally {
          await meta.close();
        }
        if (created) process.stdout.write(`created master key ${newFile} (${next.fingerprint})\n`);
        process.stdout.write(
          `re-wrapped ${result.rewrapped.length} key(s) from master key ${old.fingerprint} to ${next.fingerprint}` +
            (result.rewrapped.length ? `: ${result.rewrapped.join(', ')}` : '') +
            (result.already.length ? `; already under it: ${result.already.join(', ')}` : '') +
            `\nrestart torusd with --key-file ${newFile}; keep ${oldFile} until every node has\n`,
        );
      },
    },
  ];
}

async function loadOrCreate(path: string): Promise<{ key: LoadedMasterKey; created: boolean }> {
  try {
    return { key: await loadMasterKey(path), created: false };
  } catch (err) {
    if (!(err instanceof MasterKeyMissingError)) throw err;
    return { key: await createMasterKeyFile(path), created: true };
  }
}

/** Re-wrap every encrypted volume and snapshot record in `meta` with `next`, one CAS each. */
export async function rotateMasterKey(
  meta: MetadataStore,
  current: readonly LoadedMasterKey[],
  next: LoadedMasterKey,
): Promise<RotationResult> {
  const result: RotationResult = { rewrapped: [], already: [] };
  const volumes = volumeKey('');
  for (const prefix of [volumes, ALL_SNAPSHOTS]) {
    for (const { key } of await meta.getPrefix(prefix)) {
      const name = key.slice(prefix.length).replace('/', '@');
      const outcome = await rotateOne(meta, key, name, current, next);
      if (outcome) result[outcome].push(name);
    }
  }
  return result;
}

/** One record by compare-and-swap, read again when a commit moved it meanwhile. */
async function rotateOne(
  meta: MetadataStore,
  key: string,
  name: string,
  current: readonly LoadedMasterKey[],
  next: LoadedMasterKey,
): Promise<'rewrapped' | 'already' | undefined> {
  for (let attempt = 0; attempt < SWAP_ATTEMPTS; attempt++) {
    const kv = await meta.get(key);
    if (!kv) return undefined; // deleted meanwhile
    const record = JSON.parse(kv.value.toString()) as KeyedRecord;
    const rewrapped = rewrapRecord(record, current, next, `the key of "${name}"`);
    if (!rewrapped) return record.encrypted ? 'already' : undefined;
    const swapped = await meta.txn({
      compare: [{ key, target: 'modRevision', op: '==', value: kv.modRevision }],
      success: [{ type: 'put', key, value: Buffer.from(JSON.stringify(rewrapped)) }],
    });
    if (swapped.succeeded) return 'rewrapped';
  }
  throw new ConflictError(
    `"${name}" kept changing while its key was re-wrapped (${SWAP_ATTEMPTS} tries); run key rotate again`,
  );
}
