// Parses iptables-save / ip6tables-save output (legacy and nft variants, v1.8.x) into the rule model. Pure.
// Strict about line shapes and about our own rules; foreign rules outside the model are kept as raw text.
import { MeshctlError } from '../errors.js';
import { parseCidr, parseIp } from '../values/ip.js';
import {
  BUILTIN_CHAINS,
  COMMENT_PREFIX,
  TABLES,
  isOwnedChain,
  type CtState,
  type Match,
  type Rule,
  type Table,
  type Target,
} from './model.js';
import { type Cidr } from '../values/ip.js';
import { type PortRange } from '../values/ports.js';
import { normalCgroupPath } from '../values/systemd-unit.js';

export interface SavedChain {
  readonly name: string;
  readonly builtin: boolean;
  /** ACCEPT / DROP for built-in chains; null for user chains (`-`) and for built-ins restore input leaves implicit. */
  readonly policy: string | null;
}

/** A rule's matches and target as the kernel holds them: a Rule without what only the plan knows (purpose, origin). */
export type SavedRuleShape = Omit<Rule, 'purpose' | 'origin'>;

/**
 * A rule as the kernel reports it. Not a Rule, because a foreign rule may use features outside the model: its text
 * is always there, its shape (`rule`) only when it parses. The ledger keeps just chain and text (RuleLine).
 */
export interface SavedRule {
  readonly table: Table;
  readonly chain: string;
  /** The text after `-A CHAIN `, counters stripped. */
  readonly raw: string;
  readonly rule: SavedRuleShape | null;
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
  if (text === undefined || !/^(?:\d+|0x[0-9a-fA-F]+)$/.test(text))
    throw new Unsupported(`${what} ${JSON.stringify(text ?? '')}`);
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
const MODULES = new Set([
  'tcp',
  'udp',
  'multiport',
  'owner',
  'conntrack',
  'socket',
  'mark',
  'connmark',
  'comment',
  'cgroup',
]);

interface RuleParse {
  readonly rule: SavedRuleShape;
  readonly comment: string | null;
}

/** One rule's arguments as they are read: the tokens, the position, and what the options so far have set. */
class RuleArgs {
  readonly matches: Match[] = [];
  protocol: 'tcp' | 'udp' | null = null;
  protocolNegated = false;
  /** The `-m` module whose options may follow. */
  module: string | null = null;
  /** `-m socket` was read and its `--transparent` not yet. */
  socketPending = false;
  comment: string | null = null;
  target: Target | null = null;
  /** A `!` was read; it applies to the next option. */
  negate = false;
  i = 0;

  constructor(
    readonly tokens: readonly string[],
    readonly knownChains: ReadonlySet<string>,
  ) {}

  /** The value after `option`, moving past it. */
  next(option: string): string {
    const value = this.tokens[++this.i];
    if (value === undefined) throw new Unsupported(`${option} without a value`);
    return value;
  }

  neg(): { negate?: true } {
    return this.negate ? { negate: true } : {};
  }

  requireModule(option: string, name: string): void {
    if (this.module !== name) throw new Unsupported(`${option} outside -m ${name}`);
  }

  /** --dport/--sport belong to -m tcp|udp, which iptables loads implicitly after -p (restore input may omit it). */
  requirePortModule(option: string): void {
    if (this.module === 'multiport') throw new Unsupported(`${option} inside -m multiport`);
  }

  requireProtocol(option: string): void {
    if (this.protocol === null || this.protocolNegated) throw new Unsupported(`${option} without -p tcp|udp`);
  }

  closeModule(): void {
    if (this.socketPending) throw new Unsupported('-m socket without --transparent');
    this.module = null;
  }
}

/** Reads `option` (the token at args.i) and its values into args. Throws Unsupported for what is outside the model. */
type OptionParser = (args: RuleArgs, option: string) => void;

const addressOption: OptionParser = (args, option) => {
  const cidr = parseAddress(args.next(option), option);
  args.matches.push({ kind: option === '-s' || option === '--source' ? 'source' : 'destination', cidr, ...args.neg() });
};

const interfaceOption: OptionParser = (args, option) => {
  const name = args.next(option);
  args.matches.push({
    kind: option === '-i' || option === '--in-interface' ? 'inInterface' : 'outInterface',
    name,
    ...args.neg(),
  });
};

const protocolOption: OptionParser = (args, option) => {
  const value = args.next(option);
  if (value !== 'tcp' && value !== 'udp') throw new Unsupported(`-p ${value}`);
  if (args.protocol !== null) throw new Unsupported(`a second -p ${value}`);
  args.protocol = value;
  args.protocolNegated = args.negate;
  args.matches.push({ kind: 'protocol', protocol: value, ...args.neg() });
};

const matchModule: OptionParser = (args, option) => {
  if (args.negate) throw new Unsupported(`! ${option}`);
  args.closeModule();
  const name = args.next(option);
  if (!MODULES.has(name)) throw new Unsupported(`-m ${name}`);
  if ((name === 'tcp' || name === 'udp') && (args.protocol !== name || args.protocolNegated))
    throw new Unsupported(`-m ${name} without -p ${name}`);
  args.module = name;
  if (name === 'socket') args.socketPending = true;
};

const portOption: OptionParser = (args, option) => {
  args.requirePortModule(option);
  args.requireProtocol(option);
  const range = parsePortRangeText(args.next(option));
  args.matches.push({
    kind: option.startsWith('--d') ? 'destinationPort' : 'sourcePort',
    ports: [range],
    ...args.neg(),
  });
};

const multiportOption: OptionParser = (args, option) => {
  args.requireModule(option, 'multiport');
  args.requireProtocol(option);
  const ports = args.next(option).split(',').map(parsePortRangeText);
  args.matches.push({ kind: option.startsWith('--d') ? 'destinationPort' : 'sourcePort', ports, ...args.neg() });
};

const ownerOption: OptionParser = (args, option) => {
  args.requireModule(option, 'owner');
  const id = parseNumber(args.next(option), option, 0xffffffff);
  args.matches.push(
    option === '--uid-owner'
      ? { kind: 'uidOwner', uid: id, ...args.neg() }
      : { kind: 'gidOwner', gid: id, ...args.neg() },
  );
};

/** `--suppl-groups` widens the `--gid-owner` before it (same owner module) to supplementary groups. */
const supplOption: OptionParser = (args, option) => {
  args.requireModule(option, 'owner');
  const last = args.matches.at(-1);
  if (args.negate || last?.kind !== 'gidOwner') throw new Unsupported(`${option} without --gid-owner`);
  args.matches[args.matches.length - 1] = { ...last, suppl: true };
};

const ctStateOption: OptionParser = (args, option) => {
  args.requireModule(option, 'conntrack');
  const states = args
    .next(option)
    .split(',')
    .map((s) => {
      if (!(CT_STATES as readonly string[]).includes(s)) throw new Unsupported(`--ctstate ${s}`);
      return s as CtState;
    });
  args.matches.push({ kind: 'ctState', states, ...args.neg() });
};

/** iptables-save prints `--syn` as `--tcp-flags FIN,SYN,RST,ACK SYN`; only that form is in the model. */
const synOption: OptionParser = (args, option) => {
  if (args.module === 'multiport') throw new Unsupported(`${option} inside -m multiport`);
  if (args.protocol !== 'tcp' || args.protocolNegated) throw new Unsupported(`${option} without -p tcp`);
  if (option === '--tcp-flags') {
    const mask = args.next(option);
    const comp = args.next(option);
    if (mask.split(',').sort().join(',') !== 'ACK,FIN,RST,SYN' || comp !== 'SYN')
      throw new Unsupported(`--tcp-flags ${mask} ${comp}`);
  }
  args.matches.push({ kind: 'tcpSyn', ...args.neg() });
};

const transparentOption: OptionParser = (args) => {
  if (args.module !== 'socket' || args.negate)
    throw new Unsupported(args.negate ? '! --transparent' : '--transparent outside -m socket');
  args.socketPending = false;
  args.matches.push({ kind: 'socketTransparent' });
};

/** `--mark` of `-m mark` (the packet's mark) or `-m connmark` (its connection's). */
const markOption: OptionParser = (args, option) => {
  if (args.module !== 'connmark') args.requireModule(option, 'mark');
  const { value, mask } = parseMark(args.next(option), '--mark');
  args.matches.push({ kind: args.module === 'connmark' ? 'connmark' : 'mark', value, mask, ...args.neg() });
};

/** `-m cgroup --path P` (cgroup v2; the v1 `--cgroup CLASSID` is outside the model). */
const cgroupPathOption: OptionParser = (args, option) => {
  args.requireModule(option, 'cgroup');
  const path = args.next(option);
  if (path === '') throw new Unsupported(`${option} ""`);
  args.matches.push({ kind: 'cgroup', path: normalCgroupPath(path), ...args.neg() });
};

const commentOption: OptionParser = (args, option) => {
  if (args.module !== 'comment' || args.negate) throw new Unsupported(option);
  args.comment = args.next(option);
};

/** `-j NAME [target options]`: the rest of the rule belongs to the target. */
const jumpOption: OptionParser = (args, option) => {
  if (args.negate) throw new Unsupported(`! ${option}`);
  args.closeModule();
  const name = args.next(option);
  args.target = parseTarget(name, args.tokens.slice(args.i + 1), args.knownChains);
  args.i = args.tokens.length;
};

/** Every option of the model, under each spelling iptables-save or restore input may use. */
const OPTIONS: ReadonlyMap<string, OptionParser> = new Map(
  (
    [
      [addressOption, '-s', '--source', '-d', '--destination'],
      [interfaceOption, '-i', '--in-interface', '-o', '--out-interface'],
      [protocolOption, '-p', '--protocol'],
      [matchModule, '-m', '--match'],
      [portOption, '--dport', '--destination-port', '--sport', '--source-port'],
      [multiportOption, '--dports', '--destination-ports', '--sports', '--source-ports'],
      [ownerOption, '--uid-owner', '--gid-owner'],
      [supplOption, '--suppl-groups'],
      [ctStateOption, '--ctstate'],
      [synOption, '--syn', '--tcp-flags'],
      [transparentOption, '--transparent'],
      [markOption, '--mark'],
      [cgroupPathOption, '--path'],
      [commentOption, '--comment'],
      [jumpOption, '-j', '--jump'],
    ] as const
  ).flatMap(([parse, ...spellings]) => spellings.map((s) => [s, parse] as const)),
);

/**
 * Parses the arguments of one rule (after `-A CHAIN`). Throws Unsupported naming the first token outside the model;
 * the comment is found even then (so ownership can be decided for foreign-looking rules).
 */
function parseRuleArgs(
  table: Table,
  chain: string,
  tokens: readonly string[],
  knownChains: ReadonlySet<string>,
): RuleParse {
  const args = new RuleArgs(tokens, knownChains);
  for (; args.i < tokens.length; args.i++) {
    const token = tokens[args.i]!;
    if (token === '!') {
      if (args.negate) throw new Unsupported('! !');
      args.negate = true;
      continue;
    }
    const parse = OPTIONS.get(token);
    if (!parse) throw new Unsupported(token);
    parse(args, token);
    args.negate = false;
  }
  if (args.negate) throw new Unsupported('a trailing !');
  args.closeModule();
  if (args.target === null) throw new Unsupported('a rule without -j');
  return { rule: { table, chain, matches: args.matches, target: args.target }, comment: args.comment };
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
      if (with_ !== 'tcp-reset' && with_ !== 'tcp-rst')
        throw new Unsupported(`-j REJECT --reject-with ${with_ ?? '(default)'}`);
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
      const { value, mask } = options.has('--tproxy-mark')
        ? parseMark(options.get('--tproxy-mark'), '--tproxy-mark')
        : { value: 0, mask: 0 };
      return { kind: 'tproxy', toPort: parseNumber(port, '--on-port', 65535), mark: value, mask };
    }
    case 'MARK':
    case 'CONNMARK': {
      const kind = name === 'MARK' ? 'setMark' : 'setConnmark';
      only('--set-xmark', '--set-mark');
      if (options.has('--set-xmark') === options.has('--set-mark'))
        throw new Unsupported(`-j ${name} without exactly one of --set-xmark/--set-mark`);
      const xmark = options.get('--set-xmark');
      if (xmark !== undefined) {
        const { value, mask } = parseMark(xmark, '--set-xmark');
        return { kind, value, mask };
      }
      // --set-mark V/M is (mark & ~M) | V, which libxt_MARK and libxt_CONNMARK store as xmark V/(V|M).
      const { value, mask } = parseMark(options.get('--set-mark'), '--set-mark');
      return { kind, value, mask: (value | mask) >>> 0 };
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
    hint ??
      'pass the unmodified output of iptables-save / ip6tables-save (v1.8); if it is, report this line as a meshctl bug',
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

/** One input line: its number, the line as given (for messages) and trimmed. */
interface SaveLine {
  readonly no: number;
  readonly original: string;
  readonly text: string;
}

/** The tables read so far and the one being read; parseSave hands it each line by shape. */
class SaveReader {
  private readonly tables = new Map<Table, { chains: SavedChain[]; rules: SavedRule[]; chainNames: Set<string> }>();
  private readonly others: OtherTable[] = [];
  private current: TableBuilder | null = null;

  /** `*nat`: starts a table; a table seen before (restore input may repeat one) continues where it was. */
  tableHeader(at: SaveLine): void {
    if (this.current)
      fail(at.no, at.original, `table *${at.text.slice(1)} starts before COMMIT of *${this.current.name}`);
    const name = at.text.slice(1);
    if (!/^[a-z]+$/.test(name)) fail(at.no, at.original, 'not a table header');
    const table = (TABLES as readonly string[]).includes(name) ? (name as Table) : null;
    const existing = table ? this.tables.get(table) : undefined;
    this.current = {
      table,
      name,
      chains: existing?.chains ?? [],
      chainNames: existing?.chainNames ?? new Set(),
      rules: existing?.rules ?? [],
      otherLines: [],
    };
  }

  commit(at: SaveLine): void {
    const current = this.current;
    if (!current) fail(at.no, at.original, 'COMMIT outside a table');
    if (current.table) {
      this.tables.set(current.table, { chains: current.chains, rules: current.rules, chainNames: current.chainNames });
    } else {
      this.others.push({ name: current.name, lines: current.otherLines });
    }
    this.current = null;
  }

  /** `:CHAIN POLICY [packets:bytes]`. */
  chainDeclaration(at: SaveLine): void {
    const current = this.current;
    if (!current) fail(at.no, at.original, 'chain declaration outside a table');
    const m = CHAIN_RE.exec(at.text);
    if (!m) fail(at.no, at.original, 'malformed chain declaration');
    const [, name, policy] = m as unknown as [string, string, string];
    if (!current.table) {
      current.otherLines.push(`:${name} ${policy}`);
      return;
    }
    const builtin = BUILTIN_CHAINS[current.table].includes(name);
    if (builtin === (policy === '-')) {
      fail(
        at.no,
        at.original,
        builtin ? `built-in chain ${name} without a policy` : `user chain ${name} with policy ${policy}`,
      );
    }
    if (policy !== '-' && !/^[A-Z]+$/.test(policy)) fail(at.no, at.original, `unknown policy ${policy}`);
    if (!current.chainNames.has(name)) {
      current.chains.push({ name, builtin, policy: policy === '-' ? null : policy });
      current.chainNames.add(name);
    }
  }

  /** `-A CHAIN args` (counters already stripped): ours must parse into the model, foreign ones may stay raw. */
  rule(at: SaveLine, ruleLine: string): void {
    const current = this.current;
    if (!current) fail(at.no, at.original, 'rule outside a table');
    const m = /^-A\s+(\S+)\s*(.*)$/.exec(ruleLine);
    if (!m) fail(at.no, at.original, 'malformed rule');
    const chain = m[1]!;
    const raw = m[2]!.trim();
    if (!current.table) {
      current.otherLines.push(`-A ${chain} ${raw}`.trimEnd());
      return;
    }
    if (!current.chainNames.has(chain)) {
      // iptables-save declares every chain; restore input (--noflush) may leave built-in chains implicit.
      if (!BUILTIN_CHAINS[current.table].includes(chain)) fail(at.no, at.original, `rule in undeclared chain ${chain}`);
      current.chains.push({ name: chain, builtin: true, policy: null });
      current.chainNames.add(chain);
    }
    let tokens: string[];
    try {
      tokens = tokenizeSaveLine(raw);
    } catch (error) {
      fail(at.no, at.original, (error as Error).message);
    }
    const comment = findComment(tokens);
    try {
      const parsed = parseRuleArgs(current.table, chain, tokens, current.chainNames);
      current.rules.push({ table: current.table, chain, raw, rule: parsed.rule, comment: parsed.comment });
    } catch (error) {
      if (!(error instanceof Unsupported)) throw error;
      if (isMarkedOurs(chain, comment)) {
        fail(
          at.no,
          at.original,
          `meshctl rule uses ${error.message}, which meshctl never renders`,
          'the rule was changed outside meshctl; run `meshctl status` to see the drift and re-install to repair it',
        );
      }
      current.rules.push({ table: current.table, chain, raw, rule: null, comment });
    }
  }

  /** The tables in TABLES order; throws when the last table has no COMMIT. */
  finish(last: SaveLine): SaveDump {
    if (this.current) fail(last.no, last.original, `table *${this.current.name} has no COMMIT`);
    const ordered: SavedTable[] = [];
    for (const table of TABLES) {
      const t = this.tables.get(table);
      if (t) ordered.push({ table, chains: t.chains, rules: t.rules });
    }
    return this.others.length > 0 ? { tables: ordered, otherTables: this.others } : { tables: ordered };
  }
}

/**
 * Parses iptables-save / ip6tables-save text. Throws MeshctlError PARSE_SAVE for an unknown line shape, a rule
 * outside a table, a table without COMMIT, or one of our rules (MESHCTL_ chain or `meshctl:` comment) that
 * uses anything outside the model. Foreign rules outside the model are kept with `rule: null`.
 */
export function parseSave(text: string): SaveDump {
  const reader = new SaveReader();
  const lines = text.split('\n');
  for (let n = 0; n < lines.length; n++) {
    const original = lines[n]!.replace(/\r$/, '');
    const line = original.trim();
    if (line === '' || line.startsWith('#')) continue;
    const at: SaveLine = { no: n + 1, original, text: line };
    const ruleLine = line.replace(COUNTERS_RE, '');
    if (line.startsWith('*')) reader.tableHeader(at);
    else if (line === 'COMMIT') reader.commit(at);
    else if (line.startsWith(':')) reader.chainDeclaration(at);
    else if (ruleLine.startsWith('-A ')) reader.rule(at, ruleLine);
    else
      fail(at.no, original, 'unknown line (expected #comment, *table, :CHAIN POLICY [p:b], -A CHAIN ..., or COMMIT)');
  }
  return reader.finish({ no: lines.length, original: lines[lines.length - 1] ?? '', text: '' });
}
