/**
 * KeyRing: the node's master key file and the volume keys it wraps, as the
 * storage node and the admin CLI use them.
 *
 * The master key is loaded once, lazily, so a node with no encrypted volume
 * never needs a key file. Creating an encrypted volume creates the key file if
 * there is none yet; opening one never does: a missing key file on open means
 * the key was lost or the path is wrong, and a new key could not read anything.
 */
import {
  MasterKeyExistsError,
  MasterKeyMissingError,
  WrappedKeyError,
  WrongMasterKeyError,
} from './errors.js';
import { createMasterKeyFile, loadMasterKey, type LoadedMasterKey } from './master-key.js';
import {
  generateVolumeKey,
  unwrapVolumeKey,
  wrapVolumeKey,
  wrappedKeyToString,
} from './volume-key.js';

/** The key fields of a volume's metadata record. */
export interface WrappedVolumeKey {
  /** Base64 of wrapVolumeKey's output. */
  wrappedKey: string;
  /** Fingerprint of the master key that wrapped it. */
  masterKeyFingerprint: string;
}

export class KeyRing {
  #loading: Promise<LoadedMasterKey> | undefined;

  /**
   * onExposed: told once, when the key file loads, that group or others may
   * read or write it (anyone who can read it can open every encrypted volume).
   */
  constructor(
    readonly keyFile: string,
    private readonly onExposed?: (path: string) => void,
  ) {}

  /**
   * The loaded master key (`exposed` when the file is readable by group or
   * others; onExposed has been told). Throws MasterKeyMissingError or
   * MasterKeyFormatError; a failed load is retried on the next call.
   */
  masterKey(): Promise<LoadedMasterKey> {
    this.#loading ??= loadMasterKey(this.keyFile).then(
      (loaded) => {
        if (loaded.exposed) this.onExposed?.(loaded.path);
        return loaded;
      },
      (err: unknown) => {
        this.#loading = undefined;
        throw err;
      },
    );
    return this.#loading;
  }

  /** A fresh volume key, wrapped, for a new volume's record. Creates the master key file if absent. */
  async newWrappedKey(): Promise<WrappedVolumeKey> {
    const master = await this.#masterKeyCreatingIfMissing();
    const volumeKey = generateVolumeKey();
    try {
      return {
        wrappedKey: wrappedKeyToString(wrapVolumeKey(volumeKey, master.key)),
        masterKeyFingerprint: master.fingerprint,
      };
    } finally {
      volumeKey.fill(0);
    }
  }

  /**
   * The volume key of an encrypted volume's record. Throws, with the volume's
   * name in the message: MasterKeyMissingError (no key file), WrongMasterKeyError
   * (the record names another master key), WrappedKeyError (damaged record).
   */
  async unwrap(record: {
    name: string;
    wrappedKey?: string;
    masterKeyFingerprint?: string;
  }): Promise<Uint8Array> {
    const subject = `volume "${record.name}"`;
    if (!record.wrappedKey)
      throw new WrappedKeyError(`${subject} is marked encrypted but its record has no wrapped key`);
    let master: LoadedMasterKey;
    try {
      master = await this.masterKey();
    } catch (err) {
      if (err instanceof MasterKeyMissingError) {
        throw new MasterKeyMissingError(
          err.path,
          `${subject} is encrypted but the master key file ${err.path} does not exist; restore this node's master key there (or pass --key-file)`,
        );
      }
      throw err;
    }
    if (record.masterKeyFingerprint && record.masterKeyFingerprint !== master.fingerprint) {
      throw new WrongMasterKeyError(
        record.masterKeyFingerprint,
        master.fingerprint,
        `the key of ${subject}`,
      );
    }
    try {
      return unwrapVolumeKey(record.wrappedKey, master.key);
    } catch (err) {
      if (err instanceof WrappedKeyError) {
        // The fingerprint matched (or was not recorded), so blame the record unless we can't know.
        const why = record.masterKeyFingerprint ? 'its wrapped key is corrupt' : err.message;
        throw new WrappedKeyError(`the key of ${subject} cannot be unwrapped: ${why}`);
      }
      throw err;
    }
  }

  async #masterKeyCreatingIfMissing(): Promise<LoadedMasterKey> {
    try {
      return await this.masterKey();
    } catch (err) {
      if (!(err instanceof MasterKeyMissingError)) throw err;
    }
    try {
      const created = await createMasterKeyFile(this.keyFile);
      this.#loading ??= Promise.resolve(created);
    } catch (err) {
      // Another caller created it between our load and our create: use theirs.
      if (!(err instanceof MasterKeyExistsError)) throw err;
    }
    return this.masterKey();
  }
}
