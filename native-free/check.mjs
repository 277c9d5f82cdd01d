#!/usr/bin/env node
/**
 * Fails when any package in the installed runtime dependency tree is a native
 * addon. Torus must run on any Node 20 without a compiler or prebuilt binaries
 * (the DaemonSet image has neither), so a native package sneaking in through a
 * transitive dependency has to be caught at test time, not at deploy time.
 *
 *   usage: node native-free/check.mjs [PROJECT_DIR]   (default: this repo)
 *
 * Only what `npm ci --omit=dev` would install is walked: the project's
 * dependencies and optionalDependencies, then each package's own, resolved the
 * way Node resolves them (nearest node_modules first, then each parent's).
 * Installed peer dependencies are walked too, since npm installs them.
 *
 * There are no exceptions. An optional dependency that is installed is
 * checked like any other; the project's .npmrc (omit=optional) keeps
 * piscina's optional @napi-rs/nice, a prebuilt addon, from being installed.
 *
 * Exit status: 0 all clean, 1 a native package (or a missing dependency), 2 usage.
 */
import { existsSync, readFileSync, readdirSync, realpathSync } from 'node:fs';
import { dirname, join, relative, resolve, sep } from 'node:path';
import { fileURLToPath } from 'node:url';

/** Packages whose only purpose is building or loading a compiled addon. */
const ADDON_TOOLING = new Set([
  'node-gyp-build',
  'bindings',
  'prebuild-install',
  'node-addon-api',
  'nan',
  'node-gyp',
  'node-pre-gyp',
  '@mapbox/node-pre-gyp',
]);
const INSTALL_HOOKS = ['preinstall', 'install', 'postinstall'];
const BUILDS_ADDON = /\b(node-gyp|node-pre-gyp|prebuild(-install)?)\b/;

function readManifest(packageDir) {
  return JSON.parse(readFileSync(join(packageDir, 'package.json'), 'utf8'));
}

/** Node's lookup: DIR/node_modules/NAME, then each ancestor's node_modules, stopping at the project root. */
function resolvePackage(name, fromDir, projectDir) {
  for (let dir = fromDir; ; dir = dirname(dir)) {
    const candidate = join(dir, 'node_modules', name);
    if (existsSync(join(candidate, 'package.json'))) return candidate;
    if (dir === projectDir || dirname(dir) === dir) return undefined;
  }
}

/** Files that only a compiled addon has, outside the package's own nested node_modules (those are packages in their own right). */
function* addonFiles(dir) {
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    if (entry.name === 'node_modules') continue;
    const path = join(dir, entry.name);
    if (entry.isDirectory()) yield* addonFiles(path);
    else if (entry.name === 'binding.gyp' || entry.name.endsWith('.node')) yield path;
  }
}

/** Why this package is a native addon, one reason per finding; empty when it is plain JavaScript. */
function nativeReasons(packageDir, manifest) {
  const reasons = [];
  if (manifest.gypfile === true)
    reasons.push(`"gypfile": true in ${join(packageDir, 'package.json')}`);
  for (const hook of INSTALL_HOOKS) {
    const script = manifest.scripts?.[hook];
    if (typeof script === 'string' && BUILDS_ADDON.test(script)) {
      reasons.push(`${hook} script "${script}" in ${join(packageDir, 'package.json')}`);
    }
  }
  for (const dep of Object.keys({ ...manifest.dependencies, ...manifest.optionalDependencies })) {
    if (ADDON_TOOLING.has(dep))
      reasons.push(`depends on ${dep} (${join(packageDir, 'package.json')})`);
  }
  for (const file of addonFiles(packageDir)) reasons.push(`has ${file}`);
  return reasons;
}

export function checkNativeFree(projectDir) {
  const root = realpathSync(resolve(projectDir));
  const rootManifest = readManifest(root);
  const failures = [];
  const visited = new Set();
  // Each entry: a package to resolve, where to start looking, who asked, and whether its absence is an error.
  const queue = [];
  const enqueue = (manifest, fromDir, requiredBy) => {
    for (const name of Object.keys(manifest.dependencies ?? {}))
      queue.push({ name, fromDir, requiredBy, required: true });
    for (const name of Object.keys({
      ...manifest.optionalDependencies,
      ...manifest.peerDependencies,
    })) {
      queue.push({ name, fromDir, requiredBy, required: false });
    }
  };
  enqueue(rootManifest, root, rootManifest.name ?? root);

  while (queue.length > 0) {
    const { name, fromDir, requiredBy, required } = queue.shift();
    const found = resolvePackage(name, fromDir, root);
    if (!found) {
      if (required)
        failures.push(`${name} (needed by ${requiredBy}) is not installed: run "npm ci" first`);
      continue;
    }
    const packageDir = realpathSync(found);
    if (visited.has(packageDir)) continue;
    visited.add(packageDir);
    const manifest = readManifest(packageDir);
    const label = `${manifest.name ?? name}@${manifest.version ?? '?'}`;
    for (const reason of nativeReasons(packageDir, manifest))
      failures.push(`${label} is a native addon: ${reason}`);
    enqueue(manifest, packageDir, label);
  }
  return { checked: visited.size, failures, root };
}

function main(argv) {
  if (argv.length > 1 || argv[0] === '-h' || argv[0] === '--help') {
    process.stderr.write('usage: node native-free/check.mjs [PROJECT_DIR]\n');
    return 2;
  }
  const projectDir = argv[0] ?? join(dirname(fileURLToPath(import.meta.url)), '..');
  if (!existsSync(join(projectDir, 'package.json'))) {
    process.stderr.write(`native-free: no package.json in ${projectDir}\n`);
    return 2;
  }
  const { checked, failures, root } = checkNativeFree(projectDir);
  const shown = (line) => line.split(root + sep).join('');
  for (const failure of failures) process.stderr.write(`native-free: FAIL ${shown(failure)}\n`);
  if (failures.length > 0) return 1;
  process.stdout.write(
    `native-free: OK, ${checked} runtime packages checked, none is a native addon (${relative(process.cwd(), root) || '.'})\n`,
  );
  return 0;
}

if (process.argv[1] && realpathSync(process.argv[1]) === fileURLToPath(import.meta.url)) {
  process.exitCode = main(process.argv.slice(2));
}
