/**
 * --peer-tls-dir and --peer-tls-verify-address: mutual TLS on the peer port
 * (src/dataplane/peer/peer-tls.ts), the same flags on every binary that
 * talks to storage nodes as a peer (torusd, torusblk nbdserve).
 */
import { resolve } from 'node:path';
import { loadPeerTls, peerTlsFilesIn, type PeerTlsFiles } from '../dataplane/peer/peer-tls.js';
import { ArgumentError, type FlagSpec, type ParsedValue } from './args.js';

export const peerTlsFlags: Record<string, FlagSpec> = {
  'peer-tls-dir': {
    type: 'string',
    help: 'cluster: mutual TLS between nodes; the directory holds ca.crt (the cluster CA), tls.crt and tls.key (this node, signed by it), as a Kubernetes TLS Secret mounts them',
    env: 'TORUS_PEER_TLS_DIR',
  },
  'peer-tls-verify-address': {
    type: 'boolean',
    help: "cluster: also check that a peer's certificate names (SAN) the address it registered (per-node certificates)",
  },
};

/** The peer TLS files the flags name, loaded and checked now (a bad file is an error at start-up); undefined for plaintext. */
export function peerTlsOf(values: Record<string, ParsedValue>): PeerTlsFiles | undefined {
  const dir = values['peer-tls-dir'] as string | undefined;
  const verifyAddress = Boolean(values['peer-tls-verify-address']);
  if (!dir) {
    if (verifyAddress) throw new ArgumentError('--peer-tls-verify-address needs --peer-tls-dir');
    return undefined;
  }
  const files = peerTlsFilesIn(resolve(dir), verifyAddress);
  loadPeerTls(files);
  return files;
}
