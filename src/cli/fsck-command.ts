/**
 * torusctl fsck DIR [--salvage] [-o json]: check a stopped single node's
 * data directory (src/fsck). Exit status: 0 clean, 1 damage found (and,
 * with --salvage, repaired), 2 usage, 8 the check could not run (a torusd
 * holds the directory, an unreadable file), as e2fsck's "operational error".
 */
import { formatSize } from '../common/size.js';
import { fsck, type FsckReport } from '../fsck/fsck.js';
import { ArgumentError } from './args.js';
import { table, type Command } from './commands.js';
import { outputFlag } from './common-flags.js';
import { outputFormat } from './volume-commands.js';

export const FSCK_OPERATIONAL_ERROR = 8;

export function fsckCommand(): Command {
  return {
    words: ['fsck'],
    spec: {
      usage: 'fsck DIR [--salvage] [-o json]',
      summary:
        "check a stopped node's data directory: damaged slot records, map pages and blocks, per volume with the byte ranges affected",
      positionals: ['DIR'],
      flags: {
        salvage: {
          type: 'boolean',
          help: 'make damaged volumes loadable again: keep every block that checks out, turn the damaged ranges into holes (zeros); writes DIR/fsck-TIME.json',
        },
        output: outputFlag,
      },
    },
    async run(args) {
      const [dir] = args.positionals;
      const format = outputFormat(args);
      let report: FsckReport;
      try {
        report = await fsck(dir, { salvage: Boolean(args.values.salvage) });
      } catch (err) {
        if (err instanceof ArgumentError || (err as Error).name === 'UsageError') throw err;
        process.stderr.write(`torusctl fsck: ${(err as Error).message}\n`);
        return FSCK_OPERATIONAL_ERROR;
      }
      process.stdout.write(
        format === 'json' ? JSON.stringify(report, null, 2) + '\n' : human(report),
      );
      return report.clean ? 0 : 1;
    },
  };
}

function human(report: FsckReport): string {
  const lines: string[] = [];
  lines.push(
    table(
      ['VOLUME', 'SIZE', 'VERSION', 'PAGES', 'BLOCKS', 'STATE'],
      report.volumes.map((v) => [
        v.name,
        formatSize(v.size),
        String(v.salvage?.generation ?? v.generation),
        String(v.pagesChecked),
        String(v.blocksChecked),
        v.state,
      ]),
    ).trimEnd(),
  );
  const damage = report.volumes.flatMap((v) => v.damage.map((d) => ({ v, d })));
  if (damage.length > 0) {
    lines.push('');
    lines.push(
      table(
        ['VOLUME', 'BYTES', 'WHAT', 'BLOCK', 'OUTCOME'],
        damage.map(({ v, d }) => [
          v.name,
          `${d.offset}-${d.offset + d.length - 1}`,
          d.kind,
          d.block,
          d.recoverableFrom !== undefined
            ? `intact in slot ${d.recoverableFrom}${v.salvage ? ': recovered' : ': recoverable'}`
            : v.salvage
              ? 'now zeros'
              : 'lost',
        ]),
      ).trimEnd(),
    );
  }
  if (report.damagedSlots.length > 0) {
    const shown = report.damagedSlots.slice(0, 8).map((s) => s.slot);
    lines.push(
      '',
      `${report.damagedSlots.length} damaged slot record(s) in ${report.dataDir}/blocks/slots: slot ${shown.join(', ')}${report.damagedSlots.length > shown.length ? ', …' : ''}${report.salvaged ? ' (cleared)' : ''}`,
    );
  }
  for (const p of report.pendingIntents)
    lines.push(
      '',
      `${p.volume}: ${p.records} FLUSHed record(s) in the intent log, not yet committed: starting torusd replays them`,
    );
  lines.push('');
  if (report.clean) lines.push(`${report.dataDir}: clean`);
  else if (report.salvaged)
    lines.push(`${report.dataDir}: salvaged; report in ${report.reportFile}`);
  else
    lines.push(
      `${report.dataDir}: damage found; torusctl fsck ${report.dataDir} --salvage keeps what checks out`,
    );
  return lines.join('\n') + '\n';
}
