/**
 * The NBD connection limits as flags, shared by torusd and torusblk nbdserve
 * (see src/dataplane/transport/connection-admission.ts for what each cap
 * does, and the README's "Connection limits").
 */
import { DEFAULT_HANDSHAKE_TIMEOUT_MS, type NbdServerOptions } from '../dataplane/nbd/server.js';
import { DEFAULT_ADMISSION_LIMITS } from '../dataplane/transport/connection-admission.js';
import { SECONDS_RANGE, type FlagSpec } from './args.js';

/** Far above any file-descriptor limit: a bigger cap is a typo, not a choice. */
const CAP_RANGE = { min: 1, max: 1_000_000 } as const;

export const nbdLimitFlags: Record<string, FlagSpec> = {
  'nbd-max-connections': {
    type: 'integer',
    help: 'NBD connections in all, handshaking or established; handshakes make room by shedding the oldest, an established connection is never displaced',
    default: String(DEFAULT_ADMISSION_LIMITS.maxConnections),
    ...CAP_RANGE,
  },
  'nbd-max-handshakes': {
    type: 'integer',
    help: 'NBD connections still in their handshake; a new one sheds the oldest (one client address may hold a quarter of them)',
    default: String(DEFAULT_ADMISSION_LIMITS.maxHandshakes),
    ...CAP_RANGE,
  },
  'nbd-max-per-client': {
    type: 'integer',
    help: 'NBD connections from one client address (all unix-socket clients count as one); more are refused',
    default: String(DEFAULT_ADMISSION_LIMITS.maxPerClient),
    ...CAP_RANGE,
  },
  'nbd-handshake-timeout': {
    type: 'integer',
    help: 'seconds an NBD client may take to finish its handshake; a connection past it is never timed out',
    default: String(DEFAULT_HANDSHAKE_TIMEOUT_MS / 1000),
    ...SECONDS_RANGE,
    min: 1,
  },
};

/** NbdServer options from the parsed values of nbdLimitFlags. */
export function nbdLimitOptions(
  values: Record<string, unknown>,
): Pick<NbdServerOptions, 'admission' | 'handshakeTimeoutMs'> {
  return {
    admission: {
      maxConnections: values['nbd-max-connections'] as number,
      maxHandshakes: values['nbd-max-handshakes'] as number,
      maxPerClient: values['nbd-max-per-client'] as number,
    },
    handshakeTimeoutMs: (values['nbd-handshake-timeout'] as number) * 1000,
  };
}
