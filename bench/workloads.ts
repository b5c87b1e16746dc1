// The workloads, each bounded in time: bulk throughput (iperf3, 1 and 8 streams), 64-byte ping-pong at
// concurrency 1 and 32, the same paced at a fixed rate, connect + request + close, HTTP/1.1 (wrk → nginx), and the
// proxy's memory with idle connections. Every run also reads the proxy's CPU time, so cost per GB / per op follows.
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { DNS_LOAD, DNS_NAMES, PORTS, holdEchoConnections, loadgenOptions, waitListening, type Lab } from './lab.js';
import { isHaproxy, type RunningCandidate } from './candidates.js';
import { isPairCandidate } from './pair.js';
import { runClient, sleep, startProc, stopProc, type Completed, type Proc } from './procs.js';

export type WorkloadName =
  'idle' | 'bulk-1' | 'bulk-8' | 'rr-1' | 'rr-32' | 'paced' | 'connect-32' | 'http-32' | 'dns-32';
/** Run order inside one candidate session: idle first, so its baseline is a freshly started proxy. */
export const WORKLOADS: readonly WorkloadName[] = [
  'idle',
  'bulk-1',
  'bulk-8',
  'rr-1',
  'rr-32',
  'paced',
  'connect-32',
  'http-32',
  'dns-32',
];

export interface Profile {
  /** Measured seconds per run. */
  readonly secs: number;
  /** Seconds before measuring starts (tcpbench workloads). */
  readonly warmup: number;
  readonly repetitions: number;
  /** Held connections for the memory workload (5,000 in the full run). */
  readonly idleConns: number;
  /** Requests per second of the paced workload (10,000 in the full run). */
  readonly pacedRate: number;
  /**
   * Seconds the proxy then stays idle before its settled footprint is read (0: not read). A proxy just out of a
   * warm-up still holds that work's garbage and freed heap; an idle one gives it back (meshctl trims malloc every
   * 10 s), so "idle footprint" is read after the proxy has had that long with nothing to do.
   */
  readonly idleSettleSecs: number;
}

export const PROFILES = {
  full: { secs: 5, warmup: 1, repetitions: 5, idleConns: 5000, pacedRate: 10_000, idleSettleSecs: 12 },
  smoke: { secs: 1, warmup: 0.2, repetitions: 1, idleConns: 200, pacedRate: 2000, idleSettleSecs: 0 },
} as const satisfies Record<string, Profile>;

/** Named numbers from one run of one workload against one candidate. Latencies in µs, CPU in seconds. */
export type Values = Record<string, number>;

export interface Measurement {
  readonly workload: WorkloadName;
  readonly candidate: RunningCandidate['name'];
  readonly rep: number;
  readonly values: Values;
}

interface TcpbenchResult {
  mode: string;
  ops: number;
  secs: number;
  rate: number;
  p50_us: number;
  p90_us: number;
  p99_us: number;
  p999_us: number;
  max_us: number;
  errors: number;
  unfinished: number;
  cpu_s: number;
  total_ops: number;
  late_p99_us: number;
}

function parseJsonLine<T>(what: string, out: Completed): T {
  const line = out.stdout.trim().split('\n').pop() ?? '';
  try {
    return JSON.parse(line) as T;
  } catch {
    throw new Error(`${what}: no JSON result in output:\n${out.stdout.slice(-2000)}\n${out.stderr.slice(-2000)}`);
  }
}

/** Runs `fn` while reading the proxy's CPU time before and after. */
async function withProxyCpu<T>(
  candidate: RunningCandidate,
  fn: () => Promise<T>,
): Promise<{ result: T; proxyCpu: number | null; wall: number }> {
  const before = candidate.usage();
  const started = performance.now();
  const result = await fn();
  const wall = (performance.now() - started) / 1000;
  const after = candidate.usage();
  return { result, proxyCpu: before && after ? after.cpuSeconds - before.cpuSeconds : null, wall };
}

async function tcpbench(
  lab: Lab,
  candidate: RunningCandidate,
  mode: 'rr' | 'paced' | 'cc',
  args: Record<string, number>,
  profile: Profile,
  port: number = PORTS.echo,
): Promise<Values> {
  const argv = [
    lab.options.tcpbench,
    mode,
    `host=${lab.serverAddr}`,
    `port=${port}`,
    `src=${lab.generatorAddr}`,
    'size=64',
    `secs=${profile.secs}`,
    `warmup=${profile.warmup}`,
    ...Object.entries(args).map(([k, v]) => `${k}=${v}`),
  ];
  const { result, proxyCpu } = await withProxyCpu(candidate, () =>
    runClient(`tcpbench ${mode}`, argv, loadgenOptions(lab), (profile.secs + profile.warmup) * 1000 + 20_000),
  );
  const r = parseJsonLine<TcpbenchResult>(`tcpbench ${mode}`, result);
  if (r.errors > 0) {
    const proxy = candidate.output().slice(-2000);
    throw new Error(
      `tcpbench ${mode} against ${candidate.name}: ${r.errors} connection errors\n${result.stderr.slice(-1000)}${proxy ? `\nproxy output:\n${proxy}` : ''}`,
    );
  }
  const values: Values = {
    rate: r.rate,
    p50: r.p50_us,
    p99: r.p99_us,
    p999: r.p999_us,
    unfinished: r.unfinished,
    loadgenCpu: r.cpu_s / r.secs,
    totalOps: r.total_ops,
  };
  if (proxyCpu !== null && r.total_ops > 0) values.proxyCpuPerOp = (proxyCpu / r.total_ops) * 1e6; // µs of CPU per op
  if (mode === 'paced') values.generatorLateP99 = r.late_p99_us;
  return values;
}

interface IperfJson {
  end?: {
    sum_received?: { bytes: number; seconds: number; bits_per_second: number };
    sum_sent?: { retransmits?: number };
  };
  error?: string;
}

async function bulk(lab: Lab, candidate: RunningCandidate, streams: number, profile: Profile): Promise<Values> {
  const pin = lab.options.pin.servers;
  const server = startProc('iperf3 server', ['iperf3', '-s', '-1', '-p', String(PORTS.iperf)], {
    ns: lab.serverNs,
    ...(pin ? { cpus: pin } : {}),
  });
  try {
    await waitListening(lab.serverNs, PORTS.iperf, server);
    const secs = Math.max(1, Math.round(profile.secs + profile.warmup));
    const argv = [
      'iperf3',
      '-c',
      lab.serverAddr,
      '-p',
      String(PORTS.iperf),
      '-t',
      String(secs),
      '-P',
      String(streams),
      '-J',
    ];
    const { result, proxyCpu } = await withProxyCpu(candidate, () =>
      runClient('iperf3', argv, loadgenOptions(lab), secs * 1000 + 20_000),
    );
    const json = JSON.parse(result.stdout) as IperfJson;
    const sum = json.end?.sum_received;
    if (!sum || json.error)
      throw new Error(`iperf3 against ${candidate.name}: ${json.error ?? 'no sum_received in its JSON'}`);
    const values: Values = {
      gbps: sum.bits_per_second / 1e9,
      retransmits: json.end?.sum_sent?.retransmits ?? 0,
      loadgenCpu: result.cpuSeconds / result.wallSeconds,
    };
    if (proxyCpu !== null) values.proxyCpuPerGB = proxyCpu / (sum.bytes / 1e9);
    return values;
  } finally {
    await stopProc(server, 1000);
  }
}

/** Parses wrk's "--latency" report: Requests/sec, total requests and the 50/99th percentiles. */
export function parseWrk(text: string): {
  reqPerSec: number;
  requests: number;
  p50: number;
  p99: number;
  errors: number;
} {
  const unit = (value: string, u: string) =>
    Number(value) * ({ us: 1, ms: 1000, s: 1e6 } as Record<string, number>)[u]!;
  const pct = (p: string) => {
    const m = new RegExp(`^\\s*${p}%\\s+([\\d.]+)(us|ms|s)\\s*$`, 'm').exec(text);
    if (!m) throw new Error(`wrk output has no ${p}% latency line:\n${text}`);
    return unit(m[1]!, m[2]!);
  };
  const rps = /Requests\/sec:\s+([\d.]+)/.exec(text);
  const total = /(\d+) requests in/.exec(text);
  if (!rps || !total) throw new Error(`cannot parse wrk output:\n${text}`);
  const socketErrors = /Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)/.exec(text);
  const non2xx = /Non-2xx or 3xx responses: (\d+)/.exec(text);
  const errors =
    (socketErrors ? socketErrors.slice(1).reduce((n, v) => n + Number(v), 0) : 0) + (non2xx ? Number(non2xx[1]) : 0);
  return { reqPerSec: Number(rps[1]), requests: Number(total[1]), p50: pct('50'), p99: pct('99'), errors };
}

async function http(lab: Lab, candidate: RunningCandidate, profile: Profile): Promise<Values> {
  const secs = Math.max(1, Math.round(profile.secs));
  const argv = ['wrk', '-t1', '-c32', `-d${secs}s`, '--latency', `http://${lab.serverAddr}:${PORTS.http}/`];
  const { result, proxyCpu } = await withProxyCpu(candidate, () =>
    runClient('wrk', argv, loadgenOptions(lab), secs * 1000 + 20_000),
  );
  const w = parseWrk(result.stdout);
  if (w.errors > 0) throw new Error(`wrk against ${candidate.name}: ${w.errors} errors\n${result.stdout}`);
  const values: Values = {
    rate: w.reqPerSec,
    p50: w.p50,
    p99: w.p99,
    loadgenCpu: result.cpuSeconds / result.wallSeconds,
  };
  if (proxyCpu !== null && w.requests > 0) values.proxyCpuPerOp = (proxyCpu / w.requests) * 1e6;
  return values;
}

interface DnsLoadResult {
  answered: number;
  lost: number;
  qps: number;
  perQuery: Record<string, { count: number; p50Ms: number; p99Ms: number }>;
}

/**
 * DNS over UDP, 32 queries outstanding (test/helpers/dns-load.mjs): a cached name, then a mesh name. Direct asks the
 * server namespace's DNS server itself; meshctl answers the captured queries (the mesh name authoritatively where a
 * service names it, meshctl-policy100; elsewhere from its negative cache). HAProxy serves no DNS.
 */
async function dns(lab: Lab, candidate: RunningCandidate, profile: Profile): Promise<Values | null> {
  // HAProxy serves no DNS; the two-sidecar candidates measure TCP only (their client namespace captures no DNS).
  if (isHaproxy(candidate.name) || isPairCandidate(candidate.name)) return null;
  const count = Math.max(2000, Math.round(profile.secs * 8000));
  const loop = async (name: string) => {
    const argv = [process.execPath, DNS_LOAD, lab.serverAddr, '53', String(count), '32', JSON.stringify([[name, 'A']])];
    const { result, proxyCpu } = await withProxyCpu(candidate, () =>
      runClient('dns-load', argv, loadgenOptions(lab), 120_000),
    );
    const r = parseJsonLine<DnsLoadResult>('dns-load', result);
    if (r.answered !== count || r.lost > 0)
      throw new Error(
        `dns-load against ${candidate.name}: ${r.answered} of ${count} answered, ${r.lost} lost\n${result.stderr.slice(-1000)}`,
      );
    const q = r.perQuery[`${name} A`]!;
    return {
      qps: r.qps,
      p50: q.p50Ms * 1000,
      p99: q.p99Ms * 1000,
      proxyCpu,
      loadgenCpu: result.cpuSeconds / result.wallSeconds,
    };
  };
  const cached = await loop(DNS_NAMES.cached);
  const mesh = await loop(DNS_NAMES.mesh);
  const values: Values = {
    rate: cached.qps,
    p50: cached.p50,
    p99: cached.p99,
    meshRate: mesh.qps,
    meshP50: mesh.p50,
    meshP99: mesh.p99,
    loadgenCpu: cached.loadgenCpu,
  };
  if (cached.proxyCpu !== null) values.proxyCpuPerOp = (cached.proxyCpu / count) * 1e6;
  return values;
}

function median(values: number[]): number {
  const s = [...values].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)]!;
}

/** Median of a few RSS samples: one sample can land mid-GC. */
async function sampleRss(candidate: RunningCandidate): Promise<number> {
  const samples: number[] = [];
  for (let i = 0; i < 5; i++) {
    samples.push(candidate.usage()!.rssBytes);
    await sleep(200);
  }
  return median(samples);
}

/** Established TCP connections in the client namespace whose peer is the echo server (the generator's and the proxy's). */
function echoConnections(lab: Lab): number {
  const out = execFileSync(
    'ip',
    ['netns', 'exec', lab.clientNs, 'ss', '-Htn', 'state', 'established', 'dst', `${lab.serverAddr}:${PORTS.echo}`],
    { encoding: 'utf8' },
  );
  return out.split('\n').filter((l) => l.trim() !== '').length;
}

/** Polls until no connection to the echo server is left in the client namespace (both legs closed); throws after `timeoutMs`. */
async function waitNoConnections(lab: Lab, candidate: RunningCandidate, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let left = echoConnections(lab);
  while (left > 0) {
    if (Date.now() > deadline)
      throw new Error(
        `${candidate.name}: ${left} connections to the echo server still open ${timeoutMs} ms after the generator closed its own`,
      );
    await sleep(50);
    left = echoConnections(lab);
  }
}

/**
 * The proxy's memory: its idle footprint (RSS summed over every process of the proxy, each with all its threads)
 * after start-up and a short warm-up (one second of connect + close at c=4, then every connection closed), and again
 * once it has been idle for `idleSettleSecs` (the settled footprint, the one judged), with the
 * processes and threads that ran; then the RSS per idle proxied connection: the marginal cost of connections held
 * open (one ping-pong each, so both legs are open), measured between N/5 and N held connections, so that memory the
 * proxy had committed but not used (heap pages, allocator arenas) does not make the first connections look free.
 */
async function idle(lab: Lab, candidate: RunningCandidate, profile: Profile): Promise<Values | null> {
  if (candidate.usage() === null) return null; // direct: no proxy, nothing to weigh
  const warm = [
    lab.options.tcpbench,
    'cc',
    `host=${lab.serverAddr}`,
    `port=${PORTS.echo}`,
    `src=${lab.generatorAddr}`,
    'conns=4',
    'size=64',
    `secs=${Math.min(1, profile.secs)}`,
  ];
  await runClient('tcpbench cc (warm-up)', warm, loadgenOptions(lab), 30_000);
  await waitNoConnections(lab, candidate);
  const rssIdle = await sampleRss(candidate);
  let rssSettled: number | null = null;
  if (profile.idleSettleSecs > 0) {
    await sleep(profile.idleSettleSecs * 1000);
    rssSettled = await sampleRss(candidate);
  }
  const what = candidate.usage()!;
  const n = profile.idleConns;
  const first = Math.max(1, Math.round(n / 5));
  const holds: Proc[] = [];
  let values: Values;
  try {
    // Each reading after the proxy has settled too (idleSettleSecs): meshctl hands freed memory back every 10 s, so
    // unsettled readings taken on either side of a trim made the marginal cost negative (2026-12-05 run).
    const settle = () => (profile.idleSettleSecs > 0 ? sleep(profile.idleSettleSecs * 1000) : Promise.resolve());
    holds.push(await holdEchoConnections(lab, first, `tcpbench hold through ${candidate.name}`, 60_000));
    await settle();
    const rssFirst = await sampleRss(candidate);
    holds.push(await holdEchoConnections(lab, n - first, `tcpbench hold through ${candidate.name}`, 60_000));
    await settle();
    const rssHeld = await sampleRss(candidate);
    values = {
      rssIdle,
      ...(rssSettled !== null ? { rssSettled } : {}),
      rssHeld,
      bytesPerConn: (rssHeld - rssFirst) / (n - first),
      processes: what.pids.length,
      threads: what.threads,
    };
  } finally {
    for (const hold of holds) {
      hold.child.stdin?.end();
      await stopProc(hold, 5000);
    }
  }
  await waitNoConnections(lab, candidate); // the proxy closed both legs before the next workload
  return values;
}

/**
 * Generator processes of the connect workload (16 connections each). One was not enough: against direct, its
 * single thread ran at 97 % of a core (connect, close and, on veth, the server side's receive path all run in the
 * sending process's context), so direct measured the generator, not the lab.
 */
export const CONNECT_GENERATORS = 2;

/** Lines in the candidate's access log file (0 when it does not exist yet). */
function logLines(file: string): number {
  try {
    const text = readFileSync(file, 'utf8');
    let n = 0;
    for (let i = text.indexOf('\n'); i !== -1; i = text.indexOf('\n', i + 1)) n++;
    return n;
  } catch {
    return 0;
  }
}

/**
 * connect + request + close; for a candidate with an access log, also the lines it wrote per connection (the log
 * is written asynchronously in batches: polled until it stops growing).
 */
async function connect(lab: Lab, candidate: RunningCandidate, profile: Profile): Promise<Values> {
  const file = candidate.accessLogFile;
  const before = file ? logLines(file) : 0;
  const values = await tcpbench(lab, candidate, 'cc', { conns: 32, procs: CONNECT_GENERATORS }, profile, PORTS.connect);
  if (file) {
    let lines = logLines(file);
    const deadline = Date.now() + 5000;
    for (;;) {
      await sleep(100);
      const now = logLines(file);
      if (now === lines || Date.now() > deadline) break;
      lines = now;
    }
    values.logLinesPerConn = (lines - before) / values.totalOps!;
  }
  return values;
}

/** Runs one workload once; null when it does not apply to the candidate (memory of `direct`). */
export async function runWorkload(
  name: WorkloadName,
  lab: Lab,
  candidate: RunningCandidate,
  profile: Profile,
): Promise<Values | null> {
  switch (name) {
    case 'idle':
      return idle(lab, candidate, profile);
    case 'bulk-1':
      return bulk(lab, candidate, 1, profile);
    case 'bulk-8':
      return bulk(lab, candidate, 8, profile);
    case 'rr-1':
      return tcpbench(lab, candidate, 'rr', { conns: 1 }, profile);
    case 'rr-32':
      return tcpbench(lab, candidate, 'rr', { conns: 32 }, profile);
    case 'paced':
      return tcpbench(lab, candidate, 'paced', { conns: 32, rate: profile.pacedRate }, profile);
    case 'connect-32':
      return connect(lab, candidate, profile);
    case 'http-32':
      return http(lab, candidate, profile);
    case 'dns-32':
      return dns(lab, candidate, profile);
  }
}
