/** The library client (src/library) for what the flags name: the cluster of -C, or the node in --data-dir. */
import { join } from 'node:path';
import { Torus } from '../library/torus.js';
import type { Parsed } from './args.js';
import { etcdOrSingleNode, type EtcdConfig } from './common-flags.js';

/** A client for `etcd` when given, else for the single node in `dataDir`. */
export function torusFor(
  dataDir: string,
  keyFile: string | undefined,
  etcd: EtcdConfig | undefined,
): Promise<Torus> {
  if (!etcd) return Torus.open({ dataDir, keyFile });
  // On a cluster too, torusctl's master key defaults to the one in --data-dir.
  return Torus.connect({
    etcd: { endpoints: etcd.endpoints, ...etcd.tls },
    peerTls: etcd.peerTls,
    keyFile: keyFile ?? join(dataDir, 'master.key'),
  });
}

/** The cluster's catalog in etcd, or the node in --data-dir (etcdOrSingleNode says which). */
export async function client(args: Parsed): Promise<Torus> {
  return torusFor(
    args.values['data-dir'] as string,
    args.values['key-file'] as string | undefined,
    await etcdOrSingleNode(args),
  );
}
