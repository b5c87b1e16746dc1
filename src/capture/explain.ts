// Walks a CapturePlan the way netfilter walks a new TCP/UDP connection's first packet and reports the verdict,
// every rule evaluated, and the rule (and config field) that decided. Pure; the CLI supplies host facts.
// The plan is either the config's (planCapture) or the kernel's (live-plan.ts): the kernel's also holds foreign
// rules, the hook chains in the order the kernel runs them, and chain policies.
import type { CapturePlan, FamilyPlan, Match, Rule, Table } from './model.js';
import type { Family } from '../values/ip.js';
import { cidrContains, formatIp, isLoopback, parseIp, type IpAddress } from '../values/ip.js';
import { renderRule } from './render-iptables.js';
import { portInRanges } from '../values/ports.js';
import { cgroupWithin } from '../values/systemd-unit.js';

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
  /** Outbound only: the owner's supplementary groups (what `--suppl-groups` also matches). */
  readonly groups?: readonly number[];
  /** Outbound only: the cgroup v2 path of the process that made the socket (a unit's, for `explain --unit`). */
  readonly cgroup?: string;
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

/** Whose a kernel rule is: meshctl's and recorded by the install, meshctl's but not recorded, or someone else's. */
export type RuleOwner = 'meshctl' | 'unrecorded' | 'foreign';

/** What explain knows about a rule read from the kernel. */
export interface KernelRuleFacts {
  readonly owner: RuleOwner;
  /** The rule as the kernel lists it: iptables-save arguments after `-A CHAIN`, or the nft rule. */
  readonly text: string;
  /**
   * For a rule outside the model: `continue` (no verdict: LOG, counters), `nat` (someone else's DNAT rewrites the
   * destination, so later NAT rules never see the connection), `unevaluable` (explain assumes it does not match and
   * says so). `why` names what is outside the model (`-m addrtype`, `goto`).
   */
  readonly effect?: { readonly kind: 'continue' | 'nat' | 'unevaluable'; readonly why: string };
}

/** A rule as explain walks it: planned from the config, or read from the kernel (then `kernel` is set). */
export interface ExplainRule extends Rule {
  readonly kernel?: KernelRuleFacts;
}

/** A chain the kernel enters on its own (an iptables built-in chain, an nft base chain), in the order it runs. */
export interface HookEntry {
  readonly table: Table;
  readonly chain: string;
  /** What happens to a packet that reaches the end of the chain (or a RETURN in it). */
  readonly policy: 'accept' | 'drop';
}

export interface ExplainFamilyPlan extends FamilyPlan {
  readonly rules: readonly ExplainRule[];
  /** The chains the kernel enters per direction, in order; default: the iptables built-in chains (PATHS). */
  readonly entries?: { readonly outbound: readonly HookEntry[]; readonly inbound: readonly HookEntry[] };
}

/** A CapturePlan, optionally with kernel facts: foreign rules, unrecorded rules, hook order and policies. */
export interface ExplainPlan extends CapturePlan {
  readonly families: readonly ExplainFamilyPlan[];
  /** `kernel` when read from the kernel (live-plan.ts): then every family read is present, even without rules. */
  readonly source?: 'kernel' | 'config';
}

export interface TraceStep {
  readonly table: Table;
  readonly chain: string;
  readonly rule: string;
  readonly purpose: string;
  readonly origin: string;
  readonly matched: boolean;
  /** Kernel plans only: whose rule it is. */
  readonly owner?: RuleOwner;
  /** False for a rule outside the model, which explain could not evaluate (it assumed no match). */
  readonly evaluated?: boolean;
}

export interface Explanation {
  readonly intercepted: boolean;
  readonly toPort: number | null;
  readonly verdict: Verdict;
  readonly family: Family;
  /** What the packet looked like to the rules (defaults filled in). */
  readonly packet: {
    source: string | null;
    sourcePort: number | null;
    destination: string;
    destinationPort: number;
    inInterface: string | null;
    outInterface: string | null;
    uid: number | null;
    gid: number | null;
    /** The socket's cgroup (a unit's), when the flow gives one. */
    cgroup?: string;
  };
  readonly decidedBy: {
    purpose: string;
    origin: string;
    table: Table;
    chain: string;
    rule: string;
    owner?: RuleOwner;
  } | null;
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
  groups: readonly number[];
  cgroup: string | null;
}

/** The built-in chain a new connection's first packet passes, per table, in hook order. */
export const PATHS: Record<Flow['direction'], readonly (readonly [Table, string])[]> = {
  outbound: [
    ['raw', 'OUTPUT'],
    ['mangle', 'OUTPUT'],
    ['nat', 'OUTPUT'],
    ['filter', 'OUTPUT'],
  ],
  inbound: [
    ['raw', 'PREROUTING'],
    ['mangle', 'PREROUTING'],
    ['nat', 'PREROUTING'],
    ['filter', 'INPUT'],
  ],
};

function ipOrThrow(text: string, what: string): IpAddress {
  const ip = parseIp(text);
  if (!ip) throw new TypeError(`${what} "${text}" is not an IP address`);
  return ip;
}

/** iptables' `eth+` matches every name starting with `eth`. */
function interfaceIs(actual: string | null, name: string): boolean {
  if (actual === null) return false;
  return name.endsWith('+') ? actual.startsWith(name.slice(0, -1)) : actual === name;
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
        return interfaceIs(p.inInterface, match.name);
      case 'outInterface':
        return interfaceIs(p.outInterface, match.name);
      case 'destinationPort':
        return portInRanges(p.destinationPort, match.ports);
      case 'sourcePort':
        return p.sourcePort !== null && portInRanges(p.sourcePort, match.ports);
      case 'uidOwner':
        return p.uid === match.uid;
      case 'gidOwner':
        return p.gid === match.gid || (match.suppl === true && p.groups.includes(match.gid));
      case 'ctState':
        return match.states.includes('NEW');
      case 'socketTransparent':
        return false; // a new connection has no established socket yet
      case 'cgroup':
        // A rule read back with only a cgroup id names a cgroup that no longer exists: no socket is in it.
        return p.cgroup !== null && match.id === undefined && cgroupWithin(p.cgroup, match.path);
      case 'tcpSyn':
        return p.protocol === 'tcp'; // the first packet of a new TCP connection is its SYN
      case 'mark':
      case 'connmark':
        return (0 & match.mask) === match.value; // a new connection's packet and its conntrack entry carry no mark
    }
  })();
  // Owner matches need a local socket; on the inbound path there is none, and negation does not make one.
  const ownerWithoutSocket =
    (match.kind === 'uidOwner' && p.uid === null) ||
    (match.kind === 'gidOwner' && p.gid === null) ||
    (match.kind === 'cgroup' && p.cgroup === null);
  if (ownerWithoutSocket) return false;
  return 'negate' in match && match.negate ? !result : result;
}

type Outcome =
  | { kind: 'terminal'; verdict: Verdict; toPort: number | null; rule: ExplainRule }
  | { kind: 'nat'; rule: ExplainRule }
  | { kind: 'accept'; rule: ExplainRule }
  | { kind: 'return'; rule: ExplainRule | null };

/** One chain being walked: its rules and the index of the rule being evaluated (for what a verdict skips). */
interface Frame {
  readonly rules: readonly ExplainRule[];
  index: number;
}

/** Jumps deeper than this are a loop the kernel would have refused; stop instead of recursing forever. */
const MAX_DEPTH = 64;

class Walker {
  readonly trace: TraceStep[] = [];
  readonly returns: ExplainRule[] = [];
  /** Foreign rules that ended a chain before meshctl rules in it (or its callers) were reached. */
  readonly preempted: { rule: ExplainRule; skipped: ExplainRule }[] = [];
  readonly unevaluated: ExplainRule[] = [];
  private readonly chains = new Map<string, ExplainRule[]>();

  constructor(
    readonly plan: ExplainFamilyPlan,
    private readonly p: Packet,
  ) {
    for (const rule of plan.rules) {
      const key = chainKey(rule.table, rule.chain);
      const list = this.chains.get(key);
      if (list) list.push(rule);
      else this.chains.set(key, [rule]);
    }
  }

  walk(table: Table, chain: string, stack: ExplainRule[], frames: Frame[]): Outcome {
    const rules = this.chains.get(chainKey(table, chain)) ?? [];
    const frame: Frame = { rules, index: 0 };
    for (; frame.index < rules.length; frame.index++) {
      const rule = rules[frame.index]!;
      const effect = rule.kernel?.effect;
      if (effect?.kind === 'unevaluable') {
        this.trace.push({ ...step(rule, this.plan), matched: false, evaluated: false });
        this.unevaluated.push(rule);
        continue;
      }
      const matched = rule.matches.every((m) => matches(m, this.p));
      this.trace.push({ ...step(rule, this.plan), matched });
      if (!matched || effect?.kind === 'continue') continue;
      if (effect?.kind === 'nat') return { kind: 'nat', rule };
      const t = rule.target;
      switch (t.kind) {
        case 'jump': {
          if (stack.length >= MAX_DEPTH) return { kind: 'return', rule: null };
          const outcome = this.walk(table, t.chain, [...stack, rule], [...frames, frame]);
          if (outcome.kind !== 'return') return outcome;
          continue;
        }
        case 'return':
          // RETURN in a hook chain ends it (the policy applies); in a jumped-to chain it resumes the caller.
          if (stack.length === 0) this.notePreempted(rule, [frame]);
          this.returns.push(rule);
          return { kind: 'return', rule };
        case 'accept':
          this.notePreempted(rule, [...frames, frame]);
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
        case 'setConnmark':
        case 'ctZone':
          continue; // non-terminating targets
      }
    }
    return { kind: 'return', rule: null };
  }

  /** A foreign verdict that ends chains still holding meshctl rules decides instead of them. */
  private notePreempted(rule: ExplainRule, frames: readonly Frame[]): void {
    if (rule.kernel?.owner !== 'foreign') return;
    for (const f of frames) {
      const skipped = f.rules.slice(f.index + 1).find((r) => r.kernel?.owner !== 'foreign');
      if (skipped) {
        this.preempted.push({ rule, skipped });
        return;
      }
    }
  }
}

const chainKey = (table: Table, chain: string): string => `${table}\u0000${chain}`;

function ruleText(rule: ExplainRule, plan: FamilyPlan): string {
  return rule.kernel?.text ?? renderRule(rule, plan.family);
}

function step(rule: ExplainRule, plan: FamilyPlan): Omit<TraceStep, 'matched'> {
  return {
    table: rule.table,
    chain: rule.chain,
    rule: ruleText(rule, plan),
    purpose: rule.purpose,
    origin: rule.origin,
    ...(rule.kernel ? { owner: rule.kernel.owner, evaluated: true } : {}),
  };
}

/** A terminal rule in a one-purpose chain (MESHCTL_REDIRECT) says less than the rule that jumped there. */
function decider(rule: ExplainRule, stack: ExplainRule[]): ExplainRule {
  if (rule.kernel?.owner === 'foreign') return rule;
  const caller = stack[stack.length - 1];
  return caller && !caller.chain.startsWith('MESHCTL_') ? rule : (caller ?? rule);
}

function describe(rule: ExplainRule, plan: FamilyPlan): NonNullable<Explanation['decidedBy']> {
  return {
    purpose: rule.purpose,
    origin: rule.origin,
    table: rule.table,
    chain: rule.chain,
    rule: ruleText(rule, plan),
    ...(rule.kernel ? { owner: rule.kernel.owner } : {}),
  };
}

/** How a reason names a rule: `meshctl:<purpose> (<origin>)`, or a foreign rule by its place and text. */
function nameRule(rule: ExplainRule, plan: FamilyPlan): string {
  if (rule.kernel?.owner === 'foreign')
    return `a foreign rule in ${rule.table} ${rule.chain} (${ruleText(rule, plan)})`;
  const unrecorded = rule.kernel?.owner === 'unrecorded' ? ', not recorded by the install' : '';
  return `meshctl:${rule.purpose} (${rule.origin}${unrecorded})`;
}

function entriesOf(plan: ExplainFamilyPlan, direction: Flow['direction']): readonly HookEntry[] {
  return (
    plan.entries?.[direction] ?? PATHS[direction].map(([table, chain]) => ({ table, chain, policy: 'accept' as const }))
  );
}

/** A stand-in rule for a chain policy that decided, so decidedBy and the trace can name it. */
function policyRule(entry: HookEntry): ExplainRule {
  return {
    table: entry.table,
    chain: entry.chain,
    matches: [],
    target: { kind: 'drop' },
    purpose: 'policy',
    origin: `the ${entry.chain} chain's policy`,
    kernel: { owner: 'foreign', text: `policy ${entry.policy}` },
  };
}

/** The verdict part of an Explanation: everything but the packet, the assumptions and the trace. */
interface Decision {
  readonly intercepted: boolean;
  readonly toPort: number | null;
  readonly verdict: Verdict;
  readonly decidedBy: Explanation['decidedBy'];
  readonly reason: string;
  /** Notes about what explain did not evaluate, after the assumptions. */
  readonly notes?: readonly string[];
}

/** Explains what the planned rules do with the first packet of `flow`. Throws TypeError for malformed addresses. */
export function explainFlow(plan: ExplainPlan, flow: Flow, host: HostContext): Explanation {
  const { packet, assumptions } = packetOf(flow, host);
  const family = packet.family;
  const explanation = (d: Decision, notes: readonly string[], trace: readonly TraceStep[]): Explanation => ({
    intercepted: d.intercepted,
    toPort: d.toPort,
    verdict: d.verdict,
    family,
    packet: viewOf(packet),
    decidedBy: d.decidedBy,
    reason: d.reason,
    assumptions: [...notes, ...(d.notes ?? [])],
    trace,
  });
  const familyPlan = plan.families.find((f) => f.family === family);
  if (!familyPlan) {
    const reason =
      plan.source === 'kernel'
        ? `the ${family} rules could not be read from the kernel: explain cannot say what happens to this connection`
        : `there are no ${family} rules (capture.ipv6 is "off"): this connection goes direct`;
    return explanation(
      { intercepted: false, toPort: null, verdict: 'bypassed', decidedBy: null, reason },
      assumptions,
      [],
    );
  }
  const walker = new Walker(familyPlan, packet);
  if (packet.cgroup === null && familyPlan.rules.some((r) => r.matches.some((m) => m.kind === 'cgroup')))
    assumptions.push(
      "the socket's cgroup is unknown; unit rules (excludeUnits/includeUnits) cannot match — pass --unit",
    );
  const entries = entriesOf(familyPlan, flow.direction);
  const notes = (): string[] => [...assumptions, ...unevaluatedNotes(walker, familyPlan)];
  for (const [index, entry] of entries.entries()) {
    const decided = decisionOf(
      walker.walk(entry.table, entry.chain, [], []),
      entry,
      entries.slice(index + 1),
      familyPlan,
    );
    if (decided) return explanation(decided, notes(), walker.trace);
  }
  return explanation(undecided(walker, plan, familyPlan), notes(), walker.trace);
}

/** The packet the flow's first packet is, with what explain assumed where the flow does not say. */
function packetOf(flow: Flow, host: HostContext): { packet: Packet; assumptions: string[] } {
  const destination = ipOrThrow(flow.destination.address, 'destination');
  const family = destination.family;
  const given = flow.source ? ipOrThrow(flow.source.address, 'source') : null;
  if (given && given.family !== family)
    throw new TypeError(
      `source ${flow.source!.address} and destination ${flow.destination.address} are of different address families`,
    );
  const assumptions: string[] = [];
  let source = given;
  let inInterface: string | null = null;
  let outInterface: string | null = null;
  if (flow.direction === 'outbound') {
    ({ source, outInterface } = outboundRoute(flow, host, destination, given, assumptions));
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
    groups: flow.direction === 'outbound' ? (flow.groups ?? []) : [],
    cgroup: flow.direction === 'outbound' ? (flow.cgroup ?? null) : null,
  };
  if (flow.direction === 'outbound' && flow.uid === undefined)
    assumptions.push('socket owner unknown; uid/gid rules cannot match — pass --uid/--gid');
  return { packet, assumptions };
}

/** Outbound: the interface and source address the kernel would pick (lo for local destinations), unless given. */
function outboundRoute(
  flow: Flow,
  host: HostContext,
  destination: IpAddress,
  given: IpAddress | null,
  assumptions: string[],
): { source: IpAddress | null; outInterface: string | null } {
  const local = host.localAddresses.map((a) => parseIp(a)).filter((a): a is IpAddress => a !== null);
  const isLocal =
    isLoopback(destination) || local.some((a) => a.family === destination.family && a.value === destination.value);
  const route = isLocal ? null : (host.route?.(flow.destination.address) ?? null);
  const outInterface = flow.outInterface ?? (isLocal ? 'lo' : (route?.interface ?? null));
  if (!flow.outInterface && !isLocal && !route)
    assumptions.push('outgoing interface unknown (no route); interface rules cannot match — pass --iface');
  let source = given;
  if (!source) {
    if (isLoopback(destination)) source = parseIp(destination.family === 'ipv4' ? '127.0.0.1' : '::1');
    else if (isLocal) source = destination;
    else if (route) source = parseIp(route.source);
    if (source)
      assumptions.push(`source address ${formatIp(source)} (as the kernel would pick; pass --src to override)`);
  }
  return { source, outInterface };
}

function viewOf(packet: Packet): Explanation['packet'] {
  return {
    source: packet.source ? formatIp(packet.source) : null,
    sourcePort: packet.sourcePort,
    destination: formatIp(packet.destination),
    destinationPort: packet.destinationPort,
    inInterface: packet.inInterface,
    outInterface: packet.outInterface,
    uid: packet.uid,
    gid: packet.gid,
    ...(packet.cgroup !== null ? { cgroup: packet.cgroup } : {}),
  };
}

/** One note per rule outside the model that the walk met (each once): explain assumed it does not match. */
function unevaluatedNotes(walker: Walker, plan: FamilyPlan): string[] {
  const seen = new Set<ExplainRule>();
  return walker.unevaluated
    .filter((r) => !seen.has(r) && seen.add(r))
    .map(
      (r) =>
        `${r.kernel?.owner === 'foreign' ? 'foreign' : `meshctl:${r.purpose}`} rule in ${r.table} ${r.chain} could not be evaluated (${r.kernel?.effect?.why}); assumed not to match: ${ruleText(r, plan)}`,
    );
}

/** What walking one hook chain decided: a verdict, someone's NAT, the chain's drop policy; null to go on. */
function decisionOf(
  outcome: Outcome,
  entry: HookEntry,
  later: readonly HookEntry[],
  plan: ExplainFamilyPlan,
): Decision | null {
  if (outcome.kind === 'terminal') {
    const intercepted = outcome.verdict === 'redirected' || outcome.verdict === 'tproxied';
    const reason = intercepted
      ? `${outcome.verdict} to the proxy's port ${outcome.toPort} by ${nameRule(outcome.rule, plan)}`
      : `${outcome.verdict} by ${nameRule(outcome.rule, plan)}`;
    // After a NAT binding exists, later NAT chains on the hook are skipped; other chains still see the packet.
    const after = later
      .filter((e) => !(outcome.verdict === 'redirected' && e.table === 'nat'))
      .filter(
        (e) =>
          e.policy === 'drop' ||
          plan.rules.some((r) => r.table === e.table && r.chain === e.chain && r.kernel?.owner === 'foreign'),
      );
    const notes =
      intercepted && after.length > 0
        ? [
            `foreign rules in ${after.map((e) => `${e.table} ${e.chain}`).join(', ')} run after the redirect (they see the proxy's port) and were not evaluated`,
          ]
        : [];
    return {
      intercepted,
      toPort: outcome.toPort,
      verdict: outcome.verdict,
      decidedBy: describe(outcome.rule, plan),
      reason,
      notes,
    };
  }
  if (outcome.kind === 'nat') {
    return {
      intercepted: false,
      toPort: null,
      verdict: 'bypassed',
      decidedBy: describe(outcome.rule, plan),
      reason: `not captured: ${nameRule(outcome.rule, plan)} rewrites the destination (${outcome.rule.kernel?.effect?.why}); it goes there instead`,
    };
  }
  if (outcome.kind === 'return' && entry.policy === 'drop') {
    return {
      intercepted: false,
      toPort: null,
      verdict: 'dropped',
      decidedBy: describe(policyRule(entry), plan),
      reason: `dropped by the policy of ${entry.table} ${entry.chain} (no rule in it accepted the connection)`,
    };
  }
  return null;
}

/** No chain decided: a foreign rule ended ours early, one of ours returned it, or nothing applied. */
function undecided(walker: Walker, plan: ExplainPlan, familyPlan: ExplainFamilyPlan): Decision {
  const preempted = walker.preempted[0];
  if (preempted) {
    const verb = preempted.rule.target.kind === 'accept' ? 'accepted' : 'returned';
    return {
      intercepted: false,
      toPort: null,
      verdict: 'bypassed',
      decidedBy: describe(preempted.rule, familyPlan),
      reason: `not captured: ${nameRule(preempted.rule, familyPlan)} ${verb} it before meshctl:${preempted.skipped.purpose} was reached; it goes direct`,
    };
  }
  const lastReturn = walker.returns.filter((r) => r.kernel?.owner !== 'foreign').at(-1) ?? null;
  const noneOfOurs = plan.source === 'kernel' && !walker.trace.some((t) => t.owner !== 'foreign');
  return {
    intercepted: false,
    toPort: null,
    verdict: 'bypassed',
    decidedBy: lastReturn ? describe(lastReturn, familyPlan) : null,
    reason: lastReturn
      ? `not captured: ${nameRule(lastReturn, familyPlan)} returned it; it goes direct`
      : noneOfOurs
        ? `not captured: no meshctl ${familyPlan.family} rule in the kernel applies to it; it goes direct`
        : 'not captured: no capture rule matched (check the include lists); it goes direct',
  };
}
