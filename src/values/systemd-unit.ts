// systemd unit names and the cgroup v2 paths of their units. Pure; no I/O (the host lookup is
// src/config/unit-cgroups.ts).
//
// A unit name is `PREFIX[@INSTANCE].TYPE` (systemd.unit(5), src/basic/unit-name.c unit_name_is_valid): at most 255
// bytes, the characters `[A-Za-z0-9:_.\-]` plus one `@` between prefix and instance, a non-empty prefix and a type
// suffix. Only units that own a cgroup can be matched by one: services, sockets, mounts, swaps, scopes and slices
// (a template `app@.service` has no cgroup until instantiated).

export const CGROUP_UNIT_TYPES = ['service', 'socket', 'mount', 'swap', 'scope', 'slice'] as const;

const MAX_UNIT_NAME = 255;
// systemd also allows `\` (escapes such as `\x2d`); meshctl does not, so a name never needs quoting in a rule.
const UNIT_CHARS = /^[A-Za-z0-9:_.-]+$/;
const CHARS_PROBLEM =
  'holds a character meshctl does not accept in a unit name (letters, digits and ":_.-", and one "@"; no escapes)';

/** Why `name` is not the name of a unit that owns a cgroup, or null when it is. */
export function unitNameProblem(name: string): string | null {
  if (name.length === 0) return 'is empty';
  if (Buffer.byteLength(name) > MAX_UNIT_NAME) return `is longer than ${MAX_UNIT_NAME} bytes`;
  const dot = name.lastIndexOf('.');
  const type = dot < 0 ? '' : name.slice(dot + 1);
  if (!(CGROUP_UNIT_TYPES as readonly string[]).includes(type))
    return `does not end in a unit type that owns a cgroup (.${CGROUP_UNIT_TYPES.join(', .')})`;
  const stem = name.slice(0, dot);
  const at = stem.indexOf('@');
  const prefix = at < 0 ? stem : stem.slice(0, at);
  const instance = at < 0 ? null : stem.slice(at + 1);
  if (prefix.length === 0) return 'has an empty name before the type';
  if (!UNIT_CHARS.test(prefix)) return CHARS_PROBLEM;
  if (instance !== null) {
    if (instance.length === 0) return 'is a template (nothing after "@"): only an instance has a cgroup';
    if (!UNIT_CHARS.test(instance)) return CHARS_PROBLEM;
  }
  if (type === 'slice' && (prefix.startsWith('-') || prefix.endsWith('-') || prefix.includes('--')) && prefix !== '-')
    return 'is not a valid slice name (dashes separate its parents, so none may lead, trail or repeat)';
  return null;
}

/**
 * The cgroup path of a slice (systemd.slice(5): dashes name its parents): `-.slice` is the root (""),
 * `a-b.slice` is `/a.slice/a-b.slice`.
 */
export function slicePath(slice: string): string {
  const stem = slice.replace(/\.slice$/, '');
  if (stem === '-' || stem === '') return '';
  const parts = stem.split('-');
  return parts.map((_, i) => `/${parts.slice(0, i + 1).join('-')}.slice`).join('');
}

/** How deep a cgroup v2 path lies below the root: `/system.slice/app.service` is 2 (nft's `socket cgroupv2 level`). */
export function cgroupLevel(path: string): number {
  return path.split('/').filter(Boolean).length;
}

/** A cgroup v2 path in the one form meshctl keeps: a leading slash, no trailing or doubled slashes. */
export function normalCgroupPath(path: string): string {
  return `/${path.split('/').filter(Boolean).join('/')}`;
}

/** Whether a socket in cgroup `socket` is inside `path` (the cgroup itself or a descendant), as both backends match. */
export function cgroupWithin(socket: string, path: string): boolean {
  const s = normalCgroupPath(socket);
  const p = normalCgroupPath(path);
  return p === '/' || s === p || s.startsWith(`${p}/`);
}
