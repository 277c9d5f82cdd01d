/** Opening a cluster's etcd for the binaries and the library, with a message that names the endpoints. */
import { MetadataUnavailableError } from '../controlplane/metadata/errors.js';
import type { MetadataStore } from '../controlplane/metadata/store.js';
import { openThreadedMetadataStore } from '../controlplane/thread/index.js';
import type { EtcdTlsFiles } from '../controlplane/metadata/etcd/endpoints.js';
import type { PeerTlsFiles } from '../dataplane/peer/peer-tls.js';

/** Where a cluster's etcd is: what -C and the --etcd-*-file flags say, or the library's `etcd` option. */
export interface EtcdConfig {
  /** As given: `127.0.0.1:2379`, `http://a:2379,http://b:2379`. */
  endpoints: string;
  tls?: EtcdTlsFiles;
  /** Mutual TLS to the storage nodes' peer port, for a cluster started with --peer-tls-dir. */
  peerTls?: PeerTlsFiles;
}

export interface ClusterStoreOptions {
  /**
   * Run the etcd client on its own thread (src/controlplane/thread): default
   * true, for torusd, whose main thread serves NBD and must not starve the
   * lease keepalives that keep the node UP and its volume locks held.
   * false: the client on the calling thread, for short-lived commands. The
   * thread costs its start-up — a fresh isolate loading etcd3 and gRPC,
   * about half a second here — and a hop per call (0.1–0.3 ms), which a
   * command that runs a few calls and exits gains nothing from.
   */
  thread?: boolean;
}

/** Connect and check etcd answers (within the store's call deadline, 5 s). */
export async function openClusterStore(
  etcd: EtcdConfig,
  options: ClusterStoreOptions = {},
): Promise<MetadataStore> {
  const settings = { endpoints: etcd.endpoints, tls: etcd.tls };
  try {
    if (options.thread !== false) return await openThreadedMetadataStore(settings);
    // Loaded only here: with the thread, etcd3 and its gRPC stack load in the worker and never on the main thread.
    const { openEtcdMetadataStore } = await import('../controlplane/metadata/etcd/index.js');
    return await openEtcdMetadataStore(settings);
  } catch (err) {
    if (err instanceof MetadataUnavailableError) {
      // gRPC appends a timestamp and an often empty "Resolution note:"; neither helps a reader.
      const reason = err.message
        .replace(/\s*\(\d{4}-\d\d-\d\dT[\d:.]+Z\)/, '')
        .replace(/\.?\s*Resolution note:\s*$/, '');
      throw new MetadataUnavailableError(
        `cannot reach etcd at ${etcd.endpoints}: ${tlsHint(reason)}${reason}`,
        { cause: err },
      );
    }
    throw err;
  }
}

/**
 * gRPC reports TLS failures as OpenSSL's words ("SSL alert number 42"); say
 * which flag is the likely culprit first. Empty when it is not a TLS failure.
 */
export function tlsHint(message: string): string {
  if (
    /alert (bad certificate|certificate required|unknown ca)|alert number (42|116|48)\b/i.test(
      message,
    )
  ) {
    return "etcd refused this client's certificate (give --etcd-cert-file and --etcd-key-file, signed by a CA etcd trusts): ";
  }
  if (
    /unable to (get local issuer|verify)|self[- ]signed certificate|certificate verify failed|CERT_/i.test(
      message,
    )
  ) {
    return "etcd's server certificate is not signed by --etcd-ca-file (or does not name this host): ";
  }
  if (/wrong version number|http_request|packet length too long/i.test(message)) {
    return 'etcd and this client disagree about TLS (https:// endpoints for a TLS etcd, http:// for a plain one): ';
  }
  return '';
}

/**
 * Run `work` with the cluster's store, closed afterwards whatever happens.
 * Used by torusctl's cluster commands, which are short-lived: no thread.
 */
export async function withClusterStore<T>(
  etcd: EtcdConfig,
  work: (meta: MetadataStore) => Promise<T>,
): Promise<T> {
  const meta = await openClusterStore(etcd, { thread: false });
  try {
    return await work(meta);
  } finally {
    await meta.close();
  }
}
