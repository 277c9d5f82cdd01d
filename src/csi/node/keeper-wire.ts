/**
 * The attachment keeper's protocol (keeper.ts serves it, keeper-client.ts
 * speaks it): over a unix socket, one connection per request, one JSON line
 * each way.
 *
 *   {"protocol":1,"op":"start","args":{nbd,export,dir,readOnly}} → {"pid":N,"report":{"ready":true,"size":N}|{"error":…,"message":…}}
 *   {"protocol":1,"op":"alive","pid":N,"dir":DIR}                → {"alive":BOOL}
 *   {"protocol":1,"op":"kill","pid":N,"dir":DIR}                 → {"killed":BOOL}
 *   anything else                                                 → {"error":MESSAGE}
 *
 * `protocol` is checked so that a plugin and a keeper of different versions
 * (the keeper is upgraded only when its pod is deleted) refuse each other
 * with a message instead of misreading each other.
 */
import { isAbsolute, normalize } from 'node:path';
import type { FuseFileHelperArgs } from './fuse-file-main.js';
import type { HelperReport } from './helper-launcher.js';

export const KEEPER_PROTOCOL = 1;
/** A request is a few hundred bytes; anything longer is not one. */
export const MAX_KEEPER_LINE_BYTES = 16 * 1024;

export type KeeperRequest =
  | { protocol: number; op: 'start'; args: FuseFileHelperArgs }
  | { protocol: number; op: 'alive'; pid: number; dir: string }
  | { protocol: number; op: 'kill'; pid: number; dir: string };

export type KeeperReply =
  | { pid: number; report: HelperReport }
  | { alive: boolean }
  | { killed: boolean }
  | { error: string };

/** A request the keeper cannot take; the message goes back to the plugin. */
export class KeeperProtocolError extends Error {
  override name = 'KeeperProtocolError';
}

/**
 * Parse and check one request line. Helper directories must lie under
 * `helpersRoot` (`<stateDir>/fuse`): the socket starts root processes that
 * mount, so it takes nothing it would not have been asked by a plugin.
 */
export function parseKeeperRequest(line: string, helpersRoot: string): KeeperRequest {
  let value: Record<string, unknown>;
  try {
    value = JSON.parse(line) as Record<string, unknown>;
  } catch {
    throw new KeeperProtocolError(`not a JSON request: ${line.slice(0, 80)}`);
  }
  if (value.protocol !== KEEPER_PROTOCOL)
    throw new KeeperProtocolError(
      `protocol ${String(value.protocol)} asked, this keeper speaks ${KEEPER_PROTOCOL}: run the plugin and the keeper from the same release`,
    );
  const insideRoot = (dir: unknown): string => {
    if (typeof dir !== 'string' || !isAbsolute(dir) || normalize(dir) !== dir)
      throw new KeeperProtocolError(`dir: expected an absolute normal path, got ${String(dir)}`);
    if (!dir.startsWith(helpersRoot + '/'))
      throw new KeeperProtocolError(
        `${dir} is outside ${helpersRoot}: give the keeper the plugin's --state-dir`,
      );
    return dir;
  };
  if (value.op === 'start') {
    const args = value.args as Partial<FuseFileHelperArgs> | undefined;
    if (
      !args ||
      typeof args.export !== 'string' ||
      typeof args.readOnly !== 'boolean' ||
      typeof args.nbd !== 'object' ||
      args.nbd === null
    )
      throw new KeeperProtocolError('start: args needs nbd, export, dir and readOnly');
    insideRoot(args.dir);
    return { protocol: KEEPER_PROTOCOL, op: 'start', args: args as FuseFileHelperArgs };
  }
  if (value.op === 'alive' || value.op === 'kill') {
    if (!Number.isSafeInteger(value.pid) || (value.pid as number) <= 1)
      throw new KeeperProtocolError(
        `${value.op}: pid must be a process id, got ${String(value.pid)}`,
      );
    const pid = value.pid as number;
    const dir = insideRoot(value.dir);
    return value.op === 'alive'
      ? { protocol: KEEPER_PROTOCOL, op: 'alive', pid, dir }
      : { protocol: KEEPER_PROTOCOL, op: 'kill', pid, dir };
  }
  throw new KeeperProtocolError(`unknown op ${String(value.op)}: expected start, alive or kill`);
}
