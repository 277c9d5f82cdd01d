/**
 * Mutual TLS on the peer port: every storage node (and every store-less
 * client such as torusblk nbdserve) presents a certificate signed by the
 * cluster's CA, and accepts only peers that present one too.
 *
 * Contract:
 * - Trust is the cluster CA: a certificate it signed is a member, both ways
 *   (the server requires and checks the client's certificate; the client
 *   checks the server's). A peer that does not speak TLS, sends no
 *   certificate, or one from another CA is refused before a byte of TBP is
 *   read from it; the refusal is logged once per peer (refusal-log.ts).
 * - Addresses are not checked unless `verifyAddress`: then the client also
 *   checks that the server's certificate names (SAN) the host the peer
 *   advertised in etcd (its --peer-address), as HTTPS does. Off by default,
 *   because one certificate shared by every node (a DaemonSet reading one
 *   Secret) cannot name each node's IP; the CA being the cluster's own is
 *   what makes a certificate a member.
 * - The files are read once per process (and per worker thread) for a given
 *   set of paths: replacing certificates takes a restart.
 * - `PeerTlsFiles` holds paths only, so it travels in pool tasks for the
 *   cost of three short strings.
 */
import { X509Certificate, createPrivateKey } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { TLSSocket, connect, createSecureContext, type SecureContext } from 'node:tls';
import type { Socket } from 'node:net';
import { UsageError } from '../../common/errors.js';

/** Where a node's peer TLS material is: the names a Kubernetes TLS Secret mounted as a volume gives. */
export interface PeerTlsFiles {
  /** The cluster CA's certificate (PEM): peers must present a certificate it signed. */
  caFile: string;
  /** This node's certificate (PEM), signed by that CA; presented as server and as client. */
  certFile: string;
  /** Its private key (PEM). */
  keyFile: string;
  /** Also check that a server's certificate names the host it was dialled at. */
  verifyAddress?: boolean;
}

/** The files of a directory laid out as a Kubernetes TLS Secret: ca.crt, tls.crt, tls.key. */
export function peerTlsFilesIn(dir: string, verifyAddress = false): PeerTlsFiles {
  return {
    caFile: join(dir, 'ca.crt'),
    certFile: join(dir, 'tls.crt'),
    keyFile: join(dir, 'tls.key'),
    verifyAddress,
  };
}

/** The peer TLS files are missing, unreadable or do not fit together; the message says which and what to do. */
export class PeerTlsConfigError extends UsageError {}

/** A loaded set of peer TLS files. */
export interface PeerTls {
  readonly files: PeerTlsFiles;
  readonly context: SecureContext;
  /** The subject of this node's certificate, for logs. */
  readonly subject: string;
}

const loaded = new Map<string, PeerTls>();

/**
 * Read and check the files (once per process for the same paths): each
 * parses, the key is the certificate's, and the CA signed the certificate —
 * so a mistake is found at start-up, not as refused peers later.
 */
export function loadPeerTls(files: PeerTlsFiles): PeerTls {
  const key = `${files.caFile}\0${files.certFile}\0${files.keyFile}\0${files.verifyAddress}`;
  const cached = loaded.get(key);
  if (cached) return cached;
  const read = (path: string, what: string) => {
    try {
      return readFileSync(path);
    } catch (err) {
      throw new PeerTlsConfigError(
        `peer TLS: cannot read the ${what} ${path}: ${(err as Error).message}`,
        { cause: err },
      );
    }
  };
  const ca = read(files.caFile, 'cluster CA certificate');
  const cert = read(files.certFile, "node's certificate");
  const privateKey = read(files.keyFile, "node's private key");
  let certificate: X509Certificate;
  let authority: X509Certificate;
  try {
    authority = new X509Certificate(ca);
    certificate = new X509Certificate(cert);
  } catch (err) {
    throw new PeerTlsConfigError(
      `peer TLS: ${files.caFile} or ${files.certFile} is not a PEM certificate: ${(err as Error).message}`,
      { cause: err },
    );
  }
  if (!certificate.checkIssued(authority) || !certificate.verify(authority.publicKey))
    throw new PeerTlsConfigError(
      `peer TLS: ${files.certFile} (${certificate.subject}) is not signed by the CA in ${files.caFile} (${authority.subject}): sign it with the cluster's CA`,
    );
  let matches: boolean;
  try {
    matches = certificate.checkPrivateKey(createPrivateKey(privateKey));
  } catch (err) {
    throw new PeerTlsConfigError(
      `peer TLS: ${files.keyFile} is not a PEM private key: ${(err as Error).message}`,
      { cause: err },
    );
  }
  if (!matches)
    throw new PeerTlsConfigError(
      `peer TLS: ${files.keyFile} is not the key of ${files.certFile}: give the key the certificate was made from`,
    );
  const tls: PeerTls = {
    files,
    context: createSecureContext({ ca, cert, key: privateKey, minVersion: 'TLSv1.2' }),
    subject: certificate.subject.replace(/\n/g, ', '),
  };
  loaded.set(key, tls);
  return tls;
}

/**
 * The server side of an accepted (paused) socket: a TLS socket that asks for
 * the client's certificate. Call `peerRefusal` on its 'secure' event: the
 * handshake alone does not reject a certificate from another CA.
 */
export function serverTlsSocket(socket: Socket, tls: PeerTls): TLSSocket {
  return new TLSSocket(socket, {
    isServer: true,
    secureContext: tls.context,
    requestCert: true,
    rejectUnauthorized: true,
  });
}

/** A client connection to host:port with our certificate, the server's checked against the CA. */
export function connectTls(host: string, port: number, tls: PeerTls): TLSSocket {
  return connect({
    host,
    port,
    secureContext: tls.context,
    // No SNI for an IP (RFC 6066); the name check is ours to switch.
    servername: /^[\d.]+$|:/.test(host) ? '' : host,
    rejectUnauthorized: true,
    ...(tls.files.verifyAddress ? {} : { checkServerIdentity: () => undefined }),
  });
}

interface VerifyingHandle {
  _handle?: { verifyError?: () => Error | null } | null;
}

/**
 * Why a peer whose handshake completed is refused, or undefined when it is a
 * member. A server-side TLSSocket made by hand (not by a tls.Server, which
 * our Listeners are not) gets no `authorized`: OpenSSL has verified the
 * chain against the CA, and its verdict is read from the socket's handle
 * (`verifyError()`, as tls.Server does). That is not public API: where it is
 * missing, every peer is refused (fail closed) rather than trusted.
 */
export function peerRefusal(socket: TLSSocket): string | undefined {
  if (socket.getPeerX509Certificate() === undefined)
    return 'the peer presented no certificate (it needs --peer-tls-dir)';
  const verifyError = (socket as unknown as VerifyingHandle)._handle?.verifyError;
  if (typeof verifyError !== 'function')
    return 'this Node cannot tell whether the peer certificate is valid: refusing';
  const error = verifyError.call((socket as unknown as VerifyingHandle)._handle);
  return error ? describeTlsFailure(error) : undefined;
}

/** A TLS failure in words that say what is wrong and where to look. */
export function describeTlsFailure(err: Error | string): string {
  const code = typeof err === 'string' ? err : ((err as NodeJS.ErrnoException).code ?? '');
  const message = typeof err === 'string' ? err : err.message;
  const text = `${code} ${message}`;
  if (/WRONG_VERSION_NUMBER|HTTP_REQUEST|UNKNOWN_PROTOCOL|PACKET_LENGTH_TOO_LONG/i.test(text))
    return 'the peer does not speak TLS (a node started without --peer-tls-dir?)';
  if (/PEER_DID_NOT_RETURN_A_CERTIFICATE|CERTIFICATE_REQUIRED|no certificate/i.test(text))
    return 'the peer presented no certificate (it needs --peer-tls-dir)';
  if (
    /UNABLE_TO_VERIFY_LEAF_SIGNATURE|UNABLE_TO_GET_ISSUER_CERT|SELF_SIGNED_CERT|DEPTH_ZERO_SELF_SIGNED|UNKNOWN_CA|CERT_SIGNATURE_FAILURE/i.test(
      text,
    )
  )
    return `the certificate is not signed by the cluster CA (${code || message})`;
  if (/CERT_HAS_EXPIRED|CERT_NOT_YET_VALID/i.test(text))
    return `the certificate is expired or not yet valid (${code})`;
  if (/ALTNAME|Hostname\/IP does not match/i.test(text))
    return `the certificate does not name the address the peer advertises (--peer-tls-verify-address): ${message}`;
  if (/BAD_CERTIFICATE|CERTIFICATE_UNKNOWN|alert/i.test(text))
    return `the peer refused our certificate (${message})`;
  return message || code;
}

/** The first byte of a TLS record (handshake 0x16, alert 0x15): a TLS peer answering a plaintext client. */
export function looksLikeTls(firstByte: number): boolean {
  return firstByte === 0x15 || firstByte === 0x16;
}
