// One service inside one proxy process: its current endpoints (from static entries and discovery) grouped into
// weighted subsets, a balancer per subset, and the choice of the endpoint for an attempt — the first one by subset
// weight, a retry preferably in the same subset and never on an endpoint this connection already tried.
import type { Family } from '../values/ip.js';
import type { ServiceConfig } from '../config/types.js';
import { Endpoint, endpointKey } from './endpoint.js';
import { createBalancer, type Balancer, type Random } from './load-balancer.js';
import type { ServiceState } from './service-state.js';
import { hashedSubset, nextSubset, type WeightedSubset } from './subsets.js';

export interface EndpointSpec {
  readonly address: string;
  readonly port: number;
  readonly family: Family;
  readonly subset: string | null;
}

interface Subset extends WeightedSubset {
  readonly balancer: Balancer;
}

export class ServiceRuntime {
  readonly subsets: Subset[];
  /** Every current endpoint (all subsets), in discovery order. */
  endpoints: readonly Endpoint[] = [];
  private known = new Map<string, Endpoint>();
  private readonly hashed: boolean;

  constructor(
    readonly config: ServiceConfig,
    readonly state: ServiceState,
    /** The same service's runtime before a reload: its endpoint objects (and their counts) are kept. */
    previous: ServiceRuntime | null,
    random: Random = Math.random,
  ) {
    this.hashed = config.loadBalancer === 'source-hash';
    const groups = config.subsets.length > 0 ? config.subsets : [{ name: null, weight: 1 }];
    this.subsets = groups.map((g) => ({
      name: g.name,
      weight: g.weight,
      current: 0,
      endpoints: [],
      balancer: createBalancer(config.loadBalancer, random),
    }));
    if (previous) for (const ep of previous.known.values()) this.known.set(ep.key, ep);
  }

  /** Replaces the endpoint set; returns true when it changed. Objects of kept endpoints (and their counts) stay. */
  setEndpoints(specs: readonly EndpointSpec[]): boolean {
    const next: Endpoint[] = [];
    const seen = new Set<string>();
    for (const s of specs) {
      const key = endpointKey(s.address, s.port, s.subset);
      if (seen.has(key)) continue;
      seen.add(key);
      next.push(this.known.get(key) ?? new Endpoint(s.address, s.port, s.family, s.subset));
    }
    const changed = next.length !== this.endpoints.length || next.some((ep, i) => ep !== this.endpoints[i]);
    const known = new Map<string, Endpoint>();
    for (const ep of next) known.set(ep.key, ep);
    // An endpoint gone from discovery but still carrying connections keeps its object, so that it is not
    // counted from zero if it comes back while they are open.
    for (const ep of this.known.values()) if (!known.has(ep.key) && ep.active > 0) known.set(ep.key, ep);
    this.known = known;
    this.endpoints = next;
    for (const subset of this.subsets) {
      subset.endpoints = next.filter((ep) => ep.subset === subset.name || subset.name === null);
      subset.balancer.rebuild(subset.endpoints);
    }
    return changed;
  }

  /**
   * The endpoint for the next attempt, or null when none is left. `hash` is the client address's hash (only
   * source-hash uses it); `tried` lists the endpoints this connection already failed on.
   */
  pick(hash: number, tried: readonly Endpoint[] | null, now: number): Endpoint | null {
    const subsets = this.subsets;
    let first: Subset | null = null;
    if (tried === null) {
      const i = this.hashed ? hashedSubset(subsets, hash, null) : nextSubset(subsets, null);
      if (i < 0) return null;
      first = subsets[i]!;
    } else {
      const last = tried[tried.length - 1]!;
      first = subsets.find((s) => s.name === null || s.name === last.subset) ?? null;
    }
    if (first !== null) {
      const ep = first.balancer.pick(first.endpoints, hash, tried, now);
      if (ep !== null) return ep;
    }
    for (const s of subsets) {
      if (s === first || s.weight === 0 || s.endpoints.length === 0) continue;
      const ep = s.balancer.pick(s.endpoints, hash, tried, now);
      if (ep !== null) return ep;
    }
    return null;
  }
}
