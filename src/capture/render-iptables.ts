// Renders a FamilyPlan as iptables-restore input (one `*table … COMMIT` section per table). Pure; no I/O.
// The same text serves iptables-legacy and iptables-nft: both read the iptables-restore format.
import type { FamilyPlan, Match, Rule, Target, Table } from './model.js';
import type { PortRange } from '../values/ports.js';
import { BUILTIN_CHAINS, COMMENT_PREFIX, TABLES } from './model.js';
import { cidrText } from '../values/ip.js';

const not = (negate: boolean | undefined): string => (negate ? '! ' : '');

function portsText(ranges: readonly PortRange[]): string {
  return ranges.map((r) => (r.from === r.to ? String(r.from) : `${r.from}:${r.to}`)).join(',');
}

function hex(n: number): string {
  return `0x${n.toString(16)}`;
}

function renderPorts(flag: 'dport' | 'sport', ranges: readonly PortRange[], negate: boolean | undefined): string {
  const single = ranges.length === 1 && ranges[0] !== undefined;
  return single
    ? `${not(negate)}--${flag} ${portsText(ranges)}`
    : `-m multiport ${not(negate)}--${flag}s ${portsText(ranges)}`;
}

/** Matches that live in the fixed ipt_entry header come first, as iptables-save prints them. */
const MATCH_ORDER: Record<Match['kind'], number> = {
  source: 0,
  destination: 1,
  inInterface: 2,
  outInterface: 3,
  protocol: 4,
  destinationPort: 5,
  sourcePort: 6,
  tcpSyn: 7,
  uidOwner: 8,
  gidOwner: 9,
  cgroup: 9.5,
  ctState: 10,
  socketTransparent: 11,
  mark: 12,
  connmark: 13,
};

function renderMatch(match: Match): string {
  switch (match.kind) {
    case 'protocol':
      return `${not(match.negate)}-p ${match.protocol}`;
    case 'source':
      return `${not(match.negate)}-s ${cidrText(match.cidr)}`;
    case 'destination':
      return `${not(match.negate)}-d ${cidrText(match.cidr)}`;
    case 'inInterface':
      return `${not(match.negate)}-i ${match.name}`;
    case 'outInterface':
      return `${not(match.negate)}-o ${match.name}`;
    case 'destinationPort':
      return renderPorts('dport', match.ports, match.negate);
    case 'sourcePort':
      return renderPorts('sport', match.ports, match.negate);
    case 'uidOwner':
      return `-m owner ${not(match.negate)}--uid-owner ${match.uid}`;
    case 'gidOwner':
      return `-m owner ${not(match.negate)}--gid-owner ${match.gid}${match.suppl ? ' --suppl-groups' : ''}`;
    case 'ctState':
      return `-m conntrack ${not(match.negate)}--ctstate ${match.states.join(',')}`;
    case 'socketTransparent':
      return '-m socket --transparent';
    case 'cgroup':
      // Quoted as iptables-save prints it; unit names (src/values/systemd-unit.ts) never hold a quote or a space.
      return `-m cgroup ${not(match.negate)}--path "${match.path}"`;
    case 'tcpSyn':
      return `${not(match.negate)}--syn`;
    case 'mark':
      return `-m mark ${not(match.negate)}--mark ${hex(match.value)}/${hex(match.mask)}`;
    case 'connmark':
      return `-m connmark ${not(match.negate)}--mark ${hex(match.value)}/${hex(match.mask)}`;
  }
}

function renderTarget(target: Target, family: FamilyPlan['family']): string {
  switch (target.kind) {
    case 'jump':
      return `-j ${target.chain}`;
    case 'return':
      return '-j RETURN';
    case 'accept':
      return '-j ACCEPT';
    case 'drop':
      return '-j DROP';
    case 'reject':
      return `-j REJECT --reject-with ${target.with}`;
    case 'redirect':
      return `-j REDIRECT --to-ports ${target.toPort}`;
    case 'tproxy':
      return `-j TPROXY --on-port ${target.toPort} --on-ip ${family === 'ipv4' ? '0.0.0.0' : '::'} --tproxy-mark ${hex(target.mark)}/${hex(target.mask)}`;
    case 'setMark':
      return `-j MARK --set-xmark ${hex(target.value)}/${hex(target.mask)}`;
    case 'setConnmark':
      return `-j CONNMARK --set-xmark ${hex(target.value)}/${hex(target.mask)}`;
    case 'ctZone':
      return `-j CT --zone ${target.zone}`;
  }
}

/** The arguments after `-A CHAIN`: matches, the ownership comment, the target. */
export function renderRule(rule: Rule, family: FamilyPlan['family']): string {
  const matches = [...rule.matches].sort((a, b) => MATCH_ORDER[a.kind] - MATCH_ORDER[b.kind]).map(renderMatch);
  return [
    ...matches,
    `-m comment --comment "${COMMENT_PREFIX}${rule.purpose}"`,
    renderTarget(rule.target, family),
  ].join(' ');
}

/** The tables a plan touches, in iptables-save order. */
function planTables(plan: FamilyPlan): Table[] {
  return TABLES.filter((t) => plan.chains.some((c) => c.table === t) || plan.rules.some((r) => r.table === t));
}

/**
 * Renders the complete iptables-restore input for a fresh install of one family (use with --noflush):
 * chain declarations, the rules of our chains, then the jumps appended to built-in chains.
 */
export function renderIptablesRestore(plan: FamilyPlan): string {
  const lines = [
    `# meshctl capture plan (${plan.family}); feed to ${plan.family === 'ipv4' ? 'iptables' : 'ip6tables'}-restore --noflush`,
  ];
  for (const table of planTables(plan)) {
    lines.push(`*${table}`);
    const chains = plan.chains.filter((c) => c.table === table);
    for (const chain of chains) lines.push(`:${chain.name} - [0:0]`);
    for (const chain of chains) {
      for (const rule of plan.rules)
        if (rule.table === table && rule.chain === chain.name)
          lines.push(`-A ${rule.chain} ${renderRule(rule, plan.family)}`);
    }
    for (const builtin of BUILTIN_CHAINS[table]) {
      for (const rule of plan.rules)
        if (rule.table === table && rule.chain === builtin)
          lines.push(`-A ${rule.chain} ${renderRule(rule, plan.family)}`);
    }
    lines.push('COMMIT');
  }
  return `${lines.join('\n')}\n`;
}
