// The DNS server's counters: queries by type and transport, answers by rcode and by where they came from (mesh,
// cache, upstream, error), and the upstream latency histogram; rendered for /stats and Prometheus.

export type AnsweredFrom = 'mesh' | 'cache' | 'upstream' | 'error';
export const LATENCY_BUCKETS_MS = [1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500] as const;

export interface DnsSnapshot {
  readonly listening: readonly string[];
  readonly upstreams: { readonly source: string; readonly servers: readonly string[] };
  readonly queries: {
    readonly total: number;
    readonly byType: Record<string, number>;
    readonly byTransport: { readonly udp: number; readonly tcp: number };
  };
  readonly rcodes: Record<string, number>;
  readonly answeredFrom: Record<AnsweredFrom, number>;
  readonly truncated: number;
  readonly dropped: number;
  readonly inFlight: number;
  readonly upstreamLatencyMs: {
    readonly buckets: readonly { readonly le: number; readonly count: number }[];
    readonly count: number;
    readonly sum: number;
  };
  readonly cache: {
    readonly entries: number;
    readonly maxEntries: number;
    readonly hits: number;
    readonly misses: number;
    readonly evictions: number;
  };
  readonly meshNames: number;
}

export class DnsMetrics {
  total = 0;
  readonly byType: Record<string, number> = {};
  readonly byTransport = { udp: 0, tcp: 0 };
  readonly rcodes: Record<string, number> = {};
  readonly answeredFrom: Record<AnsweredFrom, number> = { mesh: 0, cache: 0, upstream: 0, error: 0 };
  truncated = 0;
  /** Queries not answered at all (not a DNS query, or over the in-flight bound). */
  dropped = 0;
  private readonly latency = LATENCY_BUCKETS_MS.map(() => 0);
  private latencyCount = 0;
  private latencySum = 0;

  query(type: string, transport: 'udp' | 'tcp'): void {
    this.total++;
    this.byType[type] = (this.byType[type] ?? 0) + 1;
    this.byTransport[transport]++;
  }

  answered(rcode: string, from: AnsweredFrom): void {
    this.rcodes[rcode] = (this.rcodes[rcode] ?? 0) + 1;
    this.answeredFrom[from]++;
  }

  upstreamLatency(ms: number): void {
    this.latencyCount++;
    this.latencySum += ms;
    LATENCY_BUCKETS_MS.forEach((le, i) => {
      if (ms <= le) this.latency[i]!++;
    });
  }

  latencySnapshot(): DnsSnapshot['upstreamLatencyMs'] {
    return {
      buckets: LATENCY_BUCKETS_MS.map((le, i) => ({ le, count: this.latency[i]! })),
      count: this.latencyCount,
      sum: Math.round(this.latencySum * 1000) / 1000,
    };
  }
}

/** Prometheus text for a DNS snapshot (empty when the proxy serves no DNS). */
export function renderDnsPrometheus(s: DnsSnapshot | null): string {
  if (s === null) return '';
  const lines: string[] = [];
  const metric = (name: string, type: string, help: string) =>
    lines.push(`# HELP ${name} ${help}`, `# TYPE ${name} ${type}`);
  metric('meshctl_dns_server_queries_total', 'counter', 'DNS queries received, by query type and transport.');
  for (const [type, n] of Object.entries(s.queries.byType))
    lines.push(`meshctl_dns_server_queries_total{type="${type}"} ${n}`);
  metric('meshctl_dns_server_queries_by_transport_total', 'counter', 'DNS queries received, by transport.');
  for (const t of ['udp', 'tcp'] as const)
    lines.push(`meshctl_dns_server_queries_by_transport_total{transport="${t}"} ${s.queries.byTransport[t]}`);
  metric('meshctl_dns_server_responses_total', 'counter', 'DNS responses sent, by rcode.');
  for (const [rcode, n] of Object.entries(s.rcodes))
    lines.push(`meshctl_dns_server_responses_total{rcode="${rcode}"} ${n}`);
  metric(
    'meshctl_dns_server_answered_total',
    'counter',
    'DNS responses by where the answer came from (mesh, cache, upstream, error).',
  );
  for (const [from, n] of Object.entries(s.answeredFrom))
    lines.push(`meshctl_dns_server_answered_total{from="${from}"} ${n}`);
  metric(
    'meshctl_dns_server_truncated_total',
    'counter',
    'UDP responses sent truncated (TC) because the answer did not fit.',
  );
  lines.push(`meshctl_dns_server_truncated_total ${s.truncated}`);
  metric(
    'meshctl_dns_server_dropped_total',
    'counter',
    'Datagrams not answered (not a DNS query, or over the in-flight bound).',
  );
  lines.push(`meshctl_dns_server_dropped_total ${s.dropped}`);
  metric('meshctl_dns_server_cache_entries', 'gauge', 'Answers in the DNS cache.');
  lines.push(`meshctl_dns_server_cache_entries ${s.cache.entries}`);
  metric(
    'meshctl_dns_server_upstream_latency_ms',
    'histogram',
    'Latency of forwarded queries (all servers tried, TCP retry included).',
  );
  for (const b of s.upstreamLatencyMs.buckets)
    lines.push(`meshctl_dns_server_upstream_latency_ms_bucket{le="${b.le}"} ${b.count}`);
  lines.push(`meshctl_dns_server_upstream_latency_ms_bucket{le="+Inf"} ${s.upstreamLatencyMs.count}`);
  lines.push(
    `meshctl_dns_server_upstream_latency_ms_sum ${s.upstreamLatencyMs.sum}`,
    `meshctl_dns_server_upstream_latency_ms_count ${s.upstreamLatencyMs.count}`,
  );
  return `${lines.join('\n')}\n`;
}
