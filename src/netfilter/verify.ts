// `meshctl verify`: a live probe through the installed rules, with no proxy needed. verify listens on the proxy's
// ports itself (inside the namespace, through the probe agent), then connects as an ordinary uid to a TEST-NET
// address and checks that the connection arrives with the right SO_ORIGINAL_DST; connects as the proxy's uid and
// to an excluded port and checks that those go direct; and, given a peer namespace, checks inbound capture.
// What each probe should do is not hard-coded: explainFlow walks the installed plan for the same flow.
import type { Server, Socket } from 'node:net';
import type { CapturePlan, Family } from '../capture/model.js';
import { cidrText, formatIp, parseIp } from '../capture/ip.js';
import { explainFlow, type Explanation, type Flow, type HostContext } from '../capture/explain.js';
import type { Config } from '../config/types.js';
import { MeshctlError, isMeshctlError } from '../errors.js';
import { readOriginalDst } from '../proxy/original-dst.js';
import { createDriver } from './driver.js';
import { readLedger, type Ledger } from './ledger.js';
import { startProbeAgent, type ClientResult, type ProbeAgent } from './probe-agent.js';
import { recoverInterrupted } from './recovery.js';
import type { NetfilterRunner } from './runner.js';
import { assertNetnsExists } from './runner.js';
import { openScope, withScopeLock, type ScopeOptions } from './scope.js';

export interface VerifyOptions extends ScopeOptions {
  /** A namespace that can reach this one, to probe inbound capture from a peer. */
  readonly peerNetns?: string | null;
  /** The address of this namespace the peer connects to (default: its first global address of each family). */
  readonly peerTarget?: string | null;
  /** How long a probe waits for its connection (default 1000 ms). */
  readonly timeoutMs?: number;
}

export type ProbeStatus = 'pass' | 'fail' | 'skip';

export interface ProbeResult {
  readonly name: string;
  readonly family: Family;
  /** The flow, e.g. `uid 4242 → 192.0.2.10:80`. */
  readonly flow: string;
  /** What the installed plan does with it (explainFlow), e.g. `redirected to :15001 by meshctl:outbound-to-proxy`. */
  readonly expected: string;
  readonly status: ProbeStatus;
  readonly detail: string;
}

export interface VerifyReport {
  readonly ok: boolean;
  readonly installId: string;
  readonly backend: Ledger['backend'];
  readonly netns: string | null;
  readonly probes: readonly ProbeResult[];
  /** Drift of the rules against the installed plan (why a probe may have failed). */
  readonly drift: readonly string[];
}

const TEST_NET: Record<Family, readonly string[]> = { ipv4: ['192.0.2.10', '198.51.100.10', '203.0.113.10'], ipv6: ['2001:db8::10', '2001:db8:1::10'] };
const APP_IDS = [4242, 4343, 54321];
const PORTS = [80, 443, 8080, 5000, 9];
const MARKER = 'meshctl-verify';

interface Arrival {
  readonly listenerPort: number;
  readonly originalDst: string | null;
  readonly note: string | null;
}

interface NsFacts {
  readonly addresses: readonly { iface: string; address: string; family: Family }[];
  readonly ipv6Disabled: boolean;
}

async function nsFacts(runner: NetfilterRunner): Promise<NsFacts> {
  const shown = await runner.exec('ip', ['-o', 'addr', 'show']);
  const addresses = shown.stdout.split('\n').flatMap((line) => {
    const m = /^\d+:\s+(\S+)\s+(inet6?)\s+([0-9a-fA-F:.]+)\/\d+/.exec(line);
    return m ? [{ iface: m[1]!, address: m[3]!, family: (m[2] === 'inet' ? 'ipv4' : 'ipv6') as Family }] : [];
  });
  const v6 = await runner.exec('cat', ['/proc/sys/net/ipv6/conf/all/disable_ipv6']);
  return { addresses, ipv6Disabled: v6.exitCode !== 0 || v6.stdout.trim() === '1' };
}

async function routeGet(runner: NetfilterRunner, family: Family, address: string): Promise<{ interface: string; source: string } | { error: string }> {
  const result = await runner.exec('ip', [family === 'ipv4' ? '-4' : '-6', 'route', 'get', address]);
  if (result.exitCode !== 0) return { error: result.stderr.trim() || `exit ${result.exitCode}` };
  const dev = /\bdev\s+(\S+)/.exec(result.stdout)?.[1];
  const src = /\bsrc\s+(\S+)/.exec(result.stdout)?.[1];
  return dev ? { interface: dev, source: src ?? '' } : { error: `unexpected \`ip route get\` output: ${result.stdout.trim()}` };
}

/** The first address inside `cidr` (network + 1), for probing an excluded destination. */
function hostInside(cidrAddress: string, prefix: number): string | null {
  const ip = parseIp(cidrAddress);
  if (!ip) return null;
  const bits = ip.family === 'ipv4' ? 32 : 128;
  if (prefix >= bits) return formatIp(ip);
  return formatIp({ family: ip.family, value: ip.value + 1n });
}

function expectation(e: Explanation): string {
  return e.intercepted ? `${e.verdict} to :${e.toPort} (${e.reason.replace(/^\w+ to the proxy's port \d+ by /, '')})` : e.reason;
}

function hostPort(family: Family, address: string, port: number): string {
  return family === 'ipv6' ? `[${address}]:${port}` : `${address}:${port}`;
}

interface PlannedProbe {
  readonly name: string;
  readonly family: Family;
  readonly flow: string;
  readonly explanation: Explanation;
  readonly run: () => Promise<ClientResult>;
  readonly destination: string;
  readonly port: number;
}

/** Runs the probes. Returns the report (ok false when a probe failed). Throws NOT_INSTALLED, LOCKED, NETNS_NOT_FOUND. */
export async function verifyCapture(options: VerifyOptions): Promise<VerifyReport> {
  const scope = openScope(options);
  if (options.peerNetns) assertNetnsExists(options.peerNetns);
  const timeoutMs = options.timeoutMs ?? 1000;
  return withScopeLock(scope, 'verify', async () => {
    await recoverInterrupted(scope);
    const ledger = readLedger(scope.dir);
    if (ledger === null) {
      throw new MeshctlError('NOT_INSTALLED', `nothing is installed${scope.netns ? ` in namespace ${scope.netns}` : ''}, so there is nothing to verify`, 'run `meshctl install` first');
    }
    const { plan, config } = ledger.current;
    const driver = createDriver(ledger.backend, scope.runner, scope.log);
    const drift = driver.drift(await driver.read(), plan).filter((d) => !d.inSync).flatMap((d) => [
      ...d.missingChains.map((c) => `${d.label}: missing chain ${c}`), ...d.missing.map((r) => `${d.label}: missing rule ${r}`),
      ...d.extra.map((r) => `${d.label}: extra rule ${r}`), ...d.outOfOrder.map((o) => `${d.label}: out of order ${o}`),
    ]);
    const facts = await nsFacts(scope.runner);
    const results: ProbeResult[] = [];
    const planned: PlannedProbe[] = [];

    const agent = await startProbeAgent(scope.netns, scope.env);
    const peer = options.peerNetns ? await startProbeAgent(options.peerNetns, scope.env) : null;
    const servers: Server[] = [];
    const arrivals = new Map<number, Arrival>();
    const busy = new Set<number>();
    try {
      for (const family of plan.families.map((f) => f.family)) {
        if (family === 'ipv6' && facts.ipv6Disabled) {
          results.push({ name: 'IPv6 probes', family, flow: '-', expected: '-', status: 'skip', detail: 'IPv6 is disabled in this namespace (net.ipv6.conf.all.disable_ipv6=1): no IPv6 connection can be made, so there is nothing to capture' });
          continue;
        }
        planned.push(...(await outboundProbes(scope.runner, agent, plan, config, family, facts, timeoutMs, results)));
        planned.push(...inboundProbes(peer, options, plan, config, family, facts, timeoutMs, results));
      }
      const ports = new Set(planned.filter((p) => p.explanation.intercepted && p.explanation.toPort !== null).map((p) => p.explanation.toPort!));
      for (const port of ports) {
        for (const host of ['0.0.0.0', ...(facts.ipv6Disabled ? [] : ['::'])]) {
          const listened = await agent.listen(host, port);
          if ('error' in listened) {
            if (listened.error === 'EADDRINUSE') busy.add(port);
            else throw new MeshctlError('COMMAND_FAILED', `verify could not listen on ${host === '::' ? '[::]' : host}:${port}: ${listened.error}`, 'run verify as root');
            continue;
          }
          servers.push(listened.server);
          listened.server.on('connection', (socket: Socket) => {
            let originalDst: string | null = null;
            let note: string | null = null;
            try {
              const dst = readOriginalDst(socket);
              originalDst = hostPort(dst.family, dst.address, dst.port);
            } catch (error) {
              note = isMeshctlError(error, 'ADDON_UNAVAILABLE') ? 'original destination not checked: the native addon is not built' : `no original destination: ${(error as Error).message}`;
            }
            arrivals.set(socket.remotePort ?? -1, { listenerPort: port, originalDst, note });
            socket.on('error', () => undefined);
            socket.end(MARKER);
          });
        }
      }
      const outcomes = await Promise.all(planned.map(async (probe) => ({ probe, client: await probe.run() })));
      for (const { probe, client } of outcomes) results.push(judge(probe, client, arrivals, busy));
    } finally {
      for (const server of servers) server.close();
      agent.close();
      peer?.close();
    }
    const ok = results.every((r) => r.status !== 'fail');
    return { ok, installId: ledger.installId, backend: ledger.backend, netns: scope.netns, probes: results, drift };
  });
}

function judge(probe: PlannedProbe, client: ClientResult, arrivals: ReadonlyMap<number, Arrival>, busy: ReadonlySet<number>): ProbeResult {
  const e = probe.explanation;
  const base = { name: probe.name, family: probe.family, flow: probe.flow, expected: expectation(e) };
  const arrival = client.localPort !== undefined && client.marker === MARKER ? arrivals.get(client.localPort) : undefined;
  const how = client.connected ? (client.marker === MARKER ? 'reached verify\'s listener' : 'connected to something else') : `connect ${client.error ?? 'failed'}`;
  const wanted = hostPort(probe.family, probe.destination, probe.port);
  if (e.intercepted) {
    const port = e.toPort!;
    if (busy.has(port)) {
      return client.connected
        ? { ...base, status: 'pass', detail: `connected (port ${port} is in use, probably by the proxy, so the original destination was not checked)` }
        : { ...base, status: 'fail', detail: `did not connect (${how}); port ${port} is in use by another process, which never accepted it: the connection was not redirected` };
    }
    if (!arrival) return { ...base, status: 'fail', detail: `expected to arrive at :${port}, but it did not (${how}): it was not redirected` };
    if (arrival.listenerPort !== port) return { ...base, status: 'fail', detail: `arrived at :${arrival.listenerPort} instead of :${port}` };
    if (arrival.originalDst === null) return { ...base, status: 'pass', detail: `arrived at :${port} (${arrival.note})` };
    if (arrival.originalDst !== wanted) return { ...base, status: 'fail', detail: `arrived at :${port} but SO_ORIGINAL_DST is ${arrival.originalDst}, expected ${wanted}` };
    return { ...base, status: 'pass', detail: `arrived at :${port} with original destination ${arrival.originalDst}` };
  }
  if (arrival) return { ...base, status: 'fail', detail: `expected to go direct, but it arrived at :${arrival.listenerPort} (original destination ${arrival.originalDst ?? '?'}): it was captured` };
  if (e.verdict === 'rejected') {
    return client.error === 'ECONNREFUSED'
      ? { ...base, status: 'pass', detail: 'refused with a TCP reset, as planned' }
      : { ...base, status: 'fail', detail: `expected a TCP reset (connection refused), got: ${how}` };
  }
  return { ...base, status: 'pass', detail: `went direct (${how})` };
}

async function outboundProbes(runner: NetfilterRunner, agent: ProbeAgent, plan: CapturePlan, config: Config, family: Family, facts: NsFacts, timeoutMs: number, results: ProbeResult[]): Promise<PlannedProbe[]> {
  const out = config.capture.outbound;
  if (!out.enabled) return [];
  const candidates = [...TEST_NET[family], ...(out.includeCidrs === 'all' ? [] : out.includeCidrs.filter((c) => c.family === family).map((c) => hostInside(c.address, c.prefix)).filter((a): a is string => a !== null))];
  const routes = new Map<string, { interface: string; source: string }>();
  const first = await routeGet(runner, family, candidates[0]!);
  if ('error' in first) {
    results.push({
      name: 'outbound capture', family, flow: `→ ${candidates[0]}`, expected: 'a route to the TEST-NET address', status: 'fail',
      detail: `${family === 'ipv4' ? 'IPv4' : 'IPv6'} has no route to ${candidates[0]} here (ip route get: ${first.error}), so connect() fails with ENETUNREACH before the nat OUTPUT hook and no probe can run; add a default route (e.g. \`ip${runner.netns ? ` -n ${runner.netns}` : ''} ${family === 'ipv6' ? '-6 ' : ''}route add default dev IFACE\`)`,
    });
    return [];
  }
  routes.set(candidates[0]!, first);
  for (const candidate of candidates.slice(1)) {
    const r = await routeGet(runner, family, candidate);
    if (!('error' in r)) routes.set(candidate, r);
  }
  const host: HostContext = { localAddresses: facts.addresses.map((a) => a.address), route: (d) => routes.get(d) ?? null };
  const explain = (address: string, port: number, uid: number, gid: number): Explanation =>
    explainFlow(plan, { direction: 'outbound', protocol: 'tcp', destination: { address, port }, uid, gid } satisfies Flow, host);
  const gids = (uid: number): number[] => (out.includeGids === 'all' ? [uid] : [...out.includeGids]);

  let app: { address: string; port: number; uid: number; gid: number } | null = null;
  search: for (const uid of APP_IDS) for (const gid of gids(uid)) for (const address of candidates.filter((c) => routes.has(c))) {
    for (const port of [...PORTS, ...(out.includePorts === 'all' ? [] : out.includePorts.map((r) => r.from))]) {
      const e = explain(address, port, uid, gid);
      if (e.intercepted || e.verdict === 'rejected') {
        app = { address, port, uid, gid };
        break search;
      }
    }
  }
  if (!app) {
    results.push({ name: 'outbound capture', family, flow: '-', expected: '-', status: 'skip', detail: 'no TEST-NET flow from an ordinary uid is captured by the installed plan (include lists too narrow for a probe)' });
    return [];
  }
  const probe = (name: string, address: string, port: number, uid: number, gid: number): PlannedProbe => ({
    name, family, destination: address, port,
    flow: `uid ${uid} gid ${gid} → ${hostPort(family, address, port)}`,
    explanation: explain(address, port, uid, gid),
    run: () => agent.connect({ host: address, port, family, uid, gid, timeoutMs }),
  });
  const probes = [probe('outbound from an ordinary uid', app.address, app.port, app.uid, app.gid)];
  probes.push(probe('outbound from the proxy\'s uid', app.address, app.port, config.proxy.user.uid, config.proxy.user.gid));
  const excludedPort = out.excludePorts[0]?.from ?? (out.includePorts === 'all' ? null : [9, 7, 13, 19, 37].find((p) => explain(app!.address, p, app!.uid, app!.gid).verdict === 'bypassed') ?? null);
  if (excludedPort !== null) probes.push(probe('outbound to an excluded port', app.address, excludedPort, app.uid, app.gid));
  else results.push({ name: 'outbound to an excluded port', family, flow: '-', expected: '-', status: 'skip', detail: 'the config excludes no outbound port' });
  const excludedCidr = out.excludeCidrs.find((c) => c.family === family);
  if (excludedCidr) {
    const address = hostInside(excludedCidr.address, excludedCidr.prefix);
    const r = address ? await routeGet(runner, family, address) : { error: 'no address' };
    if (address && !('error' in r)) {
      routes.set(address, r);
      probes.push(probe(`outbound to an excluded CIDR (${cidrText(excludedCidr)})`, address, app.port, app.uid, app.gid));
    }
  }
  return probes;
}

function inboundProbes(peer: ProbeAgent | null, options: VerifyOptions, plan: CapturePlan, config: Config, family: Family, facts: NsFacts, timeoutMs: number, results: ProbeResult[]): PlannedProbe[] {
  const inbound = config.capture.inbound;
  if (!inbound.enabled) return [];
  if (!peer) {
    results.push({ name: 'inbound capture', family, flow: '-', expected: '-', status: 'skip', detail: 'needs a peer: pass --peer-netns NAME (a namespace that can reach this one)' });
    return [];
  }
  if (inbound.mode === 'tproxy') {
    results.push({ name: 'inbound capture', family, flow: '-', expected: '-', status: 'skip', detail: 'TPROXY delivers only to a transparent (IP_TRANSPARENT) listener, which verify cannot open; run the proxy and use its /stats' });
    return [];
  }
  const target = options.peerTarget && parseIp(options.peerTarget)?.family === family
    ? { address: options.peerTarget, iface: facts.addresses.find((a) => a.address === options.peerTarget)?.iface ?? null }
    : (() => {
      const a = facts.addresses.find((x) => x.family === family && x.iface !== 'lo' && !x.address.startsWith('fe80'));
      return a ? { address: a.address, iface: a.iface } : null;
    })();
  if (!target) {
    results.push({ name: 'inbound capture', family, flow: '-', expected: '-', status: 'skip', detail: `this namespace has no global ${family} address a peer could connect to` });
    return [];
  }
  const host: HostContext = { localAddresses: facts.addresses.map((a) => a.address) };
  const explain = (port: number): Explanation =>
    explainFlow(plan, { direction: 'inbound', protocol: 'tcp', destination: { address: target.address, port }, ...(target.iface ? { inInterface: target.iface } : {}) }, host);
  const probe = (name: string, port: number): PlannedProbe => ({
    name, family, destination: target.address, port,
    flow: `peer ${options.peerNetns} → ${hostPort(family, target.address, port)}`,
    explanation: explain(port),
    run: () => peer.connect({ host: target.address, port, family, uid: 0, gid: 0, timeoutMs }),
  });
  const captured = [8080, 80, 9090, ...(inbound.includePorts === 'all' ? [] : inbound.includePorts.map((r) => r.from))].find((p) => explain(p).intercepted);
  const probes: PlannedProbe[] = [];
  if (captured !== undefined) probes.push(probe('inbound from a peer', captured));
  else results.push({ name: 'inbound from a peer', family, flow: '-', expected: '-', status: 'skip', detail: 'no probe port is captured inbound by the installed plan' });
  const ssh = config.safety.sshPorts[0];
  if (ssh !== undefined && !config.safety.unsafeCaptureSsh) probes.push(probe('inbound to the SSH port', ssh));
  return probes;
}

/** Throws VERIFY_FAILED naming every failed probe and the drift that explains it. */
export function assertVerified(report: VerifyReport): void {
  if (report.ok) return;
  const failed = report.probes.filter((p) => p.status === 'fail');
  throw new MeshctlError('VERIFY_FAILED', `${failed.length} of ${report.probes.filter((p) => p.status !== 'skip').length} live probes failed${report.netns ? ` in namespace ${report.netns}` : ''}`,
    report.drift.length > 0 ? 'the rules drifted from what was installed (see above); `meshctl install` repairs them' : 'compare `meshctl status` with the failed probes; `meshctl explain` shows what the plan does with a flow',
    { details: [...failed.map((p) => `${p.family} ${p.name}: ${p.flow}: expected ${p.expected}; ${p.detail}`), ...report.drift.map((d) => `drift: ${d}`)] });
}
