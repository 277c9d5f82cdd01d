/**
 * Where the node's NBD server answers, as the plugin's `--nbd-address` names
 * it: `HOST:PORT` (TCP; `[v6]:PORT` too) or `unix:PATH`.
 */
import { UsageError } from '../../common/errors.js';
import type { NbdAddress } from '../../dataplane/nbd-client/client.js';

export type { NbdAddress };

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
