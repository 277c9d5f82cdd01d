/**
 * Subcommand dispatch for torusctl and torusblk: a table from command words
 * ("volume create-block") to a spec and a handler. Global flags may come
 * before or after the command words.
 */
import { parseArgs } from 'node:util';
import { formatSize } from '../common/size.js';
import { ArgumentError, helpText, parseCommand, type CommandSpec, type Parsed } from './args.js';

export interface Command {
  words: string[];
  aliases?: string[][];
  spec: CommandSpec;
  run(args: Parsed): Promise<number | void>;
}

/**
 * The words of `argv` (its positionals, found permissively): value-taking
 * flags of every command are declared so their values are not taken for words.
 */
export function commandWords(commands: Command[], argv: string[]): string[] {
  const options: Record<string, { type: 'string' | 'boolean'; short?: string }> = {};
  for (const c of commands) {
    for (const [name, flag] of Object.entries(c.spec.flags)) {
      options[name] = {
        type: flag.type === 'boolean' ? 'boolean' : 'string',
        ...(flag.short ? { short: flag.short } : {}),
      };
    }
  }
  return parseArgs({ args: argv, options, allowPositionals: true, strict: false }).positionals;
}

/** The command these words name (the longest match of its words or an alias), or undefined. */
export function findCommand(
  commands: Command[],
  words: string[],
): { c: Command; w: string[] } | undefined {
  return commands
    .flatMap((c) => [c.words, ...(c.aliases ?? [])].map((w) => ({ c, w })))
    .filter(({ w }) => w.every((word, i) => words[i] === word))
    .sort((a, b) => b.w.length - a.w.length)[0];
}

export async function dispatch(
  program: string,
  summary: string,
  commands: Command[],
  argv: string[],
): Promise<number> {
  // First pass, permissive, only to find the command words.
  const words = commandWords(commands, argv);
  const match = findCommand(commands, words);
  if (!match) {
    if (words.length === 0 || words[0] === 'help') {
      const asked = words[0] === 'help' || argv.includes('--help') || argv.includes('-h');
      // Asked for: stdout, status 0. No command at all is a usage error: stderr, status 2.
      (asked ? process.stdout : process.stderr).write(overview(program, summary, commands));
      return asked ? 0 : 2;
    }
    throw new ArgumentError(
      `unknown command "${words.slice(0, 2).join(' ')}" (see ${program} --help)`,
    );
  }
  // Second pass, strict, with the command's own flags; drop its words.
  const remaining = [...argv];
  for (const word of match.w) remaining.splice(remaining.indexOf(word), 1);
  const args = parseCommand(match.c.spec, remaining);
  if (args.help) {
    process.stdout.write(helpText(match.c.spec) + '\n');
    return 0;
  }
  return (await match.c.run(args)) ?? 0;
}

function overview(program: string, summary: string, commands: Command[]): string {
  const lines = [`usage: ${program} COMMAND [flags]`, '', summary, '', 'commands:'];
  for (const c of commands) lines.push(`  ${c.words.join(' ').padEnd(26)} ${c.spec.summary}`);
  lines.push('', `Run "${program} COMMAND --help" for a command's flags.`);
  return lines.join('\n') + '\n';
}

/** Print rows as an aligned table. */
export function table(headers: string[], rows: string[][]): string {
  const widths = headers.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)));
  const line = (cells: string[]) =>
    cells
      .map((c, i) => c.padEnd(widths[i]))
      .join('  ')
      .trimEnd();
  return [line(headers), ...rows.map(line)].join('\n') + '\n';
}

export function sizeCell(bytes: number | undefined): string {
  return bytes === undefined ? '-' : formatSize(bytes);
}
