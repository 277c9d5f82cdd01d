/**
 * The Controller service over the public Torus API: volumes' and
 * snapshots' lives, no attachment (every storage node serves every volume,
 * so there is no ControllerPublish: the CSIDriver says attachRequired:
 * false). Volume RPCs are here; snapshots in controller-snapshots.ts; the
 * delete of a volume with snapshots in deleted-volumes.ts. Errors: CsiError
 * where the spec names a code, Torus's typed errors mapped once
 * (torus-errors.ts).
 */
import { ConflictError, NotFoundError } from '../common/errors.js';
import type { Torus } from '../library/torus.js';
import type { VolumeInfo } from '../library/volume-operations.js';
import {
  capacityRangeOf,
  MAX_VOLUME_BYTES,
  outOfRange,
  roundUp,
  satisfies,
  sizeFor,
  type CapacityRange,
} from './capacity.js';
import { capabilityProblem, checkCapabilities, requiredCapabilities } from './capabilities.js';
import { findVolume, type ControllerContext } from './controller-context.js';
import { snapshotHandlers } from './controller-snapshots.js';
import { CsiError, GrpcStatus, invalidArgument, notFound } from './csi-error.js';
import { deleteOrHide } from './deleted-volumes.js';
import type { CsiMessage, CsiService } from './handlers.js';
import { IN_USE_WAIT_MS, retryWhileInUse } from './linger-wait.js';
import { DELETED_MARKER, requiredString, snapshotOfId, volumeNameOf, volumeOfId } from './ids.js';
import { paginate } from './paging.js';
import {
  DEFAULT_FS_TYPE,
  parseParameters,
  type FsType,
  type VolumeParameters,
} from './parameters.js';
import { mappingTorusErrors } from './torus-errors.js';
import { contentSourceOf, volumeContext } from './volume-context.js';

export interface ControllerOptions {
  /** Torus.connect (a cluster) or Torus.open (a single node's data dir). */
  torus: Torus;
  /** Encrypted volumes can be made: a cluster needs the master key file (--key-file); a single node has a default. */
  canEncrypt?: boolean;
  /** How long a delete refused as "in use" is retried, waiting out a node's --lock-linger (default IN_USE_WAIT_MS). */
  inUseWaitMs?: number;
}

const CAPABILITIES = [
  'CREATE_DELETE_VOLUME',
  'LIST_VOLUMES',
  'GET_CAPACITY',
  'CREATE_DELETE_SNAPSHOT',
  'LIST_SNAPSHOTS',
  'CLONE_VOLUME',
  'EXPAND_VOLUME',
  'SINGLE_NODE_MULTI_WRITER',
];

export function createControllerService(
  options: ControllerOptions,
): CsiService & { close(): Promise<void> } {
  const { torus } = options;
  const cluster = torus.etcd !== undefined;
  let blockSize: Promise<number> | undefined;
  const ctx: ControllerContext = {
    torus,
    cluster,
    canEncrypt: options.canEncrypt ?? !cluster,
    inUseWaitMs: options.inUseWaitMs ?? IN_USE_WAIT_MS,
    blockSize() {
      blockSize ??= torus.poolSpace().then((space) => space.blockSize);
      blockSize.catch(() => (blockSize = undefined));
      return blockSize;
    },
  };
  const handlers: CsiService = {
    CreateVolume: (request) => createVolume(ctx, request),
    async DeleteVolume(request) {
      const id = requiredString(request.volume_id, 'volume_id');
      const name = volumeOfId(id);
      if (name) await retryWhileInUse(() => deleteOrHide(torus, name), ctx.inUseWaitMs);
      return {};
    },
    ControllerExpandVolume: (request) => expandVolume(ctx, request),
    ValidateVolumeCapabilities: (request) => validateCapabilities(ctx, request),
    async ListVolumes(request) {
      const [volumes, snapshots, size] = await Promise.all([
        torus.listVolumes(),
        torus.listAllSnapshots(),
        ctx.blockSize(),
      ]);
      const hidden = new Set(
        snapshots.filter((s) => s.snapshot === DELETED_MARKER).map((s) => s.volume),
      );
      const page = paginate(
        volumes.filter((v) => !hidden.has(v.name)),
        (v) => v.name,
        request.max_entries,
        request.starting_token,
      );
      return {
        entries: page.entries.map((v) => ({ volume: volumeMessage(v, size) })),
        next_token: page.next_token,
      };
    },
    GetCapacity: (request) => getCapacity(ctx, request),
    async ControllerGetCapabilities() {
      return { capabilities: CAPABILITIES.map((type) => ({ rpc: { type } })) };
    },
    ...snapshotHandlers(ctx),
  };
  const service: CsiService = {};
  for (const [method, handler] of Object.entries(handlers))
    service[method] = mappingTorusErrors(handler);
  return Object.assign(service, { close: () => torus.close() });
}

/** A volume as CSI shows it (ListVolumes; CreateVolume adds what the node needs). */
function volumeMessage(v: VolumeInfo, blockSize: number, extra: CsiMessage = {}): CsiMessage {
  return {
    volume_id: v.name,
    capacity_bytes: String(v.size),
    volume_context: volumeContext({ blockSize }),
    ...extra,
  };
}

async function createVolume(ctx: ControllerContext, request: CsiMessage): Promise<CsiMessage> {
  const name = volumeNameOf(requiredString(request.name, 'name'));
  const capabilities = checkCapabilities(
    requiredCapabilities(request.volume_capabilities, 'volume_capabilities'),
    'volume_capabilities',
  );
  const parameters = parseParameters(request.parameters, { cluster: ctx.cluster });
  if (parameters.encrypted && !ctx.canEncrypt)
    throw new CsiError(
      GrpcStatus.FAILED_PRECONDITION,
      'parameter encrypted: this controller has no master key file; start it with --key-file (the same key the storage nodes use)',
    );
  if (parameters.fsType && capabilities.fsType && parameters.fsType !== capabilities.fsType)
    throw invalidArgument(
      `parameter fsType ${parameters.fsType} and the capability's mount.fs_type ${capabilities.fsType} disagree`,
    );
  const fsType: FsType = capabilities.fsType ?? parameters.fsType ?? DEFAULT_FS_TYPE;
  const range = capacityRangeOf(request.capacity_range);
  const blockSize = await ctx.blockSize();
  const source = contentSourceOf(request.volume_content_source);
  const made = await (source
    ? cloneFrom(ctx, name, source, range, parameters, blockSize)
    : ctx.torus
        .createVolume(name, sizeFor(range, blockSize), {
          encrypt: parameters.encrypted,
          replication: parameters.replication,
        })
        .catch(existing(ctx, name, range, parameters, undefined)));
  return {
    volume: {
      volume_id: name,
      capacity_bytes: String(made.size),
      volume_context: volumeContext({ blockSize, fsType }),
      ...(source ? { content_source: request.volume_content_source } : {}),
    },
  };
}

/** CreateVolume from a snapshot (`VOL@SNAP`) or a volume: an instant copy-on-write clone. */
async function cloneFrom(
  ctx: ControllerContext,
  name: string,
  source: { kind: 'snapshot' | 'volume'; id: string },
  range: CapacityRange,
  parameters: VolumeParameters,
  blockSize: number,
): Promise<VolumeInfo> {
  const missing = () => notFound(`content source ${source.kind} ${source.id} does not exist`);
  let origin: { size: number; encrypted: boolean; replication?: number };
  if (source.kind === 'snapshot') {
    const parts = snapshotOfId(source.id);
    if (!parts) throw missing();
    const list = await ctx.torus.listSnapshots(parts.volume).catch(() => []);
    const snapshot = list.find((s) => s.snapshot === parts.snapshot);
    if (!snapshot) throw missing();
    origin = snapshot;
  } else {
    const volume = volumeOfId(source.id);
    const found = volume ? await findVolume(ctx.torus, volume) : undefined;
    if (!found || found.hidden) throw missing();
    origin = found.info;
  }
  if (parameters.encrypted !== origin.encrypted)
    throw invalidArgument(
      `parameter encrypted is ${parameters.encrypted} but the source is ${origin.encrypted ? '' : 'not '}encrypted: a clone keeps its source's encryption`,
    );
  if (range.limit > 0 && range.limit < origin.size)
    throw outOfRange(
      `capacity_range.limit_bytes ${range.limit} is below the source's size ${origin.size}: a clone cannot be smaller`,
    );
  const size =
    range.required > 0 ? Math.max(roundUp(range.required, blockSize), origin.size) : origin.size;
  if (range.limit > 0 && size > range.limit)
    throw outOfRange(
      `capacity_range: ${size} bytes (rounded up to the block size) is above limit_bytes ${range.limit}`,
    );
  return ctx.torus
    .cloneVolume(source.id, name, { size })
    .catch((err: unknown) => {
      if (err instanceof NotFoundError) throw missing();
      throw err;
    })
    .catch(existing(ctx, name, range, parameters, source.id));
}

/**
 * CreateVolume's idempotency: when `name` exists, the same volume if it is
 * compatible with the request (capacity, encryption, replication, origin),
 * else ALREADY_EXISTS saying what differs.
 */
function existing(
  ctx: ControllerContext,
  name: string,
  range: CapacityRange,
  parameters: VolumeParameters,
  origin: string | undefined,
): (err: unknown) => Promise<VolumeInfo> {
  return async (err) => {
    if (!(err instanceof ConflictError)) throw err;
    const found = await findVolume(ctx.torus, name);
    if (!found) throw err;
    const clash = (why: string) =>
      new CsiError(GrpcStatus.ALREADY_EXISTS, `volume ${name} already exists ${why}`);
    if (found.hidden)
      throw clash('(deleted, kept until its snapshots are deleted): choose another name');
    const { info } = found;
    if (!satisfies(info.size, range))
      throw clash(`with ${info.size} bytes, outside the requested capacity range`);
    if (info.encrypted !== parameters.encrypted)
      throw clash(`${info.encrypted ? 'encrypted' : 'unencrypted'}, unlike the request`);
    if (parameters.replication !== undefined && info.replication !== parameters.replication)
      throw clash(
        `with replication ${info.replication ?? 'of the ring'}, not ${parameters.replication}`,
      );
    if ((info.origin ?? undefined) !== origin)
      throw clash(origin ? `but not as a clone of ${origin}` : `as a clone of ${info.origin}`);
    return info;
  };
}

async function expandVolume(ctx: ControllerContext, request: CsiMessage): Promise<CsiMessage> {
  const id = requiredString(request.volume_id, 'volume_id');
  const range = capacityRangeOf(request.capacity_range);
  if (range.required === 0) throw invalidArgument('capacity_range.required_bytes is required');
  const capability = request.volume_capability as CsiMessage | undefined;
  if (capability) {
    const problem = capabilityProblem(capability, 'volume_capability');
    if (problem) throw invalidArgument(problem);
  }
  const name = volumeOfId(id);
  const found = name ? await findVolume(ctx.torus, name) : undefined;
  if (!name || !found || found.hidden) throw notFound(`volume ${id} does not exist`);
  const target = roundUp(range.required, await ctx.blockSize());
  if (target > MAX_VOLUME_BYTES)
    throw outOfRange(`${target} bytes is beyond the largest Torus volume`);
  if (range.limit > 0 && Math.max(target, found.info.size) > range.limit)
    throw outOfRange(
      `capacity_range.limit_bytes ${range.limit} is below ${Math.max(target, found.info.size)} bytes (the rounded request or the current size; volumes do not shrink)`,
    );
  let size = found.info.size;
  if (size < target) {
    try {
      size = (await ctx.torus.resizeVolume(name, target)).size;
    } catch (err) {
      // The request is checked above: what Torus still refuses is the size itself (beyond the pool).
      if (err instanceof Error && err.name === 'UsageError') throw outOfRange(err.message);
      throw err;
    }
  }
  return {
    capacity_bytes: String(size),
    node_expansion_required: capability?.access_type !== 'block',
  };
}

async function validateCapabilities(
  ctx: ControllerContext,
  request: CsiMessage,
): Promise<CsiMessage> {
  const id = requiredString(request.volume_id, 'volume_id');
  const capabilities = requiredCapabilities(request.volume_capabilities, 'volume_capabilities');
  const name = volumeOfId(id);
  const found = name ? await findVolume(ctx.torus, name) : undefined;
  if (!found || found.hidden) throw notFound(`volume ${id} does not exist`);
  const problems = capabilities
    .map((c, i) => capabilityProblem(c, `volume_capabilities[${i}]`))
    .filter((p): p is string => p !== undefined);
  try {
    parseParameters(request.parameters, { cluster: ctx.cluster });
  } catch (err) {
    problems.push((err as Error).message);
  }
  if (problems.length > 0) return { message: problems.join('; ') };
  return {
    confirmed: {
      volume_context: request.volume_context ?? {},
      volume_capabilities: capabilities,
      parameters: request.parameters ?? {},
    },
  };
}

async function getCapacity(ctx: ControllerContext, request: CsiMessage): Promise<CsiMessage> {
  const parameters = parseParameters(request.parameters, { cluster: ctx.cluster });
  const capabilities = (request.volume_capabilities ?? []) as CsiMessage[];
  const space = await ctx.torus.poolSpace();
  const copies = parameters.replication ?? space.replication;
  const unit = space.blockSize;
  const usable = (bytes: number) => Math.floor(bytes / copies / unit) * unit;
  const unsupported = capabilities.some((c, i) =>
    capabilityProblem(c, `volume_capabilities[${i}]`),
  );
  const free = Math.max(0, space.capacity - (space.used ?? 0));
  return {
    available_capacity: String(unsupported ? 0 : usable(free)),
    maximum_volume_size: { value: String(Math.min(MAX_VOLUME_BYTES, usable(space.capacity))) },
    minimum_volume_size: { value: String(unit) },
  };
}
