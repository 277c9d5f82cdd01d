/**
 * The fixed-newstyle handshake (option haggling), from the server greeting up
 * to the moment transmission starts (NBD_OPT_GO acknowledged or
 * NBD_OPT_EXPORT_NAME answered).
 *
 * Contract:
 * - Every option length is checked before anything is allocated for it. Over
 *   MAX_OPTION_LENGTH the payload is skipped as it arrives (never buffered)
 *   and answered NBD_REP_ERR_TOO_BIG; over MAX_SKIPPABLE_OPTION_LENGTH, or an
 *   oversize NBD_OPT_EXPORT_NAME (which cannot carry an error), the
 *   connection is closed.
 * - Names and meta-context queries are at most MAX_STRING_LENGTH bytes.
 * - Unknown options get NBD_REP_ERR_UNSUP and haggling goes on; malformed
 *   known options get NBD_REP_ERR_INVALID.
 * - TLS (`tls` given): NBD_OPT_STARTTLS is acknowledged once and the
 *   connection switched to TLS (tls-upgrade.ts); option state negotiated in
 *   clear (structured replies, meta contexts) is forgotten, and plaintext
 *   sent after STARTTLS closes the connection (it would otherwise be read as
 *   if it came over TLS). A second STARTTLS, or one with data, gets
 *   NBD_REP_ERR_INVALID. With `tls.required` (FORCEDTLS) every option but
 *   STARTTLS and ABORT gets NBD_REP_ERR_TLS_REQD until TLS is up, and
 *   NBD_OPT_EXPORT_NAME, which cannot carry an error, closes the connection.
 *   Without `tls` (NOTLS) STARTTLS gets NBD_REP_ERR_POLICY.
 * - A client that does not read its replies is cut off once
 *   MAX_UNREAD_REPLY_BYTES are queued.
 * The caller bounds the whole exchange in time (socket destroyed → the pending
 * read rejects) and destroys the socket when this throws.
 */
import type { Socket } from 'node:net';
import type { Logger } from '../../common/log.js';
import { NotFoundError } from '../../common/errors.js';
import type { ExportProvider, NbdExport } from './export.js';
import type { Inbound } from './inbound.js';
import {
  BASE_ALLOCATION,
  CLIENT_FLAGS_SIZE,
  KNOWN_CLIENT_FLAGS,
  NBD_FLAG_CAN_MULTI_CONN,
  NBD_FLAG_C_FIXED_NEWSTYLE,
  NBD_FLAG_C_NO_ZEROES,
  NBD_FLAG_HAS_FLAGS,
  NBD_FLAG_READ_ONLY,
  NBD_FLAG_SEND_CACHE,
  NBD_FLAG_SEND_DF,
  NBD_FLAG_SEND_FAST_ZERO,
  NBD_FLAG_SEND_FLUSH,
  NBD_FLAG_SEND_FUA,
  NBD_FLAG_SEND_TRIM,
  NBD_FLAG_SEND_WRITE_ZEROES,
  NBD_INFO_DESCRIPTION,
  NBD_INFO_NAME,
  NBD_OPT_ABORT,
  NBD_OPT_EXPORT_NAME,
  NBD_OPT_GO,
  NBD_OPT_INFO,
  NBD_OPT_LIST,
  NBD_OPT_LIST_META_CONTEXT,
  NBD_OPT_SET_META_CONTEXT,
  NBD_OPT_STARTTLS,
  NBD_OPT_STRUCTURED_REPLY,
  NBD_REP_ACK,
  NBD_REP_ERR_INVALID,
  NBD_REP_ERR_POLICY,
  NBD_REP_ERR_TLS_REQD,
  NBD_REP_ERR_TOO_BIG,
  NBD_REP_ERR_UNKNOWN,
  NBD_REP_ERR_UNSUP,
  NBD_REP_INFO,
  NBD_REP_META_CONTEXT,
  NBD_REP_SERVER,
  NbdFramingError,
  OPTION_HEADER_SIZE,
  decodeOptionHeader,
  encodeExportNameReply,
  encodeInfoBlockSize,
  encodeInfoExport,
  encodeInfoString,
  encodeOptionReply,
  encodeRepMetaContext,
  encodeRepServer,
  encodeServerGreeting,
  optionName,
  replyName,
  transmissionFlagNames,
} from './wire.js';

/** Largest option payload we read into memory. */
export const MAX_OPTION_LENGTH = 64 * 1024;
/** Largest option payload we will skip (answering TOO_BIG) rather than hang up on. */
export const MAX_SKIPPABLE_OPTION_LENGTH = 16 * 1024 * 1024;
/** The spec's limit on export names, queries and messages. */
export const MAX_STRING_LENGTH = 4096;
/** Option replies queued to a client that is not reading them before we give up on it. */
const MAX_UNREAD_REPLY_BYTES = 1024 * 1024;
/** The id we give base:allocation in NBD_OPT_SET_META_CONTEXT (any unique value would do). */
export const BASE_ALLOCATION_CONTEXT_ID = 1;

/** What transmission needs to know once the handshake succeeds. */
export interface Negotiated {
  export: NbdExport;
  structuredReplies: boolean;
  /** The base:allocation context id when selected for this export; BLOCK_STATUS is refused otherwise. */
  allocationContextId: number | undefined;
  transmissionFlags: number;
}

type ExportShape = Pick<
  NbdExport,
  | 'size'
  | 'readOnly'
  | 'canMultiConn'
  | 'minimumBlockSize'
  | 'preferredBlockSize'
  | 'maximumPayload'
  | 'name'
  | 'description'
>;

/** The transmission flags we advertise for an export; SEND_DF only once structured replies are on. */
export function transmissionFlags(
  exp: Pick<NbdExport, 'readOnly' | 'canMultiConn'>,
  structuredReplies: boolean,
): number {
  let flags = NBD_FLAG_HAS_FLAGS | NBD_FLAG_SEND_FLUSH | NBD_FLAG_SEND_FUA | NBD_FLAG_SEND_CACHE;
  // A read-only export does not offer the commands that would only fail with EPERM.
  if (exp.readOnly) flags |= NBD_FLAG_READ_ONLY;
  else flags |= NBD_FLAG_SEND_TRIM | NBD_FLAG_SEND_WRITE_ZEROES | NBD_FLAG_SEND_FAST_ZERO;
  if (exp.canMultiConn) flags |= NBD_FLAG_CAN_MULTI_CONN;
  // Every READ is answered with a single data chunk, so "don't fragment" is free.
  if (structuredReplies) flags |= NBD_FLAG_SEND_DF;
  return flags;
}

/** How the server offers TLS on one connection; absent: NOTLS. */
export interface HandshakeTls {
  /** FORCEDTLS rather than SELECTIVETLS. */
  required: boolean;
  /**
   * Switch to TLS (the STARTTLS ACK is already queued). Resolves with the
   * socket to read and write from now on once the TLS handshake is done;
   * rejects when it fails.
   */
  start(): Promise<Socket>;
}

interface HaggleState {
  noZeroes: boolean;
  structuredReplies: boolean;
  /** Export name of the last successful SET_META_CONTEXT that selected base:allocation. */
  allocationSelectedFor: string | undefined;
}

/**
 * Run the handshake on a freshly accepted socket. Resolves with the opened
 * export when transmission starts, or undefined when the client aborted
 * cleanly. Throws NbdFramingError (or the stream's error) when the connection
 * must be dropped.
 */
export async function negotiate(
  plain: Socket,
  inbound: Inbound,
  provider: ExportProvider,
  log: Logger,
  tls?: HandshakeTls,
): Promise<Negotiated | undefined> {
  let socket = plain;
  let secured = false;
  const send = (buf: Buffer) => {
    socket.write(buf);
    if (socket.writableLength > MAX_UNREAD_REPLY_BYTES)
      throw new NbdFramingError('client is not reading option replies');
  };
  const reply = (option: number, type: number, data?: Buffer) => {
    log.trace({ option: optionName(option), reply: replyName(type) }, 'option reply');
    send(encodeOptionReply(option, type, data));
  };
  const refuse = (option: number, type: number, message: string) => {
    log.debug(
      { option: optionName(option), reply: replyName(type), reason: message },
      'option refused',
    );
    reply(option, type, Buffer.from(message, 'utf8'));
  };

  send(encodeServerGreeting());
  await inbound.need(CLIENT_FLAGS_SIZE);
  const clientFlags = inbound.take(CLIENT_FLAGS_SIZE).readUInt32BE(0);
  if (clientFlags & ~KNOWN_CLIENT_FLAGS)
    throw new NbdFramingError(`unknown client flags 0x${clientFlags.toString(16)}`);
  if (!(clientFlags & NBD_FLAG_C_FIXED_NEWSTYLE))
    log.debug('client did not set NBD_FLAG_C_FIXED_NEWSTYLE; serving fixed newstyle anyway');
  const state: HaggleState = {
    noZeroes: (clientFlags & NBD_FLAG_C_NO_ZEROES) !== 0,
    structuredReplies: false,
    allocationSelectedFor: undefined,
  };

  for (;;) {
    await inbound.need(OPTION_HEADER_SIZE);
    const header = decodeOptionHeader(inbound.take(OPTION_HEADER_SIZE));
    if (!header.magicOk) throw new NbdFramingError('bad option magic');
    const { option, length } = header;
    log.debug({ option: optionName(option), length }, 'option');

    if (length > MAX_OPTION_LENGTH) {
      if (option === NBD_OPT_EXPORT_NAME || length > MAX_SKIPPABLE_OPTION_LENGTH) {
        throw new NbdFramingError(`${optionName(option)} with ${length} bytes of data`);
      }
      inbound.discard(length);
      refuse(
        option,
        NBD_REP_ERR_TOO_BIG,
        `option data of ${length} bytes exceeds the ${MAX_OPTION_LENGTH}-byte limit`,
      );
      continue;
    }
    if (option === NBD_OPT_EXPORT_NAME && length > MAX_STRING_LENGTH) {
      throw new NbdFramingError(`export name of ${length} bytes`);
    }
    await inbound.need(length);
    const data = inbound.take(length);

    if (tls?.required && !secured && option !== NBD_OPT_STARTTLS && option !== NBD_OPT_ABORT) {
      if (option === NBD_OPT_EXPORT_NAME)
        throw new NbdFramingError('NBD_OPT_EXPORT_NAME before STARTTLS on a TLS-only server');
      refuse(option, NBD_REP_ERR_TLS_REQD, 'this server requires TLS: send NBD_OPT_STARTTLS first');
      continue;
    }

    switch (option) {
      case NBD_OPT_EXPORT_NAME: {
        const name = data.toString('utf8');
        const exp = await openExport(provider, name, log);
        if (!exp)
          throw new NbdFramingError(`NBD_OPT_EXPORT_NAME: no export named ${JSON.stringify(name)}`);
        if (socket.destroyed) {
          await exp.close();
          throw new NbdFramingError('client went away while the export was opening');
        }
        const flags = transmissionFlags(exp, state.structuredReplies);
        await closingOnThrow(exp, () =>
          send(encodeExportNameReply(exp.size, flags, state.noZeroes)),
        );
        return finish(exp, name, flags, state, log);
      }

      case NBD_OPT_ABORT:
        reply(option, NBD_REP_ACK);
        return undefined;

      case NBD_OPT_LIST: {
        if (length !== 0) {
          refuse(option, NBD_REP_ERR_INVALID, 'NBD_OPT_LIST takes no data');
          break;
        }
        let exports;
        try {
          exports = await provider.list();
        } catch (err) {
          log.warn({ err }, 'listing exports failed');
          refuse(option, NBD_REP_ERR_POLICY, `cannot list exports: ${(err as Error).message}`);
          break;
        }
        for (const e of exports)
          reply(option, NBD_REP_SERVER, encodeRepServer(e.name, e.description));
        reply(option, NBD_REP_ACK);
        break;
      }

      case NBD_OPT_STARTTLS:
        if (length !== 0) refuse(option, NBD_REP_ERR_INVALID, 'NBD_OPT_STARTTLS takes no data');
        else if (!tls) refuse(option, NBD_REP_ERR_POLICY, 'TLS is not offered by this server');
        else if (secured) refuse(option, NBD_REP_ERR_INVALID, 'TLS is already on');
        else {
          if (inbound.available > 0)
            throw new NbdFramingError('client sent data after NBD_OPT_STARTTLS before TLS started');
          reply(option, NBD_REP_ACK);
          socket = await tls.start();
          secured = true;
          // Nothing said in clear may carry over into the TLS session.
          state.structuredReplies = false;
          state.allocationSelectedFor = undefined;
        }
        break;

      case NBD_OPT_INFO:
      case NBD_OPT_GO: {
        const request = parseInfoRequest(data);
        if (typeof request === 'string') {
          refuse(
            option,
            request === 'too big' ? NBD_REP_ERR_TOO_BIG : NBD_REP_ERR_INVALID,
            `malformed ${optionName(option)}: ${request}`,
          );
          break;
        }
        let described: ExportShape | undefined;
        try {
          described =
            option === NBD_OPT_GO
              ? await openExport(provider, request.name, log)
              : await provider.describe(request.name);
        } catch (err) {
          log.warn({ err, export: request.name }, 'export could not be opened');
          refuse(
            option,
            NBD_REP_ERR_POLICY,
            `export ${JSON.stringify(request.name)} is unavailable: ${(err as Error).message}`,
          );
          break;
        }
        if (!described) {
          refuse(option, NBD_REP_ERR_UNKNOWN, `no export named ${JSON.stringify(request.name)}`);
          break;
        }
        if (option === NBD_OPT_GO && socket.destroyed) {
          await (described as NbdExport).close();
          throw new NbdFramingError('client went away while the export was opening');
        }
        const shape = described;
        const flags = transmissionFlags(shape, state.structuredReplies);
        const answer = () => {
          reply(option, NBD_REP_INFO, encodeInfoExport(shape.size, flags));
          // Block sizes go out whether asked for or not: a client that did not
          // ask may ignore them, and the spec lets us volunteer information.
          reply(
            option,
            NBD_REP_INFO,
            encodeInfoBlockSize(
              shape.minimumBlockSize,
              shape.preferredBlockSize,
              shape.maximumPayload,
            ),
          );
          for (const info of request.infos) {
            if (info === NBD_INFO_NAME)
              reply(option, NBD_REP_INFO, encodeInfoString(NBD_INFO_NAME, shape.name));
            else if (info === NBD_INFO_DESCRIPTION && shape.description)
              reply(
                option,
                NBD_REP_INFO,
                encodeInfoString(NBD_INFO_DESCRIPTION, shape.description),
              );
            // NBD_INFO_EXPORT and NBD_INFO_BLOCK_SIZE are already sent; unknown requests are ignored.
          }
          reply(option, NBD_REP_ACK);
        };
        if (option === NBD_OPT_INFO) {
          answer();
          break;
        }
        await closingOnThrow(shape as NbdExport, answer);
        return finish(shape as NbdExport, request.name, flags, state, log);
      }

      case NBD_OPT_STRUCTURED_REPLY:
        if (length !== 0) {
          refuse(option, NBD_REP_ERR_INVALID, 'NBD_OPT_STRUCTURED_REPLY takes no data');
          break;
        }
        state.structuredReplies = true;
        reply(option, NBD_REP_ACK);
        break;

      case NBD_OPT_LIST_META_CONTEXT:
      case NBD_OPT_SET_META_CONTEXT: {
        const setting = option === NBD_OPT_SET_META_CONTEXT;
        // A SET replaces the selection even when it fails.
        if (setting) state.allocationSelectedFor = undefined;
        if (!state.structuredReplies) {
          refuse(option, NBD_REP_ERR_INVALID, 'negotiate NBD_OPT_STRUCTURED_REPLY first');
          break;
        }
        const request = parseMetaContextRequest(data);
        if (typeof request === 'string') {
          refuse(
            option,
            request === 'too big' ? NBD_REP_ERR_TOO_BIG : NBD_REP_ERR_INVALID,
            `malformed ${optionName(option)}: ${request}`,
          );
          break;
        }
        let known;
        try {
          known = await provider.describe(request.name);
        } catch (err) {
          refuse(
            option,
            NBD_REP_ERR_POLICY,
            `export ${JSON.stringify(request.name)} is unavailable: ${(err as Error).message}`,
          );
          break;
        }
        if (!known) {
          refuse(option, NBD_REP_ERR_UNKNOWN, `no export named ${JSON.stringify(request.name)}`);
          break;
        }
        const matches = setting
          ? request.queries.some((q) => q === BASE_ALLOCATION)
          : request.queries.length === 0 ||
            request.queries.some((q) => q === BASE_ALLOCATION || q === 'base:');
        if (matches) {
          reply(
            option,
            NBD_REP_META_CONTEXT,
            encodeRepMetaContext(setting ? BASE_ALLOCATION_CONTEXT_ID : 0, BASE_ALLOCATION),
          );
          if (setting) state.allocationSelectedFor = request.name;
        }
        reply(option, NBD_REP_ACK);
        break;
      }

      default:
        refuse(option, NBD_REP_ERR_UNSUP, `${optionName(option)} is not supported`);
    }
  }
}

/** Run a send that may throw (client not reading) without leaking the export we just opened. */
async function closingOnThrow(exp: NbdExport, sendReplies: () => void): Promise<void> {
  try {
    sendReplies();
  } catch (err) {
    await exp.close().catch(() => undefined);
    throw err;
  }
}

function finish(
  exp: NbdExport,
  name: string,
  flags: number,
  state: HaggleState,
  log: Logger,
): Negotiated {
  const allocationContextId =
    state.structuredReplies && state.allocationSelectedFor === name
      ? BASE_ALLOCATION_CONTEXT_ID
      : undefined;
  log.debug(
    {
      export: exp.name,
      size: exp.size,
      flags: transmissionFlagNames(flags),
      structured: state.structuredReplies,
      blockStatus: allocationContextId !== undefined,
    },
    'transmission starts',
  );
  return {
    export: exp,
    structuredReplies: state.structuredReplies,
    allocationContextId,
    transmissionFlags: flags,
  };
}

/** provider.open, with NotFoundError meaning "no such export" like undefined. */
async function openExport(
  provider: ExportProvider,
  name: string,
  log: Logger,
): Promise<NbdExport | undefined> {
  try {
    return await provider.open(name);
  } catch (err) {
    if (err instanceof NotFoundError) {
      log.debug({ export: name }, 'no such export');
      return undefined;
    }
    throw err;
  }
}

/** NBD_OPT_INFO / NBD_OPT_GO data: u32 name length, name, u16 count, count × u16 info types. */
export function parseInfoRequest(data: Buffer): { name: string; infos: number[] } | string {
  if (data.length < 6) return 'shorter than 6 bytes';
  const nameLength = data.readUInt32BE(0);
  if (nameLength > data.length - 6) return 'name length runs past the option data';
  if (nameLength > MAX_STRING_LENGTH) return 'too big';
  const name = data.toString('utf8', 4, 4 + nameLength);
  const count = data.readUInt16BE(4 + nameLength);
  if (data.length !== 6 + nameLength + 2 * count)
    return 'information request count does not match the option length';
  const infos: number[] = [];
  for (let i = 0; i < count; i++) infos.push(data.readUInt16BE(6 + nameLength + 2 * i));
  return { name, infos };
}

/** NBD_OPT_{LIST,SET}_META_CONTEXT data: u32 name length, name, u32 count, count × (u32 length, query). */
export function parseMetaContextRequest(
  data: Buffer,
): { name: string; queries: string[] } | string {
  if (data.length < 8) return 'shorter than 8 bytes';
  const nameLength = data.readUInt32BE(0);
  if (nameLength > data.length - 8) return 'name length runs past the option data';
  if (nameLength > MAX_STRING_LENGTH) return 'too big';
  const name = data.toString('utf8', 4, 4 + nameLength);
  let at = 4 + nameLength;
  const count = data.readUInt32BE(at);
  at += 4;
  // Each query needs at least its 4-byte length, so a count the data cannot hold is malformed.
  if (count > (data.length - at) / 4) return 'query count runs past the option data';
  const queries: string[] = [];
  for (let i = 0; i < count; i++) {
    if (at + 4 > data.length) return 'query runs past the option data';
    const queryLength = data.readUInt32BE(at);
    at += 4;
    if (queryLength > data.length - at) return 'query runs past the option data';
    if (queryLength > MAX_STRING_LENGTH) return 'too big';
    queries.push(data.toString('utf8', at, at + queryLength));
    at += queryLength;
  }
  if (at !== data.length) return 'trailing bytes after the queries';
  return { name, queries };
}
