// The ledger: what meshctl installed, exactly, so status, repair and uninstall work from facts instead of from the
// current config. One JSON file per state scope, written atomically (temp file, fsync, rename, fsync of the
// directory), mode 0600 in a 0700 directory. `in-progress` means a transaction did not finish; the next command
// completes or rolls it back before doing anything else.
import { randomBytes } from 'node:crypto';
import {
  chmodSync,
  closeSync,
  fsyncSync,
  lstatSync,
  mkdirSync,
  openSync,
  readFileSync,
  renameSync,
  rmSync,
  unlinkSync,
  writeSync,
} from 'node:fs';
import { dirname, join } from 'node:path';
import type { CapturePlan } from '../../capture/model.js';
import type { Backend, Config } from '../../config/types.js';
import { MeshctlError } from '../../errors.js';
import { ledgerProblem } from './ledger-schema.js';
import type { OwnedObjects, Snapshot } from '../drivers/objects.js';
import type { HostExtras } from '../drivers/routes.js';

export const LEDGER_FORMAT = 1;

export type LedgerState = 'in-progress' | 'installed';
export type LedgerOperation = 'install' | 'reinstall' | 'uninstall';

/** An installed (or being installed) generation: the config it came from, its plan and what it created. */
export interface Generation {
  readonly configHash: string;
  readonly configFile: string | null;
  readonly config: Config;
  readonly plan: CapturePlan;
  /** Exactly what the kernel reported after applying (for an in-progress transaction: null until read back). */
  readonly objects: OwnedObjects | null;
  /** Policy routes and loopback addresses meshctl added (not those that already existed). */
  readonly extras: HostExtras;
  /** The proxy check install made (absent in ledgers written before the contract existed). */
  readonly proxyCheck?: ProxyCheck;
  /** The config's systemd units and the cgroup id each rule was loaded for (src/netfilter/host/unit-cgroups.ts). */
  readonly units?: readonly UnitCgroupState[];
}

/** A unit of the config and the cgroup its rule was (or would be) loaded for; id null: no such cgroup (not running). */
export interface UnitCgroupState {
  readonly name: string;
  readonly cgroup: string;
  readonly id: number | null;
}

/** What install knew of the proxy when it applied a generation: the live contract it checked, or that it was told not to. */
export type ProxyCheck =
  | {
      readonly kind: 'checked';
      readonly at: string;
      readonly pid: number;
      readonly uid: number;
      readonly gid: number;
      readonly configHash: string;
    }
  | { readonly kind: 'skipped'; readonly reason: 'without-proxy' | 'dry-run' };

export interface ConfirmArm {
  readonly deadline: string;
  readonly mechanism: 'systemd-timer' | 'detached-process';
  /** systemd unit name (…timer) or the pid of the detached reverter. */
  readonly unit: string | null;
  readonly pid: number | null;
  readonly pidStartTime: string | null;
  readonly confirmedAt: string | null;
  /** Set when the reverter gave up at its hard deadline: capture stayed installed (status and confirm show it). */
  readonly revertFailed?: RevertFailure | null;
}

/** The reverter's last word when it could not remove capture before its hard deadline. */
export interface RevertFailure {
  readonly at: string;
  readonly attempts: number;
  /** The last attempt's error: `CODE: message`. */
  readonly error: string;
}

export interface Ledger {
  readonly format: number;
  readonly installId: string;
  readonly state: LedgerState;
  /** For `in-progress`: what was being done, so recovery knows which way to go. */
  readonly operation: LedgerOperation;
  readonly backend: Backend;
  readonly netns: string | null;
  readonly toolVersion: string;
  readonly createdAt: string;
  readonly updatedAt: string;
  /** The generation installed (or being installed). */
  readonly current: Generation;
  /** For an in-progress reinstall: the generation to go back to. Null otherwise. */
  readonly previous: Generation | null;
  /** Owned objects that existed before the first install (normally none): what a rollback of it restores. */
  readonly before: OwnedObjects;
  readonly snapshot: Snapshot;
  readonly confirm: ConfirmArm | null;
}

/** The directory holding the ledger, lock and revert log of one scope: the host, or one named namespace. */
export function scopeDir(stateDir: string, netns: string | null): string {
  return netns === null ? join(stateDir, 'host') : join(stateDir, 'netns', netns);
}

export function ledgerPath(dir: string): string {
  return join(dir, 'ledger.json');
}

/**
 * Creates `dir` (and parents up to `stateDir`) with mode 0700. Each directory from `stateDir` down must be a real
 * directory (not a symlink, which is not followed) owned by this user and writable by no one else: a ledger another
 * user can replace would let them choose what uninstall removes. Read bits for others are tightened. Throws
 * STATE_UNSAFE, or COMMAND_FAILED when a directory cannot be created.
 */
export function ensureStateDir(dir: string, stateDir: string): void {
  try {
    mkdirSync(dir, { recursive: true, mode: 0o700 });
  } catch (error) {
    throw new MeshctlError(
      'COMMAND_FAILED',
      `cannot create the state directory ${dir}: ${(error as Error).message}`,
      'run as root, or pass --state-dir pointing to a writable directory',
      { cause: error },
    );
  }
  const me = process.geteuid?.() ?? 0;
  const chain: string[] = [];
  for (let d = dir; d.startsWith(stateDir) && d.length >= stateDir.length; d = dirname(d)) {
    chain.unshift(d);
    if (d === stateDir) break;
  }
  for (const d of chain) {
    const st = lstatSync(d);
    const problem = st.isSymbolicLink()
      ? 'is a symlink (not followed)'
      : !st.isDirectory()
        ? 'is not a directory'
        : st.uid !== me
          ? `is owned by uid ${st.uid}, not by uid ${me} who runs meshctl`
          : (st.mode & 0o022) !== 0
            ? `is writable by ${(st.mode & 0o002) !== 0 ? 'every user' : 'its group'} (mode ${(st.mode & 0o777).toString(8)})`
            : null;
    if (problem !== null) {
      throw new MeshctlError(
        'STATE_UNSAFE',
        `the state directory ${d} ${problem}: another user could change the ledger meshctl trusts`,
        `use a directory only root controls (the default /var/lib/meshctl), or fix it: \`chown root:root ${d} && chmod 0700 ${d}\``,
      );
    }
    if ((st.mode & 0o077) !== 0) chmodSync(d, 0o700);
  }
}

export function newInstallId(): string {
  const stamp = new Date().toISOString().replace(/[-:]/g, '').replace(/\..*$/, '');
  return `${stamp}-${randomBytes(4).toString('hex')}`;
}

/** Reads the ledger of a scope, or null when there is none. Throws LEDGER_CORRUPT for unreadable content. */
export function readLedger(dir: string): Ledger | null {
  const path = ledgerPath(dir);
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') return null;
    if (code === 'EACCES' || code === 'EPERM') {
      throw new MeshctlError(
        'NOT_ROOT',
        `cannot read the ledger ${path} as uid ${process.getuid?.() ?? '?'} (${code}): it is readable by root only`,
        'run it with sudo',
        { cause: error },
      );
    }
    throw new MeshctlError(
      'LEDGER_CORRUPT',
      `cannot read the ledger ${path}: ${(error as Error).message}`,
      'check the file and the state directory (--state-dir)',
      { cause: error },
    );
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (error) {
    throw new MeshctlError(
      'LEDGER_CORRUPT',
      `the ledger ${path} is not valid JSON (${(error as Error).message})`,
      'it was written atomically, so this means it was edited by hand; restore it from a backup, or remove it and clean up MESHCTL_ chains by hand',
      { cause: error },
    );
  }
  const format = typeof parsed === 'object' && parsed !== null ? (parsed as { format?: unknown }).format : undefined;
  if (format !== LEDGER_FORMAT) {
    throw new MeshctlError(
      'LEDGER_CORRUPT',
      `the ledger ${path} has format ${JSON.stringify(format) ?? 'none'}, not ${LEDGER_FORMAT}`,
      `this meshctl reads ledger format ${LEDGER_FORMAT}; use the meshctl version that wrote it (toolVersion in the file) to uninstall`,
    );
  }
  const problem = ledgerProblem(parsed);
  if (problem !== null) {
    throw new MeshctlError(
      'LEDGER_CORRUPT',
      `the ledger ${path} is not one meshctl wrote: ${problem}`,
      'it was written atomically, so this means it was edited by hand; restore it from a backup, or move it away and remove MESHCTL_ chains (or the meshctl nft table) by hand',
    );
  }
  const ledger = parsed as Ledger;
  return ledger as Ledger;
}

/** Replaces the ledger atomically: a reader sees the old or the new file, never a torn one, even after a crash. */
export function writeLedger(dir: string, ledger: Ledger): void {
  const path = ledgerPath(dir);
  const temp = join(dir, `.ledger.json.${process.pid}.${randomBytes(3).toString('hex')}.tmp`);
  try {
    const fd = openSync(temp, 'wx', 0o600);
    try {
      writeSync(fd, `${JSON.stringify(ledger, null, 2)}\n`);
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
    renameSync(temp, path);
    const dirFd = openSync(dir, 'r');
    try {
      fsyncSync(dirFd);
    } finally {
      closeSync(dirFd);
    }
  } catch (error) {
    try {
      unlinkSync(temp);
    } catch {
      // not created
    }
    throw new MeshctlError(
      'COMMAND_FAILED',
      `cannot write the ledger ${path}: ${(error as Error).message}`,
      'check free space and permissions of the state directory',
      { cause: error },
    );
  }
}

export function removeLedger(dir: string): void {
  rmSync(ledgerPath(dir), { force: true });
  try {
    const dirFd = openSync(dir, 'r');
    fsyncSync(dirFd);
    closeSync(dirFd);
  } catch {
    // best effort: the removal itself is done
  }
}
