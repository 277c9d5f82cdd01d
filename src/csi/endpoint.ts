/**
 * The --endpoint of a CSI plugin: where the kubelet and the sidecars reach
 * it. A unix socket (`unix:///csi/csi.sock`, or a bare path) is the norm;
 * TCP (`tcp://host:port`) is served only when written so, since it has no
 * authentication — never inferred from a `host:port` without a scheme.
 */
import { existsSync, lstatSync } from 'node:fs';
import { mkdir, rm } from 'node:fs/promises';
import { connect } from 'node:net';
import { dirname, resolve } from 'node:path';

export type CsiEndpoint =
  { kind: 'unix'; path: string } | { kind: 'tcp'; host: string; port: number };

export class EndpointError extends Error {
  override readonly name = 'EndpointError';
}

/** Parse an endpoint; EndpointError saying the accepted forms otherwise. */
export function parseEndpoint(text: string): CsiEndpoint {
  const forms = 'expected unix:///path/csi.sock, an absolute socket path, or tcp://host:port';
  if (text === '') throw new EndpointError(`empty endpoint: ${forms}`);
  if (text.startsWith('unix://') || text.startsWith('unix:')) {
    const path = text.replace(/^unix:(\/\/)?/, '');
    if (!path.startsWith('/'))
      throw new EndpointError(`endpoint "${text}": the socket path must be absolute (${forms})`);
    return { kind: 'unix', path };
  }
  if (text.startsWith('tcp://')) {
    const match = /^tcp:\/\/(?:\[([^\]]+)\]|([^:/]+)):(\d+)$/.exec(text);
    const port = match ? Number(match[3]) : NaN;
    if (!match || port < 1 || port > 65535) throw new EndpointError(`endpoint "${text}": ${forms}`);
    return { kind: 'tcp', host: match[1] ?? match[2], port };
  }
  if (/^[a-z][a-z0-9+.-]*:\/\//i.test(text) || !text.includes('/'))
    throw new EndpointError(`endpoint "${text}": ${forms}`);
  return { kind: 'unix', path: resolve(text) };
}

/** The address grpc-js binds for an endpoint. */
export function bindAddress(endpoint: CsiEndpoint): string {
  return endpoint.kind === 'unix'
    ? `unix://${endpoint.path}`
    : `${endpoint.host.includes(':') ? `[${endpoint.host}]` : endpoint.host}:${endpoint.port}`;
}

/**
 * Make a unix socket path ready to bind: its directory created, a stale
 * socket left by a killed plugin removed. A socket something still answers
 * on, or a path that is not a socket, is refused rather than taken over.
 */
export async function prepareSocketPath(path: string): Promise<void> {
  await mkdir(dirname(path), { recursive: true });
  if (!existsSync(path)) return;
  if (!lstatSync(path).isSocket())
    throw new EndpointError(
      `${path} exists and is not a socket: remove it or choose another endpoint`,
    );
  if (await answers(path))
    throw new EndpointError(
      `another process serves ${path}: stop it first (two plugins cannot share one endpoint)`,
    );
  await rm(path, { force: true });
}

function answers(path: string): Promise<boolean> {
  return new Promise((done) => {
    const socket = connect({ path });
    socket.once('connect', () => {
      socket.destroy();
      done(true);
    });
    socket.once('error', () => done(false));
  });
}
