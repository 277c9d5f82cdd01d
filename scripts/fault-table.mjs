/**
 * A node:test reporter for `npm run test:faults`: it gathers the fault rows
 * the fault tests print as diagnostics ("fault-row | scenario | runs | bytes
 * lost N | recovered in S s") and prints them as one table at the end.
 * It sits beside the usual TAP reporter, which still prints everything else.
 */
export default async function* faultTable(source) {
  const rows = [];
  for await (const event of source) {
    if (event.type !== 'test:diagnostic') continue;
    const message = String(event.data.message ?? '');
    if (!message.startsWith('fault-row |')) continue;
    rows.push(
      message
        .split('|')
        .slice(1)
        .map((cell) => cell.trim()),
    );
  }
  if (rows.length === 0) return;
  yield '\nFault table (bytes lost must be 0 for anything FLUSHed):\n';
  yield '| scenario | runs | bytes lost | recovery / notes |\n|---|---|---|---|\n';
  for (const cells of rows) yield `| ${cells.join(' | ')} |\n`;
}
