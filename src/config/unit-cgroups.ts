// Where a systemd unit's cgroup lives, asked of the live host: `systemctl show -p ControlGroup -p Slice -p LoadState`.
// A running unit has its ControlGroup; a loaded unit that is not running has none, but its Slice says where systemd
// will create it (`<slice path>/<unit>`), and systemd uses that same path on every start. Only where systemctl cannot
// answer at all (no systemd as PID 1: a build host, CI, a container) does the path fall back to the convention
// `/system.slice/<unit>`, the slice of every system service without a `Slice=` line, so that `render`, `explain` and
// `config validate` still work there; install then loads the rule only when that cgroup exists (the kernel refuses a
// path that does not), so a wrong guess can never match the wrong processes silently.
import { execFileSync } from 'node:child_process';
import { slicePath } from '../values/systemd-unit.js';

export interface UnitCgroupFound {
  /** The unit's cgroup v2 path (`/system.slice/app.service`). */
  readonly cgroup: string;
  /** systemd: ControlGroup of a running unit; slice: from its Slice= (not running); convention: no systemd to ask. */
  readonly source: 'systemd' | 'slice' | 'convention';
}

/** The cgroup of `name`, or why it has none. `name` has passed unitNameProblem. */
export type UnitCgroupLookup = UnitCgroupFound | { readonly problem: string };

/** Resolves a unit name to its cgroup path (injected into config loading; tests give their own). */
export type UnitCgroupResolver = (name: string) => UnitCgroupLookup;

/** `Key=Value` lines of `systemctl show` as a map. */
export function parseSystemctlShow(text: string): Map<string, string> {
  const values = new Map<string, string>();
  for (const line of text.split('\n')) {
    const eq = line.indexOf('=');
    if (eq > 0) values.set(line.slice(0, eq), line.slice(eq + 1).trim());
  }
  return values;
}

/** The lookup from `systemctl show` output for `name` (split out so it is tested without systemd). */
export function unitCgroupFromShow(name: string, show: Map<string, string>): UnitCgroupLookup {
  const loadState = show.get('LoadState') ?? '';
  if (loadState === 'not-found' || loadState === 'bad-setting' || loadState === 'error' || loadState === 'masked')
    return {
      problem: `unit "${name}" cannot run on this host (systemctl show: LoadState=${loadState}), so no process can be in its cgroup`,
    };
  const controlGroup = show.get('ControlGroup') ?? '';
  if (controlGroup !== '') return { cgroup: controlGroup, source: 'systemd' };
  const slice = show.get('Slice') ?? '';
  if (slice !== '') return { cgroup: `${slicePath(slice)}/${name}`, source: 'slice' };
  if (name.endsWith('.slice')) return { cgroup: slicePath(name) || '/', source: 'slice' };
  return { problem: `systemd names no cgroup for unit "${name}" (no ControlGroup= and no Slice=)` };
}

/**
 * Where systemd puts a unit that has no `Slice=` line: a slice in its own place, an instance of a template in the
 * template's slice (`getty@tty1.service` in `/system.slice/system-getty.slice`; a template name with a dash would be
 * escaped there, so it keeps the plain guess), every other unit in `/system.slice`.
 */
export function conventionalCgroup(name: string): string {
  if (name.endsWith('.slice')) return slicePath(name) || '/';
  const at = name.indexOf('@');
  const template = at > 0 ? name.slice(0, at) : '';
  if (template !== '' && !template.includes('-')) return `/system.slice/system-${template}.slice/${name}`;
  return `/system.slice/${name}`;
}

/** The host's answer through `systemctl show`; the convention when systemd is not there to ask. */
export const systemUnitCgroup: UnitCgroupResolver = (name) => {
  let text: string;
  try {
    text = execFileSync('systemctl', ['show', '-p', 'LoadState', '-p', 'ControlGroup', '-p', 'Slice', '--', name], {
      encoding: 'utf8',
      stdio: ['ignore', 'pipe', 'pipe'],
      timeout: 10_000,
    });
  } catch {
    // No systemctl, or "System has not been booted with systemd as init system": nobody to ask.
    return { cgroup: conventionalCgroup(name), source: 'convention' };
  }
  return unitCgroupFromShow(name, parseSystemctlShow(text));
};
