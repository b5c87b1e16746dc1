// The drop-ins that keep unit rules in step: one per systemd unit named by capture.outbound.excludeUnits or
// includeUnits, `/etc/systemd/system/<unit>.d/50-meshctl-units-<scope>.conf`, holding
//
//   [Service]
//   ExecStartPre=+<meshctl> units refresh --state-dir <dir> [--netns <name>]
//
// systemd creates a unit's cgroup before its first ExecStartPre= and runs every ExecStartPre= inside it, so the
// refresh sees the new cgroup and loads rules matching it before the unit's main process exists: an excluded unit is
// never captured after a restart, and a unit of includeUnits is captured from its first connection. `+` runs it with
// full privileges whatever the unit's User= and sandboxing. No `-` prefix: if the refresh fails, the unit does not
// start, rather than run with rules that would capture (or miss) it. Lines the unit's own file already has under
// ExecStartPre= run before it (a drop-in appends); those are the unit author's setup commands.
//
// `meshctl install` writes them before it loads the rules (and removes those of units no longer named);
// `meshctl uninstall` removes them after the rules are gone. Only where systemd runs (/run/systemd/system exists).
// Under `meshctl service install` the capture unit's sandbox keeps /etc read-only, so `service install` writes them
// before it starts that unit (whose install then finds them in place) and `service uninstall` removes them.
import {
  existsSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  renameSync,
  rmdirSync,
  rmSync,
  writeFileSync,
} from 'node:fs';
import { join } from 'node:path';
import { execFileSync } from 'node:child_process';
import { MeshctlError } from '../errors.js';

export const DROPIN_MARKER = '# meshctl units drop-in: keeps capture.outbound.excludeUnits/includeUnits in step';
const DEFAULT_ROOT = '/etc/systemd/system';

export interface DropinOptions {
  /** The scope's state directory root (config stateDir). */
  readonly stateDir: string;
  readonly netns: string | null;
  /** How systemd runs meshctl: absolute paths (node and bin/meshctl, or the installed binary). */
  readonly command: readonly string[];
  /** Where unit drop-ins go (tests give a temp directory). */
  readonly root?: string;
}

export interface DropinChange {
  readonly written: readonly string[];
  readonly removed: readonly string[];
}

/** Whether systemd is the running init (sd_booted(3)): drop-ins mean nothing otherwise. */
export function systemdRunning(): boolean {
  return existsSync('/run/systemd/system');
}

function scopeName(netns: string | null): string {
  return netns === null ? 'host' : `netns-${netns}`;
}

/** The drop-in file of `unit` for this scope. */
export function unitDropinPath(unit: string, options: Pick<DropinOptions, 'netns' | 'root'>): string {
  return join(options.root ?? DEFAULT_ROOT, `${unit}.d`, `50-meshctl-units-${scopeName(options.netns)}.conf`);
}

/** systemd's quoting for one ExecStartPre= word: double quotes when it holds a space, `\` and `"` escaped. */
function execWord(word: string): string {
  return /[\s"\\]/.test(word) ? `"${word.replace(/[\\"]/g, (c) => `\\${c}`)}"` : word;
}

/** The drop-in's text. */
export function renderUnitDropin(options: DropinOptions): string {
  const argv = [
    ...options.command,
    'units',
    'refresh',
    '--state-dir',
    options.stateDir,
    ...(options.netns === null ? [] : ['--netns', options.netns]),
  ];
  return `${DROPIN_MARKER}\n[Service]\nExecStartPre=+${argv.map(execWord).join(' ')}\n`;
}

/**
 * Writes the drop-in of every unit in `units` and removes this scope's drop-ins of other units, then reloads systemd
 * when anything changed. Throws UNIT_DROPIN_FAILED naming the file.
 */
export function syncUnitDropins(units: readonly string[], options: DropinOptions): DropinChange {
  const written: string[] = [];
  const text = renderUnitDropin(options);
  for (const unit of units) {
    const path = unitDropinPath(unit, options);
    if (sameRefresh(readOr(path), text)) continue;
    guard(path, 'write', () => {
      mkdirSync(join(path, '..'), { recursive: true, mode: 0o755 });
      writeFileSync(`${path}.tmp`, text, { mode: 0o644 });
      renameSync(`${path}.tmp`, path);
    });
    written.push(path);
  }
  const keep = new Set(units.map((unit) => unitDropinPath(unit, options)));
  const removed = ourDropins(options).filter((path) => !keep.has(path));
  for (const path of removed) removeDropin(path);
  if (written.length + removed.length > 0) reloadSystemd(options);
  return { written, removed };
}

/** Removes every drop-in of this scope (uninstall). */
export function removeUnitDropins(options: Pick<DropinOptions, 'netns' | 'root'>): DropinChange {
  const removed = ourDropins(options);
  for (const path of removed) removeDropin(path);
  if (removed.length > 0) reloadSystemd(options);
  return { written: [], removed };
}

/** This scope's drop-ins (by file name and marker) under the root. */
function ourDropins(options: Pick<DropinOptions, 'netns' | 'root'>): string[] {
  const root = options.root ?? DEFAULT_ROOT;
  const file = `50-meshctl-units-${scopeName(options.netns)}.conf`;
  let dirs: string[];
  try {
    dirs = readdirSync(root).filter((d) => d.endsWith('.d'));
  } catch {
    return [];
  }
  return dirs
    .map((d) => join(root, d, file))
    .filter((path) => readOr(path)?.startsWith(DROPIN_MARKER) === true)
    .sort();
}

function removeDropin(path: string): void {
  guard(path, 'remove', () => {
    rmSync(path, { force: true });
    try {
      rmdirSync(join(path, '..')); // only when empty: other drop-ins of the unit stay
    } catch {
      // not empty
    }
  });
}

function reloadSystemd(options: Pick<DropinOptions, 'root'>): void {
  if (options.root !== undefined && options.root !== DEFAULT_ROOT) return; // a test root: no systemd reads it
  if (!systemdRunning()) return;
  guard(DEFAULT_ROOT, 'reload systemd for', () =>
    execFileSync('systemctl', ['daemon-reload'], { stdio: ['ignore', 'ignore', 'pipe'], timeout: 60_000 }),
  );
}

/**
 * Whether a drop-in already runs the same refresh (same scope and state directory) as `text`, whatever path of
 * meshctl it names: `meshctl service install` writes them outside the capture unit's sandbox, where /etc is
 * read-only, and the install that unit runs then finds them in place.
 */
function sameRefresh(existing: string | null, text: string): boolean {
  const refresh = (t: string) => / units refresh (.*)$/m.exec(t)?.[1];
  return existing !== null && existing.startsWith(DROPIN_MARKER) && refresh(existing) === refresh(text);
}

function readOr(path: string): string | null {
  try {
    return readFileSync(path, 'utf8');
  } catch {
    return null;
  }
}

function guard(path: string, what: string, fn: () => void): void {
  try {
    fn();
  } catch (error) {
    throw new MeshctlError(
      'UNIT_DROPIN_FAILED',
      `could not ${what} the units drop-in ${path}: ${(error as Error).message}`,
      'check that /etc/systemd/system is writable (meshctl runs as root) and `systemctl daemon-reload` works',
      { cause: error },
    );
  }
}
