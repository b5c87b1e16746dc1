// Policy counters of one proxy process as a JSON snapshot (/stats), their sum over worker processes, and their
// Prometheus text. Counters live in ServiceState / InboundPortState / Endpoint and are bumped at accept, connect
// and close only.
import type { WatchInfo } from './discovery.js';
import { INBOUND_REFUSALS, type InboundRefusal } from './inbound.js';
import { SERVICE_REFUSALS, type ServiceRefusal } from './service-state.js';

export interface EndpointStats {
  readonly endpoint: string;
  readonly subset: string | null;
  active: number;
  connections: number;
  connectFailures: number;
  ejections: number;
  /** Ejected by outlier detection now (in any worker), and for how much longer. */
  ejected: boolean;
  ejectedForMs: number;
  /** Passing its active health checks (in every worker). */
  healthy: boolean;
}

export interface ServiceStats {
  active: number;
  pending: number;
  connections: number;
  connected: number;
  connectFailures: number;
  retries: number;
  ejections: number;
  delayed: number;
  refused: Record<ServiceRefusal, number>;
  endpoints: EndpointStats[];
}

export interface InboundStats {
  active: number;
  admitted: number;
  refused: Record<InboundRefusal, number>;
}

export interface PolicySnapshot {
  services: Record<string, ServiceStats>;
  /** By inbound.ports entry (`8080`, `8000-8100`, `*`). */
  inbound: Record<string, InboundStats>;
  discovery: WatchInfo[];
}

function emptyPolicySnapshot(): PolicySnapshot {
  return { services: {}, inbound: {}, discovery: [] };
}

/** Sums the snapshots of several worker processes (endpoints by address and subset). */
export function mergePolicySnapshots(snapshots: readonly (PolicySnapshot | undefined)[]): PolicySnapshot {
  const total = emptyPolicySnapshot();
  const discovery = new Map<string, WatchInfo>();
  for (const s of snapshots) {
    if (!s) continue;
    for (const [name, svc] of Object.entries(s.services)) {
      const t = (total.services[name] ??= {
        active: 0,
        pending: 0,
        connections: 0,
        connected: 0,
        connectFailures: 0,
        retries: 0,
        ejections: 0,
        delayed: 0,
        refused: Object.fromEntries(SERVICE_REFUSALS.map((r) => [r, 0])) as Record<ServiceRefusal, number>,
        endpoints: [],
      });
      for (const k of [
        'active',
        'pending',
        'connections',
        'connected',
        'connectFailures',
        'retries',
        'ejections',
        'delayed',
      ] as const)
        t[k] += svc[k];
      for (const r of SERVICE_REFUSALS) t.refused[r] += svc.refused[r] ?? 0;
      for (const ep of svc.endpoints) {
        const mine = t.endpoints.find((e) => e.endpoint === ep.endpoint && e.subset === ep.subset);
        if (!mine) {
          t.endpoints.push({ ...ep });
          continue;
        }
        mine.active += ep.active;
        mine.connections += ep.connections;
        mine.connectFailures += ep.connectFailures;
        mine.ejections += ep.ejections;
        mine.ejected ||= ep.ejected;
        mine.ejectedForMs = Math.max(mine.ejectedForMs, ep.ejectedForMs);
        mine.healthy &&= ep.healthy;
      }
    }
    for (const [label, inb] of Object.entries(s.inbound)) {
      const t = (total.inbound[label] ??= {
        active: 0,
        admitted: 0,
        refused: Object.fromEntries(INBOUND_REFUSALS.map((r) => [r, 0])) as Record<InboundRefusal, number>,
      });
      t.active += inb.active;
      t.admitted += inb.admitted;
      for (const r of INBOUND_REFUSALS) t.refused[r] += inb.refused[r] ?? 0;
    }
    for (const w of s.discovery) {
      const key = `${w.kind}:${w.name}`;
      const mine = discovery.get(key);
      if (!mine) discovery.set(key, { ...w });
      else
        discovery.set(key, {
          ...mine,
          queries: mine.queries + w.queries,
          failures: mine.failures + w.failures,
          lastError: mine.lastError ?? w.lastError,
        });
    }
  }
  total.discovery = [...discovery.values()];
  return total;
}

function label(value: string): string {
  return value.replace(/\\/g, '\\\\').replace(/"/g, '\\"').replace(/\n/g, '\\n');
}

/** Prometheus text for the policy counters (appended to the proxy's /metrics). */
export function renderPolicyPrometheus(s: PolicySnapshot): string {
  const out: string[] = [];
  const family = (name: string, type: 'counter' | 'gauge', help: string) =>
    out.push(`# HELP ${name} ${help}`, `# TYPE ${name} ${type}`);
  const services = Object.entries(s.services);
  if (services.length > 0) {
    family('meshctl_service_connections_total', 'counter', 'Connections routed to a service (matched its addresses).');
    for (const [n, v] of services)
      out.push(`meshctl_service_connections_total{service="${label(n)}"} ${v.connections}`);
    family('meshctl_service_connections_active', 'gauge', 'Connections open or opening to a service.');
    for (const [n, v] of services) out.push(`meshctl_service_connections_active{service="${label(n)}"} ${v.active}`);
    family(
      'meshctl_service_connections_pending',
      'gauge',
      'Connections to a service still waiting for their upstream connect.',
    );
    for (const [n, v] of services) out.push(`meshctl_service_connections_pending{service="${label(n)}"} ${v.pending}`);
    family('meshctl_service_connect_failures_total', 'counter', "Failed connect attempts to a service's endpoints.");
    for (const [n, v] of services)
      out.push(`meshctl_service_connect_failures_total{service="${label(n)}"} ${v.connectFailures}`);
    family('meshctl_service_retries_total', 'counter', 'Connect attempts retried on another endpoint.');
    for (const [n, v] of services) out.push(`meshctl_service_retries_total{service="${label(n)}"} ${v.retries}`);
    family('meshctl_service_ejections_total', 'counter', 'Endpoints ejected by outlier detection.');
    for (const [n, v] of services) out.push(`meshctl_service_ejections_total{service="${label(n)}"} ${v.ejections}`);
    family('meshctl_service_faults_delayed_total', 'counter', 'Connections held back by an injected delay.');
    for (const [n, v] of services) out.push(`meshctl_service_faults_delayed_total{service="${label(n)}"} ${v.delayed}`);
    family(
      'meshctl_service_refused_total',
      'counter',
      'Connections to a service reset at accept: circuit-open (circuit breaker), fault-abort (fault injection), no-endpoint.',
    );
    for (const [n, v] of services)
      for (const r of SERVICE_REFUSALS)
        out.push(`meshctl_service_refused_total{service="${label(n)}",reason="${r}"} ${v.refused[r]}`);
    family(
      'meshctl_service_endpoints',
      'gauge',
      'Endpoints of a service by state: available, ejected (outlier detection), unhealthy (health checks).',
    );
    for (const [n, v] of services) {
      const ejected = v.endpoints.filter((e) => e.ejected).length;
      const unhealthy = v.endpoints.filter((e) => !e.healthy && !e.ejected).length;
      out.push(
        `meshctl_service_endpoints{service="${label(n)}",state="available"} ${v.endpoints.length - ejected - unhealthy}`,
      );
      out.push(`meshctl_service_endpoints{service="${label(n)}",state="ejected"} ${ejected}`);
      out.push(`meshctl_service_endpoints{service="${label(n)}",state="unhealthy"} ${unhealthy}`);
    }
  }
  const inbound = Object.entries(s.inbound);
  if (inbound.length > 0) {
    family('meshctl_inbound_connections_active', 'gauge', 'Inbound connections open, by inbound.ports entry.');
    for (const [p, v] of inbound) out.push(`meshctl_inbound_connections_active{ports="${label(p)}"} ${v.active}`);
    family('meshctl_inbound_admitted_total', 'counter', 'Inbound connections admitted by an inbound.ports entry.');
    for (const [p, v] of inbound) out.push(`meshctl_inbound_admitted_total{ports="${label(p)}"} ${v.admitted}`);
    family(
      'meshctl_inbound_refused_total',
      'counter',
      'Inbound connections reset: denied (source CIDR), over-capacity (maxConnections), rate-limited (token bucket).',
    );
    for (const [p, v] of inbound)
      for (const r of INBOUND_REFUSALS)
        out.push(`meshctl_inbound_refused_total{ports="${label(p)}",reason="${r}"} ${v.refused[r]}`);
  }
  if (s.discovery.length > 0) {
    family('meshctl_dns_queries_total', 'counter', 'DNS resolutions of a discovery name (A+AAAA or SRV).');
    for (const w of s.discovery)
      out.push(`meshctl_dns_queries_total{kind="${w.kind}",name="${label(w.name)}"} ${w.queries}`);
    family('meshctl_dns_failures_total', 'counter', 'Failed DNS resolutions (the last answer was kept).');
    for (const w of s.discovery)
      out.push(`meshctl_dns_failures_total{kind="${w.kind}",name="${label(w.name)}"} ${w.failures}`);
  }
  return out.length === 0 ? '' : `${out.join('\n')}\n`;
}
