#!/usr/bin/env node
/**
 * `npm test`: make sure the third-party tools the tests drive are installed,
 * build if the compiled output is missing or older than its source, then run
 * every compiled test file under node's test runner with a time bound.
 *
 *   npm test [-- [--fast] [NODE_TEST_FLAG...] [PATH_FRAGMENT...]]
 *     e.g. npm test -- native-free              only files whose path contains it
 *          npm test -- --test-name-pattern=trim
 *          npm run test:fast                    (= npm test -- --fast)
 *
 * --fast: the fast tier — the unit tests beside the code (every *.test.ts under src)
 * and the in-process cluster tests (test/inproc-*.test.ts), with
 * TORUS_TEST_FAST=1 so that nothing starts etcd (its variants skip; see
 * test/etcd-server.ts); no torusd process, no third-party client, so no tool
 * check either. Under a minute on the 2-core dev machine.
 *
 * Tools: as root, missing Debian packages are installed (apt-get update once,
 * then apt-get install -y exactly those); otherwise the install line is
 * printed and the tests needing a missing tool skip themselves.
 *
 * The runner's own summary (tests/pass/fail) is the last thing printed, and
 * its exit status is ours. A watchdog kills the whole run after 20 minutes so
 * CI never hangs on a wedged server or client.
 */
import { spawn, spawnSync } from 'node:child_process';
import {
  accessSync,
  constants,
  existsSync,
  readFileSync,
  readdirSync,
  rmSync,
  statSync,
} from 'node:fs';
import { delimiter, dirname, join, relative, sep } from 'node:path';
import { fileURLToPath } from 'node:url';

const PROJECT = join(dirname(fileURLToPath(import.meta.url)), '..');
const SOURCE_DIRS = ['src', 'test', 'bench'];
// TORUS_TEST_RUN_LIMIT_S shortens it, to try the watchdog itself.
const RUN_LIMIT_MS = Number(process.env.TORUS_TEST_RUN_LIMIT_S ?? 20 * 60) * 1000;
const FAST_RUN_LIMIT_MS = 5 * 60_000;
/** The fast tier's files, by compiled path relative to the project. */
const FAST_TIER = [join('dist', 'src', ''), join('dist', 'test', 'inproc-')];
const FAST_TIER_ENV = 'TORUS_TEST_FAST';
// A test without its own timeout gets this long; whole-system tests set theirs.
const PER_TEST_TIMEOUT_MS = 5 * 60_000;
// Two cores: two test files at once keeps both busy while one waits on I/O,
// without servers and clients of several files fighting over the CPU.
const CONCURRENCY = 2;

/** Executable → Debian package providing it (shared with test/tools.ts, which names them in skip messages). */
const TOOLS = JSON.parse(readFileSync(join(PROJECT, 'scripts', 'test-tools.json'), 'utf8'));
const PYTHON_NBD_PACKAGE = 'python3-libnbd';

// mkfs.ext4 and e2fsck live in sbin, which a non-root PATH often lacks; the
// tests inherit this PATH so they find what we found.
const SEARCH_PATH = [
  ...new Set([
    ...(process.env.PATH ?? '').split(delimiter).filter(Boolean),
    '/usr/local/sbin',
    '/usr/sbin',
    '/sbin',
  ]),
];

function onPath(tool) {
  return SEARCH_PATH.some((dir) => {
    try {
      accessSync(join(dir, tool), constants.X_OK);
      return true;
    } catch {
      return false;
    }
  });
}

// python3-libnbd installs into Debian's own interpreter; a python3 earlier on
// PATH (pyenv, a venv) does not see it.
const DEBIAN_PYTHON = '/usr/bin/python3';

function pythonHasNbd(python) {
  return spawnSync(python, ['-c', 'import nbd'], { stdio: 'ignore', timeout: 30_000 }).status === 0;
}

/** Debian packages whose tools are absent, in a stable order. */
function missingPackages() {
  const packages = new Set();
  for (const [tool, pkg] of Object.entries(TOOLS)) if (!onPath(tool)) packages.add(pkg);
  if (!pythonHasNbd(existsSync(DEBIAN_PYTHON) ? DEBIAN_PYTHON : 'python3'))
    packages.add(PYTHON_NBD_PACKAGE);
  return [...packages].sort();
}

function apt(args) {
  console.log(`test: running apt-get ${args.join(' ')}`);
  const r = spawnSync('apt-get', args, {
    stdio: ['ignore', 'inherit', 'inherit'],
    env: { ...process.env, DEBIAN_FRONTEND: 'noninteractive' },
    timeout: 10 * 60_000,
  });
  return r.status === 0;
}

function ensureTools() {
  const missing = missingPackages();
  if (!missing.includes(PYTHON_NBD_PACKAGE) && !pythonHasNbd('python3')) {
    console.log(
      `test: note: the python3 first on PATH cannot import nbd; ${DEBIAN_PYTHON} can (tests should run that one)`,
    );
  }
  if (missing.length === 0) {
    console.log('test: all third-party test tools are installed');
    return;
  }
  const installLine = `apt-get install -y ${missing.join(' ')}`;
  if (process.getuid?.() !== 0) {
    console.log(
      `test: missing test tools; tests needing them will skip. To install, as root:\n  ${installLine}`,
    );
    return;
  }
  console.log(`test: missing packages ${missing.join(' ')}; installing them`);
  if (!(apt(['update']) && apt(['install', '-y', ...missing]))) {
    console.log('test: apt-get failed; tests needing the missing tools will skip');
  }
  const still = missingPackages();
  if (still.length > 0) console.log(`test: still missing after install: ${still.join(' ')}`);
}

function* walk(dir, accept) {
  if (!existsSync(dir)) return;
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) yield* walk(path, accept);
    else if (accept(entry.name)) yield path;
  }
}

const isSource = (name) => name.endsWith('.ts') && !name.endsWith('.d.ts');
const outputOf = (source) =>
  join(PROJECT, 'dist', relative(PROJECT, source)).replace(/\.ts$/, '.js');
const sourceOf = (output) =>
  join(PROJECT, relative(join(PROJECT, 'dist'), output)).replace(/\.js$/, '.ts');

/** Why a build is needed, or undefined when every source has an output at least as new as it and the compiler settings. */
function staleReason() {
  const settingsTime = Math.max(
    statSync(join(PROJECT, 'tsconfig.json')).mtimeMs,
    statSync(join(PROJECT, 'package.json')).mtimeMs,
  );
  for (const dir of SOURCE_DIRS) {
    for (const source of walk(join(PROJECT, dir), isSource)) {
      const output = outputOf(source);
      if (!existsSync(output)) return `${relative(PROJECT, output)} is missing`;
      const builtAt = statSync(output).mtimeMs;
      if (builtAt < statSync(source).mtimeMs)
        return `${relative(PROJECT, source)} changed since it was built`;
      if (builtAt < settingsTime)
        return 'tsconfig.json or package.json changed since the last build';
    }
  }
  return undefined;
}

function buildIfStale() {
  const reason = staleReason();
  if (!reason) return true;
  console.log(`test: building (${reason})`);
  const tsc = join(PROJECT, 'node_modules', 'typescript', 'bin', 'tsc');
  const r = spawnSync(process.execPath, [tsc, '-p', join(PROJECT, 'tsconfig.json')], {
    cwd: PROJECT,
    stdio: ['ignore', 'inherit', 'inherit'],
  });
  if (r.status !== 0)
    console.log(
      `test: build failed (tsc exit ${r.status}); not running the tests on a broken build`,
    );
  return r.status === 0;
}

/** Compiled test files that still have a source: output of a deleted or renamed test is stale and must not run. */
function testFiles(fragments, fast) {
  const files = [];
  for (const dir of SOURCE_DIRS) {
    for (const output of walk(join(PROJECT, 'dist', dir), (name) => name.endsWith('.test.js'))) {
      if (!existsSync(sourceOf(output))) continue;
      const shown = relative(PROJECT, output);
      if (fast && !FAST_TIER.some((prefix) => shown.startsWith(prefix))) continue;
      if (fragments.length === 0 || fragments.some((f) => shown.includes(f))) files.push(output);
    }
  }
  return files.sort();
}

function runTests(nodeFlags, files, fast) {
  const runLimitMs = fast ? FAST_RUN_LIMIT_MS : RUN_LIMIT_MS;
  const args = [
    '--test',
    `--test-concurrency=${CONCURRENCY}`,
    `--test-timeout=${PER_TEST_TIMEOUT_MS}`,
    ...nodeFlags,
    ...files,
  ];
  console.log(
    `test: node --test over ${files.length} ${fast ? 'fast-tier ' : ''}files ` +
      `(${CONCURRENCY} at a time, ${PER_TEST_TIMEOUT_MS / 60_000} min per test, ${runLimitMs / 60_000} min in all)`,
  );
  // Its own process group, so the watchdog and Ctrl-C reach every server and
  // client a test started, not just the runner.
  const runner = spawn(process.execPath, args, {
    cwd: PROJECT,
    stdio: ['ignore', 'inherit', 'inherit'],
    detached: true,
    env: {
      ...process.env,
      PATH: SEARCH_PATH.join(delimiter),
      ...(fast ? { [FAST_TIER_ENV]: '1' } : {}),
    },
  });
  const killGroup = (signal) => {
    try {
      process.kill(-runner.pid, signal);
    } catch {
      // already gone
    }
  };
  let timedOut = false;
  const watchdog = setTimeout(() => {
    timedOut = true;
    killGroup('SIGTERM');
    setTimeout(() => killGroup('SIGKILL'), 5_000).unref();
  }, runLimitMs);
  for (const signal of ['SIGINT', 'SIGTERM']) process.on(signal, () => killGroup(signal));
  runner.on('exit', (code, signal) => {
    clearTimeout(watchdog);
    killLeftovers(runner.pid);
    if (timedOut) {
      sweepSlowDisks();
      console.log(
        `test: the whole run exceeded ${runLimitMs / 60_000} minutes and was killed; a test or a process it started hangs`,
      );
      process.exit(124);
    }
    process.exit(code ?? 128 + (signal === 'SIGINT' ? 2 : 15));
  });
}

/**
 * Processes of the run's group still alive once the runner is gone: a test
 * file killed at its time limit never runs its `after` hooks, so the servers
 * it started (torusd, etcd) outlive it, orphaned but still in the group.
 * Name them (a test leaks them) and kill them.
 */
function killLeftovers(group) {
  const found = spawnSync('pgrep', ['-a', '-g', String(group)], {
    encoding: 'utf8',
    timeout: 10_000,
  });
  const leftovers = (found.stdout ?? '').trim();
  if (!leftovers) return;
  console.log(`test: killing what tests left running:\n${leftovers}`);
  try {
    process.kill(-group, 'SIGKILL');
  } catch {
    // gone meanwhile
  }
}

/**
 * After the watchdog killed a run: the slow-disk fault test (test/support/
 * slow-disk.ts) mounts ext4 on a loop device over an nbdfuse file under
 * TMPDIR/torus-slow-disk-*; a killed test never unmounts it, and mounts and
 * loop devices outlive their processes. Undo them here, innermost first.
 */
function sweepSlowDisks() {
  const marker = `${sep}torus-slow-disk-`;
  const mounts = existsSync('/proc/mounts')
    ? readFileSync('/proc/mounts', 'utf8')
        .split('\n')
        .map((line) => line.split(' ')[1])
        .filter((point) => point && point.includes(marker))
    : [];
  if (mounts.length === 0) return;
  const loops = [];
  for (const name of existsSync('/sys/block') ? readdirSync('/sys/block') : []) {
    const backing = join('/sys/block', name, 'loop', 'backing_file');
    if (existsSync(backing) && readFileSync(backing, 'utf8').includes(marker))
      loops.push(join('/dev', name));
  }
  const quiet = (command, args) => spawnSync(command, args, { stdio: 'ignore', timeout: 30_000 });
  const [filesystems, fuse] = [
    mounts.filter((m) => !m.endsWith(`${sep}fuse`)),
    mounts.filter((m) => m.endsWith(`${sep}fuse`)),
  ];
  for (const point of filesystems) quiet('umount', ['-l', point]);
  for (const loop of loops) quiet('losetup', ['-d', loop]);
  for (const point of fuse) quiet('umount', ['-l', point]);
  quiet('pkill', ['-f', 'nbdfuse .*torus-slow-disk-']);
  for (const root of new Set(mounts.map((point) => dirname(point))))
    rmSync(root, { recursive: true, force: true });
  console.log(
    `test: removed what the killed slow-disk test left mounted: ${mounts.join(', ')}${loops.length ? `; ${loops.join(', ')}` : ''}`,
  );
}

function main(argv) {
  const fast = argv.includes('--fast');
  const nodeFlags = argv.filter((a) => a.startsWith('-') && a !== '--fast');
  const fragments = argv.filter((a) => !a.startsWith('-')).map((f) => f.split('/').join(sep));
  if (!fast) ensureTools();
  if (!buildIfStale()) process.exit(1);
  const files = testFiles(fragments, fast);
  if (files.length === 0) {
    const matching = fragments.length ? ` matching ${fragments.join(', ')}` : '';
    console.log(
      `test: no compiled ${fast ? 'fast-tier ' : ''}test files${matching} under dist/{${SOURCE_DIRS.join(',')}}`,
    );
    process.exit(1);
  }
  runTests(nodeFlags, files, fast);
}

main(process.argv.slice(2));
