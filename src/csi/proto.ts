/**
 * The CSI protobuf definitions (proto/csi.proto), loaded at run time with
 * @grpc/proto-loader and the options every CSI handler is written against
 * (handlers.ts LOADER_OPTIONS). tsc does not copy .proto files, and the
 * image ships the repository's src/ beside dist/, so the file is looked
 * for next to this module first (src/csi when run from source) and then in
 * the source tree from the compiled location (dist/src/csi → src/csi).
 */
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { LOADER_OPTIONS } from './handlers.js';

/** The three services the CSI spec defines, and the method names each serves. */
export type CsiServiceName = 'Identity' | 'Controller' | 'Node';

const CANDIDATES = ['./proto/csi.proto', '../../../src/csi/proto/csi.proto'];

/** Where csi.proto is; an error naming both places when it is in neither. */
export function csiProtoPath(): string {
  const paths = CANDIDATES.map((relative) => fileURLToPath(new URL(relative, import.meta.url)));
  const found = paths.find((path) => existsSync(path));
  if (!found)
    throw new Error(
      `csi.proto not found (looked in ${paths.join(' and ')}): the driver needs the source tree's src/csi/proto beside dist/`,
    );
  return found;
}

let loaded: Record<CsiServiceName, grpc.ServiceClientConstructor> | undefined;

/** The service definitions of package csi.v1 (loaded once per process). */
export function csiServices(): Record<CsiServiceName, grpc.ServiceClientConstructor> {
  if (loaded) return loaded;
  const definition = protoLoader.loadSync(csiProtoPath(), LOADER_OPTIONS);
  const root = grpc.loadPackageDefinition(definition) as unknown as {
    csi: { v1: Record<CsiServiceName, grpc.ServiceClientConstructor> };
  };
  const { Identity, Controller, Node } = root.csi.v1;
  loaded = { Identity, Controller, Node };
  return loaded;
}
