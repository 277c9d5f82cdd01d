/**
 * The server's switch to TLS once NBD_OPT_STARTTLS has been acknowledged.
 *
 * Contract:
 * - Called after the ACK is queued on the plain socket and before the client
 *   can have sent its ClientHello (it waits for the ACK), so the TLS layer,
 *   which takes over the socket's reads synchronously here, sees every byte
 *   of the TLS handshake. Plaintext the client sent after STARTTLS is the
 *   handshake's business to refuse (handshake.ts), never passed on.
 * - Decrypted bytes go to `onBytes(chunk, transient)`. Where Node allows it
 *   they land in a read buffer of the TLS socket's own, reused for every
 *   record (`transient`: the chunk is valid only during the call, as on the
 *   plain socket; transport/read-buffer.ts readTlsIntoBuffer); elsewhere as
 *   'data' chunks the TLS socket owns. The plain socket's read buffer only
 *   ever saw the clear-text greeting and options.
 * - `secured` resolves once the TLS handshake is done (the client's
 *   certificate checked when the server asks for one) and rejects with a
 *   message saying why when it fails or the connection ends first; the
 *   caller then destroys the socket.
 * - Destroying the TLS socket closes the connection (its file descriptor is
 *   the plain socket's); the plain socket is not used again.
 */
import type { Socket } from 'node:net';
import { TLSSocket } from 'node:tls';
import { readTlsIntoBuffer } from '../transport/read-buffer.js';
import type { NbdServerTls } from './tls-config.js';

export interface TlsUpgrade {
  socket: TLSSocket;
  secured: Promise<void>;
}

export function upgradeToTls(
  plain: Socket,
  tls: NbdServerTls,
  onBytes: (chunk: Buffer, transient: boolean) => void,
): TlsUpgrade {
  const socket = new TLSSocket(plain, tls.socketOptions);
  // Before the first read, which Node starts on the next tick.
  if (!readTlsIntoBuffer(socket, (view) => onBytes(view, true)))
    socket.on('data', (chunk: Buffer) => onBytes(chunk, false));
  const secured = new Promise<void>((resolve, reject) => {
    const fail = (why: string) => {
      cleanup();
      reject(new Error(`TLS handshake failed: ${why}`));
    };
    const onError = (err: Error) => fail(err.message);
    const onClose = () => fail('the client closed the connection');
    const onSecure = () => {
      cleanup();
      const refusal = tls.socketOptions.requestCert ? clientCertificateProblem(socket) : undefined;
      if (refusal) reject(new Error(`client certificate refused: ${refusal}`));
      else resolve();
    };
    const cleanup = () => {
      socket.off('error', onError);
      socket.off('close', onClose);
      socket.off('secure', onSecure);
    };
    socket.on('error', onError);
    socket.on('close', onClose);
    socket.on('secure', onSecure);
  });
  return { socket, secured };
}

interface VerifyingHandle {
  verifyError?: () => Error | null;
}

/**
 * Why the client's certificate does not verify against the CA, or undefined
 * when it does. OpenSSL, as Node sets it up, only refuses a client that sends
 * no certificate; whether one it sent chains to the CA is left for the
 * TLS server object to check, and a TLSSocket made on its own has none. So
 * this asks the TLS handle, as Node's server does (`_handle` is not public
 * API: where it is missing every client is refused rather than trusted).
 */
function clientCertificateProblem(socket: TLSSocket): string | undefined {
  const handle = (socket as unknown as { _handle?: VerifyingHandle | null })._handle;
  if (typeof handle?.verifyError !== 'function')
    return 'this Node cannot check client certificates on an upgraded socket';
  if (!socket.getPeerX509Certificate()) return 'the client sent no certificate';
  const error = handle.verifyError();
  return error ? error.message : undefined;
}
