// `meshctl verify`: a live probe through the installed rules, with or without a running proxy. verify listens on the
// proxy's ports itself (inside the namespace, through the probe agent), then connects as an ordinary uid to a
// TEST-NET address and checks that the connection arrives with the right SO_ORIGINAL_DST; connects as the proxy's
// uid and to an excluded port and checks that those go direct; and, given a peer namespace, checks inbound capture.
// When a proxy already holds a port, verify cannot listen there: it asks the proxy instead. Each probe client binds
// its source first and holds its connection open; verify then asks the proxy's admin API (`/lookup?source=`, on
// the namespace's loopback) for the connection from that source, open or among the ones it closed recently, and
// checks its original destination. A connection the proxy accepted but could not forward (connect-failed, refused,
// timeout) was redirected all the same; one the proxy never saw was not.
// What each probe should do is not hard-coded: explainFlow walks the installed plan for the same flow.
import type { Server, Socket } from 'node:net';
import { performance } from 'node:perf_hooks';
import type { CapturePlan } from '../capture/model.js';
import type { Family } from '../values/ip.js';
import { cidrText, formatIp, parseIp } from '../values/ip.js';
import { explainFlow, type Explanation, type Flow, type HostContext } from '../capture/explain.js';
import type { Config } from '../config/types.js';
import { MeshctlError, isMeshctlError } from '../errors.js';
import { readOriginalDst } from '../native/original-dst.js';
import { parseSourceQuery, RECENT_CAPACITY, type SourceLookupRow } from '../proxy/recent-connections.js';
import { createDriver } from '../netfilter/drivers/create-driver.js';
import { readLedger, type Ledger } from '../netfilter/transaction/ledger.js';
import { dnsProbes } from './dns-probes.js';
import { startProbeAgent, type ClientResult, type ProbeAgent } from './probe-agent.js';
import { recoverInterrupted } from '../netfilter/transaction/recovery.js';
import type { NetfilterRunner } from '../netfilter/drivers/runner.js';
import { assertNetnsExists } from '../values/netns.js';
import { openScope, withScopeLock, type Scope, type ScopeOptions } from '../netfilter/transaction/scope.js';

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

const TEST_NET: Record<Family, readonly string[]> = {
  ipv4: ['192.0.2.10', '198.51.100.10', '203.0.113.10'],
  ipv6: ['2001:db8::10', '2001:db8:1::10'],
};
const APP_IDS = [4242, 4343, 54321];
const PORTS = [80, 443, 8080, 5000, 9];
const MARKER = 'meshctl-verify';
/** How long verify keeps asking a proxy about a connection that something accepted but the proxy does not list yet. */
const LOOKUP_GRACE_MS = 1000;
const LOOKUP_POLL_MS = 50;

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

async function routeGet(
  runner: NetfilterRunner,
  family: Family,
  address: string,
): Promise<{ interface: string; source: string } | { error: string }> {
  const result = await runner.exec('ip', [family === 'ipv4' ? '-4' : '-6', 'route', 'get', address]);
  if (result.exitCode !== 0) return { error: result.stderr.trim() || `exit ${result.exitCode}` };
  const dev = /\bdev\s+(\S+)/.exec(result.stdout)?.[1];
  const src = /\bsrc\s+(\S+)/.exec(result.stdout)?.[1];
  return dev
    ? { interface: dev, source: src ?? '' }
    : { error: `unexpected \`ip route get\` output: ${result.stdout.trim()}` };
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
  return e.intercepted
    ? `${e.verdict} to :${e.toPort} (${e.reason.replace(/^\w+ to the proxy's port \d+ by /, '')})`
    : e.reason;
}

function hostPort(family: Family, address: string, port: number): string {
  return family === 'ipv6' ? `[${address}]:${port}` : `${address}:${port}`;
}

interface PlannedProbe {
  readonly name: string;
  readonly family: Family;
  readonly direction: 'outbound' | 'inbound';
  readonly flow: string;
  readonly explanation: Explanation;
  readonly run: () => Promise<ClientResult>;
  readonly destination: string;
  readonly port: number;
}

/** A probe that could not run here, and why. */
function skipped(name: string, family: Family, detail: string): ProbeResult {
  return { name, family, flow: '-', expected: '-', status: 'skip', detail };
}

/** Runs the probes. Returns the report (ok false when a probe failed). Throws NOT_INSTALLED, LOCKED, NETNS_NOT_FOUND. */
export async function verifyCapture(options: VerifyOptions): Promise<VerifyReport> {
  const scope = openScope(options);
  if (options.peerNetns) assertNetnsExists(options.peerNetns);
  const timeoutMs = options.timeoutMs ?? 1000;
  return withScopeLock(scope, 'verify', async () => {
    await recoverInterrupted(scope);
    const ledger = installedLedger(scope);
    const { plan, config } = ledger.current;
    const drift = await driftLines(scope, ledger);
    const facts = await nsFacts(scope.runner);
    const results: ProbeResult[] = [];
    const planned: PlannedProbe[] = [];

    const agent = await startProbeAgent(scope.netns, scope.env);
    const peer = options.peerNetns ? await startProbeAgent(options.peerNetns, scope.env) : null;
    const servers: Server[] = [];
    const arrivals = new Map<number, Arrival>();
    /** `family:port` of the ports another process (normally the proxy) holds. */
    const busy = new Set<string>();
    try {
      for (const family of plan.families.map((f) => f.family)) {
        if (family === 'ipv6' && facts.ipv6Disabled) {
          results.push(
            skipped(
              'IPv6 probes',
              family,
              'IPv6 is disabled in this namespace (net.ipv6.conf.all.disable_ipv6=1): no IPv6 connection can be made, so there is nothing to capture',
            ),
          );
          continue;
        }
        planned.push(...(await outboundProbes(scope.runner, agent, plan, config, family, facts, timeoutMs, results)));
        planned.push(...inboundProbes(peer, options, plan, config, family, facts, timeoutMs, results));
      }
      await listenOnProxyPorts(agent, planned, facts, { servers, arrivals, busy });
      results.push(...(await runPlannedProbes(agent, config, planned, arrivals, busy)));
      const dnsFamilies = plan.families
        .filter((f) => f.rules.some((r) => r.purpose === 'dns-capture') && !(f.family === 'ipv6' && facts.ipv6Disabled))
        .map((f) => f.family);
      results.push(...(await dnsProbes(agent, config, dnsFamilies, Math.max(timeoutMs, 3000))));
    } finally {
      for (const server of servers) server.close();
      agent.close();
      peer?.close();
    }
    const ok = results.every((r) => r.status !== 'fail');
    return { ok, installId: ledger.installId, backend: ledger.backend, netns: scope.netns, probes: results, drift };
  });
}

/** The ledger of what is installed in `scope`; throws NOT_INSTALLED when nothing is. */
function installedLedger(scope: Scope): Ledger {
  const ledger = readLedger(scope.dir);
  if (ledger === null) {
    throw new MeshctlError(
      'NOT_INSTALLED',
      `nothing is installed${scope.netns ? ` in namespace ${scope.netns}` : ''}, so there is nothing to verify`,
      'run `meshctl install` first',
    );
  }
  return ledger;
}

/** How the live rules differ from the installed plan, one line per missing, extra or misplaced chain or rule. */
async function driftLines(scope: Scope, ledger: Ledger): Promise<string[]> {
  const driver = createDriver(ledger.backend, scope.runner, scope.log);
  return driver
    .drift(await driver.read(), ledger.current.plan)
    .filter((d) => !d.inSync)
    .flatMap((d) => [
      ...d.missingChains.map((c) => `${d.label}: missing chain ${c}`),
      ...d.missing.map((r) => `${d.label}: missing rule ${r}`),
      ...d.extra.map((r) => `${d.label}: extra rule ${r}`),
      ...d.outOfOrder.map((o) => `${d.label}: out of order ${o}`),
    ]);
}

/**
 * Listens, on IPv4 and (unless disabled) IPv6, on every proxy port a planned probe should be redirected to. A port
 * another process holds (normally the proxy) goes into `busy`; any other listen error throws COMMAND_FAILED.
 */
async function listenOnProxyPorts(
  agent: ProbeAgent,
  planned: readonly PlannedProbe[],
  facts: NsFacts,
  into: { servers: Server[]; arrivals: Map<number, Arrival>; busy: Set<string> },
): Promise<void> {
  const ports = new Set(
    planned.filter((p) => p.explanation.intercepted && p.explanation.toPort !== null).map((p) => p.explanation.toPort!),
  );
  for (const port of ports) {
    for (const host of ['0.0.0.0', ...(facts.ipv6Disabled ? [] : ['::'])]) {
      const listened = await agent.listen(host, port);
      if ('error' in listened) {
        if (listened.error === 'EADDRINUSE') into.busy.add(`${host === '::' ? 'ipv6' : 'ipv4'}:${port}`);
        else
          throw new MeshctlError(
            'COMMAND_FAILED',
            `verify could not listen on ${host === '::' ? '[::]' : host}:${port}: ${listened.error}`,
            'run verify as root',
          );
        continue;
      }
      into.servers.push(listened.server);
      listened.server.on('connection', (socket: Socket) => recordArrival(socket, port, into.arrivals));
    }
  }
}

/** Notes where a connection to verify's listener on `port` arrived and its SO_ORIGINAL_DST, then answers MARKER. */
function recordArrival(socket: Socket, port: number, arrivals: Map<number, Arrival>): void {
  let originalDst: string | null = null;
  let note: string | null = null;
  try {
    const dst = readOriginalDst(socket);
    originalDst = hostPort(dst.family, dst.address, dst.port);
  } catch (error) {
    note = isMeshctlError(error, 'ADDON_UNAVAILABLE')
      ? 'original destination not checked: the native addon is not built'
      : `no original destination: ${(error as Error).message}`;
  }
  arrivals.set(socket.remotePort ?? -1, { listenerPort: port, originalDst, note });
  socket.on('error', () => undefined);
  socket.end(MARKER);
}

/**
 * Runs the planned probes at once and judges each: by verify's own listener, or, when a proxy holds the port and
 * the connection did not reach verify, by asking that proxy.
 */
async function runPlannedProbes(
  agent: ProbeAgent,
  config: Config,
  planned: readonly PlannedProbe[],
  arrivals: ReadonlyMap<number, Arrival>,
  busy: ReadonlySet<string>,
): Promise<ProbeResult[]> {
  const outcomes = await Promise.all(
    planned.map(async (probe) => {
      const startedAt = performance.now();
      const client = await probe.run();
      // Asked while the client still holds its connection (the agent ends the clients at close()).
      const seen =
        busy.size > 0 && arrivalOf(client, arrivals) === undefined
          ? await askProxy(agent, config, probe, client, startedAt)
          : null;
      return { probe, client, seen };
    }),
  );
  return outcomes.map(({ probe, client, seen }) => judge(probe, client, arrivals, busy, seen));
}

/** What the proxy holding a port says about a probe's connection: its connections from the probe's source. */
type ProxyView = { readonly rows: readonly SourceLookupRow[] } | { readonly unavailable: string };

function arrivalOf(client: ClientResult, arrivals: ReadonlyMap<number, Arrival>): Arrival | undefined {
  return client.localPort !== undefined && client.marker === MARKER ? arrivals.get(client.localPort) : undefined;
}

function sameEndpoint(a: string, b: string): boolean {
  const x = parseSourceQuery(a);
  const y = parseSourceQuery(b);
  return typeof x !== 'string' && typeof y !== 'string' && x.text === y.text;
}

/**
 * Asks the proxy's admin API (from inside the namespace) for its connections from the probe's source that began
 * after the probe did. When the probe was captured and something accepted it, asks again for up to
 * LOOKUP_GRACE_MS while the proxy has not listed it yet.
 */
async function askProxy(
  agent: ProbeAgent,
  config: Config,
  probe: PlannedProbe,
  client: ClientResult,
  startedAt: number,
): Promise<ProxyView> {
  if (client.localAddress === undefined || client.localPort === undefined)
    return { unavailable: `the probe has no known source (${client.error ?? 'not bound'})` };
  const source = hostPort(probe.family, client.localAddress, client.localPort);
  const { adminAddress, adminPort } = config.proxy;
  const host = adminAddress === '0.0.0.0' ? '127.0.0.1' : adminAddress === '::' ? '::1' : adminAddress;
  const where = `${hostPort(host.includes(':') ? 'ipv6' : 'ipv4', host, adminPort)}/lookup`;
  const accepted = client.connected || client.error === 'ECONNRESET';
  const deadline = performance.now() + LOOKUP_GRACE_MS;
  for (;;) {
    const answer = await agent.get(host, adminPort, `/lookup?source=${encodeURIComponent(source)}`, LOOKUP_GRACE_MS);
    if ('error' in answer) return { unavailable: `no meshctl proxy answered at ${where} (${answer.error})` };
    if (answer.status === 404)
      return {
        unavailable: `the process answering at ${where} has no /lookup (a meshctl proxy older than this verify?)`,
      };
    if (answer.status !== 200) return { unavailable: `${where} answered ${answer.status}: ${answer.body.trim()}` };
    let rows: SourceLookupRow[];
    try {
      rows = (JSON.parse(answer.body) as { connections: SourceLookupRow[] }).connections;
    } catch {
      return { unavailable: `${where} answered something that is not a lookup: ${answer.body.slice(0, 200)}` };
    }
    // A connection of an earlier run from the same source port began before this probe: not ours.
    const elapsed = performance.now() - startedAt;
    const ours = rows.filter((r) => r.ageMs <= elapsed + 1);
    if (ours.length > 0 || !(probe.explanation.intercepted && accepted) || performance.now() >= deadline)
      return { rows: ours };
    await new Promise((resolve) => setTimeout(resolve, LOOKUP_POLL_MS));
  }
}

function rowState(row: SourceLookupRow): string {
  const result = row.result === null ? '' : `${row.result}${row.detail ? ` ${row.detail}` : ''}`;
  if (row.state === 'closed') return `closed: ${result}`;
  return result ? `${row.state}, ${result}` : row.state;
}

function judgeByProxy(
  base: Omit<ProbeResult, 'status' | 'detail'>,
  probe: PlannedProbe,
  row: SourceLookupRow,
  wanted: string,
  port: number,
): ProbeResult {
  const state = rowState(row);
  if (row.direction !== probe.direction)
    return {
      ...base,
      status: 'fail',
      detail: `reached the proxy's ${row.direction} listener instead of :${port} (${state})`,
    };
  if (row.originalDst === null)
    return {
      ...base,
      status: 'fail',
      detail: `reached the proxy at :${port}, which found no original destination (${state}): it was not redirected by the rules`,
    };
  if (!sameEndpoint(row.originalDst, wanted))
    return {
      ...base,
      status: 'fail',
      detail: `the proxy at :${port} saw original destination ${row.originalDst}, expected ${wanted} (${state})`,
    };
  return {
    ...base,
    status: 'pass',
    detail: `the proxy at :${port} accepted it with original destination ${row.originalDst} (${state})`,
  };
}

/** A redirected probe that reached verify's own listener: at the right port, with the right original destination? */
function judgeArrival(
  base: Omit<ProbeResult, 'status' | 'detail'>,
  arrival: Arrival,
  port: number,
  wanted: string,
): ProbeResult {
  if (arrival.listenerPort !== port)
    return { ...base, status: 'fail', detail: `arrived at :${arrival.listenerPort} instead of :${port}` };
  if (arrival.originalDst === null) return { ...base, status: 'pass', detail: `arrived at :${port} (${arrival.note})` };
  if (arrival.originalDst !== wanted)
    return {
      ...base,
      status: 'fail',
      detail: `arrived at :${port} but SO_ORIGINAL_DST is ${arrival.originalDst}, expected ${wanted}`,
    };
  return { ...base, status: 'pass', detail: `arrived at :${port} with original destination ${arrival.originalDst}` };
}

/**
 * A probe that should have been redirected to `port`, which another process holds, and that this process does not
 * list: not redirected when the proxy answered; otherwise unknown (a pass only when it connected).
 */
function judgeUnseenByProxy(
  base: Omit<ProbeResult, 'status' | 'detail'>,
  client: ClientResult,
  seen: ProxyView | null,
  port: number,
  how: string,
): ProbeResult {
  if (seen !== null && 'rows' in seen) {
    const source =
      client.localAddress !== undefined && client.localPort !== undefined
        ? hostPort(base.family, client.localAddress, client.localPort)
        : 'the probe';
    return {
      ...base,
      status: 'fail',
      detail: `the proxy holding :${port} has no connection from ${source}, open or among the last ${RECENT_CAPACITY} it closed per worker (${how}): it was not redirected`,
    };
  }
  const why = seen === null ? 'no proxy was asked' : seen.unavailable;
  return client.connected
    ? {
        ...base,
        status: 'pass',
        detail: `connected, but port ${port} is held by another process and ${why}, so the original destination was not checked`,
      }
    : {
        ...base,
        status: 'fail',
        detail: `did not connect (${how}); port ${port} is held by another process and ${why}, so whether it was redirected is unknown`,
      };
}

function judge(
  probe: PlannedProbe,
  client: ClientResult,
  arrivals: ReadonlyMap<number, Arrival>,
  busy: ReadonlySet<string>,
  seen: ProxyView | null,
): ProbeResult {
  const e = probe.explanation;
  const base = { name: probe.name, family: probe.family, flow: probe.flow, expected: expectation(e) };
  const arrival = arrivalOf(client, arrivals);
  const how = client.connected
    ? client.marker === MARKER
      ? "reached verify's listener"
      : 'connected to something else'
    : `connect ${client.error ?? 'failed'}`;
  const wanted = hostPort(probe.family, probe.destination, probe.port);
  const row = seen !== null && 'rows' in seen ? seen.rows[0] : undefined;
  if (e.intercepted) {
    const port = e.toPort!;
    if (arrival) return judgeArrival(base, arrival, port, wanted);
    if (row) return judgeByProxy(base, probe, row, wanted, port);
    if (busy.has(`${probe.family}:${port}`)) return judgeUnseenByProxy(base, client, seen, port, how);
    return {
      ...base,
      status: 'fail',
      detail: `expected to arrive at :${port}, but it did not (${how}): it was not redirected`,
    };
  }
  if (arrival)
    return {
      ...base,
      status: 'fail',
      detail: `expected to go direct, but it arrived at :${arrival.listenerPort} (original destination ${arrival.originalDst ?? '?'}): it was captured`,
    };
  if (row) {
    return {
      ...base,
      status: 'fail',
      detail: `expected to ${e.verdict === 'rejected' ? 'be refused' : 'go direct'}, but the proxy's ${row.direction} listener accepted it (original destination ${row.originalDst ?? 'none'}, ${rowState(row)}): it was captured`,
    };
  }
  if (e.verdict === 'rejected') {
    return client.error === 'ECONNREFUSED'
      ? { ...base, status: 'pass', detail: 'refused with a TCP reset, as planned' }
      : { ...base, status: 'fail', detail: `expected a TCP reset (connection refused), got: ${how}` };
  }
  return { ...base, status: 'pass', detail: `went direct (${how})` };
}

/** The outbound probe destinations of `family`: the TEST-NET addresses, then one inside each included CIDR. */
function outboundCandidates(config: Config, family: Family): string[] {
  const out = config.capture.outbound;
  return [
    ...TEST_NET[family],
    ...(out.includeCidrs === 'all'
      ? []
      : out.includeCidrs
          .filter((c) => c.family === family)
          .map((c) => hostInside(c.address, c.prefix))
          .filter((a): a is string => a !== null)),
  ];
}

/**
 * The route to each candidate that has one. Null, with a failed result saying how to add a default route, when the
 * first (a TEST-NET address) has none: connect() would fail before the capture rules and no probe could run.
 */
async function candidateRoutes(
  runner: NetfilterRunner,
  family: Family,
  candidates: readonly string[],
  results: ProbeResult[],
): Promise<Map<string, { interface: string; source: string }> | null> {
  const routes = new Map<string, { interface: string; source: string }>();
  const first = await routeGet(runner, family, candidates[0]!);
  if ('error' in first) {
    results.push({
      name: 'outbound capture',
      family,
      flow: `→ ${candidates[0]}`,
      expected: 'a route to the TEST-NET address',
      status: 'fail',
      detail: `${family === 'ipv4' ? 'IPv4' : 'IPv6'} has no route to ${candidates[0]} here (ip route get: ${first.error}), so connect() fails with ENETUNREACH before the nat OUTPUT hook and no probe can run; add a default route (e.g. \`ip${runner.netns ? ` -n ${runner.netns}` : ''} ${family === 'ipv6' ? '-6 ' : ''}route add default dev IFACE\`)`,
    });
    return null;
  }
  routes.set(candidates[0]!, first);
  for (const candidate of candidates.slice(1)) {
    const r = await routeGet(runner, family, candidate);
    if (!('error' in r)) routes.set(candidate, r);
  }
  return routes;
}

/** The first flow from an ordinary uid (APP_IDS) that the plan captures or rejects, or null when none is. */
function firstCapturedAppFlow(
  addresses: readonly string[],
  includeGids: 'all' | readonly number[],
  ports: readonly number[],
  explain: (address: string, port: number, uid: number, gid: number) => Explanation,
): { address: string; port: number; uid: number; gid: number } | null {
  for (const uid of APP_IDS)
    for (const gid of includeGids === 'all' ? [uid] : includeGids)
      for (const address of addresses)
        for (const port of ports) {
          const e = explain(address, port, uid, gid);
          if (e.intercepted || e.verdict === 'rejected') return { address, port, uid, gid };
        }
  return null;
}

async function outboundProbes(
  runner: NetfilterRunner,
  agent: ProbeAgent,
  plan: CapturePlan,
  config: Config,
  family: Family,
  facts: NsFacts,
  timeoutMs: number,
  results: ProbeResult[],
): Promise<PlannedProbe[]> {
  const out = config.capture.outbound;
  if (!out.enabled) return [];
  const candidates = outboundCandidates(config, family);
  const routes = await candidateRoutes(runner, family, candidates, results);
  if (routes === null) return [];
  const host: HostContext = {
    localAddresses: facts.addresses.map((a) => a.address),
    route: (d) => routes.get(d) ?? null,
  };
  const explain = (address: string, port: number, uid: number, gid: number): Explanation =>
    explainFlow(
      plan,
      { direction: 'outbound', protocol: 'tcp', destination: { address, port }, uid, gid } satisfies Flow,
      host,
    );

  const app = firstCapturedAppFlow(
    candidates.filter((c) => routes.has(c)),
    out.includeGids === 'all' ? 'all' : [...out.includeGids],
    [...PORTS, ...(out.includePorts === 'all' ? [] : out.includePorts.map((r) => r.from))],
    explain,
  );
  if (!app) {
    results.push(
      skipped(
        'outbound capture',
        family,
        'no TEST-NET flow from an ordinary uid is captured by the installed plan (include lists too narrow for a probe)',
      ),
    );
    return [];
  }
  const probe = (name: string, address: string, port: number, uid: number, gid: number): PlannedProbe => ({
    name,
    family,
    direction: 'outbound',
    destination: address,
    port,
    flow: `uid ${uid} gid ${gid} → ${hostPort(family, address, port)}`,
    explanation: explain(address, port, uid, gid),
    run: () => agent.connect({ host: address, port, family, uid, gid, timeoutMs }),
  });
  const probes = [probe('outbound from an ordinary uid', app.address, app.port, app.uid, app.gid)];
  probes.push(
    probe("outbound from the proxy's uid", app.address, app.port, config.proxy.user.uid, config.proxy.user.gid),
  );
  const excludedPort =
    out.excludePorts[0]?.from ??
    (out.includePorts === 'all'
      ? null
      : ([9, 7, 13, 19, 37].find((p) => explain(app!.address, p, app!.uid, app!.gid).verdict === 'bypassed') ?? null));
  if (excludedPort !== null)
    probes.push(probe('outbound to an excluded port', app.address, excludedPort, app.uid, app.gid));
  else results.push(skipped('outbound to an excluded port', family, 'the config excludes no outbound port'));
  const excludedCidr = out.excludeCidrs.find((c) => c.family === family);
  if (excludedCidr) {
    const address = hostInside(excludedCidr.address, excludedCidr.prefix);
    const r = address ? await routeGet(runner, family, address) : { error: 'no address' };
    if (address && !('error' in r)) {
      routes.set(address, r);
      probes.push(
        probe(`outbound to an excluded CIDR (${cidrText(excludedCidr)})`, address, app.port, app.uid, app.gid),
      );
    }
  }
  return probes;
}

/** The address of this namespace a peer connects to: --peer-target when of `family`, else the first global one. */
function inboundTarget(
  options: VerifyOptions,
  facts: NsFacts,
  family: Family,
): { address: string; iface: string | null } | null {
  if (options.peerTarget && parseIp(options.peerTarget)?.family === family)
    return {
      address: options.peerTarget,
      iface: facts.addresses.find((a) => a.address === options.peerTarget)?.iface ?? null,
    };
  const a = facts.addresses.find((x) => x.family === family && x.iface !== 'lo' && !x.address.startsWith('fe80'));
  return a ? { address: a.address, iface: a.iface } : null;
}

function inboundProbes(
  peer: ProbeAgent | null,
  options: VerifyOptions,
  plan: CapturePlan,
  config: Config,
  family: Family,
  facts: NsFacts,
  timeoutMs: number,
  results: ProbeResult[],
): PlannedProbe[] {
  const inbound = config.capture.inbound;
  if (!inbound.enabled) return [];
  if (!peer) {
    results.push(
      skipped('inbound capture', family, 'needs a peer: pass --peer-netns NAME (a namespace that can reach this one)'),
    );
    return [];
  }
  if (inbound.mode === 'tproxy') {
    results.push(
      skipped(
        'inbound capture',
        family,
        'TPROXY delivers only to a transparent (IP_TRANSPARENT) listener, which verify cannot open; run the proxy and use its /stats',
      ),
    );
    return [];
  }
  const target = inboundTarget(options, facts, family);
  if (!target) {
    results.push(
      skipped('inbound capture', family, `this namespace has no global ${family} address a peer could connect to`),
    );
    return [];
  }
  const host: HostContext = { localAddresses: facts.addresses.map((a) => a.address) };
  const explain = (port: number): Explanation =>
    explainFlow(
      plan,
      {
        direction: 'inbound',
        protocol: 'tcp',
        destination: { address: target.address, port },
        ...(target.iface ? { inInterface: target.iface } : {}),
      },
      host,
    );
  const probe = (name: string, port: number): PlannedProbe => ({
    name,
    family,
    direction: 'inbound',
    destination: target.address,
    port,
    flow: `peer ${options.peerNetns} → ${hostPort(family, target.address, port)}`,
    explanation: explain(port),
    run: () => peer.connect({ host: target.address, port, family, uid: 0, gid: 0, timeoutMs }),
  });
  const captured = [
    8080,
    80,
    9090,
    ...(inbound.includePorts === 'all' ? [] : inbound.includePorts.map((r) => r.from)),
  ].find((p) => explain(p).intercepted);
  const probes: PlannedProbe[] = [];
  if (captured !== undefined) probes.push(probe('inbound from a peer', captured));
  else results.push(skipped('inbound from a peer', family, 'no probe port is captured inbound by the installed plan'));
  const ssh = config.safety.sshPorts[0];
  if (ssh !== undefined && !config.safety.unsafeCaptureSsh) probes.push(probe('inbound to the SSH port', ssh));
  return probes;
}

/** Throws VERIFY_FAILED naming every failed probe and the drift that explains it. */
export function assertVerified(report: VerifyReport): void {
  if (report.ok) return;
  const failed = report.probes.filter((p) => p.status === 'fail');
  throw new MeshctlError(
    'VERIFY_FAILED',
    `${failed.length} of ${report.probes.filter((p) => p.status !== 'skip').length} live probes failed${report.netns ? ` in namespace ${report.netns}` : ''}`,
    report.drift.length > 0
      ? 'the rules drifted from what was installed (see above); `meshctl install` repairs them'
      : 'compare `meshctl status` with the failed probes; `meshctl explain` shows what the plan does with a flow',
    {
      details: [
        ...failed.map((p) => `${p.family} ${p.name}: ${p.flow}: expected ${p.expected}; ${p.detail}`),
        ...report.drift.map((d) => `drift: ${d}`),
      ],
    },
  );
}
