/**
 * The manifests in deploy/ are documentation that runs: every flag they give
 * torusd, torusctl and torusblk must exist and every TORUS_* variable they
 * set must be one the binary reads (a renamed flag would crash-loop every
 * pod; a misspelt variable would be ignored without a word); `kubectl
 * kustomize deploy/` must render them; and the pieces must fit together
 * (driver name, sockets, mount propagation, service accounts).
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { describe, test, type TestContext } from 'node:test';
import {
  DEPLOY,
  EXAMPLES,
  containersOf,
  describeContainer,
  find,
  kustomizationImages,
  kustomizationResources,
  loadManifests,
  parseObjects,
  podSpecOf,
  type Container,
  type Manifest,
  type PodSpec,
} from './support/image-manifests.js';
import { missing } from './tools.js';
import { PROJECT, runCli } from './torusd-process.js';

const DRIVER = 'csi.torus.dev';
type Binary = 'torusd' | 'torusctl' | 'torusblk';
/** Stands in for a $(VAR) or $VAR: upper case, so it is never taken for a command word. */
const PLACEHOLDER = 'X0';

const manifests = loadManifests();

/** One run of our binaries a container makes: which, with what, and the variables it expands. */
interface Invocation {
  where: string;
  binary: Binary;
  argv: string[];
  /** Variables the command line itself expands ($(VAR) in args, $VAR in a shell script). */
  expands: string[];
  container: Container;
}

const VARIABLE = /\$\(([A-Za-z_][A-Za-z0-9_]*)\)|\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?/g;

function expandedNames(text: string): string[] {
  return [...text.matchAll(VARIABLE)].map((m) => m[1] ?? m[2]);
}

function binaryOf(path: string): Binary | undefined {
  const name = /^\.\/bin\/(torusd|torusctl|torusblk)$/.exec(path)?.[1];
  return name as Binary | undefined;
}

function invocationOf(manifest: Manifest, container: Container): Invocation | undefined {
  const where = describeContainer(manifest, container);
  const [program, ...rest] = container.command ?? [];
  if (program === undefined) return undefined;
  const direct = binaryOf(program);
  if (direct) {
    const words = [...rest, ...(container.args ?? [])];
    return {
      where,
      binary: direct,
      argv: words.map((w) => w.replace(VARIABLE, PLACEHOLDER)),
      expands: words.flatMap(expandedNames),
      container,
    };
  }
  if (program === 'sh' && rest[0] === '-c') {
    // One command of ours in a short script: its words up to the next separator.
    const script = rest[1] ?? '';
    const start = script.search(/\.\/bin\/(torusd|torusctl|torusblk)\b/);
    if (start < 0) return undefined;
    const line = script.slice(start).split(/&&|\|\||;|\|/)[0];
    const words = line
      .trim()
      .split(/\s+/)
      .map((w) => w.replace(/^["']|["']$/g, ''));
    return {
      where,
      binary: binaryOf(words[0])!,
      argv: words.slice(1).map((w) => w.replace(VARIABLE, PLACEHOLDER)),
      expands: expandedNames(script),
      container,
    };
  }
  return undefined;
}

const invocations: Invocation[] = manifests.flatMap((m) =>
  containersOf(m.object).flatMap((c) => invocationOf(m, c) ?? []),
);

/** The command words (`csi`, `init`, `nbdserve`): what --help is asked of. */
function commandWords(argv: string[]): string[] {
  return argv.filter((w) => /^[a-z][a-z-]*$/.test(w));
}

/** Whether `torusblk csi` is in this build: it comes from the CSI branch. */
let csiBuilt: boolean | undefined;
async function skipUnlessBuilt(t: TestContext, invocation: Invocation): Promise<boolean> {
  if (invocation.binary !== 'torusblk' || commandWords(invocation.argv)[0] !== 'csi') return false;
  csiBuilt ??= (await runCli('torusblk', ['csi', '--help'])).code === 0;
  if (csiBuilt) return false;
  t.skip('`torusblk csi --help` fails: the CSI plugin command is not in this build yet');
  return true;
}

/** Variables the logger reads (src/common/log.ts), which no command's --help lists. */
function loggerVariables(): string[] {
  const source = readFileSync(join(PROJECT, 'src', 'common', 'log.ts'), 'utf8');
  return [...new Set(source.match(/TORUS_[A-Z_]+/g) ?? [])];
}

describe('our binaries as the manifests run them', () => {
  test('the manifests run torusd, torusctl and torusblk', () => {
    const run = new Set(invocations.map((i) => `${i.binary} ${commandWords(i.argv).join(' ')}`));
    for (const expected of [
      'torusd ',
      'torusctl init',
      'torusblk csi',
      'torusblk csi-keeper',
      'torusblk nbdserve',
    ])
      assert.ok(run.has(expected), `expected a container running ${expected}: ${[...run]}`);
  });

  for (const invocation of invocations) {
    test(`${invocation.where}: every flag of \`${invocation.binary} ${commandWords(invocation.argv).join(' ')}\` exists`, async (t) => {
      if (await skipUnlessBuilt(t, invocation)) return;
      // Flags are checked by name before --help answers.
      const r = await runCli(invocation.binary, [...invocation.argv, '--help']);
      assert.equal(r.code, 0, `${invocation.argv.join(' ')}:\n${r.stderr}`);
    });

    test(`${invocation.where}: every variable it expands is set, every TORUS_* one it sets is read`, async (t) => {
      const env = invocation.container.env ?? [];
      const set = new Set(env.map((e) => e.name));
      for (const name of invocation.expands)
        assert.ok(set.has(name), `$(${name}) / $${name} is expanded but not in env`);
      if (await skipUnlessBuilt(t, invocation)) return;
      const help = await runCli(invocation.binary, [...commandWords(invocation.argv), '--help']);
      assert.equal(help.code, 0, help.stderr);
      const read = new Set([...(help.stdout.match(/TORUS_[A-Z_]+/g) ?? []), ...loggerVariables()]);
      for (const name of set) {
        if (!name.startsWith('TORUS_') || invocation.expands.includes(name)) continue;
        assert.ok(read.has(name), `${name} is set but ${invocation.binary} does not read it`);
      }
    });
  }
});

describe('kubectl kustomize', () => {
  const skip = missing('kubectl');

  test('every manifest in deploy/ is in a kustomization', () => {
    for (const dir of [DEPLOY, EXAMPLES]) {
      const listed = new Set(kustomizationResources(dir));
      const files = readdirSync(dir).filter(
        (f) => f.endsWith('.yaml') && f !== 'kustomization.yaml',
      );
      for (const file of files) assert.ok(listed.has(file), `${dir}/${file} is in no resources:`);
    }
  });

  for (const dir of [DEPLOY, EXAMPLES]) {
    test(
      `renders ${dir.slice(PROJECT.length + 1)}/ with the torus image set once`,
      { skip, timeout: 60_000 },
      () => {
        const r = spawnSync('kubectl', ['kustomize', dir], { encoding: 'utf8', timeout: 30_000 });
        assert.equal(r.status, 0, r.stderr);
        const rendered = parseObjects(r.stdout, 'kubectl kustomize');
        const own = loadManifests(dir);
        assert.equal(rendered.length, own.length, 'kustomize renders every object once');
        const torus = kustomizationImages(DEPLOY).find((i) => i.name === 'torus');
        const expected = `${torus?.newName ?? 'torus'}:${torus?.newTag}`;
        for (const object of rendered)
          for (const c of containersOf(object))
            if (/^([^/]+\/)*torus[:@]/.test(c.image))
              assert.equal(c.image, expected, `${object.kind} ${object.metadata.name}`);
      },
    );
  }
});

describe('the pieces fit together', () => {
  const node = podSpecOf(find(manifests, 'DaemonSet', 'torus-csi-node')) as PodSpec;
  const controller = podSpecOf(find(manifests, 'Deployment', 'torus-csi-controller')) as PodSpec;
  const container = (pod: PodSpec, name: string): Container => {
    const c = pod.containers.find((x) => x.name === name);
    assert.ok(c, `container ${name}`);
    return c;
  };
  const hostPathOf = (pod: PodSpec, volume: string) =>
    pod.volumes?.find((v) => v.name === volume)?.hostPath?.path;

  test(`the driver is ${DRIVER} everywhere`, () => {
    assert.equal(find(manifests, 'CSIDriver', DRIVER).metadata.name, DRIVER);
    for (const { object } of manifests) {
      if (object.kind === 'StorageClass') assert.equal(object.provisioner, DRIVER);
      if (object.kind === 'VolumeSnapshotClass') assert.equal(object.driver, DRIVER);
    }
    const spec = find(manifests, 'CSIDriver', DRIVER).spec as Record<string, unknown>;
    assert.equal(
      spec.attachRequired,
      false,
      'no ControllerPublish: every node serves every volume',
    );
  });

  test('kubelet finds the node plugin: socket, registration path, propagation, /dev', () => {
    const plugin = container(node, 'torus-csi');
    assert.equal(plugin.securityContext?.privileged, true);
    assert.ok(plugin.args?.includes('--endpoint=unix:///csi/csi.sock'));
    const mounts = new Map(plugin.volumeMounts?.map((m) => [m.mountPath, m]));
    assert.equal(mounts.get('/csi')?.name, 'plugin-dir');
    assert.equal(mounts.get('/var/lib/kubelet')?.mountPropagation, 'Bidirectional');
    assert.equal(hostPathOf(node, mounts.get('/dev')!.name), '/dev');
    const registrar = container(node, 'node-driver-registrar');
    const socketOnHost = `${hostPathOf(node, 'plugin-dir')}/csi.sock`;
    assert.equal(socketOnHost, `/var/lib/kubelet/plugins/${DRIVER}/csi.sock`);
    assert.ok(registrar.args?.includes(`--kubelet-registration-path=${socketOnHost}`));
    assert.equal(hostPathOf(node, 'registration-dir'), '/var/lib/kubelet/plugins_registry');
    assert.ok(node.hostNetwork, "the node's NBD server is on the host's loopback");
  });

  test("the attachment keeper: its own DaemonSet, never rolled, sharing the plugin's state directory and socket", () => {
    const keeperSet = find(manifests, 'DaemonSet', 'torus-csi-keeper');
    const strategy = (keeperSet.spec as { updateStrategy?: { type?: string } }).updateStrategy;
    assert.equal(strategy?.type, 'OnDelete', 'replacing the keeper ends its helpers');
    const keeperPod = podSpecOf(keeperSet) as PodSpec;
    const keeper = container(keeperPod, 'torus-csi-keeper');
    const plugin = container(node, 'torus-csi');
    assert.equal(keeper.securityContext?.privileged, true, 'FUSE mounts');
    assert.ok(keeperPod.hostNetwork, "helpers reach the node's NBD server on the host's loopback");
    const probeOf = (c: Container) => (c as Container & { livenessProbe?: unknown }).livenessProbe;
    assert.equal(probeOf(keeper), undefined, 'a restart would end the helpers');
    const flag = (c: Container, name: string) =>
      c.args?.find((a) => a.startsWith(`--${name}=`))?.slice(name.length + 3);
    const socket = flag(keeper, 'socket');
    assert.equal(flag(plugin, 'keeper'), socket, 'the plugin asks the keeper where it listens');
    assert.equal(flag(keeper, 'state-dir'), flag(plugin, 'state-dir'));
    // The same host directories at the same paths in both pods.
    for (const path of [flag(plugin, 'state-dir')!, socket!.replace(/^unix:\/\/|\/[^/]+$/g, '')]) {
      const mountOf = (pod: PodSpec, c: Container) => {
        const m = c.volumeMounts?.find((v) => v.mountPath === path);
        assert.ok(m, `${c.name} mounts ${path}`);
        return { host: hostPathOf(pod, m.name), propagation: m.mountPropagation };
      };
      const inKeeper = mountOf(keeperPod, keeper);
      const inPlugin = mountOf(node, plugin);
      assert.equal(inKeeper.host, inPlugin.host, path);
      if (path === flag(plugin, 'state-dir')) {
        // The helpers' FUSE mounts must reach the host and the plugin.
        assert.equal(inKeeper.propagation, 'Bidirectional');
        assert.equal(inPlugin.propagation, 'Bidirectional');
      }
    }
    assert.ok(probeOf(plugin), 'a plugin restart is harmless now: a wedged one is restarted');
  });

  test('the controller sidecars elect a leader and share the plugin socket', () => {
    for (const name of ['csi-provisioner', 'csi-resizer', 'csi-snapshotter']) {
      const sidecar = container(controller, name);
      assert.ok(sidecar.args?.includes('--leader-election'), name);
      assert.ok(sidecar.args?.includes('--csi-address=/csi/csi.sock'), name);
    }
    assert.ok(container(controller, 'torus-csi').args?.includes('--controller'));
  });

  test('every service account a pod or binding names exists, and every role a binding names', () => {
    const exists = (kind: string, name: string, namespace?: string) =>
      manifests.some(
        ({ object }) =>
          object.kind === kind &&
          object.metadata.name === name &&
          (namespace === undefined || object.metadata.namespace === namespace),
      );
    for (const { file, object } of manifests) {
      const account = podSpecOf(object)?.serviceAccountName;
      if (account)
        assert.ok(
          exists('ServiceAccount', account, object.metadata.namespace),
          `${file}: ${account}`,
        );
      if (object.kind !== 'ClusterRoleBinding' && object.kind !== 'RoleBinding') continue;
      const binding = object as unknown as {
        subjects: { kind: string; name: string; namespace?: string }[];
        roleRef: { kind: string; name: string };
      };
      for (const s of binding.subjects)
        assert.ok(
          exists(s.kind, s.name, s.namespace ?? object.metadata.namespace),
          `${file}: ${s.name}`,
        );
      assert.ok(
        exists(binding.roleRef.kind, binding.roleRef.name),
        `${file}: ${binding.roleRef.name}`,
      );
    }
  });

  test('the torus class: 2 copies, expandable, bound at once; an encrypted one beside it', () => {
    const torus = find(manifests, 'StorageClass', 'torus') as unknown as Record<string, unknown>;
    assert.deepEqual(torus.parameters, { replication: '2' });
    assert.equal(torus.allowVolumeExpansion, true);
    assert.equal(torus.volumeBindingMode, 'Immediate');
    const encrypted = find(manifests, 'StorageClass', 'torus-encrypted') as unknown as {
      parameters: Record<string, string>;
    };
    assert.equal(encrypted.parameters.encrypted, 'true');
  });
});
