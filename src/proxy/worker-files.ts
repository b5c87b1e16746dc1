// The files a cluster worker reads when it starts, and the up-front check that the proxy user can read them.
// cluster.fork() starts each worker as a fresh `node` process after the primary has dropped root, so the worker
// entry, the rest of dist/ and the addon are loaded as the proxy user. From a checkout that user cannot read (one
// under /root, or under a 0700 `mktemp -d`), every worker would die with MODULE_NOT_FOUND and be restarted, each
// time with a stack trace; the primary checks once instead, before it forks.
import { closeSync, openSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import type { Config } from '../config/types.js';
import { MeshctlError } from '../errors.js';
import { ADDON_PATH } from '../native/addon.js';

/** The script cluster workers run (dist/proxy/worker-main.js, next to this module). */
export const WORKER_ENTRY = fileURLToPath(new URL('./worker-main.js', import.meta.url));

/**
 * Opens each file a worker loads first (its entry, the addon) as this process, which has already become the proxy
 * user. Throws PROXY_UNREADABLE naming the first file it cannot open, the user and the fix.
 */
export function assertWorkerFilesReadable(
  user: Config['proxy']['user'],
  files: readonly string[] = [WORKER_ENTRY, ADDON_PATH],
): void {
  for (const file of files) {
    try {
      closeSync(openSync(file, 'r'));
    } catch (error) {
      const code = (error as NodeJS.ErrnoException).code ?? String(error);
      const who = `${user.name ?? `uid ${user.uid}`} (uid ${process.getuid?.() ?? user.uid}, gid ${process.getgid?.() ?? user.gid})`;
      throw new MeshctlError(
        'PROXY_UNREADABLE',
        `the proxy runs its workers as ${who}, which cannot read ${file} (${code}): no worker could start`,
        'install meshctl where the proxy user can read it (e.g. under /opt or /usr/lib, with every directory above it searchable by others: chmod o+rx), or run one in-process worker with --proxy-workers 1',
        { cause: error },
      );
    }
  }
}
