// Keeping unit rules in step with the units' cgroups. Both backends turn a cgroup path into a cgroup when the rule
// is loaded (xt_cgroup takes a reference to it, nft stores its id), so when a unit restarts, systemd removes its
// cgroup and creates a new one at the same path, and the loaded rule goes on matching the old, empty one. Neither
// listing shows that: iptables-save prints the path it was given, and nft prints the path only while the old id
// still exists. So install records each unit's cgroup id (the inode number of its directory in the cgroup v2
// hierarchy, which is the id the kernel matches on) when it loads the rules, and `status` compares it with the id
// at the same path now. `meshctl units refresh` (run by each named unit's drop-in, ExecStartPre=, so before the
// unit's main process starts) re-applies the capture through the ordinary transaction when they differ.
import { readdirSync, readFileSync, statSync, type Dirent } from 'node:fs';
import { join } from 'node:path';
import type { Config, SystemdUnit } from '../../config/types.js';
import type { ExplainPlan } from '../../capture/explain.js';
import type { Match } from '../../capture/model.js';
import { MeshctlError } from '../../errors.js';
import type { UnitCgroupState } from '../transaction/ledger.js';

export type { UnitCgroupState };

/** How a unit's loaded rule stands against its cgroup now. */
export type UnitStep =
  /** Running, and the rule was loaded for this very cgroup. */
  | 'in-step'
  /** Running in a cgroup the loaded rules do not match (restarted without a refresh, or started after install). */
  | 'stale'
  /** Not running: no process can be in its cgroup; its drop-in refreshes the rules when it starts. */
  | 'not-running';

export interface UnitReport extends UnitCgroupState {
  /** The cgroup id the loaded rules were made for (null: the unit was not running then, so it has no rule). */
  readonly loadedId: number | null;
  readonly step: UnitStep;
}

/**
 * Where the cgroup v2 hierarchy is mounted in this mount namespace (/sys/fs/cgroup on a unified host,
 * /sys/fs/cgroup/unified on a hybrid one), from /proc/self/mountinfo; null when it is not mounted.
 */
export function cgroup2Mount(mountinfo = readMountinfo()): string | null {
  for (const line of mountinfo.split('\n')) {
    // `36 35 0:30 / /sys/fs/cgroup rw,nosuid shared:9 - cgroup2 cgroup2 rw`: fields after " - " are fstype, source.
    const [before, after] = line.split(' - ');
    if (after?.split(' ')[0] !== 'cgroup2' || before === undefined) continue;
    const fields = before.split(' ');
    if (fields[3] === '/') return fields[4]!.replace(/\\040/g, ' ');
  }
  return null;
}

function readMountinfo(): string {
  try {
    return readFileSync('/proc/self/mountinfo', 'utf8');
  } catch {
    return '';
  }
}

/** Every unit the config names (excludeUnits, then includeUnits), once each. */
export function configUnits(config: Config): SystemdUnit[] {
  const out = config.capture.outbound;
  const all = [...out.excludeUnits, ...(out.includeUnits === 'all' ? [] : out.includeUnits)];
  return all.filter((unit, i) => all.findIndex((u) => u.name === unit.name) === i);
}

/** The cgroup id at each unit's path now (null when the directory does not exist). */
export function readUnitCgroups(units: readonly SystemdUnit[], mount = cgroup2Mount()): UnitCgroupState[] {
  return units.map((unit) => ({ name: unit.name, cgroup: unit.cgroup, id: cgroupId(unit.cgroup, mount) }));
}

function cgroupId(path: string, mount: string | null): number | null {
  if (mount === null) return null;
  try {
    const st = statSync(join(mount, path));
    return st.isDirectory() ? st.ino : null;
  } catch {
    return null;
  }
}

/** The names of units with no cgroup now: their rules are left out of the plan (planCapture's missingUnits). */
export function missingUnits(states: readonly UnitCgroupState[]): Set<string> {
  return new Set(states.filter((s) => s.id === null).map((s) => s.name));
}

/** Each unit of `live` against what the loaded rules were made for (`loaded`, from the ledger). */
export function compareUnits(loaded: readonly UnitCgroupState[], live: readonly UnitCgroupState[]): UnitReport[] {
  return live.map((now) => {
    const then = loaded.find((l) => l.name === now.name && l.cgroup === now.cgroup);
    const loadedId = then?.id ?? null;
    const step: UnitStep = now.id === null ? 'not-running' : now.id === loadedId ? 'in-step' : 'stale';
    return { ...now, loadedId, step };
  });
}

/** Whether the rules loaded for `loaded` are exactly the rules `live` needs (same units, same cgroups, same ids). */
export function sameUnitCgroups(loaded: readonly UnitCgroupState[], live: readonly UnitCgroupState[]): boolean {
  return (
    loaded.length === live.length &&
    live.every((now) => loaded.some((l) => l.name === now.name && l.cgroup === now.cgroup && l.id === now.id))
  );
}

/** One line per unit for `status` and `units refresh`. */
export function describeUnit(report: UnitReport): string {
  switch (report.step) {
    case 'in-step':
      return `${report.name}: in step (cgroup ${report.cgroup}, id ${report.id})`;
    case 'stale':
      return report.loadedId === null
        ? `${report.name}: STALE — running in ${report.cgroup} (id ${report.id}), but it was not running when the rules were loaded, so they have no rule for it; run \`meshctl units refresh\``
        : `${report.name}: STALE — the rules match cgroup id ${report.loadedId}, the unit now runs in id ${report.id} (restarted without a refresh); run \`meshctl units refresh\``;
    case 'not-running':
      return `${report.name}: not running (no cgroup at ${report.cgroup}); its drop-in loads its rule when it starts`;
  }
}

/**
 * Throws CONFIG_INVALID when the nftables backend cannot load unit rules in this scope. nft resolves a
 * `socket cgroupv2` path itself, under /sys/fs/cgroup of the mount namespace it runs in (and shows the id instead of
 * the path when it cannot find it there), so it needs the cgroup v2 hierarchy at /sys/fs/cgroup; `ip netns exec`, which
 * runs every command of a --netns scope, mounts a fresh /sys without any cgroup hierarchy. The iptables backends
 * hand the path to the kernel, which resolves it wherever the hierarchy is mounted.
 */
export function refuseNftUnits(config: Config, netns: string | null, mount = cgroup2Mount()): void {
  const units = configUnits(config);
  if (units.length === 0) return;
  const why =
    netns !== null
      ? `meshctl runs nft through \`ip netns exec ${netns}\`, which mounts a /sys without the cgroup hierarchy`
      : mount !== '/sys/fs/cgroup'
        ? `on this host the cgroup v2 hierarchy is ${mount === null ? 'not mounted' : `mounted at ${mount}`}, not at /sys/fs/cgroup`
        : null;
  if (why === null) return;
  const out = config.capture.outbound;
  const field = out.excludeUnits.length > 0 ? 'excludeUnits' : 'includeUnits';
  throw new MeshctlError(
    'CONFIG_INVALID',
    `capture.outbound.${field} (${units.map((u) => u.name).join(', ')}) cannot be honoured by the nftables backend here: nft looks a unit's cgroup path up under /sys/fs/cgroup itself, and ${why}`,
    "use capture.backend: iptables-nft or iptables-legacy (the kernel resolves `-m cgroup --path` itself), or the nftables backend in the host namespace of a host with the unified cgroup hierarchy (systemd's default)",
  );
}

/**
 * An nft listing with each `socket cgroupv2 level N <id>` that nft could only show by its id (it runs through
 * `ip netns exec`, whose /sys has no cgroup hierarchy) written with the path of the cgroup that has that id now, as
 * nft shows it where it can see the hierarchy. An id no cgroup has any more (a unit restarted) stays an id: its rule
 * matches nothing, and explain says so.
 */
export function resolveNftCgroupIds(listing: string, mount = cgroup2Mount()): string {
  if (mount === null || !/socket cgroupv2 level \d+ (?:!= )?\d+/.test(listing)) return listing;
  const byLevel = new Map<number, Map<number, string>>();
  const pathsAt = (level: number): Map<number, string> => {
    let found = byLevel.get(level);
    if (!found) byLevel.set(level, (found = cgroupsAtLevel(mount, level)));
    return found;
  };
  return listing.replace(
    /socket cgroupv2 level (\d+) (!= )?(\d+)\b/g,
    (whole, level: string, not: string | undefined, id: string) => {
      const path = pathsAt(Number(level)).get(Number(id));
      return path === undefined ? whole : `socket cgroupv2 level ${level} ${not ?? ''}"${path}"`;
    },
  );
}

/** Every cgroup exactly `level` below the root: inode (the cgroup id) → path without the leading slash. */
function cgroupsAtLevel(mount: string, level: number): Map<number, string> {
  const found = new Map<number, string>();
  const walk = (relative: string, depth: number): void => {
    let entries: Dirent[];
    try {
      entries = readdirSync(join(mount, relative), { withFileTypes: true });
    } catch {
      return; // removed meanwhile
    }
    for (const entry of entries.filter((e) => e.isDirectory())) {
      const path = relative === '' ? entry.name : `${relative}/${entry.name}`;
      if (depth + 1 < level) walk(path, depth + 1);
      else {
        const id = cgroupId(path, mount);
        if (id !== null) found.set(id, path);
      }
    }
  };
  if (level > 0) walk('', 0);
  return found;
}

/**
 * The kernel's rules as they match now: a unit rule loaded for a cgroup the unit has since left (it restarted without
 * a refresh) matches only that old, empty cgroup, so explain sees it by the id it was loaded for (which no socket is
 * in) instead of the path; one note per stale unit says so.
 */
export function withStaleUnits(
  plan: ExplainPlan,
  loaded: readonly UnitCgroupState[],
  config: Config,
): { plan: ExplainPlan; notes: string[] } {
  const stale = compareUnits(loaded, readUnitCgroups(configUnits(config))).filter((u) => u.step === 'stale');
  const oldIds = new Map(stale.filter((u) => u.loadedId !== null).map((u) => [u.cgroup, u.loadedId!]));
  const notes = stale.map(
    (u) => `unit ${describeUnit(u)}: a connection from it now meets rules that no longer match it`,
  );
  if (oldIds.size === 0) return { plan, notes };
  const families = plan.families.map((f) => ({
    ...f,
    rules: f.rules.map((r) => ({
      ...r,
      matches: r.matches.map((m): Match => {
        if (m.kind !== 'cgroup' || m.id !== undefined) return m;
        const id = oldIds.get(m.path);
        return id === undefined ? m : { ...m, id };
      }),
    })),
  }));
  return { plan: { ...plan, families }, notes };
}
