// The candidates measured on the same lab: direct (no rules, the physical limit), HAProxy at 1 and at 2 threads
// transparent behind the same iptables REDIRECT rules, and meshctl (capture installed by meshctl, `meshctl proxy`
// with the native SO_ORIGINAL_DST addon) at its default worker settings, with and without its access log.
import { execFileSync } from 'node:child_process';
import { chownSync, mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { DNS_NAMES, NOFILE, PORTS, holdEchoConnections, waitListening, type Lab } from './lab.js';
import { sleep, startProc, stopProc, treeUsage, type Proc, type TreeUsage } from './procs.js';
import { REPO_ROOT } from './tools.js';
import { proxyUnitEnvironment } from '../src/service/proxy-process.js';

export type CandidateName =
  | 'direct'
  | 'haproxy-1t'
  | 'haproxy-2t'
  | 'meshctl'
  | 'meshctl-log'
  | 'meshctl-policy100'
  | 'meshctl-node'
  // Two sidecars in a row (bench/pair.ts), on request only.
  | 'meshctl-mtls'
  | 'meshctl-pair'
  | 'haproxy-tls';
export const CANDIDATES: readonly CandidateName[] = ['direct', 'haproxy-1t', 'haproxy-2t', 'meshctl', 'meshctl-log'];
/** HAProxy's candidates and their `nbthread`. */
export const HAPROXY_THREADS: Readonly<Partial<Record<CandidateName, number>>> = { 'haproxy-1t': 1, 'haproxy-2t': 2 };
export const HAPROXY_CANDIDATES = Object.keys(HAPROXY_THREADS) as CandidateName[];
/** meshctl with its access log on (default settings, to a file in the run's scratch directory). */
export const ACCESS_LOG_CANDIDATE: CandidateName = 'meshctl-log';

export function isHaproxy(name: CandidateName): boolean {
  return HAPROXY_THREADS[name] !== undefined;
}
/**
 * meshctl with 100 services configured, the bench's own destinations among them (so every connection takes the
 * service path: registry lookup, balancer, lease): the "within 5 % of none" check. Opt-in for the smoke
 * test; part of the full run's default candidates.
 */
export const POLICY_CANDIDATE: CandidateName = 'meshctl-policy100';
/** meshctl relaying with Node streams (proxy.relay: node) instead of the addon's relay thread; on request only. */
export const NODE_RELAY_CANDIDATE: CandidateName = 'meshctl-node';
export const POLICY_SERVICES = 100;

/** The proxy runs as `nobody`; the capture rules exempt its uid and gid (loop prevention). */
export const PROXY_USER = { name: 'nobody', uid: 65534, gid: 65534 } as const;

/** What the bench needs from a running candidate. */
export interface RunningCandidate {
  readonly name: CandidateName;
  /** The lab the candidate runs on when it is not the bench's main lab (the two-sidecar candidates of bench/pair.ts). */
  readonly lab?: Lab;
  /** CPU and RSS of the proxy's processes (all workers/threads; both sidecars' for a pair); null for direct. */
  usage(): TreeUsage | null;
  /** The tail of the proxy's own output (empty for direct), for errors. */
  output(): string;
  /** meshctl-log: the access log file (the workloads count its lines per connection). */
  readonly accessLogFile?: string;
  stop(): Promise<void>;
}

export interface CandidateOptions {
  /** meshctl's `proxy.workers` (HAProxy-TLS's threads in the two-sidecar lab); null = meshctl's default ("auto"). */
  readonly workers: number | null;
  /** meshctl's access log: off by default so that both proxies do the same work (HAProxy logs nothing here). */
  readonly accessLog: boolean;
  /** Extra node flags for the meshctl proxy (e.g. --cpu-prof; cluster workers inherit them). */
  readonly nodeArgs?: readonly string[];
  readonly cwd?: string;
}

/**
 * `count` services: one per bench destination (the two echo, the HTTP and the iperf3 ports of the server, each its own only
 * endpoint, so traffic still reaches the same server), the rest on addresses nothing dials, spread over exact
 * addresses and CIDRs like a real registry.
 */
export function policyServices(serverAddr: string, count: number): Record<string, unknown>[] {
  const own = [PORTS.echo, PORTS.connect, PORTS.http, PORTS.iperf].map((port) => ({
    name: `bench-${port}`,
    addresses: [`${serverAddr}:${port}`],
    endpoints: [`${serverAddr}:${port}`],
  }));
  // The echo service also has a hostname: the DNS workload's mesh name (answered with the service's fixed address).
  own[0]!.addresses.push(`${DNS_NAMES.mesh}:${PORTS.echo}`);
  const others = Array.from({ length: count - own.length }, (_, i) => ({
    name: `svc-${i}`,
    addresses:
      i % 10 === 9
        ? [`10.${200 + (i % 50)}.${i}.0/24:${8000 + (i % 7)}`]
        : [`10.254.${i >> 8}.${i & 255}:${80 + (i % 3)}`],
    endpoints: [`10.253.${i >> 8}.${i & 255}:8080`, `10.253.${i >> 8}.${i & 255}:8081`],
  }));
  return [...own, ...others];
}

/** The raw config both proxies are measured with (and the capture rules are planned from). */
export function benchRawConfig(
  options: CandidateOptions,
  stateDir: string,
  services: readonly Record<string, unknown>[] = [],
  relay: 'native' | 'node' = 'native',
  dnsServer: string | null = null,
  accessLogFile: string | null = null,
): Record<string, unknown> {
  return {
    // DNS capture (the dns-32 workload), forwarding to the server namespace's DNS server.
    ...(dnsServer !== null
      ? { capture: { dns: { enabled: true } }, outbound: { resolver: { servers: [dnsServer] } } }
      : {}),
    proxy: {
      user: PROXY_USER.name,
      ...(options.workers !== null ? { workers: options.workers } : {}),
      accessLog: accessLogFile !== null ? { enabled: true, path: accessLogFile } : { enabled: options.accessLog },
      relay,
    },
    stateDir,
    ...(services.length > 0 ? { services } : {}),
  };
}

/**
 * Installs the capture rules in the lab's client namespace with the real CLI: `meshctl install --netns` (one
 * transaction, verified, with a ledger under the candidate's state directory). Throws with the CLI's output.
 */
export function installCapture(
  lab: Lab,
  configFile: string,
  proxy: 'meshctl' | 'other',
  ns: string = lab.clientNs,
): string {
  // install checks that a meshctl proxy answers on the admin port; HAProxy has none.
  const argv = [
    join(REPO_ROOT, 'bin', 'meshctl'),
    'install',
    '--netns',
    ns,
    '--config',
    configFile,
    ...(proxy === 'other' ? ['--without-proxy'] : []),
  ];
  try {
    return execFileSync(process.execPath, argv, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
  } catch (error) {
    const e = error as { stdout?: string; stderr?: string; message: string };
    throw new Error(`meshctl install --netns ${ns} failed: ${e.stderr || e.stdout || e.message}`);
  }
}

export function haproxyConfig(threads: number): string {
  // Each proxied connection is two fds; HAProxy refuses to start when maxconn needs more than RLIMIT_NOFILE.
  const maxconn = Math.floor(NOFILE / 2) - 100;
  return [
    '# HAProxy as a transparent L4 proxy behind iptables REDIRECT: `server 0.0.0.0:0` connects to the',
    '# original destination (SO_ORIGINAL_DST). It drops to nobody after binding, so the capture rules exempt it.',
    'global',
    `  nbthread ${threads}`,
    `  maxconn ${maxconn}`,
    `  uid ${PROXY_USER.uid}`,
    `  gid ${PROXY_USER.gid}`,
    'defaults',
    '  mode tcp',
    `  maxconn ${maxconn}`,
    '  timeout connect 10s',
    '  timeout client 1h',
    '  timeout server 1h',
    'frontend outbound',
    `  bind 0.0.0.0:15001`,
    '  default_backend original_dst',
    'backend original_dst',
    '  server original 0.0.0.0:0',
    '',
  ].join('\n');
}

const READY_PROBE =
  "fetch('http://127.0.0.1:15000/ready', { signal: AbortSignal.timeout(1000) }).then((r) => r.text()).then((t) => process.stdout.write(t), () => {})";

/** Polls the meshctl admin /ready endpoint inside the namespace (the lab's client namespace unless `ns` is given). */
export async function waitReady(lab: Lab, proc: Proc, timeoutMs = 20_000, ns: string = lab.clientNs): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (!proc.alive()) throw new Error(`meshctl proxy exited during start:\n${proc.output()}`);
    try {
      const out = execFileSync('ip', ['netns', 'exec', ns, process.execPath, '-e', READY_PROBE], {
        encoding: 'utf8',
        timeout: 5000,
      });
      if (out.startsWith('ready')) return;
    } catch {
      // not up yet
    }
    await sleep(100);
  }
  throw new Error(`meshctl proxy not ready after ${timeoutMs} ms:\n${proc.output()}`);
}

/** Starts `name` in a fresh client namespace. */
export async function startCandidate(
  name: CandidateName,
  lab: Lab,
  options: CandidateOptions,
): Promise<RunningCandidate> {
  if (name === 'meshctl-mtls' || name === 'meshctl-pair' || name === 'haproxy-tls')
    throw new Error(`${name} runs on the two-sidecar lab: start it with startPairCandidate (bench/pair.ts)`);
  await lab.freshClient();
  if (name === 'direct') {
    const direct: RunningCandidate = { name, usage: () => null, output: () => '', stop: async () => {} };
    await verifyIntercepted(lab, direct);
    return direct;
  }

  const dir = join(lab.options.workDir, name);
  mkdirSync(dir, { recursive: true });
  const stateDir = join(dir, 'state');
  // meshctl-log's access log: a file in the run's scratch directory (a directory the proxy user owns).
  let accessLogFile: string | null = null;
  if (name === ACCESS_LOG_CANDIDATE) {
    const logDir = join(dir, 'log');
    mkdirSync(logDir, { recursive: true });
    chownSync(logDir, PROXY_USER.uid, PROXY_USER.gid);
    accessLogFile = join(logDir, 'access.log');
  }
  const raw = benchRawConfig(
    options,
    stateDir,
    name === POLICY_CANDIDATE ? policyServices(lab.serverAddr, POLICY_SERVICES) : [],
    name === NODE_RELAY_CANDIDATE ? 'node' : 'native',
    lab.serverAddr,
    accessLogFile,
  );
  const configFile = join(dir, 'meshctl.json');
  writeFileSync(configFile, `${JSON.stringify(raw, null, 2)}\n`);
  const pin = lab.options.pin.proxy;

  let proc: Proc;
  const haproxyThreads = HAPROXY_THREADS[name];
  if (haproxyThreads !== undefined) {
    const cfg = join(dir, 'haproxy.cfg');
    writeFileSync(cfg, haproxyConfig(haproxyThreads));
    proc = startProc('haproxy', ['haproxy', '-f', cfg, '-db'], {
      ns: lab.clientNs,
      nofile: NOFILE,
      ...(pin ? { cpus: pin } : {}),
    });
  } else {
    proc = startProc(
      'meshctl proxy',
      [
        process.execPath,
        ...(options.nodeArgs ?? []),
        join(REPO_ROOT, 'bin', 'meshctl'),
        'proxy',
        '--config',
        configFile,
        '--log-level',
        'warn',
      ],
      {
        ns: lab.clientNs,
        nofile: NOFILE,
        user: PROXY_USER,
        // As shipped: the proxy unit's environment (malloc arenas, V8's thread pool), from the one source it has.
        env: proxyUnitEnvironment(process.env),
        ...(pin ? { cpus: pin } : {}),
        ...(options.cwd ? { cwd: options.cwd } : {}),
      },
    );
  }
  const running: RunningCandidate = {
    name,
    usage: () => treeUsage(proc.pid),
    output: () => proc.output(),
    ...(accessLogFile !== null ? { accessLogFile } : {}),
    stop: async () => {
      await stopProc(proc, 5000);
    },
  };
  try {
    if (haproxyThreads !== undefined) {
      await waitListening(lab.clientNs, 15001, proc);
      installCapture(lab, configFile, 'other');
    } else {
      await waitReady(lab, proc);
      installCapture(lab, configFile, 'meshctl');
    }
    await verifyIntercepted(lab, running);
    if (name === POLICY_CANDIDATE) verifyPolicyPath(lab);
  } catch (error) {
    // Never leave a proxy behind: the caller only stops candidates that started.
    await running.stop();
    throw error;
  }
  return running;
}

const STATS_PROBE =
  "fetch('http://127.0.0.1:15000/stats', { signal: AbortSignal.timeout(2000) }).then((r) => r.text()).then((t) => process.stdout.write(t))";

/**
 * For the policy variant: the proxy runs all the services, and the interception probe's connection to the echo
 * server went through the service path (matched `bench-<echo port>`), not passthrough.
 */
function verifyPolicyPath(lab: Lab): void {
  const stats = JSON.parse(
    execFileSync('ip', ['netns', 'exec', lab.clientNs, process.execPath, '-e', STATS_PROBE], {
      encoding: 'utf8',
      timeout: 5000,
    }),
  ) as { policy: { services: Record<string, { connections: number }> } };
  const services = Object.keys(stats.policy.services);
  const echo = stats.policy.services[`bench-${PORTS.echo}`];
  if (services.length !== POLICY_SERVICES || !echo || echo.connections < 1) {
    throw new Error(
      `${POLICY_CANDIDATE}: expected ${POLICY_SERVICES} services with the echo probe routed through bench-${PORTS.echo}; /stats has ${services.length} services, bench-${PORTS.echo}: ${JSON.stringify(echo)}`,
    );
  }
}

/**
 * Proves the candidate is really in the path: opens one connection from the client namespace to the echo
 * server and looks at who owns the server-facing socket (`ss -p`). Direct: the load generator. Proxies: one of
 * the proxy's processes, while the load generator's socket is redirected to :15001.
 */
export async function verifyIntercepted(lab: Lab, candidate: RunningCandidate): Promise<void> {
  const hold = await holdEchoConnections(lab, 1, `interception probe for ${candidate.name}`, 10_000);
  try {
    const ss = execFileSync(
      'ip',
      ['netns', 'exec', lab.clientNs, 'ss', '-Htnp', 'state', 'established', 'dst', `${lab.serverAddr}:${PORTS.echo}`],
      { encoding: 'utf8' },
    );
    const owners = [...ss.matchAll(/pid=(\d+)/g)].map((m) => Number(m[1]));
    const proxyPids = candidate.usage()?.pids ?? [];
    // REDIRECT is invisible to the client socket (it still names the server as its peer), so through a proxy ss
    // lists two sockets: the load generator's and the proxy's own upstream connection.
    const expected =
      candidate.name === 'direct' ? [hold.pid] : [hold.pid, owners.find((p) => proxyPids.includes(p)) ?? -1];
    if (owners.length !== expected.length || !expected.every((p) => owners.includes(p))) {
      const who =
        candidate.name === 'direct'
          ? `only the load generator (pid ${hold.pid})`
          : `the load generator (pid ${hold.pid}) and the proxy (pids ${proxyPids.join(', ')})`;
      throw new Error(`${candidate.name}: expected connections to the echo server from ${who}; ss shows:\n${ss}`);
    }
  } finally {
    hold.child.stdin?.end();
    await stopProc(hold, 2000);
  }
}
