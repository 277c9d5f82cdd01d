/**
 * NBD-over-TLS flags, the same on torusd and `torusblk nbdserve` (server
 * side) and on the commands that connect with NbdClient (client side). The
 * names and certificate file names are nbdkit's and qemu-nbd's, so a
 * directory made for them works here.
 */
import {
  loadClientTls,
  loadServerTls,
  TlsConfigError,
  type NbdClientTls,
  type NbdClientTlsFiles,
  type NbdServerTls,
  type NbdTlsMode,
} from '../dataplane/nbd/tls-config.js';
import { ArgumentError, type FlagSpec, type ParsedValue } from './args.js';

export const nbdTlsFlags: Record<string, FlagSpec> = {
  tls: {
    type: 'string',
    help: 'NBD over TLS: off, on (clients choose) or require (no export in clear)',
    default: 'off',
    env: 'TORUS_NBD_TLS',
  },
  'tls-certificates': {
    type: 'string',
    help: 'directory with ca-cert.pem, server-cert.pem, server-key.pem (as nbdkit and qemu-nbd name them)',
  },
  'tls-cert': { type: 'string', help: 'server certificate (PEM), instead of --tls-certificates' },
  'tls-key': { type: 'string', help: 'server private key (PEM), with --tls-cert' },
  'tls-ca': { type: 'string', help: 'CA certificate (PEM) that signs client certificates' },
  'tls-psk': { type: 'string', help: 'pre-shared keys, IDENTITY:HEXKEY lines (psktool format)' },
  'tls-verify-peer': {
    type: 'boolean',
    help: 'require a client certificate signed by the CA',
  },
};

/** Server TLS from the flags above; undefined with --tls off. A bad file exits 2 naming it. */
export function serverTlsOf(v: Record<string, ParsedValue>): NbdServerTls | undefined {
  const mode = v.tls as string;
  if (mode !== 'off' && mode !== 'on' && mode !== 'require')
    throw new ArgumentError(`--tls: expected off, on or require, got "${mode}"`);
  return asArgumentError(() =>
    loadServerTls(mode as NbdTlsMode, {
      certificates: v['tls-certificates'] as string | undefined,
      cert: v['tls-cert'] as string | undefined,
      key: v['tls-key'] as string | undefined,
      ca: v['tls-ca'] as string | undefined,
      psk: v['tls-psk'] as string | undefined,
      verifyPeer: v['tls-verify-peer'] === true,
    }),
  );
}

/** Client-side flags for commands that connect to an NBD server (`--nbd-tls-…`). */
export const nbdClientTlsFlags: Record<string, FlagSpec> = {
  'nbd-tls-certificates': {
    type: 'string',
    help: 'connect to NBD over TLS: directory with ca-cert.pem (and client-cert.pem, client-key.pem if the server checks clients)',
  },
  'nbd-tls-psk': {
    type: 'string',
    help: 'connect to NBD over TLS with a pre-shared key file (its first identity, or --nbd-tls-username)',
  },
  'nbd-tls-username': { type: 'string', help: 'the PSK identity to use from --nbd-tls-psk' },
};

/** Client TLS from --nbd-tls-…; undefined when none is given. */
export function clientTlsOf(v: Record<string, ParsedValue>): NbdClientTls | undefined {
  const files = clientTlsFilesOf(v);
  return files && loadClientTls(files);
}

/**
 * The --nbd-tls-… files, checked by loading them once (exit 2 naming a bad
 * one), for where they must travel as paths (the CSI node's helpers).
 */
export function clientTlsFilesOf(v: Record<string, ParsedValue>): NbdClientTlsFiles | undefined {
  const certificates = v['nbd-tls-certificates'] as string | undefined;
  const psk = v['nbd-tls-psk'] as string | undefined;
  if (!certificates && !psk) return undefined;
  if (certificates && psk)
    throw new ArgumentError('give --nbd-tls-certificates or --nbd-tls-psk, not both');
  const files = { certificates, psk, pskIdentity: v['nbd-tls-username'] as string | undefined };
  asArgumentError(() => loadClientTls(files));
  return files;
}

function asArgumentError<T>(load: () => T): T {
  try {
    return load();
  } catch (err) {
    if (err instanceof TlsConfigError) throw new ArgumentError(err.message);
    throw err;
  }
}
