// Renders a resolved Config back into the form the config file accepts (`meshctl config validate`): durations as
// "10s", selections as "*", CIDRs and ports as text, users and groups by name where the database has one. The
// proxy, capture and safety sections come from the field table (./fields.ts), so a new field renders without code
// here; the policy sections are rendered below. Loading the output gives the same config (and hash), except that
// SSH ports that were detected come back as configured.
import type { UserDb } from './host-facts.js';
import type {
  Config,
  EndpointSource,
  InboundPortPolicy,
  ServiceAddress,
  ServiceConfig,
  TokenBucketConfig,
} from './types.js';
import { FIELD_TABLE } from './fields.js';
import { cidrs, durationText, portRaw } from './parsers.js';
import { setPath, valueAt } from './paths.js';
import { cidrText } from '../values/ip.js';
import { hostPortText } from '../values/addresses.js';
import { principalText } from '../values/spiffe-id.js';

/** The config as a file would write it; `names` turns uids and gids back into names (null: numbers). */
export function renderConfig(config: Config, names: UserDb | null = null): Record<string, unknown> {
  const file: Record<string, unknown> = {};
  for (const entry of FIELD_TABLE) {
    if (entry.kind !== 'field') continue;
    const value = entry.renderFrom
      ? entry.renderFrom(config, names)
      : entry.parser.render(valueAt(config, entry.to ?? entry.path), names);
    if (value !== undefined) setPath(file, entry.path, value);
  }
  return { ...file, ...renderPolicy(config) };
}

function renderPolicy(config: Config): Record<string, unknown> {
  const { outbound, controlPlane } = config;
  const resolver = outbound.resolver;
  return {
    services: config.services.map(renderService),
    outbound: {
      policy: outbound.policy,
      resolver: {
        // No servers means the system's (/etc/resolv.conf): leave the field out, as its absence says that.
        ...(resolver.servers.length > 0
          ? { servers: resolver.servers.map((s) => (s.port === 53 ? s.address : hostPortText(s.address, s.port))) }
          : {}),
        timeout: durationText(resolver.timeoutMs),
        minTtl: durationText(resolver.minTtlMs),
        maxTtl: durationText(resolver.maxTtlMs),
      },
    },
    inbound: { ports: config.inbound.ports.map(renderInboundPort) },
    ...(controlPlane === null
      ? {}
      : {
          controlPlane: {
            url: controlPlane.url,
            pollInterval: durationText(controlPlane.pollIntervalMs),
            timeout: durationText(controlPlane.timeoutMs),
            ...(controlPlane.caFile === null ? {} : { caFile: controlPlane.caFile }),
          },
        }),
  };
}

function addressText(a: ServiceAddress): string {
  switch (a.kind) {
    case 'ip':
      return hostPortText(a.address, a.port);
    case 'cidr':
      return a.cidr.family === 'ipv6' ? `[${cidrText(a.cidr)}]:${a.port}` : `${cidrText(a.cidr)}:${a.port}`;
    case 'hostname':
      return `${a.hostname}:${a.port}`;
  }
}

function renderEndpoint(e: EndpointSource): unknown {
  const subset = e.subset === null ? {} : { subset: e.subset };
  switch (e.kind) {
    case 'static':
      return e.subset === null
        ? hostPortText(e.address, e.port)
        : { address: hostPortText(e.address, e.port), ...subset };
    case 'dns':
      return { dns: `${e.hostname}:${e.port}`, ...subset };
    case 'srv':
      return { srv: e.name, ...subset };
  }
}

function renderService(s: ServiceConfig): Record<string, unknown> {
  const { maxConnections, maxPending } = s.circuitBreaker;
  const { delay, abort } = s.faults;
  return {
    name: s.name,
    addresses: s.addresses.map(addressText),
    endpoints: s.endpoints.map(renderEndpoint),
    loadBalancer: s.loadBalancer,
    ...(s.subsets.length > 0 ? { subsets: Object.fromEntries(s.subsets.map((x) => [x.name, x.weight])) } : {}),
    connectTimeout: durationText(s.connectTimeoutMs),
    retries: {
      attempts: s.retries.attempts,
      backoff: durationText(s.retries.backoffMs),
      maxBackoff: durationText(s.retries.maxBackoffMs),
    },
    outlierDetection: {
      enabled: s.outlierDetection.enabled,
      consecutiveFailures: s.outlierDetection.consecutiveFailures,
      baseEjectionTime: durationText(s.outlierDetection.baseEjectionMs),
      maxEjectionPercent: s.outlierDetection.maxEjectionPercent,
    },
    circuitBreaker: {
      ...(maxConnections === null ? {} : { maxConnections }),
      ...(maxPending === null ? {} : { maxPending }),
    },
    ...(s.healthCheck === null
      ? {}
      : {
          healthCheck: {
            interval: durationText(s.healthCheck.intervalMs),
            timeout: durationText(s.healthCheck.timeoutMs),
            unhealthyThreshold: s.healthCheck.unhealthyThreshold,
            healthyThreshold: s.healthCheck.healthyThreshold,
          },
        }),
    faults: {
      ...(delay === null ? {} : { delay: { percent: delay.percent, duration: durationText(delay.durationMs) } }),
      ...(abort === null ? {} : { abort: { percent: abort.percent } }),
    },
    mtls: s.mtls,
    ...(s.identities.length > 0 ? { identities: s.identities.map(principalText) } : {}),
  };
}

const renderBucket = (b: TokenBucketConfig): Record<string, unknown> => ({
  connections: b.connections,
  per: durationText(b.perMs),
  burst: b.burst,
});

function renderInboundPort(p: InboundPortPolicy): Record<string, unknown> {
  return {
    port: p.ports === 'all' ? '*' : portRaw(p.ports),
    ...(p.maxConnections === null ? {} : { maxConnections: p.maxConnections }),
    ...(p.rateLimit === null ? {} : { rateLimit: renderBucket(p.rateLimit) }),
    ...(p.sourceRateLimit === null ? {} : { sourceRateLimit: renderBucket(p.sourceRateLimit) }),
    allow:
      p.allow === 'all' ? '*' : [...(cidrs.render(p.allow, null) as string[]), ...p.allowPrincipals.map(principalText)],
    deny: [...(cidrs.render(p.deny, null) as string[]), ...p.denyPrincipals.map(principalText)],
  };
}
