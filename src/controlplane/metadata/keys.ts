/**
 * Key ordering, request checks and limits shared by both implementations, so
 * that a request one store accepts the other accepts too.
 */
import type { TxnOp, TxnRequest } from './store.js';

/** etcd's default request limit is 1.5 MiB; a metadata value is far smaller. */
export const MAX_VALUE_BYTES = 1024 * 1024;
export const MAX_KEY_BYTES = 4096;
export const MAX_TXN_OPS = 128; // etcd's default --max-txn-ops

/**
 * Orders keys as etcd does: by their UTF-8 bytes. That is code point order,
 * which differs from JS's UTF-16 `<` only when a surrogate (U+D800–DFFF,
 * half of a code point above U+FFFF) meets a unit in U+E000–FFFF; shifting
 * the two ranges past each other fixes that without encoding.
 */
export function compareKeys(a: string, b: string): number {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) {
    const x = a.charCodeAt(i);
    const y = b.charCodeAt(i);
    if (x !== y) return codePointRank(x) - codePointRank(y);
  }
  return a.length - b.length;
}

function codePointRank(unit: number): number {
  if (unit >= 0xd800 && unit <= 0xdfff) return unit + 0x2000;
  if (unit >= 0xe000) return unit - 0x800;
  return unit;
}

/**
 * The smallest byte string greater than every key starting with `prefix`
 * (etcd's range_end for a prefix). The empty prefix means "all keys", which
 * etcd spells as range_end = "\0".
 */
export function prefixRangeEnd(prefix: Buffer): Buffer {
  const end = Buffer.from(prefix);
  for (let i = end.length - 1; i >= 0; i--) {
    if (end[i] < 0xff) {
      end[i]++;
      return end.subarray(0, i + 1);
    }
  }
  return Buffer.from([0]);
}

function checkKey(key: string): void {
  if (typeof key !== 'string')
    throw new TypeError(`metadata key must be a string, got ${typeof key}`);
  if (Buffer.byteLength(key) > MAX_KEY_BYTES)
    throw new RangeError(`metadata key longer than ${MAX_KEY_BYTES} bytes: ${key.slice(0, 64)}…`);
}

function checkOp(op: TxnOp): void {
  checkKey(op.key);
  if (op.type === 'put') {
    if (!Buffer.isBuffer(op.value)) throw new TypeError(`value for ${op.key} must be a Buffer`);
    if (op.value.length > MAX_VALUE_BYTES)
      throw new RangeError(
        `value for ${op.key} is ${op.value.length} bytes; the limit is ${MAX_VALUE_BYTES}`,
      );
  } else if (op.key === '' && !op.prefix) {
    throw new RangeError(`${op.type} needs a non-empty key`);
  }
}

/**
 * Programmer errors, thrown before anything is sent or applied: bad types,
 * oversized values, and etcd's rule that a txn branch may not write the same
 * key twice (its result would depend on op order in ways etcd forbids).
 */
export function checkTxn(request: TxnRequest): void {
  for (const c of request.compare) checkKey(c.key);
  for (const branch of [request.success, request.failure ?? []]) {
    if (branch.length > MAX_TXN_OPS)
      throw new RangeError(`txn branch has ${branch.length} ops; the limit is ${MAX_TXN_OPS}`);
    const written: TxnOp[] = [];
    for (const op of branch) {
      checkOp(op);
      if (op.type === 'get') continue;
      for (const other of written) {
        if (overlaps(op, other))
          throw new RangeError(`txn writes "${op.key}" more than once (with "${other.key}")`);
      }
      written.push(op);
    }
  }
}

function overlaps(a: TxnOp, b: TxnOp): boolean {
  const aPrefix = a.type !== 'put' && a.prefix === true;
  const bPrefix = b.type !== 'put' && b.prefix === true;
  if (aPrefix && b.key.startsWith(a.key)) return true;
  if (bPrefix && a.key.startsWith(b.key)) return true;
  return a.key === b.key;
}
