/**
 * Typed errors of the crypto layer.
 *
 * Each one extends the project-wide class that already tells callers what to
 * do with it: a missing key file is a NotFoundError, a malformed one a
 * UsageError (the operator must fix the file), a block that fails
 * authentication an IoError with EIO (the NBD client sees an I/O error for that
 * request, never the bytes). Programmer errors (wrong buffer sizes) are plain
 * RangeErrors and are not meant to be caught.
 */
import { ConflictError, IoError, NotFoundError, UsageError } from '../../common/errors.js';

/** The master key file does not exist. Never answered by creating a new key on open. */
export class MasterKeyMissingError extends NotFoundError {
  override name = 'MasterKeyMissingError';
  constructor(
    readonly path: string,
    message = `master key file ${path} does not exist`,
  ) {
    super(message);
  }
}

/** The master key file exists but is not 64 hex characters (plus an optional newline). */
export class MasterKeyFormatError extends UsageError {
  override name = 'MasterKeyFormatError';
  constructor(
    readonly path: string,
    readonly reason: string,
  ) {
    super(`master key file ${path} is malformed: ${reason}`);
  }
}

/** createMasterKeyFile found a file already there; an existing key is never replaced. */
export class MasterKeyExistsError extends ConflictError {
  override name = 'MasterKeyExistsError';
  constructor(readonly path: string) {
    super(
      `master key file ${path} already exists; refusing to overwrite it (that would make every volume it wraps unreadable)`,
    );
  }
}

/**
 * The metadata says a volume key was wrapped by a master key with another
 * fingerprint than the one loaded: the node was given the wrong key file.
 */
export class WrongMasterKeyError extends UsageError {
  override name = 'WrongMasterKeyError';
  constructor(
    readonly expectedFingerprint: string,
    readonly actualFingerprint: string,
    subject: string,
  ) {
    super(
      `${subject} was wrapped by master key ${expectedFingerprint}, but the loaded master key is ${actualFingerprint}: wrong master key file`,
    );
  }
}

/**
 * A wrapped volume key did not authenticate under the master key: either the
 * master key is wrong or the wrapped bytes are damaged. Secretbox cannot tell
 * the two apart; the fingerprint check (WrongMasterKeyError) runs first when
 * the caller has a fingerprint.
 */
export class WrappedKeyError extends UsageError {
  override name = 'WrappedKeyError';
  constructor(message = 'wrong master key or corrupt wrapped key') {
    super(message);
  }
}

/**
 * A sealed block failed AES-GCM authentication: tampered ciphertext, tag or
 * nonce, a block presented under another identity (aad), or the wrong volume
 * key. The output buffer was not written.
 */
export class BlockAuthError extends IoError {
  override name = 'BlockAuthError';
  constructor(
    message = 'sealed block failed authentication (tampered, moved, or wrong volume key)',
  ) {
    super('EIO', message);
  }
}
