/**
 * The DaemonSet manifest is documentation that runs: every flag it gives
 * torusd and torusctl must exist (a renamed flag would crash-loop every pod).
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { PROJECT, runCli } from './torusd-process.js';

const manifest = readFileSync(join(PROJECT, 'deploy', 'daemonset.yaml'), 'utf8');

test('every torusd flag in deploy/daemonset.yaml is one torusd knows', async () => {
  const block = manifest.slice(manifest.indexOf('command: ["./bin/torusd"]'));
  const args = block
    .slice(block.indexOf('args:'), block.indexOf('env:'))
    .split('\n')
    .map((line) => line.trim())
    .filter((line) => line.startsWith('- --'))
    .map((line) => line.slice(2).replace(/\$\([A-Z_]+\)/g, 'x'));
  assert.ok(args.length >= 5, `found the torusd args: ${args.join(' ')}`);
  // Flags are checked by name before --help answers.
  const r = await runCli('torusd', [...args, '--help']);
  assert.equal(r.code, 0, r.stderr);
});

test('the init Job runs a torusctl command that exists', async () => {
  assert.match(manifest, /torusctl -C \\"\$TORUS_ETCD\\" init --replication/);
  const r = await runCli('torusctl', ['init', '--help']);
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /--replication/);
});
