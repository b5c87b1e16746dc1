// A two-namespace lab for explain-vs-kernel tests: `host` (the rules under test, an observer standing in for the
// proxy's listeners and for local servers) and `peer` (remote servers, and the client for inbound flows), joined by
// veth; optionally a second link named wg0. Everything lives in namespaces the test creates and deletes.
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { execFileSync } from 'node:child_process';
import { createVethPair, deleteNs, sh } from './netns.js';
import type { ObserverSpec } from './kernel-observer.js';
import type { ClientResult, ClientSpec } from './kernel-client.js';

const here = (file: string) => fileURLToPath(new URL(file, import.meta.url));
const REGISTER = here('./kernel-ts-register.mjs');
const OBSERVER = here('./kernel-observer.ts');
const CLIENT = here('./kernel-client.ts');
const tsCache = mkdtempSync(join(tmpdir(), 'mg-tscache-'));
const childEnv = { ...process.env, MG_TS_CACHE: tsCache };

/** Transpiles the child scripts once, so concurrent children start from the cache instead of loading typescript. */
export function warmChildScripts(): void {
  for (const script of [OBSERVER, CLIENT])
    execFileSync(process.execPath, ['--import', REGISTER, script, '--warm'], { env: childEnv, stdio: 'pipe' });
}

export interface Lab {
  readonly host: string;
  readonly peer: string;
  /** The host's end of the main link, and the addresses on it. */
  readonly hostIf: string;
  readonly host4: string;
  readonly host6: string;
  readonly peer4: string;
  readonly peer6: string;
  /** The second link (host `wg0` ↔ peer `wg0p`), when requested. */
  readonly wg: { readonly host4: string; readonly peer4: string; readonly routed: readonly string[] } | null;
}

const ip = (ns: string, ...args: string[]) => sh('ip', ['-n', ns, ...args]);

/**
 * Creates host and peer (`<prefix>h`, `<prefix>p`) on subnet 10.<subnet>.0.0/24 + fd00:<subnet>::/64. The host routes
 * everything else through the peer; `remote` addresses are put on the peer's lo so they answer as real servers.
 * `wgRoutes` (IPv4 CIDRs) go through a second link named wg0 instead.
 */
export function createLab(
  prefix: string,
  subnet: number,
  remote: readonly string[],
  wgRoutes: readonly string[] = [],
): Lab {
  const host = `${prefix}h`;
  const peer = `${prefix}p`;
  const addrs = createVethPair(host, peer, subnet);
  const hostIf = `${host}-v`.slice(0, 15);
  ip(host, 'route', 'add', 'default', 'via', addrs.b4);
  ip(host, '-6', 'route', 'add', 'default', 'via', addrs.b6);
  // The observer standing in for the proxy runs as the proxy's user and still serves low ports.
  sh('ip', ['netns', 'exec', host, 'sysctl', '-q', '-w', 'net.ipv4.ip_unprivileged_port_start=0']);
  // The inbound passthrough source (::6) must exist on lo for the proxy to bind it; 127.0.0.6 is in 127/8 already.
  ip(host, '-6', 'addr', 'add', '::6/128', 'dev', 'lo');
  for (const address of remote)
    ip(
      peer,
      address.includes(':') ? '-6' : '-4',
      'addr',
      'add',
      `${address}/${address.includes(':') ? 128 : 32}`,
      'dev',
      'lo',
    );
  let wg: Lab['wg'] = null;
  if (wgRoutes.length > 0) {
    const w = { host4: `10.${subnet + 100}.0.1`, peer4: `10.${subnet + 100}.0.2` };
    // Created inside the host namespace (ip -n), the peer end moved straight into the peer namespace.
    ip(host, 'link', 'add', 'wg0', 'type', 'veth', 'peer', 'name', 'wg0p', 'netns', peer);
    ip(host, 'addr', 'add', `${w.host4}/24`, 'dev', 'wg0');
    ip(peer, 'addr', 'add', `${w.peer4}/24`, 'dev', 'wg0p');
    ip(host, 'link', 'set', 'wg0', 'up');
    ip(peer, 'link', 'set', 'wg0p', 'up');
    for (const cidr of wgRoutes) ip(host, 'route', 'add', cidr, 'via', w.peer4, 'dev', 'wg0');
    wg = { ...w, routed: wgRoutes };
  }
  return { host, peer, hostIf, host4: addrs.a4, host6: addrs.a6, peer4: addrs.b4, peer6: addrs.b6, wg };
}

export function destroyLab(lab: Pick<Lab, 'host' | 'peer'>): void {
  deleteNs(lab.host);
  deleteNs(lab.peer);
}

// Creates the TPROXY listening sockets (IP_TRANSPARENT / IPV6_TRANSPARENT need CAP_NET_ADMIN, which Node cannot set)
// and execs the observer with them as inherited fds; the observer then serves them like any listener.
const TRANSPARENT_LISTENERS = `
import os, socket, sys
port = int(sys.argv[1])
keep = []
for fam, addr in ((socket.AF_INET, '0.0.0.0'), (socket.AF_INET6, '::')):
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if fam == socket.AF_INET6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        s.setsockopt(socket.IPPROTO_IPV6, 75, 1)  # IPV6_TRANSPARENT
    else:
        s.setsockopt(socket.SOL_IP, 19, 1)  # IP_TRANSPARENT
    s.bind((addr, port))
    s.listen(128)
    s.set_inheritable(True)
    keep.append(s)
os.environ['MG_TRANSPARENT_FDS'] = ','.join(str(s.fileno()) for s in keep)
os.execvp(sys.argv[2], sys.argv[2:])
`;

export interface Observer {
  stop(): void;
}

/** Starts kernel-observer.ts in `ns` and resolves once every listener is up. */
export function startObserver(ns: string, spec: ObserverSpec): Promise<Observer> {
  const node = [process.execPath, '--import', REGISTER, OBSERVER, JSON.stringify(spec)];
  const args =
    spec.transparentPort !== undefined
      ? ['python3', '-c', TRANSPARENT_LISTENERS, String(spec.transparentPort), ...node]
      : node;
  const child = spawn('ip', ['netns', 'exec', ns, ...args], { env: childEnv, stdio: ['pipe', 'pipe', 'pipe'] });
  return new Promise((resolve, reject) => {
    let out = '';
    let err = '';
    const timer = setTimeout(() => fail(new Error(`observer in ${ns} not ready after 15 s: ${err}`)), 15_000);
    const fail = (error: Error) => {
      clearTimeout(timer);
      child.kill('SIGKILL');
      reject(error);
    };
    child.stderr!.on('data', (d: Buffer) => (err += d.toString()));
    child.stdout!.on('data', (d: Buffer) => {
      out += d.toString();
      if (out.includes('READY\n')) {
        clearTimeout(timer);
        resolve({ stop: () => stopChild(child) });
      }
    });
    child.on('exit', (code) => fail(new Error(`observer in ${ns} exited (${code}): ${err}`)));
  });
}

function stopChild(child: ChildProcess): void {
  child.removeAllListeners('exit');
  child.stdin?.end();
  child.kill('SIGTERM');
}

/** Runs kernel-client.ts in `ns` as root (it drops to spec.uid/gid itself) and returns one result per flow. */
export function runClient(ns: string, spec: ClientSpec): Promise<ClientResult[]> {
  const argv = ['ip', 'netns', 'exec', ns, process.execPath, '--import', REGISTER, CLIENT, JSON.stringify(spec)];
  // A unit's cgroup is joined first (children inherit it): inside `ip netns exec` /sys has no cgroup hierarchy.
  const [command, ...args] = spec.cgroupProcs
    ? ['sh', '-c', 'echo $$ > "$0" && exec "$@"', spec.cgroupProcs, ...argv]
    : argv;
  const child = spawn(command!, args, { env: childEnv, stdio: ['ignore', 'pipe', 'pipe'] });
  return new Promise((resolve, reject) => {
    let out = '';
    let err = '';
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`client in ${ns} (uid ${spec.uid}) did not finish in time: ${err}`));
    }, spec.timeoutMs + 15_000);
    child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr!.on('data', (d: Buffer) => (err += d.toString()));
    // 'close', not 'exit': stdout may still hold data when the process has exited.
    child.on('close', (code) => {
      clearTimeout(timer);
      if (code !== 0) return reject(new Error(`client in ${ns} (uid ${spec.uid}) exited ${code}: ${err}`));
      try {
        resolve(JSON.parse(out) as ClientResult[]);
      } catch (error) {
        reject(
          new Error(`client in ${ns} (uid ${spec.uid}) printed no JSON (${(error as Error).message}): ${out} ${err}`),
        );
      }
    });
  });
}
