// The benchmark's pure parts: statistics, target verdicts, the added-latency rows, the generator checks and the
// wrk parser (bench/report.ts, bench/workloads.ts); the two-sidecar section and configs (bench/report.ts, bench/pair.ts).
import { describe, expect, it } from 'vitest';
import { loadgenChecks, renderReport, stat, summarise, summarisePairs } from '../../bench/report.js';
import { haproxyTlsClientConfig, haproxyTlsServerConfig, pairMeshctlConfig } from '../../bench/pair.js';
import { configFromObject } from '../../src/config/load.js';
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

describe('bench two-sidecar section (issue 18)', () => {
  const info = {
    date: '2025-01-02T03:04:05.000Z',
    kernel: '6.1',
    cpu: 'cpu',
    cores: 2,
    memoryGiB: 4,
    node: 'v20',
    versions: { haproxy: '2.6' },
    commit: 'abc',
  };
  const profile = { secs: 1, warmup: 0, repetitions: 1, idleConns: 10, pacedRate: 100 };

  it('judges mTLS ÷ HAProxy-TLS against 0.8× for rates and compares the plaintext pair with one meshctl', () => {
    const rr = (mtls: number) =>
      summarisePairs([
        m('rr-32', 'meshctl', 1, { rate: 100 }),
        m('rr-32', 'meshctl-pair', 1, { rate: 60 }),
        m('rr-32', 'haproxy-tls', 1, { rate: 50 }),
        m('rr-32', 'meshctl-mtls', 1, { rate: mtls }),
      ]).find((s) => s.row.workload === 'rr-32' && s.row.metric === 'rate')!;
    expect(rr(40).mtlsVsHaproxyTls).toBeCloseTo(0.8);
    expect(rr(40).met).toBe(true);
    expect(rr(39).met).toBe(false);
    expect(rr(40).pairVsSingle).toBeCloseTo(0.6);
  });

  it('allows 1.25× HAProxy-TLS’s added latency (0.8× as fast) and gives CPU rows no verdict', () => {
    const rows = (mtlsP99: number) =>
      summarisePairs([
        m('paced', 'direct', 1, { p99: 100 }),
        m('paced', 'haproxy-tls', 1, { p99: 300, proxyCpuPerOp: 20 }),
        m('paced', 'meshctl-mtls', 1, { p99: mtlsP99, proxyCpuPerOp: 30 }),
      ]);
    const added = (p99: number) => rows(p99).find((s) => s.row.label === 'paced: p99 added over direct')!;
    expect(added(350).stats['haproxy-tls']?.median).toBe(200);
    expect(added(350).mtlsVsHaproxyTls).toBeCloseTo(1.25);
    expect(added(350).met).toBe(true);
    expect(added(351).met).toBe(false);
    const cpu = rows(350).find((s) => s.row.metric === 'proxyCpuPerOp')!;
    expect(cpu.mtlsVsHaproxyTls).toBeCloseTo(1.5);
    expect(cpu.met).toBeNull();
  });

  it('keeps the two-sidecar candidates out of the main table and renders their own section', () => {
    const md = renderReport({
      info,
      profile,
      candidates: ['direct', 'haproxy', 'meshctl', 'meshctl-pair', 'meshctl-mtls', 'haproxy-tls'],
      measurements: [
        m('bulk-1', 'direct', 1, { gbps: 20 }),
        m('bulk-1', 'haproxy', 1, { gbps: 10, proxyCpuPerGB: 0.5 }),
        m('bulk-1', 'meshctl', 1, { gbps: 9.5, proxyCpuPerGB: 0.6 }),
        m('bulk-1', 'meshctl-pair', 1, { gbps: 5, proxyCpuPerGB: 1.2 }),
        m('bulk-1', 'meshctl-mtls', 1, { gbps: 2, proxyCpuPerGB: 3 }),
        m('bulk-1', 'haproxy-tls', 1, { gbps: 4, proxyCpuPerGB: 2 }),
      ],
      setup: ['lab'],
    });
    expect(md).toContain(
      '| bulk, 1 stream (iperf3) | Gbit/s | 20.0 | 10.0 | 9.50 | 0.47× | 0.95× | ≥ 0.9× HAProxy | met |',
    );
    expect(md).toContain('## Two sidecars: mTLS tunnel (issue 18)');
    expect(md).toContain(
      '| workload | unit | meshctl | HAProxy | meshctl ×2, plaintext | meshctl ×2, mTLS tunnel | HAProxy ×2, TLS 1.3 | mTLS ÷ HAProxy-TLS | target |  | plaintext ×2 ÷ meshctl |',
    );
    expect(md).toContain(
      '| bulk, 1 stream | Gbit/s | 9.50 | 10.0 | 5.00 | 2.00 | 4.00 | 0.50× | ≥ 0.8× | **missed** | 0.53× |',
    );
    expect(md).toContain(
      '| bulk, 1 stream: CPU of the sidecar(s) | CPU s/GB | 0.60 | 0.50 | 1.20 | 3.00 | 2.00 | 1.50× |  |  | 2.00× |',
    );
    expect(md).toContain('Target rows met: 0 of 1.');
    expect(md.indexOf('## Two sidecars')).toBeLessThan(md.indexOf('## Checks'));
  });

  it('has no two-sidecar section when no two-sidecar candidate ran', () => {
    const md = renderReport({
      info,
      profile,
      candidates: all,
      measurements: [m('rr-32', 'haproxy', 1, { rate: 10 }), m('rr-32', 'meshctl', 1, { rate: 10 })],
      setup: [],
    });
    expect(md).not.toContain('Two sidecars');
  });
});

describe('bench two-sidecar configs', () => {
  const id = { certificate: '/pki/a/svid.pem', key: '/pki/a/svid_key.pem', bundle: '/pki/a/svid_bundle.pem' };
  const options = { workers: 2, accessLog: false };

  it('gives meshctl-mtls’s A the server host as a mesh peer and B strict inbound, and passes meshctl’s validation', () => {
    const a = pairMeshctlConfig('meshctl-mtls', 'a', options, '/state-a', '10.9.0.2', { ...id, haproxyPem: '' });
    const b = pairMeshctlConfig('meshctl-mtls', 'b', options, '/state-b', '10.9.0.2', { ...id, haproxyPem: '' });
    expect(configFromObject(a).mtls).toMatchObject({
      peers: [{ address: '10.9.0.2', prefix: 32 }],
      inbound: 'disable',
      tunnelPort: 15008,
    });
    expect(configFromObject(b).mtls).toMatchObject({ peers: [], inbound: 'strict' });
    const plain = pairMeshctlConfig('meshctl-pair', 'a', options, '/state-a', '10.9.0.2', null);
    expect(plain).not.toHaveProperty('mtls');
    expect(configFromObject(plain).proxy.workers).toBe(2);
  });

  it('has HAProxy A originate TLS 1.3 with a client certificate and B require and verify it', () => {
    const files = { ...id, haproxyPem: '/pki/haproxy-a.pem' };
    expect(haproxyTlsClientConfig(2, '10.9.0.2', files)).toContain(
      'server b 10.9.0.2:15008 ssl ssl-min-ver TLSv1.3 crt /pki/haproxy-a.pem ca-file /pki/a/svid_bundle.pem verify required send-proxy-v2',
    );
    expect(haproxyTlsServerConfig(2, files)).toMatch(
      /bind 0\.0\.0\.0:15008 accept-proxy ssl ssl-min-ver TLSv1\.3 crt \S+ ca-file \S+ verify required\n/,
    );
  });
});
