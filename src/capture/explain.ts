// Walks a CapturePlan the way netfilter walks a new TCP/UDP connection's first packet and reports the verdict,
// every rule evaluated, and the rule (and config field) that decided. Pure; the CLI supplies host facts.
import type { CapturePlan, Family, FamilyPlan, Match, Rule, Table } from './model.js';
import { cidrContains, formatIp, isLoopback, parseIp, type IpAddress } from './ip.js';
import { renderRule } from './render-iptables.js';
import { portInRanges } from '../config/values.js';

export interface Endpoint {
  readonly address: string;
  readonly port?: number;
}

export interface Flow {
  readonly direction: 'outbound' | 'inbound';
  readonly protocol: 'tcp' | 'udp';
  readonly destination: Required<Endpoint>;
  /** Outbound: the socket's local address (default: chosen like the kernel would). Inbound: the peer. */
  readonly source?: Endpoint;
  /** Outbound only: the socket owner. */
  readonly uid?: number;
  readonly gid?: number;
  /** Inbound: the interface the packet arrives on. */
  readonly inInterface?: string;
  /** Outbound: the interface the route picks (default: lo for local destinations, else HostContext). */
  readonly outInterface?: string;
}

export interface HostContext {
  /** Addresses assigned to this host (traffic to them goes over lo). */
  readonly localAddresses: readonly string[];
  /** The source address and interface the host uses for a non-local destination, when known. */
  readonly route?: (destination: string) => { interface: string; source: string } | null;
}

export type Verdict = 'redirected' | 'tproxied' | 'bypassed' | 'rejected' | 'dropped';

export interface TraceStep {
  readonly table: Table;
  readonly chain: string;
  readonly rule: string;
  readonly purpose: string;
  readonly origin: string;
  readonly matched: boolean;
}

export interface Explanation {
  readonly intercepted: boolean;
  readonly toPort: number | null;
  readonly verdict: Verdict;
  readonly family: Family;
  /** What the packet looked like to the rules (defaults filled in). */
  readonly packet: { source: string | null; sourcePort: number | null; destination: string; destinationPort: number; inInterface: string | null; outInterface: string | null; uid: number | null; gid: number | null };
  readonly decidedBy: { purpose: string; origin: string; table: Table; chain: string; rule: string } | null;
  readonly reason: string;
  readonly assumptions: readonly string[];
  readonly trace: readonly TraceStep[];
}

interface Packet {
  family: Family;
  protocol: 'tcp' | 'udp';
  source: IpAddress | null;
  sourcePort: number | null;
  destination: IpAddress;
  destinationPort: number;
  inInterface: string | null;
  outInterface: string | null;
  uid: number | null;
  gid: number | null;
}

/** The built-in chain a new connection's first packet passes, per table, in hook order. */
const PATHS: Record<Flow['direction'], readonly (readonly [Table, string])[]> = {
  outbound: [['raw', 'OUTPUT'], ['mangle', 'OUTPUT'], ['nat', 'OUTPUT'], ['filter', 'OUTPUT']],
  inbound: [['raw', 'PREROUTING'], ['mangle', 'PREROUTING'], ['nat', 'PREROUTING'], ['filter', 'INPUT']],
};

function ipOrThrow(text: string, what: string): IpAddress {
  const ip = parseIp(text);
  if (!ip) throw new TypeError(`${what} "${text}" is not an IP address`);
  return ip;
}

function matches(match: Match, p: Packet): boolean {
  const result = ((): boolean => {
    switch (match.kind) {
      case 'protocol':
        return p.protocol === match.protocol;
      case 'source':
        return p.source !== null && cidrContains(match.cidr, p.source);
      case 'destination':
        return cidrContains(match.cidr, p.destination);
      case 'inInterface':
        return p.inInterface === match.name;
      case 'outInterface':
        return p.outInterface === match.name;
      case 'destinationPort':
        return portInRanges(p.destinationPort, match.ports);
      case 'sourcePort':
        return p.sourcePort !== null && portInRanges(p.sourcePort, match.ports);
      case 'uidOwner':
        return p.uid === match.uid;
      case 'gidOwner':
        return p.gid === match.gid;
      case 'ctState':
        return match.states.includes('NEW');
      case 'socketTransparent':
        return false; // a new connection has no established socket yet
      case 'tcpSyn':
        return p.protocol === 'tcp'; // the first packet of a new TCP connection is its SYN
      case 'mark':
        return (0 & match.mask) === match.value;
    }
  })();
  // Owner matches need a local socket; on the inbound path there is none, and negation does not make one.
  const ownerWithoutSocket = (match.kind === 'uidOwner' && p.uid === null) || (match.kind === 'gidOwner' && p.gid === null);
  if (ownerWithoutSocket) return false;
  return 'negate' in match && match.negate ? !result : result;
}

type Outcome =
  | { kind: 'terminal'; verdict: Verdict; toPort: number | null; rule: Rule }
  | { kind: 'accept'; rule: Rule }
  | { kind: 'return'; rule: Rule | null };

function walk(plan: FamilyPlan, table: Table, chain: string, p: Packet, trace: TraceStep[], stack: Rule[], returns: Rule[]): Outcome {
  for (const rule of plan.rules) {
    if (rule.table !== table || rule.chain !== chain) continue;
    const matched = rule.matches.every((m) => matches(m, p));
    trace.push({ table, chain, rule: renderRule(rule, plan.family), purpose: rule.purpose, origin: rule.origin, matched });
    if (!matched) continue;
    const t = rule.target;
    switch (t.kind) {
      case 'jump': {
        const outcome = walk(plan, table, t.chain, p, trace, [...stack, rule], returns);
        if (outcome.kind !== 'return') return outcome;
        continue;
      }
      case 'return':
        returns.push(rule);
        return { kind: 'return', rule };
      case 'accept':
        return { kind: 'accept', rule };
      case 'drop':
        return { kind: 'terminal', verdict: 'dropped', toPort: null, rule: decider(rule, stack) };
      case 'reject':
        return { kind: 'terminal', verdict: 'rejected', toPort: null, rule: decider(rule, stack) };
      case 'redirect':
        return { kind: 'terminal', verdict: 'redirected', toPort: t.toPort, rule: decider(rule, stack) };
      case 'tproxy':
        return { kind: 'terminal', verdict: 'tproxied', toPort: t.toPort, rule: decider(rule, stack) };
      case 'setMark':
      case 'ctZone':
        continue; // non-terminating targets
    }
  }
  return { kind: 'return', rule: null };
}

/** A terminal rule in a one-purpose chain (MESHCTL_REDIRECT) says less than the rule that jumped there. */
function decider(rule: Rule, stack: Rule[]): Rule {
  const caller = stack[stack.length - 1];
  return caller && !caller.chain.startsWith('MESHCTL_') ? rule : (caller ?? rule);
}

function describe(rule: Rule, plan: FamilyPlan) {
  return { purpose: rule.purpose, origin: rule.origin, table: rule.table, chain: rule.chain, rule: renderRule(rule, plan.family) };
}

/** Explains what the planned rules do with the first packet of `flow`. Throws TypeError for malformed addresses. */
export function explainFlow(plan: CapturePlan, flow: Flow, host: HostContext): Explanation {
  const destination = ipOrThrow(flow.destination.address, 'destination');
  const family = destination.family;
  const assumptions: string[] = [];
  const local = host.localAddresses.map((a) => parseIp(a)).filter((a): a is IpAddress => a !== null);
  const isLocal = isLoopback(destination) || local.some((a) => a.family === family && a.value === destination.value);

  let source: IpAddress | null = flow.source ? ipOrThrow(flow.source.address, 'source') : null;
  if (source && source.family !== family) throw new TypeError(`source ${flow.source!.address} and destination ${flow.destination.address} are of different address families`);
  let inInterface: string | null = null;
  let outInterface: string | null = null;
  if (flow.direction === 'outbound') {
    const route = isLocal ? null : (host.route?.(flow.destination.address) ?? null);
    outInterface = flow.outInterface ?? (isLocal ? 'lo' : (route?.interface ?? null));
    if (!flow.outInterface && !isLocal && !route) assumptions.push('outgoing interface unknown (no route); interface rules cannot match — pass --iface');
    if (!source) {
      if (isLoopback(destination)) source = parseIp(family === 'ipv4' ? '127.0.0.1' : '::1');
      else if (isLocal) source = destination;
      else if (route) source = parseIp(route.source);
      if (source) assumptions.push(`source address ${formatIp(source)} (as the kernel would pick; pass --src to override)`);
    }
  } else {
    inInterface = flow.inInterface ?? null;
    if (!inInterface) assumptions.push('arrival interface not given; interface rules cannot match — pass --iface');
    if (!source) assumptions.push('peer address not given; rules on the source address cannot match — pass --src');
  }

  const packet: Packet = {
    family,
    protocol: flow.protocol,
    source,
    sourcePort: flow.source?.port ?? null,
    destination,
    destinationPort: flow.destination.port,
    inInterface,
    outInterface,
    uid: flow.direction === 'outbound' ? (flow.uid ?? null) : null,
    gid: flow.direction === 'outbound' ? (flow.gid ?? flow.uid ?? null) : null,
  };
  if (flow.direction === 'outbound' && flow.uid === undefined) assumptions.push('socket owner unknown; uid/gid rules cannot match — pass --uid/--gid');

  const view = {
    source: source ? formatIp(source) : null,
    sourcePort: packet.sourcePort,
    destination: formatIp(destination),
    destinationPort: packet.destinationPort,
    inInterface,
    outInterface,
    uid: packet.uid,
    gid: packet.gid,
  };
  const familyPlan = plan.families.find((f) => f.family === family);
  if (!familyPlan) {
    return {
      intercepted: false, toPort: null, verdict: 'bypassed', family, packet: view, decidedBy: null, assumptions, trace: [],
      reason: `there are no ${family} rules (capture.ipv6 is "off"): this connection goes direct`,
    };
  }
  const trace: TraceStep[] = [];
  const returns: Rule[] = [];
  for (const [table, chain] of PATHS[flow.direction]) {
    const outcome = walk(familyPlan, table, chain, packet, trace, [], returns);
    if (outcome.kind === 'terminal') {
      const intercepted = outcome.verdict === 'redirected' || outcome.verdict === 'tproxied';
      const reason = intercepted
        ? `${outcome.verdict} to the proxy's port ${outcome.toPort} by meshctl:${outcome.rule.purpose} (${outcome.rule.origin})`
        : `${outcome.verdict} by meshctl:${outcome.rule.purpose} (${outcome.rule.origin})`;
      return { intercepted, toPort: outcome.toPort, verdict: outcome.verdict, family, packet: view, decidedBy: describe(outcome.rule, familyPlan), reason, assumptions, trace };
    }
  }
  const lastReturn = returns[returns.length - 1] ?? null;
  return {
    intercepted: false, toPort: null, verdict: 'bypassed', family, packet: view,
    decidedBy: lastReturn ? describe(lastReturn, familyPlan) : null,
    reason: lastReturn
      ? `not captured: meshctl:${lastReturn.purpose} (${lastReturn.origin}) returned it; it goes direct`
      : 'not captured: no capture rule matched (check the include lists); it goes direct',
    assumptions, trace,
  };
}
