/**
 * TLS settings for NBD, server and client side, loaded once at start-up from
 * the files nbdkit, qemu-nbd and libnbd use: a certificate directory holding
 * `ca-cert.pem`, `server-cert.pem`, `server-key.pem` (a client's:
 * `ca-cert.pem`, optionally `client-cert.pem` and `client-key.pem`), explicit
 * files, or a PSK file (tls-psk.ts).
 *
 * Contract: every file is read and every key parsed here, before anything
 * listens or connects, so a missing or broken file is a TlsConfigError naming
 * the file at start-up, never a handshake that fails later for every client.
 */
import { constants as cryptoConstants } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import {
  createSecureContext,
  DEFAULT_CIPHERS,
  type ConnectionOptions,
  type SecureContext,
  type TLSSocketOptions,
} from 'node:tls';
import { parsePskFile, PskFileError, type PskKeys } from './tls-psk.js';

/** off: NOTLS (STARTTLS refused); on: SELECTIVETLS (clients choose); require: FORCEDTLS. */
export type NbdTlsMode = 'off' | 'on' | 'require';

/** A TLS file that is missing, unreadable or not what it should be; the message names it. */
export class TlsConfigError extends Error {
  override name = 'TlsConfigError';
}

/**
 * Suites offered with a PSK. TLS 1.3 first (its PSK mode, with ECDHE, is what
 * GnuTLS clients pick); the TLS 1.2 PSK suites after it, ECDHE first for
 * forward secrecy. OpenSSL disables PSK suites unless they are named.
 */
const PSK_CIPHERS = [
  'TLS_AES_128_GCM_SHA256',
  'TLS_AES_256_GCM_SHA384',
  'TLS_CHACHA20_POLY1305_SHA256',
  'ECDHE-PSK-CHACHA20-POLY1305',
  'ECDHE-PSK-AES256-CBC-SHA384',
  'DHE-PSK-AES256-GCM-SHA384',
  'PSK-AES256-GCM-SHA384',
  'PSK-AES128-GCM-SHA256',
].join(':');

/**
 * The TLS 1.3 suites in the server's order of preference: AES-128-GCM first.
 * Every block crosses the wire encrypted once each way, and AES-128 does 10
 * rounds against AES-256's 14, for both ends (OpenSSL here, GnuTLS in libnbd
 * clients); it is TLS 1.3's mandatory suite and a standard choice for bulk
 * data. Node's default puts AES-256 first and lets the client choose, and
 * GnuTLS clients choose AES-256. ChaCha20 is kept for clients that prefer it
 * (SERVER_PREFERENCE below: a client without AES instructions asks for it first).
 * The TLS 1.2 part stays Node's default list.
 */
const SERVER_CIPHERS = [
  'TLS_AES_128_GCM_SHA256',
  'TLS_AES_256_GCM_SHA384',
  'TLS_CHACHA20_POLY1305_SHA256',
  ...DEFAULT_CIPHERS.split(':').filter((suite) => !suite.startsWith('TLS_')),
].join(':');

/** The server's order wins, except that a client that prefers ChaCha20 gets it. */
const SERVER_PREFERENCE =
  cryptoConstants.SSL_OP_CIPHER_SERVER_PREFERENCE | cryptoConstants.SSL_OP_PRIORITIZE_CHACHA;

/** The spec requires TLS 1.2 and allows later; older versions are never offered. */
const MIN_VERSION = 'TLSv1.2';

export interface NbdServerTlsFiles {
  /** Directory with ca-cert.pem, server-cert.pem, server-key.pem (the nbdkit/qemu names). */
  certificates?: string;
  cert?: string;
  key?: string;
  ca?: string;
  /** PSK file (identity:hexkey lines); replaces certificates. */
  psk?: string;
  /** Require a client certificate signed by the CA. */
  verifyPeer?: boolean;
}

/** What the NBD server needs to offer TLS. */
export interface NbdServerTls {
  /** FORCEDTLS: every option but STARTTLS and ABORT is refused until TLS is up. */
  required: boolean;
  /** Options for `new TLSSocket(socket, …)` on an accepted connection. */
  socketOptions: TLSSocketOptions;
  /** For logs: "x509", "x509+verify-peer" or "psk". */
  kind: string;
}

/** Load server TLS for `mode`; undefined when mode is off. Throws TlsConfigError. */
export function loadServerTls(
  mode: NbdTlsMode,
  files: NbdServerTlsFiles,
): NbdServerTls | undefined {
  const anyFile = files.certificates ?? files.cert ?? files.key ?? files.ca ?? files.psk;
  if (mode === 'off') {
    if (anyFile || files.verifyPeer)
      throw new TlsConfigError(
        'TLS files or --tls-verify-peer given with --tls off: add --tls on or --tls require',
      );
    return undefined;
  }
  const required = mode === 'require';
  if (files.psk) {
    if (files.certificates || files.cert || files.key || files.verifyPeer)
      throw new TlsConfigError(
        'give either a PSK file or certificates, not both (a PSK already authenticates the client)',
      );
    const keys = readPsk(files.psk);
    const secureContext = createSecureContext({
      ciphers: PSK_CIPHERS,
      minVersion: MIN_VERSION,
      secureOptions: SERVER_PREFERENCE,
    });
    return {
      required,
      kind: 'psk',
      socketOptions: {
        isServer: true,
        secureContext,
        pskCallback: (_socket: unknown, identity: string) => keys.get(identity) ?? null,
      } as TLSSocketOptions,
    };
  }
  const dir = files.certificates;
  const certPath = files.cert ?? (dir && join(dir, 'server-cert.pem'));
  const keyPath = files.key ?? (dir && join(dir, 'server-key.pem'));
  const caPath = files.ca ?? (dir && join(dir, 'ca-cert.pem'));
  if (!certPath || !keyPath)
    throw new TlsConfigError(
      'TLS needs a server certificate and key: --tls-certificates DIR, --tls-cert FILE and --tls-key FILE, or --tls-psk FILE',
    );
  const cert = readPem(certPath, 'server certificate');
  const key = readPem(keyPath, 'server key');
  // The CA file is optional for the server unless client certificates are checked.
  const ca =
    caPath && (files.verifyPeer || files.ca || existsSync(caPath))
      ? readPem(caPath, 'CA certificate')
      : undefined;
  if (files.verifyPeer && !ca)
    throw new TlsConfigError(
      '--tls-verify-peer needs the CA that signs client certificates (--tls-ca FILE)',
    );
  const secureContext = context(
    {
      cert,
      key,
      ca,
      minVersion: MIN_VERSION,
      ciphers: SERVER_CIPHERS,
      secureOptions: SERVER_PREFERENCE,
    },
    certPath,
    keyPath,
    caPath,
  );
  return {
    required,
    kind: files.verifyPeer ? 'x509+verify-peer' : 'x509',
    socketOptions: {
      isServer: true,
      secureContext,
      requestCert: files.verifyPeer === true,
      rejectUnauthorized: files.verifyPeer === true,
    },
  };
}

export interface NbdClientTlsFiles {
  /** Directory with ca-cert.pem and, for servers that check clients, client-cert.pem and client-key.pem. */
  certificates?: string;
  /** PSK file; the identity used is `pskIdentity`, or the file's first. */
  psk?: string;
  pskIdentity?: string;
}

/** What NbdClient needs to upgrade a connection. */
export interface NbdClientTls {
  /** Options for `tls.connect({ socket, … })`, without the socket. */
  connectOptions: ConnectionOptions;
}

/** Load client TLS (CA and optional client certificate, or a PSK). Throws TlsConfigError. */
export function loadClientTls(files: NbdClientTlsFiles): NbdClientTls {
  if (files.psk) {
    const keys = readPsk(files.psk);
    const identity = files.pskIdentity ?? keys.keys().next().value!;
    const key = keys.get(identity);
    if (!key)
      throw new TlsConfigError(`${files.psk}: no key for identity ${JSON.stringify(identity)}`);
    return {
      connectOptions: {
        ciphers: PSK_CIPHERS,
        minVersion: MIN_VERSION,
        pskCallback: () => ({ psk: key, identity }),
        // With a PSK the server proves itself by knowing the key: there is no certificate to check.
        checkServerIdentity: () => undefined,
      },
    };
  }
  const dir = files.certificates;
  if (!dir) throw new TlsConfigError('client TLS needs a certificate directory or a PSK file');
  const caPath = join(dir, 'ca-cert.pem');
  const certPath = join(dir, 'client-cert.pem');
  const keyPath = join(dir, 'client-key.pem');
  const ca = readPem(caPath, 'CA certificate');
  const withClientCert = existsSync(certPath) || existsSync(keyPath);
  const cert = withClientCert ? readPem(certPath, 'client certificate') : undefined;
  const key = withClientCert ? readPem(keyPath, 'client key') : undefined;
  const secureContext = context(
    { ca, cert, key, minVersion: MIN_VERSION },
    certPath,
    keyPath,
    caPath,
  );
  return { connectOptions: { secureContext } };
}

function readPsk(path: string): PskKeys {
  try {
    return parsePskFile(readFileSync(path, 'utf8'), path);
  } catch (err) {
    if (err instanceof PskFileError) throw new TlsConfigError(err.message);
    throw new TlsConfigError(`cannot read PSK file ${path}: ${(err as Error).message}`);
  }
}

function readPem(path: string, what: string): Buffer {
  let pem: Buffer;
  try {
    pem = readFileSync(path);
  } catch (err) {
    throw new TlsConfigError(`cannot read ${what} ${path}: ${(err as Error).message}`);
  }
  if (!pem.includes('-----BEGIN '))
    throw new TlsConfigError(`${what} ${path} is not a PEM file (no -----BEGIN line)`);
  return pem;
}

/** createSecureContext, with OpenSSL's complaint turned into one naming the files. */
function context(
  options: Parameters<typeof createSecureContext>[0],
  certPath: string | undefined,
  keyPath: string | undefined,
  caPath: string | undefined,
): SecureContext {
  try {
    return createSecureContext(options);
  } catch (err) {
    const files = [certPath, keyPath, caPath].filter(Boolean).join(', ');
    throw new TlsConfigError(`TLS files ${files} do not load: ${(err as Error).message}`);
  }
}
