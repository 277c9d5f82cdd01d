/**
 * Torus: the library's client, for a single node (its data directory) or a
 * cluster (its etcd). The volume operations are VolumeOperations'; this adds
 * opening volumes as handles and the lifetime of what that starts.
 *
 * Where a handle's bytes go:
 *  - a single node whose torusd runs: an NBD connection to it, through the
 *    unix socket its status names (torusd owns the data directory);
 *  - a single node with no torusd: a StorageNode on the data directory in
 *    this process, opened with the first handle and kept until close() — it
 *    takes the directory's lock, so torusd (and torusctl's offline commands)
 *    cannot use the directory meanwhile; the volume operations go to it;
 *  - a cluster: a store-less client node in this process (client-node.ts, as
 *    `torusblk nbdserve` runs), opened with the first handle: it takes the
 *    volume's write lock on open, reads and writes blocks on the storage
 *    nodes directly. No NBD hop.
 */
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { NotFoundError, UsageError } from '../common/errors.js';
import { logger, type Logger } from '../common/log.js';
import type { NbdAddress } from '../dataplane/nbd-client/client.js';
import { parseEndpoints } from '../controlplane/metadata/etcd/endpoints.js';
import type { MetadataStore } from '../controlplane/metadata/store.js';
import { adminCall } from '../node/admin-api.js';
// The node and the client node are imported when first needed: a torusctl
// command that only talks to a running torusd never pays for loading them.
import type { StorageNode } from '../node/storage-node.js';
import type { PeerTlsFiles } from '../dataplane/peer/peer-tls.js';
import type { BlockDevice } from './block-device.js';
import type { ClientNode } from './client-node.js';
import type { EtcdConfig } from './cluster-store.js';
import { ExportDevice } from './export-device.js';
import { NbdDevice } from './nbd-device.js';
import { VolumeHandle, type OpenVolumeOptions } from './volume-handle.js';
import { VolumeOperations } from './volume-operations.js';

const MiB = 1024 * 1024;
/** The in-process node's block cache unless told otherwise. */
const DEFAULT_CACHE_BYTES = 256 * MiB;
/** A client node's scratch store (map pages being committed). */
const DEFAULT_SCRATCH_BYTES = 256 * MiB;
/** How long the client node keeps a volume, and its write lock, after its last handle closed. */
const LOCK_LINGER_MS = 5000;
/** Log level of the nodes the library runs: quiet unless TORUS_LOG_LEVEL says otherwise. */
const DEFAULT_LOG_LEVEL = 'warn';

/** Options both kinds of client take. */
export interface CommonOptions {
  /** Master key file for encrypted volumes (single node default: DATA_DIR/master.key). */
  keyFile?: string;
  /** Bytes of block cache of the node this process runs for handles (default 256 MiB). */
  cacheSize?: number;
  /** Data-plane worker threads of that node (default: two per core on a single node, one in a cluster; at most 4). */
  workers?: number;
  /** Log level of that node (pino's: 'info', 'warn', …; default TORUS_LOG_LEVEL, else 'warn'); logs go to stderr. */
  logLevel?: string;
}

export interface SingleNodeOptions extends CommonOptions {
  /** The node's data directory (what torusd --data-dir names). */
  dataDir: string;
  /**
   * Capacity of the node's store in bytes: needed only when this process
   * creates it (a data directory no torusd has run on yet).
   */
  capacity?: number;
}

export interface EtcdOptions {
  /** `host:port`, `http(s)://host:port`, a comma-separated list of them, or an array. */
  endpoints: string | string[];
  /** CA certificate that signed etcd's server certificate (TLS). */
  caFile?: string;
  /** Client certificate and key, when etcd asks for one. */
  certFile?: string;
  keyFile?: string;
}

export interface ClusterOptions extends CommonOptions {
  etcd: EtcdOptions;
  /**
   * A cluster whose nodes run with --peer-tls-dir: this client's certificate,
   * signed by the cluster CA (peerTlsFilesIn(dir) reads a directory laid out
   * as the flag's). Only handles and shrinking talk to the nodes' peer port.
   */
  peerTls?: PeerTlsFiles;
  /** Where the client node's scratch directory goes (default: the system temp dir). */
  scratchDir?: string;
  /** Bytes of scratch store for map pages being committed (default 256 MiB). */
  scratchSize?: number;
}

export class Torus extends VolumeOperations {
  private readonly handles = new Set<VolumeHandle>();
  /** The single node opened here for handles (no torusd running), once opened. */
  private local: StorageNode | undefined;
  private localOpening: Promise<StorageNode> | undefined;
  /** The cluster's client node and its etcd connection, once opened. */
  private clientOpening: Promise<{ client: ClientNode; meta: MetadataStore }> | undefined;
  private closing: Promise<void> | undefined;

  private constructor(
    target: { dataDir: string; etcd?: EtcdConfig; keyFile?: string },
    private readonly options: CommonOptions & Partial<SingleNodeOptions & ClusterOptions>,
  ) {
    super(target);
  }

  /** A client for the single node in `dataDir`, running (torusd) or not. Opens nothing yet. */
  static async open(options: SingleNodeOptions): Promise<Torus> {
    if (typeof options?.dataDir !== 'string' || options.dataDir === '')
      throw new UsageError('Torus.open needs { dataDir }: the node’s data directory');
    return new Torus({ dataDir: options.dataDir, keyFile: options.keyFile }, options);
  }

  /** A client for the cluster whose catalog is in etcd. Opens nothing yet: the first call connects. */
  static async connect(options: ClusterOptions): Promise<Torus> {
    const etcd = { ...etcdConfig(options?.etcd), peerTls: options.peerTls };
    return new Torus({ dataDir: '.', etcd, keyFile: options.keyFile }, options);
  }

  protected override inProcessNode(): StorageNode | undefined {
    return this.local;
  }

  /** The handles open now. */
  get openHandles(): readonly VolumeHandle[] {
    return [...this.handles];
  }

  /**
   * Open volume `name` (or snapshot `VOL@SNAP`, read-only) as a handle. On a
   * cluster the open takes the volume's write lock when nobody holds it;
   * when another node writes it, the handle is read-only at the version
   * committed now. NotFoundError when there is no such volume.
   */
  async openVolume(name: string, options: OpenVolumeOptions = {}): Promise<VolumeHandle> {
    if (this.closing) throw new UsageError('this Torus client is closed: open a new one');
    const device = await this.deviceFor(name);
    const handle = new VolumeHandle(name, device, options, (h) => this.handles.delete(h));
    this.handles.add(handle);
    if (this.closing) {
      await handle.close();
      throw new UsageError('this Torus client was closed while the volume opened');
    }
    return handle;
  }

  private async deviceFor(name: string): Promise<BlockDevice> {
    const missing = () => new NotFoundError(`no volume named "${name}" (${this.where})`);
    if (this.etcd) {
      const { client } = await this.clusterNode();
      const exported = await client.node.open(name);
      if (!exported) throw missing();
      return new ExportDevice(exported);
    }
    if (!this.local) {
      const address = await this.torusdNbd();
      if (address)
        return NbdDevice.connect(address, name).catch((err: unknown) => {
          throw err instanceof NotFoundError ? missing() : err;
        });
    }
    const exported = await (await this.localNode()).open(name);
    if (!exported) throw missing();
    return new ExportDevice(exported);
  }

  /**
   * Where the running torusd of this data directory serves NBD (its status
   * names its listeners, the unix socket first), or undefined when none runs.
   */
  async torusdNbd(): Promise<NbdAddress | undefined> {
    if (this.etcd) return undefined;
    const status = await adminCall<{ nbd?: { tcp?: string; unix?: string } }>(
      join(this.dataDir, 'torusd.sock'),
      'GET',
      '/v1/status',
    );
    if (!status) return undefined;
    if (status.nbd?.unix) return { path: status.nbd.unix };
    const tcp = status.nbd?.tcp && /^\[?([^\]]*)\]?:(\d+)$/.exec(status.nbd.tcp);
    if (tcp) return { host: tcp[1], port: Number(tcp[2]) };
    // A torusd from before status named its listeners: its default unix socket.
    const socket = join(this.dataDir, 'nbd.sock');
    if (existsSync(socket)) return { path: socket };
    throw new UsageError(`torusd for ${this.dataDir} does not say where it serves NBD`);
  }

  private localNode(): Promise<StorageNode> {
    this.localOpening ??= (async () => {
      const { dataDir } = this;
      const capacity = this.options.capacity;
      if (capacity === undefined && !existsSync(join(dataDir, 'blocks', 'store.json')))
        throw new UsageError(
          `no node store in ${dataDir} yet: give Torus.open a capacity (bytes) to create one, or start torusd there`,
        );
      const { StorageNode } = await import('../node/storage-node.js');
      const node = await StorageNode.open({
        dataDir,
        capacityBytes: capacity,
        cacheBytes: this.options.cacheSize ?? DEFAULT_CACHE_BYTES,
        workers: this.options.workers,
        keyFile: this.keyFile,
        log: this.nodeLog(),
      });
      this.local = node;
      return node;
    })();
    this.localOpening.catch(() => (this.localOpening = undefined));
    return this.localOpening;
  }

  private clusterNode(): Promise<{ client: ClientNode; meta: MetadataStore }> {
    this.clientOpening ??= (async () => {
      const etcd = this.etcd!;
      // On its own thread: the write locks' keepalives must not wait behind the caller's work.
      const { openClusterStore } = await import('./cluster-store.js');
      const meta = await openClusterStore(etcd);
      try {
        const { openClientNode } = await import('./client-node.js');
        const client = await openClientNode({
          meta,
          endpoints: etcd.endpoints,
          label: 'torus-library',
          scratchDir: this.options.scratchDir,
          scratchBytes: this.options.scratchSize ?? DEFAULT_SCRATCH_BYTES,
          cacheBytes: this.options.cacheSize ?? DEFAULT_CACHE_BYTES,
          workers: this.options.workers,
          keyFile: this.keyFile,
          peerTls: etcd.peerTls,
          log: this.nodeLog(),
          // As nbdserve's default: a handle reopened soon finds the volume warm
          // and still held; close() lets go of everything at once.
          lockLingerMs: LOCK_LINGER_MS,
        });
        return { client, meta };
      } catch (err) {
        await meta.close().catch(() => undefined);
        throw err;
      }
    })();
    this.clientOpening.catch(() => (this.clientOpening = undefined));
    return this.clientOpening;
  }

  private nodeLog(): Logger {
    const log = logger('torus');
    log.level = this.options.logLevel ?? process.env.TORUS_LOG_LEVEL ?? DEFAULT_LOG_LEVEL;
    return log;
  }

  /**
   * Close every open handle (each flushes first), then the node this client
   * runs, if any (committing and releasing what it holds). Idempotent.
   */
  close(): Promise<void> {
    this.closing ??= this.shut();
    return this.closing;
  }

  private async shut(): Promise<void> {
    const failures: unknown[] = [];
    for (const result of await Promise.allSettled([...this.handles].map((h) => h.close())))
      if (result.status === 'rejected') failures.push(result.reason);
    const local = await this.localOpening?.catch(() => undefined);
    const cluster = await this.clientOpening?.catch(() => undefined);
    try {
      await local?.close();
    } catch (err) {
      failures.push(err);
    }
    this.local = undefined;
    try {
      await cluster?.client.close();
    } catch (err) {
      failures.push(err);
    } finally {
      await cluster?.meta.close().catch(() => undefined);
    }
    if (failures.length > 0) throw failures[0];
  }
}

/** The library's etcd options as the binaries' EtcdConfig, checked as -C is. */
function etcdConfig(options: EtcdOptions | undefined): EtcdConfig {
  if (!options || options.endpoints === undefined)
    throw new UsageError('Torus.connect needs { etcd: { endpoints } }');
  const endpoints = Array.isArray(options.endpoints)
    ? options.endpoints.join(',')
    : options.endpoints;
  const { https } = parseEndpoints(endpoints);
  const { caFile, certFile, keyFile } = options;
  if ((https || certFile || keyFile) && !caFile)
    throw new UsageError(
      'etcd.caFile: TLS to etcd needs the CA certificate that signed its server certificate',
    );
  if (Boolean(certFile) !== Boolean(keyFile))
    throw new UsageError('etcd.certFile and etcd.keyFile go together');
  return caFile ? { endpoints, tls: { caFile, certFile, keyFile } } : { endpoints };
}

/**
 * A handle on export `name` of any NBD server at `address` (TCP host and
 * port, or a unix socket path): another node's, `torusblk nbdserve`'s, or
 * not Torus at all. NotFoundError when the server has no such export.
 */
export async function openNbdVolume(
  address: NbdAddress,
  name: string,
  options: OpenVolumeOptions = {},
): Promise<VolumeHandle> {
  return new VolumeHandle(name, await NbdDevice.connect(address, name), options);
}
