// Parses `nft list ruleset` output (nft 1.0.x) into tables, chains and rule texts, and one nft rule into the rule
// model, for explain to walk what the kernel holds. Pure. Lenient where parse-save is strict: a rule outside the
// model is not an error here but a rule explain cannot evaluate, and the parse says which token it stopped at.
import { parseCidr } from '../values/ip.js';
import type { CtState, Match, Target } from './model.js';
import type { Family } from '../values/ip.js';
import type { PortRange } from '../values/ports.js';
import { cgroupLevel, normalCgroupPath } from '../values/systemd-unit.js';

export interface NftHook {
  /** `filter`, `nat` or `route`. */
  readonly type: string;
  /** `prerouting`, `input`, `output`, … */
  readonly hook: string;
  /** Numeric: standard names (`dstnat`, `filter + 10`) resolved. */
  readonly priority: number;
}

export interface NftChain {
  readonly name: string;
  /** Set for base chains (the kernel enters them from a hook); null for regular chains. */
  readonly hook: NftHook | null;
  readonly policy: 'accept' | 'drop';
  /** Rule lines as listed, handles and counters removed. */
  readonly rules: readonly string[];
}

export interface NftTable {
  /** `ip`, `ip6`, `inet`, `arp`, `bridge`, `netdev`. */
  readonly family: string;
  readonly name: string;
  readonly chains: readonly NftChain[];
}

/** nft's standard priority names for the ip, ip6 and inet families. */
const PRIORITY_NAMES: Readonly<Record<string, number>> = {
  raw: -300,
  mangle: -150,
  dstnat: -100,
  filter: 0,
  security: 50,
  srcnat: 100,
};

function parsePriority(text: string): number | null {
  const m = /^(-?\d+|[a-z]+)(?:\s*([+-])\s*(\d+))?$/.exec(text.trim());
  if (!m) return null;
  const base = /^-?\d+$/.test(m[1]!) ? Number(m[1]) : PRIORITY_NAMES[m[1]!];
  if (base === undefined) return null;
  return m[2] === undefined ? base : base + (m[2] === '+' ? 1 : -1) * Number(m[3]);
}

/** Braces on a line outside double quotes: +1 per `{`, -1 per `}`. */
function braceDelta(line: string): number {
  let delta = 0;
  let quoted = false;
  for (const ch of line) {
    if (ch === '"') quoted = !quoted;
    else if (!quoted && ch === '{') delta++;
    else if (!quoted && ch === '}') delta--;
  }
  return delta;
}

/** Removes what differs between two listings of the same rule: handles, counters, trailing `#` remarks. */
export function normalizeNftRule(line: string): string {
  return line
    .replace(/\s+#\s*handle\s+\d+\s*$/, '')
    .replace(/\bcounter packets \d+ bytes \d+/g, 'counter')
    .replace(/\s+/g, ' ')
    .trim();
}

/**
 * Parses `nft list ruleset` into tables, chains (with hook, priority and policy) and rule lines. Sets, maps,
 * flowtables and other objects are skipped; a rule that refers to one (`@name`) becomes unevaluable in parseNftRule.
 */
export function parseNftRuleset(text: string): NftTable[] {
  const tables: NftTable[] = [];
  let table: { family: string; name: string; chains: NftChain[] } | null = null;
  let chain: { name: string; hook: NftHook | null; policy: 'accept' | 'drop'; rules: string[] } | null = null;
  /** Depth of a block being skipped (set, map, …) relative to where it opened; 0 when not skipping. */
  let skipping = 0;
  for (const raw of text.split('\n')) {
    // iptables-nft appends `# Warning: table ip nat is managed by iptables-nft` right after a closing brace.
    const line = raw.replace(/^(\s*})\s*#.*$/, '$1').trim();
    if (line === '' || line.startsWith('#')) continue;
    if (skipping > 0) {
      skipping += braceDelta(line);
      continue;
    }
    if (!table) {
      const m = /^table\s+(\S+)\s+(\S+)\s*\{/.exec(line);
      if (m) table = { family: m[1]!, name: m[2]!, chains: [] };
      continue;
    }
    if (!chain) {
      if (line === '}') {
        tables.push(table);
        table = null;
        continue;
      }
      const m = /^chain\s+(\S+)\s*\{/.exec(line);
      if (m) {
        chain = { name: m[1]!, hook: null, policy: 'accept', rules: [] };
        continue;
      }
      if (braceDelta(line) > 0) skipping = braceDelta(line);
      continue;
    }
    if (line === '}') {
      table.chains.push(chain);
      chain = null;
      continue;
    }
    const hook = /^type\s+(\S+)\s+hook\s+(\S+)(?:\s+device\s+\S+)?\s+priority\s+([^;]+);(?:\s*policy\s+(\w+);)?/.exec(
      line,
    );
    if (hook) {
      const priority = parsePriority(hook[3]!);
      chain.hook = { type: hook[1]!, hook: hook[2]!, priority: priority ?? 0 };
      chain.policy = hook[4] === 'drop' ? 'drop' : 'accept';
      continue;
    }
    if (/^(policy|comment|devices)\b/.test(line)) continue;
    chain.rules.push(normalizeNftRule(line));
  }
  return tables;
}

/** One token of an nft rule: a word, a quoted string (quotes removed), or an anonymous set `{ a, b }`. */
interface Token {
  readonly value: string;
  readonly set?: readonly string[];
}

function tokenize(text: string): Token[] {
  const tokens: Token[] = [];
  let i = 0;
  while (i < text.length) {
    const ch = text[i]!;
    if (ch === ' ' || ch === '\t') {
      i++;
    } else if (ch === '"') {
      const end = text.indexOf('"', i + 1);
      if (end < 0) throw new Outside('an unterminated quote');
      tokens.push({ value: text.slice(i + 1, end) });
      i = end + 1;
    } else if (ch === '{') {
      const end = text.indexOf('}', i + 1);
      if (end < 0) throw new Outside('an unterminated set');
      const set = text
        .slice(i + 1, end)
        .split(',')
        .map((e) => e.trim())
        .filter((e) => e !== '');
      tokens.push({ value: `{ ${set.join(', ')} }`, set });
      i = end + 1;
    } else {
      let end = i;
      while (end < text.length && text[end] !== ' ' && text[end] !== '\t') end++;
      tokens.push({ value: text.slice(i, end) });
      i = end;
    }
  }
  return tokens;
}

/** Thrown inside the rule parser at the first part outside the model. */
class Outside extends Error {}

export type NftRuleEffect = { readonly kind: 'continue' | 'nat' | 'unevaluable'; readonly why: string };

export type NftRuleParse =
  /** `target` is the verdict (or the mark/zone statement); `effect` is set when the verdict is outside the model. */
  | {
      readonly kind: 'rule';
      readonly matches: readonly Match[];
      readonly target: Target;
      readonly comment: string | null;
      readonly effect?: NftRuleEffect;
    }
  /** The rule can never match a packet of this family (`meta nfproto ipv6`, `ip6 saddr` in an IPv4 view). */
  | { readonly kind: 'other-family' }
  | { readonly kind: 'unevaluable'; readonly why: string; readonly comment: string | null };

const CT_STATES: readonly CtState[] = ['INVALID', 'NEW', 'ESTABLISHED', 'RELATED', 'UNTRACKED'];

function parseNumber(text: string, what: string, max: number): number {
  if (!/^(?:\d+|0x[0-9a-fA-F]+)$/.test(text)) throw new Outside(`${what} ${text}`);
  const value = Number(text);
  if (value > max) throw new Outside(`${what} ${text}`);
  return value;
}

function parsePortText(text: string): PortRange {
  const m = /^(\d+)(?:-(\d+))?$/.exec(text);
  if (!m) throw new Outside(`port ${text}`);
  const from = parseNumber(m[1]!, 'port', 65535);
  const to = m[2] === undefined ? from : parseNumber(m[2], 'port', 65535);
  if (to < from) throw new Outside(`port range ${text}`);
  return { from, to };
}

/** Inverts render-nft's markSet: the xmark value/mask that `meta mark set …` (or `ct mark set …`) applies. */
function parseMarkSet(
  tokens: readonly Token[],
  at: number,
  key: 'meta' | 'ct' = 'meta',
): { value: number; mask: number; next: number } {
  const word = (k: number) => tokens[k]?.value;
  const hex = (k: number) => parseNumber(word(k) ?? '', 'mark', 0xffffffff);
  if (word(at) !== key || word(at + 1) !== 'mark') return { value: hex(at), mask: 0xffffffff, next: at + 1 };
  // meta mark set meta mark & K [| V | ^ V], or meta mark set meta mark | V
  if (word(at + 2) === '|') {
    const v = hex(at + 3);
    return { value: v, mask: v, next: at + 4 };
  }
  if (word(at + 2) !== '&') throw new Outside(`${key} mark set ${key} mark ${word(at + 2) ?? ''}`);
  const and = hex(at + 3);
  if (word(at + 4) === '|') {
    const v = hex(at + 5);
    return { value: v, mask: ~(and & ~v) >>> 0, next: at + 6 };
  }
  if (word(at + 4) === '^') return { value: hex(at + 5), mask: ~and >>> 0, next: at + 6 };
  return { value: 0, mask: ~and >>> 0, next: at + 4 };
}

/** Options `log` may carry; each takes one value except `flags`, which takes a comma list. */
const LOG_OPTIONS = new Set(['prefix', 'level', 'group', 'snaplen', 'queue-threshold', 'flags']);

/**
 * Parses one rule (as nft lists it) for the view of one address family. `chainRef` maps a jump target to the
 * chain name explain uses. Never throws: what the model lacks becomes `unevaluable` naming the part.
 */
export function parseNftRule(text: string, family: Family, chainRef: (name: string) => string): NftRuleParse {
  let tokens: Token[];
  try {
    tokens = tokenize(text);
  } catch (error) {
    return { kind: 'unevaluable', why: (error as Error).message, comment: null };
  }
  const commentAt = tokens.findIndex((t) => t.value === 'comment');
  const comment = commentAt >= 0 ? (tokens[commentAt + 1]?.value ?? null) : null;
  try {
    return parseTokens(tokens, family, chainRef, comment);
  } catch (error) {
    if (!(error instanceof Outside)) throw error;
    if (error.message === OTHER_FAMILY) return { kind: 'other-family' };
    return { kind: 'unevaluable', why: error.message, comment };
  }
}

const OTHER_FAMILY = '\u0000other-family';

/** One nft rule being read: the tokens, the position, the matches so far and the statements that make the target. */
class NftRuleReader {
  readonly matches: Match[] = [];
  protocol: 'tcp' | 'udp' | null = null;
  verdict: Target | null = null;
  tproxyPort: number | null = null;
  setMark: { value: number; mask: number } | null = null;
  setConnmark: { value: number; mask: number } | null = null;
  ctZone: number | null = null;
  effect: NftRuleEffect | null = null;
  i = 0;

  constructor(
    readonly tokens: readonly Token[],
    readonly family: Family,
    readonly chainRef: (name: string) => string,
  ) {}

  word(k = this.i): string {
    return this.tokens[k]?.value ?? '';
  }

  /** The token at the position, moving past it. */
  expect(what: string): Token {
    const t = this.tokens[this.i++];
    if (!t) throw new Outside(`${what} without a value`);
    return t;
  }

  /** `!=` / `==` before a value; returns whether the match is negated. */
  op(): boolean {
    if (this.word() === '!=') {
      this.i++;
      return true;
    }
    if (this.word() === '==') this.i++;
    return false;
  }

  /** The one value of a token: a word, or an anonymous set of one; a named set is outside the model. */
  single(t: Token, what: string): string {
    if (t.set) {
      if (t.set.length !== 1) throw new Outside(`${what} ${t.value}`);
      return t.set[0]!;
    }
    if (t.value.startsWith('@') || t.value.startsWith('$')) throw new Outside(`${what} ${t.value} (a named set)`);
    return t.value;
  }

  neg(negate: boolean): { negate?: true } {
    return negate ? { negate: true } : {};
  }

  setProtocol(p: 'tcp' | 'udp', negate: boolean): void {
    if (!negate) {
      if (this.protocol !== null && this.protocol !== p) throw new Outside(`both ${this.protocol} and ${p}`);
      this.protocol = p;
    }
    this.matches.push({ kind: 'protocol', protocol: p, ...this.neg(negate) });
  }

  needFamily(f: Family): void {
    if (f !== this.family) throw new Outside(OTHER_FAMILY);
  }

  setVerdict(t: Target): void {
    if (this.verdict) throw new Outside('two verdicts');
    this.verdict = t;
  }

  /** Skips the rest of a statement whose arguments do not matter (up to the rule's comment). */
  skipToComment(): void {
    while (this.i < this.tokens.length && this.word() !== 'comment') this.i++;
  }
}

/** Reads the statement that starts with `key` (already consumed). Throws Outside for what the model lacks. */
type StatementParser = (r: NftRuleReader, key: string) => void;

/** `meta mark set …`, `meta mark [& M] [!=] V`, `meta l4proto|nfproto|skuid|skgid|iifname|oifname [!=] V`. */
const metaStatement: StatementParser = (r) => {
  const what = r.word();
  r.i++;
  if (what === 'mark' && r.word() === 'set') {
    r.i++;
    const m = parseMarkSet(r.tokens, r.i);
    r.setMark = { value: m.value, mask: m.mask };
    r.i = m.next;
    return;
  }
  if (what === 'mark') return metaMarkMatch(r);
  const negate = r.op();
  const value = r.single(r.expect(`meta ${what}`), `meta ${what}`);
  if (what === 'l4proto') {
    if (value !== 'tcp' && value !== 'udp') throw new Outside(`meta l4proto ${value}`);
    r.setProtocol(value, negate);
  } else if (what === 'nfproto') {
    if (value !== 'ipv4' && value !== 'ipv6') throw new Outside(`meta nfproto ${value}`);
    if ((value === r.family) === negate) throw new Outside(OTHER_FAMILY);
  } else if (what === 'skuid' || what === 'skgid') {
    const id = parseNumber(value, `meta ${what}`, 0xffffffff);
    r.matches.push(
      what === 'skuid'
        ? { kind: 'uidOwner', uid: id, ...r.neg(negate) }
        : { kind: 'gidOwner', gid: id, ...r.neg(negate) },
    );
  } else if (what === 'iifname' || what === 'oifname') {
    r.matches.push(interfaceMatch(what, value, negate));
  } else {
    throw new Outside(`meta ${what}`);
  }
};

/** `meta mark [& M] [!=] V` (the packet's mark) or `ct mark …` (its connection's). */
function metaMarkMatch(r: NftRuleReader, key: 'meta' | 'ct' = 'meta'): void {
  let mask = 0xffffffff;
  if (r.word() === '&') {
    r.i++;
    mask = parseNumber(r.single(r.expect(`${key} mark &`), `${key} mark &`), 'mark mask', 0xffffffff);
  }
  const negate = r.op();
  const value = parseNumber(r.single(r.expect(`${key} mark`), `${key} mark`), 'mark', 0xffffffff);
  r.matches.push({ kind: key === 'meta' ? 'mark' : 'connmark', value, mask, ...r.neg(negate) });
}

/** `ip|ip6 saddr|daddr [!=] CIDR`, `ip protocol` / `ip6 nexthdr tcp|udp`; the other family's header never matches. */
const ipHeaderStatement: StatementParser = (r, key) => {
  r.needFamily(key === 'ip' ? 'ipv4' : 'ipv6');
  const what = r.word();
  r.i++;
  const negate = r.op();
  const value = r.single(r.expect(`${key} ${what}`), `${key} ${what}`);
  if (what === 'saddr' || what === 'daddr') {
    const cidr = parseCidr(value);
    if (typeof cidr === 'string' || cidr.family !== r.family) throw new Outside(`${key} ${what} ${value}`);
    r.matches.push({ kind: what === 'saddr' ? 'source' : 'destination', cidr, ...r.neg(negate) });
  } else if ((what === 'protocol' && key === 'ip') || (what === 'nexthdr' && key === 'ip6')) {
    if (value !== 'tcp' && value !== 'udp') throw new Outside(`${key} ${what} ${value}`);
    r.setProtocol(value, negate);
  } else {
    throw new Outside(`${key} ${what}`);
  }
};

const interfaceStatement: StatementParser = (r, key) => {
  const negate = r.op();
  r.matches.push(interfaceMatch(key, r.single(r.expect(key), key), negate));
};

/** `tcp|udp dport|sport [!=] PORTS`, `tcp flags [!=] syn / fin,syn,rst,ack`. */
const transportStatement: StatementParser = (r, key) => {
  const proto = key as 'tcp' | 'udp';
  const what = r.word();
  r.i++;
  if (what === 'dport' || what === 'sport') {
    const negate = r.op();
    const t = r.expect(`${key} ${what}`);
    if (t.value.startsWith('@')) throw new Outside(`${key} ${what} ${t.value} (a named set)`);
    const ports = (t.set ?? [t.value]).map(parsePortText);
    r.setProtocol(proto, false);
    r.matches.push({ kind: what === 'dport' ? 'destinationPort' : 'sourcePort', ports, ...r.neg(negate) });
  } else if (what === 'flags' && key === 'tcp') {
    const negate = r.op();
    const flags = r.single(r.expect('tcp flags'), 'tcp flags');
    if (
      flags !== 'syn' ||
      r.word() !== '/' ||
      r
        .word(r.i + 1)
        .split(',')
        .sort()
        .join(',') !== 'ack,fin,rst,syn'
    ) {
      throw new Outside(`tcp flags ${flags} ${r.word()} ${r.word(r.i + 1)}`.trim());
    }
    r.i += 2;
    r.setProtocol('tcp', false);
    r.matches.push({ kind: 'tcpSyn', ...r.neg(negate) });
  } else {
    throw new Outside(`${key} ${what}`);
  }
};

/** `ct state [!=] STATES`, `ct mark [& M] [!=] V`, `ct mark set …`, `ct zone set N`. */
const ctStatement: StatementParser = (r) => {
  const what = r.word();
  r.i++;
  if (what === 'state') {
    const negate = r.op();
    const t = r.expect('ct state');
    const states = (t.set ?? t.value.split(',')).map((s) => {
      const state = s.trim().toUpperCase();
      if (!(CT_STATES as readonly string[]).includes(state)) throw new Outside(`ct state ${s}`);
      return state as CtState;
    });
    r.matches.push({ kind: 'ctState', states, ...r.neg(negate) });
  } else if (what === 'mark' && r.word() === 'set') {
    r.i++;
    const m = parseMarkSet(r.tokens, r.i, 'ct');
    r.setConnmark = { value: m.value, mask: m.mask };
    r.i = m.next;
  } else if (what === 'mark') {
    metaMarkMatch(r, 'ct');
  } else if (what === 'zone' && r.word() === 'set') {
    r.i++;
    r.ctZone = parseNumber(r.expect('ct zone set').value, 'ct zone', 65535);
  } else {
    throw new Outside(`ct ${what}`);
  }
};

/**
 * `socket cgroupv2 level N [!=] "PATH"`: nft prints the path relative to /sys/fs/cgroup when it can find the id
 * there, else the bare cgroup id (the cgroup is gone, e.g. its unit restarted, or nft could not see the hierarchy).
 */
function socketCgroupMatch(r: NftRuleReader): void {
  r.i++;
  if (r.word() !== 'level') throw new Outside(`socket cgroupv2 ${r.word()}`);
  r.i++;
  const level = parseNumber(r.expect('socket cgroupv2 level').value, 'cgroupv2 level', 255);
  const negate = r.op();
  const value = r.single(r.expect('socket cgroupv2'), 'socket cgroupv2');
  if (/^\d+$/.test(value)) {
    r.matches.push({ kind: 'cgroup', path: '', id: Number(value), ...r.neg(negate) });
    return;
  }
  const path = normalCgroupPath(value);
  if (cgroupLevel(path) !== level) throw new Outside(`socket cgroupv2 level ${level} "${value}" (another level)`);
  r.matches.push({ kind: 'cgroup', path, ...r.neg(negate) });
}

const socketStatement: StatementParser = (r) => {
  if (r.word() === 'cgroupv2') return socketCgroupMatch(r);
  if (r.word() !== 'transparent' || r.word(r.i + 1) !== '1')
    throw new Outside(`socket ${r.word()} ${r.word(r.i + 1)}`.trim());
  r.i += 2;
  r.matches.push({ kind: 'socketTransparent' });
};

/** Statements that neither match nor decide: counters, the comment (read before), log and notrack. */
const passiveStatement: StatementParser = (r, key) => {
  if (key === 'counter') {
    if (r.word() === 'packets') r.i += 4;
  } else if (key === 'comment') {
    r.i++;
  } else if (key === 'log') {
    while (LOG_OPTIONS.has(r.word())) r.i += 2;
    r.effect ??= { kind: 'continue', why: 'log' };
  } else {
    r.effect ??= { kind: 'continue', why: key };
  }
};

const verdictStatement: StatementParser = (r, key) => {
  if (key === 'jump') {
    r.setVerdict({ kind: 'jump', chain: r.chainRef(r.expect('jump').value) });
  } else if (key === 'reject') {
    // Any reject refuses a TCP connect (RST or ICMP port unreachable); the model names one form.
    r.skipToComment();
    r.setVerdict({ kind: 'reject', with: 'tcp-reset' });
  } else {
    r.setVerdict({ kind: key as 'accept' | 'drop' | 'return' });
  }
};

const redirectStatement: StatementParser = (r) => {
  if (r.word() !== 'to') throw new Outside('redirect without a port');
  r.i++;
  const port = r.expect('redirect to').value.replace(/^:/, '');
  r.setVerdict({ kind: 'redirect', toPort: parseNumber(port, 'redirect to', 65535) });
};

const tproxyStatement: StatementParser = (r) => {
  if (r.word() === 'ip' || r.word() === 'ip6') r.i++;
  if (r.word() !== 'to') throw new Outside('tproxy without a port');
  r.i++;
  const to = r.expect('tproxy to').value;
  if (!to.startsWith(':')) throw new Outside(`tproxy to ${to}`);
  r.tproxyPort = parseNumber(to.slice(1), 'tproxy to', 65535);
};

/** Someone else's NAT: what it maps to does not matter to explain, only that it happens. */
const natStatement: StatementParser = (r, key) => {
  r.effect = { kind: 'nat', why: key };
  r.skipToComment();
};

/** The first word of every statement the model covers. */
const STATEMENTS: ReadonlyMap<string, StatementParser> = new Map(
  (
    [
      [metaStatement, 'meta'],
      [ipHeaderStatement, 'ip', 'ip6'],
      [interfaceStatement, 'iifname', 'oifname', 'iif', 'oif'],
      [transportStatement, 'tcp', 'udp'],
      [ctStatement, 'ct'],
      [socketStatement, 'socket'],
      [passiveStatement, 'counter', 'comment', 'log', 'notrack'],
      [verdictStatement, 'accept', 'drop', 'return', 'jump', 'reject'],
      [redirectStatement, 'redirect'],
      [tproxyStatement, 'tproxy'],
      [natStatement, 'dnat', 'snat', 'masquerade'],
    ] as const
  ).flatMap(([parse, ...keys]) => keys.map((k) => [k, parse] as const)),
);

function parseTokens(
  tokens: readonly Token[],
  family: Family,
  chainRef: (name: string) => string,
  comment: string | null,
): NftRuleParse {
  const r = new NftRuleReader(tokens, family, chainRef);
  while (r.i < tokens.length) {
    const key = r.word();
    r.i++;
    const parse = STATEMENTS.get(key);
    if (!parse) throw new Outside(key);
    parse(r, key);
  }
  return ruleOf(r, comment);
}

/** The rule the statements make: TPROXY (with its mark), a verdict, someone's NAT, a mark or zone, or no verdict. */
function ruleOf(r: NftRuleReader, comment: string | null): NftRuleParse {
  const { matches, effect, setMark } = r;
  let target: Target;
  if (r.tproxyPort !== null) {
    if (r.verdict !== null && r.verdict.kind !== 'accept') throw new Outside('tproxy with a verdict other than accept');
    target = { kind: 'tproxy', toPort: r.tproxyPort, mark: setMark?.value ?? 0, mask: setMark?.mask ?? 0 };
  } else if (r.verdict !== null) {
    target = r.verdict;
  } else if (effect?.kind === 'nat') {
    return { kind: 'rule', matches, target: { kind: 'accept' }, comment, effect };
  } else if (setMark !== null) {
    if (r.setConnmark !== null) throw new Outside('meta mark set and ct mark set in one rule');
    target = { kind: 'setMark', value: setMark.value, mask: setMark.mask };
  } else if (r.setConnmark !== null) {
    target = { kind: 'setConnmark', value: r.setConnmark.value, mask: r.setConnmark.mask };
  } else if (r.ctZone !== null) {
    target = { kind: 'ctZone', zone: r.ctZone };
  } else {
    return {
      kind: 'rule',
      matches,
      target: { kind: 'accept' },
      comment,
      effect: effect ?? { kind: 'continue', why: 'no verdict' },
    };
  }
  if (effect?.kind === 'nat') throw new Outside(`${effect.why} with a verdict`);
  return { kind: 'rule', matches, target, comment };
}

/** nft's `eth*` is iptables' `eth+`, the spelling the model (and so explain's interface match) uses. */
function interfaceMatch(key: string, name: string, negate: boolean): Match {
  const iptablesName = name.endsWith('*') ? `${name.slice(0, -1)}+` : name;
  const kind = key.startsWith('i') ? 'inInterface' : 'outInterface';
  return { kind, name: iptablesName, ...(negate ? { negate: true } : {}) };
}
