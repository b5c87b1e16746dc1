// Reloading the identity when its files change. Rotating agents replace files by rename (spiffe-helper, cert-manager's
// csi-driver, `meshctl ca issue`) or swap a `..data` symlink (Kubernetes secret volumes), so the watch is on the
// directories, not the files (a watch on a file follows the old inode after a rename). Any event there starts a
// debounce; then the files are read, and when their bytes differ from the current identity's they are checked like
// at start. A valid set becomes the current identity and is handed to `onReload` (the tunnel builds new TLS
// contexts for new connections; open ones keep theirs). An invalid set is logged with its reason and the old
// identity stays. A slow poll backs the watch up (events lost, a directory replaced) and logs expiry warnings.
import { watch, type FSWatcher } from 'node:fs';
import { dirname } from 'node:path';
import { isMeshctlError } from '../errors.js';
import type { Logger } from '../log.js';
import { identityExpiry, type ExpiryState } from './expiry.js';
import {
  checkIdentity,
  CREDENTIAL_PREFIX,
  readIdentityFiles,
  resolveKeyPath,
  type Identity,
  type IdentityPaths,
} from './identity.js';
import { IdentityError } from './reasons.js';

export interface IdentityWatchOptions {
  readonly log: Logger;
  /** Called with each new valid identity (not for the initial one). */
  readonly onReload: (identity: Identity, previous: Identity) => void;
  /** Called when changed files are refused (the old identity stays). */
  readonly onReject?: (error: IdentityError) => void;
  /** Quiet time after the last event before reading the files. */
  readonly debounceMs?: number;
  /** Interval of the backup poll (re-read and compare; log expiry state changes). */
  readonly pollMs?: number;
  /** The clock, for tests. */
  readonly now?: () => Date;
  readonly env?: NodeJS.ProcessEnv;
}

export interface IdentityWatcher {
  /** The identity in force: the initial one, or the last valid reload. */
  current(): Identity;
  /** Reads the files now (as after an event); resolves when done. */
  check(): Promise<void>;
  close(): void;
}

export const DEFAULT_DEBOUNCE_MS = 200;
export const DEFAULT_POLL_MS = 60_000;

/**
 * Watches the files of `initial` (configured as `paths`; the key's `credential:NAME` is resolved again on each
 * read) and keeps the current identity, as described above. Never throws after it has started.
 */
export function watchIdentity(paths: IdentityPaths, initial: Identity, options: IdentityWatchOptions): IdentityWatcher {
  const log = options.log.child({ component: 'mtls-identity' });
  const now = options.now ?? (() => new Date());
  const debounceMs = options.debounceMs ?? DEFAULT_DEBOUNCE_MS;
  let current = initial;
  let rejectedDigest: string | null = null;
  let lastState: ExpiryState = identityExpiry(initial, now()).state;
  let timer: NodeJS.Timeout | null = null;
  let closed = false;
  let running: Promise<void> = Promise.resolve();

  const reload = (): void => {
    let resolved: IdentityPaths;
    let next: Identity;
    try {
      resolved = { ...paths, key: resolveKeyPath(paths.key, options.env) };
      const files = readIdentityFiles(resolved);
      next = checkIdentity(files, resolved, now());
    } catch (error) {
      const refused =
        error instanceof IdentityError
          ? error
          : new IdentityError('malformed', `identity files: ${String(error)}`, 'check the files', { cause: error });
      // The same refused files are logged once, not at every poll.
      const key = `${refused.reason}:${refused.message}`;
      if (key !== rejectedDigest) {
        rejectedDigest = key;
        // systemd copies a credential when the unit starts: a certificate rotated with a new key meets the old key.
        const fromCredential = paths.key.startsWith(CREDENTIAL_PREFIX) && refused.reason === 'key-mismatch';
        log.error(
          {
            reason: refused.reason,
            code: refused.code,
            err: refused.message,
            keeping: current.spiffeId.text,
            hint: fromCredential
              ? 'the key is a systemd credential, copied when the proxy started: restart it to load a rotated key'
              : refused.hint,
          },
          'identity files changed but were refused; keeping the current identity',
        );
        options.onReject?.(refused);
      }
      return;
    }
    rejectedDigest = null;
    if (next.digest === current.digest) return;
    const previous = current;
    current = next;
    lastState = identityExpiry(next, now()).state;
    log.info(
      {
        spiffeId: next.spiffeId.text,
        serial: next.certificate.serialNumber,
        notAfter: next.notAfter.toISOString(),
        previousSerial: previous.certificate.serialNumber,
      },
      'identity reloaded',
    );
    options.onReload(next, previous);
  };

  const run = (): Promise<void> => {
    running = running.then(() => {
      if (!closed) reload();
    });
    return running;
  };

  const schedule = (): void => {
    if (closed) return;
    if (timer !== null) clearTimeout(timer);
    timer = setTimeout(() => {
      timer = null;
      void run();
    }, debounceMs);
  };

  const watchers: FSWatcher[] = [];
  const dirs = new Set([paths.certificate, paths.bundle, initial.paths.key].map((p) => dirname(p)));
  for (const dir of dirs) {
    try {
      const w = watch(dir, { persistent: false }, schedule);
      w.on('error', (error) => log.warn({ dir, err: error.message }, 'identity directory watch failed; polling only'));
      watchers.push(w);
    } catch (error) {
      log.warn({ dir, err: (error as Error).message }, 'cannot watch the identity directory; polling only');
    }
  }

  const poll = setInterval(() => {
    void run().then(() => {
      const expiry = identityExpiry(current, now());
      if (expiry.state === lastState) return;
      lastState = expiry.state;
      const fields = {
        spiffeId: expiry.spiffeId,
        notAfter: expiry.notAfter.toISOString(),
        secondsLeft: expiry.secondsLeft,
      };
      if (expiry.state === 'warning') log.warn(fields, 'identity certificate expires soon and has not been rotated');
      else if (expiry.state === 'expired') log.error(fields, 'identity certificate has expired');
    });
  }, options.pollMs ?? DEFAULT_POLL_MS);
  poll.unref();

  return {
    current: () => current,
    check: run,
    close: () => {
      closed = true;
      if (timer !== null) clearTimeout(timer);
      clearInterval(poll);
      for (const w of watchers) w.close();
    },
  };
}

/** Whether `error` is an identity refusal (for callers that load at start and want the reason). */
export function isIdentityError(error: unknown): error is IdentityError {
  return isMeshctlError(error) && error instanceof IdentityError;
}
