// The bench's policy variant: its 100 services form a valid config whose registry routes the bench's own
// destinations to themselves, and the report's policy-cost check compares it with plain meshctl.
import { describe, expect, it } from 'vitest';
import { benchRawConfig, policyServices, POLICY_SERVICES } from '../../bench/candidates.js';
import { PORTS } from '../../bench/lab.js';
import { policyChecks } from '../../bench/report.js';
import type { Measurement } from '../../bench/workloads.js';
import { configFromObject } from '../../src/config/load.js';
import { silentLogger } from '../../src/log.js';
import { PolicyRuntime } from '../../src/policy/runtime.js';
import { UpstreamLease } from '../../src/policy/upstream.js';
import { testHost } from '../cases.js';

describe('bench policy100 variant', () => {
  it('configures 100 valid services that route the bench destinations to the same server', async () => {
    const raw = benchRawConfig(
      { workers: 2, accessLog: false },
      '/tmp/x',
      policyServices('10.77.0.2', POLICY_SERVICES),
    );
    const config = configFromObject(
      { ...raw, proxy: { ...(raw.proxy as object), user: 'meshproxy' } },
      { host: testHost, env: {} },
    );
    expect(config.services).toHaveLength(100);
    expect(config.services.filter((s) => s.addresses[0]!.kind === 'cidr').length).toBeGreaterThan(5);
    const runtime = new PolicyRuntime(config, null, silentLogger);
    await runtime.start();
    for (const port of [PORTS.echo, PORTS.http, PORTS.iperf]) {
      const lease = runtime.outbound('10.77.0.2', port, { remoteAddress: '10.77.0.1' }) as UpstreamLease;
      expect(lease.service).toBe(`bench-${port}`);
      expect(lease.svc.endpoints.map((e) => e.text)).toEqual([`10.77.0.2:${port}`]);
      lease.release();
    }
    expect(runtime.outbound('10.77.0.3', PORTS.echo, { remoteAddress: '10.77.0.1' })).toBeNull();
    runtime.stop();
  });

  it('reports the policy cost of the RR and connect rows against the 5 % target', () => {
    const m = (candidate: Measurement['candidate'], workload: Measurement['workload'], rate: number): Measurement => ({
      candidate,
      workload,
      rep: 1,
      values: { rate },
    });
    const lines = policyChecks(
      [
        m('meshctl', 'rr-1', 10_000),
        m('meshctl-policy100', 'rr-1', 9_800),
        m('meshctl', 'rr-32', 50_000),
        m('meshctl-policy100', 'rr-32', 45_000),
        m('meshctl', 'connect-32', 8_000),
        m('meshctl-policy100', 'connect-32', 8_100),
      ],
      ['meshctl', 'meshctl-policy100'],
    );
    expect(lines.slice(2)).toEqual([
      '| row | meshctl | meshctl, 100 services | ratio | target | |',
      '|---|---|---|---|---|---|',
      '| RR 64 B, 1 connection: rate | 10.0k | 9800 | 0.980× | ≥ 0.95× | met |',
      '| RR 64 B, 32 connections: rate | 50.0k | 45.0k | 0.900× | ≥ 0.95× | **missed** |',
      '| connect + close, 32 at a time: rate | 8000 | 8100 | 1.012× | ≥ 0.95× | met |',
    ]);
    expect(policyChecks([], ['direct', 'meshctl'])).toEqual([]);
  });
});
