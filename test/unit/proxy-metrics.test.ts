// Counters, their sum over workers and the Prometheus text.
import { describe, expect, it } from 'vitest';
import { mergeSnapshots, ProxyMetrics, renderPrometheus } from '../../src/proxy/metrics.js';

const gauges = {
  ready: true,
  draining: false,
  workers: 2,
  reloads: { ok: 1, failed: 0 },
  uptimeSeconds: 12.5,
  accessLogDropped: 3,
};

describe('ProxyMetrics', () => {
  it('counts accepted, active and closed connections by direction and result', () => {
    const m = new ProxyMetrics();
    m.accepted('outbound');
    m.accepted('outbound');
    m.accepted('inbound');
    m.closed('outbound', 'FIN', 100, 2000);
    m.refused('not-redirected');
    m.closed('outbound', 'refused', 0, 0);
    const s = m.snapshot();
    expect(s.directions.outbound).toMatchObject({
      accepted: 2,
      active: 0,
      bytesFromClient: 100,
      bytesFromUpstream: 2000,
    });
    expect(s.directions.outbound.closed).toMatchObject({ FIN: 1, refused: 1, RST: 0 });
    expect(s.directions.inbound.active).toBe(1);
    expect(s.refusals['not-redirected']).toBe(1);
  });

  it('puts connect latencies into the right histogram buckets', () => {
    const m = new ProxyMetrics();
    m.connected('outbound', 0.3); // 0.0003 s -> first bucket (0.0005)
    m.connected('outbound', 7); // 0.007 s -> 0.01 bucket
    m.connected('outbound', 60_000); // beyond 10 s -> overflow
    const h = m.snapshot().directions.outbound.connectLatency;
    expect(h.count).toBe(3);
    expect(h.counts[0]).toBe(1);
    expect(h.counts[4]).toBe(1);
    expect(h.counts[h.counts.length - 1]).toBe(1);
  });

  it('adds the bytes of open connections to a snapshot without changing the counters', () => {
    const m = new ProxyMetrics();
    const s = m.snapshot({ outbound: { fromClient: 5, fromUpstream: 7 }, inbound: { fromClient: 0, fromUpstream: 0 } });
    expect(s.directions.outbound.bytesFromClient).toBe(5);
    expect(m.snapshot().directions.outbound.bytesFromClient).toBe(0);
  });
});

describe('mergeSnapshots and renderPrometheus', () => {
  it('sums workers and renders counters, gauges and a cumulative histogram', () => {
    const a = new ProxyMetrics();
    const b = new ProxyMetrics();
    a.accepted('outbound');
    a.connected('outbound', 0.8);
    a.closed('outbound', 'FIN', 10, 20);
    b.accepted('outbound');
    b.connected('outbound', 3);
    b.closed('outbound', 'RST', 1, 2);
    b.accepted('inbound');
    b.refused('self-loop');
    const merged = mergeSnapshots([a.snapshot(), b.snapshot()]);
    const text = renderPrometheus(merged, gauges);
    expect(text).toContain('meshctl_proxy_connections_accepted_total{direction="outbound"} 2');
    expect(text).toContain('meshctl_proxy_connections_total{direction="outbound",result="FIN"} 1');
    expect(text).toContain('meshctl_proxy_connections_total{direction="outbound",result="RST"} 1');
    expect(text).toContain('meshctl_proxy_connections_active{direction="inbound"} 1');
    expect(text).toContain('meshctl_proxy_bytes_total{direction="outbound",flow="client_to_upstream"} 11');
    expect(text).toContain('meshctl_proxy_refused_total{reason="self-loop"} 1');
    expect(text).toContain('meshctl_proxy_upstream_connect_seconds_bucket{direction="outbound",le="0.001"} 1');
    expect(text).toContain('meshctl_proxy_upstream_connect_seconds_bucket{direction="outbound",le="0.005"} 2');
    expect(text).toContain('meshctl_proxy_upstream_connect_seconds_bucket{direction="outbound",le="+Inf"} 2');
    expect(text).toContain('meshctl_proxy_workers 2');
    expect(text).toContain('meshctl_proxy_access_log_dropped_total 3');
    // Every sample line is `name{labels} value` or `name value`, and every family has HELP and TYPE.
    for (const line of text.trim().split('\n'))
      expect(line).toMatch(/^(# (HELP|TYPE) \w+ .+|\w+(\{[^}]*\})? [-+\d.e]+|\w+(\{[^}]*\})? \+Inf)$/);
    const types = [...text.matchAll(/^# TYPE (\w+)/gm)].map((m) => m[1]);
    expect(new Set(types).size).toBe(types.length);
  });
});
