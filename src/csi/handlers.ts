/**
 * How the CSI services are written: one async function per RPC, taking the
 * request as the plain object @grpc/proto-loader decodes and returning the
 * response object. Field names are the spec's own snake_case (the loader
 * runs with keepCase), 64-bit integers are decimal strings (longs: String),
 * enums are their names (enums: String), absent fields take their defaults
 * (defaults: true) and oneofs name their set field (oneofs: true) — see
 * `LOADER_OPTIONS`. The server adapts these to grpc-js callbacks and turns a
 * thrown CsiError into the call's status.
 */
import type * as protoLoader from '@grpc/proto-loader';

export const LOADER_OPTIONS: protoLoader.Options = {
  keepCase: true,
  longs: String,
  enums: String,
  defaults: true,
  oneofs: true,
};

// Requests and responses are the proto messages as plain objects; they are
// typed loosely here and checked field by field by each handler, because
// every field can be missing on the wire and the spec says which are required.
// eslint-disable-next-line @typescript-eslint/no-explicit-any
export type CsiMessage = Record<string, any>;

export type CsiHandler = (request: CsiMessage) => Promise<CsiMessage>;

/** A service's implementation: RPC method name (as in csi.proto, e.g. `NodeStageVolume`) → handler. */
export type CsiService = Record<string, CsiHandler>;
