// Connection counters of one proxy process, their JSON snapshot, the sum over worker processes, and the
// Prometheus text exposition. Counters are plain numbers bumped at accept, connect and close — never per chunk.
import { REFUSAL_REASONS, type RefusalReason } from '../policy/refusals.js';

export type Direction = 'outbound' | 'inbound';
export const DIRECTIONS: readonly Direction[] = ['outbound', 'inbound'];

/** How a connection ended (the access log's `result`). */
export type EndResult = 'FIN' | 'RST' | 'timeout' | 'refused' | 'connect-failed' | 'drain';
const END_RESULTS: readonly EndResult[] = ['FIN', 'RST', 'timeout', 'refused', 'connect-failed', 'drain'];

/** Upper bounds (seconds) of the upstream connect latency histogram. */
const CONNECT_BUCKETS_S: readonly number[] = [
  0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10,
];

export interface Histogram {
  /** Cumulative-free counts per bucket of CONNECT_BUCKETS_S, plus one overflow slot at the end. */
  counts: number[];
  sum: number;
  count: number;
}

export interface DirectionCounters {
  accepted: number;
  active: number;
  /** Closed connections by result. */
  closed: Record<EndResult, number>;
  /** Bytes read from clients and written towards upstreams. */
  bytesFromClient: number;
  /** Bytes read from upstreams and written towards clients. */
  bytesFromUpstream: number;
  connectLatency: Histogram;
}

export interface MetricsSnapshot {
  directions: Record<Direction, DirectionCounters>;
  refusals: Record<RefusalReason, number>;
}

function emptyHistogram(): Histogram {
  return { counts: new Array<number>(CONNECT_BUCKETS_S.length + 1).fill(0), sum: 0, count: 0 };
}

function emptyDirection(): DirectionCounters {
  const closed = Object.fromEntries(END_RESULTS.map((r) => [r, 0])) as Record<EndResult, number>;
  return { accepted: 0, active: 0, closed, bytesFromClient: 0, bytesFromUpstream: 0, connectLatency: emptyHistogram() };
}

function emptySnapshot(): MetricsSnapshot {
  return {
    directions: { outbound: emptyDirection(), inbound: emptyDirection() },
    refusals: Object.fromEntries(REFUSAL_REASONS.map((r) => [r, 0])) as Record<RefusalReason, number>,
  };
}

/** The live counters of one process. */
export class ProxyMetrics {
  readonly data: MetricsSnapshot = emptySnapshot();

  accepted(direction: Direction): void {
    const d = this.data.directions[direction];
    d.accepted++;
    d.active++;
  }

  connected(direction: Direction, latencyMs: number): void {
    const h = this.data.directions[direction].connectLatency;
    const seconds = latencyMs / 1000;
    let i = 0;
    while (i < CONNECT_BUCKETS_S.length && seconds > CONNECT_BUCKETS_S[i]!) i++;
    h.counts[i]!++;
    h.sum += seconds;
    h.count++;
  }

  refused(reason: RefusalReason): void {
    this.data.refusals[reason]++;
  }

  closed(direction: Direction, result: EndResult, bytesFromClient: number, bytesFromUpstream: number): void {
    const d = this.data.directions[direction];
    d.active--;
    d.closed[result]++;
    d.bytesFromClient += bytesFromClient;
    d.bytesFromUpstream += bytesFromUpstream;
  }

  /** A deep copy, with the bytes of still-open connections added so byte counters move while they run. */
  snapshot(liveBytes?: Record<Direction, { fromClient: number; fromUpstream: number }>): MetricsSnapshot {
    const copy = structuredClone(this.data);
    if (liveBytes) {
      for (const dir of DIRECTIONS) {
        copy.directions[dir].bytesFromClient += liveBytes[dir].fromClient;
        copy.directions[dir].bytesFromUpstream += liveBytes[dir].fromUpstream;
      }
    }
    return copy;
  }
}

/** Adds up the snapshots of several worker processes. */
export function mergeSnapshots(snapshots: readonly MetricsSnapshot[]): MetricsSnapshot {
  const total = emptySnapshot();
  for (const s of snapshots) {
    for (const dir of DIRECTIONS) {
      const t = total.directions[dir];
      const d = s.directions[dir];
      t.accepted += d.accepted;
      t.active += d.active;
      t.bytesFromClient += d.bytesFromClient;
      t.bytesFromUpstream += d.bytesFromUpstream;
      for (const r of END_RESULTS) t.closed[r] += d.closed[r] ?? 0;
      t.connectLatency.sum += d.connectLatency.sum;
      t.connectLatency.count += d.connectLatency.count;
      d.connectLatency.counts.forEach((n, i) => {
        t.connectLatency.counts[i] = (t.connectLatency.counts[i] ?? 0) + n;
      });
    }
    for (const r of REFUSAL_REASONS) total.refusals[r] += s.refusals[r] ?? 0;
  }
  return total;
}

export interface ProcessGauges {
  readonly ready: boolean;
  readonly draining: boolean;
  readonly workers: number;
  readonly reloads: { readonly ok: number; readonly failed: number };
  readonly uptimeSeconds: number;
  /** Access-log lines dropped over every worker (a destination that did not keep up). */
  readonly accessLogDropped: number;
}

function formatNumber(n: number): string {
  return Number.isFinite(n) ? String(n) : n > 0 ? '+Inf' : '-Inf';
}

/** Prometheus text exposition format (version 0.0.4) for a merged snapshot. */
export function renderPrometheus(s: MetricsSnapshot, gauges: ProcessGauges): string {
  const out: string[] = [];
  const family = (name: string, type: 'counter' | 'gauge' | 'histogram', help: string) => {
    out.push(`# HELP ${name} ${help}`, `# TYPE ${name} ${type}`);
  };
  family('meshctl_proxy_connections_accepted_total', 'counter', 'Connections accepted by the proxy listeners.');
  for (const dir of DIRECTIONS)
    out.push(`meshctl_proxy_connections_accepted_total{direction="${dir}"} ${s.directions[dir].accepted}`);
  family('meshctl_proxy_connections_total', 'counter', 'Closed connections by direction and how they ended.');
  for (const dir of DIRECTIONS)
    for (const r of END_RESULTS)
      out.push(`meshctl_proxy_connections_total{direction="${dir}",result="${r}"} ${s.directions[dir].closed[r]}`);
  family('meshctl_proxy_connections_active', 'gauge', 'Connections currently open.');
  for (const dir of DIRECTIONS)
    out.push(`meshctl_proxy_connections_active{direction="${dir}"} ${s.directions[dir].active}`);
  family('meshctl_proxy_bytes_total', 'counter', 'Bytes relayed; flow is client_to_upstream or upstream_to_client.');
  for (const dir of DIRECTIONS) {
    out.push(
      `meshctl_proxy_bytes_total{direction="${dir}",flow="client_to_upstream"} ${s.directions[dir].bytesFromClient}`,
    );
    out.push(
      `meshctl_proxy_bytes_total{direction="${dir}",flow="upstream_to_client"} ${s.directions[dir].bytesFromUpstream}`,
    );
  }
  family(
    'meshctl_proxy_upstream_connect_seconds',
    'histogram',
    'Time from accept to an established upstream connection.',
  );
  for (const dir of DIRECTIONS) {
    const h = s.directions[dir].connectLatency;
    let cumulative = 0;
    CONNECT_BUCKETS_S.forEach((le, i) => {
      cumulative += h.counts[i] ?? 0;
      out.push(`meshctl_proxy_upstream_connect_seconds_bucket{direction="${dir}",le="${le}"} ${cumulative}`);
    });
    out.push(`meshctl_proxy_upstream_connect_seconds_bucket{direction="${dir}",le="+Inf"} ${h.count}`);
    out.push(`meshctl_proxy_upstream_connect_seconds_sum{direction="${dir}"} ${formatNumber(h.sum)}`);
    out.push(`meshctl_proxy_upstream_connect_seconds_count{direction="${dir}"} ${h.count}`);
  }
  family(
    'meshctl_proxy_refused_total',
    'counter',
    'Connections refused without an upstream (not redirected, aimed at the proxy itself, or refused by mesh policy).',
  );
  for (const r of REFUSAL_REASONS) out.push(`meshctl_proxy_refused_total{reason="${r}"} ${s.refusals[r]}`);
  family('meshctl_proxy_ready', 'gauge', '1 when every listener accepts and the config is loaded.');
  out.push(`meshctl_proxy_ready ${gauges.ready ? 1 : 0}`);
  family('meshctl_proxy_draining', 'gauge', '1 while draining (listeners closed, open connections finishing).');
  out.push(`meshctl_proxy_draining ${gauges.draining ? 1 : 0}`);
  family('meshctl_proxy_workers', 'gauge', 'Worker processes serving the listeners.');
  out.push(`meshctl_proxy_workers ${gauges.workers}`);
  family('meshctl_proxy_config_reloads_total', 'counter', 'Config reloads by result.');
  out.push(`meshctl_proxy_config_reloads_total{result="ok"} ${gauges.reloads.ok}`);
  out.push(`meshctl_proxy_config_reloads_total{result="failed"} ${gauges.reloads.failed}`);
  family(
    'meshctl_proxy_access_log_dropped_total',
    'counter',
    'Access-log lines dropped because the destination did not keep up (the buffer is bounded).',
  );
  out.push(`meshctl_proxy_access_log_dropped_total ${gauges.accessLogDropped}`);
  family('meshctl_proxy_uptime_seconds', 'gauge', 'Seconds since the proxy started.');
  out.push(`meshctl_proxy_uptime_seconds ${gauges.uptimeSeconds.toFixed(3)}`);
  return `${out.join('\n')}\n`;
}
