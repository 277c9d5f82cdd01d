/**
 * Every manifest in deploy/ against the schemas of a pinned Kubernetes
 * version, offline: the built-in kinds through kubernetes-models (its exact
 * version in package.json pins the API version: 1.34's kinds, e.g.
 * resource.k8s.io/v1), the VolumeSnapshot kinds through schemas written from
 * the external-snapshotter CRDs' fields (deploy/validation/). And every image
 * pinned to a version: a :latest (or untagged) image changes under a running
 * cluster at the next pull.
 *
 * kubernetes-models checks types, required fields and enums, but accepts
 * unknown fields (the API server would prune them); the wiring tests in
 * deploy.test.ts check the fields that matter by name.
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import { Ajv, type ValidateFunction } from 'ajv';
import {
  DEPLOY,
  EXAMPLES,
  containersOf,
  describeContainer,
  kustomizationImages,
  loadManifests,
  type K8sObject,
  type Manifest,
} from './support/image-manifests.js';
import { PROJECT } from './torusd-process.js';

const manifests: Manifest[] = [...loadManifests(DEPLOY), ...loadManifests(EXAMPLES)];
const VERSION = (
  JSON.parse(readFileSync(join(PROJECT, 'package.json'), 'utf8')) as { version: string }
).version;

const SNAPSHOT_GROUP = 'snapshot.storage.k8s.io/v1';

interface Validatable {
  validate(): void;
}
type ModelClass = new (data: unknown) => Validatable;

/** The kubernetes-models class of a built-in kind; its module path is the apiVersion. */
async function modelOf(object: K8sObject): Promise<ModelClass> {
  const module = (await import(`kubernetes-models/${object.apiVersion}`)) as Record<
    string,
    ModelClass | undefined
  >;
  const model = module[object.kind];
  assert.ok(model, `kubernetes-models has no ${object.kind} in ${object.apiVersion}`);
  return model;
}

function snapshotValidators(): Record<string, ValidateFunction> {
  const schemas = JSON.parse(
    readFileSync(
      join(DEPLOY, 'validation', `${SNAPSHOT_GROUP.replace('/', '-')}.schema.json`),
      'utf8',
    ),
  ) as Record<string, unknown> & { definitions: unknown };
  const ajv = new Ajv({ allErrors: true });
  const validators: Record<string, ValidateFunction> = {};
  for (const kind of ['VolumeSnapshot', 'VolumeSnapshotClass'])
    validators[kind] = ajv.compile({
      definitions: schemas.definitions,
      ...(schemas[kind] as object),
    });
  return validators;
}

describe('manifests against the Kubernetes schemas', () => {
  const snapshots = snapshotValidators();

  for (const { file, object } of manifests) {
    test(`${file}: ${object.kind} ${object.metadata.name}`, async () => {
      if (object.apiVersion === SNAPSHOT_GROUP) {
        const validate = snapshots[object.kind];
        assert.ok(validate, `no schema for ${object.kind}`);
        assert.ok(validate(object), JSON.stringify(validate.errors, null, 2));
        return;
      }
      const Model = await modelOf(object);
      new Model(object).validate();
    });
  }

  test('the schemas catch a broken manifest (the validation is not vacuous)', async () => {
    const daemonSet = manifests.find((m) => m.object.kind === 'DaemonSet')!.object;
    const broken = structuredClone(daemonSet) as K8sObject & {
      spec: { template: { spec: { containers: { ports?: unknown[] }[] } } };
    };
    broken.spec.template.spec.containers[0].ports = [{ containerPort: 'nbd' }];
    const Model = await modelOf(broken);
    assert.throws(() => new Model(broken).validate(), /containerPort/);
    const snapshot = manifests.find((m) => m.object.kind === 'VolumeSnapshot')!.object;
    const typo = { ...structuredClone(snapshot), spec: { source: { persistentVolumeClaim: 'x' } } };
    assert.equal(snapshots.VolumeSnapshot(typo), false);
  });
});

describe('images', () => {
  const images = manifests.flatMap((m) =>
    containersOf(m.object).map((c) => ({ where: describeContainer(m, c), image: c.image })),
  );

  test('every image is pinned to a version', () => {
    assert.ok(images.length >= 10, `found ${images.length} images`);
    for (const { where, image } of images) {
      const tag = /:([^/:@]+)$/.exec(image)?.[1];
      assert.ok(tag, `${where}: ${image} has no tag`);
      assert.match(tag, /^v?\d+\.\d+\.\d+$/, `${where}: ${image} is not pinned to a version`);
    }
  });

  test(`the torus image is this version (${VERSION}), the sidecars come from sig-storage`, () => {
    for (const { where, image } of images) {
      const name = image.slice(0, image.lastIndexOf(':'));
      if (name === 'torus') assert.equal(image, `torus:${VERSION}`, where);
      else if (!where.startsWith('examples/'))
        assert.match(name, /^registry\.k8s\.io\/sig-storage\/[a-z-]+$/, where);
    }
    const torus = kustomizationImages(DEPLOY).find((i) => i.name === 'torus');
    assert.equal(torus?.newTag, VERSION, 'deploy/kustomization.yaml images: torus');
  });
});
