// `meshctl explain --dns NAME`: how the proxy's DNS server would answer a name under a config. Pure apart from
// reading the upstream list (resolv.conf) it is given.
import type { Config } from '../config/types.js';
import { meshNames, normalizeHostname, VIP_RANGES } from '../policy/mesh-names.js';
import { MAX_NEGATIVE_TTL_S, MAX_TTL_S } from './cache.js';
import { serverLabel } from './forwarder.js';
import { MESH_TTL_S } from './responder.js';
import type { UpstreamServers } from './resolv-conf.js';

export interface DnsExplanation {
  readonly name: string;
  readonly answeredBy: 'mesh' | 'upstream';
  /** The proxy serves DNS only with capture.dns.enabled. */
  readonly served: boolean;
  readonly service: string | null;
  readonly ipv4: readonly string[];
  readonly ipv6: readonly string[];
  readonly vip: boolean;
  readonly ttl: number | null;
  readonly upstreams: { readonly source: string; readonly servers: readonly string[] };
  readonly reason: string;
}

export function explainDnsName(
  config: Pick<Config, 'capture' | 'services'>,
  name: string,
  upstreams: UpstreamServers,
): DnsExplanation {
  const key = normalizeHostname(name);
  const mesh = meshNames(config.services).get(key);
  const ups = { source: upstreams.source, servers: upstreams.list().map(serverLabel) };
  const served = config.capture.dns.enabled;
  if (mesh) {
    const how = mesh.vip
      ? `its VIPs (service ${mesh.service} has no fixed address; VIPs come from ${VIP_RANGES.ipv4} and ${VIP_RANGES.ipv6}, and the proxy matches connections to them to the service)`
      : `the fixed addresses of service ${mesh.service}`;
    return {
      name: key,
      answeredBy: 'mesh',
      served,
      service: mesh.service,
      ipv4: mesh.ipv4,
      ipv6: mesh.ipv6,
      vip: mesh.vip,
      ttl: MESH_TTL_S,
      upstreams: ups,
      reason: `${key} is a mesh name (services[].addresses of ${mesh.service}): answered authoritatively with ${how}, TTL ${MESH_TTL_S} s; other record types get an empty answer (NODATA), nothing is forwarded`,
    };
  }
  const to = ups.servers.length > 0 ? ups.servers.join(', ') : 'no server (the proxy answers SERVFAIL)';
  return {
    name: key,
    answeredBy: 'upstream',
    served,
    service: null,
    ipv4: [],
    ipv6: [],
    vip: false,
    ttl: null,
    upstreams: ups,
    reason: `${key} is not a mesh name: forwarded as asked (ID, letter case and EDNS kept) to ${to} (from ${ups.source}), then cached for the answer's TTL (at most ${MAX_TTL_S} s; NXDOMAIN and empty answers for the SOA's negative TTL, at most ${MAX_NEGATIVE_TTL_S} s)`,
  };
}
