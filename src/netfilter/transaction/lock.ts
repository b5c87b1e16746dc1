// The state lock: one meshctl command at a time per state scope (host, or one --netns), so two installs, or an
// install and the --confirm-within revert, never interleave. iptables' own xtables lock (--wait) only covers a
// single restore; this one covers the whole transaction. A lock left by a killed process is taken over.
import { closeSync, lstatSync, openSync, readFileSync, unlinkSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { MeshctlError } from '../../errors.js';

export interface LockOwner {
  readonly pid: number;
  /** Process start time in clock ticks (/proc/PID/stat field 22): tells a live owner from a reused pid. */
  readonly startTime: string;
  readonly command: string;
  readonly since: string;
}

export interface StateLock {
  readonly path: string;
  /** The owner this lock replaced because its process was gone (reported by the caller), or null. */
  readonly takenOverFrom: LockOwner | null;
  release(): void;
}

export function processStartTime(pid: number): string | null {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // The command name (field 2) may contain spaces and parentheses: count fields after the last ')'.
    const rest = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return rest[19] ?? null;
  } catch {
    return null;
  }
}

function readOwner(path: string): LockOwner | null {
  try {
    const parsed = JSON.parse(readFileSync(path, 'utf8')) as Partial<LockOwner>;
    if (typeof parsed.pid !== 'number' || typeof parsed.startTime !== 'string') return null;
    return parsed as LockOwner;
  } catch {
    return null;
  }
}

function lockKind(path: string): 'file' | 'gone' | 'a directory' | 'a symlink' | 'not a regular file' {
  try {
    const st = lstatSync(path);
    return st.isSymbolicLink()
      ? 'a symlink'
      : st.isDirectory()
        ? 'a directory'
        : st.isFile()
          ? 'file'
          : 'not a regular file';
  } catch {
    return 'gone';
  }
}

function ownerAlive(owner: LockOwner): boolean {
  return processStartTime(owner.pid) === owner.startTime;
}

/**
 * Takes the lock file `lock` in `dir` (which must exist), waiting up to `waitMs` for a live owner.
 * Throws LOCKED naming the owner when it stays held.
 */
export async function acquireStateLock(dir: string, command: string, waitMs = 15_000): Promise<StateLock> {
  const path = join(dir, 'lock');
  const me: LockOwner = {
    pid: process.pid,
    startTime: processStartTime(process.pid) ?? '?',
    command,
    since: new Date().toISOString(),
  };
  const deadline = Date.now() + waitMs;
  let takenOverFrom: LockOwner | null = null;
  for (;;) {
    try {
      const fd = openSync(path, 'wx', 0o600);
      writeSync(fd, JSON.stringify(me));
      closeSync(fd);
      let released = false;
      return {
        path,
        takenOverFrom,
        release() {
          if (released) return;
          released = true;
          const owner = readOwner(path);
          if (owner && owner.pid === me.pid && owner.startTime === me.startTime) unlinkSync(path);
        },
      };
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'EEXIST') {
        throw new MeshctlError(
          'COMMAND_FAILED',
          `cannot create the state lock ${path}: ${(error as Error).message}`,
          'check that the state directory is writable by the invoking user (root)',
          { cause: error },
        );
      }
    }
    // Only a regular file is a lock (a directory or symlink there would otherwise be retried forever).
    const kind = lockKind(path);
    if (kind !== 'file' && kind !== 'gone') {
      throw new MeshctlError(
        'STATE_UNSAFE',
        `the state lock ${path} is ${kind}, not a lock file meshctl made`,
        `remove it (\`rm -r ${path}\`) if nothing of yours is there; meshctl creates a regular file`,
      );
    }
    const owner = readOwner(path);
    if (owner === null || !ownerAlive(owner)) {
      // Stale (its process is gone) or half-written by a process killed between open and write. Re-read right
      // before unlinking so a lock just taken by a concurrent command is not removed.
      const again = readOwner(path);
      if (JSON.stringify(again) === JSON.stringify(owner)) {
        try {
          unlinkSync(path);
        } catch {
          // someone else took it over first; loop and look again (after a pause, bounded by the deadline)
          if (Date.now() >= deadline)
            throw new MeshctlError(
              'LOCKED',
              `cannot take over the stale state lock ${path}`,
              'remove the file by hand if no meshctl command runs',
            );
          await sleep(50);
        }
        if (owner) takenOverFrom = owner;
      }
      continue;
    }
    if (Date.now() >= deadline) {
      throw new MeshctlError(
        'LOCKED',
        `another meshctl command holds ${path}: pid ${owner.pid} (\`${owner.command}\`, since ${owner.since})`,
        'wait for it to finish; if that process is hung, stop it (kill PID) and run your command again: a lock whose process is gone is taken over automatically',
      );
    }
    await sleep(50);
  }
}
