// `meshctl verify`'s DNS probes, when the installed config captures DNS: from an ordinary uid, a query over UDP and
// one over TCP to a TEST-NET address's port 53 (where no server is: only the capture can answer), for a mesh name
// (the answer must be its addresses or VIPs, from the proxy) and for a name under `.invalid` (the proxy must have
// forwarded it: NXDOMAIN or NOERROR from its upstream, not SERVFAIL).
import { randomInt } from 'node:crypto';
import * as packet from 'dns-packet';
import type { Config } from '../config/types.js';
import { meshNames } from '../policy/mesh-names.js';
import type { Family } from '../values/ip.js';
import type { ProbeAgent } from './probe-agent.js';

export interface DnsProbeResult {
  readonly name: string;
  readonly family: Family;
  readonly flow: string;
  readonly expected: string;
  readonly status: 'pass' | 'fail' | 'skip';
  readonly detail: string;
}

const TARGET: Record<Family, string> = { ipv4: '192.0.2.53', ipv6: '2001:db8::53' };
const EXTERNAL = 'meshctl-verify.invalid';
const RCODES = ['NOERROR', 'FORMERR', 'SERVFAIL', 'NXDOMAIN', 'NOTIMP', 'REFUSED'];

/** Where a probe query goes: the TEST-NET address, or an address inside the first listed server CIDR. */
function target(config: Config, family: Family): string | null {
  const servers = config.capture.dns.servers;
  if (servers === 'all') return TARGET[family];
  const listed = servers.find((c) => c.family === family);
  return listed ? listed.address : null;
}

/** An ordinary uid/gid the DNS rules capture (not exempt, inside includeGids). */
function appIds(config: Config): { uid: number; gid: number } {
  const out = config.capture.outbound;
  const uid = [4242, 4343, 54321].find((u) => !out.excludeUids.includes(u) && u !== config.proxy.user.uid) ?? 4242;
  const gid = out.includeGids === 'all' ? uid : out.includeGids[0]!;
  return { uid, gid };
}

/** Sends one A (IPv4) or AAAA (IPv6) query for `name` through the agent; the decoded answer, or why there is none. */
async function askDns(
  agent: ProbeAgent,
  via: Omit<Parameters<ProbeAgent['dns']>[0], 'query'>,
  name: string,
): Promise<{ p: packet.DecodedPacket } | { error: string }> {
  const id = randomInt(0, 0x10000);
  const query = packet.encode({
    id,
    type: 'query',
    flags: packet.RECURSION_DESIRED,
    questions: [{ name, type: via.family === 'ipv6' ? 'AAAA' : 'A', class: 'IN' }],
  });
  const r = await agent.dns({ ...via, query });
  if ('error' in r) return { error: r.error };
  try {
    const p = packet.decode(r.answer);
    return p.id === id ? { p } : { error: `an answer with another ID (${p.id})` };
  } catch (error) {
    return { error: `a malformed answer (${(error as Error).message})` };
  }
}

export async function dnsProbes(
  agent: ProbeAgent,
  config: Config,
  families: readonly Family[],
  timeoutMs: number,
): Promise<DnsProbeResult[]> {
  if (!config.capture.dns.enabled) return [];
  const results: DnsProbeResult[] = [];
  const mesh = [...meshNames(config.services).values()][0] ?? null;
  const { uid, gid } = appIds(config);
  for (const family of families) {
    const host = target(config, family);
    if (host === null) {
      results.push({
        name: 'DNS capture',
        family,
        flow: '-',
        expected: '-',
        status: 'skip',
        detail: `capture.dns.servers lists no ${family === 'ipv4' ? 'IPv4' : 'IPv6'} server`,
      });
      continue;
    }
    for (const transport of ['udp', 'tcp'] as const) {
      const flow = `uid ${uid} gid ${gid} → ${family === 'ipv6' ? `[${host}]` : host}:53/${transport}`;
      const ask = (name: string) => askDns(agent, { host, port: 53, family, transport, uid, gid, timeoutMs }, name);
      const unrouted = (e: string) =>
        e === 'ENETUNREACH'
          ? ` (no route to ${host} here: add a default route, the capture redirects after routing)`
          : ' (the query was not captured, or the proxy serves no DNS on capture.dns.port)';
      if (mesh !== null) {
        const want = family === 'ipv6' ? mesh.ipv6 : mesh.ipv4;
        const r = await ask(mesh.name);
        const got =
          'p' in r ? (r.p.answers ?? []).flatMap((a) => (a.type === 'A' || a.type === 'AAAA' ? [a.data] : [])) : [];
        const ok = 'p' in r && r.p.flag_aa === true && got.join(',') === want.join(',');
        results.push({
          name: `DNS mesh name over ${transport.toUpperCase()}`,
          family,
          flow: `${flow} ${mesh.name}`,
          expected: `answered by the proxy: ${want.join(', ') || '(no address)'}`,
          status: ok ? 'pass' : 'fail',
          detail: ok
            ? `the proxy answered ${got.join(', ') || '(no address)'} (authoritative)`
            : 'error' in r
              ? `no answer: ${r.error}${unrouted(r.error)}`
              : `answered ${got.join(', ') || 'nothing'}${r.p.flag_aa ? '' : ' (not authoritative: not the proxy)'}`,
        });
      }
      const r = await ask(EXTERNAL);
      const rcode = 'p' in r ? (RCODES[(r.p.flags ?? 0) & 0xf] ?? 'RCODE?') : null;
      const ok = rcode === 'NXDOMAIN' || rcode === 'NOERROR';
      results.push({
        name: `DNS forwarded name over ${transport.toUpperCase()}`,
        family,
        flow: `${flow} ${EXTERNAL}`,
        expected: 'forwarded by the proxy to its upstream resolvers',
        status: ok ? 'pass' : 'fail',
        detail: ok
          ? `answered ${rcode} through the proxy (nothing listens at ${host})`
          : rcode !== null
            ? `answered ${rcode}: captured, but the proxy's upstream resolvers failed (check /etc/resolv.conf or outbound.resolver.servers)`
            : `no answer: ${'error' in r ? `${r.error}${unrouted(r.error)}` : ''}`,
      });
    }
  }
  return results;
}
