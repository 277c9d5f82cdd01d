/**
 * Where the node's NBD server answers, as the plugin's `--nbd-address` names
 * it: `HOST:PORT` (TCP; `[v6]:PORT` too) or `unix:PATH`.
 */
import { UsageError } from '../../common/errors.js';
import type { NbdAddress } from '../../dataplane/nbd-client/client.js';

export type { NbdAddress };

/**
 * How long the plugin's own NBD connections give the handshake. Above the
 * 15 s a storage node may take to open a volume whose writer just died (it
 * waits out the writer's lock, then replays its log: docs/cluster-flush.md),
 * so a pod moving off a dead node attaches at the first try.
 */
export const NBD_HANDSHAKE_TIMEOUT_MS = 30_000;

export function parseNbdAddress(text: string): NbdAddress {
  if (text.startsWith('unix:')) {
    const path = text.slice('unix:'.length);
    if (!path.startsWith('/'))
      throw new UsageError(
        `NBD address ${text}: give an absolute socket path, unix:/run/torus/nbd.sock`,
      );
    return { path };
  }
  const m = /^(?:\[([^\]]+)\]|([^:]+)):(\d+)$/.exec(text);
  const port = m ? Number(m[3]) : NaN;
  if (!m || !(port > 0 && port < 65536))
    throw new UsageError(
      `NBD address ${text}: expected HOST:PORT (e.g. 127.0.0.1:10809) or unix:PATH`,
    );
  return { host: m[1] ?? m[2]!, port };
}

export function formatNbdAddress(address: NbdAddress): string {
  return 'path' in address ? `unix:${address.path}` : `${address.host}:${address.port}`;
}
