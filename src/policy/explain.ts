// The proxy side of `meshctl explain`: for an outbound flow, which service its destination matches (and by which
// address), how the endpoint is chosen and which limits apply; for an inbound flow, the port's entry and whether
// the source is admitted (by its address and, through the mTLS tunnel, its SPIFFE ID), and whether an outbound flow
// would go through the tunnel and which identity its server must present. Pure: it compiles the same matcher and
// admission tables the proxy uses; hostname addresses are matched against the addresses the caller resolved.
import { cidrText } from '../values/ip.js';
import type {
  Config,
  EndpointSource,
  InboundPortPolicy,
  ServiceAddress,
  ServiceConfig,
  TokenBucketConfig,
} from '../config/types.js';
import { hostPortText } from '../values/addresses.js';
import { CidrSet } from './cidr-table.js';
import { inboundLabel, InboundPolicy } from './inbound.js';
import { ServiceMatcher, type RegistryEntry } from './registry.js';
import { anyPrincipalMatches, principalText } from '../values/spiffe-id.js';

export interface ProxyFlow {
  readonly direction: 'outbound' | 'inbound';
  readonly destination: { readonly address: string; readonly port: number };
  readonly source?: { readonly address: string } | undefined;
  /** Inbound: the peer's SPIFFE ID, for a connection through the mTLS tunnel (`--src-id`). */
  readonly sourceId?: string | undefined;
}

/** How an outbound flow would go through the mTLS tunnel. */
export interface TunnelExplanation {
  /** What makes the destination a mesh member: `services[i].mtls` or `mtls.peers[j]`. */
  readonly via: string;
  /** Where the tunnel goes: the peer (or each endpoint) on mtls.tunnelPort. */
  readonly to: string;
  /** The SPIFFE IDs the server may present (services[].identities), or any of the trust domain. */
  readonly identities: readonly string[] | 'trust-domain';
  readonly plaintextFallback: boolean;
}

export interface ServiceExplanation {
  readonly name: string;
  /** Config path of the service (`services[2]`). */
  readonly path: string;
  /** The address that matched, as configured, with its config path. */
  readonly matchedBy: { readonly address: string; readonly path: string; readonly kind: ServiceAddress['kind'] };
  readonly loadBalancer: ServiceConfig['loadBalancer'];
  readonly endpoints: readonly string[];
  readonly subsets: ServiceConfig['subsets'];
  readonly connectTimeoutMs: number;
  readonly retries: ServiceConfig['retries'];
  readonly outlierDetection: ServiceConfig['outlierDetection'];
  readonly circuitBreaker: ServiceConfig['circuitBreaker'];
  readonly healthCheck: ServiceConfig['healthCheck'];
  readonly faults: ServiceConfig['faults'];
}

export interface InboundExplanation {
  readonly path: string;
  readonly ports: string;
  readonly allow: readonly string[] | '*';
  readonly deny: readonly string[];
  readonly maxConnections: number | null;
  readonly rateLimit: TokenBucketConfig | null;
  readonly sourceRateLimit: TokenBucketConfig | null;
}

export interface ProxyExplanation {
  /**
   * service: to one of a service's endpoints; passthrough: to the dialled address (no policy); refused: reset at
   * accept; admitted: an inbound source the port's entry lets through (subject to its limits).
   */
  readonly verdict: 'service' | 'passthrough' | 'refused' | 'admitted';
  readonly reason: string;
  readonly service: ServiceExplanation | null;
  readonly inbound: InboundExplanation | null;
  /** Lines describing the decision in words. */
  readonly summary: readonly string[];
  readonly assumptions: readonly string[];
  /** Outbound, with an mTLS identity configured: the tunnel the flow takes, or null (plaintext). */
  readonly tunnel?: TunnelExplanation | null;
}

type MtlsPart = Partial<Pick<Config, 'mtls'>>;

/** The tunnel an outbound flow to `hosts` (the destination, or a service's static endpoints) would take. */
function explainTunnel(
  config: MtlsPart,
  service: { readonly config: ServiceConfig; readonly path: string } | null,
  hosts: readonly string[],
): TunnelExplanation | null | undefined {
  const m = config.mtls;
  if (m === undefined || m.identity.certificate === null) return undefined;
  const port = m.tunnelPort;
  const common = { plaintextFallback: m.allowPlaintextFallback };
  if (service?.config.mtls)
    return {
      via: `${service.path}.mtls`,
      to: `each endpoint on its tunnel port ${port}`,
      identities: service.config.identities.length > 0 ? service.config.identities.map(principalText) : 'trust-domain',
      ...common,
    };
  const hit = m.peers.findIndex((c) => hosts.some((h) => new CidrSet([c]).has(h)));
  if (hit < 0) return null;
  const members = hosts.filter((h) => new CidrSet(m.peers).has(h));
  return {
    via: `mtls.peers[${hit}] (${cidrText(m.peers[hit]!)})`,
    to: members.map((h) => hostPortText(h, port)).join(', '),
    identities: 'trust-domain',
    ...common,
  };
}

function tunnelLines(t: TunnelExplanation | null | undefined): string[] {
  if (t === undefined) return [];
  if (t === null) return ['mTLS: not a mesh member (no services[].mtls, not in mtls.peers): plaintext'];
  const ids = t.identities === 'trust-domain' ? 'any SPIFFE ID of this trust domain' : t.identities.join(', ');
  return [
    `mTLS: through the tunnel (${t.via}) to ${t.to}: HTTP/2 CONNECT over TLS 1.3; the server must present ${ids}${t.plaintextFallback ? '; plaintext if its tunnel port does not answer (mtls.allowPlaintextFallback)' : ''}`,
  ];
}

interface Match {
  readonly index: number;
  readonly address: ServiceAddress;
  readonly addressIndex: number;
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

function endpointText(e: EndpointSource): string {
  switch (e.kind) {
    case 'static':
      return `${hostPortText(e.address, e.port)}${e.subset ? ` (${e.subset})` : ''}`;
    case 'dns':
      return `${e.hostname}:${e.port} (A/AAAA, re-resolved on TTL)${e.subset ? ` (${e.subset})` : ''}`;
    case 'srv':
      return `${e.name} (SRV, re-resolved on TTL)${e.subset ? ` (${e.subset})` : ''}`;
  }
}

function ms(n: number): string {
  return n % 1000 === 0 ? `${n / 1000}s` : `${n}ms`;
}

function bucketText(b: TokenBucketConfig): string {
  return `${b.connections} per ${ms(b.perMs)} (burst ${b.burst})`;
}

function describeService(s: ServiceExplanation): string[] {
  const lines = [
    `service "${s.name}" (${s.path}), matched by ${s.matchedBy.address} (${s.matchedBy.path}${s.matchedBy.kind === 'cidr' ? ', CIDR' : s.matchedBy.kind === 'hostname' ? ', resolved hostname' : ''})`,
  ];
  lines.push(`endpoints: ${s.endpoints.join(', ')}`);
  const lb = {
    'round-robin': 'round robin',
    'least-connections': 'least connections (power of two choices)',
    random: 'random',
    'source-hash': 'consistent hash of the source address (sticky)',
  }[s.loadBalancer];
  lines.push(
    `choice: ${lb}${s.subsets.length > 0 ? `; subsets ${s.subsets.map((x) => `${x.name} ${x.weight}`).join(' / ')}` : ''}`,
  );
  const r = s.retries;
  lines.push(
    `connect: timeout ${ms(s.connectTimeoutMs)} per attempt, ${r.attempts === 1 ? 'no retries' : `${r.attempts} attempts on different endpoints, backoff ${ms(r.backoffMs)} doubling to ${ms(r.maxBackoffMs)}`}`,
  );
  const od = s.outlierDetection;
  lines.push(
    od.enabled
      ? `outlier detection: eject after ${od.consecutiveFailures} connect failures in a row for ${ms(od.baseEjectionMs)} × ejections, at most ${od.maxEjectionPercent} % of endpoints`
      : 'outlier detection: off',
  );
  const cb = s.circuitBreaker;
  lines.push(
    `limits: ${cb.maxConnections === null ? 'unlimited connections' : `at most ${cb.maxConnections} connections`}, ${cb.maxPending === null ? 'unlimited pending' : `at most ${cb.maxPending} pending`} (beyond: reset at accept)`,
  );
  if (s.healthCheck)
    lines.push(
      `health checks: TCP connect every ${ms(s.healthCheck.intervalMs)} (timeout ${ms(s.healthCheck.timeoutMs)}), out after ${s.healthCheck.unhealthyThreshold} failures, back after ${s.healthCheck.healthyThreshold} passes`,
    );
  const f = s.faults;
  if (f.abort || f.delay)
    lines.push(
      `faults: ${[f.abort ? `abort ${f.abort.percent} %` : '', f.delay ? `delay ${f.delay.percent} % by ${ms(f.delay.durationMs)}` : ''].filter(Boolean).join(', ')}`,
    );
  return lines;
}

/**
 * What the proxy would do with `flow` under `config`. `resolved` maps hostname service addresses to the
 * addresses they resolve to now (unresolved hostnames cannot match and are listed in `assumptions`).
 */
export function explainProxy(
  config: Pick<Config, 'services' | 'outbound' | 'inbound'> & MtlsPart,
  flow: ProxyFlow,
  resolved: ReadonlyMap<string, readonly string[]> = new Map(),
): ProxyExplanation {
  const assumptions: string[] = [];
  if (flow.direction === 'inbound') return explainInbound(config, flow, assumptions);
  const entries: RegistryEntry<Match>[] = [];
  config.services.forEach((s, index) => {
    s.addresses.forEach((a, addressIndex) => {
      const value = { index, address: a, addressIndex };
      if (a.kind === 'ip') entries.push({ kind: 'ip', address: a.address, port: a.port, value });
      else if (a.kind === 'cidr') entries.push({ kind: 'cidr', cidr: a.cidr, port: a.port, value });
      else {
        const addresses = resolved.get(a.hostname);
        if (addresses === undefined)
          assumptions.push(
            `${a.hostname} (services[${index}].addresses[${addressIndex}]) was not resolved; a connection to its addresses would match service "${s.name}"`,
          );
        for (const address of addresses ?? []) entries.push({ kind: 'ip', address, port: a.port, value });
      }
    });
  });
  const hit = new ServiceMatcher(entries).lookup(flow.destination.address, flow.destination.port);
  const dst = hostPortText(flow.destination.address, flow.destination.port);
  if (hit === null) {
    if (config.outbound.policy === 'registry-only') {
      return {
        verdict: 'refused',
        reason: `no service matches ${dst} and outbound.policy is "registry-only": reset at accept (counted as registry-only, logged)`,
        service: null,
        inbound: null,
        summary: [],
        assumptions,
      };
    }
    const tunnel = explainTunnel(config, null, [flow.destination.address]);
    return {
      verdict: 'passthrough',
      reason: `no service matches ${dst}; outbound.policy "passthrough": connects to ${dst} as dialled`,
      service: null,
      inbound: null,
      summary: tunnelLines(tunnel),
      assumptions,
      ...(tunnel !== undefined ? { tunnel } : {}),
    };
  }
  const s = config.services[hit.index]!;
  const service: ServiceExplanation = {
    name: s.name,
    path: `services[${hit.index}]`,
    matchedBy: {
      address: addressText(hit.address),
      path: `services[${hit.index}].addresses[${hit.addressIndex}]`,
      kind: hit.address.kind,
    },
    loadBalancer: s.loadBalancer,
    endpoints: s.endpoints.map(endpointText),
    subsets: s.subsets,
    connectTimeoutMs: s.connectTimeoutMs,
    retries: s.retries,
    outlierDetection: s.outlierDetection,
    circuitBreaker: s.circuitBreaker,
    healthCheck: s.healthCheck,
    faults: s.faults,
  };
  const statics = s.endpoints.flatMap((e) => (e.kind === 'static' ? [e.address] : []));
  const tunnel = explainTunnel(config, { config: s, path: service.path }, statics);
  return {
    verdict: 'service',
    reason: `${dst} is an address of service "${s.name}": connects to one of its endpoints instead`,
    service,
    inbound: null,
    summary: [...describeService(service), ...tunnelLines(tunnel)],
    assumptions,
    ...(tunnel !== undefined ? { tunnel } : {}),
  };
}

type Verdict = Pick<ProxyExplanation, 'verdict' | 'reason'>;

/** Deny (address or principal) wins, then allow by address or principal, as InboundEntry.admit decides. */
function inboundVerdict(
  c: InboundPortPolicy,
  path: string,
  source: string | undefined,
  principal: string | null,
): Verdict | null {
  const who = [source ? `source ${source}` : '', principal ? `principal ${principal}` : 'no principal (plaintext)']
    .filter(Boolean)
    .join(' with ');
  if (source !== undefined && c.deny.length > 0 && new CidrSet(c.deny).has(source))
    return { verdict: 'refused', reason: `source ${source} is denied by ${path}.deny (deny wins): reset at accept` };
  if (anyPrincipalMatches(c.denyPrincipals, principal))
    return { verdict: 'refused', reason: `${principal} is denied by ${path}.deny (deny wins): reset at accept` };
  // Without the address, a deny by CIDR may still apply.
  if (source === undefined && c.deny.length > 0) return null;
  const admitted: Verdict = {
    verdict: 'admitted',
    reason: `${who} is admitted by ${path} (subject to its limits), then connected to the local app`,
  };
  if (c.allow === 'all' || anyPrincipalMatches(c.allowPrincipals, principal)) return admitted;
  if (source === undefined) return null;
  if (new CidrSet(c.allow).has(source)) return admitted;
  return { verdict: 'refused', reason: `${who} is not in ${path}.allow: reset at accept` };
}

function explainInbound(
  config: Pick<Config, 'inbound'> & MtlsPart,
  flow: ProxyFlow,
  assumptions: string[],
): ProxyExplanation {
  const principal = flow.sourceId ?? null;
  const none = { service: null, inbound: null, summary: [], assumptions };
  if (config.mtls?.inbound === 'strict' && principal === null)
    return {
      verdict: 'refused',
      reason: `mtls.inbound is "strict": a plaintext connection arriving through capture is refused (plaintext-refused); one through the tunnel (--src-id) is not`,
      ...none,
    };
  const policy = new InboundPolicy(config.inbound, null, 0);
  const entry = policy.entryFor(flow.destination.port);
  if (entry === null) {
    return {
      verdict: 'passthrough',
      reason: `no inbound.ports entry covers port ${flow.destination.port}: every source is admitted, no limits`,
      ...none,
    };
  }
  const c = entry.config;
  const inbound: InboundExplanation = {
    path: `inbound.ports[${policy.entries.indexOf(entry)}]`,
    ports: inboundLabel(c.ports),
    allow: c.allow === 'all' ? '*' : [...c.allow.map(cidrText), ...c.allowPrincipals.map(principalText)],
    deny: [...c.deny.map(cidrText), ...c.denyPrincipals.map(principalText)],
    maxConnections: c.maxConnections,
    rateLimit: c.rateLimit,
    sourceRateLimit: c.sourceRateLimit,
  };
  const summary = [
    `inbound entry ${inbound.path} (port ${inbound.ports}): allow ${inbound.allow === '*' ? 'any source' : inbound.allow.join(', ')}${inbound.deny.length > 0 ? `, deny ${inbound.deny.join(', ')}` : ''}`,
    `limits: ${c.maxConnections === null ? 'unlimited connections' : `at most ${c.maxConnections} connections`}; rate ${c.rateLimit ? bucketText(c.rateLimit) : 'unlimited'}; per source ${c.sourceRateLimit ? bucketText(c.sourceRateLimit) : 'unlimited'}`,
  ];
  const verdict = inboundVerdict(c, inbound.path, flow.source?.address, principal);
  if (verdict !== null) return { ...verdict, service: null, inbound, summary, assumptions };
  assumptions.push('peer address not given: the allow/deny lists cannot be evaluated — pass --src');
  return {
    verdict: 'admitted',
    reason: `port ${flow.destination.port} has inbound policy ${inbound.path}; whether a peer is admitted depends on its address`,
    service: null,
    inbound,
    summary,
    assumptions,
  };
}
