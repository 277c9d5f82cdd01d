/**
 * Who holds a lock: enough for an operator to find the writer (which node,
 * which machine, which process, where it serves the volume) from the error a
 * second writer or a `volume delete` gets.
 */
import { hostname } from 'node:os';

export interface LockHolder {
  /** The node's UUID (stable across restarts of its data directory). */
  node: string;
  hostname: string;
  pid: number;
  /** Where the holder serves the volume (host:port), when it does. */
  address?: string;
}

/** Limits on the fields, so a lock record stays small (it is read on every refusal). */
const MAX_NODE = 128;
const MAX_TEXT = 255;

/** This process as a holder: `node` and `address` from the caller, the rest from the OS. */
export function localHolder(node: string, address?: string): LockHolder {
  return {
    node,
    hostname: hostname(),
    pid: process.pid,
    ...(address !== undefined ? { address } : {}),
  };
}

/**
 * Refuse a malformed holder. Holders come from code, not users, so a bad one
 * is a programming error: TypeError/RangeError, never a store write.
 */
export function checkHolder(holder: LockHolder): void {
  const text = (field: string, value: unknown, max: number, required: boolean) => {
    if (value === undefined && !required) return;
    if (typeof value !== 'string') throw new TypeError(`lock holder: ${field} must be a string`);
    if ((required && value.length === 0) || value.length > max)
      throw new RangeError(
        `lock holder: ${field} must be 1-${max} characters, got ${value.length}`,
      );
  };
  text('node', holder.node, MAX_NODE, true);
  text('hostname', holder.hostname, MAX_TEXT, true);
  text('address', holder.address, MAX_TEXT, false);
  if (!Number.isSafeInteger(holder.pid) || holder.pid < 0)
    throw new RangeError(`lock holder: pid must be a whole number ≥ 0, got ${holder.pid}`);
}

/** "node 7f3c… (host web-1, pid 4242, address 10.0.0.5:10809)" */
export function describeHolder(holder: LockHolder): string {
  const details = [`host ${holder.hostname}`, `pid ${holder.pid}`];
  if (holder.address) details.push(`address ${holder.address}`);
  return `node ${holder.node} (${details.join(', ')})`;
}

/**
 * Read a holder back from a stored record without trusting it: whatever was
 * stored, the result is printable, so a damaged record still names something
 * and still counts as held.
 */
export function holderFrom(value: unknown): LockHolder {
  const h = (typeof value === 'object' && value !== null ? value : {}) as Record<string, unknown>;
  const str = (v: unknown, fallback: string) =>
    typeof v === 'string' && v.length > 0 ? v.slice(0, MAX_TEXT) : fallback;
  const holder: LockHolder = {
    node: str(h.node, 'unknown'),
    hostname: str(h.hostname, 'unknown'),
    pid: typeof h.pid === 'number' && Number.isSafeInteger(h.pid) ? h.pid : 0,
  };
  if (typeof h.address === 'string' && h.address.length > 0)
    holder.address = h.address.slice(0, MAX_TEXT);
  return holder;
}
