// The benchmark's pure parts: statistics, target verdicts, the added-latency rows, the generator checks and the
// wrk parser (bench/report.ts, bench/workloads.ts).
import { describe, expect, it } from 'vitest';
import { loadgenChecks, renderReport, stat, summarise } from '../../bench/report.js';
import type { Measurement, WorkloadName } from '../../bench/workloads.js';
import { parseWrk } from '../../bench/workloads.js';
import type { CandidateName } from '../../bench/candidates.js';

const all: CandidateName[] = ['direct', 'haproxy', 'meshctl'];

function m(workload: WorkloadName, candidate: CandidateName, rep: number, values: Record<string, number>): Measurement {
  return { workload, candidate, rep, values };
}

describe('bench statistics', () => {
  it('takes the median of an odd and an even number of values and keeps min and max', () => {
    expect(stat([5, 1, 3])).toEqual({ median: 3, min: 1, max: 5, n: 3 });
    expect(stat([4, 1, 3, 2])).toEqual({ median: 2.5, min: 1, max: 4, n: 4 });
  });

  it('ignores values that are not finite and returns null when nothing is left', () => {
    expect(stat([Number.NaN, 2])).toEqual({ median: 2, min: 2, max: 2, n: 1 });
    expect(stat([])).toBeNull();
  });
});

describe('bench summary', () => {
  it('computes both ratios from medians and judges a throughput target against HAProxy', () => {
    const ms = [
      m('rr-32', 'direct', 1, { rate: 200 }),
      m('rr-32', 'haproxy', 1, { rate: 100 }),
      m('rr-32', 'meshctl', 1, { rate: 79 }),
      m('rr-32', 'meshctl', 2, { rate: 85 }),
      m('rr-32', 'meshctl', 3, { rate: 81 }),
    ];
    const row = summarise(ms, all).find((s) => s.workload === 'rr-32' && s.metric === 'rate')!;
    expect(row.stats.meshctl).toEqual({ median: 81, min: 79, max: 85, n: 3 });
    expect(row.vsDirect).toBeCloseTo(0.405);
    expect(row.vsHaproxy).toBeCloseTo(0.81);
    expect(row.met).toBe(true);
    const missed = summarise([...ms.slice(0, 2), m('rr-32', 'meshctl', 1, { rate: 79 })], all).find(
      (s) => s.workload === 'rr-32' && s.metric === 'rate',
    )!;
    expect(missed.met).toBe(false);
  });

  it('subtracts direct’s median latency for the added-latency rows and compares the proxies on that', () => {
    const ms = [
      m('paced', 'direct', 1, { p50: 50, p99: 100, rate: 10 }),
      m('paced', 'haproxy', 1, { p50: 70, p99: 140, rate: 10 }),
      m('paced', 'meshctl', 1, { p50: 80, p99: 170, rate: 10 }),
    ];
    const added = summarise(ms, all).find((s) => s.label === 'paced: p99 added over direct')!;
    expect(added.stats.haproxy?.median).toBe(40);
    expect(added.stats.meshctl?.median).toBe(70);
    expect(added.stats.direct).toBeUndefined();
    expect(added.vsHaproxy).toBeCloseTo(1.75);
    expect(added.met).toBe(false);
  });

  it('judges memory per connection against the absolute 6 KiB bound', () => {
    const row = (bytes: number) =>
      summarise(
        [m('idle', 'haproxy', 1, { bytesPerConn: 9000 }), m('idle', 'meshctl', 1, { bytesPerConn: bytes })],
        all,
      ).find((s) => s.metric === 'bytesPerConn')!;
    expect(row(6000).met).toBe(true);
    expect(row(7000).met).toBe(false);
  });

  it('flags a load generator that direct could not outrun', () => {
    const lines = loadgenChecks(
      [m('rr-1', 'direct', 1, { rate: 100, loadgenCpu: 1 }), m('rr-1', 'meshctl', 1, { rate: 99, loadgenCpu: 0.9 })],
      ['direct', 'meshctl'],
    );
    expect(lines.find((l) => l.startsWith('| rr-1 |'))).toContain('generator may limit');
    const ok = loadgenChecks(
      [m('rr-1', 'direct', 1, { rate: 300, loadgenCpu: 0.6 }), m('rr-1', 'meshctl', 1, { rate: 100, loadgenCpu: 0.3 })],
      ['direct', 'meshctl'],
    );
    expect(ok.find((l) => l.startsWith('| rr-1 |'))).toBe('| rr-1 | 3.00× | 60 % / 30 % | not the bottleneck |');
  });

  it('renders one table row per measured metric with the verdict', () => {
    const md = renderReport({
      info: {
        date: '2025-01-02T03:04:05.000Z',
        kernel: '6.1',
        cpu: 'cpu',
        cores: 2,
        memoryGiB: 4,
        node: 'v20',
        versions: { haproxy: '2.6' },
        commit: 'abc',
      },
      profile: { secs: 1, warmup: 0, repetitions: 1, idleConns: 10, pacedRate: 100 },
      candidates: all,
      measurements: [
        m('bulk-1', 'direct', 1, { gbps: 20 }),
        m('bulk-1', 'haproxy', 1, { gbps: 10, proxyCpuPerGB: 0.5 }),
        m('bulk-1', 'meshctl', 1, { gbps: 9.5, proxyCpuPerGB: 0.6 }),
      ],
      setup: ['lab'],
    });
    expect(md).toContain('# meshctl benchmark — 2025-01-02');
    expect(md).toContain(
      '| bulk, 1 stream (iperf3) | Gbit/s | 20.0 | 10.0 | 9.50 | 0.47× | 0.95× | ≥ 0.9× HAProxy | met |',
    );
    expect(md).toContain('| bulk, 1 stream: proxy CPU | CPU s/GB | – | 0.50 | 0.60 | – | 1.20× |  |  |');
    expect(md).not.toContain('RR 64 B');
  });
});

describe('wrk output', () => {
  const sample = `Running 1s test @ http://10.78.0.2:8080/
  1 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   210.35us  120.20us   3.50ms   90.00%
    Req/Sec    95.12k     2.00k  100.00k    70.00%
  Latency Distribution
     50%  180.00us
     75%  220.00us
     90%  300.00us
     99%    1.20ms
  95120 requests in 1.00s, 15.00MB read
Requests/sec:  95120.00
Transfer/sec:     15.00MB
`;

  it('reads the rate, the request count and the 50th/99th percentiles in µs', () => {
    expect(parseWrk(sample)).toEqual({ reqPerSec: 95120, requests: 95120, p50: 180, p99: 1200, errors: 0 });
  });

  it('counts socket errors and non-2xx responses', () => {
    const withErrors = `${sample}  Socket errors: connect 1, read 2, write 0, timeout 3\n  Non-2xx or 3xx responses: 4\n`;
    expect(parseWrk(withErrors).errors).toBe(10);
  });

  it('refuses output without a latency distribution', () => {
    expect(() => parseWrk('Requests/sec: 1\n1 requests in 1s')).toThrow(/no 50% latency line/);
  });
});
