/**
 * The NBD server's buffer pool: READ replies and WRITE payloads gathered
 * from several socket reads come from here and go back when the socket has
 * taken the reply or the export has settled the write.
 */
import { BufferPool } from '../transport/buffer-pool.js';

/** One pool per process: sessions come and go, warm memory should stay. */
export const replyBuffers = new BufferPool();
