/**
 * The native-free check (native-free/check.mjs) on this project's installed
 * runtime tree, and on fixture trees proving it catches each kind of native
 * package wherever it sits, while ignoring devDependencies.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';

const PROJECT = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
const CHECKER = join(PROJECT, 'native-free', 'check.mjs');

function check(projectDir: string): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((done) => {
    execFile(
      process.execPath,
      [CHECKER, projectDir],
      { timeout: 60_000 },
      (err, stdout, stderr) => {
        const code = err ? (typeof err.code === 'number' ? err.code : -1) : 0;
        done({ code, stdout, stderr });
      },
    );
  });
}

interface FakePackage {
  manifest?: Record<string, unknown>;
  files?: Record<string, string>;
}

/** Writes DIR/package.json plus extra files; returns DIR. */
async function writePackage(dir: string, name: string, pkg: FakePackage = {}): Promise<string> {
  await mkdir(dir, { recursive: true });
  await writeFile(
    join(dir, 'package.json'),
    JSON.stringify({ name, version: '1.0.0', ...pkg.manifest }),
  );
  for (const [file, text] of Object.entries(pkg.files ?? {})) {
    await mkdir(dirname(join(dir, file)), { recursive: true });
    await writeFile(join(dir, file), text);
  }
  return dir;
}

describe('native-free check', { timeout: 120_000 }, () => {
  let scratch: string;
  before(async () => {
    scratch = await mkdtemp(join(tmpdir(), 'torus-native-free-'));
  });
  after(async () => {
    await rm(scratch, { recursive: true, force: true });
  });

  /** A project depending on "app-lib", which depends on "deep"; deep is shaped by the caller and nested under app-lib. */
  async function projectWithNestedDeep(label: string, deep: FakePackage): Promise<string> {
    const root = join(scratch, label);
    await writePackage(root, 'fixture', {
      manifest: { dependencies: { 'app-lib': '1', 'plain-js': '1' } },
    });
    await writePackage(join(root, 'node_modules', 'plain-js'), 'plain-js', {
      files: { 'index.js': 'export {};' },
    });
    const lib = await writePackage(join(root, 'node_modules', 'app-lib'), 'app-lib', {
      manifest: { dependencies: { deep: '1', 'plain-js': '1' } },
    });
    await writePackage(join(lib, 'node_modules', 'deep'), 'deep', deep);
    return root;
  }

  test('the installed runtime tree of this project is native-free', async () => {
    const r = await check(PROJECT);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /native-free: OK, \d+ runtime packages checked/);
  });

  test("npm is told to leave optional dependencies out (piscina's optional @napi-rs/nice is a native addon)", async () => {
    const npmrc = await readFile(join(PROJECT, '.npmrc'), 'utf8');
    assert.match(npmrc, /^omit=optional$/m);
  });

  const natives: [string, FakePackage, RegExp][] = [
    [
      'a binding.gyp',
      { files: { 'binding.gyp': '{}' } },
      /deep@1\.0\.0 is a native addon: has .*binding\.gyp/,
    ],
    [
      'a .node file',
      { files: { 'build/Release/deep.node': 'ELF' } },
      /deep@1\.0\.0 is a native addon: has .*deep\.node/,
    ],
    [
      'gypfile: true',
      { manifest: { gypfile: true } },
      /deep@1\.0\.0 is a native addon: "gypfile": true/,
    ],
    [
      'an install script running node-gyp',
      { manifest: { scripts: { install: 'node-gyp rebuild' } } },
      /install script "node-gyp rebuild"/,
    ],
    [
      'a postinstall running prebuild-install',
      { manifest: { scripts: { postinstall: 'prebuild-install || true' } } },
      /postinstall script/,
    ],
    [
      'a dependency on node-gyp-build',
      { manifest: { dependencies: { 'node-gyp-build': '4' } } },
      /depends on node-gyp-build/,
    ],
    ['a dependency on nan', { manifest: { optionalDependencies: { nan: '2' } } }, /depends on nan/],
  ];
  for (const [label, deep, expected] of natives) {
    test(`catches a nested package with ${label}, naming it`, async () => {
      const root = await projectWithNestedDeep(label.replace(/\W+/g, '-'), deep);
      const r = await check(root);
      assert.equal(r.code, 1, r.stdout);
      assert.match(r.stderr, expected);
    });
  }

  test('passes the same tree when deep is plain JavaScript, counting each package once', async () => {
    const root = await projectWithNestedDeep('clean', { files: { 'index.js': 'export {};' } });
    const r = await check(root);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /OK, 3 runtime packages checked/);
  });

  test('ignores devDependencies, however native', async () => {
    const root = join(scratch, 'dev-only');
    await writePackage(root, 'fixture', { manifest: { devDependencies: { 'native-tool': '1' } } });
    await writePackage(join(root, 'node_modules', 'native-tool'), 'native-tool', {
      files: { 'binding.gyp': '{}' },
    });
    const r = await check(root);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /OK, 0 runtime packages checked/);
  });

  test('an installed optional dependency is checked like any other', async () => {
    const root = join(scratch, 'optional-native');
    await writePackage(root, 'fixture', {
      manifest: { optionalDependencies: { '@napi-rs/nice': '1' } },
    });
    await writePackage(join(root, 'node_modules', '@napi-rs', 'nice'), '@napi-rs/nice', {
      files: { 'nice.node': 'ELF' },
    });
    const r = await check(root);
    assert.equal(r.code, 1, r.stdout);
    assert.match(r.stderr, /@napi-rs\/nice@1\.0\.0 is a native addon/);
  });

  test('a missing runtime dependency is an error, not a silent pass', async () => {
    const root = join(scratch, 'not-installed');
    await writePackage(root, 'fixture', { manifest: { dependencies: { absent: '1' } } });
    const r = await check(root);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /absent \(needed by fixture\) is not installed/);
  });
});
