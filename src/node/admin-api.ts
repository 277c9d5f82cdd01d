/**
 * The node's admin API: JSON over HTTP on a unix socket in the data
 * directory (`torusd.sock`), so torusctl can manage volumes while torusd holds
 * the store open — the store is never opened twice for writing. Access is
 * whoever can reach the socket file (mode 0600, like the data it fronts).
 *
 *   GET    /v1/status
 *   GET    /v1/volumes
 *   POST   /v1/volumes            {"name", "size", "encrypt"}
 *   DELETE /v1/volumes/NAME[?with-snapshots=1]
 *   POST   /v1/volumes/NAME/flush
 *   POST   /v1/volumes/NAME/resize {"size", "shrink"}
 *   GET    /v1/volumes/NAME/snapshots
 *   POST   /v1/volumes/NAME/snapshots          {"name"}
 *   DELETE /v1/volumes/NAME/snapshots/SNAP
 *   POST   /v1/volumes/NAME/snapshots/SNAP/restore
 *   POST   /v1/clones                          {"source": "SRC[@SNAP]", "name", "size"?}
 *
 * Errors come back as {"error": message, "kind": class name} with a status
 * code that says which kind (400 usage, 404 not found, 409 conflict, 500).
 */
import { chmod, unlink } from 'node:fs/promises';
import { connect } from 'node:net';
import {
  createServer,
  request,
  type IncomingMessage,
  type Server,
  type ServerResponse,
} from 'node:http';
import { ConflictError, NotFoundError, UsageError } from '../common/errors.js';
import type { StorageNode } from './storage-node.js';

const MAX_BODY = 64 * 1024;

function statusFor(err: unknown): number {
  if (err instanceof UsageError) return 400;
  if (err instanceof NotFoundError) return 404;
  if (err instanceof ConflictError) return 409;
  return 500;
}

async function readJson(req: IncomingMessage): Promise<Record<string, unknown>> {
  let size = 0;
  const chunks: Buffer[] = [];
  for await (const chunk of req) {
    size += (chunk as Buffer).length;
    if (size > MAX_BODY) throw new UsageError('request body too large');
    chunks.push(chunk as Buffer);
  }
  if (size === 0) return {};
  try {
    return JSON.parse(Buffer.concat(chunks).toString('utf8'));
  } catch {
    throw new UsageError('request body is not JSON');
  }
}

export async function startAdminApi(node: StorageNode, socketPath: string): Promise<Server> {
  const server = createServer((req, res) => {
    handle(node, req, res).catch((err: Error) =>
      reply(res, statusFor(err), { error: err.message, kind: err.name }),
    );
  });
  await unlink(socketPath).catch(() => undefined);
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(socketPath, () => resolve());
  });
  await chmod(socketPath, 0o600);
  return server;
}

function reply(res: ServerResponse, status: number, body: unknown): void {
  const text = JSON.stringify(body);
  res.writeHead(status, {
    'content-type': 'application/json',
    'content-length': Buffer.byteLength(text),
  });
  res.end(text);
}

async function handle(node: StorageNode, req: IncomingMessage, res: ServerResponse): Promise<void> {
  const url = new URL(req.url ?? '/', 'http://torusd');
  const parts = url.pathname.split('/').filter(Boolean).map(decodeURIComponent);
  if (parts[0] !== 'v1')
    return reply(res, 404, { error: `no such endpoint ${url.pathname}`, kind: 'NotFoundError' });
  const [, resource, name, action, snapshot, snapshotAction] = parts;
  if (resource === 'status' && req.method === 'GET') {
    // Space used is the store's: a single node commits what its intent log holds first.
    if (!node.cluster) await node.commitAndCollect();
    return reply(res, 200, node.status());
  }
  if (resource === 'clones' && !name && req.method === 'POST') {
    const body = await readJson(req);
    if (typeof body.source !== 'string' || typeof body.name !== 'string')
      throw new UsageError('expected {"source": "SRC[@SNAP]", "name": string, "size"?: bytes}');
    const size = typeof body.size === 'number' ? body.size : undefined;
    return reply(res, 201, await node.volumes.cloneVolume(body.source, body.name, { size }));
  }
  if (resource === 'volumes' && name && action === 'snapshots')
    return handleSnapshots(node, req, res, name, snapshot, snapshotAction);
  if (resource === 'volumes') {
    if (!name && req.method === 'GET') return reply(res, 200, await node.listVolumes());
    if (!name && req.method === 'POST') {
      const body = await readJson(req);
      if (typeof body.name !== 'string' || typeof body.size !== 'number')
        throw new UsageError('expected {"name": string, "size": bytes}');
      return reply(
        res,
        201,
        await node.createVolume(body.name, body.size, {
          encrypt: body.encrypt === true,
          replication: typeof body.replication === 'number' ? body.replication : undefined,
        }),
      );
    }
    if (name && !action && req.method === 'DELETE') {
      await node.deleteVolume(name, { withSnapshots: url.searchParams.has('with-snapshots') });
      return reply(res, 200, { deleted: name });
    }
    if (name && action === 'resize' && req.method === 'POST') {
      const body = await readJson(req);
      if (typeof body.size !== 'number') throw new UsageError('expected {"size": bytes}');
      return reply(
        res,
        200,
        await node.resizeVolume(name, body.size, { shrink: body.shrink === true }),
      );
    }
    if (name && action === 'flush' && req.method === 'POST') {
      await node.flushVolume(name);
      return reply(res, 200, { flushed: name });
    }
  }
  reply(res, 404, {
    error: `no such endpoint ${req.method} ${url.pathname}`,
    kind: 'NotFoundError',
  });
}

async function handleSnapshots(
  node: StorageNode,
  req: IncomingMessage,
  res: ServerResponse,
  volume: string,
  snapshot: string | undefined,
  action: string | undefined,
): Promise<void> {
  const admin = node.volumes;
  if (!snapshot && req.method === 'GET') return reply(res, 200, await admin.listSnapshots(volume));
  if (!snapshot && req.method === 'POST') {
    const body = await readJson(req);
    if (typeof body.name !== 'string') throw new UsageError('expected {"name": string}');
    return reply(res, 201, await admin.createSnapshot(volume, body.name));
  }
  if (snapshot && !action && req.method === 'DELETE')
    return reply(res, 200, await admin.deleteSnapshot(volume, snapshot));
  if (snapshot && action === 'restore' && req.method === 'POST')
    return reply(res, 200, await admin.restoreSnapshot(volume, snapshot));
  reply(res, 404, { error: `no such endpoint ${req.method} ${req.url}`, kind: 'NotFoundError' });
}

/** Client side, for torusctl. Resolves undefined when no node answers on the socket. */
export async function adminCall<T>(
  socketPath: string,
  method: string,
  path: string,
  body?: unknown,
): Promise<T | undefined> {
  const payload = body === undefined ? undefined : JSON.stringify(body);
  return new Promise<T | undefined>((resolve, reject) => {
    const req = request(
      {
        // A connection per call, made here, no agent: a kept-alive one the
        // server closed while idle (its keep-alive timeout) would fail the
        // next call with EPIPE; and an agent names the server from the host
        // with isIP(), whose first call compiles a regex (~12 ms of a
        // torusctl command's start-up).
        createConnection: () => connect(socketPath),
        method,
        path,
        headers: payload
          ? { 'content-type': 'application/json', 'content-length': Buffer.byteLength(payload) }
          : {},
        timeout: 120_000,
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => {
          let parsed: { error?: string; kind?: string };
          try {
            parsed = JSON.parse(Buffer.concat(chunks).toString('utf8'));
          } catch {
            reject(new Error(`torusd answered ${res.statusCode} with something that is not JSON`));
            return;
          }
          if ((res.statusCode ?? 500) >= 400) {
            const Kind = { UsageError, NotFoundError, ConflictError }[parsed.kind ?? ''] ?? Error;
            reject(new Kind(parsed.error ?? `torusd answered ${res.statusCode}`));
          } else resolve(parsed as T);
        });
      },
    );
    req.on('timeout', () => req.destroy(new Error('torusd did not answer within 120 s')));
    req.on('error', (err: NodeJS.ErrnoException) => {
      // No socket, or a socket left by a dead torusd: no node is running.
      if (err.code === 'ENOENT' || err.code === 'ECONNREFUSED') resolve(undefined);
      else reject(err);
    });
    if (payload) req.write(payload);
    req.end();
  });
}
