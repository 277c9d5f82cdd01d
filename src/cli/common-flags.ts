/** Flags shared by the binaries, so each means the same everywhere. */
import { parseEndpoints, type EtcdTlsFiles } from '../controlplane/metadata/etcd/endpoints.js';
import { existsSync } from 'node:fs';
import { connect } from 'node:net';
import type { EtcdConfig } from '../library/cluster-store.js';
import { ArgumentError, type FlagSpec, type Parsed, type ParsedValue } from './args.js';
import { peerTlsFlags, peerTlsOf } from './peer-tls-flags.js';

export const DEFAULT_DATA_DIR = './torus-data';
export const DEFAULT_NBD_ADDR = '127.0.0.1:10809';

export const dataDirFlag: FlagSpec = {
  type: 'string',
  short: 'd',
  help: "directory holding this node's blocks and metadata",
  default: DEFAULT_DATA_DIR,
  env: 'TORUS_DATA_DIR',
};

export const keyFileFlag: FlagSpec = {
  type: 'string',
  help: 'master key file for encrypted volumes (created on first use; keep it apart from the data in production)',
  env: 'TORUS_KEY_FILE',
};

export const outputFlag: FlagSpec = {
  type: 'string',
  short: 'o',
  help: 'output format: table or json',
  default: 'table',
};

// ── cluster (etcd) ──────────────────────────────────────────────────────

/** Where the cluster commands look for etcd when neither -C nor TORUS_ETCD is given (the original's default). */
export const DEFAULT_ETCD = '127.0.0.1:2379';
/** The original's default peer address. */
export const DEFAULT_PEER_ADDRESS = 'http://127.0.0.1:40000';

export type { EtcdConfig } from '../library/cluster-store.js';

const etcdTlsFlags: Record<string, FlagSpec> = {
  'etcd-ca-file': {
    type: 'string',
    help: "CA certificate that signed etcd's server certificate (TLS to etcd)",
    env: 'TORUS_ETCD_CA_FILE',
  },
  'etcd-cert-file': {
    type: 'string',
    help: 'client certificate for etcd (with --etcd-key-file)',
    env: 'TORUS_ETCD_CERT_FILE',
  },
  'etcd-key-file': {
    type: 'string',
    help: 'client key for etcd (with --etcd-cert-file)',
    env: 'TORUS_ETCD_KEY_FILE',
  },
};

/** -C/--etcd for commands that otherwise use the single-node store in --data-dir. */
export const etcdFlags: Record<string, FlagSpec> = {
  etcd: {
    type: 'string',
    short: 'C',
    help: 'etcd endpoints of a cluster, comma-separated (127.0.0.1:2379 or http://a:2379,http://b:2379); without it, the single-node store in --data-dir',
    env: 'TORUS_ETCD',
  },
  ...etcdTlsFlags,
  ...peerTlsFlags,
};

/** -C/--etcd for commands that only make sense on a cluster: etcd on this host unless told otherwise. */
export const clusterEtcdFlags: Record<string, FlagSpec> = {
  etcd: {
    type: 'string',
    short: 'C',
    help: 'etcd endpoints of the cluster, comma-separated',
    default: DEFAULT_ETCD,
    env: 'TORUS_ETCD',
  },
  ...etcdTlsFlags,
};

/**
 * The etcd settings the flags ask for, or undefined when no endpoint was
 * given. Bad endpoints or TLS flags without endpoints exit 2 naming the flag.
 */
export function etcdConfigOf(values: Record<string, ParsedValue>): EtcdConfig | undefined {
  const endpoints = values.etcd as string | undefined;
  const tls: EtcdTlsFiles = {
    caFile: values['etcd-ca-file'] as string | undefined,
    certFile: values['etcd-cert-file'] as string | undefined,
    keyFile: values['etcd-key-file'] as string | undefined,
  };
  const tlsGiven = Object.entries(tls).filter(([, v]) => v !== undefined);
  if (endpoints === undefined) {
    if (values['peer-tls-dir'] !== undefined)
      throw new ArgumentError('--peer-tls-dir needs --etcd: peers exist only in a cluster');
    if (tlsGiven.length > 0)
      throw new ArgumentError(
        `--etcd-${tlsGiven[0][0].replace('File', '')}-file needs --etcd (the etcd endpoints)`,
      );
    return undefined;
  }
  let https: boolean;
  try {
    https = parseEndpoints(endpoints).https;
  } catch (err) {
    throw new ArgumentError(`--etcd: ${(err as Error).message}`);
  }
  if ((https || tlsGiven.length > 0) && !tls.caFile)
    throw new ArgumentError(
      '--etcd-ca-file: TLS to etcd needs the CA certificate that signed its server certificate',
    );
  if (Boolean(tls.certFile) !== Boolean(tls.keyFile))
    throw new ArgumentError('--etcd-cert-file and --etcd-key-file go together');
  const peerTlsGiven =
    values['peer-tls-dir'] !== undefined || Boolean(values['peer-tls-verify-address']);
  const peerTls = peerTlsGiven ? peerTlsOf(values) : undefined;
  return { endpoints, ...(tlsGiven.length > 0 ? { tls } : {}), ...(peerTls ? { peerTls } : {}) };
}

/**
 * For the commands that act on a single node or on a cluster (init, the
 * volume commands): -C/--etcd or TORUS_ETCD names the cluster. Without
 * either, the original guide's default applies — etcd on 127.0.0.1:2379,
 * when it answers — unless a single-node data directory is in play
 * (--data-dir or TORUS_DATA_DIR given, or ./torus-data present); then, and
 * when nothing answers there, the single node in --data-dir.
 */
export async function etcdOrSingleNode(args: Parsed): Promise<EtcdConfig | undefined> {
  const given = etcdConfigOf(args.values);
  if (given) return given;
  if (!args.defaulted?.has('data-dir') || existsSync(args.values['data-dir'] as string))
    return undefined;
  return (await answers('127.0.0.1', 2379, 300)) ? { endpoints: DEFAULT_ETCD } : undefined;
}

/** Does something accept TCP connections at host:port within timeoutMs? */
function answers(host: string, port: number, timeoutMs: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect({ host, port });
    const done = (ok: boolean) => {
      socket.destroy();
      resolve(ok);
    };
    socket.setTimeout(timeoutMs, () => done(false));
    socket.once('connect', () => done(true));
    socket.once('error', () => done(false));
  });
}
