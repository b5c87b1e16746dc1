// Plans the capture: Config → CapturePlan, per address family. Pure; no I/O.
//
// Packet paths (nat unless noted; first match wins in each chain):
//
//   inbound  PREROUTING ⤸ MESHCTL_INBOUND: excluded iface / SSH session / SSH ports / proxy ports / excluded ports → RETURN
//                          └─ included ports ⤸ MESHCTL_IN_REDIRECT → REDIRECT :inbound
//            (tproxy mode: mangle PREROUTING ⤸ MESHCTL_INBOUND ... ⤸ MESHCTL_TPROXY → TPROXY :inbound, mark;
//             established transparent sockets ⤸ MESHCTL_DIVERT → mark, ACCEPT;
//             the proxy's leg to the app leaves from the peer's address with the mark (SO_MARK):
//             mangle OUTPUT ⤸ MESHCTL_TPROXY_REPLY: marked packet → connmark; the app's replies (connmark) → mark,
//             so the fwmark policy route (local default dev lo) brings them back to the proxy)
//   outbound OUTPUT ⤸ MESHCTL_OUTPUT:
//              excluded iface → RETURN
//              src 127.0.0.6 over lo (proxy → local app, inbound passthrough) → RETURN
//              (tproxy mode: the tproxy mark over lo, the proxy → local app from the peer's address → RETURN)
//              proxy uid/gid over lo to a non-127.0.0.1 address (an app called its own address) ⤸ inbound chain
//              other lo traffic (not the proxy) → RETURN;  proxy uid / gid → RETURN (no loops)
//              (a loopback includeCidrs entry replaces the lo RETURNs by 127.0.0.1 → RETURN, or, when it holds
//               127.0.0.1 itself, by 127.0.0.1 to the proxy's own ports → RETURN)
//              excluded uids / gids, groups outside includeGids → RETURN
//              excluded CIDRs / ports → RETURN
//              included CIDRs × ports ⤸ MESHCTL_REDIRECT → REDIRECT :outbound
//   dns      OUTPUT (UDP and TCP port 53, before outbound) ⤸ MESHCTL_DNS: proxy uid/gid, excluded owners → RETURN
//              listed servers (any, loopback included) → REDIRECT :dns;  raw: conntrack zones keep the proxy's own
//              queries and their replies (zone 1) apart from apps' redirected ones (zone 2)
//   IPv6 block: filter OUTPUT/INPUT ⤸ MESHCTL_BLOCK_OUT/IN → REJECT tcp-reset for exactly what intercept would capture.
//
// The order follows istio-iptables (tools/istio-iptables/pkg/capture/run.go), which has carried it for years, except
// where the README's comparison table says otherwise (Istio puts the outbound port exclusions first; here they come
// after the own-address rule, so the proxy calling its own address always meets the inbound policy).
import type { Config } from '../config/types.js';
import type { Cidr, Family } from '../values/ip.js';
import type {
  ChainDecl,
  CapturePlan,
  FamilyPlan,
  Match,
  PolicyRoute,
  Rule,
  Table,
  Target,
  LoopbackAddress,
} from './model.js';
import type { PortRange } from '../values/ports.js';
import { cidrContains, hostCidr, isLoopback, parseIp } from '../values/ip.js';

export const CHAINS = {
  inbound: 'MESHCTL_INBOUND',
  localInbound: 'MESHCTL_LOCAL_INBOUND',
  inRedirect: 'MESHCTL_IN_REDIRECT',
  tproxy: 'MESHCTL_TPROXY',
  tproxyReply: 'MESHCTL_TPROXY_REPLY',
  divert: 'MESHCTL_DIVERT',
  output: 'MESHCTL_OUTPUT',
  redirect: 'MESHCTL_REDIRECT',
  dns: 'MESHCTL_DNS',
  dnsZoneOut: 'MESHCTL_DNS_ZONE_OUT',
  dnsZonePre: 'MESHCTL_DNS_ZONE_PRE',
  dropInvalid: 'MESHCTL_DROP_INVALID',
  blockOut: 'MESHCTL_BLOCK_OUT',
  blockIn: 'MESHCTL_BLOCK_IN',
} as const;

/** Conntrack zones for DNS capture: 1 = the proxy's upstream queries and their replies, 2 = apps' queries. */
export const DNS_ZONES = { upstream: 1, app: 2 } as const;
const DNS_PORT = 53;
/** iptables multiport takes at most 15 ports, a range counting as two. */
const MULTIPORT_SLOTS = 15;

const LOCALHOST: Record<Family, string> = { ipv4: '127.0.0.1', ipv6: '::1' };

const tcp: Match = { kind: 'protocol', protocol: 'tcp' };
const udp: Match = { kind: 'protocol', protocol: 'udp' };
const dport = (ports: readonly PortRange[], negate = false): Match => ({
  kind: 'destinationPort',
  ports,
  ...(negate ? { negate } : {}),
});
const port = (p: number): PortRange => ({ from: p, to: p });

/** Splits port ranges into groups that each fit one multiport match. */
export function chunkPorts(ranges: readonly PortRange[]): PortRange[][] {
  const chunks: PortRange[][] = [];
  let current: PortRange[] = [];
  let used = 0;
  for (const range of ranges) {
    const cost = range.from === range.to ? 1 : 2;
    if (used + cost > MULTIPORT_SLOTS) {
      chunks.push(current);
      current = [];
      used = 0;
    }
    current.push(range);
    used += cost;
  }
  if (current.length > 0) chunks.push(current);
  return chunks;
}

class FamilyBuilder {
  readonly chains: ChainDecl[] = [];
  readonly rules: Rule[] = [];
  constructor(
    readonly family: Family,
    readonly missingUnits: ReadonlySet<string> = new Set(),
  ) {}

  chain(table: Table, name: string): string {
    if (!this.chains.some((c) => c.table === table && c.name === name)) this.chains.push({ table, name });
    return name;
  }

  add(table: Table, chain: string, matches: Match[], target: Target, purpose: string, origin: string): void {
    this.rules.push({ table, chain, matches, target, purpose, origin });
  }

  cidrs(list: readonly Cidr[]): { cidr: Cidr; index: number }[] {
    return list.map((cidr, index) => ({ cidr, index })).filter((c) => c.cidr.family === this.family);
  }

  plan(): FamilyPlan {
    return { family: this.family, chains: this.chains, rules: this.rules };
  }
}

/**
 * Only a SYN may start capture. A connection that existed before the rules (an SSH session on a host whose
 * conntrack was not loaded yet) is picked up mid-stream as "new" by conntrack; NATing or rejecting it would cut it.
 */
function addSkipMidstream(b: FamilyBuilder, table: Table, chain: string): void {
  b.add(
    table,
    chain,
    [tcp, { kind: 'tcpSyn', negate: true }],
    { kind: 'return' },
    'skip-midstream',
    'built-in (connections older than the rules)',
  );
}

/** Rules shared by inbound capture in every mode: what is never captured, then what is. */
function addInboundFilter(
  b: FamilyBuilder,
  config: Config,
  table: Table,
  chain: string,
  capture: Target,
  purpose: string,
): void {
  const { capture: cap, safety } = config;
  cap.excludeInterfaces.forEach((name, i) =>
    b.add(
      table,
      chain,
      [{ kind: 'inInterface', name }],
      { kind: 'return' },
      'skip-interface',
      `capture.excludeInterfaces[${i}]`,
    ),
  );
  const peer = safety.sshPeer;
  if (peer && hostCidr(peer.address).family === b.family) {
    b.add(
      table,
      chain,
      [tcp, { kind: 'source', cidr: hostCidr(peer.address) }, { kind: 'sourcePort', ports: [port(peer.port)] }],
      { kind: 'return' },
      'skip-ssh-session',
      'safety.sshPeer (SSH_CONNECTION)',
    );
  }
  if (!safety.unsafeCaptureSsh) {
    for (const chunk of chunkPorts(safety.sshPorts.map(port)))
      b.add(
        table,
        chain,
        [tcp, dport(chunk)],
        { kind: 'return' },
        'skip-ssh',
        `safety.sshPorts (${safety.sshPortsSource})`,
      );
  }
  b.add(
    table,
    chain,
    [tcp, dport(ownPorts(config).map(port))],
    { kind: 'return' },
    'skip-proxy-ports',
    `proxy.adminPort, proxy.outboundPort, proxy.inboundPort${config.mtls.inbound !== 'disable' ? ', mtls.tunnelPort' : ''}`,
  );
  cap.inbound.excludePorts.forEach((range, i) =>
    b.add(
      table,
      chain,
      [tcp, dport([range])],
      { kind: 'return' },
      'skip-inbound-port',
      `capture.inbound.excludePorts[${i}]`,
    ),
  );
  if (cap.inbound.includePorts === 'all') {
    b.add(table, chain, [tcp], capture, purpose, 'capture.inbound.includePorts');
  } else {
    for (const chunk of chunkPorts(cap.inbound.includePorts))
      b.add(table, chain, [tcp, dport(chunk)], capture, purpose, 'capture.inbound.includePorts');
  }
}

function planInbound(b: FamilyBuilder, config: Config): string | null {
  const { inbound } = config.capture;
  if (!inbound.enabled) return null;
  const inRedirect = b.chain('nat', CHAINS.inRedirect);
  b.add(
    'nat',
    inRedirect,
    [tcp],
    { kind: 'redirect', toPort: config.proxy.inboundPort },
    'redirect-inbound',
    'proxy.inboundPort',
  );
  if (inbound.mode === 'redirect') {
    const chain = b.chain('nat', CHAINS.inbound);
    addSkipMidstream(b, 'nat', chain);
    addInboundFilter(b, config, 'nat', chain, { kind: 'jump', chain: inRedirect }, 'inbound-to-proxy');
    b.add('nat', 'PREROUTING', [tcp], { kind: 'jump', chain }, 'inbound-capture', 'capture.inbound.enabled');
    return chain;
  }
  // TPROXY keeps the peer's source address; packets of established transparent sockets are marked and accepted.
  const mark = inbound.tproxyMark;
  const divert = b.chain('mangle', CHAINS.divert);
  const tproxy = b.chain('mangle', CHAINS.tproxy);
  const chain = b.chain('mangle', CHAINS.inbound);
  b.add(
    'mangle',
    divert,
    [],
    { kind: 'setMark', value: mark, mask: 0xffffffff },
    'tproxy-mark-established',
    'capture.inbound.tproxyMark',
  );
  b.add('mangle', divert, [], { kind: 'accept' }, 'tproxy-accept-established', 'capture.inbound.mode');
  b.add(
    'mangle',
    tproxy,
    [tcp, { kind: 'destination', cidr: hostCidr(LOCALHOST[b.family]), negate: true }],
    { kind: 'tproxy', toPort: config.proxy.inboundPort, mark, mask: 0xffffffff },
    'tproxy-inbound',
    'capture.inbound.mode',
  );
  b.add(
    'mangle',
    chain,
    [tcp, { kind: 'socketTransparent' }],
    { kind: 'jump', chain: divert },
    'tproxy-established',
    'capture.inbound.mode',
  );
  // Replies to this host's own outbound connections also pass mangle PREROUTING; TPROXY would find their ordinary
  // socket and drop them. Loopback never needs TPROXY (the proxy's own-address calls take the nat path below).
  b.add(
    'mangle',
    chain,
    [{ kind: 'inInterface', name: 'lo' }],
    { kind: 'return' },
    'skip-loopback',
    'built-in (loopback)',
  );
  addSkipMidstream(b, 'mangle', chain);
  b.add(
    'mangle',
    chain,
    [tcp, { kind: 'ctState', states: ['RELATED', 'ESTABLISHED'] }],
    { kind: 'jump', chain: divert },
    'tproxy-established',
    'capture.inbound.mode',
  );
  addInboundFilter(b, config, 'mangle', chain, { kind: 'jump', chain: tproxy }, 'inbound-to-proxy');
  b.add('mangle', 'PREROUTING', [tcp], { kind: 'jump', chain }, 'inbound-capture', 'capture.inbound.enabled');
  addTransparentReplies(b, config);
  // The proxy calling a local app's own address over lo still enters through the inbound listener (nat).
  const local = b.chain('nat', CHAINS.localInbound);
  addInboundFilter(b, config, 'nat', local, { kind: 'jump', chain: inRedirect }, 'inbound-to-proxy');
  return local;
}

/**
 * TPROXY's inbound leg leaves from the peer's own address (an IP_TRANSPARENT socket bound to it, marked with
 * tproxyMark by SO_MARK), so the app sees the peer. The app's replies go to that address, which is not local: left
 * alone they would be routed out to the peer. The mark of the proxy's first packet is stored on the connection, and
 * every later packet of that connection leaving this host (the app's replies among them) gets it back, so the
 * fwmark policy route (`local default dev lo`, the one TPROXY already uses) delivers them to the proxy's socket.
 * iptables' mangle OUTPUT (nft: `type route`) re-routes a packet whose mark changed.
 */
function addTransparentReplies(b: FamilyBuilder, config: Config): void {
  const mark = config.capture.inbound.tproxyMark;
  const chain = b.chain('mangle', CHAINS.tproxyReply);
  b.add(
    'mangle',
    chain,
    [tcp, { kind: 'mark', value: mark, mask: 0xffffffff }],
    { kind: 'setConnmark', value: mark, mask: 0xffffffff },
    'tproxy-mark-upstream-connection',
    'capture.inbound.tproxyMark',
  );
  b.add(
    'mangle',
    chain,
    [tcp, { kind: 'connmark', value: mark, mask: 0xffffffff }],
    { kind: 'setMark', value: mark, mask: 0xffffffff },
    'tproxy-reply-to-proxy',
    'capture.inbound.tproxyMark',
  );
  b.add('mangle', 'OUTPUT', [tcp], { kind: 'jump', chain }, 'tproxy-replies', 'capture.inbound.mode');
}

/**
 * Exemptions by systemd unit (the socket's cgroup). A unit whose cgroup does not exist now (`missingUnits`: not
 * running at install) gets no rule, because the kernel refuses to load one for a path that does not exist; its
 * drop-in re-applies the capture when it starts, before its main process runs.
 */
function addUnitExemptions(b: FamilyBuilder, config: Config, table: Table, chain: string, extra: Match[]): void {
  const out = config.capture.outbound;
  const present = (name: string): boolean => !b.missingUnits.has(name);
  out.excludeUnits.forEach((unit, i) => {
    if (!present(unit.name)) return;
    b.add(
      table,
      chain,
      [...extra, { kind: 'cgroup', path: unit.cgroup, unit: unit.name }],
      { kind: 'return' },
      'skip-unit',
      `capture.outbound.excludeUnits[${i}] (${unit.name})`,
    );
  });
  if (out.includeUnits !== 'all') {
    // With none of the listed units running, nothing is theirs to capture: every socket returns.
    b.add(
      table,
      chain,
      [
        ...extra,
        ...out.includeUnits
          .filter((unit) => present(unit.name))
          .map((unit): Match => ({ kind: 'cgroup', path: unit.cgroup, unit: unit.name, negate: true })),
      ],
      { kind: 'return' },
      'skip-unit-not-included',
      'capture.outbound.includeUnits',
    );
  }
}

/** Exemptions by socket owner that outbound capture, DNS capture and IPv6 block share. */
function addOwnerExemptions(b: FamilyBuilder, config: Config, table: Table, chain: string, extra: Match[]): void {
  addUnitExemptions(b, config, table, chain, extra);
  const out = config.capture.outbound;
  out.excludeUids.forEach((uid, i) =>
    b.add(
      table,
      chain,
      [...extra, { kind: 'uidOwner', uid }],
      { kind: 'return' },
      'skip-uid',
      `capture.outbound.excludeUids[${i}]`,
    ),
  );
  // Group lists mean membership: the primary group or a supplementary one (a process started with setpriv --groups).
  out.excludeGids.forEach((gid, i) =>
    b.add(
      table,
      chain,
      [...extra, { kind: 'gidOwner', gid, suppl: true }],
      { kind: 'return' },
      'skip-gid',
      `capture.outbound.excludeGids[${i}]`,
    ),
  );
  if (out.includeGids !== 'all') {
    b.add(
      table,
      chain,
      [...extra, ...out.includeGids.map((gid): Match => ({ kind: 'gidOwner', gid, negate: true, suppl: true }))],
      { kind: 'return' },
      'skip-gid-not-included',
      'capture.outbound.includeGids',
    );
  }
}

function addProxyExemption(b: FamilyBuilder, config: Config, table: Table, chain: string, extra: Match[]): void {
  const { uid, gid } = config.proxy.user;
  b.add(table, chain, [...extra, { kind: 'uidOwner', uid }], { kind: 'return' }, 'skip-proxy-uid', 'proxy.user');
  b.add(
    table,
    chain,
    [...extra, { kind: 'gidOwner', gid }],
    { kind: 'return' },
    'skip-proxy-gid',
    config.proxy.user.name === null ? 'proxy.group' : 'proxy.user (primary group)',
  );
}

/** Listed include CIDRs of this family that lie inside loopback (127.0.0.0/8, ::1). */
function loopbackIncludes(b: FamilyBuilder, config: Config): { cidr: Cidr; index: number }[] {
  const list = config.capture.outbound.includeCidrs;
  if (list === 'all') return [];
  return b
    .cidrs(list)
    .filter(({ cidr }) => isLoopback(parseIp(cidr.address)!) && cidr.prefix >= (cidr.family === 'ipv4' ? 8 : 128));
}

/** The proxy's listening ports, in order (the mTLS tunnel port while mtls.inbound is not disable). */
function ownPorts(config: Config): number[] {
  const { proxy, capture: cap, mtls } = config;
  return [
    proxy.adminPort,
    proxy.outboundPort,
    proxy.inboundPort,
    ...(cap.dns.enabled ? [cap.dns.port] : []),
    ...(mtls.inbound !== 'disable' ? [mtls.tunnelPort] : []),
  ].sort((x, y) => x - y);
}

/**
 * Destinations and ports outbound capture applies to, as (matches, origin) pairs. `withLoopback: false` leaves
 * loopback includes out (IPv6 block: loopback traffic never leaves the host, and its REJECT would sit behind the
 * lo RETURN, a rule that could never match).
 */
function outboundIncludes(
  b: FamilyBuilder,
  config: Config,
  withLoopback = true,
): { matches: Match[]; origin: string }[] {
  const out = config.capture.outbound;
  const loopback = new Set(withLoopback ? [] : loopbackIncludes(b, config).map((l) => l.index));
  const cidrs: { matches: Match[]; origin: string }[] =
    out.includeCidrs === 'all'
      ? [{ matches: [], origin: 'capture.outbound.includeCidrs' }]
      : b
          .cidrs(out.includeCidrs)
          .filter(({ index }) => !loopback.has(index))
          .map(({ cidr, index }) => ({
            matches: [{ kind: 'destination', cidr }],
            origin: `capture.outbound.includeCidrs[${index}]`,
          }));
  const ports: { matches: Match[]; origin: string }[] =
    out.includePorts === 'all'
      ? [{ matches: [], origin: '' }]
      : chunkPorts(out.includePorts).map((chunk) => ({
          matches: [dport(chunk)],
          origin: 'capture.outbound.includePorts',
        }));
  return cidrs.flatMap((c) =>
    ports.map((p) => ({
      matches: [tcp, ...c.matches, ...p.matches],
      origin: [c.origin, p.origin].filter(Boolean).join(' × '),
    })),
  );
}

function addOutboundExclusions(b: FamilyBuilder, config: Config, table: Table, chain: string): void {
  const out = config.capture.outbound;
  for (const { cidr, index } of b.cidrs(out.excludeCidrs)) {
    b.add(
      table,
      chain,
      [{ kind: 'destination', cidr }],
      { kind: 'return' },
      'skip-cidr',
      `capture.outbound.excludeCidrs[${index}]`,
    );
  }
  out.excludePorts.forEach((range, i) =>
    b.add(table, chain, [tcp, dport([range])], { kind: 'return' }, 'skip-port', `capture.outbound.excludePorts[${i}]`),
  );
}

/** The outbound chain's first RETURNs and jumps: mid-stream flows, excluded interfaces, the inbound passthrough
 * source, and the proxy's own connections to a local address that inbound capture handles. */
function addOutboundSkips(b: FamilyBuilder, config: Config, chain: string, localInboundChain: string | null): void {
  const { capture: cap, proxy } = config;
  const lo: Match = { kind: 'outInterface', name: 'lo' };
  const notLocalhost: Match = { kind: 'destination', cidr: hostCidr(LOCALHOST[b.family]), negate: true };
  const { uid, gid } = proxy.user;

  addSkipMidstream(b, 'nat', chain);
  cap.excludeInterfaces.forEach((name, i) =>
    b.add(
      'nat',
      chain,
      [{ kind: 'outInterface', name }],
      { kind: 'return' },
      'skip-interface',
      `capture.excludeInterfaces[${i}]`,
    ),
  );
  b.add(
    'nat',
    chain,
    [{ kind: 'source', cidr: hostCidr(proxy.inboundPassthroughSource[b.family]) }, lo],
    { kind: 'return' },
    'skip-inbound-passthrough',
    'built-in (proxy inbound passthrough source)',
  );
  if (cap.inbound.enabled && cap.inbound.mode === 'tproxy') {
    b.add(
      'nat',
      chain,
      [{ kind: 'mark', value: cap.inbound.tproxyMark, mask: 0xffffffff }, lo],
      { kind: 'return' },
      'skip-inbound-transparent',
      'capture.inbound.tproxyMark (the proxy → local app from the peer address)',
    );
  }
  if (localInboundChain) {
    // With DNS capture the proxy forwards queries itself, to a resolver that may listen on an own address.
    const notDns: Match[] = cap.dns.enabled ? [dport([port(DNS_PORT)], true)] : [];
    b.add(
      'nat',
      chain,
      [notLocalhost, lo, tcp, ...notDns, { kind: 'uidOwner', uid }],
      { kind: 'jump', chain: localInboundChain },
      'proxy-to-own-address-inbound',
      'capture.inbound.enabled',
    );
    b.add(
      'nat',
      chain,
      [notLocalhost, lo, tcp, ...notDns, { kind: 'gidOwner', gid }],
      { kind: 'jump', chain: localInboundChain },
      'proxy-to-own-address-inbound',
      'capture.inbound.enabled',
    );
  }
}

/** What loopback and localhost traffic does: RETURNed on lo unless an include lists loopback, the proxy exempt. */
function addLoopbackRules(b: FamilyBuilder, config: Config, chain: string): void {
  const lo: Match = { kind: 'outInterface', name: 'lo' };
  const { uid, gid } = config.proxy.user;
  // Loopback in includeCidrs (127.0.0.0/8, ::1) means "capture it": like istio-iptables, the loopback RETURNs go, or
  // the include's REDIRECT would sit behind them and never match. Then apps' lo traffic goes on to the exclusions
  // and includes like any other (an app calling its own included address over lo is captured too). A listed
  // include holding 127.0.0.1 / ::1 also drops the localhost RETURN, except for the proxy's own ports (apps still
  // reach its admin and DNS ports directly). Without a loopback include the lo RETURNs and the proxy's exemption
  // decide every packet to 127.0.0.1 / ::1, so the localhost RETURN istio-iptables adds would be dead: not rendered.
  const loopback = loopbackIncludes(b, config);
  if (loopback.length === 0) {
    b.add(
      'nat',
      chain,
      [lo, { kind: 'uidOwner', uid, negate: true }],
      { kind: 'return' },
      'skip-loopback',
      'built-in (loopback)',
    );
    b.add(
      'nat',
      chain,
      [lo, { kind: 'gidOwner', gid, negate: true }],
      { kind: 'return' },
      'skip-loopback',
      'built-in (loopback)',
    );
  }
  addProxyExemption(b, config, 'nat', chain, []);
  const localhost = hostCidr(LOCALHOST[b.family]);
  const localhostIncluded = loopback.find((l) => cidrContains(l.cidr, parseIp(localhost.address)!));
  if (localhostIncluded) {
    b.add(
      'nat',
      chain,
      [{ kind: 'destination', cidr: localhost }, tcp, dport(ownPorts(config).map(port))],
      { kind: 'return' },
      'skip-localhost-proxy-ports',
      `capture.outbound.includeCidrs[${localhostIncluded.index}] (localhost included; the proxy's own ports stay direct)`,
    );
  } else if (loopback.length > 0) {
    // Only here: with the lo RETURNs in place every packet to 127.0.0.1 / ::1 is already decided (a dead rule).
    b.add(
      'nat',
      chain,
      [{ kind: 'destination', cidr: localhost }],
      { kind: 'return' },
      'skip-localhost',
      'built-in (localhost)',
    );
  }
}

function planOutbound(b: FamilyBuilder, config: Config, localInboundChain: string | null): void {
  const { capture: cap, proxy } = config;
  if (!cap.outbound.enabled) return;
  const chain = b.chain('nat', CHAINS.output);
  const redirect = b.chain('nat', CHAINS.redirect);
  addOutboundSkips(b, config, chain, localInboundChain);
  addLoopbackRules(b, config, chain);
  addOwnerExemptions(b, config, 'nat', chain, []);
  addOutboundExclusions(b, config, 'nat', chain);
  for (const include of outboundIncludes(b, config))
    b.add('nat', chain, include.matches, { kind: 'jump', chain: redirect }, 'outbound-to-proxy', include.origin);
  b.add(
    'nat',
    redirect,
    [tcp],
    { kind: 'redirect', toPort: proxy.outboundPort },
    'redirect-outbound',
    'proxy.outboundPort',
  );
  b.add('nat', 'OUTPUT', [tcp], { kind: 'jump', chain }, 'outbound-capture', 'capture.outbound.enabled');
}

interface DnsServer {
  readonly matches: Match[];
  readonly origin: string;
}

function dnsServers(b: FamilyBuilder, config: Config): DnsServer[] {
  const servers = config.capture.dns.servers;
  if (servers === 'all') return [{ matches: [], origin: 'capture.dns.enabled' }];
  return b
    .cidrs(servers)
    .map(({ cidr, index }) => ({ matches: [{ kind: 'destination', cidr }], origin: `capture.dns.servers[${index}]` }));
}

/**
 * DNS redirect (nat), UDP and TCP alike: its own chain, jumped to from OUTPUT before outbound capture, so that
 * loopback and local destinations (a stub resolver on 127.0.0.53) are captured over TCP exactly as over UDP.
 * Plus conntrack zones (raw) so the proxy's upstream queries never match apps' NAT entries.
 */
function planDns(b: FamilyBuilder, config: Config): void {
  const { dns } = config.capture;
  if (!dns.enabled) return;
  const servers = dnsServers(b, config);
  if (servers.length === 0) return;
  planDnsRedirect(b, config, servers);
  planDnsZones(b, config, servers);
}

/** The nat chain that redirects DNS queries (UDP and TCP) to the captured servers to the proxy's DNS port. */
function planDnsRedirect(b: FamilyBuilder, config: Config, servers: readonly DnsServer[]): void {
  const { dns } = config.capture;
  const chain = b.chain('nat', CHAINS.dns);
  addProxyExemption(b, config, 'nat', chain, []);
  addOwnerExemptions(b, config, 'nat', chain, []);
  for (const server of servers)
    b.add(
      'nat',
      chain,
      [udp, ...server.matches],
      { kind: 'redirect', toPort: dns.port },
      'dns-udp-to-proxy',
      server.origin,
    );
  for (const server of servers)
    b.add(
      'nat',
      chain,
      [tcp, ...server.matches],
      { kind: 'redirect', toPort: dns.port },
      'dns-tcp-to-proxy',
      server.origin,
    );
  b.add('nat', 'OUTPUT', [udp, dport([port(DNS_PORT)])], { kind: 'jump', chain }, 'dns-capture', 'capture.dns.enabled');
  b.add('nat', 'OUTPUT', [tcp, dport([port(DNS_PORT)])], { kind: 'jump', chain }, 'dns-capture', 'capture.dns.enabled');
}

/** Conntrack zones (raw): the proxy's upstream queries and their replies in one zone, apps' queries in another. */
function planDnsZones(b: FamilyBuilder, config: Config, servers: readonly DnsServer[]): void {
  const { dns } = config.capture;
  const { uid, gid } = config.proxy.user;
  const zoneOut = b.chain('raw', CHAINS.dnsZoneOut);
  const zonePre = b.chain('raw', CHAINS.dnsZonePre);
  const upstream: Target = { kind: 'ctZone', zone: DNS_ZONES.upstream };
  const app: Target = { kind: 'ctZone', zone: DNS_ZONES.app };
  // CT sets a packet's zone once; the first matching rule wins, so the proxy's own packets come first.
  b.add(
    'raw',
    zoneOut,
    [udp, dport([port(DNS_PORT)]), { kind: 'uidOwner', uid }],
    upstream,
    'dns-zone-proxy-query',
    'capture.dns.enabled',
  );
  b.add(
    'raw',
    zoneOut,
    [udp, { kind: 'sourcePort', ports: [port(dns.port)] }, { kind: 'uidOwner', uid }],
    app,
    'dns-zone-proxy-reply',
    'capture.dns.port',
  );
  b.add(
    'raw',
    zoneOut,
    [udp, dport([port(DNS_PORT)]), { kind: 'gidOwner', gid }],
    upstream,
    'dns-zone-proxy-query',
    'capture.dns.enabled',
  );
  b.add(
    'raw',
    zoneOut,
    [udp, { kind: 'sourcePort', ports: [port(dns.port)] }, { kind: 'gidOwner', gid }],
    app,
    'dns-zone-proxy-reply',
    'capture.dns.port',
  );
  for (const server of servers)
    b.add('raw', zoneOut, [udp, ...server.matches, dport([port(DNS_PORT)])], app, 'dns-zone-app-query', server.origin);
  // Only replies from the captured servers: an app's query to another server stays in zone 0, and so must its reply
  // (in zone 1 it would match no conntrack entry, and a stateful firewall would drop it).
  for (const server of servers) {
    const from: Match[] = server.matches.map((m) => (m.kind === 'destination' ? { kind: 'source', cidr: m.cidr } : m));
    b.add(
      'raw',
      zonePre,
      [udp, ...from, { kind: 'sourcePort', ports: [port(DNS_PORT)] }],
      upstream,
      'dns-zone-upstream-reply',
      server.origin,
    );
  }
  b.add('raw', 'OUTPUT', [udp], { kind: 'jump', chain: zoneOut }, 'dns-zones', 'capture.dns.enabled');
  b.add('raw', 'PREROUTING', [udp], { kind: 'jump', chain: zonePre }, 'dns-zones', 'capture.dns.enabled');
}

function planDropInvalid(b: FamilyBuilder, config: Config): void {
  if (!config.capture.dropInvalid) return;
  const chain = b.chain('mangle', CHAINS.dropInvalid);
  b.add(
    'mangle',
    chain,
    [{ kind: 'ctState', states: ['INVALID'] }],
    { kind: 'drop' },
    'drop-invalid',
    'capture.dropInvalid',
  );
  b.add('mangle', 'PREROUTING', [tcp], { kind: 'jump', chain }, 'drop-invalid', 'capture.dropInvalid');
}

/** IPv6 block: reject (tcp-reset) exactly the new TCP connections that intercept mode would have captured. */
function planBlock(b: FamilyBuilder, config: Config): void {
  const { capture: cap } = config;
  const reject: Target = { kind: 'reject', with: 'tcp-reset' };
  const notNew: Match = { kind: 'ctState', states: ['NEW'], negate: true };
  if (cap.outbound.enabled) {
    const chain = b.chain('filter', CHAINS.blockOut);
    addSkipMidstream(b, 'filter', chain);
    cap.excludeInterfaces.forEach((name, i) =>
      b.add(
        'filter',
        chain,
        [{ kind: 'outInterface', name }],
        { kind: 'return' },
        'skip-interface',
        `capture.excludeInterfaces[${i}]`,
      ),
    );
    b.add('filter', chain, [notNew], { kind: 'return' }, 'skip-established', 'built-in (established connections)');
    b.add(
      'filter',
      chain,
      [{ kind: 'outInterface', name: 'lo' }],
      { kind: 'return' },
      'skip-loopback',
      'built-in (loopback)',
    );
    addProxyExemption(b, config, 'filter', chain, []);
    addOwnerExemptions(b, config, 'filter', chain, []);
    addOutboundExclusions(b, config, 'filter', chain);
    for (const include of outboundIncludes(b, config, false))
      b.add(
        'filter',
        chain,
        include.matches,
        reject,
        'ipv6-block-outbound',
        `capture.ipv6 (block) × ${include.origin}`,
      );
    b.add('filter', 'OUTPUT', [tcp], { kind: 'jump', chain }, 'ipv6-block', 'capture.ipv6');
  }
  if (cap.inbound.enabled) {
    const chain = b.chain('filter', CHAINS.blockIn);
    addSkipMidstream(b, 'filter', chain);
    b.add('filter', chain, [notNew], { kind: 'return' }, 'skip-established', 'built-in (established connections)');
    b.add(
      'filter',
      chain,
      [{ kind: 'inInterface', name: 'lo' }],
      { kind: 'return' },
      'skip-loopback',
      'built-in (loopback)',
    );
    addInboundFilter(b, config, 'filter', chain, reject, 'ipv6-block-inbound');
    b.add('filter', 'INPUT', [tcp], { kind: 'jump', chain }, 'ipv6-block', 'capture.ipv6');
  }
}

/** What the plan depends on besides the config: the live host's units. */
export interface PlanOptions {
  /** Units of excludeUnits/includeUnits whose cgroup does not exist now (not running): their rules are left out. */
  readonly missingUnits?: ReadonlySet<string>;
}

function planFamily(config: Config, family: Family, options: PlanOptions): FamilyPlan {
  const b = new FamilyBuilder(family, options.missingUnits);
  if (family === 'ipv6' && config.capture.ipv6 === 'block') {
    planBlock(b, config);
    return b.plan();
  }
  planDropInvalid(b, config);
  planDns(b, config);
  const localInbound = planInbound(b, config);
  planOutbound(b, config, localInbound);
  return b.plan();
}

/**
 * Plans every rule, chain, policy route and loopback address the config needs (with every unit running, unless
 * `options.missingUnits` says otherwise). Pure; never throws for a valid Config.
 */
export function planCapture(config: Config, options: PlanOptions = {}): CapturePlan {
  const families: Family[] = config.capture.ipv6 === 'off' ? ['ipv4'] : ['ipv4', 'ipv6'];
  const plans = families.map((family) => planFamily(config, family, options));
  const tproxy = config.capture.inbound.enabled && config.capture.inbound.mode === 'tproxy';
  const intercepting = families.filter((f) => f === 'ipv4' || config.capture.ipv6 === 'intercept');
  const routes: PolicyRoute[] = tproxy
    ? intercepting.map((family) => ({
        family,
        mark: config.capture.inbound.tproxyMark,
        mask: 0xffffffff,
        table: config.capture.inbound.tproxyRouteTable,
        priority: 32000,
      }))
    : [];
  const loopbackAddresses: LoopbackAddress[] =
    config.capture.ipv6 === 'intercept' && config.capture.inbound.enabled
      ? [{ family: 'ipv6', cidr: hostCidr(config.proxy.inboundPassthroughSource.ipv6) }]
      : [];
  return { families: plans.filter((p) => p.rules.length > 0), routes, loopbackAddresses };
}
