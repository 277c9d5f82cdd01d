/**
 * torusctl's cluster commands, against the cluster's etcd (-C/--etcd,
 * TORUS_ETCD, else 127.0.0.1:2379):
 *
 *   list-peers (peer list)       every live node and ring member, with status
 *   peer add PEER... | --all-peers
 *   peer remove PEER... [--force]
 *   ring get
 *   ring set-replication N
 *
 * PEER is a node's peer address or uuid. Ring changes go through casRing
 * (version + 1 by compare-and-swap); a removal is based on the ring version
 * its checks looked at, so a ring that moved meanwhile makes it fail rather
 * than act on a stale view.
 */
import { ConflictError, NotFoundError } from '../common/errors.js';
import { formatSize } from '../common/size.js';
import type { PeerInfo } from '../controlplane/membership/peer-info.js';
import {
  memberRows,
  readMembership,
  type MemberRow,
  type MembershipSnapshot,
} from '../controlplane/membership/peer-table.js';
import {
  addMembers,
  casRing,
  notInitialisedError,
  removeMembers,
  setReplication,
  type RingChange,
} from '../controlplane/membership/ring-store.js';
import type { MetadataStore } from '../controlplane/metadata/store.js';
import type { RingDescription } from '../model/ring/ring.js';
import { ArgumentError, refuseNegative, type Parsed } from './args.js';
import { withClusterStore } from '../library/cluster-store.js';
import { table, type Command } from './commands.js';
import { clusterEtcdFlags, etcdConfigOf, outputFlag } from './common-flags.js';

function withCluster<T>(args: Parsed, work: (meta: MetadataStore) => Promise<T>): Promise<T> {
  return withClusterStore(etcdConfigOf(args.values)!, work);
}

function outputFormat(args: Parsed): 'table' | 'json' {
  const format = args.values.output as string;
  if (format !== 'table' && format !== 'json')
    throw new ArgumentError(`--output: expected table or json, got "${format}"`);
  return format;
}

/** "now", "1 second ago", "3 minutes ago": how long before `now` `then` was. */
export function ago(then: number, now = Date.now()): string {
  const seconds = Math.round((now - then) / 1000);
  if (Math.abs(seconds) < 1) return 'now';
  if (seconds < 0) return `${-seconds} second${seconds === -1 ? '' : 's'} from now`;
  const units: [number, string][] = [
    [86400, 'day'],
    [3600, 'hour'],
    [60, 'minute'],
    [1, 'second'],
  ];
  for (const [size, name] of units) {
    if (seconds >= size) {
      const n = Math.floor(seconds / size);
      return `${n} ${name}${n === 1 ? '' : 's'} ago`;
    }
  }
  return 'now';
}

function percent(part: number, whole: number): string {
  return `${(whole > 0 ? (part / whole) * 100 : 0).toFixed(2)}%`;
}

function rate(bytesPerSecond: number): string {
  return `${formatSize(bytesPerSecond)}/sec`;
}

interface PeerListing {
  rows: MemberRow[];
  ring: RingDescription | undefined;
  balanced: boolean;
  /** Live nodes whose rebalancer has data to move. */
  rebalancing: number;
  /** Bytes those nodes' last rebalance runs left to move (nodes that say). */
  pending: number;
  capacity: number;
  used: number;
}

function listing(snapshot: MembershipSnapshot): PeerListing {
  const peers = [...snapshot.peers.values()].map((p) => p.info);
  return {
    rows: memberRows(peers, snapshot.ring?.description),
    ring: snapshot.ring?.description,
    balanced: !peers.some((p) => p.rebalancing),
    rebalancing: peers.filter((p) => p.rebalancing).length,
    pending: peers.reduce((sum, p) => sum + (p.rebalancePending ?? 0), 0),
    capacity: peers.reduce((sum, p) => sum + p.capacity, 0),
    used: peers.reduce((sum, p) => sum + p.used, 0),
  };
}

function printListing(list: PeerListing, format: 'table' | 'json'): void {
  const now = Date.now();
  if (format === 'json') {
    const peers = list.rows.map((r) => ({
      uuid: r.uuid,
      member: r.status,
      weight: r.weight,
      ...(r.peer ? { ...r.peer } : {}),
    }));
    process.stdout.write(
      JSON.stringify(
        {
          peers,
          ringVersion: list.ring?.version,
          balanced: list.balanced,
          pending: list.pending,
          capacity: list.capacity,
          used: list.used,
        },
        null,
        2,
      ) + '\n',
    );
    return;
  }
  const rows = list.rows.map((r) =>
    r.peer
      ? [
          r.peer.address,
          r.uuid,
          formatSize(r.peer.capacity),
          formatSize(r.peer.used),
          r.status,
          ago(r.peer.lastSeen, now),
          `${rate(r.peer.rebalanceRate)} / ${rate(r.peer.replicationRate)}`,
        ]
      : ['-', r.uuid, '-', '-', r.status, 'missing', '-'],
  );
  process.stdout.write(
    table(['ADDRESS', 'UUID', 'SIZE', 'USED', 'MEMBER', 'UPDATED', 'REB/REP DATA'], rows),
  );
  // Pending is each node's last finished pass: a lower bound while a pass runs.
  const moving = list.balanced
    ? ''
    : ` (${list.rebalancing} node${list.rebalancing === 1 ? '' : 's'} rebalancing${list.pending > 0 ? `, ${formatSize(list.pending)} left to move` : ''})`;
  process.stdout.write(`Balanced: ${list.balanced}${moving}\n`);
  process.stdout.write(
    `Total: ${formatSize(list.used)} used of ${formatSize(list.capacity)} (${percent(list.used, list.capacity)})\n`,
  );
  if (!list.ring)
    process.stderr.write(
      'torusctl: the cluster is not initialised (no ring): run torusctl -C ETCD init\n',
    );
}

/** The live node an argument names, by peer address or uuid. */
function findLive(snapshot: MembershipSnapshot, arg: string): PeerInfo {
  const live = [...snapshot.peers.values()].map((p) => p.info);
  const byUuid = live.find((p) => p.uuid === arg);
  if (byUuid) return byUuid;
  const byAddress = live.filter((p) => p.address === arg || p.address === arg.replace(/\/$/, ''));
  if (byAddress.length > 1) {
    throw new ConflictError(
      `${byAddress.length} live nodes register address ${arg} (${byAddress.map((p) => p.uuid).join(', ')}): name one by uuid`,
    );
  }
  if (byAddress.length === 1) return byAddress[0];
  throw new NotFoundError(`no live node has address or uuid ${arg} (see torusctl list-peers)`);
}

/** The ring member an argument names: a uuid, or the address of a live member. */
function findMember(snapshot: MembershipSnapshot, ring: RingDescription, arg: string): MemberRow {
  const rows = memberRows(
    [...snapshot.peers.values()].map((p) => p.info),
    ring,
  );
  const row =
    rows.find((r) => r.uuid === arg) ??
    rows.find(
      (r) =>
        r.peer &&
        (r.peer.address === arg || r.peer.address === arg.replace(/\/$/, '')) &&
        r.status === 'OK',
    );
  if (row?.status === 'OK' || row?.status === 'DOWN') return row;
  if (row)
    throw new ConflictError(`${arg} is not in the ring (it is ${row.status}); nothing to remove`);
  throw new NotFoundError(
    `no ring member has uuid ${arg}, nor a live member that address (a DOWN member is named by its uuid; see torusctl list-peers)`,
  );
}

function describeChange(change: RingChange): string {
  const { previous, ring } = change;
  return change.changed
    ? `ring version ${previous.version} → ${ring.description.version}`
    : `ring unchanged at version ${previous.version}`;
}

function peerLabel(row: { uuid: string; peer?: PeerInfo }): string {
  return row.peer ? `${row.peer.address} (${row.uuid})` : row.uuid;
}

const peerAddSpec = {
  usage: 'peer add PEER... | --all-peers',
  summary: 'add nodes to the ring, by peer address or uuid, so they store data',
  positionals: ['PEER...'],
  minPositionals: 0,
  flags: {
    'all-peers': { type: 'boolean' as const, help: 'add every live node that is not in the ring' },
    ...clusterEtcdFlags,
  },
};

const peerRemoveSpec = {
  usage: 'peer remove PEER... [--force]',
  summary:
    'take nodes out of the ring (a DOWN node, or fewer members than replication, needs --force)',
  positionals: ['PEER...'],
  minPositionals: 1,
  flags: {
    force: {
      type: 'boolean' as const,
      help:
        'also remove DOWN members (their copies are gone for good; only other replicas remain) and let the ring ' +
        'fall below the replication factor or to no members at all',
    },
    ...clusterEtcdFlags,
  },
};

export function clusterCommands(): Command[] {
  return [
    {
      words: ['list-peers'],
      aliases: [
        ['peer', 'list'],
        ['peer', 'ls'],
      ],
      spec: {
        usage: 'list-peers [-o json]',
        summary:
          'show live nodes and ring members: OK (in the ring), Avail (not in it), DOWN (in it, not alive)',
        flags: { output: outputFlag, ...clusterEtcdFlags },
      },
      async run(args) {
        const format = outputFormat(args);
        const list = await withCluster(args, async (meta) => listing(await readMembership(meta)));
        printListing(list, format);
      },
    },
    {
      words: ['peer', 'add'],
      spec: peerAddSpec,
      async run(args) {
        const all = Boolean(args.values['all-peers']);
        if (all && args.positionals.length > 0)
          throw new ArgumentError('give peers or --all-peers, not both');
        if (!all && args.positionals.length === 0)
          throw new ArgumentError(
            `missing PEER (an address or uuid), or --all-peers (usage: ${peerAddSpec.usage})`,
          );
        await withCluster(args, async (meta) => {
          const snapshot = await readMembership(meta);
          if (!snapshot.ring) throw notInitialisedError();
          const members = new Set(snapshot.ring.description.members.map((m) => m.uuid));
          const chosen = all
            ? [...snapshot.peers.values()].map((p) => p.info).filter((p) => !members.has(p.uuid))
            : [
                ...new Map(
                  args.positionals.map((arg) => findLive(snapshot, arg)).map((p) => [p.uuid, p]),
                ).values(),
              ];
          const adding = chosen.filter((p) => !members.has(p.uuid));
          for (const p of chosen)
            if (members.has(p.uuid))
              process.stdout.write(
                `already in the ring: ${peerLabel({ uuid: p.uuid, peer: p })}\n`,
              );
          if (adding.length === 0) {
            process.stdout.write(
              `${all ? 'no live node outside the ring; ' : ''}ring unchanged at version ${snapshot.ring.description.version}\n`,
            );
            return;
          }
          const change = await casRing(
            meta,
            undefined,
            addMembers(adding.map((p) => ({ uuid: p.uuid, weight: Math.max(1, p.capacity) }))),
          );
          const added = new Set(change.ring.description.members.map((m) => m.uuid));
          for (const p of adding)
            if (added.has(p.uuid))
              process.stdout.write(`added ${peerLabel({ uuid: p.uuid, peer: p })}\n`);
          process.stdout.write(
            `${describeChange(change)} (${change.ring.description.members.length} members)\n`,
          );
        });
      },
    },
    {
      words: ['peer', 'remove'],
      aliases: [['peer', 'rm']],
      spec: peerRemoveSpec,
      async run(args) {
        const force = Boolean(args.values.force);
        await withCluster(args, async (meta) => {
          const snapshot = await readMembership(meta);
          if (!snapshot.ring) throw notInitialisedError();
          const ring = snapshot.ring.description;
          const targets = [
            ...new Map(
              args.positionals
                .map((arg) => findMember(snapshot, ring, arg))
                .map((r) => [r.uuid, r]),
            ).values(),
          ];
          const left = ring.members.length - targets.length;
          if (!force) {
            const down = targets.filter((t) => t.status === 'DOWN');
            if (down.length > 0) {
              throw new ConflictError(
                `${down.map((t) => t.uuid).join(', ')} ${down.length === 1 ? 'is' : 'are'} DOWN: removing a node that cannot hand its data over loses its copies for good ` +
                  `(blocks survive only where other replicas are). If it is gone, repeat with --force`,
              );
            }
            if (left === 0)
              throw new ConflictError(
                'this would leave the ring with no members: nothing could store data. Repeat with --force if that is what you want',
              );
            if (left < ring.replication) {
              throw new ConflictError(
                `this would leave ${left} member${left === 1 ? '' : 's'} for replication ${ring.replication}: blocks would have fewer copies than asked. Lower it first (torusctl ring set-replication ${left}) or repeat with --force`,
              );
            }
          }
          // Based on the version the checks saw: if the ring moved, they are stale.
          const change = await casRing(
            meta,
            ring.version,
            removeMembers(targets.map((t) => t.uuid)),
          );
          for (const t of targets)
            process.stdout.write(
              `removed ${peerLabel(t)}${t.status === 'DOWN' ? ' (DOWN)' : ''}\n`,
            );
          process.stdout.write(
            `${describeChange(change)} (${change.ring.description.members.length} members)\n`,
          );
        });
      },
    },
    {
      words: ['ring', 'get'],
      spec: {
        usage: 'ring get [-o json]',
        summary: 'show the ring: version, type, replication, members with their weight and share',
        flags: { output: outputFlag, ...clusterEtcdFlags },
      },
      async run(args) {
        const format = outputFormat(args);
        const snapshot = await withCluster(args, (meta) => readMembership(meta));
        if (!snapshot.ring) throw notInitialisedError();
        const ring = snapshot.ring.description;
        if (format === 'json') {
          process.stdout.write(JSON.stringify(ring, null, 2) + '\n');
          return;
        }
        const total = ring.members.reduce((sum, m) => sum + m.weight, 0);
        process.stdout.write(
          `Ring: ${ring.type}\nVersion: ${ring.version}\nReplication: ${ring.replication}\nMembers: ${ring.members.length}\n`,
        );
        if (ring.members.length === 0) return;
        const rows = [...ring.members]
          .sort((a, b) => a.uuid.localeCompare(b.uuid))
          .map((m) => {
            const peer = snapshot.peers.get(m.uuid)?.info;
            return [
              m.uuid,
              peer?.address ?? '-',
              formatSize(m.weight),
              percent(m.weight, total),
              peer ? 'OK' : 'DOWN',
            ];
          });
        process.stdout.write(table(['UUID', 'ADDRESS', 'WEIGHT', 'SHARE', 'STATUS'], rows));
      },
    },
    {
      words: ['ring', 'set-replication'],
      spec: {
        usage: 'ring set-replication N',
        summary: 'set how many copies of each block the ring asks for (N ≥ 1)',
        positionals: ['N'],
        flags: { ...clusterEtcdFlags },
      },
      async run(args) {
        const [text] = args.positionals;
        refuseNegative('N', text);
        const replication = Number(text);
        if (!/^\d+$/.test(text) || !Number.isSafeInteger(replication) || replication < 1) {
          throw new ArgumentError(`N: expected a whole number of copies ≥ 1, got "${text}"`);
        }
        await withCluster(args, async (meta) => {
          const change = await casRing(meta, undefined, setReplication(replication));
          const ring = change.ring.description;
          process.stdout.write(
            `replication ${change.previous.replication} → ${ring.replication}; ${describeChange(change)}\n`,
          );
          if (ring.members.length < ring.replication) {
            process.stdout.write(
              `note: the ring has ${ring.members.length} member${ring.members.length === 1 ? '' : 's'}; blocks get at most that many copies until more are added\n`,
            );
          }
        });
      },
    },
  ];
}
