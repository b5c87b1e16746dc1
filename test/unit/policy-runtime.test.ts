// The per-process policy runtime (decisions at accept, state kept across reloads), its counters summed over
// workers and rendered for Prometheus, and explain's proxy side.
import { describe, expect, it } from 'vitest';
import { configFromObject } from '../../src/config/load.js';
import { silentLogger } from '../../src/log.js';
import { explainProxy } from '../../src/policy/explain.js';
import { InboundEntry } from '../../src/policy/inbound.js';
import { mergePolicySnapshots, renderPolicyPrometheus } from '../../src/policy/metrics.js';
import { PolicyRuntime } from '../../src/policy/runtime.js';
import { UpstreamLease } from '../../src/policy/upstream.js';
import { testHost } from '../cases.js';
import { waitUntil } from '../helpers/wait.js';

const load = (raw: Record<string, unknown>) =>
  configFromObject({ proxy: { user: 'meshproxy' }, ...raw }, { file: 'mesh.yaml', host: testHost, env: {} });

const base = {
  services: [
    {
      name: 'api',
      addresses: ['10.96.0.10:80', '10.96.0.0/16:8080'],
      endpoints: ['10.0.1.1:8080', '10.0.1.2:8080'],
      circuitBreaker: { maxConnections: 2 },
    },
    { name: 'chaos', addresses: ['10.96.0.11:80'], endpoints: ['10.0.2.1:80'], faults: { abort: { percent: 100 } } },
  ],
  inbound: { ports: [{ port: 8080, deny: ['192.0.2.0/24'], maxConnections: 1 }] },
};

describe('PolicyRuntime', () => {
  it('does nothing per connection without services, registry-only or inbound entries', async () => {
    const rt = new PolicyRuntime(load({}), null, silentLogger);
    await rt.start();
    expect(rt.active).toBe(false);
    expect(rt.outbound('10.0.0.1', 80, { remoteAddress: '10.0.0.5' })).toBeNull();
    expect(rt.admitInbound(8080, '10.0.0.5')).toBeNull();
    rt.stop();
  });

  it('hands out leases for service addresses, refuses by circuit breaker, fault, registry-only and inbound policy', async () => {
    const rt = new PolicyRuntime(load({ ...base, outbound: { policy: 'registry-only' } }), null, silentLogger);
    await rt.start();
    const a = rt.outbound('10.96.0.10', 80, { remoteAddress: '10.0.0.5' });
    const b = rt.outbound('10.96.77.1', 8080, { remoteAddress: '10.0.0.5' });
    expect(a).toBeInstanceOf(UpstreamLease);
    expect((b as UpstreamLease).service).toBe('api');
    expect(rt.outbound('10.96.0.10', 80, { remoteAddress: '10.0.0.5' })).toBe('circuit-open');
    (a as UpstreamLease).release();
    expect(rt.outbound('10.96.0.10', 80, { remoteAddress: '10.0.0.5' })).toBeInstanceOf(UpstreamLease);
    expect(rt.outbound('10.96.0.11', 80, { remoteAddress: '10.0.0.5' })).toBe('fault-abort');
    expect(rt.outbound('10.97.0.1', 80, { remoteAddress: '10.0.0.5' })).toBe('registry-only');
    expect(rt.admitInbound(8080, '192.0.2.9')).toBe('denied');
    const admitted = rt.admitInbound(8080, '198.51.100.1');
    expect(admitted).toBeInstanceOf(InboundEntry);
    expect(rt.admitInbound(8080, '198.51.100.2')).toBe('over-capacity');
    expect(rt.admitInbound(9090, '198.51.100.2')).toBeNull();
    const snap = rt.snapshot();
    expect(snap.services.api).toMatchObject({ active: 2, pending: 2, connections: 3, refused: { 'circuit-open': 1 } });
    expect(snap.services.chaos!.refused['fault-abort']).toBe(1);
    expect(snap.inbound['8080']).toMatchObject({ active: 1, admitted: 1, refused: { denied: 1, 'over-capacity': 1 } });
    rt.stop();
  });

  it("carries counts, endpoint state and open connections' limits over a reload", async () => {
    const first = new PolicyRuntime(load(base), null, silentLogger);
    await first.start();
    const lease = first.outbound('10.96.0.10', 80, { remoteAddress: 'x' }) as UpstreamLease;
    lease.begin({ connect: () => {}, refuse: () => {}, clientGone: false });
    first.outbound('10.96.0.10', 80, { remoteAddress: 'x' });
    const second = new PolicyRuntime(
      load({ services: [{ ...base.services[0], loadBalancer: 'least-connections' }] }),
      first,
      silentLogger,
    );
    await second.start();
    expect(second.outbound('10.96.0.10', 80, { remoteAddress: 'x' })).toBe('circuit-open');
    expect(second.snapshot().services.api!.endpoints.map((e) => e.active)).toEqual([1, 0]);
    lease.release();
    expect(second.snapshot().services.api).toMatchObject({ active: 1, connections: 2 });
    expect(second.snapshot().services.chaos).toBeUndefined();
    second.stop();
  });
});

describe('PolicyRuntime start with a silent DNS server', () => {
  it('stops waiting for first answers after 3 s and picks the endpoints up when they arrive', async () => {
    const { startDnsServer } = await import('../helpers/policy-dns.js');
    const dns = await startDnsServer({ 'slow.mesh': { ttl: 60, A: ['10.8.0.1'] } });
    dns.silent = true;
    const config = load({
      services: [{ name: 'slow', addresses: ['10.96.1.1:80'], endpoints: [{ dns: 'slow.mesh:80' }] }],
      outbound: { resolver: { servers: [`127.0.0.1:${dns.port}`], timeout: '4s', minTtl: '100ms' } },
    });
    const rt = new PolicyRuntime(config, null, silentLogger);
    const started = performance.now();
    await rt.start();
    expect(performance.now() - started).toBeGreaterThanOrEqual(2900);
    expect(performance.now() - started).toBeLessThan(3900);
    expect(rt.snapshot().services.slow!.endpoints).toEqual([]);
    dns.silent = false;
    // The query in flight times out at 4 s, the retry 100 ms later is answered.
    await waitUntil(
      'the endpoint from the answered retry',
      () => rt.snapshot().services.slow!.endpoints.length > 0,
      4000,
      { seen: () => rt.snapshot().services.slow },
    );
    expect(rt.snapshot().services.slow!.endpoints.map((e) => e.endpoint)).toEqual(['10.8.0.1:80']);
    rt.stop();
    await dns.close();
  }, 15_000);
});

describe('policy metrics', () => {
  it('sums workers (endpoints by address) and renders Prometheus families', () => {
    const one = {
      services: {
        api: {
          active: 1,
          pending: 0,
          connections: 5,
          connected: 5,
          connectFailures: 1,
          retries: 1,
          ejections: 1,
          delayed: 0,
          refused: { 'circuit-open': 2, 'fault-abort': 0, 'no-endpoint': 0 },
          endpoints: [
            {
              endpoint: '10.0.1.1:8080',
              subset: null,
              active: 1,
              connections: 3,
              connectFailures: 1,
              ejections: 1,
              ejected: true,
              ejectedForMs: 900,
              healthy: true,
            },
            {
              endpoint: '10.0.1.2:8080',
              subset: null,
              active: 0,
              connections: 2,
              connectFailures: 0,
              ejections: 0,
              ejected: false,
              ejectedForMs: 0,
              healthy: true,
            },
          ],
        },
      },
      inbound: { '8080': { active: 2, admitted: 9, refused: { denied: 1, 'rate-limited': 3, 'over-capacity': 0 } } },
      discovery: [
        {
          kind: 'addresses' as const,
          name: 'api.mesh',
          addresses: ['10.0.1.1'],
          resolved: true,
          nextRefreshInMs: 100,
          lastError: null,
          queries: 3,
          failures: 1,
        },
      ],
    };
    const two = structuredClone(one);
    two.services.api.endpoints[0]!.ejected = false;
    two.services.api.endpoints[1]!.healthy = false;
    const merged = mergePolicySnapshots([one, two, undefined]);
    expect(merged.services.api).toMatchObject({ active: 2, connections: 10, refused: { 'circuit-open': 4 } });
    expect(merged.services.api!.endpoints).toEqual([
      {
        endpoint: '10.0.1.1:8080',
        subset: null,
        active: 2,
        connections: 6,
        connectFailures: 2,
        ejections: 2,
        ejected: true,
        ejectedForMs: 900,
        healthy: true,
      },
      {
        endpoint: '10.0.1.2:8080',
        subset: null,
        active: 0,
        connections: 4,
        connectFailures: 0,
        ejections: 0,
        ejected: false,
        ejectedForMs: 0,
        healthy: false,
      },
    ]);
    expect(merged.inbound['8080']).toEqual({
      active: 4,
      admitted: 18,
      refused: { denied: 2, 'rate-limited': 6, 'over-capacity': 0 },
    });
    expect(merged.discovery).toEqual([{ ...one.discovery[0], queries: 6, failures: 2 }]);
    const text = renderPolicyPrometheus(merged);
    for (const line of [
      'meshctl_service_connections_total{service="api"} 10',
      'meshctl_service_refused_total{service="api",reason="circuit-open"} 4',
      'meshctl_service_endpoints{service="api",state="available"} 0',
      'meshctl_service_endpoints{service="api",state="ejected"} 1',
      'meshctl_service_endpoints{service="api",state="unhealthy"} 1',
      'meshctl_inbound_refused_total{ports="8080",reason="rate-limited"} 6',
      'meshctl_dns_failures_total{kind="addresses",name="api.mesh"} 2',
    ])
      expect(text).toContain(line);
    expect(renderPolicyPrometheus(mergePolicySnapshots([]))).toBe('');
  });
});

describe('explainProxy', () => {
  const config = load({
    ...base,
    services: [...base.services, { name: 'named', addresses: ['db.mesh:5432'], endpoints: [{ srv: '_db._tcp.mesh' }] }],
  });

  it('names the service, the address that matched and how endpoints are chosen', () => {
    const e = explainProxy(config, { direction: 'outbound', destination: { address: '10.96.3.3', port: 8080 } });
    expect(e.verdict).toBe('service');
    expect(e.service).toMatchObject({
      name: 'api',
      path: 'services[0]',
      matchedBy: { address: '10.96.0.0/16:8080', path: 'services[0].addresses[1]', kind: 'cidr' },
      loadBalancer: 'round-robin',
      endpoints: ['10.0.1.1:8080', '10.0.1.2:8080'],
    });
    expect(e.summary).toContain('limits: at most 2 connections, unlimited pending (beyond: reset at accept)');
    expect(e.summary).toContain(
      'connect: timeout 10s per attempt, 3 attempts on different endpoints, backoff 25ms doubling to 250ms',
    );
    expect(e.assumptions).toEqual([
      'db.mesh (services[2].addresses[0]) was not resolved; a connection to its addresses would match service "named"',
    ]);
  });

  it('matches hostname addresses by the resolved addresses it is given, and explains passthrough and registry-only', () => {
    const e = explainProxy(
      config,
      { direction: 'outbound', destination: { address: '10.9.9.9', port: 5432 } },
      new Map([['db.mesh', ['10.9.9.9']]]),
    );
    expect(e.service).toMatchObject({
      name: 'named',
      matchedBy: { kind: 'hostname', address: 'db.mesh:5432' },
      endpoints: ['_db._tcp.mesh (SRV, re-resolved on TTL)'],
    });
    expect(
      explainProxy(config, { direction: 'outbound', destination: { address: '10.9.9.8', port: 80 } }).verdict,
    ).toBe('passthrough');
    const strict = load({ ...base, outbound: { policy: 'registry-only' } });
    expect(
      explainProxy(strict, { direction: 'outbound', destination: { address: '10.9.9.8', port: 80 } }),
    ).toMatchObject({ verdict: 'refused', reason: expect.stringContaining('registry-only') });
  });

  it("evaluates an inbound source against the port's allow and deny lists", () => {
    expect(
      explainProxy(config, {
        direction: 'inbound',
        destination: { address: '10.0.0.5', port: 8080 },
        source: { address: '192.0.2.1' },
      }),
    ).toMatchObject({
      verdict: 'refused',
      reason: 'source 192.0.2.1 is denied by inbound.ports[0].deny (deny wins): reset at accept',
    });
    expect(
      explainProxy(config, {
        direction: 'inbound',
        destination: { address: '10.0.0.5', port: 8080 },
        source: { address: '198.51.100.1' },
      }),
    ).toMatchObject({
      verdict: 'admitted',
      inbound: { path: 'inbound.ports[0]', ports: '8080', deny: ['192.0.2.0/24'], maxConnections: 1 },
    });
    expect(
      explainProxy(config, { direction: 'inbound', destination: { address: '10.0.0.5', port: 9000 } }).verdict,
    ).toBe('passthrough');
    expect(
      explainProxy(config, { direction: 'inbound', destination: { address: '10.0.0.5', port: 8080 } }).assumptions[0],
    ).toContain('pass --src');
  });
});

describe('meshctl explain output', () => {
  it('prints the proxy side under the capture verdict', async () => {
    const { formatExplanation } = await import('../../src/cli/explain.js');
    const { explainFlow } = await import('../../src/capture/explain.js');
    const { planCapture } = await import('../../src/capture/plan.js');
    const config = load(base);
    const flow = {
      direction: 'outbound' as const,
      protocol: 'tcp' as const,
      destination: { address: '10.96.0.10', port: 80 },
      uid: 1000,
      gid: 1000,
    };
    const capture = explainFlow(planCapture(config), flow, {
      localAddresses: ['10.0.0.5'],
      route: () => ({ interface: 'eth0', source: '10.0.0.5' }),
    });
    const text = formatExplanation(flow, { ...capture, proxy: explainProxy(config, flow) });
    expect(text).toContain('verdict: INTERCEPTED → proxy port 15001\n');
    expect(text).toContain(
      'proxy:   TO A SERVICE ENDPOINT: 10.96.0.10:80 is an address of service "api": connects to one of its endpoints instead\n',
    );
    expect(text).toContain(
      '         service "api" (services[0]), matched by 10.96.0.10:80 (services[0].addresses[0])\n',
    );
    expect(text).toContain('         choice: round robin\n');
    const bypassed = { ...flow, uid: 1337, gid: 1337 };
    const notCaptured = explainFlow(planCapture(config), bypassed, {
      localAddresses: ['10.0.0.5'],
      route: () => ({ interface: 'eth0', source: '10.0.0.5' }),
    });
    expect(formatExplanation(bypassed, { ...notCaptured, proxy: explainProxy(config, bypassed) })).toContain(
      'proxy:   (not intercepted, so the proxy never sees it; if it were) TO A SERVICE ENDPOINT',
    );
  });
});
