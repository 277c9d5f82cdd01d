/**
 * Endpoint and TLS settings as users write them (flags, env), turned into
 * what the etcd3 client takes.
 */
import { readFileSync } from 'node:fs';
import { UsageError } from '../../../common/errors.js';

export interface EtcdTlsFiles {
  /** CA bundle that signed etcd's server certificate. */
  caFile?: string;
  /** Client certificate and key, for etcd's --client-cert-auth. */
  certFile?: string;
  keyFile?: string;
}

export interface ParsedEndpoints {
  /** host:port, as etcd3 dials them. */
  hosts: string[];
  /** Whether the endpoints asked for TLS (https://). */
  https: boolean;
}

/**
 * Accepts `127.0.0.1:2379`, `http://127.0.0.1:2379`, `https://etcd:2379`,
 * comma-separated lists and arrays of either. The scheme only says whether
 * to use TLS; mixing schemes is refused because etcd3 uses one credential
 * for every host.
 */
export function parseEndpoints(endpoints: string | readonly string[]): ParsedEndpoints {
  const items = (typeof endpoints === 'string' ? [endpoints] : endpoints)
    .flatMap((e) => e.split(','))
    .map((e) => e.trim())
    .filter((e) => e.length > 0);
  if (items.length === 0)
    throw new UsageError('no etcd endpoints given (expected e.g. 127.0.0.1:2379)');
  const schemes = new Set<string>();
  const hosts = items.map((item) => {
    const m = /^(?:(https?):\/\/)?([^/\s]+?)\/?$/.exec(item);
    if (!m)
      throw new UsageError(
        `invalid etcd endpoint "${item}" (expected host:port or http(s)://host:port)`,
      );
    schemes.add(m[1] ?? 'http');
    const host = m[2];
    if (!/:\d+$/.test(host))
      throw new UsageError(`etcd endpoint "${item}" has no port (etcd listens on 2379 by default)`);
    return host;
  });
  if (schemes.size > 1)
    throw new UsageError(`etcd endpoints mix http and https: ${items.join(',')}`);
  return { hosts, https: schemes.has('https') };
}

/** etcd3's credentials from file paths, or undefined for plaintext. */
export function loadTlsCredentials(
  tls: EtcdTlsFiles | undefined,
  https: boolean,
): { rootCertificate: Buffer; privateKey?: Buffer; certChain?: Buffer } | undefined {
  const wanted = https || Boolean(tls?.caFile || tls?.certFile || tls?.keyFile);
  if (!wanted) return undefined;
  if (!tls?.caFile)
    throw new UsageError(
      'TLS to etcd needs the CA certificate that signed its server certificate (caFile)',
    );
  if (Boolean(tls.certFile) !== Boolean(tls.keyFile))
    throw new UsageError('a client certificate for etcd needs both certFile and keyFile');
  const read = (path: string, what: string) => {
    try {
      return readFileSync(path);
    } catch (err) {
      throw new UsageError(`cannot read etcd ${what} ${path}: ${(err as Error).message}`);
    }
  };
  return {
    rootCertificate: read(tls.caFile, 'CA certificate'),
    ...(tls.certFile ? { certChain: read(tls.certFile, 'client certificate') } : {}),
    ...(tls.keyFile ? { privateKey: read(tls.keyFile, 'client key') } : {}),
  };
}
