// The two-sidecar lab (issue 18, "Speed"): the load generator's connection crosses two proxies, sidecar A in the
// client namespace (behind the same capture rules as the single-sidecar candidates) and sidecar B in the server
// namespace, next to the servers. Three candidates:
//   meshctl-mtls  A tunnels to B's tunnel port (HTTP/2 CONNECT over TLS 1.3, both certificates from `meshctl ca`),
//                 B (mtls.inbound strict) connects to the local server;
//   meshctl-pair  the same two meshctl sidecars in plaintext: B takes A's connection through inbound capture;
//   haproxy-tls   two HAProxy instances: A originates TLS 1.3 with a client certificate (verify required) and sends
//                 the original destination in a PROXY v2 header, B terminates TLS 1.3 verifying A's certificate
//                 and connects to that destination in plaintext.
// Every run of a pair candidate gets a fresh lab of its own (both namespaces, servers restarted): B's capture rules
// and conntrack state never reach the single-sidecar candidates' server namespace, nor the next pair candidate.
import { execFileSync } from 'node:child_process';
import { chmodSync, chownSync, mkdirSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import {
  benchRawConfig,
  installCapture,
  PROXY_USER,
  waitReady,
  type CandidateName,
  type CandidateOptions,
  type RunningCandidate,
} from './candidates.js';
import { Lab, NOFILE, PORTS, holdEchoConnections, waitListening } from './lab.js';
import { startProc, stopProc, treeUsage, type Proc, type TreeUsage } from './procs.js';
import { REPO_ROOT } from './tools.js';
import { proxyUnitEnvironment } from '../src/service/proxy-process.js';

export type PairCandidateName = 'meshctl-mtls' | 'meshctl-pair' | 'haproxy-tls';
export const PAIR_CANDIDATES: readonly PairCandidateName[] = ['meshctl-mtls', 'meshctl-pair', 'haproxy-tls'];

export function isPairCandidate(name: CandidateName): name is PairCandidateName {
  return (PAIR_CANDIDATES as readonly string[]).includes(name);
}

/** HAProxy-TLS's threads per sidecar unless `--workers` says otherwise (meshctl's sidecars: its default, one process with a relay thread per core). */
export const PAIR_HAPROXY_THREADS = 2;

/** B's tunnel port: meshctl's default `mtls.tunnelPort`, and HAProxy B's TLS listener. */
export const TUNNEL_PORT = 15008;
export const TRUST_DOMAIN = 'bench.test';
export const SPIFFE_IDS = { a: `spiffe://${TRUST_DOMAIN}/sidecar-a`, b: `spiffe://${TRUST_DOMAIN}/sidecar-b` } as const;

/** The pair lab's namespaces: `<prefix>p-cli` and `<prefix>p-srv` (mb-b → mb-bp-cli, mb-bp-srv). */
export function pairPrefix(prefix: string): string {
  return `${prefix}p`;
}

interface SidecarIdentity {
  /** The three files of `meshctl ca issue`, owned by the proxy user (meshctl runs as nobody and reads them). */
  readonly certificate: string;
  readonly key: string;
  readonly bundle: string;
  /** Certificate then key in one file, for HAProxy's `crt` (read as root, before it drops to nobody). */
  readonly haproxyPem: string;
}

const identities = new Map<string, { a: SidecarIdentity; b: SidecarIdentity }>();

function meshctlCli(...args: string[]): string {
  try {
    return execFileSync(process.execPath, [join(REPO_ROOT, 'bin', 'meshctl'), ...args], {
      encoding: 'utf8',
      stdio: ['ignore', 'pipe', 'pipe'],
    });
  } catch (error) {
    const e = error as { stdout?: string; stderr?: string; message: string };
    throw new Error(`meshctl ${args.join(' ')} failed: ${e.stderr || e.stdout || e.message}`);
  }
}

/**
 * One CA (`meshctl ca init`, EC P-256) and one certificate per sidecar (`meshctl ca issue`, EC P-256, 24 h) per bench
 * run, under `workDir/pki`; both meshctl and HAProxy use the same files, so they do the same crypto.
 */
function sidecarIdentities(workDir: string): { a: SidecarIdentity; b: SidecarIdentity } {
  const known = identities.get(workDir);
  if (known) return known;
  const pki = join(workDir, 'pki');
  mkdirSync(pki, { recursive: true, mode: 0o755 });
  meshctlCli('ca', 'init', join(pki, 'ca'), '--trust-domain', TRUST_DOMAIN);
  const issue = (side: 'a' | 'b'): SidecarIdentity => {
    const out = join(pki, side);
    meshctlCli('ca', 'issue', '--ca', join(pki, 'ca'), '--id', SPIFFE_IDS[side], '--out', out);
    chmodSync(out, 0o755);
    for (const f of readdirSync(out)) {
      chownSync(join(out, f), PROXY_USER.uid, PROXY_USER.gid);
      chmodSync(join(out, f), f.includes('key') ? 0o600 : 0o644);
    }
    const files = {
      certificate: join(out, 'svid.pem'),
      key: join(out, 'svid_key.pem'),
      bundle: join(out, 'svid_bundle.pem'),
    };
    const haproxyPem = join(pki, `haproxy-${side}.pem`);
    writeFileSync(haproxyPem, readFileSync(files.certificate, 'utf8') + readFileSync(files.key, 'utf8'), {
      mode: 0o600,
    });
    return { ...files, haproxyPem };
  };
  const made = { a: issue('a'), b: issue('b') };
  identities.set(workDir, made);
  return made;
}

function haproxyGlobal(workers: number): string[] {
  const maxconn = Math.floor(NOFILE / 2) - 100;
  return [
    'global',
    `  nbthread ${workers}`,
    `  maxconn ${maxconn}`,
    `  uid ${PROXY_USER.uid}`,
    `  gid ${PROXY_USER.gid}`,
    'defaults',
    '  mode tcp',
    `  maxconn ${maxconn}`,
    '  timeout connect 10s',
    '  timeout client 1h',
    '  timeout server 1h',
  ];
}

/**
 * HAProxy A: transparent behind REDIRECT like the single-sidecar `haproxy` candidate, but its server is B's TLS
 * port: TLS 1.3 only, client certificate, B's certificate verified against the bundle; the original destination
 * (SO_ORIGINAL_DST of the captured connection) goes to B in a PROXY v2 header.
 */
export function haproxyTlsClientConfig(workers: number, serverAddr: string, id: SidecarIdentity): string {
  return [
    '# Sidecar A of haproxy-tls: captured plaintext in, TLS 1.3 with a client certificate out, to sidecar B.',
    ...haproxyGlobal(workers),
    'frontend outbound',
    '  bind 0.0.0.0:15001',
    '  default_backend sidecar_b',
    'backend sidecar_b',
    `  server b ${serverAddr}:${TUNNEL_PORT} ssl ssl-min-ver TLSv1.3 crt ${id.haproxyPem} ca-file ${id.bundle} verify required send-proxy-v2`,
    '',
  ].join('\n');
}

/** HAProxy B: terminates TLS 1.3 requiring and verifying A's certificate, then connects to the PROXY header's destination. */
export function haproxyTlsServerConfig(workers: number, id: SidecarIdentity): string {
  return [
    '# Sidecar B of haproxy-tls: TLS 1.3 in (client certificate required), plaintext to the destination A sent.',
    ...haproxyGlobal(workers),
    'frontend tunnel',
    `  bind 0.0.0.0:${TUNNEL_PORT} accept-proxy ssl ssl-min-ver TLSv1.3 crt ${id.haproxyPem} ca-file ${id.bundle} verify required`,
    '  default_backend original_dst',
    'backend original_dst',
    '  server original 0.0.0.0:0',
    '',
  ].join('\n');
}

/** The meshctl config of sidecar A or B for `name` (plaintext pair, or mTLS: A tunnels to B, B strict). */
export function pairMeshctlConfig(
  name: 'meshctl-mtls' | 'meshctl-pair',
  side: 'a' | 'b',
  options: CandidateOptions,
  stateDir: string,
  serverAddr: string,
  id: SidecarIdentity | null,
): Record<string, unknown> {
  const raw = benchRawConfig(options, stateDir);
  if (name === 'meshctl-pair') return raw;
  if (!id) throw new Error(`${name}: sidecar ${side} needs an identity`);
  const identity = { certificate: id.certificate, key: id.key, bundle: id.bundle };
  return {
    ...raw,
    mtls:
      side === 'a'
        ? { identity, peers: [`${serverAddr}/32`] } // the server's host is a mesh member: its connections are tunneled
        : { identity, inbound: 'strict' },
  };
}

function sumUsage(a: TreeUsage, b: TreeUsage): TreeUsage {
  return {
    cpuSeconds: a.cpuSeconds + b.cpuSeconds,
    rssBytes: a.rssBytes + b.rssBytes,
    pids: [...a.pids, ...b.pids],
    threads: a.threads + b.threads,
  };
}

function startMeshctl(
  label: string,
  ns: string,
  configFile: string,
  options: CandidateOptions,
  pin: string | undefined,
): Proc {
  return startProc(
    label,
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
      ns,
      nofile: NOFILE,
      user: PROXY_USER,
      // As shipped: the proxy unit's environment (malloc arenas, V8's thread pool), from the one source it has.
      env: proxyUnitEnvironment(process.env),
      ...(pin ? { cpus: pin } : {}),
      ...(options.cwd ? { cwd: options.cwd } : {}),
    },
  );
}

/**
 * Starts a pair candidate on a fresh two-sidecar lab (same addresses, pinning and tools as `mainLab`, namespaces
 * `<prefix>p-*`): B first (its capture rules, or its TLS listener), then A behind the client namespace's capture.
 * The returned candidate carries its lab (the workloads run there) and tears it down on stop().
 */
export async function startPairCandidate(
  name: PairCandidateName,
  mainLab: Lab,
  options: CandidateOptions,
): Promise<RunningCandidate> {
  const workDir = mainLab.options.workDir;
  const ids = name === 'meshctl-pair' ? null : sidecarIdentities(workDir);
  const dir = join(workDir, name);
  mkdirSync(dir, { recursive: true });
  const lab = await Lab.create({
    ...mainLab.options,
    prefix: pairPrefix(mainLab.options.prefix),
    workDir: join(workDir, 'pair-lab'),
  });
  // Sidecar B runs beside the server and closes its legs to the app first: the server namespace keeps no TIME_WAIT
  // (Lab.create tunes both namespaces, Lab.tuneForChurn), else B's bind() to 127.0.0.6 searches ever longer for a port.
  const procs: { a: Proc | null; b: Proc | null } = { a: null, b: null };
  const usageOf = (p: Proc | null) => (p ? treeUsage(p.pid) : { cpuSeconds: 0, rssBytes: 0, pids: [], threads: 0 });
  const running: RunningCandidate = {
    name,
    lab,
    usage: () => sumUsage(usageOf(procs.a), usageOf(procs.b)),
    output: () =>
      [procs.a, procs.b]
        .filter((p): p is Proc => p !== null)
        .map((p) => `${p.name}:\n${p.output()}`)
        .join('\n'),
    stop: async () => {
      if (procs.a) await stopProc(procs.a, 5000);
      if (procs.b) await stopProc(procs.b, 5000);
      await lab.destroy();
    },
  };
  const pin = lab.options.pin.proxy;
  try {
    if (name === 'haproxy-tls') {
      const cfgB = join(dir, 'haproxy-b.cfg');
      writeFileSync(cfgB, haproxyTlsServerConfig(options.workers ?? PAIR_HAPROXY_THREADS, ids!.b));
      procs.b = startProc('haproxy B', ['haproxy', '-f', cfgB, '-db'], {
        ns: lab.serverNs,
        nofile: NOFILE,
        ...(pin ? { cpus: pin } : {}),
      });
      await waitListening(lab.serverNs, TUNNEL_PORT, procs.b);
      const cfgA = join(dir, 'haproxy-a.cfg');
      writeFileSync(cfgA, haproxyTlsClientConfig(options.workers ?? PAIR_HAPROXY_THREADS, lab.serverAddr, ids!.a));
      procs.a = startProc('haproxy A', ['haproxy', '-f', cfgA, '-db'], {
        ns: lab.clientNs,
        nofile: NOFILE,
        ...(pin ? { cpus: pin } : {}),
      });
      await waitListening(lab.clientNs, 15001, procs.a);
      // The capture rules are planned from a meshctl config (the same one the single-sidecar candidates use).
      const captureConfig = join(dir, 'capture-a.json');
      writeFileSync(captureConfig, `${JSON.stringify(benchRawConfig(options, join(dir, 'state-a')), null, 2)}\n`);
      installCapture(lab, captureConfig, 'other');
    } else {
      const config = (side: 'a' | 'b') => {
        const file = join(dir, `meshctl-${side}.json`);
        const raw = pairMeshctlConfig(
          name,
          side,
          options,
          join(dir, `state-${side}`),
          lab.serverAddr,
          ids?.[side] ?? null,
        );
        writeFileSync(file, `${JSON.stringify(raw, null, 2)}\n`);
        return file;
      };
      const configB = config('b');
      procs.b = startMeshctl('meshctl proxy B', lab.serverNs, configB, options, pin);
      await waitReady(lab, procs.b, 20_000, lab.serverNs);
      installCapture(lab, configB, 'meshctl', lab.serverNs);
      const configA = config('a');
      procs.a = startMeshctl('meshctl proxy A', lab.clientNs, configA, options, pin);
      await waitReady(lab, procs.a, 20_000, lab.clientNs);
      installCapture(lab, configA, 'meshctl', lab.clientNs);
    }
    await verifyPairPath(lab, running, procs.a, procs.b);
  } catch (error) {
    await running.stop();
    throw error;
  }
  return running;
}

interface SsSocket {
  readonly local: string;
  readonly peer: string;
  readonly pids: number[];
}

/** Established TCP sockets in `ns` (`ss -Htnp state established`), with their owners. */
function established(ns: string): SsSocket[] {
  const out = execFileSync('ip', ['netns', 'exec', ns, 'ss', '-Htnp', 'state', 'established'], { encoding: 'utf8' });
  return out
    .split('\n')
    .filter((l) => l.trim() !== '')
    .map((l) => {
      const cols = l.trim().split(/\s+/);
      // Recv-Q Send-Q Local Peer [Process]: the state column is left out under a state filter.
      return {
        local: cols[2] ?? '',
        peer: cols[3] ?? '',
        pids: [...l.matchAll(/pid=(\d+)/g)].map((m) => Number(m[1])),
      };
    });
}

const portOf = (addr: string) => Number(addr.slice(addr.lastIndexOf(':') + 1));
const hostOf = (addr: string) => addr.slice(0, addr.lastIndexOf(':'));

/**
 * Proves both sidecars are in the path: one connection from the client namespace to the echo server, then
 *   client namespace: the generator's socket (to the echo port) and one of A's (to B's tunnel port for the TLS
 *     candidates, to the echo port for the plaintext pair — which B's inbound capture takes);
 *   server namespace: one of B's sockets to the echo port, and no echo-server socket whose peer is the client host
 *     (the server only ever sees B).
 */
async function verifyPairPath(lab: Lab, candidate: RunningCandidate, a: Proc | null, b: Proc | null): Promise<void> {
  if (!a || !b) throw new Error(`${candidate.name}: both sidecars must run before the path check`);
  const hold = await holdEchoConnections(lab, 1, `interception probe for ${candidate.name}`, 10_000, () =>
    candidate.output(),
  );
  try {
    const aPids = treeUsage(a.pid).pids;
    const bPids = treeUsage(b.pid).pids;
    const upstreamPort = candidate.name === 'meshctl-pair' ? PORTS.echo : TUNNEL_PORT;
    const client = established(lab.clientNs).filter((s) => hostOf(s.peer) === lab.serverAddr);
    const generator = client.some((s) => s.pids.includes(hold.pid) && portOf(s.peer) === PORTS.echo);
    const viaA = client.some((s) => s.pids.some((p) => aPids.includes(p)) && portOf(s.peer) === upstreamPort);
    const server = established(lab.serverNs);
    const viaB = server.some((s) => s.pids.some((p) => bPids.includes(p)) && portOf(s.peer) === PORTS.echo);
    const clientHost = [lab.clientAddr, lab.generatorAddr];
    const bypass = server.filter((s) => portOf(s.local) === PORTS.echo && clientHost.includes(hostOf(s.peer)));
    if (!generator || !viaA || !viaB || bypass.length > 0) {
      const show = (ss: SsSocket[]) => ss.map((s) => `  ${s.local} → ${s.peer} pids ${s.pids.join(',')}`).join('\n');
      throw new Error(
        `${candidate.name}: expected the generator (pid ${hold.pid}) → A (pids ${aPids.join(', ')}) → :${upstreamPort}, ` +
          `B (pids ${bPids.join(', ')}) → :${PORTS.echo}, and no echo-server socket from ${clientHost.join(' or ')}; ` +
          `generator ${generator}, A ${viaA}, B ${viaB}, bypass ${bypass.length}.\n` +
          `client namespace:\n${show(established(lab.clientNs))}\nserver namespace:\n${show(server)}`,
      );
    }
  } finally {
    hold.child.stdin?.end();
    await stopProc(hold, 2000);
  }
}
