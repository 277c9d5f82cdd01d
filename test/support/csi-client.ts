/**
 * A CSI client for tests, playing the kubelet and the sidecars: grpc-js over
 * the plugin's unix socket, from the same csi.proto the plugin loads, with
 * the same loader options (so requests and responses are the plain
 * snake_case objects the handlers see). Also the `torusblk csi` process.
 */
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { csiServices, type CsiServiceName } from '../../src/csi/proto.js';
import type { CsiMessage } from '../../src/csi/handlers.js';
import { BIN } from '../torusd-process.js';

export class CsiClient {
  private readonly clients: Record<CsiServiceName, grpc.Client>;

  constructor(socketPath: string) {
    const services = csiServices();
    const address = `unix://${socketPath}`;
    const credentials = grpc.credentials.createInsecure();
    this.clients = {
      Identity: new services.Identity(address, credentials),
      Controller: new services.Controller(address, credentials),
      Node: new services.Node(address, credentials),
    };
  }

  /** One unary call; rejects with the grpc ServiceError (its `code` and `details`). */
  call(service: CsiServiceName, method: string, request: CsiMessage = {}): Promise<CsiMessage> {
    const client = this.clients[service] as unknown as Record<
      string,
      (
        request: CsiMessage,
        options: grpc.CallOptions,
        callback: (err: grpc.ServiceError | null, response: CsiMessage) => void,
      ) => void
    >;
    return new Promise((done, fail) =>
      client[method].call(
        client,
        request,
        { deadline: Date.now() + 30_000 },
        (err: grpc.ServiceError | null, response: CsiMessage) => (err ? fail(err) : done(response)),
      ),
    );
  }

  controller(method: string, request: CsiMessage = {}): Promise<CsiMessage> {
    return this.call('Controller', method, request);
  }

  close(): void {
    for (const client of Object.values(this.clients)) client.close();
  }
}

/** Await `call` and check it failed with `code` (a grpc status) and, if given, a message matching `message`. */
export async function rejectsWith(
  call: Promise<unknown>,
  code: grpc.status,
  message?: RegExp,
): Promise<grpc.ServiceError> {
  try {
    await call;
  } catch (err) {
    const e = err as grpc.ServiceError;
    assert.equal(
      grpc.status[e.code],
      grpc.status[code],
      `expected ${grpc.status[code]}, got ${grpc.status[e.code]}: ${e.details}`,
    );
    if (message) assert.match(e.details, message);
    return e;
  }
  assert.fail(`expected ${grpc.status[code]}, but the call succeeded`);
}

/** A running `torusblk csi` process. */
export interface CsiProcess {
  child: ChildProcess;
  socket: string;
  output(): string;
  /** SIGTERM, wait for exit (SIGKILL after `timeoutMs`); the exit code or signal. */
  stop(timeoutMs?: number): Promise<number | string>;
}

/** Start `torusblk csi ARGS --endpoint unix://SOCKET` and wait for its socket. */
export async function startCsiPlugin(socket: string, args: string[]): Promise<CsiProcess> {
  const child = spawn(
    process.execPath,
    [join(BIN, 'torusblk'), 'csi', '--endpoint', `unix://${socket}`, ...args],
    {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, TORUS_LOG_FORMAT: 'json', TORUS_LOG_LEVEL: 'info' },
    },
  );
  let output = '';
  child.stdout!.on('data', (d: Buffer) => (output += d.toString()));
  child.stderr!.on('data', (d: Buffer) => (output += d.toString()));
  const exited = new Promise<number | string>((done) =>
    child.once('exit', (code, signal) => done(code ?? signal ?? -1)),
  );
  const plugin: CsiProcess = {
    child,
    socket,
    output: () => output,
    async stop(timeoutMs = 15_000) {
      if (child.exitCode !== null || child.signalCode !== null) return exited;
      child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
      const code = await exited;
      clearTimeout(timer);
      return code;
    },
  };
  const deadline = Date.now() + 20_000;
  while (!existsSync(socket) || !output.includes('CSI plugin listening')) {
    if (child.exitCode !== null) assert.fail(`torusblk csi exited ${child.exitCode}:\n${output}`);
    if (Date.now() > deadline) {
      await plugin.stop();
      assert.fail(`torusblk csi did not listen on ${socket} within 20 s:\n${output}`);
    }
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  return plugin;
}
