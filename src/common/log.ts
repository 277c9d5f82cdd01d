/**
 * Structured logging: one JSON object a line (pino) by default; a readable
 * single-line form when stderr is a terminal or TORUS_LOG_FORMAT=pretty.
 * Level from TORUS_LOG_LEVEL (default info; torusctl's warn: setDefaultLogLevel).
 * An `err` field that is an operating error is one line without a stack
 * (serializeError); a bug's keeps its stack.
 *
 * Logs go to stderr so that CLI output on stdout stays machine-readable.
 *
 * pino is loaded on the first logger, not on import: its ~25 modules are
 * 30-40 ms of start-up, and a torusctl command that logs nothing (a dump, a
 * load, a list) never needs them.
 */
import { createRequire } from 'node:module';
import type { Logger, DestinationStream } from 'pino';
import { isExpectedError } from './errors.js';

export type { Logger };

const LEVEL_NAMES: Record<number, string> = {
  10: 'TRACE',
  20: 'DEBUG',
  30: 'INFO',
  40: 'WARN',
  50: 'ERROR',
  60: 'FATAL',
};

/** A tiny synchronous pretty printer: time level component msg key=value… */
function prettyDestination(out: NodeJS.WriteStream): DestinationStream {
  return {
    write(line: string) {
      let record: Record<string, unknown>;
      try {
        record = JSON.parse(line);
      } catch {
        out.write(line);
        return;
      }
      const { time, level, msg, component, pid: _pid, hostname: _host, ...rest } = record;
      const when = new Date(Number(time)).toISOString().slice(11, 23);
      const fields = Object.entries(rest)
        .map(([k, v]) => `${k}=${typeof v === 'string' ? v : JSON.stringify(v)}`)
        .join(' ');
      out.write(
        `${when} ${(LEVEL_NAMES[Number(level)] ?? level).toString().padEnd(5)} ${component ? `[${component}] ` : ''}${msg ?? ''}${fields ? ' ' + fields : ''}\n`,
      );
    },
  };
}

/**
 * The `err` field: an operating error (isExpectedError) as one line — its
 * name, message and code, and its cause's — since its stack says nothing the
 * message does not; any other error with its stack, as pino prints it.
 */
export function serializeError(err: unknown): unknown {
  if (!isExpectedError(err)) return pino().stdSerializers.err(err as Error);
  const e = err as NodeJS.ErrnoException & { errno?: unknown };
  const code = e.code ?? (typeof e.errno === 'string' ? e.errno : undefined);
  return {
    type: e.name,
    message: e.message,
    ...(code !== undefined ? { code } : {}),
    ...(e.cause !== undefined ? { cause: serializeError(e.cause) } : {}),
  };
}

type Pino = typeof import('pino').pino;
let loaded: Pino | undefined;

/** pino itself, loaded on first use (a CommonJS package: require is synchronous). */
function pino(): Pino {
  loaded ??= (createRequire(import.meta.url)('pino') as { pino: Pino }).pino;
  return loaded;
}

let root: Logger | undefined;
let defaultLevel = 'info';

/**
 * The level when TORUS_LOG_LEVEL is not set; call before the first logger.
 * torusctl says 'warn': a command's output is its answer, and the info lines
 * of what it opens in-process (the embedded store, a client node) are noise.
 */
export function setDefaultLogLevel(level: string): void {
  defaultLevel = level;
}

export function rootLogger(): Logger {
  if (root) return root;
  const level = process.env.TORUS_LOG_LEVEL ?? defaultLevel;
  const format = process.env.TORUS_LOG_FORMAT ?? (process.stderr.isTTY ? 'pretty' : 'json');
  const options = {
    level,
    base: { pid: process.pid },
    timestamp: pino().stdTimeFunctions.epochTime,
    serializers: { err: serializeError },
  };
  root =
    format === 'pretty'
      ? pino()(options, prettyDestination(process.stderr))
      : pino()(options, pino().destination({ fd: 2, sync: true }));
  return root;
}

export function logger(component: string): Logger {
  return rootLogger().child({ component });
}
