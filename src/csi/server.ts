/**
 * The CSI plugin's gRPC server: Identity always, Controller and Node when
 * given, on one endpoint (endpoint.ts). Each handler is an async function
 * (handlers.ts); here it becomes a grpc-js unary callback. A thrown CsiError
 * is the call's status; anything else is INTERNAL with its message (a bug
 * shows in the kubelet's events instead of a hang). An RPC of the spec a
 * service does not implement answers UNIMPLEMENTED, as the spec asks.
 * Every call is logged once: method, volume (or snapshot) id, duration,
 * status.
 */
import * as grpc from '@grpc/grpc-js';
import { rm } from 'node:fs/promises';
import { logger, type Logger } from '../common/log.js';
import { CsiError } from './csi-error.js';
import { bindAddress, parseEndpoint, prepareSocketPath, type CsiEndpoint } from './endpoint.js';
import type { CsiMessage, CsiService } from './handlers.js';
import type { CsiMetrics } from './metrics.js';
import { csiServices, type CsiServiceName } from './proto.js';

/** How long close() lets calls in flight finish before cutting them. */
const DRAIN_MS = 10_000;

/** Calls the sidecars make every few seconds: logged at debug, not info. */
const CHATTY = new Set([
  'Probe',
  'GetPluginInfo',
  'GetPluginCapabilities',
  'NodeGetCapabilities',
  'ControllerGetCapabilities',
]);

export interface CsiServerOptions {
  /** `unix:///csi/csi.sock`, an absolute socket path, or `tcp://host:port` (endpoint.ts). */
  endpoint: string;
  identity: CsiService;
  controller?: CsiService;
  node?: CsiService;
  log?: Logger;
  /** Told of every call answered (--metrics). */
  metrics?: CsiMetrics;
}

export interface CsiServer {
  readonly endpoint: CsiEndpoint;
  /** Stop accepting calls, let those in flight finish (10 s at most), remove the socket. Idempotent. */
  close(): Promise<void>;
}

export async function startCsiServer(options: CsiServerOptions): Promise<CsiServer> {
  const log = options.log ?? logger('csi');
  const endpoint = parseEndpoint(options.endpoint);
  if (endpoint.kind === 'unix') await prepareSocketPath(endpoint.path);
  else
    log.warn(
      { endpoint: options.endpoint },
      'serving CSI over TCP: anyone who reaches the port can create and delete volumes',
    );
  const definitions = csiServices();
  const server = new grpc.Server();
  const given: [CsiServiceName, CsiService | undefined][] = [
    ['Identity', options.identity],
    ['Controller', options.controller],
    ['Node', options.node],
  ];
  for (const [name, service] of given)
    if (service)
      server.addService(definitions[name].service, adapt(name, service, log, options.metrics));
  await new Promise<void>((done, fail) =>
    server.bindAsync(bindAddress(endpoint), grpc.ServerCredentials.createInsecure(), (err) =>
      err ? fail(err) : done(),
    ),
  );
  log.info(
    { endpoint: options.endpoint, services: given.filter(([, s]) => s).map(([n]) => n) },
    'CSI plugin listening',
  );
  let closing: Promise<void> | undefined;
  return {
    endpoint,
    close() {
      closing ??= (async () => {
        await new Promise<void>((done) => {
          const cut = setTimeout(() => {
            server.forceShutdown();
            done();
          }, DRAIN_MS);
          server.tryShutdown(() => {
            clearTimeout(cut);
            done();
          });
        });
        if (endpoint.kind === 'unix') await rm(endpoint.path, { force: true });
      })();
      return closing;
    },
  };
}

/** Every method of the service's definition as a grpc-js handler: the given one, or UNIMPLEMENTED. */
function adapt(
  serviceName: CsiServiceName,
  service: CsiService,
  log: Logger,
  metrics: CsiMetrics | undefined,
): grpc.UntypedServiceImplementation {
  const implementation: grpc.UntypedServiceImplementation = {};
  // Keys of a proto-loader service definition are the proto's method names, as CsiService's are.
  for (const method of Object.keys(csiServices()[serviceName].service)) {
    const handler = Object.hasOwn(service, method) ? service[method] : undefined;
    implementation[method] = (
      call: grpc.ServerUnaryCall<CsiMessage, CsiMessage>,
      callback: grpc.sendUnaryData<CsiMessage>,
    ) => {
      const started = process.hrtime.bigint();
      const finish = (err: grpc.ServiceError | null, response?: CsiMessage) => {
        const ms = Number(process.hrtime.bigint() - started) / 1e6;
        const code = err ? (err.code ?? grpc.status.INTERNAL) : grpc.status.OK;
        const entry = {
          method,
          id: subjectOf(call.request),
          ms: Math.round(ms * 10) / 10,
          status: grpc.status[code],
        };
        if (code === grpc.status.INTERNAL)
          log.error({ ...entry, err: err?.details }, 'CSI call failed');
        else if (err) log.warn({ ...entry, err: err.details }, 'CSI call refused');
        else if (CHATTY.has(method)) log.debug(entry, 'CSI call');
        else log.info(entry, 'CSI call');
        metrics?.record(method, entry.status, ms / 1000);
        callback(err, response);
      };
      if (!handler) {
        finish(
          serviceError(
            grpc.status.UNIMPLEMENTED,
            `${serviceName}.${method} is not implemented by the Torus CSI driver`,
          ),
        );
        return;
      }
      handler(call.request).then(
        (response) => finish(null, response),
        (err: unknown) => finish(toServiceError(err)),
      );
    };
  }
  return implementation;
}

/** The id a call is about, for its log line. */
function subjectOf(request: CsiMessage | undefined): string | undefined {
  if (!request) return undefined;
  for (const field of ['volume_id', 'source_volume_id', 'snapshot_id', 'name'])
    if (typeof request[field] === 'string' && request[field] !== '')
      return request[field] as string;
  return undefined;
}

function toServiceError(err: unknown): grpc.ServiceError {
  if (err instanceof CsiError) return serviceError(err.code, err.message);
  const message = err instanceof Error ? `${err.name}: ${err.message}` : String(err);
  return serviceError(grpc.status.INTERNAL, message);
}

function serviceError(code: grpc.status, details: string): grpc.ServiceError {
  return Object.assign(new Error(details), { code, details, metadata: new grpc.Metadata() });
}
