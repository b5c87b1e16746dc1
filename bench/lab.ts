// The bench lab: a server namespace (echo server, nginx, iperf3) and a client namespace (load generators, capture
// rules, the proxy under test) joined by a veth pair. The client namespace is created afresh for every candidate,
// so no rule, conntrack entry or socket of one candidate is left when the next one is measured.
import { execFileSync } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { sleep, startProc, stopProc, type Proc } from './procs.js';
import { REPO_ROOT } from './tools.js';

/** CPU lists (taskset) per role; a role without a list is not pinned. */
export interface Pinning {
  readonly loadgen?: string;
  readonly servers?: string;
  readonly proxy?: string;
}

export interface LabOptions {
  /** Namespace and interface prefix (`mb-b` → `mb-b-cli`, `mb-b-srv`, veth `mb-b-c`/`mb-b-s`). */
  readonly prefix: string;
  /** Addresses are 10.<subnet>.0.1 (client) and 10.<subnet>.0.2 (server). */
  readonly subnet: number;
  /** Scratch directory for configs and logs. */
  readonly workDir: string;
  readonly pin: Pinning;
  readonly tcpbench: string;
}

/**
 * Server ports. `connect` is a second echo server of two processes (SO_REUSEPORT) for the connect workload: with
 * one, the echo server's single thread left 15-20 % of the 2 cores idle while direct ran connect + close.
 */
export const PORTS = { echo: 7000, connect: 7001, http: 8080, iperf: 5201 } as const;
/** Processes of the connect workload's echo server. */
export const CONNECT_SERVERS = 2;
/** The DNS workload's test server and load loop (plain JS helpers shared with the DNS integration tests). */
export const DNS_UPSTREAM = join(REPO_ROOT, 'test', 'helpers', 'dns-upstream.mjs');
export const DNS_LOAD = join(REPO_ROOT, 'test', 'helpers', 'dns-load.mjs');
/** A name the server namespace's DNS server answers (cached by meshctl), and the mesh name of meshctl-policy100. */
export const DNS_NAMES = { cached: 'www.bench.test', mesh: 'echo.mesh.internal' } as const;
/**
 * Every bench process gets this fd limit (5,000 held connections are 10,000 sockets in the proxy): 65,536, or the
 * hard limit when lower (without CAP_SYS_RESOURCE, as in some containers, root cannot raise it).
 */
export const NOFILE = Math.min(65536, hardNofile());

function hardNofile(): number {
  try {
    const n = Number(execFileSync('sh', ['-c', 'ulimit -Hn'], { encoding: 'utf8' }).trim());
    return Number.isFinite(n) && n > 0 ? n : 65536;
  } catch {
    return 65536;
  }
}

function ip(...args: string[]): string {
  return execFileSync('ip', args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
}

function tryIp(...args: string[]): void {
  try {
    ip(...args);
  } catch {
    // already gone
  }
}

export function nsExists(name: string): boolean {
  return ip('netns', 'list')
    .split('\n')
    .some((line) => line.split(' ')[0] === name);
}

/** How the load generators run: in the client namespace, with the lab's fd limit and their CPUs when pinned. */
export function loadgenOptions(lab: Lab): { ns: string; nofile: number; cpus?: string } {
  return { ns: lab.clientNs, nofile: NOFILE, ...(lab.options.pin.loadgen ? { cpus: lab.options.pin.loadgen } : {}) };
}

/**
 * Starts `tcpbench hold` with `n` connections to the echo server (from the generators' address) and waits until
 * each had its echo, so both legs are open through whatever is in the path. Stop it with its stdin closed and
 * stopProc. On failure (it exited, or `timeoutMs` passed) it is stopped and the error names `what` and its output,
 * plus `context()` when given (e.g. a proxy's own output).
 */
export async function holdEchoConnections(
  lab: Lab,
  n: number,
  what: string,
  timeoutMs: number,
  context: () => string = () => '',
): Promise<Proc> {
  const hold = startProc(
    'tcpbench hold',
    [
      lab.options.tcpbench,
      'hold',
      `host=${lab.serverAddr}`,
      `port=${PORTS.echo}`,
      `src=${lab.generatorAddr}`,
      `conns=${n}`,
      'size=64',
    ],
    { ...loadgenOptions(lab), stdin: 'pipe' },
  );
  const deadline = Date.now() + timeoutMs;
  while (!hold.output().includes(`"held":${n}`)) {
    if (!hold.alive() || Date.now() > deadline) {
      hold.child.stdin?.end();
      await stopProc(hold, 5000);
      throw new Error(
        `${what}: ${n} held connections not established within ${timeoutMs} ms:\n${hold.output()}\n${context()}`,
      );
    }
    await sleep(20);
  }
  return hold;
}

/** Polls `ss` inside `ns` until something listens on TCP `port`; throws after `timeoutMs`. */
export async function waitListening(ns: string, port: number, what: Proc | string, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    const out = ip('netns', 'exec', ns, 'ss', '-Hltn', `sport = :${port}`);
    if (out.trim() !== '') return;
    if (typeof what !== 'string' && !what.alive())
      throw new Error(`${what.name} exited before listening on :${port}:\n${what.output()}`);
    await sleep(50);
  }
  const detail = typeof what === 'string' ? what : `${what.name}:\n${what.output()}`;
  throw new Error(`nothing listens on :${port} in ${ns} after ${timeoutMs} ms (${detail})`);
}

export class Lab {
  readonly clientNs: string;
  readonly serverNs: string;
  readonly clientAddr: string;
  /**
   * The load generators' own source address (10.<subnet>.0.3, a second address of the client namespace; tcpbench
   * `src=`): the proxies connect upstream from clientAddr, so the generator's captured connections and the proxy's
   * upstream ones never share a port tuple (see tuneForChurn).
   */
  readonly generatorAddr: string;
  readonly serverAddr: string;
  private readonly vethClient: string;
  private readonly vethServer: string;
  private servers: Proc[] = [];

  private constructor(readonly options: LabOptions) {
    this.clientNs = `${options.prefix}-cli`;
    this.serverNs = `${options.prefix}-srv`;
    this.vethClient = `${options.prefix}-c`.slice(0, 15);
    this.vethServer = `${options.prefix}-s`.slice(0, 15);
    this.clientAddr = `10.${options.subnet}.0.1`;
    this.generatorAddr = `10.${options.subnet}.0.3`;
    this.serverAddr = `10.${options.subnet}.0.2`;
  }

  /** Creates both namespaces and starts the long-running servers (echo, nginx). Destroy it in a finally. */
  static async create(options: LabOptions): Promise<Lab> {
    const lab = new Lab(options);
    try {
      lab.removeNamespaces();
      ip('netns', 'add', lab.serverNs);
      ip('-n', lab.serverNs, 'link', 'set', 'lo', 'up');
      lab.tuneForChurn(lab.serverNs);
      await lab.freshClient();
      await lab.startServers();
    } catch (error) {
      await lab.destroy();
      throw error;
    }
    return lab;
  }

  /**
   * (Re)creates the client namespace and the veth pair: no rules, empty conntrack, and sysctls that let the
   * connect+close workload run for minutes without running out of ports or conntrack entries.
   */
  async freshClient(): Promise<void> {
    tryIp('netns', 'del', this.clientNs);
    // The kernel destroys a deleted namespace's devices asynchronously: wait for the server end of the old pair.
    const deadline = Date.now() + 10_000;
    while (this.serverHasVeth()) {
      if (Date.now() > deadline)
        throw new Error(`${this.vethServer} still exists in ${this.serverNs} 10 s after deleting ${this.clientNs}`);
      await sleep(20);
    }
    ip('netns', 'add', this.clientNs);
    ip(
      'link',
      'add',
      this.vethClient,
      'netns',
      this.clientNs,
      'type',
      'veth',
      'peer',
      'name',
      this.vethServer,
      'netns',
      this.serverNs,
    );
    ip('-n', this.clientNs, 'link', 'set', 'lo', 'up');
    ip('-n', this.clientNs, 'addr', 'add', `${this.clientAddr}/24`, 'dev', this.vethClient);
    ip('-n', this.clientNs, 'addr', 'add', `${this.generatorAddr}/24`, 'dev', this.vethClient); // secondary
    ip('-n', this.clientNs, 'link', 'set', this.vethClient, 'up');
    ip('-n', this.serverNs, 'addr', 'add', `${this.serverAddr}/24`, 'dev', this.vethServer);
    ip('-n', this.serverNs, 'link', 'set', this.vethServer, 'up');
    this.tuneForChurn(this.clientNs);
  }

  /**
   * Sysctls in `ns` (namespace-scoped: the root namespace is never touched) so that connection churn measures the
   * candidates, not the lab. Applied to every namespace of both labs, identically for every candidate:
   * - `tcp_max_tw_buckets=0`: a closed connection keeps no TIME_WAIT socket (the FIN handshake still runs; only the
   *   2×MSL state is dropped). Every connection of the lab goes from one address to one server port, so TIME_WAIT
   *   sockets pile up on one (source, destination, port) tuple: in the client namespace the generator's and the
   *   proxy's upstream sockets shared it (two legs per proxied connection), and connect() searched past ports whose
   *   TIME_WAIT is younger than the 1 s `tcp_tw_reuse` needs; in the two-sidecar lab sidecar B binds 127.0.0.6 before
   *   connecting to the app, a bind() that cannot reuse TIME_WAIT ports at all and scans the bind table (a third of
   *   B's CPU at 14k TIME_WAIT sockets, and the rate collapses as they accumulate). bench/notes.md has the evidence.
   *   Without TIME_WAIT a port comes back at once, while conntrack may still track its last connection as open (a
   *   FIN_WAIT2 orphan is dropped too): a new SYN on that tuple is then ignored by conntrack and takes the old
   *   connection's NAT binding. So no tuple may pass between a captured (REDIRECTed) connection and an uncaptured one:
   *   the generators connect from their own address (generatorAddr), the proxies from clientAddr, sidecar B from
   *   127.0.0.6; each of those only ever makes one kind.
   * - `tcp_tw_reuse=1` (in case a TIME_WAIT socket exists) and a wide local port range that avoids the proxy's ports
   *   15000-15008, with a start and an end of different parity (the kernel's connect() port search prefers that).
   * - conntrack entries of closed connections expire after 5 s (the capture's REDIRECT tracks every connection).
   */
  tuneForChurn(ns: string): void {
    const sysctl = (...settings: string[]) =>
      execFileSync('ip', ['netns', 'exec', ns, 'sysctl', '-qw', ...settings], { stdio: 'ignore' });
    sysctl('net.ipv4.tcp_max_tw_buckets=0', 'net.ipv4.tcp_tw_reuse=1', 'net.ipv4.ip_local_port_range=20000 64999');
    try {
      sysctl('net.netfilter.nf_conntrack_tcp_timeout_time_wait=5');
    } catch {
      // nf_conntrack is loaded lazily with the first nat rule; the default then applies (120 s).
    }
  }

  private serverHasVeth(): boolean {
    try {
      ip('-n', this.serverNs, 'link', 'show', this.vethServer);
      return true;
    } catch {
      return false;
    }
  }

  private async startServers(): Promise<void> {
    const { tcpbench, workDir, pin } = this.options;
    const echo = startProc('echo server', [tcpbench, 'serve', `port=${PORTS.echo}`], {
      ns: this.serverNs,
      nofile: NOFILE,
      ...(pin.servers ? { cpus: pin.servers } : {}),
    });
    this.servers.push(echo);
    await waitListening(this.serverNs, PORTS.echo, echo);
    const churn = startProc(
      'echo server (connect)',
      [tcpbench, 'serve', `port=${PORTS.connect}`, `threads=${CONNECT_SERVERS}`],
      { ns: this.serverNs, nofile: NOFILE, ...(pin.servers ? { cpus: pin.servers } : {}) },
    );
    this.servers.push(churn);
    await waitListening(this.serverNs, PORTS.connect, churn);

    const nginxDir = join(workDir, 'nginx');
    mkdirSync(join(nginxDir, 'logs'), { recursive: true });
    const conf = join(nginxDir, 'nginx.conf');
    writeFileSync(
      conf,
      [
        'daemon off;',
        'master_process on;',
        'worker_processes 1;',
        'user nobody nogroup;',
        `pid ${join(nginxDir, 'nginx.pid')};`,
        `error_log ${join(nginxDir, 'logs', 'error.log')} warn;`,
        `worker_rlimit_nofile ${NOFILE};`,
        `events { worker_connections ${Math.floor(NOFILE / 2)}; }`,
        'http {',
        '  access_log off;',
        `  client_body_temp_path ${nginxDir}/body; proxy_temp_path ${nginxDir}/proxy; fastcgi_temp_path ${nginxDir}/fcgi;`,
        `  uwsgi_temp_path ${nginxDir}/uwsgi; scgi_temp_path ${nginxDir}/scgi;`,
        '  keepalive_requests 100000000;',
        '  keepalive_timeout 300s;',
        '  server {',
        `    listen ${PORTS.http} reuseport backlog=4096;`,
        `    location / { default_type text/plain; return 200 "${'x'.repeat(63)}\\n"; }`,
        '  }',
        '}',
        '',
      ].join('\n'),
    );
    const nginx = startProc('nginx', ['nginx', '-p', nginxDir, '-c', conf, '-e', join(nginxDir, 'logs', 'error.log')], {
      ns: this.serverNs,
      nofile: NOFILE,
      ...(pin.servers ? { cpus: pin.servers } : {}),
    });
    this.servers.push(nginx);
    await waitListening(this.serverNs, PORTS.http, nginx);

    const zone = { names: { [DNS_NAMES.cached]: { ttl: 3600, A: ['192.0.2.10'] } }, negativeTtl: 300 };
    const dns = startProc('dns server', [process.execPath, DNS_UPSTREAM, '0.0.0.0', '53', JSON.stringify(zone)], {
      ns: this.serverNs,
      ...(pin.servers ? { cpus: pin.servers } : {}),
    });
    this.servers.push(dns);
    await waitListening(this.serverNs, 53, dns);
  }

  private removeNamespaces(): void {
    tryIp('netns', 'del', this.clientNs);
    tryIp('netns', 'del', this.serverNs);
  }

  /** Stops the servers and deletes both namespaces (which also removes the veth pair and every rule). */
  async destroy(): Promise<void> {
    await Promise.all(this.servers.map((p) => stopProc(p)));
    this.servers = [];
    this.removeNamespaces();
  }
}
