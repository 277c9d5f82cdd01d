/**
 * `torusblk csi`: the Kubernetes CSI plugin (src/csi). One binary, three
 * roles: --controller (volumes and snapshots, over the cluster's etcd or a
 * single node's data directory), --node (attach, format, mount on this
 * machine), both when neither is given. Serves until SIGTERM/SIGINT, then
 * lets calls in flight finish and removes its socket.
 */
import { hostname } from 'node:os';
import { isAbsolute } from 'node:path';
import { logger } from '../common/log.js';
import { createControllerService } from '../csi/controller.js';
import type { CsiService } from '../csi/handlers.js';
import { createIdentityService } from '../csi/identity.js';
import { CsiMetrics } from '../csi/metrics.js';
import { EndpointError, parseEndpoint } from '../csi/endpoint.js';
import { startCsiServer } from '../csi/server.js';
import { AttachModeError } from '../csi/node/attach.js';
import { parseNbdAddress } from '../csi/node/nbd-address.js';
import { clientTlsFilesOf, nbdClientTlsFlags } from './tls-flags.js';
import { createNodeService, type NodeService } from '../csi/node/node-service.js';
import { nbdServerAnswers } from '../csi/node/volume-stats.js';
import { Torus } from '../library/torus.js';
import { ArgumentError, parseAddress, type Address, type FlagSpec, type Parsed } from './args.js';
import type { Command } from './commands.js';
import { DEFAULT_NBD_ADDR, etcdConfigOf, etcdFlags, keyFileFlag } from './common-flags.js';
import { Closers } from './shutdown.js';

export const ATTACH_MODES = ['auto', 'kernel', 'nbdfuse'] as const;
export type AttachMode = (typeof ATTACH_MODES)[number];

/** Every flag of `torusblk csi`: exported so the manifests' test can check what they pass. */
export const csiFlags: Record<string, FlagSpec> = {
  endpoint: {
    type: 'string',
    help: 'where the kubelet and the sidecars reach the plugin: unix:///path/csi.sock (or an absolute path); tcp://host:port only when written so',
    default: 'unix:///csi/csi.sock',
    env: 'CSI_ENDPOINT',
  },
  controller: {
    type: 'boolean',
    help: 'run the controller service (with --node: both; neither: both)',
  },
  node: { type: 'boolean', help: 'run the node service (with --controller: both; neither: both)' },
  'node-id': {
    type: 'string',
    help: "this machine's name in NodeGetInfo (default: the hostname; Kubernetes: the node's name)",
    env: 'CSI_NODE_ID',
  },
  ...etcdFlags,
  'data-dir': {
    type: 'string',
    help: 'controller on a single node: the node’s data directory (instead of --etcd)',
    env: 'TORUS_DATA_DIR',
  },
  'key-file': {
    ...keyFileFlag,
    help: 'controller: master key file for encrypted volumes (a cluster needs it for StorageClasses with encrypted: "true")',
  },
  'nbd-address': {
    type: 'string',
    help: 'node: where this machine’s storage node or `torusblk nbdserve` serves NBD: HOST:PORT or unix:PATH',
    default: DEFAULT_NBD_ADDR,
  },
  'state-dir': {
    type: 'string',
    help: 'node: where attachments are recorded, to survive a restart of the plugin',
    default: '/var/lib/torus-csi',
  },
  attach: {
    type: 'string',
    help: 'node: how a volume becomes a block device: kernel (nbd-client), nbdfuse (nbdfuse + loop device) or auto (kernel when the nbd module is loaded and nbd-client installed)',
    default: 'auto',
  },
  'kubelet-dir': {
    type: 'string',
    help: 'node: the kubelet’s directory; staging and target paths outside it are refused',
    default: '/var/lib/kubelet',
  },
  keeper: {
    type: 'string',
    help: 'node: the attachment keeper (`torusblk csi-keeper`) that starts the FUSE volume file helpers, so they outlive this plugin’s container: unix:///path/keeper.sock',
  },
  metrics: { type: 'address', help: 'serve Prometheus metrics of the CSI calls on HOST:PORT' },
  ...nbdClientTlsFlags,
};

/** The node service's settings, checked; what createNodeService (src/csi/node) will be given. */
export interface NodeFlags {
  nodeId: string;
  nbdAddress: { host: string; port: number } | { path: string };
  stateDir: string;
  attach: AttachMode;
  kubeletDir: string;
  /** The attachment keeper's socket path, when helpers are to be started by it. */
  keeperSocket?: string;
}

export function nodeFlagsOf(values: Parsed['values']): NodeFlags {
  const attach = values.attach as string;
  if (!(ATTACH_MODES as readonly string[]).includes(attach))
    throw new ArgumentError(`--attach: expected ${ATTACH_MODES.join(', ')}, got "${attach}"`);
  const text = values['nbd-address'] as string;
  let nbdAddress: NodeFlags['nbdAddress'];
  if (text.startsWith('unix:')) {
    const path = text.slice('unix:'.length);
    if (!isAbsolute(path))
      throw new ArgumentError(`--nbd-address: unix:PATH needs an absolute path, got "${text}"`);
    nbdAddress = { path };
  } else {
    const address: Address = parseAddress(text, 'nbd-address');
    nbdAddress = address;
  }
  for (const flag of ['state-dir', 'kubelet-dir'])
    if (!isAbsolute(values[flag] as string))
      throw new ArgumentError(
        `--${flag}: expected an absolute path, got "${String(values[flag])}"`,
      );
  const nodeId = (values['node-id'] as string | undefined) ?? hostname();
  if (nodeId === '') throw new ArgumentError('--node-id: must not be empty');
  const keeper = values.keeper as string | undefined;
  return {
    ...(keeper === undefined ? {} : { keeperSocket: unixSocketOf(keeper, 'keeper') }),
    nodeId,
    nbdAddress,
    stateDir: values['state-dir'] as string,
    attach: attach as AttachMode,
    kubeletDir: values['kubelet-dir'] as string,
  };
}

/** A unix socket flag's path: unix:///path, unix:/path or an absolute path. */
export function unixSocketOf(text: string, flag: string): string {
  let endpoint;
  try {
    endpoint = parseEndpoint(text);
  } catch (err) {
    if (err instanceof EndpointError) throw new ArgumentError(`--${flag}: ${err.message}`);
    throw err;
  }
  if (endpoint.kind !== 'unix')
    throw new ArgumentError(`--${flag}: expected a unix socket (unix:///path), got "${text}"`);
  return endpoint.path;
}

export const csiCommand: Command = {
  words: ['csi'],
  spec: {
    usage: 'csi [--controller] [--node] [--endpoint unix:///csi/csi.sock]',
    summary: 'run the Kubernetes CSI plugin (controller, node, or both) until stopped',
    flags: csiFlags,
  },
  async run(args) {
    const { values } = args;
    const both = !values.controller && !values.node;
    const runController = both || values.controller === true;
    const runNode = both || values.node === true;
    try {
      parseEndpoint(values.endpoint as string);
    } catch (err) {
      if (err instanceof EndpointError) throw new ArgumentError(`--endpoint: ${err.message}`);
      throw err;
    }
    const etcd = etcdConfigOf(values);
    const dataDir = values['data-dir'] as string | undefined;
    if (runController && !etcd && !dataDir)
      throw new ArgumentError(
        'the controller needs the storage it manages: --etcd ENDPOINTS (a cluster) or --data-dir DIR (a single node)',
      );
    if (etcd && dataDir)
      throw new ArgumentError(
        '--etcd and --data-dir: give one (a cluster or a single node), not both',
      );
    const nodeFlags = runNode ? nodeFlagsOf(values) : undefined;

    const log = logger('csi');
    const closers = new Closers(log);
    const keyFile = values['key-file'] as string | undefined;
    let controller: (CsiService & { close(): Promise<void> }) | undefined;
    let probe: () => Promise<boolean> = async () => true;
    if (runController) {
      const torus = etcd
        ? await Torus.connect({ etcd: { endpoints: etcd.endpoints, ...etcd.tls }, keyFile })
        : await Torus.open({ dataDir: dataDir!, keyFile });
      controller = createControllerService({
        torus,
        canEncrypt: etcd ? keyFile !== undefined : true,
      });
      closers.push('CSI controller', () => controller!.close());
      probe = async () => {
        const space = await torus.poolSpace();
        return space.nodes > 0 && space.capacity > 0;
      };
    }
    let node: NodeService | undefined;
    if (nodeFlags) {
      try {
        node = createNodeService({
          nodeId: nodeFlags.nodeId,
          nbdAddress: values['nbd-address'] as string,
          stateDir: nodeFlags.stateDir,
          kubeletDir: nodeFlags.kubeletDir,
          attachMode: nodeFlags.attach,
          keeperSocket: nodeFlags.keeperSocket,
          nbdTls: clientTlsFilesOf(values),
          log,
        });
      } catch (err) {
        await closers.closeAll();
        if (err instanceof AttachModeError) throw new ArgumentError(`--attach: ${err.message}`);
        throw err;
      }
      closers.push('CSI node service', () => node!.close());
      const nbdAddress = parseNbdAddress(values['nbd-address'] as string);
      const controllerProbe = probe;
      // Ready when the storage this machine attaches through answers (and the controller's, if here).
      probe = async () => (await nbdServerAnswers(nbdAddress)) && (await controllerProbe());
    }
    const metrics = values.metrics ? new CsiMetrics() : undefined;
    if (metrics) {
      const { host, port } = values.metrics as Address;
      const server = await metrics.serve(host, port);
      closers.push(
        'readiness server',
        () => new Promise<void>((done) => server.close(() => done())),
      );
    }
    const server = await startCsiServer({
      endpoint: values.endpoint as string,
      identity: createIdentityService({ probe }),
      controller,
      node,
      metrics,
      log,
    });
    closers.push('CSI gRPC server', () => server.close());
    await closers.untilSignalled('finishing CSI calls in flight, removing the socket');
    log.info('stopped');
    return 0;
  },
};
