// Turns the measurements into the markdown report: one row per workload metric with the median and the spread
// (min–max) over repetitions for each candidate, the ratios meshctl ÷ direct and meshctl ÷ HAProxy, the issue's
// targets with a verdict, and the checks that the load generator was not the bottleneck.
import { HAPROXY_CANDIDATES, type CandidateName } from './candidates.js';
import { isPairCandidate } from './pair.js';
import type { MachineInfo } from './tools.js';
import type { Measurement, Profile, WorkloadName } from './workloads.js';

export interface Stat {
  readonly median: number;
  readonly min: number;
  readonly max: number;
  readonly n: number;
}

export function stat(values: readonly number[]): Stat | null {
  const finite = values.filter((v) => Number.isFinite(v));
  if (finite.length === 0) return null;
  const s = [...finite].sort((a, b) => a - b);
  const mid = s.length >> 1;
  const median = s.length % 2 === 1 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
  return { median, min: s[0]!, max: s[s.length - 1]!, n: s.length };
}

type Unit =
  | 'Gbit/s'
  | 'ops/s'
  | 'conn/s'
  | 'req/s'
  | 'q/s'
  | 'µs'
  | 'µs CPU/op'
  | 'CPU s/GB'
  | 'MiB'
  | 'KiB'
  | 'bytes'
  | '% core'
  | 'count'
  | 'lines/conn';

/** Rates: higher is better; everything else (latency, CPU, memory, counts): lower. */
const HIGHER_IS_BETTER: readonly Unit[] = ['Gbit/s', 'ops/s', 'conn/s', 'req/s', 'q/s'];

interface Target {
  /** Against HAProxy's median (ratio meshctl ÷ HAProxy), or an absolute bound on meshctl's median. */
  readonly kind: 'ratio-min' | 'ratio-max' | 'abs-max';
  readonly value: number;
  readonly text: string;
}

interface RowSpec {
  readonly workload: WorkloadName;
  readonly metric: string;
  readonly label: string;
  readonly unit: Unit;
  /** Latency added over direct's median (per repetition), instead of the raw value. */
  readonly addedOverDirect?: boolean;
  readonly target?: Target;
  readonly noDirect?: boolean;
}

export const ROWS: readonly RowSpec[] = [
  {
    workload: 'bulk-1',
    metric: 'gbps',
    label: 'bulk, 1 stream (iperf3)',
    unit: 'Gbit/s',
    target: { kind: 'ratio-min', value: 0.9, text: '≥ 0.9× HAProxy' },
  },
  { workload: 'bulk-1', metric: 'proxyCpuPerGB', label: 'bulk, 1 stream: proxy CPU', unit: 'CPU s/GB', noDirect: true },
  {
    workload: 'bulk-8',
    metric: 'gbps',
    label: 'bulk, 8 streams (iperf3)',
    unit: 'Gbit/s',
    target: { kind: 'ratio-min', value: 0.9, text: '≥ 0.9× HAProxy' },
  },
  {
    workload: 'bulk-8',
    metric: 'proxyCpuPerGB',
    label: 'bulk, 8 streams: proxy CPU',
    unit: 'CPU s/GB',
    noDirect: true,
  },
  { workload: 'rr-1', metric: 'rate', label: 'RR 64 B, c=1', unit: 'ops/s' },
  { workload: 'rr-1', metric: 'p50', label: 'RR 64 B, c=1: p50', unit: 'µs' },
  { workload: 'rr-1', metric: 'p99', label: 'RR 64 B, c=1: p99', unit: 'µs' },
  {
    workload: 'rr-32',
    metric: 'rate',
    label: 'RR 64 B, c=32',
    unit: 'ops/s',
    target: { kind: 'ratio-min', value: 0.8, text: '≥ 0.8× HAProxy' },
  },
  { workload: 'rr-32', metric: 'p50', label: 'RR 64 B, c=32: p50', unit: 'µs' },
  { workload: 'rr-32', metric: 'p99', label: 'RR 64 B, c=32: p99', unit: 'µs' },
  { workload: 'rr-32', metric: 'proxyCpuPerOp', label: 'RR 64 B, c=32: proxy CPU', unit: 'µs CPU/op', noDirect: true },
  { workload: 'paced', metric: 'p50', label: 'paced: p50', unit: 'µs' },
  { workload: 'paced', metric: 'p99', label: 'paced: p99', unit: 'µs' },
  {
    workload: 'paced',
    metric: 'p50',
    label: 'paced: p50 added over direct',
    unit: 'µs',
    addedOverDirect: true,
    noDirect: true,
  },
  {
    workload: 'paced',
    metric: 'p99',
    label: 'paced: p99 added over direct',
    unit: 'µs',
    addedOverDirect: true,
    noDirect: true,
    target: { kind: 'ratio-max', value: 1.5, text: '≤ 1.5× HAProxy' },
  },
  {
    workload: 'connect-32',
    metric: 'rate',
    label: 'connect+request+close, c=32',
    unit: 'conn/s',
    target: { kind: 'ratio-min', value: 1.0, text: '≥ 1.0× best HAProxy' },
  },
  { workload: 'connect-32', metric: 'p99', label: 'connect+request+close, c=32: p99', unit: 'µs' },
  {
    workload: 'connect-32',
    metric: 'proxyCpuPerOp',
    label: 'connect+request+close: proxy CPU',
    unit: 'µs CPU/op',
    noDirect: true,
    target: { kind: 'ratio-max', value: 1.2, text: '≤ 1.2× best HAProxy' },
  },
  {
    workload: 'connect-32',
    metric: 'logLinesPerConn',
    label: 'connect+request+close: access log lines per connection',
    unit: 'lines/conn',
    noDirect: true,
  },
  { workload: 'http-32', metric: 'rate', label: 'HTTP/1.1 wrk → nginx, c=32', unit: 'req/s' },
  { workload: 'http-32', metric: 'p99', label: 'HTTP/1.1 wrk → nginx, c=32: p99', unit: 'µs' },
  { workload: 'http-32', metric: 'proxyCpuPerOp', label: 'HTTP/1.1: proxy CPU', unit: 'µs CPU/op', noDirect: true },
  { workload: 'dns-32', metric: 'rate', label: 'DNS, c=32: cached name (direct: the DNS server itself)', unit: 'q/s' },
  { workload: 'dns-32', metric: 'p99', label: 'DNS, c=32: cached name: p99', unit: 'µs' },
  {
    workload: 'dns-32',
    metric: 'meshRate',
    label: 'DNS, c=32: mesh name (policy100: authoritative; meshctl: negative cache)',
    unit: 'q/s',
  },
  { workload: 'dns-32', metric: 'meshP99', label: 'DNS, c=32: mesh name: p99', unit: 'µs' },
  {
    workload: 'dns-32',
    metric: 'proxyCpuPerOp',
    label: 'DNS, cached name: proxy CPU',
    unit: 'µs CPU/op',
    noDirect: true,
  },
  {
    workload: 'idle',
    metric: 'rssIdle',
    label: 'footprint right after the warm-up: RSS of all proxy processes',
    unit: 'MiB',
    noDirect: true,
  },
  {
    workload: 'idle',
    metric: 'rssSettled',
    label: 'idle footprint (settled): RSS of all proxy processes',
    unit: 'MiB',
    noDirect: true,
    target: { kind: 'abs-max', value: 60e6, text: '≤ 60 MB' },
  },
  { workload: 'idle', metric: 'processes', label: 'idle footprint: proxy processes', unit: 'count', noDirect: true },
  {
    workload: 'idle',
    metric: 'threads',
    label: 'idle footprint: proxy threads (all processes)',
    unit: 'count',
    noDirect: true,
  },
  { workload: 'idle', metric: 'rssHeld', label: 'proxy RSS, N idle connections', unit: 'MiB', noDirect: true },
  {
    workload: 'idle',
    metric: 'bytesPerConn',
    label: 'RSS per idle proxied connection (both legs)',
    unit: 'KiB',
    noDirect: true,
    target: { kind: 'abs-max', value: 4096, text: '≤ 4 KiB' },
  },
];

function scale(unit: Unit, v: number): number {
  if (unit === 'MiB') return v / 2 ** 20;
  if (unit === 'KiB') return v / 1024;
  return unit === '% core' ? v * 100 : v;
}

function fmt(v: number): string {
  const a = Math.abs(v);
  if (a >= 100_000) return `${(v / 1000).toFixed(0)}k`;
  if (a >= 10_000) return `${(v / 1000).toFixed(1)}k`;
  if (a >= 100) return v.toFixed(0);
  if (a >= 10) return v.toFixed(1);
  return v.toFixed(2);
}

function cell(s: Stat | null, unit: Unit): string {
  if (!s) return '–';
  const [m, lo, hi] = [s.median, s.min, s.max].map((v) => scale(unit, v)) as [number, number, number];
  return s.n > 1 ? `${fmt(m)} (${fmt(lo)}–${fmt(hi)})` : fmt(m);
}

export interface Summary {
  readonly workload: WorkloadName;
  readonly metric: string;
  readonly label: string;
  readonly unit: string;
  readonly stats: Partial<Record<CandidateName, Stat | null>>;
  readonly vsDirect: number | null;
  /** meshctl ÷ the better of HAProxy's candidates on this row (higher rate, lower latency/CPU/memory). */
  readonly vsHaproxy: number | null;
  /** Which HAProxy candidate that was. */
  readonly bestHaproxy: CandidateName | null;
  readonly target: string | null;
  /** true = met, false = missed, null = no target, not measurable, or capped. */
  readonly met: boolean | null;
  /** The lab capped this row (connect + close with direct < 2× the best proxy): it does not count. */
  readonly capped: boolean;
}

function valuesOf(
  ms: readonly Measurement[],
  workload: WorkloadName,
  candidate: CandidateName,
  metric: string,
): number[] {
  return ms
    .filter((m) => m.workload === workload && m.candidate === candidate && m.values[metric] !== undefined)
    .map((m) => m.values[metric]!);
}

/** The HAProxy candidate whose median is the better one (`higher`: the larger), or null when none ran. */
export function bestHaproxy(
  stats: Partial<Record<CandidateName, Stat | null>>,
  higher: boolean,
): { name: CandidateName; median: number } | null {
  let best: { name: CandidateName; median: number } | null = null;
  for (const name of HAPROXY_CANDIDATES) {
    const median = stats[name]?.median;
    if (median === undefined) continue;
    if (best === null || (higher ? median > best.median : median < best.median)) best = { name, median };
  }
  return best;
}

/** The lab's own check: on connect + close, direct must reach this many times the best proxy's rate. */
export const UNCAPPED_FACTOR = 2;
/** The workloads the check covers (the connection-setup rows, and the access-log rows derived from them). */
const CAPPABLE: readonly WorkloadName[] = ['connect-32'];

export interface LabCheck {
  readonly direct: number;
  readonly bestProxy: CandidateName;
  readonly bestProxyRate: number;
  readonly ratio: number;
  /** direct ≥ UNCAPPED_FACTOR × the best proxy. */
  readonly ok: boolean;
}

/**
 * Is the lab uncapped for connection setup? Direct's median connect-32 rate against the best median of `proxies`
 * (every candidate but direct; the two-sidecar candidates are checked on their own). Null when direct or no proxy
 * ran the workload.
 */
export function labCheck(measurements: readonly Measurement[], proxies: readonly CandidateName[]): LabCheck | null {
  const direct = stat(valuesOf(measurements, 'connect-32', 'direct', 'rate'))?.median;
  if (direct === undefined) return null;
  let best: { name: CandidateName; rate: number } | null = null;
  for (const name of proxies) {
    if (name === 'direct') continue;
    const rate = stat(valuesOf(measurements, 'connect-32', name, 'rate'))?.median;
    if (rate !== undefined && (best === null || rate > best.rate)) best = { name, rate };
  }
  if (best === null) return null;
  const ratio = best.rate > 0 ? direct / best.rate : Number.POSITIVE_INFINITY;
  return { direct, bestProxy: best.name, bestProxyRate: best.rate, ratio, ok: ratio >= UNCAPPED_FACTOR };
}

/** The check as one line of the report: ok, or CAPPED with the numbers. */
export function labCheckLine(check: LabCheck | null, what: string): string {
  if (check === null) return `Lab check (${what}): not measured (needs direct and a proxy on connect-32).`;
  const numbers = `direct ${fmt(check.direct)} conn/s ÷ best proxy (${NAMES[check.bestProxy]}) ${fmt(check.bestProxyRate)} conn/s = ${check.ratio.toFixed(2)}×`;
  return check.ok
    ? `Lab check (${what}): ok — ${numbers} (≥ ${UNCAPPED_FACTOR}×): the lab does not cap connection setup.`
    : `Lab check (${what}): **CAPPED** — ${numbers} (< ${UNCAPPED_FACTOR}×): the lab limits every candidate's connection setup; the connect rows do not count.`;
}

/** One summary per row, from all repetitions. */
export function summarise(measurements: readonly Measurement[], candidates: readonly CandidateName[]): Summary[] {
  const out: Summary[] = [];
  const check = labCheck(measurements, candidates);
  const capped = check !== null && !check.ok;
  for (const row of ROWS) {
    if (!measurements.some((m) => m.workload === row.workload)) continue;
    const directMedian = stat(valuesOf(measurements, row.workload, 'direct', row.metric))?.median ?? null;
    const stats: Partial<Record<CandidateName, Stat | null>> = {};
    for (const c of candidates) {
      if (c === 'direct' && row.noDirect) continue;
      let values = valuesOf(measurements, row.workload, c, row.metric);
      if (row.addedOverDirect) values = directMedian === null ? [] : values.map((v) => v - directMedian);
      stats[c] = stat(values);
    }
    const mesh = stats.meshctl?.median ?? null;
    const best = bestHaproxy(stats, HIGHER_IS_BETTER.includes(row.unit));
    const ha = best?.median ?? null;
    const direct = stats.direct?.median ?? null;
    const vsDirect = mesh !== null && direct !== null && direct !== 0 ? mesh / direct : null;
    const vsHaproxy = mesh !== null && ha !== null && ha !== 0 ? mesh / ha : null;
    const rowCapped = capped && CAPPABLE.includes(row.workload);
    let met: boolean | null = null;
    if (row.target && !rowCapped) {
      if (row.target.kind === 'abs-max') met = mesh === null ? null : mesh <= row.target.value;
      else if (row.target.kind === 'ratio-min') met = vsHaproxy === null ? null : vsHaproxy >= row.target.value;
      else if (mesh !== null && ha !== null && ha > 0) met = mesh / ha <= row.target.value;
      else if (mesh !== null && ha !== null && row.addedOverDirect && best !== null) {
        // HAProxy's added latency at or below zero: its p99 is within this machine's wake-up noise of direct's, and
        // no ratio to it means anything. The raw latencies are compared instead (the same bound on the ratio).
        const raw = (c: CandidateName) => stat(valuesOf(measurements, row.workload, c, row.metric))?.median ?? null;
        const meshRaw = raw('meshctl');
        const haRaw = raw(best.name);
        met = meshRaw === null || haRaw === null || haRaw <= 0 ? null : meshRaw / haRaw <= row.target.value;
      } else if (mesh !== null && ha !== null) met = mesh <= ha;
    }
    out.push({
      workload: row.workload,
      metric: row.metric,
      label: row.label,
      unit: row.unit,
      stats,
      vsDirect,
      vsHaproxy,
      bestHaproxy: best?.name ?? null,
      target: row.target?.text ?? null,
      met,
      capped: rowCapped,
    });
  }
  return out;
}

export interface ReportInput {
  readonly info: MachineInfo;
  readonly profile: Profile;
  readonly candidates: readonly CandidateName[];
  readonly measurements: readonly Measurement[];
  readonly setup: readonly string[];
  readonly notes?: readonly string[];
}

const NAMES: Record<CandidateName, string> = {
  direct: 'direct',
  'haproxy-1t': 'HAProxy 1 thread',
  'haproxy-2t': 'HAProxy 2 threads',
  meshctl: 'meshctl',
  'meshctl-log': 'meshctl, access log on',
  'meshctl-policy100': 'meshctl, 100 services',
  'meshctl-node': 'meshctl, Node streams relay',
  'meshctl-mtls': 'meshctl ×2, mTLS tunnel',
  'meshctl-pair': 'meshctl ×2, plaintext',
  'haproxy-tls': 'HAProxy ×2, TLS 1.3',
};

export function renderReport(input: ReportInput): string {
  const { info, profile, measurements } = input;
  // The main table compares single-sidecar candidates; the two-sidecar ones get their own section.
  const candidates = input.candidates.filter((c) => !isPairCandidate(c));
  const summaries = candidates.length > 0 ? summarise(measurements, candidates) : [];
  const lines: string[] = [];
  lines.push(`# meshctl benchmark — ${info.date.slice(0, 10)}`, '');
  lines.push(`- Machine: ${info.cpu}, ${info.cores} cores, ${info.memoryGiB} GiB, Linux ${info.kernel}`);
  lines.push(
    `- Versions: meshctl ${info.commit}, Node ${info.node}, ${Object.entries(info.versions)
      .map(([k, v]) => `${k}: ${v}`)
      .join('; ')}`,
  );
  lines.push(
    `- Run: ${profile.repetitions} repetition(s) × ${profile.secs} s measured (+${profile.warmup} s warm-up) per workload and candidate; candidates interleaved per repetition; cells are median (min–max).`,
  );
  for (const s of input.setup) lines.push(`- ${s}`);
  lines.push('');
  const check = candidates.length > 0 ? labCheck(measurements, candidates) : null;
  if (check !== null) lines.push(labCheckLine(check, 'connect + close'), '');
  if (candidates.length > 0) {
    const head = [
      'workload',
      'unit',
      ...candidates.map((c) => NAMES[c]),
      'meshctl ÷ direct',
      'meshctl ÷ best HAProxy',
      'target',
      '',
    ];
    lines.push(`| ${head.join(' | ')} |`, `|${head.map(() => '---').join('|')}|`);
    for (const s of summaries) {
      const ratio = (r: number | null) => (r === null ? '–' : `${r.toFixed(2)}×`);
      const verdict = s.capped ? CAPPED_VERDICT : s.met === null ? '' : s.met ? 'met' : '**missed**';
      lines.push(
        `| ${[s.label, s.unit, ...candidates.map((c) => (c in s.stats ? cell(s.stats[c] ?? null, s.unit as Unit) : '–')), ratio(s.vsDirect), ratio(s.vsHaproxy), s.target ?? '', verdict].join(' | ')} |`,
      );
    }
    lines.push('');
    const log = accessLogSection(measurements, candidates, check !== null && !check.ok);
    if (log.length > 0) lines.push(...log, '');
  }
  const pair = pairSection(measurements, input.candidates);
  if (pair.length > 0) lines.push(...pair, '');
  lines.push('## Checks', '');
  if (check !== null) lines.push(labCheckLine(check, 'connect + close'), '');
  lines.push(...loadgenChecks(measurements, input.candidates));
  const policy = policyChecks(measurements, candidates);
  if (policy.length > 0) lines.push('', ...policy);
  if (input.notes && input.notes.length > 0) lines.push('', '## Notes', '', ...input.notes);
  lines.push('');
  return lines.join('\n');
}

/** The verdict of a row the lab capped (see labCheck): it is neither met nor missed. */
export const CAPPED_VERDICT = '**CAPPED**: does not count';

export interface AccessLogCost {
  readonly rate: { readonly meshctl: number; readonly logged: number; readonly costPercent: number } | null;
  readonly cpu: {
    readonly meshctl: number;
    readonly logged: number;
    readonly linesPerConn: number;
    /** (meshctl-log − meshctl) CPU per connection ÷ lines logged per connection. */
    readonly perLoggedConn: number;
  } | null;
}

/** Issue 19's access-log targets: ≤ 10 µs of CPU per logged connection, ≤ 10 % of the connection rate. */
export const ACCESS_LOG_TARGETS = { cpuMicros: 10, ratePercent: 10 } as const;

/**
 * What the access log costs on connect + close: meshctl-log against meshctl (medians over repetitions). The CPU cost
 * is per *logged* connection (divided by the lines the log got per connection, so sampling does not hide it).
 */
export function accessLogCost(measurements: readonly Measurement[]): AccessLogCost {
  const med = (c: CandidateName, metric: string) => stat(valuesOf(measurements, 'connect-32', c, metric))?.median;
  const rateMesh = med('meshctl', 'rate');
  const rateLog = med('meshctl-log', 'rate');
  const cpuMesh = med('meshctl', 'proxyCpuPerOp');
  const cpuLog = med('meshctl-log', 'proxyCpuPerOp');
  const lines = med('meshctl-log', 'logLinesPerConn');
  return {
    rate:
      rateMesh !== undefined && rateLog !== undefined && rateMesh > 0
        ? { meshctl: rateMesh, logged: rateLog, costPercent: (1 - rateLog / rateMesh) * 100 }
        : null,
    cpu:
      cpuMesh !== undefined && cpuLog !== undefined && lines !== undefined && lines > 0
        ? { meshctl: cpuMesh, logged: cpuLog, linesPerConn: lines, perLoggedConn: (cpuLog - cpuMesh) / lines }
        : null,
  };
}

/** The access-log section (issue 19): its cost in CPU per logged connection and in connection rate. */
export function accessLogSection(
  measurements: readonly Measurement[],
  candidates: readonly CandidateName[],
  capped: boolean,
): string[] {
  if (!candidates.includes('meshctl') || !candidates.includes('meshctl-log')) return [];
  const cost = accessLogCost(measurements);
  if (cost.rate === null && cost.cpu === null) return [];
  const verdict = (met: boolean) => (capped ? CAPPED_VERDICT : met ? 'met' : '**missed**');
  const lines = [
    '## Access log (issue 19)',
    '',
    'meshctl with its access log on (default settings, to a file in the run’s scratch directory) against meshctl without, on connect + request + close, c=32 (medians).',
    '',
    '| row | meshctl | meshctl, access log on | cost | target | |',
    '|---|---|---|---|---|---|',
  ];
  if (cost.cpu)
    lines.push(
      `| access log: CPU µs per logged connection | ${fmt(cost.cpu.meshctl)} µs/conn | ${fmt(cost.cpu.logged)} µs/conn (${fmt(cost.cpu.linesPerConn)} lines/conn) | ${fmt(cost.cpu.perLoggedConn)} µs | ≤ ${ACCESS_LOG_TARGETS.cpuMicros} µs | ${verdict(cost.cpu.perLoggedConn <= ACCESS_LOG_TARGETS.cpuMicros)} |`,
    );
  if (cost.rate)
    lines.push(
      `| access log: rate cost % | ${fmt(cost.rate.meshctl)} conn/s | ${fmt(cost.rate.logged)} conn/s | ${cost.rate.costPercent.toFixed(1)} % | ≤ ${ACCESS_LOG_TARGETS.ratePercent} % | ${verdict(cost.rate.costPercent <= ACCESS_LOG_TARGETS.ratePercent)} |`,
    );
  return lines;
}

/** The rows the mesh-policy issue bounds: request/response and connect rates with 100 services vs none. */
export const POLICY_ROWS: readonly { workload: WorkloadName; metric: string; label: string }[] = [
  { workload: 'rr-1', metric: 'rate', label: 'RR 64 B, 1 connection: rate' },
  { workload: 'rr-32', metric: 'rate', label: 'RR 64 B, 32 connections: rate' },
  { workload: 'connect-32', metric: 'rate', label: 'connect + close, 32 at a time: rate' },
];

/**
 * Policy cost: meshctl with 100 services (every bench connection matched to a service) ÷ meshctl with none, for
 * the RR and connect-rate rows; the target is within 5 %. Empty unless both candidates ran.
 */
export function policyChecks(measurements: readonly Measurement[], candidates: readonly CandidateName[]): string[] {
  if (!candidates.includes('meshctl') || !candidates.includes('meshctl-policy100')) return [];
  const lines = [
    'Policy cost: meshctl with 100 services configured (the bench destinations among them, so every connection takes the service path) ÷ meshctl with none.',
    '',
    '| row | meshctl | meshctl, 100 services | ratio | target | |',
    '|---|---|---|---|---|---|',
  ];
  for (const row of POLICY_ROWS) {
    const none = stat(valuesOf(measurements, row.workload, 'meshctl', row.metric))?.median;
    const hundred = stat(valuesOf(measurements, row.workload, 'meshctl-policy100', row.metric))?.median;
    if (none === undefined || hundred === undefined) continue;
    const ratio = none > 0 ? hundred / none : null;
    const verdict = ratio === null ? '' : ratio >= 0.95 ? 'met' : '**missed**';
    lines.push(
      `| ${row.label} | ${fmt(none)} | ${fmt(hundred)} | ${ratio === null ? '–' : `${ratio.toFixed(3)}×`} | ≥ 0.95× | ${verdict} |`,
    );
  }
  return lines;
}

/** A row of the two-sidecar section: which way is better decides how the ratio is read against the target. */
export interface PairRowSpec {
  readonly workload: WorkloadName;
  readonly metric: string;
  readonly label: string;
  readonly unit: Unit;
  readonly better: 'higher' | 'lower';
  readonly addedOverDirect?: boolean;
  /** The issue's bound: meshctl-mtls at least 0.8× as good as haproxy-tls (rates ≥ 0.8×, latencies ≤ 1.25×). */
  readonly target?: boolean;
}

/** The issue-18 bound: meshctl's mTLS tunnel at least 0.8× HAProxy-TLS. */
export const PAIR_TARGET = 0.8;

export const PAIR_ROWS: readonly PairRowSpec[] = [
  { workload: 'bulk-1', metric: 'gbps', label: 'bulk, 1 stream', unit: 'Gbit/s', better: 'higher', target: true },
  {
    workload: 'bulk-1',
    metric: 'proxyCpuPerGB',
    label: 'bulk, 1 stream: CPU of the sidecar(s)',
    unit: 'CPU s/GB',
    better: 'lower',
  },
  { workload: 'bulk-8', metric: 'gbps', label: 'bulk, 8 streams', unit: 'Gbit/s', better: 'higher', target: true },
  {
    workload: 'bulk-8',
    metric: 'proxyCpuPerGB',
    label: 'bulk, 8 streams: CPU of the sidecar(s)',
    unit: 'CPU s/GB',
    better: 'lower',
  },
  { workload: 'rr-1', metric: 'rate', label: 'RR 64 B, c=1', unit: 'ops/s', better: 'higher' },
  { workload: 'rr-1', metric: 'p50', label: 'RR 64 B, c=1: p50', unit: 'µs', better: 'lower' },
  { workload: 'rr-32', metric: 'rate', label: 'RR 64 B, c=32', unit: 'ops/s', better: 'higher', target: true },
  { workload: 'rr-32', metric: 'p99', label: 'RR 64 B, c=32: p99', unit: 'µs', better: 'lower' },
  {
    workload: 'rr-32',
    metric: 'proxyCpuPerOp',
    label: 'RR 64 B, c=32: CPU of the sidecar(s)',
    unit: 'µs CPU/op',
    better: 'lower',
  },
  { workload: 'paced', metric: 'p99', label: 'paced: p99', unit: 'µs', better: 'lower' },
  {
    workload: 'paced',
    metric: 'p99',
    label: 'paced: p99 added over direct',
    unit: 'µs',
    better: 'lower',
    addedOverDirect: true,
    target: true,
  },
  {
    workload: 'paced',
    metric: 'proxyCpuPerOp',
    label: 'paced: CPU of the sidecar(s)',
    unit: 'µs CPU/op',
    better: 'lower',
  },
  {
    workload: 'connect-32',
    metric: 'rate',
    label: 'connect+request+close, c=32',
    unit: 'conn/s',
    better: 'higher',
    target: true,
  },
  { workload: 'connect-32', metric: 'p99', label: 'connect+request+close, c=32: p99', unit: 'µs', better: 'lower' },
  {
    workload: 'connect-32',
    metric: 'proxyCpuPerOp',
    label: 'connect+request+close: CPU of the sidecar(s)',
    unit: 'µs CPU/op',
    better: 'lower',
  },
];

export interface PairSummary {
  readonly row: PairRowSpec;
  readonly stats: Partial<Record<CandidateName, Stat | null>>;
  /** meshctl-mtls ÷ haproxy-tls (medians). */
  readonly mtlsVsHaproxyTls: number | null;
  /** meshctl-pair ÷ meshctl (the single sidecar). */
  readonly pairVsSingle: number | null;
  /** true = met, false = missed, null = no target, not measurable, or capped. */
  readonly met: boolean | null;
  /** The two-sidecar lab capped this row (direct < 2× the best two-sidecar candidate on connect + close). */
  readonly capped: boolean;
}

const PAIR_COLUMNS: readonly CandidateName[] = [
  'direct',
  'meshctl',
  'haproxy-1t',
  'haproxy-2t',
  'meshctl-pair',
  'meshctl-mtls',
  'haproxy-tls',
];

/** The lab check for the two-sidecar candidates: direct against the best of them on connect + close. */
export function pairLabCheck(measurements: readonly Measurement[]): LabCheck | null {
  return labCheck(
    measurements,
    PAIR_COLUMNS.filter((c) => isPairCandidate(c)),
  );
}

/** One summary per two-sidecar row that has a measurement of a two-sidecar candidate. */
export function summarisePairs(measurements: readonly Measurement[]): PairSummary[] {
  const out: PairSummary[] = [];
  const check = pairLabCheck(measurements);
  const capped = check !== null && !check.ok;
  for (const row of PAIR_ROWS) {
    if (!measurements.some((m) => m.workload === row.workload && isPairCandidate(m.candidate))) continue;
    const directMedian = stat(valuesOf(measurements, row.workload, 'direct', row.metric))?.median ?? null;
    const stats: Partial<Record<CandidateName, Stat | null>> = {};
    for (const c of PAIR_COLUMNS) {
      if (c === 'direct' && row.addedOverDirect) continue;
      let values = valuesOf(measurements, row.workload, c, row.metric);
      if (row.addedOverDirect) values = directMedian === null ? [] : values.map((v) => v - directMedian);
      stats[c] = stat(values);
    }
    const ratio = (a: CandidateName, b: CandidateName) => {
      const x = stats[a]?.median ?? null;
      const y = stats[b]?.median ?? null;
      return x !== null && y !== null && y !== 0 ? x / y : null;
    };
    const mtlsVsHaproxyTls = ratio('meshctl-mtls', 'haproxy-tls');
    const rowCapped = capped && CAPPABLE.includes(row.workload);
    let met: boolean | null = null;
    if (row.target && !rowCapped) {
      const mesh = stats['meshctl-mtls']?.median ?? null;
      const ha = stats['haproxy-tls']?.median ?? null;
      if (row.better === 'higher') met = mtlsVsHaproxyTls === null ? null : mtlsVsHaproxyTls >= PAIR_TARGET;
      // Lower is better (added latency): at least 0.8× as fast = at most 1 / 0.8 = 1.25× the latency.
      else if (mesh !== null && ha !== null) met = ha > 0 ? mesh / ha <= 1 / PAIR_TARGET : mesh <= ha;
    }
    out.push({ row, stats, mtlsVsHaproxyTls, pairVsSingle: ratio('meshctl-pair', 'meshctl'), met, capped: rowCapped });
  }
  return out;
}

/**
 * The two-sidecar section (issue 18's "Speed"): meshctl-mtls against haproxy-tls with the 0.8× target, and the
 * plaintext pair next to the single-sidecar meshctl and HAProxy. Empty unless a two-sidecar candidate ran.
 */
export function pairSection(measurements: readonly Measurement[], candidates: readonly CandidateName[]): string[] {
  if (!candidates.some(isPairCandidate)) return [];
  const summaries = summarisePairs(measurements);
  const columns = PAIR_COLUMNS.filter((c) => candidates.includes(c));
  const lines = [
    '## Two sidecars: mTLS tunnel (issue 18)',
    '',
    'Client netns (generator, capture, sidecar A) → sidecar B in the server netns → server. meshctl ×2, mTLS tunnel: A tunnels to B (HTTP/2 CONNECT over TLS 1.3, client and server certificates from `meshctl ca`, EC P-256), B `mtls.inbound: strict`; meshctl ×2, plaintext: the same sidecars without mTLS (B takes A’s connection through inbound capture); HAProxy ×2, TLS 1.3: A originates TLS 1.3 with a client certificate (`verify required`) and a PROXY v2 header, B terminates it verifying A’s certificate. CPU rows are both sidecars’ processes summed (the single-sidecar columns: the one proxy). Target: mTLS ÷ HAProxy-TLS ≥ 0.8× for rates, ≤ 1.25× (= 0.8× as fast) for the added latency.',
    '',
  ];
  if (measurements.some((m) => m.workload === 'connect-32' && isPairCandidate(m.candidate)))
    lines.push(labCheckLine(pairLabCheck(measurements), 'two sidecars, connect + close'), '');
  const head = [
    'workload',
    'unit',
    ...columns.map((c) => NAMES[c]),
    'mTLS ÷ HAProxy-TLS',
    'target',
    '',
    'plaintext ×2 ÷ meshctl',
  ];
  lines.push(`| ${head.join(' | ')} |`, `|${head.map(() => '---').join('|')}|`);
  const ratio = (r: number | null) => (r === null ? '–' : `${r.toFixed(2)}×`);
  for (const s of summaries) {
    const target = s.row.target ? (s.row.better === 'higher' ? `≥ ${PAIR_TARGET}×` : `≤ ${1 / PAIR_TARGET}×`) : '';
    const verdict = s.capped ? CAPPED_VERDICT : s.met === null ? '' : s.met ? 'met' : '**missed**';
    lines.push(
      `| ${[s.row.label, s.row.unit, ...columns.map((c) => cell(s.stats[c] ?? null, s.row.unit)), ratio(s.mtlsVsHaproxyTls), target, verdict, ratio(s.pairVsSingle)].join(' | ')} |`,
    );
  }
  const judged = summaries.filter((s) => s.met !== null);
  if (judged.length > 0) lines.push('', `Target rows met: ${judged.filter((s) => s.met).length} of ${judged.length}.`);
  return lines;
}

const RATE_METRIC: Partial<Record<WorkloadName, string>> = {
  'bulk-1': 'gbps',
  'bulk-8': 'gbps',
  'rr-1': 'rate',
  'rr-32': 'rate',
  paced: 'rate',
  'connect-32': 'rate',
  'http-32': 'rate',
  'dns-32': 'rate',
};

/**
 * The load generator is not the bottleneck of a proxied run when direct (same generator, no proxy) reaches a
 * higher rate: the generator could have gone faster. Its own CPU use is shown too (one core = 100 %).
 */
export function loadgenChecks(measurements: readonly Measurement[], candidates: readonly CandidateName[]): string[] {
  const lines = [
    'Load generator headroom: the same generator against direct vs against each proxy, and its CPU use (one thread = at most 100 % of a core; wrk and iperf3 also single-threaded; connect-32 runs two generator processes, at most 200 %).',
    '',
    '| workload | direct rate ÷ best proxy rate | load generator CPU: ' +
      candidates.map((c) => NAMES[c]).join(' / ') +
      ' | verdict |',
    '|---|---|---|---|',
  ];
  for (const [workload, metric] of Object.entries(RATE_METRIC) as [WorkloadName, string][]) {
    if (!measurements.some((m) => m.workload === workload)) continue;
    const direct = stat(valuesOf(measurements, workload, 'direct', metric))?.median;
    const proxied = candidates
      .filter((c) => c !== 'direct')
      .map((c) => stat(valuesOf(measurements, workload, c, metric))?.median ?? 0);
    const best = Math.max(0, ...proxied);
    const cpu = candidates.map((c) => {
      const s = stat(valuesOf(measurements, workload, c, 'loadgenCpu'));
      return s ? `${(s.median * 100).toFixed(0)} %` : '–';
    });
    const headroom = direct !== undefined && best > 0 ? direct / best : null;
    const late = candidates
      .map((c) => stat(valuesOf(measurements, workload, c, 'generatorLateP99')))
      .map((s) => (s ? fmt(s.median) : '–'));
    const verdict =
      workload === 'paced'
        ? `fixed rate (open loop): rates equal by design; the generator's own send lateness p99 (this machine's wake-up latency, in every latency above): ${late.join(' / ')} µs`
        : headroom === null
          ? '–'
          : headroom > 1.05
            ? 'not the bottleneck'
            : '**generator may limit the proxies**';
    lines.push(
      `| ${workload} | ${headroom === null ? '–' : `${headroom.toFixed(2)}×`} | ${cpu.join(' / ')} | ${verdict} |`,
    );
  }
  return lines;
}
