// Writing identity and CA files: atomically (a temp file in the same directory, fsynced, renamed over the old one,
// as cert-manager and spiffe-helper replace theirs), or exclusively (never over an existing file), with the mode set
// on creation so a key is never readable by others, not even for a moment.
import { randomBytes } from 'node:crypto';
import { closeSync, fsyncSync, linkSync, openSync, renameSync, rmSync, writeSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { MeshctlError } from '../errors.js';

function writeTemp(path: string, data: string, mode: number): string {
  const temp = join(dirname(path), `.${basename(path)}.${process.pid}.${randomBytes(4).toString('hex')}.tmp`);
  const fd = openSync(temp, 'wx', mode);
  try {
    writeSync(fd, data);
    fsyncSync(fd);
  } catch (error) {
    closeSync(fd);
    rmSync(temp, { force: true });
    throw error;
  }
  closeSync(fd);
  return temp;
}

function syncDir(dir: string): void {
  const fd = openSync(dir, 'r');
  try {
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

/** Replaces `path` with `data` in one rename: a reader sees the old file or the new one, never a partial one. */
export function writeFileAtomic(path: string, data: string, mode: number): void {
  const temp = writeTemp(path, data, mode);
  try {
    renameSync(temp, path);
  } catch (error) {
    rmSync(temp, { force: true });
    throw error;
  }
  syncDir(dirname(path));
}

/** Creates `path` with `data`, complete or not at all; throws EEXIST (and changes nothing) when it exists. */
export function writeFileExclusive(path: string, data: string, mode: number): void {
  const temp = writeTemp(path, data, mode);
  try {
    linkSync(temp, path);
  } finally {
    rmSync(temp, { force: true });
  }
  syncDir(dirname(path));
}

/** Runs file writes for `what`; a system error (EACCES, ENOTDIR, ENOSPC, EROFS...) becomes WRITE_FAILED naming it. */
export function writing<T>(what: string, write: () => T): T {
  try {
    return write();
  } catch (error) {
    const e = error as NodeJS.ErrnoException;
    if (typeof e.code !== 'string' || e.code === 'EEXIST') throw error;
    throw new MeshctlError(
      'WRITE_FAILED',
      `${what}: ${e.code} (${e.message})`,
      'give a directory this user can create and write, on a writable file system with free space',
      { cause: error },
    );
  }
}
