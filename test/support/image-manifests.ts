/**
 * The Kubernetes manifests that run the Torus image (deploy/), read the way
 * kustomize reads them: the files a kustomization.yaml lists, every YAML
 * document of each, plus the pods' containers and what they run. Shared by
 * test/deploy.test.ts (our binaries' flags and environment) and
 * test/deploy-schemas.test.ts (schemas, pinned images).
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseAllDocuments, parse } from 'yaml';
import { PROJECT } from '../torusd-process.js';

export const DEPLOY = join(PROJECT, 'deploy');
export const EXAMPLES = join(DEPLOY, 'examples');

/** A Kubernetes object as written: only the fields the tests read are typed. */
export interface K8sObject {
  apiVersion: string;
  kind: string;
  metadata: { name: string; namespace?: string; [key: string]: unknown };
  [field: string]: unknown;
}

export interface EnvVar {
  name: string;
  value?: string;
  valueFrom?: unknown;
}

export interface Container {
  name: string;
  image: string;
  command?: string[];
  args?: string[];
  env?: EnvVar[];
  securityContext?: { privileged?: boolean };
  volumeMounts?: { name: string; mountPath: string; mountPropagation?: string }[];
  ports?: { name?: string; containerPort: number }[];
}

export interface PodSpec {
  containers: Container[];
  initContainers?: Container[];
  serviceAccountName?: string;
  hostNetwork?: boolean;
  volumes?: { name: string; hostPath?: { path: string }; [source: string]: unknown }[];
}

export interface Manifest {
  /** Path relative to deploy/. */
  file: string;
  object: K8sObject;
}

/** The files a kustomization.yaml lists under resources, relative to its directory. */
export function kustomizationResources(dir: string): string[] {
  const kustomization = parse(readFileSync(join(dir, 'kustomization.yaml'), 'utf8')) as {
    resources?: string[];
  };
  return kustomization.resources ?? [];
}

/** The kustomization's `images:` entries (name → newName:newTag). */
export function kustomizationImages(
  dir: string,
): { name: string; newName?: string; newTag?: string }[] {
  const kustomization = parse(readFileSync(join(dir, 'kustomization.yaml'), 'utf8')) as {
    images?: { name: string; newName?: string; newTag?: string }[];
  };
  return kustomization.images ?? [];
}

/** Every object of the YAML text, in order; a syntax error throws naming where. */
export function parseObjects(text: string, where: string): K8sObject[] {
  return parseAllDocuments(text).flatMap((document) => {
    if (document.errors.length > 0)
      throw new Error(`${where}: ${document.errors.map((e) => e.message).join('; ')}`);
    const object = document.toJS() as K8sObject | null;
    return object === null ? [] : [object];
  });
}

/** Every object of every file the kustomization in `dir` lists. */
export function loadManifests(dir: string = DEPLOY): Manifest[] {
  const prefix = dir === DEPLOY ? '' : `${dir.slice(DEPLOY.length + 1)}/`;
  return kustomizationResources(dir).flatMap((file) =>
    parseObjects(readFileSync(join(dir, file), 'utf8'), file).map((object) => ({
      file: prefix + file,
      object,
    })),
  );
}

/** The pod an object runs: a Pod's spec, or a workload's template. */
export function podSpecOf(object: K8sObject): PodSpec | undefined {
  if (object.kind === 'Pod') return object.spec as PodSpec;
  const spec = object.spec as { template?: { spec?: PodSpec } } | undefined;
  return spec?.template?.spec;
}

export function containersOf(object: K8sObject): Container[] {
  const pod = podSpecOf(object);
  return pod ? [...(pod.initContainers ?? []), ...pod.containers] : [];
}

export function describeContainer(manifest: Manifest, container: Container): string {
  return `${manifest.file}: ${manifest.object.kind} ${manifest.object.metadata.name}, container ${container.name}`;
}

export function find(manifests: Manifest[], kind: string, name: string): K8sObject {
  const found = manifests.find((m) => m.object.kind === kind && m.object.metadata.name === name);
  if (!found) throw new Error(`no ${kind} ${name} in deploy/`);
  return found.object;
}
