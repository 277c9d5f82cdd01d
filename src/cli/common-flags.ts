/** Flags shared by the binaries, so each means the same everywhere. */
import type { FlagSpec } from './args.js';

export const DEFAULT_DATA_DIR = './torus-data';
export const DEFAULT_NBD_ADDR = '127.0.0.1:10809';

export const dataDirFlag: FlagSpec = {
  type: 'string',
  short: 'd',
  help: 'directory holding this node\'s blocks and metadata',
  default: DEFAULT_DATA_DIR,
  env: 'TORUS_DATA_DIR',
};

export const keyFileFlag: FlagSpec = {
  type: 'string',
  help: 'master key file for encrypted volumes (created on first use; keep it apart from the data in production)',
  env: 'TORUS_KEY_FILE',
};

export const outputFlag: FlagSpec = {
  type: 'string',
  short: 'o',
  help: 'output format: table or json',
  default: 'table',
};
