/**
 * A small declarative layer over node:util parseArgs shared by the three
 * binaries: every command gets --help, and every bad argument exits with
 * status 2 and a message naming the flag and what it expected.
 */
import { parseArgs } from 'node:util';
import { formatSize, parseSize } from '../common/size.js';
import { MAX_REPLICATION } from '../model/replication.js';

export interface FlagSpec {
  type: 'string' | 'boolean' | 'size' | 'address' | 'integer';
  short?: string;
  help: string;
  default?: string;
  /** Environment variable that supplies a default. */
  env?: string;
  /** 'integer' and 'size': smallest accepted value (default 0; negative values are always refused). */
  min?: number;
  /** 'integer' and 'size': largest accepted value. */
  max?: number;
  /** 'integer' and 'size': why a value in range is still refused, or undefined to accept it. */
  check?: (value: number) => string | undefined;
  /** 'string' only: may be given more than once; the value is then every one, in order (string[]). */
  multiple?: boolean;
}

/** Ports: 0 asks the system for a free one where a listener allows it. */
export const PORT_RANGE = { min: 0, max: 65535 } as const;
/**
 * Seconds between timer runs: setTimeout takes at most 2^31-1 ms and
 * silently fires after 1 ms beyond it, so a longer interval is refused.
 */
export const SECONDS_RANGE = { min: 0, max: Math.floor((2 ** 31 - 1) / 1000) } as const;

/** Data-plane worker threads; 0 picks the default (two per core on a single node, one in a cluster; at most 4). */
export const WORKERS_RANGE = { min: 0, max: 64 } as const;
/**
 * Copies of each block: at most MAX_REPLICATION (placement's MAX_TARGETS is
 * it). From the model, not from placement: every torusctl command parses
 * flags, and placement brings the ring's modules with it.
 */
export const REPLICATION_RANGE = { min: 1, max: MAX_REPLICATION } as const;

/** A token that is a negative number ("-5", "-1GiB"), never a flag: no flag is a digit. */
const NEGATIVE = /^-\d/;
/** Stands in for a negative-number positional while node:util parseArgs, which would take it for a flag, runs. */
const PLACEHOLDER = '\u0000negative:';

export interface CommandSpec {
  usage: string;
  summary: string;
  flags: Record<string, FlagSpec>;
  /** Names of positional arguments, in order; a trailing '...' accepts more. */
  positionals?: string[];
  minPositionals?: number;
}

export class ArgumentError extends Error {
  override name = 'ArgumentError';
}

export interface Address {
  host: string;
  port: number;
}

export function parseAddress(text: string, flag: string): Address {
  const match = /^(?:\[([^\]]+)\]|([^:]*)):(\d+)$/.exec(text);
  const port = match ? Number(match[3]) : NaN;
  if (!match || !Number.isInteger(port) || port < 0 || port > 65535) {
    throw new ArgumentError(`--${flag}: expected HOST:PORT (e.g. 127.0.0.1:10809), got "${text}"`);
  }
  return { host: match[1] ?? (match[2] || '127.0.0.1'), port };
}

export type ParsedValue = string | string[] | boolean | number | Address | undefined;

export interface Parsed {
  values: Record<string, ParsedValue>;
  positionals: string[];
  help: boolean;
  /** Flags whose value is their default: given neither on the command line nor through their environment variable. */
  defaulted?: ReadonlySet<string>;
}

export function parseCommand(spec: CommandSpec, argv: string[]): Parsed {
  const options: Record<
    string,
    { type: 'string' | 'boolean'; short?: string; multiple?: boolean }
  > = { help: { type: 'boolean', short: 'h' } };
  for (const [name, flag] of Object.entries(spec.flags)) {
    options[name] = {
      type: flag.type === 'boolean' ? 'boolean' : 'string',
      ...(flag.short ? { short: flag.short } : {}),
      ...(flag.multiple && flag.type === 'string' ? { multiple: true } : {}),
    };
  }
  const { args, negatives } = shieldNegatives(spec, argv);
  let raw;
  try {
    raw = parseArgs({ args, options, allowPositionals: true, strict: true });
  } catch (err) {
    throw new ArgumentError(explainParseError((err as Error).message));
  }
  raw.positionals = raw.positionals.map((p) =>
    p.startsWith(PLACEHOLDER) ? negatives[Number(p.slice(PLACEHOLDER.length))] : p,
  );
  if (raw.values.help) return { values: {}, positionals: raw.positionals, help: true };
  const values: Record<string, ParsedValue> = {};
  const defaulted = new Set<string>();
  for (const [name, flag] of Object.entries(spec.flags)) {
    const given = raw.values[name] as string | boolean | string[] | undefined;
    if (Array.isArray(given)) {
      values[name] = given;
      continue;
    }
    let text = given;
    if (
      text === undefined &&
      flag.env &&
      process.env[flag.env] !== undefined &&
      process.env[flag.env] !== ''
    )
      text = process.env[flag.env];
    if (text === undefined) {
      text = flag.default;
      defaulted.add(name);
    }
    if (text === undefined) continue;
    values[name] = convert(name, flag, text);
  }
  const positionals = raw.positionals;
  const names = spec.positionals ?? [];
  const variadic = names[names.length - 1]?.endsWith('...');
  const min = spec.minPositionals ?? names.filter((n) => !n.startsWith('[')).length;
  if (positionals.length < min) {
    throw new ArgumentError(
      `missing ${names.slice(positionals.length, min).join(' ')} (usage: ${spec.usage})`,
    );
  }
  if (!variadic && positionals.length > names.length) {
    throw new ArgumentError(
      `unexpected argument "${positionals[names.length]}" (usage: ${spec.usage})`,
    );
  }
  return { values, positionals, help: false, defaulted };
}

/**
 * parseArgs reads "-5" as the short flag 5 and refuses "--size -1GiB" as
 * ambiguous, so a negative number would be reported as anything but
 * negative. Give such a token to the flag before it as "--flag=-1GiB", or
 * hide it as a positional, so the conversion can refuse it by name.
 */
function shieldNegatives(
  spec: CommandSpec,
  argv: string[],
): { args: string[]; negatives: string[] } {
  const args: string[] = [];
  const negatives: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const token = argv[i];
    if (token === '--') {
      args.push(...argv.slice(i));
      break;
    }
    const name = takesValue(spec, token);
    if (name !== undefined && i + 1 < argv.length) {
      const value = argv[++i];
      if (NEGATIVE.test(value)) args.push(`--${name}=${value}`);
      else args.push(token, value);
    } else if (NEGATIVE.test(token)) {
      args.push(PLACEHOLDER + negatives.length);
      negatives.push(token);
    } else {
      args.push(token);
    }
  }
  return { args, negatives };
}

/** The long name of the flag `token` is, when it takes its value from the next token. */
function takesValue(spec: CommandSpec, token: string): string | undefined {
  let name: string | undefined;
  if (token.startsWith('--') && !token.includes('=')) name = token.slice(2);
  else if (/^-[^-]$/.test(token))
    name = Object.keys(spec.flags).find((n) => spec.flags[n].short === token[1]);
  const flag = name === undefined ? undefined : spec.flags[name];
  return flag && flag.type !== 'boolean' ? name : undefined;
}

/** Range-check a number parsed from flag `--name` (or positional `label`, e.g. "SIZE"). */
export function checkRange(
  label: string,
  flag: Pick<FlagSpec, 'min' | 'max' | 'check'>,
  value: number,
  text: string,
  unit: 'size' | 'whole number',
): number {
  const min = flag.min ?? 0;
  const max = flag.max ?? Number.MAX_SAFE_INTEGER;
  const show = (n: number) => (unit === 'size' ? formatSize(n) : String(n));
  if (value < min || value > max) {
    const range =
      max === Number.MAX_SAFE_INTEGER
        ? `at least ${show(min)}`
        : `from ${show(min)} to ${show(max)}`;
    throw new ArgumentError(`${label}: expected a ${unit} ${range}, got "${text}"`);
  }
  const problem = flag.check?.(value);
  if (problem) throw new ArgumentError(`${label}: ${problem}`);
  return value;
}

/** Refuse a negative number as negative, rather than as "not a number". */
export function refuseNegative(label: string, text: string): void {
  if (NEGATIVE.test(text.trim()))
    throw new ArgumentError(`${label}: must not be negative, got "${text}"`);
}

function convert(name: string, flag: FlagSpec, text: string | boolean): ParsedValue {
  if (flag.type === 'boolean')
    return typeof text === 'boolean' ? text : text === 'true' || text === '1';
  const value = String(text);
  switch (flag.type) {
    case 'string':
      return value;
    case 'size': {
      refuseNegative(`--${name}`, value);
      let bytes;
      try {
        bytes = parseSize(value);
      } catch {
        throw new ArgumentError(
          `--${name}: expected a size like 20GiB, 512MiB or 1T, got "${value}"`,
        );
      }
      return checkRange(`--${name}`, flag, bytes, value, 'size');
    }
    case 'integer': {
      refuseNegative(`--${name}`, value);
      const n = /^\s*\d+\s*$/.test(value) ? Number(value) : NaN;
      if (!Number.isSafeInteger(n))
        throw new ArgumentError(`--${name}: expected a whole number, got "${value}"`);
      return checkRange(`--${name}`, flag, n, value, 'whole number');
    }
    case 'address':
      return parseAddress(value, name);
  }
}

function explainParseError(message: string): string {
  // parseArgs says e.g. "Unknown option '--sise'" or "Option '--size <value>' argument missing".
  const unknown = /Unknown option '([^']+)'/.exec(message);
  if (unknown) return `unknown flag ${unknown[1]} (see --help)`;
  // A flag with a short alias is spelled "Option '-l, --listen <value>' argument missing".
  const missing = /Option '(?:-[^-], )?(-[^ ']+)[^']*' argument missing/.exec(message);
  if (missing) return `${missing[1]}: expected a value`;
  return message.split('\n')[0];
}

export function helpText(spec: CommandSpec): string {
  const lines = [`usage: ${spec.usage}`, '', spec.summary, ''];
  const entries = Object.entries(spec.flags);
  if (entries.length > 0) lines.push('flags:');
  for (const [name, flag] of entries) {
    const label = `${flag.short ? `-${flag.short}, ` : ''}--${name}${flag.type === 'boolean' ? '' : ' ' + flag.type.toUpperCase()}`;
    const extra = [
      flag.default !== undefined ? `default ${flag.default}` : '',
      flag.env ? `env ${flag.env}` : '',
    ]
      .filter(Boolean)
      .join('; ');
    lines.push(`  ${label.padEnd(28)} ${flag.help}${extra ? ` (${extra})` : ''}`);
  }
  lines.push(`  ${'-h, --help'.padEnd(28)} show this help`);
  return lines.join('\n');
}

/** Run a CLI main: usage errors exit 2, other failures 1, with one clear line. */
export function runMain(program: string, main: () => Promise<number | void>): void {
  main().then(
    (code) => {
      if (typeof code === 'number') process.exitCode = code;
    },
    (err: Error) => {
      const usage = err instanceof ArgumentError || err.name === 'UsageError';
      process.stderr.write(`${program}: ${err.message}\n`);
      if (process.env.TORUS_DEBUG && err.stack) process.stderr.write(err.stack + '\n');
      process.exitCode = usage ? 2 : 1;
    },
  );
}
