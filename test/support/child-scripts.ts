/**
 * Where the child-process scripts of this folder are once compiled
 * (dist/test/support/NAME.js): tests spawn them by path, from wherever the
 * test file itself lives.
 */
import { fileURLToPath } from 'node:url';

export type ChildScript =
  'embedded-writer' | 'etcd-close-exit' | 'threaded-close-exit' | 'peer-child';

export function childScript(name: ChildScript): string {
  return fileURLToPath(new URL(`./${name}.js`, import.meta.url));
}
