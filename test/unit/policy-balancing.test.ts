// Endpoint choice: round robin, P2C least connections, random, the source-hash ring, weighted subsets (SWRR) and
// a service's retry preference — deterministic through injected randomness.
import { describe, expect, it } from 'vitest';
import type { ServiceConfig } from '../../src/config/types.js';
import { Endpoint } from '../../src/policy/endpoint.js';
import {
  hashString,
  LeastConnectionsBalancer,
  RandomBalancer,
  RoundRobinBalancer,
  SourceHashBalancer,
} from '../../src/policy/load-balancer.js';
import { ServiceRuntime } from '../../src/policy/service.js';
import { ServiceState } from '../../src/policy/service-state.js';
import { hashedSubset, nextSubset, type WeightedSubset } from '../../src/policy/subsets.js';

const eps = (n: number, subset: string | null = null) =>
  Array.from({ length: n }, (_, i) => new Endpoint(`10.0.0.${i + 1}`, 8080, 'ipv4', subset));
/** A random source that replays `values` (each in [0, 1)). */
const replay = (...values: number[]) => {
  let i = 0;
  return () => values[i++ % values.length]!;
};

describe('RoundRobinBalancer', () => {
  it('rotates, skips unavailable and tried endpoints, and falls back to any untried one when none is available', () => {
    const list = eps(3);
    const rr = new RoundRobinBalancer();
    expect([0, 1, 2, 3].map(() => rr.pick(list, 0, null, 0)!.address)).toEqual([
      '10.0.0.1',
      '10.0.0.2',
      '10.0.0.3',
      '10.0.0.1',
    ]);
    list[2]!.ejectedUntil = 1000;
    expect([0, 1, 2].map(() => rr.pick(list, 0, null, 500)!.address)).toEqual(['10.0.0.2', '10.0.0.1', '10.0.0.2']);
    expect(rr.pick(list, 0, null, 1000)!.address).toBe('10.0.0.3');
    list[0]!.healthy = false;
    list[1]!.healthy = false;
    list[2]!.healthy = false;
    expect(rr.pick(list, 0, [list[0]!], 0)!.address).toBe('10.0.0.2');
    expect(rr.pick(list, 0, list, 0)).toBeNull();
    expect(rr.pick([], 0, null, 0)).toBeNull();
  });

  it('does not move the rotation for a retry', () => {
    const list = eps(2);
    const rr = new RoundRobinBalancer();
    const first = rr.pick(list, 0, null, 0)!;
    expect(rr.pick(list, 0, [first], 0)).toBe(list[1]);
    expect(rr.pick(list, 0, null, 0)).toBe(list[1]);
    expect(rr.pick(list, 0, null, 0)).toBe(list[0]);
  });
});

describe('LeastConnectionsBalancer (power of two choices)', () => {
  it('takes the less loaded of two distinct random endpoints', () => {
    const list = eps(3);
    list[0]!.active = 5;
    list[1]!.active = 1;
    list[2]!.active = 9;
    // samples a = 0 (10.0.0.1), b from the other two: 0.4 × 2 → index 0 → skips a → 1 (10.0.0.2)
    expect(new LeastConnectionsBalancer(replay(0.1, 0.4)).pick(list, 0, null, 0)).toBe(list[1]);
    // a = 2 (9 active), b = 0 (5 active)
    expect(new LeastConnectionsBalancer(replay(0.9, 0.1)).pick(list, 0, null, 0)).toBe(list[0]);
  });

  it('is exact least-connections for two endpoints and never picks a tried one', () => {
    const list = eps(2);
    list[0]!.active = 3;
    const lc = new LeastConnectionsBalancer();
    for (let i = 0; i < 20; i++) expect(lc.pick(list, 0, null, 0)).toBe(list[1]);
    expect(lc.pick(list, 0, [list[1]!], 0)).toBe(list[0]);
  });

  it('scans for the least loaded usable endpoint when both samples are unusable', () => {
    const list = eps(4);
    list[0]!.ejectedUntil = 100;
    list[1]!.healthy = false;
    list[2]!.active = 7;
    list[3]!.active = 2;
    expect(new LeastConnectionsBalancer(replay(0.1, 0.1)).pick(list, 0, null, 0)).toBe(list[3]);
  });
});

describe('RandomBalancer', () => {
  it('starts at a random endpoint and skips unusable ones', () => {
    const list = eps(4);
    expect(new RandomBalancer(replay(0.6)).pick(list, 0, null, 0)).toBe(list[2]);
    list[2]!.healthy = false;
    expect(new RandomBalancer(replay(0.6)).pick(list, 0, null, 0)).toBe(list[3]);
  });
});

describe('SourceHashBalancer', () => {
  const sources = Array.from({ length: 2000 }, (_, i) => `10.${(i >> 8) & 255}.${i & 255}.7`);

  it('maps a source to the same endpoint every time, spreading sources over all endpoints', () => {
    const list = eps(4);
    const ring = new SourceHashBalancer();
    ring.rebuild(list);
    const counts = new Map<Endpoint, number>();
    for (const s of sources) {
      const ep = ring.pick(list, hashString(s), null, 0)!;
      expect(ring.pick(list, hashString(s), null, 0)).toBe(ep);
      counts.set(ep, (counts.get(ep) ?? 0) + 1);
    }
    for (const ep of list) expect(counts.get(ep)!).toBeGreaterThan((2000 / 4) * 0.7);
  });

  it('moves only the sources of a removed endpoint, and skips an ejected one without moving the others', () => {
    const list = eps(4);
    const ring = new SourceHashBalancer();
    const before = new Map(sources.map((s) => [s, ring.pick(list, hashString(s), null, 0)!]));
    const without = list.slice(0, 3);
    let moved = 0;
    for (const s of sources) {
      const now = ring.pick(without, hashString(s), null, 0)!;
      if (before.get(s) !== list[3]) expect(now).toBe(before.get(s));
      else moved++;
    }
    expect(moved).toBeGreaterThan(0);
    list[1]!.ejectedUntil = 50;
    for (const s of sources) {
      const now = ring.pick(list, hashString(s), null, 10)!;
      if (before.get(s) === list[1]) expect(now).not.toBe(list[1]);
      else expect(now).toBe(before.get(s));
    }
  });
});

describe('weighted subsets', () => {
  const subset = (name: string, weight: number, n = 1): WeightedSubset => ({
    name,
    weight,
    current: 0,
    endpoints: eps(n, name),
  });

  it('splits exactly by weight over every window of sum(weights), interleaved (smooth weighted round robin)', () => {
    const list = [subset('v1', 90), subset('v2', 10)];
    const picks = Array.from({ length: 1000 }, () => list[nextSubset(list, null)]!.name);
    expect(picks.filter((p) => p === 'v2')).toHaveLength(100);
    for (let w = 0; w + 100 <= 1000; w += 100)
      expect(picks.slice(w, w + 100).filter((p) => p === 'v2')).toHaveLength(10);
    const five = [subset('a', 5), subset('b', 1), subset('c', 1)];
    expect(Array.from({ length: 7 }, () => five[nextSubset(five, null)]!.name).join('')).toBe('aabacaa');
  });

  it('skips subsets with weight 0, without endpoints, or excluded', () => {
    const list = [subset('v1', 0), subset('v2', 100), subset('v3', 50, 0)];
    for (let i = 0; i < 10; i++) expect(nextSubset(list, null)).toBe(1);
    expect(nextSubset(list, list[1]!)).toBe(-1);
    expect(hashedSubset(list, 12345, null)).toBe(1);
  });

  it('picks a subset by the source hash, stable for a source and close to the weights over many sources', () => {
    const list = [subset('v1', 75), subset('v2', 25)];
    let v2 = 0;
    for (let i = 0; i < 4000; i++) {
      const h = hashString(`192.0.${i >> 8}.${i & 255}`);
      const s = hashedSubset(list, h, null);
      expect(hashedSubset(list, h, null)).toBe(s);
      if (s === 1) v2++;
    }
    expect(v2 / 4000).toBeGreaterThan(0.2);
    expect(v2 / 4000).toBeLessThan(0.3);
  });
});

describe('ServiceRuntime', () => {
  const config = (extra: Partial<ServiceConfig> = {}): ServiceConfig => ({
    name: 'api',
    addresses: [],
    endpoints: [],
    loadBalancer: 'round-robin',
    subsets: [],
    connectTimeoutMs: 1000,
    retries: { attempts: 3, backoffMs: 1, maxBackoffMs: 1 },
    outlierDetection: { enabled: true, consecutiveFailures: 5, baseEjectionMs: 1000, maxEjectionPercent: 50 },
    circuitBreaker: { maxConnections: null, maxPending: null },
    healthCheck: null,
    faults: { delay: null, abort: null },
    mtls: false,
    identities: [],
    ...extra,
  });
  const spec = (host: string, subset: string | null = null) => ({
    address: host,
    port: 80,
    family: 'ipv4' as const,
    subset,
  });

  it('retries in the subset of the failed endpoint before trying another subset', () => {
    const svc = new ServiceRuntime(
      config({
        subsets: [
          { name: 'v1', weight: 1 },
          { name: 'v2', weight: 1 },
        ],
      }),
      new ServiceState('api'),
      null,
    );
    svc.setEndpoints([spec('10.0.0.1', 'v1'), spec('10.0.0.2', 'v1'), spec('10.0.0.3', 'v2')]);
    const first = svc.pick(0, null, 0)!;
    expect(first.subset).toBe('v1');
    const retry = svc.pick(0, [first], 0)!;
    expect(retry.subset).toBe('v1');
    expect(retry).not.toBe(first);
    expect(svc.pick(0, [first, retry], 0)!.subset).toBe('v2');
    expect(svc.pick(0, svc.endpoints, 0)).toBeNull();
  });

  it('keeps endpoint objects (and their counts) across endpoint changes and reloads', () => {
    const state = new ServiceState('api');
    const a = new ServiceRuntime(config(), state, null);
    a.setEndpoints([spec('10.0.0.1'), spec('10.0.0.2')]);
    const one = a.endpoints[0]!;
    one.active = 4;
    expect(a.setEndpoints([spec('10.0.0.1'), spec('10.0.0.2')])).toBe(false);
    expect(a.setEndpoints([spec('10.0.0.2')])).toBe(true);
    // Gone from discovery while it has connections: the same object comes back.
    expect(a.setEndpoints([spec('10.0.0.1'), spec('10.0.0.2')])).toBe(true);
    expect(a.endpoints[0]).toBe(one);
    const b = new ServiceRuntime(config({ loadBalancer: 'least-connections' }), state, a);
    b.setEndpoints([spec('10.0.0.1'), spec('10.0.0.3')]);
    expect(b.endpoints[0]).toBe(one);
    expect(b.endpoints[0]!.active).toBe(4);
    expect(b.pick(0, null, 0)!.address).toBe('10.0.0.3');
  });
});
