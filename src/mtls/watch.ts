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
  identityDigest,
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

/** Reads, checks and swaps the identity; logs refusals (once per distinct refusal) and expiry state changes. */
class IdentityReloader {
  private currentIdentity: Identity;
  private lastRefusal: string | null = null;
  private lastState: ExpiryState;

  constructor(
    private readonly paths: IdentityPaths,
    initial: Identity,
    private readonly options: IdentityWatchOptions,
    private readonly log: Logger,
    private readonly now: () => Date,
  ) {
    this.currentIdentity = initial;
    this.lastState = identityExpiry(initial, now()).state;
  }

  get current(): Identity {
    return this.currentIdentity;
  }

  reload(): void {
    let next: Identity;
    try {
      const resolved = { ...this.paths, key: resolveKeyPath(this.paths.key, this.options.env) };
      const files = readIdentityFiles(resolved);
      // Unchanged files are not checked again: their expiry is checkExpiry's to report, not a refused reload.
      if (identityDigest(files) === this.currentIdentity.digest) {
        this.lastRefusal = null;
        return;
      }
      next = checkIdentity(files, resolved, this.now());
    } catch (error) {
      this.refused(
        error instanceof IdentityError
          ? error
          : new IdentityError('malformed', `identity files: ${String(error)}`, 'check the files', { cause: error }),
      );
      return;
    }
    this.lastRefusal = null;
    const previous = this.currentIdentity;
    this.currentIdentity = next;
    this.lastState = identityExpiry(next, this.now()).state;
    this.log.info(
      {
        spiffeId: next.spiffeId.text,
        serial: next.certificate.serialNumber,
        notAfter: next.notAfter.toISOString(),
        previousSerial: previous.certificate.serialNumber,
      },
      'identity reloaded',
    );
    this.options.onReload(next, previous);
  }

  private refused(refused: IdentityError): void {
    // The same refused files are logged once, not at every poll.
    const key = `${refused.reason}:${refused.message}`;
    if (key === this.lastRefusal) return;
    this.lastRefusal = key;
    // systemd copies a credential when the unit starts: a certificate rotated with a new key meets the old key.
    const fromCredential = this.paths.key.startsWith(CREDENTIAL_PREFIX) && refused.reason === 'key-mismatch';
    this.log.error(
      {
        reason: refused.reason,
        code: refused.code,
        err: refused.message,
        keeping: this.currentIdentity.spiffeId.text,
        hint: fromCredential
          ? 'the key is a systemd credential, copied when the proxy started: restart it to load a rotated key'
          : refused.hint,
      },
      'identity files changed but were refused; keeping the current identity',
    );
    this.options.onReject?.(refused);
  }

  /** Logs the current identity's passage into warning or expired. */
  checkExpiry(): void {
    const expiry = identityExpiry(this.currentIdentity, this.now());
    if (expiry.state === this.lastState) return;
    this.lastState = expiry.state;
    const fields = {
      spiffeId: expiry.spiffeId,
      notAfter: expiry.notAfter.toISOString(),
      secondsLeft: expiry.secondsLeft,
    };
    if (expiry.state === 'warning') this.log.warn(fields, 'identity certificate expires soon and has not been rotated');
    else if (expiry.state === 'expired') this.log.error(fields, 'identity certificate has expired');
  }
}

/** A watch on each directory; a directory that cannot be watched is left to the poll. */
function watchDirectories(dirs: ReadonlySet<string>, onEvent: () => void, log: Logger): FSWatcher[] {
  const watchers: FSWatcher[] = [];
  for (const dir of dirs) {
    try {
      const w = watch(dir, { persistent: false }, onEvent);
      w.on('error', (error) => log.warn({ dir, err: error.message }, 'identity directory watch failed; polling only'));
      watchers.push(w);
    } catch (error) {
      log.warn({ dir, err: (error as Error).message }, 'cannot watch the identity directory; polling only');
    }
  }
  return watchers;
}

/**
 * Watches the files of `initial` (configured as `paths`; the key's `credential:NAME` is resolved again on each
 * read) and keeps the current identity, as described above. Never throws after it has started.
 */
export function watchIdentity(paths: IdentityPaths, initial: Identity, options: IdentityWatchOptions): IdentityWatcher {
  const log = options.log.child({ component: 'mtls-identity' });
  const reloader = new IdentityReloader(paths, initial, options, log, options.now ?? (() => new Date()));
  let timer: NodeJS.Timeout | null = null;
  let closed = false;
  let running: Promise<void> = Promise.resolve();
  // One read at a time, in order: an event during a read is handled after it.
  const run = (): Promise<void> => {
    running = running.then(() => {
      if (!closed) reloader.reload();
    });
    return running;
  };
  const schedule = (): void => {
    if (closed) return;
    if (timer !== null) clearTimeout(timer);
    timer = setTimeout(() => {
      timer = null;
      void run();
    }, options.debounceMs ?? DEFAULT_DEBOUNCE_MS);
  };
  const dirs = new Set([paths.certificate, paths.bundle, initial.paths.key].map((p) => dirname(p)));
  const watchers = watchDirectories(dirs, schedule, log);
  const poll = setInterval(() => void run().then(() => reloader.checkExpiry()), options.pollMs ?? DEFAULT_POLL_MS);
  poll.unref();
  return {
    current: () => reloader.current,
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
