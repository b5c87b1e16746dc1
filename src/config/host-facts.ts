// Read-only facts about the host that config resolution needs: the user/group database and the SSH ports.
// Injected into loadConfig so tests can supply their own; the defaults read the real system.
import { execFileSync } from 'node:child_process';
import { readFileSync, readdirSync, readlinkSync, statSync } from 'node:fs';
import { netnsPath } from '../values/netns.js';
import type { SshPortsSource } from './types.js';
import type { UnitCgroupResolver } from './unit-cgroups.js';

export interface UserEntry {
  readonly name: string;
  readonly uid: number;
  readonly gid: number;
}
export interface GroupEntry {
  readonly name: string;
  readonly gid: number;
}

export interface UserDb {
  /** Looks up by name or numeric id; null when absent. */
  user(ref: string | number): UserEntry | null;
  group(ref: string | number): GroupEntry | null;
}

export interface SshPorts {
  readonly ports: readonly number[];
  readonly source: Exclude<SshPortsSource, 'config'>;
}

export interface HostFacts {
  readonly userDb: UserDb;
  /** SSH ports as seen in the network namespace the rules go to (`ip netns` name; null: the current one). */
  detectSshPorts(netns?: string | null): SshPorts;
  /** Where a systemd unit's cgroup is (absent: ask systemctl, ./unit-cgroups.ts). */
  readonly unitCgroup?: UnitCgroupResolver;
}

function getent(database: 'passwd' | 'group', key: string): string[] | null {
  try {
    const line = execFileSync('getent', [database, key], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });
    const first = line.split('\n')[0];
    return first ? first.split(':') : null;
  } catch {
    return null; // getent exits 2 when the key is absent
  }
}

/** The system database through getent, so NSS sources (LDAP, sssd, systemd-userdb) count too. */
export const systemUserDb: UserDb = {
  user(ref) {
    const fields = getent('passwd', String(ref));
    if (!fields || fields.length < 4) return null;
    return { name: fields[0]!, uid: Number(fields[2]), gid: Number(fields[3]) };
  },
  group(ref) {
    const fields = getent('group', String(ref));
    if (!fields || fields.length < 3) return null;
    return { name: fields[0]!, gid: Number(fields[2]) };
  },
};

const TCP_LISTEN = '0A';

/**
 * The listening sockets in /proc/net/tcp or tcp6 text: socket inode → local port. Columns: `sl local_address
 * rem_address st … uid timeout inode`, addresses as hex `ADDR:PORT`, state 0A = LISTEN.
 */
export function parseListeningSockets(text: string): Map<string, number> {
  const inodeToPort = new Map<string, number>();
  for (const line of text.split('\n').slice(1)) {
    const cols = line.trim().split(/\s+/);
    if (cols.length < 10 || cols[3] !== TCP_LISTEN) continue;
    const port = parseInt(cols[1]!.split(':')[1] ?? '', 16);
    if (Number.isInteger(port) && port > 0 && cols[9] !== '0') inodeToPort.set(cols[9]!, port);
  }
  return inodeToPort;
}

function readOr<T>(read: () => T, fallback: T): T {
  try {
    return read();
  } catch {
    return fallback; // the process exited meanwhile, or /proc hides it from a non-root caller
  }
}

/**
 * Local ports of listening TCP sockets, in the given network namespace (the current one for null), whose inode an
 * sshd process holds. /proc/PID/net shows the sockets of PID's namespace, so the table is read through a process
 * inside the target; socket inodes are unique across namespaces and the pid namespace is shared, so /proc/PID/fd
 * names the owner wherever it runs.
 */
function sshdListeningPorts(netns: string | null): number[] {
  const target = readOr(
    () => (netns === null ? readlinkSync('/proc/self/ns/net') : `net:[${statSync(netnsPath(netns)).ino}]`),
    null,
  );
  if (target === null) return [];
  const pids = readdirSync('/proc').filter((d) => /^\d+$/.test(d));
  const sshd = pids.filter((pid) => readOr(() => readFileSync(`/proc/${pid}/comm`, 'utf8').trim(), '') === 'sshd');
  if (sshd.length === 0) return [];
  const member =
    netns === null
      ? 'self'
      : [...sshd, ...pids].find((pid) => readOr(() => readlinkSync(`/proc/${pid}/ns/net`), '') === target);
  if (member === undefined) return [];
  const inodeToPort = new Map<string, number>();
  for (const file of ['tcp', 'tcp6']) {
    for (const [inode, port] of parseListeningSockets(
      readOr(() => readFileSync(`/proc/${member}/net/${file}`, 'utf8'), ''),
    ))
      inodeToPort.set(inode, port);
  }
  if (inodeToPort.size === 0) return [];
  const ports = new Set<number>();
  for (const pid of sshd) {
    for (const fd of readOr(() => readdirSync(`/proc/${pid}/fd`), [] as string[])) {
      const m = /^socket:\[(\d+)\]$/.exec(readOr(() => readlinkSync(`/proc/${pid}/fd/${fd}`), ''));
      const port = m ? inodeToPort.get(m[1]!) : undefined;
      if (port !== undefined) ports.add(port);
    }
  }
  return [...ports].sort((a, b) => a - b);
}

function sshdConfigPorts(path = '/etc/ssh/sshd_config'): number[] {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch {
    return [];
  }
  const ports = new Set<number>();
  for (const line of text.split('\n')) {
    const m = /^\s*Port\s+(\d+)\s*$/i.exec(line);
    if (m) ports.add(Number(m[1]));
  }
  return [...ports].sort((a, b) => a - b);
}

/** sshd's listening ports in `netns` (null: the current namespace), else the Port lines of sshd_config, else 22. */
export function detectSshPorts(netns: string | null = null): SshPorts {
  const listening = sshdListeningPorts(netns);
  if (listening.length > 0) return { ports: listening, source: 'sshd-listening' };
  const configured = sshdConfigPorts();
  if (configured.length > 0) return { ports: configured, source: 'sshd-config' };
  return { ports: [22], source: 'default' };
}

export const systemHostFacts: HostFacts = { userDb: systemUserDb, detectSshPorts };
