// The contract between capture and proxy: everything the capture rules assume about the proxy they send traffic
// to (who is exempt, which ports serve what, which families, which inbound mode), as one value that the planner
// and the proxy both derive from the same config, and the comparison of that value with what a running proxy
// really is (its kernel uid/gid, the sockets it listens on). Pure: the facts about the live proxy are read
// elsewhere (src/proxy/live-contract.ts) and passed in.
import type { Family } from '../values/ip.js';
import type { Config, InboundMode } from './types.js';

/** What the rules of one config assume about the proxy. */
export interface CaptureContract {
  /** The proxy user the rules exempt first (proxy.user). */
  readonly proxyUser: { readonly name: string | null; readonly uid: number; readonly gid: number };
  /** Every uid whose sockets the outbound rules return (proxy.user plus capture.outbound.excludeUids). */
  readonly exemptUids: readonly number[];
  /** Every primary gid whose sockets the outbound rules return (the proxy's gid plus excludeGids). */
  readonly exemptGids: readonly number[];
  /** Outbound capture only of sockets with these primary gids ('all': every gid). */
  readonly includeGids: 'all' | readonly number[];
  /** The families whose connections are redirected to the proxy (an IPv6 'block' is not served by it). */
  readonly families: readonly Family[];
  /** TCP port the outbound rules redirect to, or null when outbound capture is off. */
  readonly outboundPort: number | null;
  /** TCP port the inbound rules redirect (or TPROXY) to, or null when inbound capture is off. */
  readonly inboundPort: number | null;
  readonly inboundMode: InboundMode | null;
  /** UDP and TCP port DNS queries are redirected to, or null when DNS capture is off. */
  readonly dnsPort: number | null;
  /** The mTLS tunnel listener's port, never captured on either side; null while mtls.inbound is disable. */
  readonly tunnelPort: number | null;
}

/** The contract the rules of `config` need the proxy to keep. */
export function contractOf(config: Pick<Config, 'proxy' | 'capture' | 'mtls'>): CaptureContract {
  const { proxy, capture, mtls } = config;
  const user = proxy.user;
  return {
    proxyUser: { name: user.name, uid: user.uid, gid: user.gid },
    exemptUids: [...new Set([user.uid, ...capture.outbound.excludeUids])],
    exemptGids: [...new Set([user.gid, ...capture.outbound.excludeGids])],
    includeGids: capture.outbound.includeGids,
    families: capture.ipv6 === 'intercept' ? ['ipv4', 'ipv6'] : ['ipv4'],
    outboundPort: capture.outbound.enabled ? proxy.outboundPort : null,
    inboundPort: capture.inbound.enabled ? proxy.inboundPort : null,
    inboundMode: capture.inbound.enabled ? capture.inbound.mode : null,
    dnsPort: capture.dns.enabled ? capture.dns.port : null,
    tunnelPort: mtls.inbound !== 'disable' ? mtls.tunnelPort : null,
  };
}

/** Listening sockets of one protocol, by family: the local ports the kernel shows for the proxy's processes. */
export interface ListeningPorts {
  readonly ipv4: readonly number[];
  readonly ipv6: readonly number[];
}

/** What a running proxy is, as the kernel sees it, plus the contract its own config derives (GET /contract). */
export interface LiveContract {
  readonly pid: number;
  /** The proxy's processes (the primary and its workers) with the uid/gid their new sockets are owned by. */
  readonly processes: readonly { readonly pid: number; readonly uid: number; readonly gid: number }[];
  /** The file-system uid/gid of the primary (what netfilter's owner match sees on a socket it creates). */
  readonly uid: number;
  readonly gid: number;
  readonly user: string | null;
  readonly tcp: ListeningPorts;
  readonly udp: ListeningPorts;
  /** TCP ports whose listener has IP_TRANSPARENT (TPROXY can deliver to it). */
  readonly transparentPorts: readonly number[];
  readonly config: { readonly file: string | null; readonly hash: string; readonly version: number };
  /** The contract derived from the proxy's own config. */
  readonly expects: CaptureContract;
}

/** One field where the rules and the proxy disagree, with both values and the fix. */
export interface ContractMismatch {
  readonly field: 'user' | 'outboundPort' | 'inboundPort' | 'inboundMode' | 'dnsPort' | 'tunnelPort';
  readonly rules: string;
  readonly proxy: string;
  readonly message: string;
  readonly fix: string;
}

function who(uid: number, name: string | null): string {
  return name ? `uid ${uid} (${name})` : `uid ${uid}`;
}

/** Whether sockets owned by uid/gid are returned before the outbound redirect (so the proxy cannot loop). */
export function isExempt(contract: CaptureContract, uid: number, gid: number): boolean {
  if (contract.exemptUids.includes(uid) || contract.exemptGids.includes(gid)) return true;
  return contract.includeGids !== 'all' && !contract.includeGids.includes(gid);
}

function listensOn(ports: ListeningPorts, port: number, families: readonly Family[]): Family[] {
  return families.filter((f) => !ports[f].includes(port));
}

function familyText(families: readonly Family[]): string {
  return families.map((f) => (f === 'ipv4' ? 'IPv4' : 'IPv6')).join(' and ');
}

/** The rules leave the mTLS tunnel port to the proxy (never captured), which must listen there for its peers. */
function tunnelPortMismatch(rules: CaptureContract, live: LiveContract): ContractMismatch | null {
  if (rules.tunnelPort === null) return null;
  const missing = listensOn(live.tcp, rules.tunnelPort, rules.families);
  if (missing.length === 0) return null;
  return {
    field: 'tunnelPort',
    rules: `mTLS tunnel port ${rules.tunnelPort} left uncaptured (${familyText(rules.families)})`,
    proxy: `does not listen on TCP ${rules.tunnelPort} (${familyText(missing)})`,
    message: `the rules leave the mTLS tunnel port ${rules.tunnelPort} to the proxy, but it does not listen there (${familyText(missing)}): peers' tunneled connections are refused`,
    fix:
      live.expects.tunnelPort !== null && live.expects.tunnelPort !== rules.tunnelPort
        ? `install with --mtls-tunnel-port ${live.expects.tunnelPort}, or restart the proxy with mtls.tunnelPort ${rules.tunnelPort}`
        : 'start the proxy with mtls.inbound permissive or strict and an mtls.identity, or install with --mtls-inbound disable',
  };
}

/**
 * Every way the live proxy fails the contract the rules need: its sockets would be captured (a loop), or a port
 * the rules redirect to is not one it listens on (per family, and for DNS both UDP and TCP), or the inbound mode
 * differs. `cli` names the flag that changes the rules' side (e.g. `--proxy-user`). Empty: they agree.
 */
export function compareContract(rules: CaptureContract, live: LiveContract): ContractMismatch[] {
  const out: ContractMismatch[] = [];
  const uncaptured = live.processes.length > 0 ? live.processes : [{ pid: live.pid, uid: live.uid, gid: live.gid }];
  const captured = uncaptured.filter((p) => !isExempt(rules, p.uid, p.gid));
  if (captured.length > 0 && rules.outboundPort !== null) {
    const p = captured[0]!;
    const liveName = p.uid === live.uid ? live.user : null;
    const ruleUser = who(rules.proxyUser.uid, rules.proxyUser.name);
    out.push({
      field: 'user',
      rules: `exempt ${ruleUser} gid ${rules.proxyUser.gid}`,
      proxy: `${who(p.uid, liveName)} gid ${p.gid} (pid ${p.pid})`,
      message: `the proxy runs as ${who(p.uid, liveName)} gid ${p.gid}; the rules would exempt ${ruleUser} gid ${rules.proxyUser.gid}, so the proxy's own upstream connections would be captured and loop back to it`,
      fix: `run the proxy as ${rules.proxyUser.name ?? `uid ${rules.proxyUser.uid}`} or install with --proxy-user ${liveName ?? p.uid}`,
    });
  }
  const port = (field: 'outboundPort' | 'inboundPort', value: number | null, flag: string, what: string) => {
    if (value === null) return;
    const missing = listensOn(live.tcp, value, rules.families);
    if (missing.length === 0) return;
    const have = rules.families
      .map((f) => `${f === 'ipv4' ? 'IPv4' : 'IPv6'} ${live.tcp[f].length > 0 ? live.tcp[f].join(', ') : 'none'}`)
      .join('; ');
    const theirs = live.expects[field];
    out.push({
      field,
      rules: `${what} to TCP port ${value} (${familyText(rules.families)})`,
      proxy: `listens on TCP ${have}`,
      message: `the rules redirect ${what} to TCP port ${value} (${familyText(missing)}), but the proxy does not listen there (it listens on TCP ${have})`,
      fix:
        theirs !== null && theirs !== value
          ? `install with ${flag} ${theirs} (the proxy's ${field === 'outboundPort' ? 'proxy.outboundPort' : 'proxy.inboundPort'}), or restart the proxy with ${value}`
          : `start the proxy with ${field === 'outboundPort' ? 'proxy.outboundPort' : 'proxy.inboundPort'} ${value}${missing.includes('ipv6') ? ' and capture.ipv6 intercept (so it opens IPv6 listeners)' : ''}, or install with ${flag}`,
    });
  };
  port('outboundPort', rules.outboundPort, '--proxy-outbound-port', 'outbound connections');
  port('inboundPort', rules.inboundPort, '--proxy-inbound-port', 'inbound connections');
  if (
    rules.inboundMode === 'tproxy' &&
    rules.inboundPort !== null &&
    !live.transparentPorts.includes(rules.inboundPort)
  ) {
    out.push({
      field: 'inboundMode',
      rules: `TPROXY inbound to port ${rules.inboundPort}`,
      proxy: `inbound mode ${live.expects.inboundMode ?? 'off'} (no transparent listener on ${rules.inboundPort})`,
      message: `the rules deliver inbound connections by TPROXY to port ${rules.inboundPort}, which needs an IP_TRANSPARENT listener, and the proxy has none there (its capture.inbound.mode is ${live.expects.inboundMode ?? 'off'})`,
      fix: 'start the proxy with capture.inbound.mode tproxy (it makes transparent listeners), or install with --inbound-mode redirect',
    });
  }
  const tunnel = tunnelPortMismatch(rules, live);
  if (tunnel !== null) out.push(tunnel);
  if (rules.dnsPort !== null) {
    const udp = listensOn(live.udp, rules.dnsPort, rules.families);
    const tcp = listensOn(live.tcp, rules.dnsPort, rules.families);
    if (udp.length > 0 || tcp.length > 0) {
      const gaps = [
        ...(udp.length > 0 ? [`UDP (${familyText(udp)})`] : []),
        ...(tcp.length > 0 ? [`TCP (${familyText(tcp)})`] : []),
      ].join(', ');
      out.push({
        field: 'dnsPort',
        rules: `DNS queries (UDP and TCP 53) to port ${rules.dnsPort}`,
        proxy: `serves no DNS on ${gaps}`,
        message: `the rules redirect every DNS query to port ${rules.dnsPort}, but the proxy does not serve DNS there on ${gaps}: the host would have no name resolution`,
        fix:
          live.expects.dnsPort !== null && live.expects.dnsPort !== rules.dnsPort
            ? `install with --dns-port ${live.expects.dnsPort}, or restart the proxy with capture.dns.port ${rules.dnsPort}`
            : 'install without DNS capture (capture.dns.enabled: false, and no --dns flag), or run a proxy that serves DNS on that port',
      });
    }
  }
  return out;
}

/** A one-line summary of a contract, for status and logs. */
export function describeContract(c: CaptureContract): string {
  const parts = [`exempt ${who(c.proxyUser.uid, c.proxyUser.name)} gid ${c.proxyUser.gid}`];
  if (c.outboundPort !== null) parts.push(`outbound :${c.outboundPort}`);
  if (c.inboundPort !== null) parts.push(`inbound :${c.inboundPort}${c.inboundMode === 'tproxy' ? ' (tproxy)' : ''}`);
  if (c.dnsPort !== null) parts.push(`dns :${c.dnsPort}`);
  if (c.tunnelPort !== null) parts.push(`mtls tunnel :${c.tunnelPort}`);
  parts.push(familyText(c.families));
  return parts.join(', ');
}
