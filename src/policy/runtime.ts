// The mesh policy of one proxy process, built from a Config: the service matcher, every service's endpoints and
// balancers, inbound admission, discovery and health checks. The worker asks it once per accepted connection
// (outbound: which service, or registry-only; inbound: admission) and gets back nothing (no policy), a refusal
// reason, or a lease. A reload builds a new runtime that adopts the old one's state (endpoint counts, outlier
// state, DNS answers, counters), starts it, and only then swaps it in: open connections are never touched.
import { performance } from 'node:perf_hooks';
import type { Config, ServiceConfig } from '../config/types.js';
import type { Logger } from '../log.js';
import type { RefusalReason } from './refusals.js';
import { Discovery } from './discovery.js';
import type { Endpoint } from './endpoint.js';
import { injectFault } from './faults.js';
import { HealthChecker } from './health-check.js';
import { InboundPolicy, type InboundEntry } from './inbound.js';
import { hashString, type Random } from './load-balancer.js';
import type { EndpointStats, PolicySnapshot } from './metrics.js';
import { meshNames, normalizeHostname, type MeshName } from './mesh-names.js';
import { ServiceMatcher, type RegistryEntry } from './registry.js';
import { ServiceRuntime, type EndpointSpec } from './service.js';
import { ServiceState } from './service-state.js';
import { UpstreamLease, type EjectionListener } from './upstream.js';

const MAINTENANCE_MS = 5000;
/**
 * How long start() waits for first DNS answers and the first health-check round. They go on in the background
 * after it (and rebuild the endpoints when they land); the bound keeps a start or reload from hanging on a silent
 * DNS server, and a worker's reload answer well within the primary's query timeout.
 */
const START_WAIT_MS = 3000;

export class PolicyRuntime implements EjectionListener {
  readonly services: readonly ServiceRuntime[];
  readonly inboundPolicy: InboundPolicy;
  /** False when there is nothing to decide per connection (no services, passthrough, no inbound entries). */
  readonly active: boolean;
  private matcher: ServiceMatcher<ServiceRuntime>;
  /** Hostname addresses and their answers; a VIP is matched like a fixed address of its service. */
  readonly meshNames: ReadonlyMap<string, MeshName>;
  private readonly registryOnly: boolean;
  private readonly discovery: Discovery;
  private readonly checkers: HealthChecker[] = [];
  private maintenance: NodeJS.Timeout | null = null;
  private readonly log: Logger;

  constructor(
    readonly config: Pick<Config, 'services' | 'outbound' | 'inbound'>,
    private readonly previous: PolicyRuntime | null,
    log: Logger,
    private readonly random: Random = Math.random,
  ) {
    this.log = log.child({ component: 'policy' });
    const oldByName = new Map((previous?.services ?? []).map((s) => [s.config.name, s]));
    this.services = config.services.map((s) => {
      const old = oldByName.get(s.name) ?? null;
      return new ServiceRuntime(s, old?.state ?? new ServiceState(s.name), old, random);
    });
    this.inboundPolicy = new InboundPolicy(config.inbound, previous?.inboundPolicy ?? null);
    this.registryOnly = config.outbound.policy === 'registry-only';
    this.active = this.services.length > 0 || this.registryOnly || !this.inboundPolicy.empty;
    this.meshNames = meshNames(config.services);
    this.discovery = new Discovery(config.outbound.resolver, () => this.rebuild(), this.log);
    for (const s of config.services) {
      for (const a of s.addresses) if (a.kind === 'hostname') this.discovery.watch('addresses', a.hostname);
      for (const e of s.endpoints) {
        if (e.kind === 'dns') this.discovery.watch('addresses', e.hostname);
        else if (e.kind === 'srv') this.discovery.watch('srv', e.name);
      }
    }
    this.matcher = new ServiceMatcher([]);
    this.rebuild();
  }

  /**
   * Resolves every DNS name (or adopts the previous runtime's answers), runs the first health-check round and
   * starts the timers. Resolves when the runtime is ready to be swapped in; stops the previous runtime's timers.
   */
  async start(): Promise<void> {
    const deadline = performance.now() + START_WAIT_MS;
    const bounded = async (work: Promise<unknown>, what: string) => {
      let timer: NodeJS.Timeout | undefined;
      const late = new Promise<'late'>(
        (resolve) => (timer = setTimeout(() => resolve('late'), Math.max(0, deadline - performance.now()))),
      );
      const outcome = await Promise.race([work.then(() => 'done' as const), late]);
      clearTimeout(timer);
      if (outcome === 'late')
        this.log.warn({ waitedMs: START_WAIT_MS }, `${what} still running; continuing in the background`);
    };
    await bounded(this.discovery.start(this.previous?.discovery ?? null), 'first DNS resolution');
    this.rebuild();
    const checks: Promise<void>[] = [];
    for (const svc of this.services) {
      if (svc.config.healthCheck === null) continue;
      const checker = new HealthChecker(svc.config.name, svc.config.healthCheck, () => svc.endpoints, this.log);
      this.checkers.push(checker);
      checks.push(checker.start());
    }
    await bounded(Promise.all(checks), 'first health-check round');
    this.maintenance = setInterval(() => this.maintain(), MAINTENANCE_MS);
    this.maintenance.unref();
    this.previous?.stop();
  }

  stop(): void {
    this.discovery.stop();
    for (const c of this.checkers) c.stop();
    if (this.maintenance) clearInterval(this.maintenance);
    this.maintenance = null;
  }

  /** Recomputes endpoint sets and the matcher from the static config and the current DNS answers. */
  private rebuild(): void {
    const entries: RegistryEntry<ServiceRuntime>[] = [];
    for (const svc of this.services) {
      svc.setEndpoints(this.endpointSpecs(svc.config));
      for (const a of svc.config.addresses) {
        if (a.kind === 'ip') entries.push({ kind: 'ip', address: a.address, port: a.port, value: svc });
        else if (a.kind === 'cidr') entries.push({ kind: 'cidr', cidr: a.cidr, port: a.port, value: svc });
        else {
          for (const r of this.discovery.get('addresses', a.hostname) ?? [])
            entries.push({ kind: 'ip', address: r.address, port: a.port, value: svc });
          const mesh = this.meshNames.get(normalizeHostname(a.hostname));
          if (mesh?.vip)
            for (const address of [...mesh.ipv4, ...mesh.ipv6])
              entries.push({ kind: 'ip', address, port: a.port, value: svc });
        }
      }
    }
    this.matcher = new ServiceMatcher(entries);
  }

  private endpointSpecs(config: ServiceConfig): EndpointSpec[] {
    const specs: EndpointSpec[] = [];
    for (const e of config.endpoints) {
      if (e.kind === 'static') specs.push({ address: e.address, port: e.port, family: e.family, subset: e.subset });
      else if (e.kind === 'dns')
        for (const r of this.discovery.get('addresses', e.hostname) ?? [])
          specs.push({ address: r.address, port: e.port, family: r.family, subset: e.subset });
      else
        for (const r of this.discovery.get('srv', e.name) ?? [])
          specs.push({ address: r.address, port: r.port ?? 0, family: r.family, subset: e.subset });
    }
    return specs;
  }

  /** The smallest per-attempt connect timeout of any service (the sweep must run often enough for it). */
  get minConnectTimeoutMs(): number | null {
    return this.services.length === 0 ? null : Math.min(...this.services.map((s) => s.config.connectTimeoutMs));
  }

  /**
   * Policy for an outbound connection to `address:port` from `client` (its address is read only for source-hash
   * balancing): null to connect as dialled (no service, passthrough), a refusal reason, or the lease that connects
   * it to one of the service's endpoints.
   */
  outbound(
    address: string,
    port: number,
    client: { readonly remoteAddress?: string | undefined },
  ): UpstreamLease | RefusalReason | null {
    const svc = this.matcher.lookup(address, port);
    if (svc === null) return this.registryOnly ? 'registry-only' : null;
    const state = svc.state;
    const cb = svc.config.circuitBreaker;
    if (
      (cb.maxConnections !== null && state.active >= cb.maxConnections) ||
      (cb.maxPending !== null && state.pending >= cb.maxPending)
    ) {
      state.refused['circuit-open']++;
      return 'circuit-open';
    }
    const fault =
      svc.config.faults.abort === null && svc.config.faults.delay === null
        ? 0
        : injectFault(svc.config.faults, this.random);
    if (fault < 0) {
      state.refused['fault-abort']++;
      return 'fault-abort';
    }
    const hash = svc.config.loadBalancer === 'source-hash' ? hashString(client.remoteAddress ?? '') : 0;
    return new UpstreamLease(svc, hash, fault, this, this.random);
  }

  /** Admission of an inbound connection to local port `port` from `source`: null (no entry), refusal, or the entry. */
  /** `principal`: the peer's SPIFFE ID through the mTLS tunnel, null for plaintext. */
  admitInbound(
    port: number,
    source: string | undefined,
    principal: string | null = null,
  ): InboundEntry | RefusalReason | null {
    const entry = this.inboundPolicy.entryFor(port);
    if (entry === null) return null;
    const refusal = entry.admit(source ?? '', performance.now(), principal);
    return refusal ?? entry;
  }

  ejected(svc: ServiceRuntime, ep: Endpoint, ms: number): void {
    this.log.warn(
      {
        service: svc.config.name,
        endpoint: ep.text,
        consecutiveFailures: ep.consecutiveFailures,
        ejections: ep.ejections,
        ejectedForMs: ms,
      },
      'endpoint ejected by outlier detection',
    );
  }

  private maintain(): void {
    const now = performance.now();
    for (const e of this.inboundPolicy.entries) e.sweep(now);
  }

  snapshot(): PolicySnapshot {
    const now = performance.now();
    const services: PolicySnapshot['services'] = {};
    for (const svc of this.services) {
      const s = svc.state;
      services[svc.config.name] = {
        active: s.active,
        pending: s.pending,
        connections: s.connections,
        connected: s.connected,
        connectFailures: s.connectFailures,
        retries: s.retries,
        ejections: s.ejections,
        delayed: s.delayed,
        refused: { ...s.refused },
        endpoints: svc.endpoints.map((ep): EndpointStats => ({
          endpoint: ep.text,
          subset: ep.subset,
          active: ep.active,
          connections: ep.connections,
          connectFailures: ep.connectFailures,
          ejections: ep.ejections,
          ejected: ep.ejected(now),
          ejectedForMs: ep.ejected(now) ? Math.round(ep.ejectedUntil - now) : 0,
          healthy: ep.healthy,
        })),
      };
    }
    const inbound: PolicySnapshot['inbound'] = {};
    for (const e of this.inboundPolicy.entries)
      inbound[e.state.label] = { active: e.state.active, admitted: e.state.admitted, refused: { ...e.state.refused } };
    return { services, inbound, discovery: this.discovery.info() };
  }
}
