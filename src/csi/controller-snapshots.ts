/**
 * The Controller's snapshot RPCs. A snapshot id is `<volume>@<snapshot>`;
 * snapshots are metadata only in Torus (a kept version), so each is ready to
 * use at once. CreateSnapshot is idempotent by name across the whole pool:
 * the same name of the same source is the same snapshot, of another source
 * ALREADY_EXISTS. A snapshot holds what was flushed when it was taken: the
 * filesystem's state after a crash at that moment (its journal replays).
 */
import { ConflictError, NotFoundError } from '../common/errors.js';
import type { SnapshotInfo } from '../library/volume-operations.js';
import { isMarker, type ControllerContext } from './controller-context.js';
import { CsiError, GrpcStatus, notFound } from './csi-error.js';
import { removeIfUnused } from './deleted-volumes.js';
import type { CsiMessage, CsiService } from './handlers.js';
import { retryWhileInUse } from './linger-wait.js';
import { requiredString, snapshotId, snapshotNameOf, snapshotOfId, volumeOfId } from './ids.js';
import { paginate } from './paging.js';

export function snapshotHandlers(ctx: ControllerContext): CsiService {
  const { torus } = ctx;
  return {
    async CreateSnapshot(request) {
      const source = requiredString(request.source_volume_id, 'source_volume_id');
      const name = snapshotNameOf(requiredString(request.name, 'name'));
      const volume = volumeOfId(source);
      if (!volume) throw notFound(`source volume ${source} does not exist`);
      const all = await torus.listAllSnapshots();
      const same = all.find((s) => s.snapshot === name && !isMarker(s));
      if (same && same.volume !== volume)
        throw new CsiError(
          GrpcStatus.ALREADY_EXISTS,
          `snapshot name ${name} is already taken by a snapshot of volume ${same.volume}`,
        );
      if (same) return { snapshot: snapshotMessage(same) };
      if (all.some((s) => s.volume === volume && isMarker(s)))
        throw notFound(`source volume ${source} does not exist (it was deleted)`);
      try {
        return { snapshot: snapshotMessage(await torus.createSnapshot(volume, name)) };
      } catch (err) {
        if (err instanceof NotFoundError) throw notFound(`source volume ${source} does not exist`);
        if (!(err instanceof ConflictError)) throw err;
        // Taken meanwhile by a retry of this same call: answer with it.
        const taken = (await torus.listSnapshots(volume)).find((s) => s.snapshot === name);
        if (!taken) throw err;
        return { snapshot: snapshotMessage(taken) };
      }
    },

    async DeleteSnapshot(request) {
      const id = requiredString(request.snapshot_id, 'snapshot_id');
      const parts = snapshotOfId(id);
      if (!parts) return {};
      // A node that served the snapshot unpins it just after its last reader went, not at once.
      await retryWhileInUse(async () => {
        try {
          await torus.deleteSnapshot(parts.volume, parts.snapshot);
        } catch (err) {
          if (!(err instanceof NotFoundError)) throw err;
        }
      }, ctx.inUseWaitMs);
      // A volume deleted while it had snapshots goes with its last one.
      await removeIfUnused(torus, parts.volume);
      return {};
    },

    async ListSnapshots(request) {
      const snapshots = (await selected(ctx, request)).filter((s) => !isMarker(s));
      const page = paginate(snapshots, (s) => s.name, request.max_entries, request.starting_token);
      return {
        entries: page.entries.map((s) => ({ snapshot: snapshotMessage(s) })),
        next_token: page.next_token,
      };
    },
  };
}

/** The snapshots ListSnapshots' filters select (an id that cannot be ours selects none). */
async function selected(ctx: ControllerContext, request: CsiMessage): Promise<SnapshotInfo[]> {
  const ofVolume = async (volume: string) =>
    ctx.torus.listSnapshots(volume).catch((err: unknown) => {
      if (err instanceof NotFoundError) return [];
      throw err;
    });
  const bySource = typeof request.source_volume_id === 'string' && request.source_volume_id !== '';
  const byId = typeof request.snapshot_id === 'string' && request.snapshot_id !== '';
  if (byId) {
    const parts = snapshotOfId(request.snapshot_id as string);
    if (!parts || (bySource && parts.volume !== request.source_volume_id)) return [];
    return (await ofVolume(parts.volume)).filter((s) => s.snapshot === parts.snapshot);
  }
  if (bySource) {
    const volume = volumeOfId(request.source_volume_id as string);
    return volume ? ofVolume(volume) : [];
  }
  return ctx.torus.listAllSnapshots();
}

function snapshotMessage(s: SnapshotInfo): CsiMessage {
  const ms = Date.parse(s.createdAt);
  return {
    snapshot_id: snapshotId(s.volume, s.snapshot),
    source_volume_id: s.volume,
    size_bytes: String(s.size),
    creation_time: { seconds: String(Math.floor(ms / 1000)), nanos: (ms % 1000) * 1e6 },
    ready_to_use: true,
  };
}
