// Resilience and admission logic without sockets: outlier ejection, backoff, faults, the upstream lease's retries
// and counts (against a recording connection), token buckets, inbound admission and health-check thresholds.
import { describe, expect, it } from 'vitest';
import { parseCidr } from '../../src/values/ip.js';
import type { Cidr } from '../../src/values/ip.js';
import type { InboundPortPolicy, OutlierDetectionPolicy, ServiceConfig } from '../../src/config/types.js';
import { Endpoint } from '../../src/policy/endpoint.js';
import { injectFault } from '../../src/policy/faults.js';
import { recordCheck } from '../../src/policy/health-check.js';
import { InboundPolicy } from '../../src/policy/inbound.js';
import type { LeasedConnection, LeaseRoute } from '../../src/policy/lease.js';
import { maxEjected, noteConnectFailure, noteConnectSuccess } from '../../src/policy/outlier.js';
import { backoffMs } from '../../src/policy/retry.js';
import { ServiceRuntime } from '../../src/policy/service.js';
import { ServiceState } from '../../src/policy/service-state.js';
import { SourceBuckets, TokenBucket } from '../../src/policy/token-bucket.js';
import { UpstreamLease } from '../../src/policy/upstream.js';
import { waitUntil } from '../helpers/wait.js';

const od = (extra: Partial<OutlierDetectionPolicy> = {}): OutlierDetectionPolicy => ({
  enabled: true,
  consecutiveFailures: 3,
  baseEjectionMs: 1000,
  maxEjectionPercent: 50,
  ...extra,
});
const eps = (n: number) => Array.from({ length: n }, (_, i) => new Endpoint(`10.0.0.${i + 1}`, 80, 'ipv4', null));

describe('outlier detection', () => {
  it('ejects after N failures in a row, for base × ejections, and brings the endpoint back with a fresh count', () => {
    const list = eps(4);
    const ep = list[0]!;
    expect(noteConnectFailure(ep, list, od(), 0)).toBe(0);
    expect(noteConnectFailure(ep, list, od(), 1)).toBe(0);
    expect(noteConnectFailure(ep, list, od(), 2)).toBe(1000);
    expect(ep.ejected(500)).toBe(true);
    expect(ep.available(1002)).toBe(true);
    // Back at 1002: two more failures do not eject, the third does, for twice the base.
    expect(noteConnectFailure(ep, list, od(), 1100)).toBe(0);
    expect(noteConnectFailure(ep, list, od(), 1200)).toBe(0);
    expect(noteConnectFailure(ep, list, od(), 1300)).toBe(2000);
    expect(ep.ejectedUntil).toBe(3300);
    expect(ep.connectFailures).toBe(6);
  });

  it('resets the streak on a success and forgets old ejections after a base time each in service', () => {
    const list = eps(2);
    const ep = list[0]!;
    noteConnectFailure(ep, list, od(), 0);
    noteConnectFailure(ep, list, od(), 1);
    noteConnectSuccess(ep, 2);
    expect(noteConnectFailure(ep, list, od(), 3)).toBe(0);
    noteConnectFailure(ep, list, od(), 4);
    expect(noteConnectFailure(ep, list, od(), 5)).toBe(1000);
    // Back at 1005, then 5 s in service: the multiplier decays to 0 before the next ejection counts 1.
    for (const t of [7000, 7001, 7002]) noteConnectFailure(ep, list, od(), t);
    expect(ep.ejectedUntil).toBe(8002);
  });

  it('never ejects more than maxEjectionPercent of the endpoints, but always allows one', () => {
    expect(maxEjected(3, 50)).toBe(1);
    expect(maxEjected(10, 50)).toBe(5);
    expect(maxEjected(1, 10)).toBe(1);
    expect(maxEjected(5, 0)).toBe(0);
    const list = eps(3);
    for (const ep of list) for (let i = 0; i < 3; i++) noteConnectFailure(ep, list, od(), 10);
    expect(list.filter((e) => e.ejected(10))).toHaveLength(1);
  });

  it('only counts when disabled', () => {
    const list = eps(2);
    for (let i = 0; i < 10; i++) expect(noteConnectFailure(list[0]!, list, od({ enabled: false }), i)).toBe(0);
    expect(list[0]!.connectFailures).toBe(10);
    expect(list[0]!.ejected(5)).toBe(false);
  });
});

describe('backoff and faults', () => {
  it('doubles the backoff ceiling per retry up to the maximum, with full jitter', () => {
    const policy = { attempts: 5, backoffMs: 25, maxBackoffMs: 150 };
    expect([1, 2, 3, 4].map((r) => backoffMs(policy, r, () => 0.999999))).toEqual([25, 50, 100, 150]);
    expect(backoffMs(policy, 3, () => 0)).toBe(0);
    expect(backoffMs(policy, 3, () => 0.5)).toBe(50);
  });

  it('aborts or delays the configured share of connections', () => {
    const faults = { abort: { percent: 10 }, delay: { percent: 50, durationMs: 300 } };
    expect(injectFault(faults, () => 0.05)).toBe(-1);
    expect(
      injectFault(
        faults,
        (() => {
          const v = [0.5, 0.2];
          let i = 0;
          return () => v[i++]!;
        })(),
      ),
    ).toBe(300);
    expect(injectFault(faults, () => 0.9)).toBe(0);
    expect(injectFault({ abort: null, delay: null }, () => 0)).toBe(0);
  });
});

/** A connection stand-in that records what the lease asks of it. */
class FakeConnection implements LeasedConnection {
  routes: string[] = [];
  refusals: string[] = [];
  clientGone = false;
  connect(route: LeaseRoute): void {
    this.routes.push(`${route.host}:${route.port}`);
  }
  refuse(reason: string): void {
    this.refusals.push(reason);
  }
}

describe('UpstreamLease', () => {
  const config = (extra: Partial<ServiceConfig> = {}): ServiceConfig => ({
    name: 'api',
    addresses: [],
    endpoints: [],
    loadBalancer: 'round-robin',
    subsets: [],
    connectTimeoutMs: 1000,
    retries: { attempts: 3, backoffMs: 1, maxBackoffMs: 2 },
    outlierDetection: od({ consecutiveFailures: 2 }),
    circuitBreaker: { maxConnections: null, maxPending: null },
    healthCheck: null,
    faults: { delay: null, abort: null },
    mtls: false,
    identities: [],
    ...extra,
  });
  const service = (extra: Partial<ServiceConfig> = {}, n = 3) => {
    const svc = new ServiceRuntime(config(extra), new ServiceState('api'), null);
    svc.setEndpoints(
      Array.from({ length: n }, (_, i) => ({
        address: `10.0.0.${i + 1}`,
        port: 80,
        family: 'ipv4' as const,
        subset: null,
      })),
    );
    return svc;
  };
  const ejections: string[] = [];
  const listener = { ejected: (_s: ServiceRuntime, ep: Endpoint) => void ejections.push(ep.text) };
  /** The retry is scheduled after a backoff timer: wait for the connection's n-th route. */
  const routed = (conn: FakeConnection, n: number) =>
    waitUntil(`route ${n} after the backoff`, () => conn.routes.length >= n, 5000, { seen: () => conn.routes });

  it('connects to an endpoint, retries failed attempts on other endpoints after a backoff, and gives back every count', async () => {
    const svc = service();
    const conn = new FakeConnection();
    const lease = new UpstreamLease(svc, 0, 0, listener, () => 0.5);
    expect(svc.state).toMatchObject({ active: 1, pending: 1, connections: 1 });
    lease.begin(conn);
    expect(conn.routes).toEqual(['10.0.0.1:80']);
    expect(lease.connectFailed(conn, 'ECONNREFUSED')).toBe(true);
    expect(svc.endpoints[0]!.active).toBe(0);
    await routed(conn, 2);
    expect(conn.routes).toEqual(['10.0.0.1:80', '10.0.0.2:80']);
    expect(svc.endpoints[1]!.active).toBe(1);
    lease.connected();
    expect(svc.state).toMatchObject({ pending: 0, connected: 1, retries: 1, connectFailures: 1 });
    expect(lease.attempts).toBe(2);
    lease.release();
    lease.release();
    expect(svc.state).toMatchObject({ active: 0, pending: 0 });
    expect(svc.endpoints.map((e) => e.active)).toEqual([0, 0, 0]);
  });

  it('gives up after the attempt bound, and feeds outlier detection on the way', async () => {
    const svc = service();
    const conn = new FakeConnection();
    const lease = new UpstreamLease(svc, 0, 0, listener);
    lease.begin(conn);
    for (let i = 0; i < 2; i++) {
      expect(lease.connectFailed(conn, 'ETIMEDOUT')).toBe(true);
      await routed(conn, i + 2);
    }
    expect(lease.connectFailed(conn, 'ETIMEDOUT')).toBe(false);
    expect(conn.routes).toHaveLength(3);
    expect(new Set(conn.routes).size).toBe(3);
    lease.release();
    expect(svc.state).toMatchObject({ active: 0, pending: 0, connectFailures: 3, retries: 2 });
    expect(svc.endpoints.map((e) => e.active)).toEqual([0, 0, 0]);
  });

  it('does not retry when the client has gone, and refuses with no-endpoint when there is none', async () => {
    const svc = service();
    const conn = new FakeConnection();
    const lease = new UpstreamLease(svc, 0, 0, listener);
    lease.begin(conn);
    conn.clientGone = true;
    expect(lease.connectFailed(conn, 'ECONNREFUSED')).toBe(false);
    lease.release();
    const empty = service({}, 0);
    const conn2 = new FakeConnection();
    new UpstreamLease(empty, 0, 0, listener).begin(conn2);
    expect(conn2.refusals).toEqual(['no-endpoint']);
    expect(empty.state.refused['no-endpoint']).toBe(1);
  });

  it('connects only after an injected delay, and not at all if released first', async () => {
    const svc = service({ faults: { delay: { percent: 100, durationMs: 30 }, abort: null } });
    // The released lease's delay timer is armed first; timers of equal length fire in order, so once the second
    // lease has connected, the first one's timer has fired too (and must not have connected).
    const conn2 = new FakeConnection();
    const early = new UpstreamLease(svc, 0, 30, listener);
    early.begin(conn2);
    early.release();
    const conn = new FakeConnection();
    const lease = new UpstreamLease(svc, 0, 30, listener);
    lease.begin(conn);
    expect(conn.routes).toEqual([]);
    await routed(conn, 1);
    expect(conn.routes).toHaveLength(1);
    expect(conn2.routes).toEqual([]);
    expect(svc.state.delayed).toBe(2);
  });

  it('reports an ejection to its listener', async () => {
    ejections.length = 0;
    const svc = service({}, 1);
    for (let i = 0; i < 2; i++) {
      const conn = new FakeConnection();
      const lease = new UpstreamLease(svc, 0, 0, listener, () => 0);
      lease.begin(conn);
      // The only endpoint: nothing left to retry on.
      expect(lease.connectFailed(conn, 'ECONNREFUSED')).toBe(false);
      lease.release();
    }
    expect(ejections).toEqual(['10.0.0.1:80']);
    expect(svc.state.ejections).toBe(1);
  });
});

describe('token buckets', () => {
  it('admits the burst at once, then the rate', () => {
    const b = new TokenBucket({ connections: 10, perMs: 1000, burst: 3 }, 0);
    const admitted = (now: number) => (b.ready(now) ? (b.take(), true) : false);
    expect([admitted(0), admitted(0), admitted(0), admitted(0)]).toEqual([true, true, true, false]);
    expect(admitted(50)).toBe(false);
    expect(admitted(100)).toBe(true);
    // Over 10 s of demand every millisecond: 10/s.
    let n = 0;
    for (let t = 101; t <= 10_100; t++) if (admitted(t)) n++;
    expect(n).toBe(100);
    expect(b.full(20_000)).toBe(true);
  });

  it('keeps one bucket per source and forgets full ones', () => {
    const s = new SourceBuckets({ connections: 1, perMs: 1000, burst: 1 }, 3);
    s.bucket('a', 0).take();
    s.bucket('b', 0).take();
    s.bucket('c', 0);
    expect(s.size).toBe(3);
    expect(s.bucket('a', 10).ready(10)).toBe(false);
    // A fourth source at the bound: full buckets (c) are swept first.
    s.bucket('d', 10);
    expect(s.size).toBe(3);
    s.sweep(5000);
    expect(s.size).toBe(0);
  });
});

describe('inbound admission', () => {
  const cidr = (t: string) => parseCidr(t) as Cidr;
  const entry = (extra: Partial<InboundPortPolicy>): InboundPortPolicy => ({
    ports: { from: 8080, to: 8080 },
    maxConnections: null,
    rateLimit: null,
    sourceRateLimit: null,
    allow: 'all',
    deny: [],
    allowPrincipals: [],
    denyPrincipals: [],
    ...extra,
  });

  it('finds the entry of a port, a range or the catch-all', () => {
    const p = new InboundPolicy(
      { ports: [entry({}), entry({ ports: { from: 9000, to: 9010 } }), entry({ ports: 'all', maxConnections: 1 })] },
      null,
      0,
    );
    expect(p.entryFor(8080)).toBe(p.entries[0]);
    expect(p.entryFor(9005)).toBe(p.entries[1]);
    expect(p.entryFor(22)).toBe(p.entries[2]);
    expect(new InboundPolicy({ ports: [entry({})] }, null, 0).entryFor(22)).toBeNull();
  });

  it('applies deny before allow, then max connections, then the buckets, and counts each refusal', () => {
    const p = new InboundPolicy(
      {
        ports: [
          entry({
            allow: [cidr('10.0.0.0/8')],
            deny: [cidr('10.9.0.0/16')],
            maxConnections: 2,
            rateLimit: { connections: 1, perMs: 1000, burst: 5 },
          }),
        ],
      },
      null,
      0,
    );
    const e = p.entries[0]!;
    expect(e.admit('10.9.1.1', 0)).toBe('denied');
    expect(e.admit('192.0.2.1', 0)).toBe('denied');
    expect(e.admit('10.1.1.1', 0)).toBeNull();
    expect(e.admit('10.1.1.2', 0)).toBeNull();
    expect(e.admit('10.1.1.3', 0)).toBe('over-capacity');
    e.release();
    e.release();
    expect(e.admit('10.1.1.3', 0)).toBeNull();
    expect(e.admit('10.1.1.4', 0)).toBeNull();
    e.release();
    e.release();
    expect(e.admit('10.1.1.5', 0)).toBeNull();
    e.release();
    expect(e.admit('10.1.1.6', 0)).toBe('rate-limited');
    expect(e.state).toMatchObject({
      active: 0,
      admitted: 5,
      refused: { denied: 2, 'over-capacity': 1, 'rate-limited': 1 },
    });
  });

  it('does not spend the global token of a connection its source bucket refuses', () => {
    const p = new InboundPolicy(
      {
        ports: [
          entry({
            rateLimit: { connections: 1, perMs: 1000, burst: 2 },
            sourceRateLimit: { connections: 1, perMs: 1000, burst: 1 },
          }),
        ],
      },
      null,
      0,
    );
    const e = p.entries[0]!;
    expect(e.admit('a', 0)).toBeNull();
    expect(e.admit('a', 0)).toBe('rate-limited');
    expect(e.admit('b', 0)).toBeNull();
    expect(e.admit('c', 0)).toBe('rate-limited');
  });

  it('keeps the counts of an entry across a reload, so open connections still count against its limit', () => {
    const config = { ports: [entry({ maxConnections: 1 })] };
    const a = new InboundPolicy(config, null, 0);
    expect(a.entries[0]!.admit('x', 0)).toBeNull();
    const b = new InboundPolicy(config, a, 0);
    expect(b.entries[0]!.admit('y', 0)).toBe('over-capacity');
    a.entries[0]!.release();
    expect(b.entries[0]!.admit('y', 0)).toBeNull();
  });
});

describe('health-check thresholds', () => {
  it('takes an endpoint out after unhealthyThreshold failures and back after healthyThreshold passes', () => {
    const ep = eps(1)[0]!;
    const policy = { intervalMs: 1000, timeoutMs: 100, unhealthyThreshold: 2, healthyThreshold: 2 };
    expect(recordCheck(ep, false, policy)).toBe(false);
    expect(recordCheck(ep, true, policy)).toBe(false);
    expect(recordCheck(ep, false, policy)).toBe(false);
    expect(recordCheck(ep, false, policy)).toBe(true);
    expect(ep.healthy).toBe(false);
    expect(recordCheck(ep, true, policy)).toBe(false);
    expect(recordCheck(ep, true, policy)).toBe(true);
    expect(ep.healthy).toBe(true);
  });
});
