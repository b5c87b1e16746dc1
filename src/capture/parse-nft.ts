// Parses `nft list ruleset` output (nft 1.0.x) into tables, chains and rule texts, and one nft rule into the rule
// model, for explain to walk what the kernel holds. Pure. Lenient where parse-save is strict: a rule outside the
// model is not an error here but a rule explain cannot evaluate, and the parse says which token it stopped at.
import { parseCidr } from '../values/ip.js';
import type { CtState, Match, Target } from './model.js';
import type { Family } from '../values/ip.js';
import type { PortRange } from '../values/ports.js';

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
const PRIORITY_NAMES: Readonly<Record<string, number>> = { raw: -300, mangle: -150, dstnat: -100, filter: 0, security: 50, srcnat: 100 };

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
    const hook = /^type\s+(\S+)\s+hook\s+(\S+)(?:\s+device\s+\S+)?\s+priority\s+([^;]+);(?:\s*policy\s+(\w+);)?/.exec(line);
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
      const set = text.slice(i + 1, end).split(',').map((e) => e.trim()).filter((e) => e !== '');
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
  | { readonly kind: 'rule'; readonly matches: readonly Match[]; readonly target: Target; readonly comment: string | null; readonly effect?: NftRuleEffect }
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

/** Inverts render-nft's markSet: the xmark value/mask that `meta mark set …` applies. */
function parseMarkSet(tokens: readonly Token[], at: number): { value: number; mask: number; next: number } {
  const word = (k: number) => tokens[k]?.value;
  const hex = (k: number) => parseNumber(word(k) ?? '', 'mark', 0xffffffff);
  if (word(at) !== 'meta' || word(at + 1) !== 'mark') return { value: hex(at), mask: 0xffffffff, next: at + 1 };
  // meta mark set meta mark & K [| V | ^ V], or meta mark set meta mark | V
  if (word(at + 2) === '|') {
    const v = hex(at + 3);
    return { value: v, mask: v, next: at + 4 };
  }
  if (word(at + 2) !== '&') throw new Outside(`meta mark set meta mark ${word(at + 2) ?? ''}`);
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

function parseTokens(tokens: readonly Token[], family: Family, chainRef: (name: string) => string, comment: string | null): NftRuleParse {
  const matches: Match[] = [];
  // Assigned inside the helpers below; `as` keeps TypeScript from narrowing them to null for good.
  let protocol = null as 'tcp' | 'udp' | null;
  let verdict = null as Target | null;
  let tproxyPort = null as number | null;
  let setMark = null as { value: number; mask: number } | null;
  let ctZone = null as number | null;
  let effect = null as NftRuleEffect | null;
  let i = 0;

  const word = (k = i): string => tokens[k]?.value ?? '';
  const expect = (what: string): Token => {
    const t = tokens[i++];
    if (!t) throw new Outside(`${what} without a value`);
    return t;
  };
  /** `!=` / `==` before a value; returns whether the match is negated. */
  const op = (): boolean => {
    if (word() === '!=') {
      i++;
      return true;
    }
    if (word() === '==') i++;
    return false;
  };
  const single = (t: Token, what: string): string => {
    if (t.set) {
      if (t.set.length !== 1) throw new Outside(`${what} ${t.value}`);
      return t.set[0]!;
    }
    if (t.value.startsWith('@') || t.value.startsWith('$')) throw new Outside(`${what} ${t.value} (a named set)`);
    return t.value;
  };
  const neg = (negate: boolean): { negate?: true } => (negate ? { negate: true } : {});
  const setProtocol = (p: 'tcp' | 'udp', negate: boolean) => {
    if (!negate) {
      if (protocol !== null && protocol !== p) throw new Outside(`both ${protocol} and ${p}`);
      protocol = p;
    }
    matches.push({ kind: 'protocol', protocol: p, ...neg(negate) });
  };
  const needFamily = (f: Family) => {
    if (f !== family) throw new Outside(OTHER_FAMILY);
  };
  const setVerdict = (t: Target) => {
    if (verdict) throw new Outside('two verdicts');
    verdict = t;
  };

  while (i < tokens.length) {
    const key = word();
    i++;
    switch (key) {
      case 'meta': {
        const what = word();
        i++;
        if (what === 'mark' && word() === 'set') {
          i++;
          const m = parseMarkSet(tokens, i);
          setMark = { value: m.value, mask: m.mask };
          i = m.next;
          break;
        }
        if (what === 'mark') {
          let mask = 0xffffffff;
          let negate: boolean;
          if (word() === '&') {
            i++;
            mask = parseNumber(single(expect('meta mark &'), 'meta mark &'), 'mark mask', 0xffffffff);
            negate = op();
          } else {
            negate = op();
          }
          const value = parseNumber(single(expect('meta mark'), 'meta mark'), 'mark', 0xffffffff);
          matches.push({ kind: 'mark', value, mask, ...neg(negate) });
          break;
        }
        const negate = op();
        const value = single(expect(`meta ${what}`), `meta ${what}`);
        if (what === 'l4proto') {
          if (value !== 'tcp' && value !== 'udp') throw new Outside(`meta l4proto ${value}`);
          setProtocol(value, negate);
        } else if (what === 'nfproto') {
          if (value !== 'ipv4' && value !== 'ipv6') throw new Outside(`meta nfproto ${value}`);
          if ((value === family) === negate) throw new Outside(OTHER_FAMILY);
        } else if (what === 'skuid' || what === 'skgid') {
          const id = parseNumber(value, `meta ${what}`, 0xffffffff);
          matches.push(what === 'skuid' ? { kind: 'uidOwner', uid: id, ...neg(negate) } : { kind: 'gidOwner', gid: id, ...neg(negate) });
        } else if (what === 'iifname' || what === 'oifname') {
          matches.push(interfaceMatch(what, value, negate));
        } else {
          throw new Outside(`meta ${what}`);
        }
        break;
      }
      case 'ip':
      case 'ip6': {
        needFamily(key === 'ip' ? 'ipv4' : 'ipv6');
        const what = word();
        i++;
        const negate = op();
        const value = single(expect(`${key} ${what}`), `${key} ${what}`);
        if (what === 'saddr' || what === 'daddr') {
          const cidr = parseCidr(value);
          if (typeof cidr === 'string' || cidr.family !== family) throw new Outside(`${key} ${what} ${value}`);
          matches.push({ kind: what === 'saddr' ? 'source' : 'destination', cidr, ...neg(negate) });
        } else if ((what === 'protocol' && key === 'ip') || (what === 'nexthdr' && key === 'ip6')) {
          if (value !== 'tcp' && value !== 'udp') throw new Outside(`${key} ${what} ${value}`);
          setProtocol(value, negate);
        } else {
          throw new Outside(`${key} ${what}`);
        }
        break;
      }
      case 'iifname':
      case 'oifname':
      case 'iif':
      case 'oif': {
        const negate = op();
        matches.push(interfaceMatch(key, single(expect(key), key), negate));
        break;
      }
      case 'tcp':
      case 'udp': {
        const what = word();
        i++;
        if (what === 'dport' || what === 'sport') {
          const negate = op();
          const t = expect(`${key} ${what}`);
          if (t.value.startsWith('@')) throw new Outside(`${key} ${what} ${t.value} (a named set)`);
          const ports = (t.set ?? [t.value]).map(parsePortText);
          setProtocol(key, false);
          matches.push({ kind: what === 'dport' ? 'destinationPort' : 'sourcePort', ports, ...neg(negate) });
        } else if (what === 'flags' && key === 'tcp') {
          const negate = op();
          const flags = single(expect('tcp flags'), 'tcp flags');
          if (flags !== 'syn' || word() !== '/' || word(i + 1).split(',').sort().join(',') !== 'ack,fin,rst,syn') {
            throw new Outside(`tcp flags ${flags} ${word()} ${word(i + 1)}`.trim());
          }
          i += 2;
          setProtocol('tcp', false);
          matches.push({ kind: 'tcpSyn', ...neg(negate) });
        } else {
          throw new Outside(`${key} ${what}`);
        }
        break;
      }
      case 'ct': {
        const what = word();
        i++;
        if (what === 'state') {
          const negate = op();
          const t = expect('ct state');
          const states = (t.set ?? t.value.split(',')).map((s) => {
            const state = s.trim().toUpperCase();
            if (!(CT_STATES as readonly string[]).includes(state)) throw new Outside(`ct state ${s}`);
            return state as CtState;
          });
          matches.push({ kind: 'ctState', states, ...neg(negate) });
        } else if (what === 'zone' && word() === 'set') {
          i++;
          ctZone = parseNumber(expect('ct zone set').value, 'ct zone', 65535);
        } else {
          throw new Outside(`ct ${what}`);
        }
        break;
      }
      case 'socket':
        if (word() !== 'transparent' || word(i + 1) !== '1') throw new Outside(`socket ${word()} ${word(i + 1)}`.trim());
        i += 2;
        matches.push({ kind: 'socketTransparent' });
        break;
      case 'counter':
        if (word() === 'packets') i += 4;
        break;
      case 'comment':
        i++;
        break;
      case 'log':
        while (LOG_OPTIONS.has(word())) i += 2;
        effect ??= { kind: 'continue', why: 'log' };
        break;
      case 'notrack':
        effect ??= { kind: 'continue', why: 'notrack' };
        break;
      case 'accept':
      case 'drop':
      case 'return':
        setVerdict({ kind: key });
        break;
      case 'jump':
        setVerdict({ kind: 'jump', chain: chainRef(expect('jump').value) });
        break;
      case 'reject':
        // Any reject refuses a TCP connect (RST or ICMP port unreachable); the model names one form.
        while (i < tokens.length && word() !== 'comment') i++;
        setVerdict({ kind: 'reject', with: 'tcp-reset' });
        break;
      case 'redirect': {
        if (word() !== 'to') throw new Outside('redirect without a port');
        i++;
        const port = expect('redirect to').value.replace(/^:/, '');
        setVerdict({ kind: 'redirect', toPort: parseNumber(port, 'redirect to', 65535) });
        break;
      }
      case 'tproxy': {
        if (word() === 'ip' || word() === 'ip6') i++;
        if (word() !== 'to') throw new Outside('tproxy without a port');
        i++;
        const to = expect('tproxy to').value;
        if (!to.startsWith(':')) throw new Outside(`tproxy to ${to}`);
        tproxyPort = parseNumber(to.slice(1), 'tproxy to', 65535);
        break;
      }
      case 'dnat':
      case 'snat':
      case 'masquerade':
        // Someone else's NAT: what it maps to does not matter to explain, only that it happens.
        effect = { kind: 'nat', why: key };
        while (i < tokens.length && word() !== 'comment') i++;
        break;
      default:
        throw new Outside(key);
    }
  }

  let target: Target;
  if (tproxyPort !== null) {
    if (verdict !== null && verdict.kind !== 'accept') throw new Outside('tproxy with a verdict other than accept');
    target = { kind: 'tproxy', toPort: tproxyPort, mark: setMark?.value ?? 0, mask: setMark?.mask ?? 0 };
  } else if (verdict !== null) {
    target = verdict;
  } else if (effect?.kind === 'nat') {
    return { kind: 'rule', matches, target: { kind: 'accept' }, comment, effect };
  } else if (setMark !== null) {
    target = { kind: 'setMark', value: setMark.value, mask: setMark.mask };
  } else if (ctZone !== null) {
    target = { kind: 'ctZone', zone: ctZone };
  } else {
    return { kind: 'rule', matches, target: { kind: 'accept' }, comment, effect: effect ?? { kind: 'continue', why: 'no verdict' } };
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
