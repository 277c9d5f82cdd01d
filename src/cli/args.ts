/**
 * A small declarative layer over node:util parseArgs shared by the three
 * binaries: every command gets --help, and every bad argument exits with
 * status 2 and a message naming the flag and what it expected.
 */
import { parseArgs } from 'node:util';
import { parseSize } from '../common/size.js';

export interface FlagSpec {
  type: 'string' | 'boolean' | 'size' | 'address' | 'integer';
  short?: string;
  help: string;
  default?: string;
  /** Environment variable that supplies a default. */
  env?: string;
}

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

export type ParsedValue = string | boolean | number | Address | undefined;

export interface Parsed {
  values: Record<string, ParsedValue>;
  positionals: string[];
  help: boolean;
  /** Flags whose value is their default: given neither on the command line nor through their environment variable. */
  defaulted?: ReadonlySet<string>;
}

export function parseCommand(spec: CommandSpec, argv: string[]): Parsed {
  const options: Record<string, { type: 'string' | 'boolean'; short?: string }> = {
    help: { type: 'boolean', short: 'h' },
  };
  for (const [name, flag] of Object.entries(spec.flags)) {
    options[name] = {
      type: flag.type === 'boolean' ? 'boolean' : 'string',
      ...(flag.short ? { short: flag.short } : {}),
    };
  }
  let raw;
  try {
    raw = parseArgs({ args: argv, options, allowPositionals: true, strict: true });
  } catch (err) {
    throw new ArgumentError(explainParseError((err as Error).message));
  }
  if (raw.values.help) return { values: {}, positionals: raw.positionals, help: true };
  const values: Record<string, ParsedValue> = {};
  const defaulted = new Set<string>();
  for (const [name, flag] of Object.entries(spec.flags)) {
    let text = raw.values[name] as string | boolean | undefined;
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

function convert(name: string, flag: FlagSpec, text: string | boolean): ParsedValue {
  if (flag.type === 'boolean')
    return typeof text === 'boolean' ? text : text === 'true' || text === '1';
  const value = String(text);
  switch (flag.type) {
    case 'string':
      return value;
    case 'size':
      try {
        return parseSize(value);
      } catch {
        throw new ArgumentError(
          `--${name}: expected a size like 20GiB, 512MiB or 1T, got "${value}"`,
        );
      }
    case 'integer': {
      const n = Number(value);
      if (!Number.isSafeInteger(n) || n < 0)
        throw new ArgumentError(`--${name}: expected a non-negative whole number, got "${value}"`);
      return n;
    }
    case 'address':
      return parseAddress(value, name);
  }
}

function explainParseError(message: string): string {
  // parseArgs says e.g. "Unknown option '--sise'" or "Option '--size <value>' argument missing".
  const unknown = /Unknown option '([^']+)'/.exec(message);
  if (unknown) return `unknown flag ${unknown[1]} (see --help)`;
  const missing = /Option '(-[^ ']+)[^']*' argument missing/.exec(message);
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
