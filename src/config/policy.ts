// Resolves the policy sections of a schema-valid raw config (services, outbound, inbound, controlPlane) into the
// typed values of src/config/types.ts, with the cross-field checks the schema cannot express: unique names and
// addresses, subsets that exist, backoff bounds, overlapping inbound port entries. Problems name their path.
import type { Cidr } from '../values/ip.js';
import type { PortRange } from '../values/ports.js';
import { cidrText, parseCidr } from '../values/ip.js';
import type {
  CidrSelection,
  ControlPlaneConfig,
  EndpointSource,
  InboundPolicyConfig,
  InboundPortPolicy,
  LoadBalancerPolicy,
  OutboundPolicyConfig,
  ServiceAddress,
  ServiceConfig,
  TokenBucketConfig,
} from './types.js';
import { parseDuration } from '../values/duration.js';
import { parsePortRange, portText, rangesOverlap } from '../values/ports.js';
import { hostPortText, parseHostPort, parseResolverServer, parseServiceAddress, parseSrvName } from '../values/addresses.js';

export interface PolicyProblem {
  readonly path: string;
  readonly message: string;
}

/** The policy sections as the schema allows them (already validated). */
export interface RawPolicy {
  readonly services?: unknown;
  readonly outbound?: unknown;
  readonly inbound?: unknown;
  readonly controlPlane?: unknown;
}

export interface ResolvedPolicy {
  readonly services: ServiceConfig[];
  readonly outbound: OutboundPolicyConfig;
  readonly inbound: InboundPolicyConfig;
  readonly controlPlane: ControlPlaneConfig | null;
}

/** The sections a control-plane document may hold (everything else is host-local). */
export const POLICY_SECTIONS = ['services', 'outbound', 'inbound'] as const;

type Obj = Record<string, unknown>;

const asObj = (value: unknown): Obj => (typeof value === 'object' && value !== null ? (value as Obj) : {});

export function resolvePolicy(raw: RawPolicy, defaults: { connectTimeoutMs: number }, problems: PolicyProblem[]): ResolvedPolicy {
  const ms = (path: string, value: unknown, fallback: string): number => {
    const parsed = parseDuration(String(value ?? fallback));
    if (parsed === null) {
      problems.push({ path, message: '"off" is not allowed here; give a duration such as "1s"' });
      return 0;
    }
    return parsed as number;
  };

  const services = ((raw.services as unknown[] | undefined) ?? []).map((s, i) => resolveService(asObj(s), `services[${i}]`, defaults, ms, problems));
  checkServiceUniqueness(services, problems);

  const out = asObj(raw.outbound);
  const resolverRaw = asObj(out.resolver);
  const resolver = {
    servers: ((resolverRaw.servers as string[] | undefined) ?? []).map((s) => parseResolverServer(s) as { address: string; port: number }),
    timeoutMs: ms('outbound.resolver.timeout', resolverRaw.timeout, '2s'),
    minTtlMs: ms('outbound.resolver.minTtl', resolverRaw.minTtl, '1s'),
    maxTtlMs: ms('outbound.resolver.maxTtl', resolverRaw.maxTtl, '5m'),
  };
  if (resolver.minTtlMs > resolver.maxTtlMs) {
    problems.push({ path: 'outbound.resolver.minTtl', message: `${resolverRaw.minTtl as string} is longer than outbound.resolver.maxTtl (${String(resolverRaw.maxTtl ?? '5m')})` });
  }
  const outbound: OutboundPolicyConfig = { policy: (out.policy as OutboundPolicyConfig['policy'] | undefined) ?? 'passthrough', resolver };

  const inbound = resolveInbound(asObj(raw.inbound), ms, problems);

  let controlPlane: ControlPlaneConfig | null = null;
  if (raw.controlPlane !== undefined) {
    const cp = asObj(raw.controlPlane);
    controlPlane = {
      url: cp.url as string,
      pollIntervalMs: ms('controlPlane.pollInterval', cp.pollInterval, '10s'),
      timeoutMs: ms('controlPlane.timeout', cp.timeout, '5s'),
      caFile: (cp.caFile as string | undefined) ?? null,
    };
    if (controlPlane.caFile !== null && !controlPlane.url.startsWith('https:')) {
      problems.push({ path: 'controlPlane.caFile', message: `only applies to an https URL, but controlPlane.url is ${controlPlane.url}` });
    }
  }
  return { services, outbound, inbound, controlPlane };
}

function resolveService(
  s: Obj,
  path: string,
  defaults: { connectTimeoutMs: number },
  ms: (path: string, value: unknown, fallback: string) => number,
  problems: PolicyProblem[],
): ServiceConfig {
  const name = s.name as string;
  const addresses: ServiceAddress[] = (s.addresses as string[]).map((text) => {
    const a = parseServiceAddress(text) as Exclude<ReturnType<typeof parseServiceAddress>, string>;
    return a.kind === 'hostname' ? { kind: 'hostname', hostname: a.hostname, port: a.port } : a;
  });
  const endpoints: EndpointSource[] = (s.endpoints as unknown[]).map((e) => {
    const entry: Obj = typeof e === 'string' ? { address: e } : asObj(e);
    const subset = (entry.subset as string | undefined) ?? null;
    if (entry.srv !== undefined) return { kind: 'srv', name: parseSrvName(entry.srv as string), subset };
    const hp = parseHostPort((entry.address ?? entry.dns) as string) as Exclude<ReturnType<typeof parseHostPort>, string>;
    // A hostname is resolved (A/AAAA) whichever key names it; an IP literal is static even under `dns`.
    if (hp.kind === 'hostname') return { kind: 'dns', hostname: hp.hostname, port: hp.port, subset };
    return { kind: 'static', address: hp.address, family: hp.family, port: hp.port, subset };
  });

  const subsetsRaw = asObj(s.subsets);
  const subsets = Object.entries(subsetsRaw).map(([subset, weight]) => ({ name: subset, weight: weight as number }));
  if (s.subsets !== undefined) {
    if (subsets.length === 0) problems.push({ path: `${path}.subsets`, message: 'is empty; leave it out to use every endpoint' });
    else if (subsets.every((x) => x.weight === 0)) problems.push({ path: `${path}.subsets`, message: 'every weight is 0; at least one subset needs traffic' });
    const labels = new Set(endpoints.map((e) => e.subset));
    for (const x of subsets) {
      if (!labels.has(x.name)) problems.push({ path: `${path}.subsets.${x.name}`, message: `no endpoint of service "${name}" has subset "${x.name}"` });
    }
    endpoints.forEach((e, j) => {
      if (e.subset === null) problems.push({ path: `${path}.endpoints[${j}]`, message: `has no subset, but service "${name}" splits traffic by subsets (${subsets.map((x) => x.name).join(', ')}); give it one` });
      else if (!(e.subset in subsetsRaw)) problems.push({ path: `${path}.endpoints[${j}].subset`, message: `"${e.subset}" is not in ${path}.subsets (${subsets.map((x) => x.name).join(', ')}); it would never get traffic` });
    });
  }

  const retriesRaw = asObj(s.retries);
  const retries = {
    attempts: (retriesRaw.attempts as number | undefined) ?? 3,
    backoffMs: ms(`${path}.retries.backoff`, retriesRaw.backoff, '25ms'),
    maxBackoffMs: ms(`${path}.retries.maxBackoff`, retriesRaw.maxBackoff, '250ms'),
  };
  if (retries.backoffMs > retries.maxBackoffMs) {
    problems.push({ path: `${path}.retries.backoff`, message: `${String(retriesRaw.backoff ?? '25ms')} is longer than ${path}.retries.maxBackoff (${String(retriesRaw.maxBackoff ?? '250ms')})` });
  }
  const od = asObj(s.outlierDetection);
  const outlierDetection = {
    enabled: (od.enabled as boolean | undefined) ?? true,
    consecutiveFailures: (od.consecutiveFailures as number | undefined) ?? 5,
    baseEjectionMs: ms(`${path}.outlierDetection.baseEjectionTime`, od.baseEjectionTime, '30s'),
    maxEjectionPercent: (od.maxEjectionPercent as number | undefined) ?? 50,
  };
  const cb = asObj(s.circuitBreaker);
  const hcRaw = s.healthCheck === undefined ? null : asObj(s.healthCheck);
  const healthCheck = hcRaw === null ? null : {
    intervalMs: ms(`${path}.healthCheck.interval`, hcRaw.interval, '10s'),
    timeoutMs: ms(`${path}.healthCheck.timeout`, hcRaw.timeout, '1s'),
    unhealthyThreshold: (hcRaw.unhealthyThreshold as number | undefined) ?? 2,
    healthyThreshold: (hcRaw.healthyThreshold as number | undefined) ?? 1,
  };
  if (healthCheck && healthCheck.timeoutMs > healthCheck.intervalMs) {
    problems.push({ path: `${path}.healthCheck.timeout`, message: `${String(hcRaw!.timeout ?? '1s')} is longer than ${path}.healthCheck.interval (${String(hcRaw!.interval ?? '10s')})` });
  }
  const faultsRaw = asObj(s.faults);
  const delayRaw = faultsRaw.delay === undefined ? null : asObj(faultsRaw.delay);
  const abortRaw = faultsRaw.abort === undefined ? null : asObj(faultsRaw.abort);
  return {
    name,
    addresses,
    endpoints,
    loadBalancer: (s.loadBalancer as LoadBalancerPolicy | undefined) ?? 'round-robin',
    subsets,
    connectTimeoutMs: s.connectTimeout === undefined ? defaults.connectTimeoutMs : ms(`${path}.connectTimeout`, s.connectTimeout, '10s'),
    retries,
    outlierDetection,
    circuitBreaker: { maxConnections: (cb.maxConnections as number | undefined) ?? null, maxPending: (cb.maxPending as number | undefined) ?? null },
    healthCheck,
    faults: {
      delay: delayRaw === null ? null : { percent: delayRaw.percent as number, durationMs: ms(`${path}.faults.delay.duration`, delayRaw.duration, '1s') },
      abort: abortRaw === null ? null : { percent: abortRaw.percent as number },
    },
  };
}

function addressKey(a: ServiceAddress): string {
  switch (a.kind) {
    case 'ip':
      return hostPortText(a.address, a.port);
    case 'cidr':
      return `${cidrText(a.cidr)} port ${a.port}`;
    case 'hostname':
      return `${a.hostname}:${a.port}`;
  }
}

function checkServiceUniqueness(services: readonly ServiceConfig[], problems: PolicyProblem[]): void {
  const names = new Map<string, number>();
  const owners = new Map<string, { service: string; path: string }>();
  services.forEach((s, i) => {
    const first = names.get(s.name);
    if (first !== undefined) problems.push({ path: `services[${i}].name`, message: `"${s.name}" is also the name of services[${first}]; names must be unique` });
    else names.set(s.name, i);
    s.addresses.forEach((a, j) => {
      const key = addressKey(a);
      const owner = owners.get(key);
      const path = `services[${i}].addresses[${j}]`;
      if (owner) problems.push({ path, message: `${key} is also an address of service "${owner.service}" (${owner.path}); a destination belongs to one service` });
      else owners.set(key, { service: s.name, path });
    });
  });
}

function resolveBucket(raw: unknown, path: string, ms: (path: string, value: unknown, fallback: string) => number): TokenBucketConfig | null {
  if (raw === undefined) return null;
  const b = asObj(raw);
  const connections = b.connections as number;
  return { connections, perMs: ms(`${path}.per`, b.per, '1s'), burst: (b.burst as number | undefined) ?? connections };
}

function resolveInbound(raw: Obj, ms: (path: string, value: unknown, fallback: string) => number, problems: PolicyProblem[]): InboundPolicyConfig {
  const entries = ((raw.ports as unknown[] | undefined) ?? []).map((e, i): InboundPortPolicy => {
    const p = asObj(e);
    const path = `inbound.ports[${i}]`;
    const port = p.port;
    const ports: InboundPortPolicy['ports'] = port === '*' ? 'all' : typeof port === 'number' ? { from: port, to: port } : (parsePortRange(String(port)) as PortRange);
    const allowRaw = p.allow ?? '*';
    const allow: CidrSelection = allowRaw === '*' ? 'all' : (allowRaw as string[]).map((c) => parseCidr(c) as Cidr);
    const deny = ((p.deny as string[] | undefined) ?? []).map((c) => parseCidr(c) as Cidr);
    return {
      ports,
      maxConnections: (p.maxConnections as number | undefined) ?? null,
      rateLimit: resolveBucket(p.rateLimit, `${path}.rateLimit`, ms),
      sourceRateLimit: resolveBucket(p.sourceRateLimit, `${path}.sourceRateLimit`, ms),
      allow,
      deny,
    };
  });
  let catchAll = -1;
  entries.forEach((e, i) => {
    if (e.ports === 'all') {
      if (catchAll >= 0) problems.push({ path: `inbound.ports[${i}].port`, message: `"*" is also inbound.ports[${catchAll}].port; only one entry may cover every other port` });
      else catchAll = i;
      return;
    }
    for (let j = 0; j < i; j++) {
      const other = entries[j]!.ports;
      if (other !== 'all' && rangesOverlap(other, e.ports)) {
        problems.push({ path: `inbound.ports[${i}].port`, message: `${portText(e.ports)} overlaps inbound.ports[${j}].port (${portText(other)}); a port gets one policy` });
        break;
      }
    }
  });
  return { ports: entries };
}
