// Read-only facts about the host that config resolution needs: the user/group database and the SSH ports.
// Injected into loadConfig so tests can supply their own; the defaults read the real system.
import { execFileSync } from 'node:child_process';
import { readFileSync, readdirSync, readlinkSync } from 'node:fs';
import type { SshPortsSource } from './types.js';

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
  detectSshPorts(): SshPorts;
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

/** Local ports of listening TCP sockets whose inode belongs to a process named sshd. */
function sshdListeningPorts(): number[] {
  const inodeToPort = new Map<string, number>();
  for (const file of ['/proc/net/tcp', '/proc/net/tcp6']) {
    let text: string;
    try {
      text = readFileSync(file, 'utf8');
    } catch {
      continue;
    }
    for (const line of text.split('\n').slice(1)) {
      const cols = line.trim().split(/\s+/);
      if (cols.length < 10 || cols[3] !== TCP_LISTEN) continue;
      const port = parseInt(cols[1]!.split(':')[1] ?? '', 16);
      inodeToPort.set(cols[9]!, port);
    }
  }
  if (inodeToPort.size === 0) return [];
  const ports = new Set<number>();
  for (const pid of readdirSync('/proc').filter((d) => /^\d+$/.test(d))) {
    let comm: string;
    try {
      comm = readFileSync(`/proc/${pid}/comm`, 'utf8').trim();
    } catch {
      continue;
    }
    if (comm !== 'sshd') continue;
    let fds: string[];
    try {
      fds = readdirSync(`/proc/${pid}/fd`);
    } catch {
      continue;
    }
    for (const fd of fds) {
      try {
        const m = /^socket:\[(\d+)\]$/.exec(readlinkSync(`/proc/${pid}/fd/${fd}`));
        const port = m ? inodeToPort.get(m[1]!) : undefined;
        if (port !== undefined) ports.add(port);
      } catch {
        // fd closed meanwhile
      }
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

/** sshd's listening ports, else the Port lines of sshd_config, else 22. */
export function detectSshPorts(): SshPorts {
  const listening = sshdListeningPorts();
  if (listening.length > 0) return { ports: listening, source: 'sshd-listening' };
  const configured = sshdConfigPorts();
  if (configured.length > 0) return { ports: configured, source: 'sshd-config' };
  return { ports: [22], source: 'default' };
}

export const systemHostFacts: HostFacts = { userDb: systemUserDb, detectSshPorts };
