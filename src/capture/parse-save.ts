// Parses iptables-save / ip6tables-save output (legacy and nft variants, v1.8.x) into the rule model. Pure.
// Strict about line shapes and about our own rules; foreign rules outside the model are kept as raw text.
import { MeshctlError } from '../errors.js';
import { parseCidr, parseIp } from '../values/ip.js';
import { BUILTIN_CHAINS, COMMENT_PREFIX, TABLES, isOwnedChain, type CtState, type Match, type Rule, type Table, type Target } from './model.js';
import { type Cidr } from '../values/ip.js';
import { type PortRange } from '../values/ports.js';

export interface SavedChain {
  readonly name: string;
  readonly builtin: boolean;
  /** ACCEPT / DROP for built-in chains; null for user chains (`-`) and for built-ins restore input leaves implicit. */
  readonly policy: string | null;
}

/** A rule as the kernel reports it. `rule` is null for foreign rules that use features outside the model. */
export interface SavedRule {
  readonly table: Table;
  readonly chain: string;
  /** The text after `-A CHAIN `, counters stripped. */
  readonly raw: string;
  readonly rule: Omit<Rule, 'purpose' | 'origin'> | null;
  readonly comment: string | null;
}

export interface SavedTable {
  readonly table: Table;
  readonly chains: readonly SavedChain[];
  readonly rules: readonly SavedRule[];
}

/** A table meshctl never uses (`security`): kept verbatim (minus counters) so foreign views stay complete. */
export interface OtherTable {
  readonly name: string;
  readonly lines: readonly string[];
}

export interface SaveDump {
  readonly tables: readonly SavedTable[];
  /** Tables outside the model, in input order; absent or empty when there are none. */
  readonly otherTables?: readonly OtherTable[];
}

export type SavedRuleShape = Omit<Rule, 'purpose' | 'origin'>;

/** Thrown inside the rule parser when a token is outside the model; turned into null or PARSE_SAVE by the caller. */
class Unsupported extends Error {}

/**
 * Splits a rule line the way iptables-restore does: whitespace separates, double quotes group, and a backslash
 * escapes the next character (iptables-save writes `\"` and `\\` inside quoted comments).
 */
export function tokenizeSaveLine(line: string): string[] {
  const tokens: string[] = [];
  let current = '';
  let inToken = false;
  let quoted = false;
  for (let i = 0; i < line.length; i++) {
    const ch = line[i]!;
    if (ch === '\\' && i + 1 < line.length) {
      current += line[++i];
      inToken = true;
    } else if (ch === '"') {
      quoted = !quoted;
      inToken = true;
    } else if (!quoted && (ch === ' ' || ch === '\t')) {
      if (inToken) tokens.push(current);
      current = '';
      inToken = false;
    } else {
      current += ch;
      inToken = true;
    }
  }
  if (quoted) throw new Unsupported('an unterminated double quote');
  if (inToken) tokens.push(current);
  return tokens;
}

const CT_STATES: readonly CtState[] = ['INVALID', 'NEW', 'ESTABLISHED', 'RELATED', 'UNTRACKED'];
const MARK_RE = /^(0x[0-9a-fA-F]{1,8}|\d{1,10})(?:\/(0x[0-9a-fA-F]{1,8}|\d{1,10}))?$/;

function parseNumber(text: string | undefined, what: string, max: number): number {
  if (text === undefined || !/^(?:\d+|0x[0-9a-fA-F]+)$/.test(text)) throw new Unsupported(`${what} ${JSON.stringify(text ?? '')}`);
  const value = Number(text);
  if (!Number.isSafeInteger(value) || value > max) throw new Unsupported(`${what} ${text}`);
  return value;
}

function parsePort(text: string): number {
  const port = parseNumber(text, 'port', 65535);
  return port;
}

/** `80`, `8000:8080` (iptables-save's range form). */
function parsePortRangeText(text: string): PortRange {
  const parts = text.split(':');
  if (parts.length === 1) {
    const p = parsePort(parts[0]!);
    return { from: p, to: p };
  }
  if (parts.length === 2) {
    const from = parts[0] === '' ? 0 : parsePort(parts[0]!);
    const to = parts[1] === '' ? 65535 : parsePort(parts[1]!);
    if (to < from) throw new Unsupported(`port range ${text}`);
    return { from, to };
  }
  throw new Unsupported(`port range ${text}`);
}

function parseMark(text: string | undefined, what: string): { value: number; mask: number } {
  const m = text === undefined ? null : MARK_RE.exec(text);
  if (!m) throw new Unsupported(`${what} ${JSON.stringify(text ?? '')}`);
  const value = Number(m[1]);
  const mask = m[2] === undefined ? 0xffffffff : Number(m[2]);
  if (value > 0xffffffff || mask > 0xffffffff) throw new Unsupported(`${what} ${text}`);
  return { value, mask };
}

function parseAddress(text: string, option: string): Cidr {
  const cidr = parseCidr(text);
  if (typeof cidr === 'string') throw new Unsupported(`${option} ${text} (${cidr})`);
  return cidr;
}

/** The matching modules the model covers, and the options each accepts. */
const MODULES = new Set(['tcp', 'udp', 'multiport', 'owner', 'conntrack', 'socket', 'mark', 'comment']);

interface RuleParse {
  readonly rule: SavedRuleShape;
  readonly comment: string | null;
}

/**
 * Parses the arguments of one rule (after `-A CHAIN`). Throws Unsupported naming the first token outside the model;
 * the comment is found even then (so ownership can be decided for foreign-looking rules).
 */
function parseRuleArgs(table: Table, chain: string, tokens: readonly string[], knownChains: ReadonlySet<string>): RuleParse {
  const matches: Match[] = [];
  let protocol: 'tcp' | 'udp' | null = null;
  let protocolNegated = false;
  let module: string | null = null;
  let socketPending = false;
  let comment: string | null = null;
  let target: Target | null = null;
  let negate = false;
  let i = 0;

  const next = (option: string): string => {
    const value = tokens[++i];
    if (value === undefined) throw new Unsupported(`${option} without a value`);
    return value;
  };
  const neg = (): { negate?: true } => (negate ? { negate: true } : {});
  // --dport/--sport belong to -m tcp|udp, which iptables loads implicitly after -p (restore input may omit it).
  const requirePortModule = (option: string) => {
    if (module === 'multiport') throw new Unsupported(`${option} inside -m multiport`);
  };
  const requireProtocol = (option: string) => {
    if (protocol === null || protocolNegated) throw new Unsupported(`${option} without -p tcp|udp`);
  };
  const closeModule = () => {
    if (socketPending) throw new Unsupported('-m socket without --transparent');
    module = null;
  };

  for (; i < tokens.length; i++) {
    const token = tokens[i]!;
    if (token === '!') {
      if (negate) throw new Unsupported('! !');
      negate = true;
      continue;
    }
    switch (token) {
      case '-s':
      case '--source':
      case '-d':
      case '--destination': {
        const cidr = parseAddress(next(token), token);
        matches.push({ kind: token === '-s' || token === '--source' ? 'source' : 'destination', cidr, ...neg() });
        break;
      }
      case '-i':
      case '--in-interface':
      case '-o':
      case '--out-interface': {
        const name = next(token);
        matches.push({ kind: token === '-i' || token === '--in-interface' ? 'inInterface' : 'outInterface', name, ...neg() });
        break;
      }
      case '-p':
      case '--protocol': {
        const value = next(token);
        if (value !== 'tcp' && value !== 'udp') throw new Unsupported(`-p ${value}`);
        if (protocol !== null) throw new Unsupported(`a second -p ${value}`);
        protocol = value;
        protocolNegated = negate;
        matches.push({ kind: 'protocol', protocol: value, ...neg() });
        break;
      }
      case '-m':
      case '--match': {
        if (negate) throw new Unsupported(`! ${token}`);
        closeModule();
        const name = next(token);
        if (!MODULES.has(name)) throw new Unsupported(`-m ${name}`);
        if ((name === 'tcp' || name === 'udp') && (protocol !== name || protocolNegated)) throw new Unsupported(`-m ${name} without -p ${name}`);
        module = name;
        if (name === 'socket') socketPending = true;
        break;
      }
      case '--dport':
      case '--destination-port':
      case '--sport':
      case '--source-port': {
        requirePortModule(token);
        requireProtocol(token);
        const range = parsePortRangeText(next(token));
        matches.push({ kind: token.startsWith('--d') ? 'destinationPort' : 'sourcePort', ports: [range], ...neg() });
        break;
      }
      case '--dports':
      case '--destination-ports':
      case '--sports':
      case '--source-ports': {
        if (module !== 'multiport') throw new Unsupported(`${token} outside -m multiport`);
        requireProtocol(token);
        const ports = next(token).split(',').map(parsePortRangeText);
        matches.push({ kind: token.startsWith('--d') ? 'destinationPort' : 'sourcePort', ports, ...neg() });
        break;
      }
      case '--uid-owner':
      case '--gid-owner': {
        if (module !== 'owner') throw new Unsupported(`${token} outside -m owner`);
        const id = parseNumber(next(token), token, 0xffffffff);
        matches.push(token === '--uid-owner' ? { kind: 'uidOwner', uid: id, ...neg() } : { kind: 'gidOwner', gid: id, ...neg() });
        break;
      }
      case '--ctstate': {
        if (module !== 'conntrack') throw new Unsupported(`${token} outside -m conntrack`);
        const states = next(token).split(',').map((s) => {
          if (!(CT_STATES as readonly string[]).includes(s)) throw new Unsupported(`--ctstate ${s}`);
          return s as CtState;
        });
        matches.push({ kind: 'ctState', states, ...neg() });
        break;
      }
      case '--syn':
      case '--tcp-flags': {
        // iptables-save prints `--syn` as `--tcp-flags FIN,SYN,RST,ACK SYN`; only that form is in the model.
        if (module === 'multiport') throw new Unsupported(`${token} inside -m multiport`);
        if (protocol !== 'tcp' || protocolNegated) throw new Unsupported(`${token} without -p tcp`);
        if (token === '--tcp-flags') {
          const mask = next(token);
          const comp = next(token);
          if (mask.split(',').sort().join(',') !== 'ACK,FIN,RST,SYN' || comp !== 'SYN') throw new Unsupported(`--tcp-flags ${mask} ${comp}`);
        }
        matches.push({ kind: 'tcpSyn', ...neg() });
        break;
      }
      case '--transparent': {
        if (module !== 'socket' || negate) throw new Unsupported(negate ? '! --transparent' : '--transparent outside -m socket');
        socketPending = false;
        matches.push({ kind: 'socketTransparent' });
        break;
      }
      case '--mark': {
        if (module !== 'mark') throw new Unsupported(`${token} outside -m mark`);
        const { value, mask } = parseMark(next(token), '--mark');
        matches.push({ kind: 'mark', value, mask, ...neg() });
        break;
      }
      case '--comment': {
        if (module !== 'comment' || negate) throw new Unsupported(token);
        comment = next(token);
        break;
      }
      case '-j':
      case '--jump': {
        if (negate) throw new Unsupported(`! ${token}`);
        closeModule();
        const name = next(token);
        const rest = tokens.slice(i + 1);
        target = parseTarget(name, rest, knownChains);
        i = tokens.length;
        break;
      }
      default:
        throw new Unsupported(token);
    }
    negate = false;
  }
  if (negate) throw new Unsupported('a trailing !');
  closeModule();
  if (target === null) throw new Unsupported('a rule without -j');
  return { rule: { table, chain, matches, target }, comment };
}

function parseTarget(name: string, args: readonly string[], knownChains: ReadonlySet<string>): Target {
  const options = new Map<string, string>();
  for (let k = 0; k < args.length; k++) {
    const option = args[k]!;
    if (!option.startsWith('--')) throw new Unsupported(option);
    const value = args[k + 1];
    if (value === undefined || value.startsWith('--')) throw new Unsupported(`${option} without a value`);
    if (options.has(option)) throw new Unsupported(`a second ${option}`);
    options.set(option, value);
    k++;
  }
  const only = (...allowed: string[]) => {
    for (const key of options.keys()) if (!allowed.includes(key)) throw new Unsupported(`-j ${name} ${key}`);
  };
  switch (name) {
    case 'RETURN':
    case 'ACCEPT':
    case 'DROP':
      only();
      return { kind: name === 'RETURN' ? 'return' : name === 'ACCEPT' ? 'accept' : 'drop' };
    case 'REJECT': {
      only('--reject-with');
      const with_ = options.get('--reject-with');
      if (with_ !== 'tcp-reset' && with_ !== 'tcp-rst') throw new Unsupported(`-j REJECT --reject-with ${with_ ?? '(default)'}`);
      return { kind: 'reject', with: 'tcp-reset' };
    }
    case 'REDIRECT': {
      only('--to-ports', '--to-port');
      const port = options.get('--to-ports') ?? options.get('--to-port');
      if (port === undefined) throw new Unsupported('-j REDIRECT without --to-ports');
      return { kind: 'redirect', toPort: parseNumber(port, '--to-ports', 65535) };
    }
    case 'TPROXY': {
      only('--on-port', '--on-ip', '--tproxy-mark');
      const port = options.get('--on-port');
      if (port === undefined) throw new Unsupported('-j TPROXY without --on-port');
      const onIp = options.get('--on-ip');
      if (onIp !== undefined) {
        const ip = parseIp(onIp);
        // The model has no --on-ip: the packet's own destination address (0.0.0.0 / ::) is the only form we use.
        if (!ip || ip.value !== 0n) throw new Unsupported(`--on-ip ${onIp}`);
      }
      const { value, mask } = options.has('--tproxy-mark') ? parseMark(options.get('--tproxy-mark'), '--tproxy-mark') : { value: 0, mask: 0 };
      return { kind: 'tproxy', toPort: parseNumber(port, '--on-port', 65535), mark: value, mask };
    }
    case 'MARK': {
      only('--set-xmark', '--set-mark');
      if (options.has('--set-xmark') === options.has('--set-mark')) throw new Unsupported('-j MARK without exactly one of --set-xmark/--set-mark');
      const xmark = options.get('--set-xmark');
      if (xmark !== undefined) {
        const { value, mask } = parseMark(xmark, '--set-xmark');
        return { kind: 'setMark', value, mask };
      }
      // --set-mark V/M is (mark & ~M) | V, which libxt_MARK stores as xmark V/(V|M).
      const { value, mask } = parseMark(options.get('--set-mark'), '--set-mark');
      return { kind: 'setMark', value, mask: (value | mask) >>> 0 };
    }
    case 'CT': {
      only('--zone');
      const zone = options.get('--zone');
      if (zone === undefined) throw new Unsupported('-j CT without --zone');
      return { kind: 'ctZone', zone: parseNumber(zone, '--zone', 65535) };
    }
    default:
      if (options.size > 0) throw new Unsupported(`-j ${name} ${[...options.keys()][0]}`);
      if (isOwnedChain(name) || knownChains.has(name)) return { kind: 'jump', chain: name };
      throw new Unsupported(`-j ${name}`);
  }
}

/** Finds the comment of a rule without fully parsing it (for rules outside the model). */
function findComment(tokens: readonly string[]): string | null {
  for (let k = 0; k + 1 < tokens.length; k++) if (tokens[k] === '--comment') return tokens[k + 1]!;
  return null;
}

function findJump(tokens: readonly string[]): string | null {
  for (let k = 0; k + 1 < tokens.length; k++) if (tokens[k] === '-j' || tokens[k] === '--jump') return tokens[k + 1]!;
  return null;
}

/** Ours: in a MESHCTL_ chain, or carrying a `meshctl:` comment. These must parse fully into the model. */
function isMarkedOurs(chain: string, comment: string | null): boolean {
  return isOwnedChain(chain) || (comment !== null && comment.startsWith(COMMENT_PREFIX));
}

/**
 * True for rules meshctl owns: in a MESHCTL_ chain, with a `meshctl:` comment, or jumping into a MESHCTL_ chain
 * (an unmarked jump into our chain is still ours to account for; diff reports it as extra).
 */
export function isOwnedRule(rule: SavedRule): boolean {
  if (isMarkedOurs(rule.chain, rule.comment)) return true;
  if (rule.rule) return rule.rule.target.kind === 'jump' && isOwnedChain(rule.rule.target.chain);
  const jump = findJump(safeTokens(rule.raw));
  return jump !== null && isOwnedChain(jump);
}

function safeTokens(raw: string): string[] {
  try {
    return tokenizeSaveLine(raw);
  } catch {
    return raw.split(/\s+/);
  }
}

const COUNTERS_RE = /^\[\d+:\d+\]\s+/;
const CHAIN_RE = /^:(\S+)\s+(\S+)(?:\s+\[\d+:\d+\])?\s*$/;

function fail(lineNo: number, line: string, problem: string, hint?: string): never {
  throw new MeshctlError(
    'PARSE_SAVE',
    `iptables-save output line ${lineNo}: ${problem}: ${JSON.stringify(line)}`,
    hint ?? 'pass the unmodified output of iptables-save / ip6tables-save (v1.8); if it is, report this line as a meshctl bug',
  );
}

interface TableBuilder {
  table: Table | null;
  name: string;
  chains: SavedChain[];
  chainNames: Set<string>;
  rules: SavedRule[];
  otherLines: string[];
}

/**
 * Parses iptables-save / ip6tables-save text. Throws MeshctlError PARSE_SAVE for an unknown line shape, a rule
 * outside a table, a table without COMMIT, or one of our rules (MESHCTL_ chain or `meshctl:` comment) that
 * uses anything outside the model. Foreign rules outside the model are kept with `rule: null`.
 */
export function parseSave(text: string): SaveDump {
  const tables = new Map<Table, { chains: SavedChain[]; rules: SavedRule[]; chainNames: Set<string> }>();
  const others: OtherTable[] = [];
  let current: TableBuilder | null = null;
  const lines = text.split('\n');

  for (let n = 0; n < lines.length; n++) {
    const lineNo = n + 1;
    const original = lines[n]!.replace(/\r$/, '');
    const line = original.trim();
    if (line === '' || line.startsWith('#')) continue;

    if (line.startsWith('*')) {
      if (current) fail(lineNo, original, `table *${line.slice(1)} starts before COMMIT of *${current.name}`);
      const name = line.slice(1);
      if (!/^[a-z]+$/.test(name)) fail(lineNo, original, 'not a table header');
      const table = (TABLES as readonly string[]).includes(name) ? (name as Table) : null;
      const existing = table ? tables.get(table) : undefined;
      current = {
        table,
        name,
        chains: existing?.chains ?? [],
        chainNames: existing?.chainNames ?? new Set(),
        rules: existing?.rules ?? [],
        otherLines: [],
      };
      continue;
    }
    if (line === 'COMMIT') {
      if (!current) fail(lineNo, original, 'COMMIT outside a table');
      if (current.table) {
        tables.set(current.table, { chains: current.chains, rules: current.rules, chainNames: current.chainNames });
      } else {
        others.push({ name: current.name, lines: current.otherLines });
      }
      current = null;
      continue;
    }
    if (line.startsWith(':')) {
      if (!current) fail(lineNo, original, 'chain declaration outside a table');
      const m = CHAIN_RE.exec(line);
      if (!m) fail(lineNo, original, 'malformed chain declaration');
      const [, name, policy] = m as unknown as [string, string, string];
      if (!current.table) {
        current.otherLines.push(`:${name} ${policy}`);
        continue;
      }
      const builtin = BUILTIN_CHAINS[current.table].includes(name);
      if (builtin === (policy === '-')) {
        fail(lineNo, original, builtin ? `built-in chain ${name} without a policy` : `user chain ${name} with policy ${policy}`);
      }
      if (policy !== '-' && !/^[A-Z]+$/.test(policy)) fail(lineNo, original, `unknown policy ${policy}`);
      if (!current.chainNames.has(name)) {
        current.chains.push({ name, builtin, policy: policy === '-' ? null : policy });
        current.chainNames.add(name);
      }
      continue;
    }
    const ruleLine = line.replace(COUNTERS_RE, '');
    if (ruleLine.startsWith('-A ')) {
      if (!current) fail(lineNo, original, 'rule outside a table');
      const m = /^-A\s+(\S+)\s*(.*)$/.exec(ruleLine);
      if (!m) fail(lineNo, original, 'malformed rule');
      const chain = m[1]!;
      const raw = m[2]!.trim();
      if (!current.table) {
        current.otherLines.push(`-A ${chain} ${raw}`.trimEnd());
        continue;
      }
      if (!current.chainNames.has(chain)) {
        // iptables-save declares every chain; restore input (--noflush) may leave built-in chains implicit.
        if (!BUILTIN_CHAINS[current.table].includes(chain)) fail(lineNo, original, `rule in undeclared chain ${chain}`);
        current.chains.push({ name: chain, builtin: true, policy: null });
        current.chainNames.add(chain);
      }
      let tokens: string[];
      try {
        tokens = tokenizeSaveLine(raw);
      } catch (error) {
        fail(lineNo, original, (error as Error).message);
      }
      const comment = findComment(tokens);
      try {
        const parsed = parseRuleArgs(current.table, chain, tokens, current.chainNames);
        current.rules.push({ table: current.table, chain, raw, rule: parsed.rule, comment: parsed.comment });
      } catch (error) {
        if (!(error instanceof Unsupported)) throw error;
        if (isMarkedOurs(chain, comment)) {
          fail(lineNo, original, `meshctl rule uses ${error.message}, which meshctl never renders`,
            'the rule was changed outside meshctl; run `meshctl status` to see the drift and re-install to repair it');
        }
        current.rules.push({ table: current.table, chain, raw, rule: null, comment });
      }
      continue;
    }
    fail(lineNo, original, 'unknown line (expected #comment, *table, :CHAIN POLICY [p:b], -A CHAIN ..., or COMMIT)');
  }
  if (current) fail(lines.length, lines[lines.length - 1] ?? '', `table *${current.name} has no COMMIT`);

  const ordered: SavedTable[] = [];
  for (const table of TABLES) {
    const t = tables.get(table);
    if (t) ordered.push({ table, chains: t.chains, rules: t.rules });
  }
  return others.length > 0 ? { tables: ordered, otherTables: others } : { tables: ordered };
}
