/**
 * The CSI Node service: stage (attach, make a filesystem if there is none,
 * mount), publish (bind mount), their undoing, online expansion, stats,
 * info and capabilities. See README.md for the contract of each RPC.
 *
 * Every call looks at the mount table and the attachment records before it
 * changes anything, so a repeated call is a no-op and a restarted plugin
 * (a new service over the same state dir) carries on where the old one was.
 * Calls on one volume run one at a time.
 */
import { mkdir, open, rm, rmdir, stat } from 'node:fs/promises';
import { hostname } from 'node:os';
import { basename, dirname } from 'node:path';
import { logger, type Logger } from '../../common/log.js';
import { failedPrecondition, notFound } from '../csi-error.js';
import type { CsiHandler, CsiService } from '../handlers.js';
import {
  AttachModeError,
  chooseAttachMode,
  probeKernelNbd,
  type Attacher,
  type AttachMode,
  type AttachModeOption,
  type KernelNbdFacts,
} from './attach.js';
import { AttachmentStore, type AttachmentRecord } from './attachments.js';
import { deviceNumber } from './block-device.js';
import {
  bindMount,
  ensureFilesystem,
  growFilesystem,
  mountFilesystem,
  unmount,
} from './filesystem.js';
import { FuseAttacher } from './fuse-attach.js';
import { KeeperHelperLauncher } from './keeper-client.js';
import { alreadyExists, withErrorCodes } from './node-errors.js';
import { KernelNbdAttacher } from './kernel-nbd-attach.js';
import { resolveInside } from './kubelet-paths.js';
import { findMount, isReadOnly, readMounts } from './mounts.js';
import { formatNbdAddress, parseNbdAddress } from './nbd-address.js';
import type { NbdClientTlsFiles } from '../../dataplane/nbd-client/client.js';
import { parseCapability, requireString, type NodeCapability } from './node-requests.js';
import { nbdServerAnswers, volumeUsage } from './volume-stats.js';
import { WRITABLE_WAIT_MS, waitUntilWritable } from './writable-export.js';

export const TOPOLOGY_KEY = 'topology.csi.torus.dev/node';

export interface NodeServiceOptions {
  /** This node's name as Kubernetes knows it (default: the hostname). */
  nodeId?: string;
  /** Where the local storage node or `torusblk nbdserve` serves NBD: HOST:PORT or unix:PATH. */
  nbdAddress: string;
  /** Connect to NBD over TLS with these files (FUSE attach path only). */
  nbdTls?: NbdClientTlsFiles;
  /** Where attachments are recorded (default /var/lib/torus-csi). */
  stateDir?: string;
  /** Staging and target paths outside it are refused (default /var/lib/kubelet). */
  kubeletDir?: string;
  attachMode?: AttachModeOption;
  /**
   * FUSE path: the attachment keeper's socket (`torusblk csi-keeper`); the
   * keeper starts the volume file helpers so that they outlive this
   * process's container. Without it the plugin starts them itself.
   */
  keeperSocket?: string;
  /** Volumes one node may stage at once, told to the scheduler (default 64). */
  maxVolumesPerNode?: number;
  /** How long a writable stage waits for another node to let go of the volume (writable-export.ts). */
  writableWaitMs?: number;
  /** For tests: what the node has for the kernel path (default: looked up). */
  kernelNbd?: KernelNbdFacts;
  log?: Logger;
}

export type NodeService = CsiService & {
  readonly attachMode: AttachMode;
  close(): Promise<void>;
};

export function createNodeService(options: NodeServiceOptions): NodeService {
  const log = options.log ?? logger('csi-node');
  const nodeId = options.nodeId ?? hostname();
  const nbd = { ...parseNbdAddress(options.nbdAddress), tls: options.nbdTls };
  const stateDir = options.stateDir ?? '/var/lib/torus-csi';
  const kubeletDir = options.kubeletDir ?? '/var/lib/kubelet';
  const maxVolumes = options.maxVolumesPerNode ?? 64;
  const attachMode = chooseAttachMode(
    options.attachMode ?? 'auto',
    options.kernelNbd ?? probeKernelNbd(),
  );
  const attachers: Record<AttachMode, Attacher> = {
    kernel: new KernelNbdAttacher(nbd, log),
    nbdfuse: new FuseAttacher(
      nbd,
      stateDir,
      log,
      options.keeperSocket === undefined
        ? undefined
        : new KeeperHelperLauncher(options.keeperSocket, log),
    ),
  };
  if (options.nbdTls && attachMode === 'kernel')
    throw new AttachModeError('NBD over TLS attaches through the FUSE path only: use nbdfuse');
  if (attachMode === 'nbdfuse')
    log.warn(
      { nbd: formatNbdAddress(nbd) },
      'no kernel NBD client here (nbd module or nbd-client missing): volumes attach through a FUSE volume file and a loop device',
    );
  const store = new AttachmentStore(stateDir);
  const busy = new Map<string, Promise<unknown>>();

  /** One call per volume at a time: kubelet retries a slow call while it still runs. */
  function serialized<T>(volumeId: string, work: () => Promise<T>): Promise<T> {
    const previous = busy.get(volumeId) ?? Promise.resolve();
    const next = previous.catch(() => undefined).then(work);
    busy.set(volumeId, next);
    void next
      .finally(() => busy.get(volumeId) === next && busy.delete(volumeId))
      .catch(() => undefined);
    return next;
  }

  const inside = (path: string, field: string) => resolveInside(kubeletDir, path, field);
  const attacherOf = (record: AttachmentRecord) => attachers[record.attached.mode];

  /** Undo a stage completely: unmount, flush and detach, forget. */
  async function tearDown(record: AttachmentRecord): Promise<void> {
    if (record.accessType === 'mount' && (await findMount(record.stagingPath)))
      await unmount(record.stagingPath);
    await attacherOf(record).detach(record.attached);
    await store.remove(record.volumeId);
  }

  /** Mounts other than the staging mount that still use the volume (pods' publications). */
  async function publications(record: AttachmentRecord): Promise<string[]> {
    const device = deviceNumber((await stat(record.attached.device)).rdev);
    const name = `/${basename(record.attached.device)}`;
    return (await readMounts())
      .filter((m) =>
        record.accessType === 'mount'
          ? m.device === device && m.mountPoint !== record.stagingPath
          : m.fsType === 'devtmpfs' && m.root === name,
      )
      .map((m) => m.mountPoint);
  }

  async function mountStaged(record: AttachmentRecord): Promise<void> {
    await ensureFilesystem(record.attached.device, record.fsType!, record.readOnly);
    await mkdir(record.stagingPath, { recursive: true });
    await mountFilesystem(record.attached.device, record.stagingPath, record.fsType!, {
      readOnly: record.readOnly,
      flags: record.mountFlags,
    });
  }

  function sameStage(
    record: AttachmentRecord,
    capability: NodeCapability,
    readOnly: boolean,
  ): boolean {
    return (
      record.accessType === capability.accessType &&
      record.fsType === capability.fsType &&
      record.readOnly === readOnly &&
      record.mountFlags.join(',') === capability.mountFlags.join(',')
    );
  }

  /** Attach, record, make the filesystem and mount it (or the block volume's directory). */
  async function attachAndStage(stage: Omit<AttachmentRecord, 'attached' | 'attachedAt'>) {
    // A writer waits until its storage node serves the volume writable (writable-export.ts).
    if (!stage.readOnly)
      await waitUntilWritable(nbd, stage.volumeId, options.writableWaitMs ?? WRITABLE_WAIT_MS);
    const attached = await attachers[attachMode].attach(stage.volumeId, stage.readOnly);
    const record: AttachmentRecord = { ...stage, attached, attachedAt: new Date().toISOString() };
    try {
      await store.put(record);
      if (record.accessType === 'mount') await mountStaged(record);
      else await mkdir(record.stagingPath, { recursive: true });
    } catch (err) {
      await tearDown(record).catch((undo) =>
        log.error(
          { volumeId: record.volumeId, err: String(undo) },
          'undoing a failed stage failed',
        ),
      );
      throw err;
    }
    log.info(
      { volumeId: record.volumeId, device: attached.device, staging: record.stagingPath },
      'volume staged',
    );
  }

  /**
   * A broken attachment (its helper gone with a restarted keeper, its device
   * unbound) attached again as it was staged. Only when no pod still holds
   * the old device: their mounts cannot be moved onto a new one.
   */
  async function attachAgain(record: AttachmentRecord, problem: string): Promise<void> {
    const inUse = await publications(record).catch(() => []);
    if (inUse.length > 0)
      throw failedPrecondition(
        `${record.volumeId} is attached no more (${problem}) and still mounted at ${inUse.join(', ')}: ` +
          'those pods get I/O errors until they are restarted; it is attached again once they let go',
      );
    log.warn(
      { volumeId: record.volumeId, problem },
      'staged volume found broken; attaching it again',
    );
    await tearDown(record);
    const { attached: _old, attachedAt: _at, ...stage } = record;
    await attachAndStage(stage);
  }

  const NodeStageVolume: CsiHandler = async (request) => {
    const volumeId = requireString(request, 'volume_id');
    const staging = await inside(
      requireString(request, 'staging_target_path'),
      'staging_target_path',
    );
    const capability = parseCapability(request);
    const readOnly = capability.readOnlyAccess || volumeId.includes('@');
    return serialized(volumeId, async () => {
      const existing = await store.get(volumeId);
      if (existing) {
        if (existing.stagingPath !== staging)
          throw alreadyExists(
            `${volumeId} is staged at ${existing.stagingPath} on this node already`,
          );
        if (!sameStage(existing, capability, readOnly))
          throw alreadyExists(
            `${volumeId} is staged with another capability (${describe(existing)})`,
          );
        const problem = await attacherOf(existing).problem(existing.attached);
        if (problem === undefined || !problem.broken) {
          // A transient problem (the server away) is the helper's to ride out: tearing
          // down would drop the writes it holds for the server.
          if (existing.accessType === 'mount' && !(await findMount(staging)))
            await mountStaged(existing);
          return {};
        }
        await attachAgain(existing, problem.message);
        return {};
      }
      await attachAndStage({
        volumeId,
        readOnly,
        stagingPath: staging,
        accessType: capability.accessType,
        fsType: capability.fsType,
        mountFlags: capability.mountFlags,
      });
      return {};
    });
  };

  const NodeUnstageVolume: CsiHandler = async (request) => {
    const volumeId = requireString(request, 'volume_id');
    const staging = await inside(
      requireString(request, 'staging_target_path'),
      'staging_target_path',
    );
    return serialized(volumeId, async () => {
      const record = await store.get(volumeId);
      if (!record || record.stagingPath !== staging) {
        // Not ours or already gone: the spec's idempotent answer is OK.
        if (await findMount(staging)) await unmount(staging);
        return {};
      }
      const inUse = await publications(record).catch(() => []);
      if (inUse.length > 0)
        throw failedPrecondition(
          `${volumeId} is still published at ${inUse.join(', ')}: unpublish first`,
        );
      await tearDown(record);
      log.info({ volumeId }, 'volume unstaged');
      return {};
    });
  };

  const NodePublishVolume: CsiHandler = async (request) => {
    const volumeId = requireString(request, 'volume_id');
    const staging = await inside(
      requireString(request, 'staging_target_path'),
      'staging_target_path',
    );
    const target = await inside(requireString(request, 'target_path'), 'target_path');
    const capability = parseCapability(request);
    return serialized(volumeId, async () => {
      let record = await store.get(volumeId);
      if (!record || record.stagingPath !== staging)
        throw failedPrecondition(`${volumeId} is not staged at ${staging}: NodeStageVolume first`);
      if (record.accessType !== capability.accessType)
        throw failedPrecondition(
          `${volumeId} was staged as ${record.accessType}, not ${capability.accessType}`,
        );
      const readOnly = request.readonly === true || record.readOnly;
      const existing = await findMount(target);
      if (existing) {
        const same =
          record.accessType === 'mount'
            ? existing.device === (await findMount(staging))?.device
            : (await stat(target)).rdev === (await stat(record.attached.device)).rdev;
        if (same && isReadOnly(existing) === readOnly) return {};
        throw alreadyExists(
          `${target} already has ${same ? 'this volume with other options' : 'another mount'}`,
        );
      }
      // kubelet publishes a new pod on a staged volume without staging it again:
      // a pod is never given an attachment that is broken (e.g. after a keeper restart).
      const problem = await attacherOf(record).problem(record.attached);
      if (problem?.broken) {
        await attachAgain(record, problem.message);
        record = (await store.get(volumeId))!;
      }
      if (record.accessType === 'mount') {
        await mkdir(target, { recursive: true });
        await bindMount(staging, target, readOnly);
      } else {
        await mkdir(dirname(target), { recursive: true });
        await (await open(target, 'a')).close();
        await bindMount(record.attached.device, target, readOnly);
      }
      return {};
    });
  };

  const NodeUnpublishVolume: CsiHandler = async (request) => {
    const volumeId = requireString(request, 'volume_id');
    const target = await inside(requireString(request, 'target_path'), 'target_path');
    return serialized(volumeId, async () => {
      while (await findMount(target)) await unmount(target);
      // The spec has the plugin remove what it made at the target: a block
      // volume's file, a mount's directory (empty once unmounted: rmdir, never rm -r).
      const info = await stat(target).catch(() => undefined);
      if (info?.isDirectory()) await rmdir(target);
      else if (info) await rm(target, { force: true });
      return {};
    });
  };

  const NodeExpandVolume: CsiHandler = async (request) => {
    const volumeId = requireString(request, 'volume_id');
    const volumePath = requireString(request, 'volume_path');
    const required = Number(request.capacity_range?.required_bytes ?? 0);
    return serialized(volumeId, async () => {
      const record = await store.get(volumeId);
      if (!record) throw notFound(`${volumeId} is not staged on this node`);
      const mounted = await findMount(volumePath);
      if (!mounted && volumePath !== record.stagingPath)
        throw notFound(`${volumeId} is not mounted at ${volumePath}`);
      if (record.readOnly)
        throw failedPrecondition(`${volumeId} is attached read-only: nothing to grow`);
      const size = await attacherOf(record).grow(record.attached);
      if (size < required)
        throw failedPrecondition(
          `${volumeId} is ${size} bytes on the server, less than the ${required} asked: ControllerExpandVolume first`,
        );
      if (record.accessType === 'mount')
        await growFilesystem(record.attached.device, record.stagingPath, record.fsType!);
      log.info({ volumeId, size }, 'volume expanded');
      return { capacity_bytes: String(size) };
    });
  };

  const NodeGetVolumeStats: CsiHandler = async (request) => {
    const volumeId = requireString(request, 'volume_id');
    const volumePath = requireString(request, 'volume_path');
    const record = await store.get(volumeId);
    if (!record) throw notFound(`${volumeId} is not staged on this node`);
    const usage = await volumeUsage(volumePath);
    const problem =
      (await attacherOf(record).problem(record.attached))?.message ??
      ((await nbdServerAnswers(nbd))
        ? undefined
        : `the NBD server at ${formatNbdAddress(nbd)} does not answer`);
    return {
      usage,
      volume_condition: {
        abnormal: problem !== undefined,
        message: problem ?? 'attached; the NBD server answers',
      },
    };
  };

  const NodeGetInfo: CsiHandler = async () => ({
    node_id: nodeId,
    max_volumes_per_node: String(maxVolumes),
    accessible_topology: { segments: { [TOPOLOGY_KEY]: nodeId } },
  });

  const NodeGetCapabilities: CsiHandler = async () => ({
    capabilities: [
      'STAGE_UNSTAGE_VOLUME',
      'EXPAND_VOLUME',
      'GET_VOLUME_STATS',
      'VOLUME_CONDITION',
      'SINGLE_NODE_MULTI_WRITER',
    ].map((type) => ({ rpc: { type } })),
  });

  const handlers: Record<string, CsiHandler> = {
    NodeStageVolume,
    NodeUnstageVolume,
    NodePublishVolume,
    NodeUnpublishVolume,
    NodeExpandVolume,
    NodeGetVolumeStats,
    NodeGetInfo,
    NodeGetCapabilities,
  };
  const service: CsiService = {};
  for (const [name, handler] of Object.entries(handlers)) service[name] = withErrorCodes(handler);
  return Object.assign(service, {
    attachMode,
    // Attachments belong to the node, not to this process: closing leaves them (a restart finds them).
    close: async () => {
      await Promise.allSettled([...busy.values()]);
    },
  }) as NodeService;
}

function describe(record: AttachmentRecord): string {
  return `${record.accessType}${record.fsType ? ` ${record.fsType}` : ''}${record.readOnly ? ', read-only' : ''}`;
}
