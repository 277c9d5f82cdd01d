/**
 * Volume administration for torusctl and torusblk. Talks to the running
 * torusd through its admin socket when there is one; otherwise opens the
 * node's metadata store directly (which takes the data directory's lock, so
 * it can never race a torusd). Offline, deleting a volume only removes its
 * record: torusd frees the blocks at its next start.
 */
import { mkdir } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { UsageError } from '../common/errors.js';
import { openEmbeddedMetadataStore } from '../controlplane/metadata/embedded/index.js';
import { VolumeCatalog } from '../controlplane/volumes/catalog.js';
import { adminCall } from '../node/admin-api.js';
import { KeyRing } from '../dataplane/crypto/key-ring.js';
import { DEFAULT_BLOCK_SIZE, type VolumeStatus } from '../node/storage-node.js';

export interface VolumeRow extends Omit<VolumeStatus, 'used' | 'sessions'> {
  used?: number;
  sessions?: number;
}

export class AdminClient {
  readonly dataDir: string;
  private readonly socket: string;

  constructor(dataDir: string, private readonly keyFile?: string) {
    this.dataDir = resolve(dataDir);
    this.socket = join(this.dataDir, 'torusd.sock');
  }

  private async offline<T>(work: (catalog: VolumeCatalog) => Promise<T>): Promise<T> {
    await mkdir(this.dataDir, { recursive: true });
    const meta = await openEmbeddedMetadataStore(join(this.dataDir, 'meta'));
    try {
      return await work(new VolumeCatalog(meta));
    } finally {
      await meta.close();
    }
  }

  async init(blockSize: number | undefined): Promise<{ blockSize: number; created: boolean }> {
    return this.offline(async (catalog) => {
      const wanted = blockSize ?? DEFAULT_BLOCK_SIZE;
      const existing = await catalog.settings();
      if (existing) {
        if (blockSize && existing.blockSize !== blockSize) {
          throw new UsageError(`${this.dataDir} is already initialised with block size ${existing.blockSize}; it cannot change`);
        }
        return { blockSize: existing.blockSize, created: false };
      }
      await catalog.initSettings({ blockSize: wanted, createdAt: new Date().toISOString() });
      return { blockSize: wanted, created: true };
    });
  }

  async listVolumes(): Promise<VolumeRow[]> {
    const online = await adminCall<VolumeStatus[]>(this.socket, 'GET', '/v1/volumes');
    if (online) return online;
    return this.offline(async (catalog) => (await catalog.list()).map(({ wrappedKey: _k, masterKeyFingerprint: _f, root: _r, blockSize: _b, ...row }) => row));
  }

  async createVolume(name: string, size: number, encrypt: boolean): Promise<VolumeRow> {
    if (!Number.isSafeInteger(size) || size <= 0 || size % 4096 !== 0) {
      throw new UsageError(`volume size must be a positive multiple of 4 KiB, got ${size} bytes`);
    }
    const online = await adminCall<VolumeStatus>(this.socket, 'POST', '/v1/volumes', { name, size, encrypt });
    if (online) return online;
    return this.offline(async (catalog) => {
      const settings =
        (await catalog.settings()) ?? (await catalog.initSettings({ blockSize: DEFAULT_BLOCK_SIZE, createdAt: new Date().toISOString() }));
      const wrapped = encrypt ? await new KeyRing(this.keyFile ?? join(this.dataDir, 'master.key')).newWrappedKey() : undefined;
      const { wrappedKey: _k, masterKeyFingerprint: _f, root: _r, blockSize: _b, ...row } = await catalog.create({
        name,
        size,
        blockSize: settings.blockSize,
        encrypted: encrypt,
        ...wrapped,
      });
      return row;
    });
  }

  async deleteVolume(name: string): Promise<{ online: boolean }> {
    const online = await adminCall(this.socket, 'DELETE', `/v1/volumes/${encodeURIComponent(name)}`);
    if (online) return { online: true };
    await this.offline((catalog) => catalog.remove(name));
    return { online: false };
  }

  async status(): Promise<unknown> {
    return adminCall(this.socket, 'GET', '/v1/status');
  }
}
