// Normalises rules and compares a planned family against what iptables-save reports: drift, status and verify.
// Pure. Identity is semantic (match order, port lists, CIDR spelling and counters do not matter) plus the comment.
import { cidrText } from '../values/ip.js';
import { normalCgroupPath } from '../values/systemd-unit.js';
import {
  BUILTIN_CHAINS,
  COMMENT_PREFIX,
  TABLES,
  isOwnedChain,
  type ChainDecl,
  type FamilyPlan,
  type Match,
  type Rule,
  type Table,
  type Target,
} from './model.js';
import { type Family } from '../values/ip.js';
import { type PortRange } from '../values/ports.js';
import { isOwnedRule, type SaveDump, type SavedRule, type SavedRuleShape } from './parse-save.js';

/**
 * One family's drift as rule objects (for the xtables driver and tests). Not a DriftReport: that is the
 * backend-neutral text every driver produces (nftables compares listings and has no rule objects to hold).
 */
export interface FamilyDiff {
  readonly family: Family;
  readonly inSync: boolean;
  readonly missingChains: readonly ChainDecl[];
  readonly extraChains: readonly ChainDecl[];
  /** Planned, absent from the kernel. */
  readonly missing: readonly Rule[];
  /** Ours in the kernel (MESHCTL_ chain, meshctl: comment, or a jump into our chain), not planned. */
  readonly extra: readonly SavedRule[];
  /** Per chain whose common rules appear in another order: the full planned and actual ruleKey lists. */
  readonly outOfOrder: readonly {
    readonly table: Table;
    readonly chain: string;
    readonly expected: readonly string[];
    readonly actual: readonly string[];
  }[];
}

/** Sorts and merges overlapping or adjacent ranges: `80,81,8000:8080,8005` → `80:81,8000:8080`. */
export function normalizePorts(ports: readonly PortRange[]): PortRange[] {
  const sorted = [...ports].sort((a, b) => a.from - b.from || a.to - b.to);
  const out: PortRange[] = [];
  for (const range of sorted) {
    const last = out[out.length - 1];
    if (last && range.from <= last.to + 1) out[out.length - 1] = { from: last.from, to: Math.max(last.to, range.to) };
    else out.push({ ...range });
  }
  return out;
}

const hex = (n: number): string => `0x${(n >>> 0).toString(16)}`;
const portsText = (ports: readonly PortRange[]): string =>
  normalizePorts(ports)
    .map((r) => (r.from === r.to ? `${r.from}` : `${r.from}:${r.to}`))
    .join(',');

/** One match as canonical text, or null when it matches everything (iptables-save drops `-d 0.0.0.0/0`). */
function matchKey(match: Match): string | null {
  const not = 'negate' in match && match.negate ? '!' : '';
  switch (match.kind) {
    case 'protocol':
      return `${not}protocol=${match.protocol}`;
    case 'source':
    case 'destination':
      if (match.cidr.prefix === 0 && !not) return null;
      return `${not}${match.kind}=${cidrText(match.cidr)}`;
    case 'inInterface':
    case 'outInterface':
      return `${not}${match.kind}=${match.name}`;
    case 'destinationPort':
    case 'sourcePort':
      return `${not}${match.kind}=${portsText(match.ports)}`;
    case 'uidOwner':
      return `${not}uidOwner=${match.uid}`;
    case 'gidOwner':
      return `${not}gidOwner=${match.gid}${match.suppl ? '+suppl' : ''}`;
    case 'ctState':
      return `${not}ctState=${[...new Set(match.states)].sort().join(',')}`;
    case 'socketTransparent':
      return 'socketTransparent';
    case 'cgroup':
      return match.id !== undefined ? `${not}cgroupId=${match.id}` : `${not}cgroup=${normalCgroupPath(match.path)}`;
    case 'tcpSyn':
      return `${not}tcpSyn`;
    case 'mark':
      return `${not}mark=${hex(match.value & match.mask)}/${hex(match.mask)}`;
    case 'connmark':
      return `${not}connmark=${hex(match.value & match.mask)}/${hex(match.mask)}`;
  }
}

function targetKey(target: Target): string {
  switch (target.kind) {
    case 'jump':
      return `jump:${target.chain}`;
    case 'return':
    case 'accept':
    case 'drop':
      return target.kind;
    case 'reject':
      return `reject:${target.with}`;
    case 'redirect':
      return `redirect:${target.toPort}`;
    case 'tproxy':
      return `tproxy:${target.toPort}:${hex(target.mark)}/${hex(target.mask)}`;
    case 'setMark':
      return `setMark:${hex(target.value)}/${hex(target.mask)}`;
    case 'setConnmark':
      return `setConnmark:${hex(target.value)}/${hex(target.mask)}`;
    case 'ctZone':
      return `ctZone:${target.zone}`;
  }
}

/** Bare keys of the matches, sorted by kind then value (`!` is ignored for ordering so a match sorts by kind). */
function sortedMatchKeys(matches: readonly Match[]): string[] {
  const keys = matches.map(matchKey).filter((k): k is string => k !== null);
  const bare = (k: string) => (k.startsWith('!') ? k.slice(1) : k);
  return [...new Set(keys)].sort((a, b) =>
    bare(a) < bare(b) ? -1 : bare(a) > bare(b) ? 1 : a < b ? -1 : a > b ? 1 : 0,
  );
}

function keyOf(shape: Pick<SavedRuleShape, 'matches' | 'target'>, comment: string | null): string {
  const parts = [...sortedMatchKeys(shape.matches), `-> ${targetKey(shape.target)}`];
  if (comment !== null) parts.push(`# ${comment}`);
  return parts.join(' ');
}

/**
 * Canonical text of a rule, independent of match order, port spelling, CIDR spelling and counters; it includes the
 * target and the comment (`meshctl:<purpose>`) but not the table and chain (diffs group by those).
 */
export function ruleKey(rule: Rule | SavedRule): string {
  if ('raw' in rule) return rule.rule ? keyOf(rule.rule, rule.comment) : `unparsed: ${rule.raw}`;
  return keyOf(rule, `${COMMENT_PREFIX}${rule.purpose}`);
}

/** Our chains and rules in a dump (chains prefixed MESHCTL_; rules per isOwnedRule, incl. jumps in built-in chains). */
export function ownedObjects(dump: SaveDump): { chains: ChainDecl[]; rules: SavedRule[] } {
  const chains: ChainDecl[] = [];
  const rules: SavedRule[] = [];
  for (const table of dump.tables) {
    for (const chain of table.chains)
      if (isOwnedChain(chain.name)) chains.push({ table: table.table, name: chain.name });
    for (const rule of table.rules) if (isOwnedRule(rule)) rules.push(rule);
  }
  return { chains, rules };
}

const groupKey = (table: Table, chain: string) => `${table}\u0000${chain}`;

/** Compares one family's plan with the kernel's dump of that family; only our objects are compared. */
export function diffFamily(plan: FamilyPlan, dump: SaveDump): FamilyDiff {
  const owned = ownedObjects(dump);
  const chainId = (c: ChainDecl) => groupKey(c.table, c.name);
  const actualChains = new Set(owned.chains.map(chainId));
  const plannedChains = new Set(plan.chains.map(chainId));
  const missingChains = plan.chains.filter((c) => !actualChains.has(chainId(c)));
  const extraChains = owned.chains.filter((c) => !plannedChains.has(chainId(c)));

  const groups = new Map<string, { table: Table; chain: string; planned: Rule[]; actual: SavedRule[] }>();
  const group = (table: Table, chain: string) => {
    const id = groupKey(table, chain);
    let g = groups.get(id);
    if (!g) groups.set(id, (g = { table, chain, planned: [], actual: [] }));
    return g;
  };
  for (const rule of plan.rules) group(rule.table, rule.chain).planned.push(rule);
  for (const rule of owned.rules) group(rule.table, rule.chain).actual.push(rule);

  const missing: Rule[] = [];
  const extra: SavedRule[] = [];
  const outOfOrder: FamilyDiff['outOfOrder'][number][] = [];
  for (const g of groups.values()) {
    const expected = g.planned.map(ruleKey);
    const actual = g.actual.map(ruleKey);
    const available = new Map<string, number>();
    for (const key of actual) available.set(key, (available.get(key) ?? 0) + 1);
    const commonPlanned: string[] = [];
    g.planned.forEach((rule, i) => {
      const key = expected[i]!;
      const left = available.get(key) ?? 0;
      if (left > 0) {
        available.set(key, left - 1);
        commonPlanned.push(key);
      } else {
        missing.push(rule);
      }
    });
    const wanted = new Map<string, number>();
    for (const key of commonPlanned) wanted.set(key, (wanted.get(key) ?? 0) + 1);
    const commonActual: string[] = [];
    g.actual.forEach((rule, i) => {
      const key = actual[i]!;
      const left = wanted.get(key) ?? 0;
      if (left > 0) {
        wanted.set(key, left - 1);
        commonActual.push(key);
      } else {
        extra.push(rule);
      }
    });
    if (commonPlanned.some((key, i) => commonActual[i] !== key))
      outOfOrder.push({ table: g.table, chain: g.chain, expected, actual });
  }

  const inSync =
    missingChains.length === 0 &&
    extraChains.length === 0 &&
    missing.length === 0 &&
    extra.length === 0 &&
    outOfOrder.length === 0;
  return { family: plan.family, inSync, missingChains, extraChains, missing, extra, outOfOrder };
}

/**
 * The dump without our objects, as normalised iptables-save text: counters and `#` lines gone, tables in a fixed
 * order, built-in chains first then user chains by name, rules grouped by chain in kernel order. A table left with
 * nothing but empty built-in chains under ACCEPT is omitted, so "never loaded" and "loaded, now empty" compare equal.
 */
export function foreignView(dump: SaveDump): string {
  const lines: string[] = [];
  const byTable = new Map(dump.tables.map((t) => [t.table, t]));
  for (const name of TABLES) {
    const table = byTable.get(name);
    if (!table) continue;
    const chains = table.chains.filter((c) => !isOwnedChain(c.name));
    const rules = table.rules.filter((r) => !isOwnedRule(r));
    const builtinOrder = BUILTIN_CHAINS[name];
    const builtins = chains
      .filter((c) => c.builtin)
      .sort((a, b) => builtinOrder.indexOf(a.name) - builtinOrder.indexOf(b.name));
    const users = chains.filter((c) => !c.builtin).sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
    if (users.length === 0 && rules.length === 0 && builtins.every((c) => c.policy === 'ACCEPT')) continue;
    lines.push(`*${name}`);
    for (const c of [...builtins, ...users]) lines.push(`:${c.name} ${c.policy ?? '-'}`);
    for (const c of [...builtins, ...users])
      for (const r of rules) if (r.chain === c.name) lines.push(`-A ${c.name} ${r.raw}`.trimEnd());
    lines.push('COMMIT');
  }
  for (const other of dump.otherTables ?? []) {
    if (other.lines.every((l) => l.startsWith(':') && / ACCEPT$/.test(l))) continue;
    lines.push(`*${other.name}`, ...other.lines, 'COMMIT');
  }
  return lines.length > 0 ? `${lines.join('\n')}\n` : '';
}
