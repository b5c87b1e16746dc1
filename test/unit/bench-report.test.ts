// The benchmark's pure parts: statistics, target verdicts, the added-latency rows, the generator checks and the
// wrk parser (bench/report.ts, bench/workloads.ts); the two-sidecar section and configs (bench/report.ts, bench/pair.ts);
// the lab's own uncapped check, the best of HAProxy's candidates, the access-log cost (issue 19).
import { describe, expect, it } from 'vitest';
import {
  accessLogCost,
  accessLogSection,
  CAPPED_VERDICT,
  labCheck,
  labCheckLine,
  loadgenChecks,
  pairSection,
  renderReport,
  stat,
  summarise,
  summarisePairs,
} from '../../bench/report.js';
import { haproxyTlsClientConfig, haproxyTlsServerConfig, pairMeshctlConfig } from '../../bench/pair.js';
import { configFromObject } from '../../src/config/load.js';
import type { Measurement, WorkloadName } from '../../bench/workloads.js';
import { parseWrk } from '../../bench/workloads.js';
import type { CandidateName } from '../../bench/candidates.js';

const all: CandidateName[] = ['direct', 'haproxy-2t', 'meshctl'];
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
const profile = { secs: 1, warmup: 0, repetitions: 1, idleConns: 10, pacedRate: 100, idleSettleSecs: 0 };

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
      m('rr-32', 'haproxy-2t', 1, { rate: 100 }),
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
      m('paced', 'haproxy-2t', 1, { p50: 70, p99: 140, rate: 10 }),
      m('paced', 'meshctl', 1, { p50: 80, p99: 170, rate: 10 }),
    ];
    const added = summarise(ms, all).find((s) => s.label === 'paced: p99 added over direct')!;
    expect(added.stats['haproxy-2t']?.median).toBe(40);
    expect(added.stats.meshctl?.median).toBe(70);
    expect(added.stats.direct).toBeUndefined();
    expect(added.vsHaproxy).toBeCloseTo(1.75);
    expect(added.met).toBe(false);
  });

  it('judges an added-latency row on the raw latencies when HAProxy adds nothing over direct', () => {
    // HAProxy's p99 at or under direct's (this machine's wake-up noise): 1.5× of "nothing" judges nothing.
    const run = (meshP99: number) =>
      summarise(
        [
          m('paced', 'direct', 1, { p50: 50, p99: 300, rate: 10 }),
          m('paced', 'haproxy-2t', 1, { p50: 70, p99: 280, rate: 10 }),
          m('paced', 'meshctl', 1, { p50: 80, p99: meshP99, rate: 10 }),
        ],
        all,
      ).find((s) => s.label === 'paced: p99 added over direct')!;
    expect(run(400).stats['haproxy-2t']?.median).toBe(-20);
    expect(run(400).met).toBe(true); // 400 ÷ 280 = 1.43
    expect(run(450).met).toBe(false); // 1.61
  });

  it('judges memory per connection against the absolute 4 KiB bound and the settled idle footprint against 60 MB', () => {
    const rows = (bytes: number, rss: number) =>
      summarise(
        [
          m('idle', 'haproxy-2t', 1, { bytesPerConn: 9000, rssIdle: 15e6, rssSettled: 15e6 }),
          m('idle', 'meshctl', 1, { bytesPerConn: bytes, rssIdle: rss + 5e6, rssSettled: rss }),
        ],
        all,
      );
    const perConn = (bytes: number) => rows(bytes, 1).find((s) => s.metric === 'bytesPerConn')!;
    expect(perConn(4096).met).toBe(true);
    expect(perConn(4097).met).toBe(false);
    const footprint = (rss: number) => rows(1, rss).find((s) => s.metric === 'rssSettled')!;
    expect(footprint(60e6).met).toBe(true);
    expect(footprint(60e6 + 1).met).toBe(false);
    expect(footprint(60e6).label).toBe('idle footprint (settled): RSS of all proxy processes');
    // The reading right after the warm-up is shown, not judged.
    expect(rows(1, 60e6).find((s) => s.metric === 'rssIdle')!.target ?? null).toBeNull();
  });

  it('compares meshctl with the better HAProxy of the row: the higher rate, the lower CPU', () => {
    const ms = [
      m('rr-32', 'haproxy-1t', 1, { rate: 100, proxyCpuPerOp: 8 }),
      m('rr-32', 'haproxy-2t', 1, { rate: 120, proxyCpuPerOp: 10 }),
      m('rr-32', 'meshctl', 1, { rate: 108, proxyCpuPerOp: 12 }),
    ];
    const candidates: CandidateName[] = ['haproxy-1t', 'haproxy-2t', 'meshctl'];
    const rate = summarise(ms, candidates).find((s) => s.workload === 'rr-32' && s.metric === 'rate')!;
    expect(rate.bestHaproxy).toBe('haproxy-2t');
    expect(rate.vsHaproxy).toBeCloseTo(0.9);
    const cpu = summarise(ms, candidates).find((s) => s.workload === 'rr-32' && s.metric === 'proxyCpuPerOp')!;
    expect(cpu.bestHaproxy).toBe('haproxy-1t');
    expect(cpu.vsHaproxy).toBeCloseTo(1.5);
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
      info,
      profile,
      candidates: all,
      measurements: [
        m('bulk-1', 'direct', 1, { gbps: 20 }),
        m('bulk-1', 'haproxy-2t', 1, { gbps: 10, proxyCpuPerGB: 0.5 }),
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
      candidates: ['direct', 'haproxy-2t', 'meshctl', 'meshctl-pair', 'meshctl-mtls', 'haproxy-tls'],
      measurements: [
        m('bulk-1', 'direct', 1, { gbps: 20 }),
        m('bulk-1', 'haproxy-2t', 1, { gbps: 10, proxyCpuPerGB: 0.5 }),
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
      '| workload | unit | direct | meshctl | HAProxy 2 threads | meshctl ×2, plaintext | meshctl ×2, mTLS tunnel | HAProxy ×2, TLS 1.3 | mTLS ÷ HAProxy-TLS | target |  | plaintext ×2 ÷ meshctl |',
    );
    expect(md).toContain(
      '| bulk, 1 stream | Gbit/s | 20.0 | 9.50 | 10.0 | 5.00 | 2.00 | 4.00 | 0.50× | ≥ 0.8× | **missed** | 0.53× |',
    );
    expect(md).toContain(
      '| bulk, 1 stream: CPU of the sidecar(s) | CPU s/GB | – | 0.60 | 0.50 | 1.20 | 3.00 | 2.00 | 1.50× |  |  | 2.00× |',
    );
    expect(md).toContain('Target rows met: 0 of 1.');
    expect(md.indexOf('## Two sidecars')).toBeLessThan(md.indexOf('## Checks'));
  });

  it('has no two-sidecar section when no two-sidecar candidate ran', () => {
    const md = renderReport({
      info,
      profile,
      candidates: all,
      measurements: [m('rr-32', 'haproxy-2t', 1, { rate: 10 }), m('rr-32', 'meshctl', 1, { rate: 10 })],
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

describe('bench lab check: connection setup uncapped (issue 19)', () => {
  const connect = (direct: number, haproxy: number, meshctl: number) => [
    m('connect-32', 'direct', 1, { rate: direct, p99: 1000 }),
    m('connect-32', 'haproxy-1t', 1, { rate: haproxy, p99: 2000, proxyCpuPerOp: 50 }),
    m('connect-32', 'meshctl', 1, { rate: meshctl, p99: 3000, proxyCpuPerOp: 55 }),
  ];
  const candidates: CandidateName[] = ['direct', 'haproxy-1t', 'meshctl'];

  it('is ok when direct reaches twice the best proxy, CAPPED below, and says so with the numbers', () => {
    const ok = labCheck(connect(40_000, 20_000, 12_000), candidates)!;
    expect(ok).toMatchObject({ direct: 40_000, bestProxy: 'haproxy-1t', bestProxyRate: 20_000, ok: true });
    expect(ok.ratio).toBeCloseTo(2);
    expect(labCheckLine(ok, 'connect + close')).toBe(
      'Lab check (connect + close): ok — direct 40.0k conn/s ÷ best proxy (HAProxy 1 thread) 20.0k conn/s = 2.00× (≥ 2×): the lab does not cap connection setup.',
    );
    const capped = labCheck(connect(22_600, 11_300, 11_400), candidates)!;
    expect(capped).toMatchObject({ bestProxy: 'meshctl', ok: false });
    expect(labCheckLine(capped, 'connect + close')).toBe(
      "Lab check (connect + close): **CAPPED** — direct 22.6k conn/s ÷ best proxy (meshctl) 11.4k conn/s = 1.98× (< 2×): the lab limits every candidate's connection setup; the connect rows do not count.",
    );
  });

  it('needs direct and a proxy on connect-32', () => {
    expect(labCheck(connect(40_000, 20_000, 12_000).slice(1), candidates)).toBeNull();
    expect(labCheck(connect(40_000, 20_000, 12_000).slice(0, 1), candidates)).toBeNull();
    expect(labCheckLine(null, 'x')).toContain('not measured');
  });

  it('gives the connect rows no verdict when capped, and keeps the other rows judged', () => {
    const rr = [m('rr-32', 'haproxy-1t', 1, { rate: 100 }), m('rr-32', 'meshctl', 1, { rate: 50 })];
    const rows = (direct: number) => summarise([...connect(direct, 10_000, 11_000), ...rr], candidates);
    const capped = rows(21_000);
    const rate = capped.find((s) => s.workload === 'connect-32' && s.metric === 'rate')!;
    expect(rate.capped).toBe(true);
    expect(rate.met).toBeNull();
    expect(capped.find((s) => s.workload === 'connect-32' && s.metric === 'proxyCpuPerOp')!.capped).toBe(true);
    expect(capped.find((s) => s.workload === 'rr-32')!).toMatchObject({ capped: false, met: false });
    const uncapped = rows(22_000).find((s) => s.workload === 'connect-32' && s.metric === 'rate')!;
    expect(uncapped).toMatchObject({ capped: false, met: true });
  });

  it('prints the check above the table and in the checks, and marks the capped rows in the table', () => {
    const md = renderReport({ info, profile, candidates, measurements: connect(15_000, 10_000, 9_000), setup: [] });
    const line = md.split('\n').find((l) => l.startsWith('| connect+request+close, c=32 |'))!;
    expect(line).toBe(
      `| connect+request+close, c=32 | conn/s | 15.0k | 10.0k | 9000 | 0.60× | 0.90× | ≥ 1.0× best HAProxy | ${CAPPED_VERDICT} |`,
    );
    expect(md.match(/Lab check \(connect \+ close\): \*\*CAPPED\*\* — direct 15\.0k conn\/s/g)).toHaveLength(2);
    expect(md.indexOf('Lab check')).toBeLessThan(md.indexOf('| workload |'));
  });

  it('checks the two-sidecar rows against direct too, showing direct beside the pairs', () => {
    const pairs = (direct: number) => [
      m('connect-32', 'direct', 1, { rate: direct }),
      m('connect-32', 'meshctl-pair', 1, { rate: 2000, proxyCpuPerOp: 300 }),
      m('connect-32', 'haproxy-tls', 1, { rate: 1500, proxyCpuPerOp: 900 }),
      m('connect-32', 'meshctl-mtls', 1, { rate: 1900, proxyCpuPerOp: 400 }),
    ];
    const row = (direct: number) =>
      summarisePairs(pairs(direct)).find((s) => s.row.workload === 'connect-32' && s.row.metric === 'rate')!;
    expect(row(3999)).toMatchObject({ capped: true, met: null });
    expect(row(4000)).toMatchObject({ capped: false, met: true });
    const md = pairSection(pairs(3000), ['direct', 'meshctl-pair', 'meshctl-mtls', 'haproxy-tls']).join('\n');
    expect(md).toContain('Lab check (two sidecars, connect + close): **CAPPED** — direct 3000 conn/s ÷ best proxy');
    expect(md).toContain(
      `| connect+request+close, c=32 | conn/s | 3000 | 2000 | 1900 | 1500 | 1.27× | ≥ 0.8× | ${CAPPED_VERDICT} | – |`,
    );
  });
});

describe('bench access log cost (issue 19)', () => {
  const ms = (logged: { rate: number; cpu: number; lines: number }) => [
    m('connect-32', 'meshctl', 1, { rate: 10_000, proxyCpuPerOp: 100 }),
    m('connect-32', 'meshctl', 2, { rate: 12_000, proxyCpuPerOp: 110 }),
    m('connect-32', 'meshctl-log', 1, { rate: logged.rate, proxyCpuPerOp: logged.cpu, logLinesPerConn: logged.lines }),
  ];

  it('is the CPU per logged connection and the rate lost, from medians', () => {
    const cost = accessLogCost(ms({ rate: 9900, cpu: 113, lines: 1 }));
    expect(cost.rate!.costPercent).toBeCloseTo(10);
    expect(cost.cpu!.perLoggedConn).toBeCloseTo(8);
    // Sampled logging: the CPU it costs is divided over the connections it logged.
    expect(accessLogCost(ms({ rate: 9900, cpu: 113, lines: 0.5 })).cpu!.perLoggedConn).toBeCloseTo(16);
  });

  it('has no CPU row without logged lines and no section without both candidates', () => {
    expect(accessLogCost(ms({ rate: 9900, cpu: 113, lines: 0 })).cpu).toBeNull();
    expect(accessLogSection(ms({ rate: 9900, cpu: 113, lines: 1 }), ['meshctl'], false)).toEqual([]);
  });

  it('judges both rows against issue 19’s targets unless the lab is capped', () => {
    const section = (capped: boolean, cpu: number) =>
      accessLogSection(ms({ rate: 9800, cpu, lines: 1 }), ['meshctl', 'meshctl-log'], capped).join('\n');
    expect(section(false, 115)).toContain(
      '| access log: CPU µs per logged connection | 105 µs/conn | 115 µs/conn (1.00 lines/conn) | 10.0 µs | ≤ 10 µs | met |',
    );
    expect(section(false, 116)).toContain('| 11.0 µs | ≤ 10 µs | **missed** |');
    expect(section(false, 115)).toContain(
      '| access log: rate cost % | 11.0k conn/s | 9800 conn/s | 10.9 % | ≤ 10 % | **missed** |',
    );
    expect(section(true, 115)).toContain(`| 10.0 µs | ≤ 10 µs | ${CAPPED_VERDICT} |`);
  });
});
