/**
 * The record of each staged volume on this node, one JSON file per volume in
 * `<stateDir>/attachments/`. It is what a restarted plugin knows: which device
 * a volume is attached as, how (and the helper keeping it), where it is
 * staged and as what. Written atomically (temporary file, fsync, rename,
 * fsync of the directory), so a crash leaves the old record or the new one,
 * never half of one.
 */
import { mkdir, open, readdir, readFile, rename, rm } from 'node:fs/promises';
import { join } from 'node:path';
import type { AttachedDevice } from './attach.js';
import type { FsType } from './filesystem.js';

export interface AttachmentRecord {
  volumeId: string;
  attached: AttachedDevice;
  readOnly: boolean;
  stagingPath: string;
  /** A filesystem mounted at the staging path, or a raw block volume. */
  accessType: 'mount' | 'block';
  fsType?: FsType;
  mountFlags: string[];
  /** ISO time of the attach. */
  attachedAt: string;
}

export class AttachmentStore {
  private readonly dir: string;

  constructor(stateDir: string) {
    this.dir = join(stateDir, 'attachments');
  }

  private path(volumeId: string): string {
    // Volume ids are Torus volume names ([A-Za-z0-9._-], `@` for snapshots): safe as file names.
    return join(this.dir, `${encodeURIComponent(volumeId)}.json`);
  }

  async get(volumeId: string): Promise<AttachmentRecord | undefined> {
    try {
      return JSON.parse(await readFile(this.path(volumeId), 'utf8')) as AttachmentRecord;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw err;
    }
  }

  async list(): Promise<AttachmentRecord[]> {
    let names: string[];
    try {
      names = await readdir(this.dir);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return [];
      throw err;
    }
    const records = await Promise.all(
      names
        .filter((n) => n.endsWith('.json'))
        .map((n) => this.get(decodeURIComponent(n.slice(0, -'.json'.length)))),
    );
    return records.filter((r): r is AttachmentRecord => r !== undefined);
  }

  async put(record: AttachmentRecord): Promise<void> {
    await mkdir(this.dir, { recursive: true });
    const path = this.path(record.volumeId);
    const temporary = `${path}.${process.pid}.tmp`;
    const file = await open(temporary, 'w');
    try {
      await file.writeFile(JSON.stringify(record, null, 2) + '\n');
      await file.sync();
    } finally {
      await file.close();
    }
    await rename(temporary, path);
    await this.syncDir();
  }

  async remove(volumeId: string): Promise<void> {
    await rm(this.path(volumeId), { force: true });
    await this.syncDir().catch(() => undefined);
  }

  private async syncDir(): Promise<void> {
    const dir = await open(this.dir, 'r');
    try {
      await dir.sync();
    } finally {
      await dir.close();
    }
  }
}
