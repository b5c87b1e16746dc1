// Network namespace names as `ip netns` keeps them: the rules for a plain name, its path under /run/netns, and
// the check that it exists (the one read of the host here: a stat of that path).
import { existsSync, statfsSync } from 'node:fs';
import { MeshctlError } from '../errors.js';

/** The path `ip netns` keeps a named namespace under. */
export function netnsPath(name: string): string {
  return `/run/netns/${name}`;
}

/**
 * Throws CONFIG_INVALID unless `name` is a plain namespace name: one `ip netns add` accepts (no "/", not "." or
 * "..", at most NAME_MAX bytes) and that stays one path component under /run/netns and the state directory, one
 * argument to `ip`, and one word in a systemd unit's command line. `flag` names where the value came from.
 */
export function assertNetnsName(name: string, flag = '--netns'): void {
  const problem =
    name === ''
      ? 'it is empty'
      : name === '.' || name === '..'
        ? `"${name}" names a directory, not a namespace`
        : name.includes('/')
          ? 'it contains "/"'
          : Buffer.byteLength(name) > 255
            ? `it is ${Buffer.byteLength(name)} bytes long (at most 255)`
            : name.startsWith('-')
              ? 'it starts with "-" (ip would read it as an option)'
              : /[^A-Za-z0-9_.@+:-]/.test(name)
                ? `it contains ${JSON.stringify(/[^A-Za-z0-9_.@+:-]/.exec(name)![0])}`
                : null;
  if (problem !== null) {
    throw new MeshctlError(
      'CONFIG_INVALID',
      `${flag} ${JSON.stringify(name)} is not a network namespace name: ${problem}`,
      'give the name as `ip netns list` shows it: letters, digits and _ . - @ + : (not "." or "..", no "/", not starting with "-")',
    );
  }
}

/** Throws CONFIG_INVALID for a malformed name (assertNetnsName), NETNS_NOT_FOUND unless `ip netns list` would show it. */
export function assertNetnsExists(name: string, flag = '--netns'): void {
  assertNetnsName(name, flag);
  if (!existsSync(netnsPath(name))) {
    throw new MeshctlError(
      'NETNS_NOT_FOUND',
      `network namespace "${name}" (from ${flag}) does not exist: ${netnsPath(name)} is missing`,
      'list namespaces with `ip netns list`, or create it with `ip netns add NAME`',
    );
  }
  // `ip netns add` bind-mounts the namespace there (nsfs; procfs before Linux 3.19): a plain file of that name is
  // not a namespace, and `ip netns exec` would fail on it later, half-way through a command.
  let type = -1;
  try {
    type = statfsSync(netnsPath(name)).type;
  } catch {
    // unreadable: let `ip netns exec` say why
    return;
  }
  if (type !== NSFS_MAGIC && type !== PROC_SUPER_MAGIC) {
    throw new MeshctlError(
      'NETNS_NOT_FOUND',
      `network namespace "${name}" (from ${flag}) does not exist: ${netnsPath(name)} is a file, not a namespace mount`,
      `remove the stray file (\`rm ${netnsPath(name)}\`) or create the namespace with \`ip netns add ${name}\``,
    );
  }
}

/** statfs f_type of the namespace filesystem and of procfs (which held namespace files before Linux 3.19). */
const NSFS_MAGIC = 0x6e736673;
const PROC_SUPER_MAGIC = 0x9fa0;
