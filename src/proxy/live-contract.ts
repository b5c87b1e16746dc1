// What the running proxy is, read from the kernel rather than from its config: the uid/gid its sockets are
// owned by (the file-system ids of each process, which netfilter's owner match sees) and the TCP/UDP sockets its
// processes listen on, per family. Served at GET /contract and compared by `meshctl install` and `status` with
// the contract the rules need (src/config/contract.ts). The parsers are pure; reading /proc is the thin shell.
import { readFileSync, readdirSync, readlinkSync } from 'node:fs';
import type { Family } from '../values/ip.js';
import type { ListeningPorts } from '../config/contract.js';

/** The real, effective, saved and file-system ids of a `Uid:` or `Gid:` line of /proc/PID/status. */
export function parseStatusIds(
  status: string,
  key: 'Uid' | 'Gid',
): { real: number; effective: number; fs: number } | null {
  const line = status.split('\n').find((l) => l.startsWith(`${key}:`));
  const ids = line
    ?.slice(key.length + 1)
    .trim()
    .split(/\s+/)
    .map(Number);
  if (!ids || ids.length < 4 || ids.some((n) => !Number.isInteger(n))) return null;
  return { real: ids[0]!, effective: ids[1]!, fs: ids[3]! };
}

/** Socket inodes named by the `socket:[N]` links of a /proc/PID/fd listing. */
export function socketInodes(links: readonly string[]): Set<number> {
  const out = new Set<number>();
  for (const l of links) {
    const m = /^socket:\[(\d+)\]$/.exec(l);
    if (m) out.add(Number(m[1]));
  }
  return out;
}

/** TCP LISTEN (0A) or unconnected UDP (07) state in /proc/net/{tcp,udp}{,6}. */
const LISTENING_STATE = { tcp: '0A', udp: '07' } as const;

/**
 * Local ports of the listening sockets in a /proc/net/{tcp,udp}{,6} table whose inode is in `inodes`. A
 * dual-stack IPv6 socket (bound to `::` without V6ONLY) is reported as IPv6 only, as the kernel lists it.
 */
export function listeningPortsIn(table: string, protocol: 'tcp' | 'udp', inodes: ReadonlySet<number>): number[] {
  const ports = new Set<number>();
  for (const line of table.split('\n').slice(1)) {
    const f = line.trim().split(/\s+/);
    if (f.length < 10 || f[3] !== LISTENING_STATE[protocol]) continue;
    if (!inodes.has(Number(f[9]))) continue;
    const port = Number.parseInt(f[1]!.split(':')[1] ?? '', 16);
    if (Number.isInteger(port) && port > 0) ports.add(port);
  }
  return [...ports].sort((a, b) => a - b);
}

function readText(path: string): string {
  try {
    return readFileSync(path, 'utf8');
  } catch {
    return '';
  }
}

function fdLinks(pid: number | 'self'): string[] {
  let names: string[];
  try {
    names = readdirSync(`/proc/${pid}/fd`);
  } catch {
    return [];
  }
  const links: string[] = [];
  for (const n of names) {
    try {
      links.push(readlinkSync(`/proc/${pid}/fd/${n}`));
    } catch {
      // closed between the listing and the read
    }
  }
  return links;
}

export interface ProcessIds {
  readonly pid: number;
  readonly uid: number;
  readonly gid: number;
}

/** The file-system uid/gid of `pid` as the kernel sees them (null when the process is gone). */
export function readProcessIds(pid: number): ProcessIds | null {
  const status = readText(`/proc/${pid === process.pid ? 'self' : pid}/status`);
  const uid = parseStatusIds(status, 'Uid');
  const gid = parseStatusIds(status, 'Gid');
  return uid && gid ? { pid, uid: uid.fs, gid: gid.fs } : null;
}

/** The TCP and UDP ports that the sockets held by `pids` listen on, per family, from this network namespace. */
export function readListeningPorts(pids: readonly number[]): { tcp: ListeningPorts; udp: ListeningPorts } {
  const inodes = new Set<number>();
  for (const pid of pids) for (const i of socketInodes(fdLinks(pid === process.pid ? 'self' : pid))) inodes.add(i);
  const ports = (protocol: 'tcp' | 'udp', family: Family) =>
    listeningPortsIn(readText(`/proc/self/net/${protocol}${family === 'ipv6' ? '6' : ''}`), protocol, inodes);
  return {
    tcp: { ipv4: ports('tcp', 'ipv4'), ipv6: ports('tcp', 'ipv6') },
    udp: { ipv4: ports('udp', 'ipv4'), ipv6: ports('udp', 'ipv6') },
  };
}
