// Endpoint choice within one group of endpoints: round robin, least connections by the power of two choices,
// random, and a consistent-hash ring over the client's address (sticky). Every balancer skips endpoints already
// tried by this connection and prefers available ones (healthy, not ejected); when none is available it falls
// back to any untried endpoint (panic mode: better a likely failure than a certain refusal). No allocation per pick.
import type { LoadBalancerPolicy } from '../config/types.js';
import type { Endpoint } from './endpoint.js';

export type Random = () => number;

export interface Balancer {
  /** The endpoint for a new attempt, or null when every endpoint was tried. `hash` is the client address's hash. */
  pick(endpoints: readonly Endpoint[], hash: number, tried: readonly Endpoint[] | null, now: number): Endpoint | null;
  /** The endpoint list changed (discovery, health): rebuild derived state. */
  rebuild(endpoints: readonly Endpoint[]): void;
}

function untried(ep: Endpoint, tried: readonly Endpoint[] | null): boolean {
  return tried === null || !tried.includes(ep);
}

/** Panic mode: the first untried endpoint from `start`, ignoring health and ejection. */
function anyUntried(endpoints: readonly Endpoint[], start: number, tried: readonly Endpoint[] | null): Endpoint | null {
  const n = endpoints.length;
  for (let k = 0; k < n; k++) {
    const ep = endpoints[(start + k) % n]!;
    if (untried(ep, tried)) return ep;
  }
  return null;
}

/** Scans from `start` for the first available, untried endpoint; returns its index or -1. */
function scan(endpoints: readonly Endpoint[], start: number, tried: readonly Endpoint[] | null, now: number): number {
  const n = endpoints.length;
  for (let k = 0; k < n; k++) {
    const i = (start + k) % n;
    const ep = endpoints[i]!;
    if (ep.available(now) && untried(ep, tried)) return i;
  }
  return -1;
}

export class RoundRobinBalancer implements Balancer {
  private next = 0;

  pick(endpoints: readonly Endpoint[], _hash: number, tried: readonly Endpoint[] | null, now: number): Endpoint | null {
    const n = endpoints.length;
    if (n === 0) return null;
    const start = this.next % n;
    const i = scan(endpoints, start, tried, now);
    // A retry takes the next endpoint in the rotation without moving it: otherwise every connection after one
    // that failed over would start on the failing endpoint again.
    if (tried !== null) return i >= 0 ? endpoints[i]! : anyUntried(endpoints, start, tried);
    if (i >= 0) {
      this.next = i + 1;
      return endpoints[i]!;
    }
    this.next = start + 1;
    return anyUntried(endpoints, start, tried);
  }

  rebuild(): void {}
}

export class RandomBalancer implements Balancer {
  constructor(private readonly random: Random = Math.random) {}

  pick(endpoints: readonly Endpoint[], _hash: number, tried: readonly Endpoint[] | null, now: number): Endpoint | null {
    const n = endpoints.length;
    if (n === 0) return null;
    const start = Math.floor(this.random() * n);
    const i = scan(endpoints, start, tried, now);
    return i >= 0 ? endpoints[i]! : anyUntried(endpoints, start, tried);
  }

  rebuild(): void {}
}

/**
 * Least connections by the power of two choices (Mitzenmacher): sample two distinct endpoints, take the one with
 * fewer open connections. O(1), and unlike a full scan it does not herd every new connection onto the same
 * endpoint between updates. With two endpoints it is exact least-connections.
 */
export class LeastConnectionsBalancer implements Balancer {
  constructor(private readonly random: Random = Math.random) {}

  pick(endpoints: readonly Endpoint[], _hash: number, tried: readonly Endpoint[] | null, now: number): Endpoint | null {
    const n = endpoints.length;
    if (n === 0) return null;
    if (n === 1) {
      const only = endpoints[0]!;
      return untried(only, tried) ? only : null;
    }
    const a = Math.floor(this.random() * n);
    let b = Math.floor(this.random() * (n - 1));
    if (b >= a) b++;
    const ea = endpoints[a]!;
    const eb = endpoints[b]!;
    const okA = ea.available(now) && untried(ea, tried);
    const okB = eb.available(now) && untried(eb, tried);
    if (okA && okB) return eb.active < ea.active ? eb : ea;
    if (okA) return ea;
    if (okB) return eb;
    // Both samples unusable (ejected, unhealthy or tried): the least loaded usable one, by a scan.
    let best: Endpoint | null = null;
    for (const ep of endpoints) {
      if (ep.available(now) && untried(ep, tried) && (best === null || ep.active < best.active)) best = ep;
    }
    return best ?? anyUntried(endpoints, a, tried);
  }

  rebuild(): void {}
}

/** 32-bit FNV-1a of a string, finished with murmur3's fmix32 so that nearby inputs spread over the ring. */
export function hashString(text: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < text.length; i++) {
    h ^= text.charCodeAt(i);
    h = Math.imul(h, 0x01000193);
  }
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h >>> 0;
}

const POINTS_PER_ENDPOINT = 160;

/**
 * A consistent-hash ring (ketama style, 160 points per endpoint) over the client's address: a client keeps its
 * endpoint while the endpoint set is stable, and only the clients of an added or removed endpoint move. An
 * unavailable or tried endpoint is skipped clockwise, so its clients spread over the others.
 */
export class SourceHashBalancer implements Balancer {
  private points = new Uint32Array(0);
  private owners = new Uint32Array(0);
  private built: readonly Endpoint[] = [];

  rebuild(endpoints: readonly Endpoint[]): void {
    const pairs: [number, number][] = [];
    endpoints.forEach((ep, index) => {
      for (let i = 0; i < POINTS_PER_ENDPOINT; i++) pairs.push([hashString(`${ep.key}-${i}`), index]);
    });
    pairs.sort((x, y) => x[0] - y[0] || x[1] - y[1]);
    this.points = Uint32Array.from(pairs, (p) => p[0]);
    this.owners = Uint32Array.from(pairs, (p) => p[1]);
    this.built = endpoints;
  }

  pick(endpoints: readonly Endpoint[], hash: number, tried: readonly Endpoint[] | null, now: number): Endpoint | null {
    if (endpoints.length === 0) return null;
    if (endpoints !== this.built) this.rebuild(endpoints);
    const points = this.points;
    const m = points.length;
    let lo = 0;
    let hi = m;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (points[mid]! < hash) lo = mid + 1;
      else hi = mid;
    }
    for (let k = 0; k < m; k++) {
      const ep = endpoints[this.owners[(lo + k) % m]!]!;
      if (ep.available(now) && untried(ep, tried)) return ep;
    }
    return anyUntried(endpoints, this.owners[lo % m]!, tried);
  }
}

export function createBalancer(policy: LoadBalancerPolicy, random: Random = Math.random): Balancer {
  switch (policy) {
    case 'round-robin':
      return new RoundRobinBalancer();
    case 'least-connections':
      return new LeastConnectionsBalancer(random);
    case 'random':
      return new RandomBalancer(random);
    case 'source-hash':
      return new SourceHashBalancer();
  }
}
