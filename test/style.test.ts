/**
 * The formatter and the linter, as CI runs them: every source file is as
 * Prettier writes it (`npm run format` fixes that), and ESLint's rules hold
 * (`npm run lint` lists what does not), the floating-promise rules included.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { dirname, join, resolve } from 'node:path';
import { describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';

const PROJECT = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
const BIN = join(PROJECT, 'node_modules', '.bin');

function run(tool: string, args: string[]): Promise<{ code: number; output: string }> {
  return new Promise((done) => {
    execFile(
      join(BIN, tool),
      args,
      { cwd: PROJECT, timeout: 120_000, maxBuffer: 16 << 20 },
      (err, stdout, stderr) => {
        const code = err ? (typeof err.code === 'number' ? err.code : -1) : 0;
        done({ code, output: `${stdout}${stderr}` });
      },
    );
  });
}

describe('code style', { timeout: 240_000 }, () => {
  test('every file is formatted by Prettier (npm run format)', async () => {
    const { code, output } = await run('prettier', ['--list-different', '.']);
    assert.equal(code, 0, `not formatted (run npm run format):\n${output}`);
  });

  test('ESLint finds nothing (npm run lint)', async () => {
    const { code, output } = await run('eslint', ['--max-warnings', '0', '.']);
    assert.equal(code, 0, output);
  });
});
