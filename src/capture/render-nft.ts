// Renders a CapturePlan as one nft script that atomically replaces `table inet meshctl`. Pure.
//
// Layout of the table (one transaction, both families):
//   base chains, one per (iptables table, hook) the plan uses, e.g. `nat_output` (type nat hook output priority -100),
//   each holding only dispatch rules:  meta nfproto ipv4 jump v4_nat_OUTPUT
//   regular chains per family mirroring iptables one to one:  v4_nat_OUTPUT (the rules iptables puts in OUTPUT),
//   v4_nat_MESHCTL_OUTPUT, v6_mangle_MESHCTL_TPROXY, ...
// Dispatching per family, instead of prefixing each rule with `meta nfproto`, keeps the listing faithful: nft drops an
// explicit `meta nfproto` when a later expression implies it (ip saddr, reject), so a prefixed rule would read back
// differently from what was loaded. Inside a per-family chain no family match is needed at all.
//
// The rule text is exactly what `nft list table inet meshctl` prints (nft 1.0.6): sorted sets, 0x%08x marks, the
// folded bitwise form of `meta mark set`, no redundant `meta l4proto` before `tcp dport`. So a read-back compare is
// normalizeNftListing(list) === normalizeNftListing(render).
import { MeshctlError } from '../errors.js';
import { normalizePorts } from './diff.js';
import {
  BUILTIN_CHAINS,
  COMMENT_PREFIX,
  TABLES,
  type CapturePlan,
  type CtState,
  type Match,
  type Rule,
  type Table,
  type Target,
} from './model.js';
import { type Family } from '../values/ip.js';
import { cgroupLevel, normalCgroupPath } from '../values/systemd-unit.js';

export const NFT_TABLE = 'meshctl';
const NFT_FAMILY_TAG: Readonly<Record<Family, string>> = { ipv4: 'v4', ipv6: 'v6' };

interface Hook {
  readonly type: 'filter' | 'nat' | 'route';
  readonly hook: string;
  /** As nft 1.0.6 lists it: a standard priority name where one exists for the family and hook, else the number. */
  readonly priority: string;
}

/** The nft base chain equivalent to each iptables built-in chain (same hook, same priority as ip_tables uses). */
const HOOKS: Readonly<Record<Table, Readonly<Record<string, Hook>>>> = {
  raw: {
    PREROUTING: { type: 'filter', hook: 'prerouting', priority: 'raw' },
    OUTPUT: { type: 'filter', hook: 'output', priority: 'raw' },
  },
  mangle: {
    PREROUTING: { type: 'filter', hook: 'prerouting', priority: 'mangle' },
    INPUT: { type: 'filter', hook: 'input', priority: 'mangle' },
    FORWARD: { type: 'filter', hook: 'forward', priority: 'mangle' },
    // iptables' mangle OUTPUT re-routes when a mark changes; in nft that is what `type route` does.
    OUTPUT: { type: 'route', hook: 'output', priority: 'mangle' },
    POSTROUTING: { type: 'filter', hook: 'postrouting', priority: 'mangle' },
  },
  nat: {
    PREROUTING: { type: 'nat', hook: 'prerouting', priority: 'dstnat' },
    INPUT: { type: 'nat', hook: 'input', priority: '100' },
    OUTPUT: { type: 'nat', hook: 'output', priority: '-100' },
    POSTROUTING: { type: 'nat', hook: 'postrouting', priority: 'srcnat' },
  },
  filter: {
    INPUT: { type: 'filter', hook: 'input', priority: 'filter' },
    FORWARD: { type: 'filter', hook: 'forward', priority: 'filter' },
    OUTPUT: { type: 'filter', hook: 'output', priority: 'filter' },
  },
};

/** Name of the base chain for an iptables built-in chain: `nat_output`. */
function nftBaseChainName(table: Table, builtin: string): string {
  return `${table}_${builtin.toLowerCase()}`;
}

/** Name of the regular chain mirroring an iptables chain of one family: `v4_nat_MESHCTL_OUTPUT`, `v6_nat_OUTPUT`. */
export function nftChainName(family: Family, table: Table, chain: string): string {
  return `${NFT_FAMILY_TAG[family]}_${table}_${chain}`;
}

const CT_STATE_ORDER: readonly CtState[] = ['INVALID', 'ESTABLISHED', 'RELATED', 'NEW', 'UNTRACKED'];
const hex8 = (n: number): string => `0x${(n >>> 0).toString(16).padStart(8, '0')}`;

function bug(message: string): never {
  throw new MeshctlError(
    'INTERNAL',
    `nft renderer: ${message}`,
    'this plan cannot be expressed in nft; report it as a meshctl bug',
  );
}

function addressText(cidr: { address: string; prefix: number; family: Family }): string {
  const full = cidr.family === 'ipv4' ? 32 : 128;
  return cidr.prefix === full ? cidr.address : `${cidr.address}/${cidr.prefix}`;
}

/** iptables interface wildcard `eth+` is nft's `eth*`. */
function ifaceText(name: string): string {
  if (name.includes('"')) bug(`interface name ${JSON.stringify(name)}`);
  return `"${name.endsWith('+') ? `${name.slice(0, -1)}*` : name}"`;
}

function setOrValue(values: readonly string[]): string {
  return values.length === 1 ? values[0]! : `{ ${values.join(', ')} }`;
}

function renderMatch(
  match: Match,
  family: Family,
  protocol: 'tcp' | 'udp' | null,
  impliedProtocol: boolean,
): string | null {
  const op = 'negate' in match && match.negate ? '!= ' : '';
  const ipv = family === 'ipv4' ? 'ip' : 'ip6';
  switch (match.kind) {
    case 'protocol':
      // `tcp dport` already implies the protocol; nft lists it without the redundant `meta l4proto tcp`.
      if (impliedProtocol && !op) return null;
      return `meta l4proto ${op}${match.protocol}`;
    case 'source':
    case 'destination':
      if (match.cidr.family !== family) bug(`${match.kind} ${match.cidr.address} in a ${family} rule`);
      return `${ipv} ${match.kind === 'source' ? 'saddr' : 'daddr'} ${op}${addressText(match.cidr)}`;
    case 'inInterface':
      return `iifname ${op}${ifaceText(match.name)}`;
    case 'outInterface':
      return `oifname ${op}${ifaceText(match.name)}`;
    case 'destinationPort':
    case 'sourcePort': {
      if (protocol === null) bug(`a port match without a tcp/udp protocol match`);
      const ports = normalizePorts(match.ports).map((r) => (r.from === r.to ? `${r.from}` : `${r.from}-${r.to}`));
      return `${protocol} ${match.kind === 'destinationPort' ? 'dport' : 'sport'} ${op}${setOrValue(ports)}`;
    }
    case 'uidOwner':
      return `meta skuid ${op}${match.uid}`;
    case 'gidOwner':
      return `meta skgid ${op}${match.gid}`;
    case 'ctState': {
      const states = CT_STATE_ORDER.filter((s) => match.states.includes(s)).map((s) => s.toLowerCase());
      return `ct state ${op}${setOrValue(states)}`;
    }
    case 'socketTransparent':
      return 'socket transparent 1';
    case 'cgroup':
      // nft resolves the path itself, relative to /sys/fs/cgroup (where the cgroup v2 hierarchy must be mounted).
      return `socket cgroupv2 level ${cgroupLevel(match.path)} ${op}"${normalCgroupPath(match.path).slice(1)}"`;
    case 'tcpSyn':
      return `tcp flags ${op}syn / fin,syn,rst,ack`;
    case 'mark':
    case 'connmark': {
      const key = match.kind === 'mark' ? 'meta mark' : 'ct mark';
      if (match.mask >>> 0 === 0xffffffff) return `${key} ${op}${hex8(match.value)}`;
      return `${key} & ${hex8(match.mask)} ${op ? '!=' : '=='} ${hex8(match.value & match.mask)}`;
    }
  }
}

/**
 * `meta mark set` (or `ct mark set`) for iptables' xmark V/M, (mark & ~M) ^ V, in the form nft prints back: the
 * kernel keeps (mark & A) ^ X with A = ~M, X = V and nft shows `& (A|X) | X` when X lies in the cleared bits, else
 * `& A ^ X`.
 */
function markSet(value: number, mask: number, key: 'meta mark' | 'ct mark' = 'meta mark'): string {
  const v = value >>> 0;
  const m = mask >>> 0;
  if (m === 0xffffffff) return `${key} set ${hex8(v)}`;
  const keep = ~m >>> 0;
  if (v === 0) return `${key} set ${key} & ${hex8(keep)}`;
  if ((v & keep) === 0) {
    const and = (keep | v) >>> 0;
    return and === 0xffffffff ? `${key} set ${key} | ${hex8(v)}` : `${key} set ${key} & ${hex8(and)} | ${hex8(v)}`;
  }
  return `${key} set ${key} & ${hex8(keep)} ^ ${hex8(v)}`;
}

function renderTarget(target: Target, family: Family, table: Table, protocolShown: boolean): string[] {
  switch (target.kind) {
    case 'jump':
      return [`jump ${nftChainName(family, table, target.chain)}`];
    case 'return':
    case 'accept':
    case 'drop':
      return [target.kind];
    case 'reject':
      return ['reject with tcp reset'];
    case 'redirect':
      if (!protocolShown) bug('REDIRECT without a tcp/udp match');
      return [`redirect to :${target.toPort}`];
    case 'tproxy':
      if (!protocolShown) bug('TPROXY without a tcp/udp match');
      return [
        `tproxy ${family === 'ipv4' ? 'ip' : 'ip6'} to :${target.toPort} ${markSet(target.mark, target.mask)} accept`,
      ];
    case 'setMark':
      return [markSet(target.value, target.mask)];
    case 'setConnmark':
      return [markSet(target.value, target.mask, 'ct mark')];
    case 'ctZone':
      return [`ct zone set ${target.zone}`];
  }
}

function commentText(purpose: string): string {
  const text = `${COMMENT_PREFIX}${purpose}`;
  if (text.includes('"') || text.includes('\\') || Buffer.byteLength(text) > 128)
    bug(`rule comment ${JSON.stringify(text)}`);
  return `comment "${text}"`;
}

/** One model rule as nft rule lines (TPROXY becomes two: nft's tproxy falls through where xt_TPROXY drops). */
/**
 * nftables cannot match supplementary groups (`meta skgid` is the primary group only): a group list there would
 * silently leave out every process that holds the group as a supplementary one. Refused instead.
 */
export function refuseSupplementaryGroups(rule: Rule): void {
  const gid = rule.matches.find(
    (m): m is Extract<Match, { kind: 'gidOwner' }> => m.kind === 'gidOwner' && m.suppl === true,
  );
  if (!gid) return;
  const field = rule.origin.replace(/\[\d+\]$/, '');
  throw new MeshctlError(
    'CONFIG_INVALID',
    `${rule.origin} (group ${gid.gid}) cannot be honoured by the nftables backend: nftables matches a socket's primary group only (meta skgid), so a process holding the group as a supplementary one would be treated as outside it`,
    `use capture.backend: iptables-nft or iptables-legacy (both match supplementary groups with --suppl-groups), or remove ${field} from the config`,
  );
}

/**
 * nft's `socket cgroupv2 level N` looks at the socket's ancestor N levels below the root, and a socket whose cgroup is
 * shallower has none: the expression then ends the rule, with `!=` as with `==`. So "not in the unit" would not match
 * a process of systemd itself (/init.scope) or of the root cgroup, and an includeUnits allow-list would capture them.
 * Refused instead; iptables' `! --path` is a plain negation.
 */
export function refuseNegatedCgroup(rule: Rule): void {
  const unit = rule.matches.find(
    (m): m is Extract<Match, { kind: 'cgroup' }> => m.kind === 'cgroup' && m.negate === true,
  );
  if (!unit) return;
  throw new MeshctlError(
    'CONFIG_INVALID',
    `${rule.origin} (${unit.unit ?? unit.path}) cannot be honoured by the nftables backend: nft's socket cgroupv2 match never matches a socket whose cgroup lies above the unit's level, also when negated, so processes of /init.scope or the root cgroup would be captured as if they were in the unit`,
    'use capture.backend: iptables-nft or iptables-legacy (`-m cgroup ! --path` is a plain negation), or excludeUnits instead of includeUnits',
  );
}

export function renderNftRule(rule: Rule, family: Family): string[] {
  refuseSupplementaryGroups(rule);
  refuseNegatedCgroup(rule);
  const protocolMatch = rule.matches.find(
    (m): m is Extract<Match, { kind: 'protocol' }> => m.kind === 'protocol' && !m.negate,
  );
  const protocol = protocolMatch?.protocol ?? null;
  const impliedProtocol = rule.matches.some(
    (m) => m.kind === 'destinationPort' || m.kind === 'sourcePort' || m.kind === 'tcpSyn',
  );
  const matches = rule.matches
    .map((m) => renderMatch(m, family, protocol, impliedProtocol))
    .filter((t): t is string => t !== null);
  const protocolShown = protocol !== null;
  const comment = commentText(rule.purpose);
  const lines = renderTarget(rule.target, family, rule.table, protocolShown).map((t) =>
    [...matches, t, comment].join(' '),
  );
  if (rule.target.kind === 'tproxy') {
    // xt_TPROXY returns NF_DROP when no transparent socket listens; nft's tproxy only breaks the rule. The same
    // matches followed by drop keep iptables' behaviour (no silent pass when the proxy is down).
    lines.push([...matches, 'drop', comment].join(' '));
  }
  return lines;
}

interface ChainBlock {
  readonly name: string;
  readonly hook: Hook | null;
  readonly rules: string[];
}

function chainText(block: ChainBlock): string {
  const lines = [`\tchain ${block.name} {`];
  if (block.hook)
    lines.push(`\t\ttype ${block.hook.type} hook ${block.hook.hook} priority ${block.hook.priority}; policy accept;`);
  for (const rule of block.rules) lines.push(`\t\t${rule}`);
  lines.push('\t}');
  return lines.join('\n');
}

/** The `table inet meshctl { ... }` block exactly as `nft list table inet meshctl` prints it. */
export function renderNftTable(plan: CapturePlan): string {
  const bases: ChainBlock[] = [];
  const regular: ChainBlock[] = [];
  for (const table of TABLES) {
    for (const builtin of BUILTIN_CHAINS[table]) {
      const hook = HOOKS[table][builtin];
      const families = plan.families.filter((f) => f.rules.some((r) => r.table === table && r.chain === builtin));
      if (families.length === 0) continue;
      if (!hook) bug(`no nft hook for ${table} ${builtin}`);
      bases.push({
        name: nftBaseChainName(table, builtin),
        hook,
        rules: families.map(
          (f) =>
            `meta nfproto ${f.family} jump ${nftChainName(f.family, table, builtin)} ${commentText(`dispatch-${f.family}`)}`,
        ),
      });
    }
  }
  for (const fp of plan.families) {
    const rulesOf = (table: Table, chain: string) =>
      fp.rules.filter((r) => r.table === table && r.chain === chain).flatMap((r) => renderNftRule(r, fp.family));
    for (const table of TABLES) {
      for (const builtin of BUILTIN_CHAINS[table]) {
        const rules = rulesOf(table, builtin);
        if (rules.length > 0) regular.push({ name: nftChainName(fp.family, table, builtin), hook: null, rules });
      }
      for (const decl of fp.chains.filter((c) => c.table === table)) {
        if ((BUILTIN_CHAINS[table] as readonly string[]).includes(decl.name)) bug(`chain ${decl.name} is built in`);
        regular.push({ name: nftChainName(fp.family, table, decl.name), hook: null, rules: rulesOf(table, decl.name) });
      }
    }
    for (const rule of fp.rules) {
      const declared =
        (BUILTIN_CHAINS[rule.table] as readonly string[]).includes(rule.chain) ||
        fp.chains.some((c) => c.table === rule.table && c.name === rule.chain);
      if (!declared) bug(`rule in undeclared chain ${rule.table}/${rule.chain}`);
    }
  }
  const blocks = [...bases, ...regular].map(chainText);
  return `table inet ${NFT_TABLE} {\n${blocks.join('\n\n')}\n}\n`;
}

/**
 * The whole script for `nft -f`: creating the table first makes the delete succeed whether or not it exists, and
 * all three commands are one transaction, so the old table is replaced atomically (no window without rules).
 */
export function renderNft(plan: CapturePlan): string {
  return `add table inet ${NFT_TABLE}\ndelete table inet ${NFT_TABLE}\n${renderNftTable(plan)}`;
}

/** Removes `table inet meshctl`; succeeds when it does not exist. */
export function renderNftDelete(): string {
  return `add table inet ${NFT_TABLE}\ndelete table inet ${NFT_TABLE}\n`;
}

/**
 * Normalises `nft list table inet meshctl` output (or a rendered script) for comparison: drops the add/delete
 * preamble, `#` comments and handles, counters, blank lines and indentation, and collapses inner whitespace.
 */
export function normalizeNftListing(text: string): string {
  const out: string[] = [];
  for (const rawLine of text.split('\n')) {
    let line = rawLine.replace(/\s+#\s*handle\s+\d+\s*$/, '');
    line = line.replace(/\bcounter packets \d+ bytes \d+\s*/g, '');
    line = line.replace(/\s+/g, ' ').trim();
    if (line === '' || line.startsWith('#')) continue;
    if (/^(add|delete|flush) table inet \S+$/.test(line)) continue;
    out.push(line);
  }
  return out.join('\n');
}
