// Resolves the policy sections of a schema-valid raw config (services, outbound, inbound, controlPlane) into the
// typed values of src/config/types.ts, with the cross-field checks the schema cannot express: unique names and
// addresses, subsets that exist, backoff bounds, overlapping inbound port entries. Problems name their path.
// Defaults are the schema's `default` keywords (rules/meshctl.schema.json), as for the other sections.
import type { Cidr } from '../values/ip.js';
import type { PortRange } from '../values/ports.js';
import { cidrText, parseCidr } from '../values/ip.js';
import {
  LOAD_BALANCER_POLICIES,
  OUTBOUND_POLICIES,
  type CidrSelection,
  type CircuitBreakerPolicy,
  type ControlPlaneConfig,
  type EndpointSource,
  type FaultPolicy,
  type HealthCheckPolicy,
  type InboundPolicyConfig,
  type InboundPortPolicy,
  type OutboundPolicyConfig,
  type OutlierDetectionPolicy,
  type RetryPolicy,
  type ServiceAddress,
  type ServiceConfig,
  type TokenBucketConfig,
} from './types.js';
import { parseDuration } from '../values/duration.js';
import { durationBoundProblem, MAX_TIMER_MS } from './limits.js';
import { parsePortRange, portText, rangesOverlap } from '../values/ports.js';
import {
  hostPortText,
  parseHostPort,
  parseResolverServer,
  parseServiceAddress,
  parseSrvName,
} from '../values/addresses.js';
import { schemaDefault, schemaDefinition } from './schema.js';
import { isPrincipalText, parsePrincipal, type PrincipalPattern } from '../values/spiffe-id.js';

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

/** What a control-plane document may hold of the `mtls` section: the mesh members (the rest is host-local). */
export const OVERLAY_MTLS_FIELDS = ['peers'] as const;

/** The top-level sections this module resolves; the field table (./fields.ts) resolves the others. */
export const POLICY_PATHS = [...POLICY_SECTIONS, 'controlPlane'] as const;

type Obj = Record<string, unknown>;

/** Reads a duration, already defaulted; "off" is a problem at `path` (every policy duration needs a bound). */
type Ms = (path: string, value: unknown) => number;

const SERVICE = schemaDefinition('service');
const INBOUND_PORT = schemaDefinition('inboundPort');
const TOKEN_BUCKET = schemaDefinition('tokenBucket');

const asObj = (value: unknown): Obj => (typeof value === 'object' && value !== null ? (value as Obj) : {});

/** A value the schema should have refused: a schema/resolver mismatch, not a user error. */
function unexpected(value: unknown, what: string): never {
  throw new Error(`policy config: the schema let through ${JSON.stringify(value)}, which is not ${what}`);
}

const listOf = (value: unknown): readonly unknown[] =>
  value === undefined ? [] : Array.isArray(value) ? value : unexpected(value, 'a list');
const stringOf = (value: unknown): string => (typeof value === 'string' ? value : unexpected(value, 'a string'));
const numberOf = (value: unknown): number => (typeof value === 'number' ? value : unexpected(value, 'a number'));
const numberOrNull = (value: unknown): number | null => (value === undefined ? null : numberOf(value));
const booleanOf = (value: unknown): boolean => (typeof value === 'boolean' ? value : unexpected(value, 'a boolean'));
const valueOf = <T extends string>(values: readonly T[], value: unknown): T =>
  values.find((v) => v === value) ?? unexpected(value, values.join(' | '));
const parsed = <T>(result: T | string, text: unknown): T =>
  typeof result === 'string' ? unexpected(text, 'valid') : result;

export function resolvePolicy(
  raw: RawPolicy,
  defaults: { connectTimeoutMs: number },
  problems: PolicyProblem[],
): ResolvedPolicy {
  const ms: Ms = (path, value) => {
    const duration = parseDuration(stringOf(value));
    if (typeof duration === 'number') {
      // The schema bounds each duration (maxDuration); this holds every one to what a timer can wait.
      const tooLong = durationBoundProblem(duration, undefined);
      if (tooLong !== null) problems.push({ path, message: `${JSON.stringify(value)} is too long: ${tooLong}` });
      return tooLong === null ? duration : MAX_TIMER_MS;
    }
    if (duration === null) problems.push({ path, message: '"off" is not allowed here; give a duration such as "1s"' });
    else unexpected(value, 'a duration');
    return 0;
  };
  const services = listOf(raw.services ?? schemaDefault('services')).map((s, i) =>
    resolveService(asObj(s), `services[${i}]`, defaults, ms, problems),
  );
  checkServiceUniqueness(services, problems);
  const outbound = resolveOutbound(asObj(raw.outbound), ms, problems);
  const inbound = resolveInbound(asObj(raw.inbound), ms, problems);
  const controlPlane =
    raw.controlPlane === undefined ? null : resolveControlPlane(asObj(raw.controlPlane), ms, problems);
  return { services, outbound, inbound, controlPlane };
}

function resolveOutbound(out: Obj, ms: Ms, problems: PolicyProblem[]): OutboundPolicyConfig {
  const resolverRaw = asObj(out.resolver);
  const at = (key: string): unknown => resolverRaw[key] ?? schemaDefault(`outbound.resolver.${key}`);
  const resolver = {
    servers: listOf(resolverRaw.servers).map((s) => parsed(parseResolverServer(stringOf(s)), s)),
    timeoutMs: ms('outbound.resolver.timeout', at('timeout')),
    minTtlMs: ms('outbound.resolver.minTtl', at('minTtl')),
    maxTtlMs: ms('outbound.resolver.maxTtl', at('maxTtl')),
  };
  if (resolver.minTtlMs > resolver.maxTtlMs) {
    problems.push({
      path: 'outbound.resolver.minTtl',
      message: `${String(at('minTtl'))} is longer than outbound.resolver.maxTtl (${String(at('maxTtl'))})`,
    });
  }
  return { policy: valueOf(OUTBOUND_POLICIES, out.policy ?? schemaDefault('outbound.policy')), resolver };
}

function resolveControlPlane(cp: Obj, ms: Ms, problems: PolicyProblem[]): ControlPlaneConfig {
  const controlPlane = {
    url: stringOf(cp.url),
    pollIntervalMs: ms('controlPlane.pollInterval', cp.pollInterval ?? schemaDefault('controlPlane.pollInterval')),
    timeoutMs: ms('controlPlane.timeout', cp.timeout ?? schemaDefault('controlPlane.timeout')),
    caFile: cp.caFile === undefined ? null : stringOf(cp.caFile),
  };
  if (controlPlane.caFile !== null && !controlPlane.url.startsWith('https:')) {
    problems.push({
      path: 'controlPlane.caFile',
      message: `only applies to an https URL, but controlPlane.url is ${controlPlane.url}`,
    });
  }
  return controlPlane;
}

function resolveService(
  s: Obj,
  path: string,
  defaults: { connectTimeoutMs: number },
  ms: Ms,
  problems: PolicyProblem[],
): ServiceConfig {
  const name = stringOf(s.name);
  const endpoints = listOf(s.endpoints).map(resolveEndpoint);
  const subsets = resolveSubsets(s.subsets, path, name, endpoints, problems);
  const retries = resolveRetries(asObj(s.retries), `${path}.retries`, ms, problems);
  const outlierDetection = resolveOutlierDetection(asObj(s.outlierDetection), `${path}.outlierDetection`, ms);
  const healthCheck =
    s.healthCheck === undefined ? null : resolveHealthCheck(asObj(s.healthCheck), `${path}.healthCheck`, ms, problems);
  return {
    name,
    addresses: listOf(s.addresses).map(resolveServiceAddress),
    endpoints,
    loadBalancer: valueOf(LOAD_BALANCER_POLICIES, s.loadBalancer ?? schemaDefault('loadBalancer', SERVICE)),
    subsets,
    // The schema gives no literal default here: a service's connect timeout defaults to proxy.connectTimeout.
    connectTimeoutMs:
      s.connectTimeout === undefined ? defaults.connectTimeoutMs : ms(`${path}.connectTimeout`, s.connectTimeout),
    retries,
    outlierDetection,
    circuitBreaker: resolveCircuitBreaker(asObj(s.circuitBreaker)),
    healthCheck,
    faults: resolveFaults(asObj(s.faults), `${path}.faults`, ms),
    mtls: booleanOf(s.mtls ?? schemaDefault('mtls', SERVICE)),
    identities: principalsOf(s.identities),
  };
}

function resolveServiceAddress(text: unknown): ServiceAddress {
  const a = parsed(parseServiceAddress(stringOf(text)), text);
  return a.kind === 'hostname' ? { kind: 'hostname', hostname: a.hostname, port: a.port } : a;
}

function resolveEndpoint(e: unknown): EndpointSource {
  const entry: Obj = typeof e === 'string' ? { address: e } : asObj(e);
  const subset = entry.subset === undefined ? null : stringOf(entry.subset);
  if (entry.srv !== undefined) return { kind: 'srv', name: parseSrvName(stringOf(entry.srv)), subset };
  const text = entry.address ?? entry.dns;
  const hp = parsed(parseHostPort(stringOf(text)), text);
  // A hostname is resolved (A/AAAA) whichever key names it; an IP literal is static even under `dns`.
  if (hp.kind === 'hostname') return { kind: 'dns', hostname: hp.hostname, port: hp.port, subset };
  return { kind: 'static', address: hp.address, family: hp.family, port: hp.port, subset };
}

/** The subset weights, checked against the endpoints' labels: every subset has endpoints and every endpoint a subset. */
function resolveSubsets(
  raw: unknown,
  path: string,
  name: string,
  endpoints: readonly EndpointSource[],
  problems: PolicyProblem[],
): ServiceConfig['subsets'] {
  const weights = asObj(raw);
  const subsets = Object.entries(weights).map(([subset, weight]) => ({ name: subset, weight: numberOf(weight) }));
  if (raw === undefined) return subsets;
  if (subsets.length === 0)
    problems.push({ path: `${path}.subsets`, message: 'is empty; leave it out to use every endpoint' });
  else if (subsets.every((x) => x.weight === 0))
    problems.push({ path: `${path}.subsets`, message: 'every weight is 0; at least one subset needs traffic' });
  const labels = new Set(endpoints.map((e) => e.subset));
  for (const x of subsets) {
    if (!labels.has(x.name))
      problems.push({
        path: `${path}.subsets.${x.name}`,
        message: `no endpoint of service "${name}" has subset "${x.name}"`,
      });
  }
  const names = subsets.map((x) => x.name).join(', ');
  endpoints.forEach((e, j) => {
    if (e.subset === null)
      problems.push({
        path: `${path}.endpoints[${j}]`,
        message: `has no subset, but service "${name}" splits traffic by subsets (${names}); give it one`,
      });
    else if (!(e.subset in weights))
      problems.push({
        path: `${path}.endpoints[${j}].subset`,
        message: `"${e.subset}" is not in ${path}.subsets (${names}); it would never get traffic`,
      });
  });
  return subsets;
}

function resolveRetries(raw: Obj, path: string, ms: Ms, problems: PolicyProblem[]): RetryPolicy {
  const at = (key: string): unknown => raw[key] ?? schemaDefault(`retries.${key}`, SERVICE);
  const retries = {
    attempts: numberOf(at('attempts')),
    backoffMs: ms(`${path}.backoff`, at('backoff')),
    maxBackoffMs: ms(`${path}.maxBackoff`, at('maxBackoff')),
  };
  if (retries.backoffMs > retries.maxBackoffMs) {
    problems.push({
      path: `${path}.backoff`,
      message: `${String(at('backoff'))} is longer than ${path}.maxBackoff (${String(at('maxBackoff'))})`,
    });
  }
  return retries;
}

function resolveOutlierDetection(raw: Obj, path: string, ms: Ms): OutlierDetectionPolicy {
  const at = (key: string): unknown => raw[key] ?? schemaDefault(`outlierDetection.${key}`, SERVICE);
  return {
    enabled: booleanOf(at('enabled')),
    consecutiveFailures: numberOf(at('consecutiveFailures')),
    baseEjectionMs: ms(`${path}.baseEjectionTime`, at('baseEjectionTime')),
    maxEjectionPercent: numberOf(at('maxEjectionPercent')),
  };
}

function resolveCircuitBreaker(raw: Obj): CircuitBreakerPolicy {
  return { maxConnections: numberOrNull(raw.maxConnections), maxPending: numberOrNull(raw.maxPending) };
}

function resolveHealthCheck(raw: Obj, path: string, ms: Ms, problems: PolicyProblem[]): HealthCheckPolicy {
  const at = (key: string): unknown => raw[key] ?? schemaDefault(`healthCheck.${key}`, SERVICE);
  const healthCheck = {
    intervalMs: ms(`${path}.interval`, at('interval')),
    timeoutMs: ms(`${path}.timeout`, at('timeout')),
    unhealthyThreshold: numberOf(at('unhealthyThreshold')),
    healthyThreshold: numberOf(at('healthyThreshold')),
  };
  if (healthCheck.timeoutMs > healthCheck.intervalMs) {
    problems.push({
      path: `${path}.timeout`,
      message: `${String(at('timeout'))} is longer than ${path}.interval (${String(at('interval'))})`,
    });
  }
  return healthCheck;
}

function resolveFaults(raw: Obj, path: string, ms: Ms): FaultPolicy {
  const delay = raw.delay === undefined ? null : asObj(raw.delay);
  const abort = raw.abort === undefined ? null : asObj(raw.abort);
  return {
    delay:
      delay === null
        ? null
        : { percent: numberOf(delay.percent), durationMs: ms(`${path}.delay.duration`, delay.duration) },
    abort: abort === null ? null : { percent: numberOf(abort.percent) },
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
    if (first !== undefined)
      problems.push({
        path: `services[${i}].name`,
        message: `"${s.name}" is also the name of services[${first}]; names must be unique`,
      });
    else names.set(s.name, i);
    s.addresses.forEach((a, j) => {
      const key = addressKey(a);
      const owner = owners.get(key);
      const path = `services[${i}].addresses[${j}]`;
      if (owner)
        problems.push({
          path,
          message: `${key} is also an address of service "${owner.service}" (${owner.path}); a destination belongs to one service`,
        });
      else owners.set(key, { service: s.name, path });
    });
  });
}

function resolveBucket(raw: unknown, path: string, ms: Ms): TokenBucketConfig | null {
  if (raw === undefined) return null;
  const b = asObj(raw);
  const connections = numberOf(b.connections);
  // burst has no literal default: it defaults to `connections`.
  return {
    connections,
    perMs: ms(`${path}.per`, b.per ?? schemaDefault('per', TOKEN_BUCKET)),
    burst: b.burst === undefined ? connections : numberOf(b.burst),
  };
}

const cidrsOf = (value: unknown): Cidr[] => listOf(value).map((c) => parsed(parseCidr(stringOf(c)), c));
const principalsOf = (value: unknown): PrincipalPattern[] =>
  listOf(value).map((p) => parsed(parsePrincipal(stringOf(p)), p));
/** A source list's CIDRs and principals (spiffe://...), apart. */
const sourcesOf = (value: unknown): { cidrs: Cidr[]; principals: PrincipalPattern[] } => {
  const items = listOf(value).map(stringOf);
  return {
    cidrs: cidrsOf(items.filter((t) => !isPrincipalText(t))),
    principals: principalsOf(items.filter(isPrincipalText)),
  };
};

function resolveInboundPort(e: unknown, i: number, ms: Ms): InboundPortPolicy {
  const p = asObj(e);
  const path = `inbound.ports[${i}]`;
  const port = p.port;
  const ports: InboundPortPolicy['ports'] =
    port === '*'
      ? 'all'
      : typeof port === 'number'
        ? { from: port, to: port }
        : parsed<PortRange>(parsePortRange(stringOf(port)), port);
  const allowRaw = p.allow ?? schemaDefault('allow', INBOUND_PORT);
  const allowed = allowRaw === '*' ? null : sourcesOf(allowRaw);
  const allow: CidrSelection = allowed === null ? 'all' : allowed.cidrs;
  const denied = sourcesOf(p.deny ?? schemaDefault('deny', INBOUND_PORT));
  return {
    ports,
    maxConnections: numberOrNull(p.maxConnections),
    rateLimit: resolveBucket(p.rateLimit, `${path}.rateLimit`, ms),
    sourceRateLimit: resolveBucket(p.sourceRateLimit, `${path}.sourceRateLimit`, ms),
    allow,
    deny: denied.cidrs,
    allowPrincipals: allowed?.principals ?? [],
    denyPrincipals: denied.principals,
  };
}

function resolveInbound(raw: Obj, ms: Ms, problems: PolicyProblem[]): InboundPolicyConfig {
  const entries = listOf(raw.ports ?? schemaDefault('inbound.ports')).map((e, i) => resolveInboundPort(e, i, ms));
  let catchAll = -1;
  entries.forEach((e, i) => {
    if (e.ports === 'all') {
      if (catchAll >= 0)
        problems.push({
          path: `inbound.ports[${i}].port`,
          message: `"*" is also inbound.ports[${catchAll}].port; only one entry may cover every other port`,
        });
      else catchAll = i;
      return;
    }
    for (let j = 0; j < i; j++) {
      const other = entries[j]!.ports;
      if (other !== 'all' && rangesOverlap(other, e.ports)) {
        problems.push({
          path: `inbound.ports[${i}].port`,
          message: `${portText(e.ports)} overlaps inbound.ports[${j}].port (${portText(other)}); a port gets one policy`,
        });
        break;
      }
    }
  });
  return { ports: entries };
}
