// The rules in the kernel as the plan explain walks: iptables-save text per family, or the nft ruleset, turned into
// an ExplainPlan that keeps every rule of the hook chains (foreign ones too), the order the kernel enters them and
// their policies. Each meshctl rule gets its config origin back from the plan the install recorded (ledger), matched
// by rule identity; a meshctl rule the ledger does not know is marked `unrecorded`. Pure; src/netfilter/live-plan.ts
// reads the kernel and the ledger.
//
//   xtables:  raw OUTPUT → mangle OUTPUT → nat OUTPUT → filter OUTPUT        (outbound; inbound: PREROUTING…, INPUT)
//             one chain per table, foreign rules before our jump run first (an ACCEPT there ends the table)
//   nftables: every base chain on the hook, ours (`table inet meshctl`) and foreign, by priority; an accept ends
//             only its own base chain, so only drop/reject/NAT in a foreign chain changes what ours do
import type { Config } from '../config/types.js';
import { ruleKey } from './diff.js';
import {
  PATHS,
  type ExplainFamilyPlan,
  type ExplainPlan,
  type ExplainRule,
  type HookEntry,
  type KernelRuleFacts,
} from './explain.js';
import {
  COMMENT_PREFIX,
  isOwnedChain,
  type CapturePlan,
  type ChainDecl,
  type FamilyPlan,
  type Match,
  type Rule,
  type Table,
  type Target,
} from './model.js';
import { FAMILIES, type Family } from '../values/ip.js';
import { parseNftRule, parseNftRuleset, type NftChain, type NftHook, type NftTable } from './parse-nft.js';
import { isOwnedRule, parseSave, tokenizeSaveLine, type SaveDump, type SavedRule } from './parse-save.js';
import { NFT_TABLE } from './render-nft.js';
import { renderRule } from './render-iptables.js';

/** The origin given to a meshctl rule the install did not record (added or changed outside `meshctl install`). */
export const UNRECORDED_ORIGIN = 'not recorded by the install';

/** A rule read from the kernel before its origin is known. */
type Pending = Omit<ExplainRule, 'origin' | 'kernel'> & { kernel: KernelRuleFacts; comment: string | null };

const PLACEHOLDER: Target = { kind: 'return' };

function purposeOf(comment: string | null, owned: boolean): string {
  if (comment?.startsWith(COMMENT_PREFIX)) return comment.slice(COMMENT_PREFIX.length);
  return owned ? 'unmarked' : 'foreign';
}

/**
 * Gives each meshctl rule the origin of the recorded rule it equals (same table, chain and ruleKey, first unused
 * one in order); a meshctl rule with no recorded twin is `unrecorded`. Foreign rules keep `origin: foreign`.
 */
function withOrigins(
  pending: readonly Pending[],
  recorded: FamilyPlan | null,
  builtinOrigin: (p: Pending) => string | null,
): ExplainRule[] {
  const pool = new Map<string, Rule[]>();
  for (const rule of recorded?.rules ?? []) {
    const key = `${rule.table} ${rule.chain} ${ruleKey(rule)}`;
    pool.set(key, [...(pool.get(key) ?? []), rule]);
  }
  return pending.map((p) => {
    const { comment: _comment, ...shape } = p;
    if (shape.kernel.owner === 'foreign') return { ...shape, origin: "foreign (not meshctl's)" };
    const builtin = builtinOrigin(p);
    if (builtin !== null) return { ...shape, origin: builtin };
    const key = `${shape.table} ${shape.chain} ${shape.kernel.effect?.kind === 'unevaluable' ? `unparsed ${shape.kernel.text}` : ruleKey({ ...shape, origin: '' })}`;
    const twin = pool.get(key)?.shift();
    if (twin) return { ...shape, origin: twin.origin };
    return { ...shape, origin: UNRECORDED_ORIGIN, kernel: { ...shape.kernel, owner: 'unrecorded' } };
  });
}

// --- xtables ---------------------------------------------------------------------------------------------------

/** Targets that never end the walk of a chain (they change or log the packet and fall through). */
const CONTINUING_TARGETS = new Set([
  'LOG',
  'NFLOG',
  'ULOG',
  'CONNMARK',
  'MARK',
  'TRACE',
  'CT',
  'NOTRACK',
  'AUDIT',
  'CLASSIFY',
  'DSCP',
  'TOS',
  'TCPMSS',
  'TTL',
  'HL',
  'CHECKSUM',
  'SECMARK',
  'CONNSECMARK',
  'IDLETIMER',
  'LED',
  'RATEEST',
  'SET',
  'TEE',
]);
/** Targets that set up someone else's NAT binding: later NAT rules (ours) never see the connection. */
const NAT_TARGETS = new Set(['DNAT', 'NETMAP', 'SNAT', 'MASQUERADE']);
/** The matching modules parse-save understands; any other `-m` is why a foreign rule cannot be evaluated. */
const KNOWN_MODULES = new Set([
  'tcp',
  'udp',
  'multiport',
  'owner',
  'conntrack',
  'socket',
  'mark',
  'connmark',
  'comment',
]);

function quoteToken(token: string): string {
  return /^[^\s"\\]+$/.test(token) ? token : `"${token.replace(/["\\]/g, '\\$&')}"`;
}

/** The matches of a rule whose target is outside the model (parsed with a stand-in `-j ACCEPT`), or why not. */
function matchesOnly(table: Table, chain: string, tokens: readonly string[], builtin: boolean): Match[] | string {
  const text = `*${table}\n${builtin ? '' : `:${chain} - [0:0]\n`}-A ${chain} ${tokens.map(quoteToken).join(' ')} -j ACCEPT\nCOMMIT\n`;
  try {
    const rule = parseSave(text).tables[0]?.rules[0]?.rule;
    if (rule) return [...rule.matches];
  } catch {
    // a meshctl comment on a rule outside the model: fall through to naming what is unknown
  }
  for (let k = 0; k + 1 < tokens.length; k++)
    if ((tokens[k] === '-m' || tokens[k] === '--match') && !KNOWN_MODULES.has(tokens[k + 1]!))
      return `-m ${tokens[k + 1]}`;
  return 'a match outside the model';
}

/** A kernel rule iptables-save printed but parse-save could not model: what explain can still say about it. */
function fallback(
  saved: SavedRule,
  builtin: boolean,
): Pick<Pending, 'matches' | 'target'> & { effect?: KernelRuleFacts['effect'] } {
  const unevaluable = (why: string) => ({
    matches: [],
    target: PLACEHOLDER,
    effect: { kind: 'unevaluable' as const, why },
  });
  let tokens: string[];
  try {
    tokens = tokenizeSaveLine(saved.raw);
  } catch (error) {
    return unevaluable((error as Error).message);
  }
  const at = tokens.findIndex((t) => t === '-j' || t === '--jump' || t === '-g' || t === '--goto');
  if (at < 0) return { matches: [], target: PLACEHOLDER, effect: { kind: 'continue', why: 'no target' } };
  const target = tokens[at + 1] ?? '';
  if (tokens[at] === '-g' || tokens[at] === '--goto') return unevaluable(`-g ${target}`);
  if (CONTINUING_TARGETS.has(target))
    return { matches: [], target: PLACEHOLDER, effect: { kind: 'continue', why: `-j ${target}` } };
  const matches = matchesOnly(saved.table, saved.chain, tokens.slice(0, at), builtin);
  if (typeof matches === 'string') return unevaluable(matches);
  if (target === 'REJECT') return { matches, target: { kind: 'reject', with: 'tcp-reset' } };
  if (NAT_TARGETS.has(target)) return { matches, target: PLACEHOLDER, effect: { kind: 'nat', why: `-j ${target}` } };
  return unevaluable(`-j ${target}`);
}

function xtablesFamily(family: Family, dump: SaveDump, recorded: FamilyPlan | null): ExplainFamilyPlan {
  const pending: Pending[] = [];
  const chains: ChainDecl[] = [];
  for (const table of dump.tables) {
    const builtins = new Set(table.chains.filter((c) => c.builtin).map((c) => c.name));
    for (const c of table.chains) if (isOwnedChain(c.name)) chains.push({ table: table.table, name: c.name });
    for (const saved of table.rules) {
      const owned = isOwnedRule(saved);
      const facts = { owner: owned ? ('meshctl' as const) : ('foreign' as const), text: saved.raw };
      const base = {
        table: saved.table,
        chain: saved.chain,
        purpose: purposeOf(saved.comment, owned),
        comment: saved.comment,
      };
      if (saved.rule) {
        pending.push({ ...base, matches: saved.rule.matches, target: saved.rule.target, kernel: facts });
      } else {
        const { effect, ...shape } = fallback(saved, builtins.has(saved.chain));
        pending.push({ ...base, ...shape, kernel: effect ? { ...facts, effect } : facts });
      }
    }
  }
  const policy = (table: Table, chain: string): 'accept' | 'drop' =>
    dump.tables.find((t) => t.table === table)?.chains.find((c) => c.name === chain)?.policy === 'DROP'
      ? 'drop'
      : 'accept';
  const entries = (direction: 'outbound' | 'inbound'): HookEntry[] =>
    PATHS[direction].map(([table, chain]) => ({ table, chain, policy: policy(table, chain) }));
  return {
    family,
    chains,
    rules: withOrigins(pending, recorded, () => null),
    entries: { outbound: entries('outbound'), inbound: entries('inbound') },
  };
}

/**
 * The plan explain walks for an xtables backend, from iptables-save / ip6tables-save text per family (null: that
 * family could not be read, so it is left out and explain says so). `recorded` is the ledger's plan.
 * Throws PARSE_SAVE for malformed text or a meshctl rule outside the model (parse-save.ts).
 */
export function planFromSave(
  families: readonly { family: Family; text: string | null }[],
  recorded: CapturePlan | null,
): ExplainPlan {
  const out: ExplainFamilyPlan[] = [];
  for (const { family, text } of families) {
    if (text === null) continue;
    out.push(xtablesFamily(family, parseSave(text), recorded?.families.find((f) => f.family === family) ?? null));
  }
  return {
    source: 'kernel',
    families: out,
    routes: recorded?.routes ?? [],
    loopbackAddresses: recorded?.loopbackAddresses ?? [],
  };
}

// --- nftables --------------------------------------------------------------------------------------------------

const OWN_CHAIN_RE = /^(v4|v6)_(raw|mangle|nat|filter)_(.+)$/;
const FAMILY_TAG: Readonly<Record<Family, string>> = { ipv4: 'v4', ipv6: 'v6' };
const HOOKS: Readonly<Record<'outbound' | 'inbound', readonly string[]>> = {
  outbound: ['output'],
  inbound: ['prerouting', 'input'],
};

function appliesTo(table: NftTable, family: Family): boolean {
  return (
    table.family === 'inet' ||
    (table.family === 'ip' && family === 'ipv4') ||
    (table.family === 'ip6' && family === 'ipv6')
  );
}

/** The iptables table a base chain stands in for (by hook type and priority): how explain labels and groups it. */
function tableOfHook(hook: NftHook): Table {
  if (hook.type === 'nat') return 'nat';
  if (hook.type === 'route') return 'mangle';
  if (hook.priority <= -225) return 'raw';
  return hook.priority < 0 ? 'mangle' : 'filter';
}

const isOurs = (table: NftTable): boolean => table.family === 'inet' && table.name === NFT_TABLE;

/** The chain name explain uses: our per-family chains by their iptables name, everything else `family table/chain`. */
function chainId(table: NftTable, name: string): string {
  if (isOurs(table)) {
    const m = OWN_CHAIN_RE.exec(name);
    if (m) return m[3]!;
  }
  return `${table.family} ${table.name}/${name}`;
}

/**
 * The labels (iptables table) each chain of an nft table is walked under: a base chain's from its hook; a regular
 * chain's from the base chains that reach it (jump/goto), or from its name for our `v4_nat_X` chains.
 */
function chainLabels(table: NftTable, family: Family): Map<string, Set<Table>> {
  const labels = new Map<string, Set<Table>>();
  const add = (chain: string, label: Table) => {
    const set = labels.get(chain) ?? new Set<Table>();
    if (set.has(label)) return false;
    set.add(label);
    labels.set(chain, set);
    return true;
  };
  const byName = new Map(table.chains.map((c) => [c.name, c]));
  const visit = (chain: NftChain, label: Table) => {
    if (!add(chain.name, label)) return;
    for (const rule of chain.rules) {
      for (const m of rule.matchAll(/\b(?:jump|goto)\s+(\S+)/g)) {
        const next = byName.get(m[1]!);
        if (next && !next.hook) visit(next, label);
      }
    }
  };
  for (const chain of table.chains) {
    if (chain.hook) visit(chain, tableOfHook(chain.hook));
    const m = isOurs(table) ? OWN_CHAIN_RE.exec(chain.name) : null;
    if (m && m[1] === FAMILY_TAG[family]) add(chain.name, m[2] as Table);
  }
  return labels;
}

interface EntryAt {
  readonly hook: string;
  readonly priority: number;
  readonly order: number;
  readonly entry: HookEntry;
}

/** One nft chain's rules, read under one table label, as model rules (a TPROXY pair folded into one). */
function chainRules(table: NftTable, chain: NftChain, label: Table, family: Family): Pending[] {
  const ours = isOurs(table);
  const id = chainId(table, chain.name);
  const pending: Pending[] = [];
  let previous: Pending | null = null;
  for (const text of chain.rules) {
    const parsed = parseNftRule(text, family, (name) => chainId(table, name));
    if (parsed.kind === 'other-family') continue;
    const marked = parsed.comment?.startsWith(COMMENT_PREFIX) ?? false;
    const owner = marked ? 'meshctl' : ours ? 'unrecorded' : 'foreign';
    const base = { table: label, chain: id, purpose: purposeOf(parsed.comment, ours), comment: parsed.comment };
    if (parsed.kind === 'unevaluable') {
      pending.push({
        ...base,
        matches: [],
        target: PLACEHOLDER,
        kernel: { owner, text, effect: { kind: 'unevaluable', why: parsed.why } },
      });
      previous = null;
      continue;
    }
    // render-nft writes TPROXY as two rules (tproxy …, then the same matches with drop); they are one model rule.
    if (
      previous &&
      previous.target.kind === 'tproxy' &&
      parsed.target.kind === 'drop' &&
      parsed.comment === previous.comment &&
      JSON.stringify(parsed.matches) === JSON.stringify(previous.matches)
    ) {
      pending[pending.length - 1] = {
        ...previous,
        kernel: { ...previous.kernel, text: `${previous.kernel.text}; ${text}` },
      };
      previous = null;
      continue;
    }
    const rule: Pending = {
      ...base,
      matches: parsed.matches,
      target: parsed.target,
      kernel: parsed.effect ? { owner, text, effect: parsed.effect } : { owner, text },
    };
    pending.push(rule);
    previous = rule;
  }
  return pending;
}

/** The base chains a packet going `direction` enters, in the order the kernel runs them. */
function hookEntries(entryList: readonly EntryAt[], direction: 'outbound' | 'inbound'): HookEntry[] {
  return (
    entryList
      .filter((e) => HOOKS[direction].includes(e.hook))
      // Equal priorities run in registration order, which is the order nft lists the tables in.
      .sort(
        (a, b) =>
          HOOKS[direction].indexOf(a.hook) - HOOKS[direction].indexOf(b.hook) ||
          a.priority - b.priority ||
          a.order - b.order,
      )
      .map((e) => e.entry)
  );
}

function nftFamily(family: Family, tables: readonly NftTable[], recorded: FamilyPlan | null): ExplainFamilyPlan {
  const pending: Pending[] = [];
  const chains: ChainDecl[] = [];
  const entryList: EntryAt[] = [];
  for (const table of tables.filter((t) => appliesTo(t, family))) {
    const ours = isOurs(table);
    const labels = chainLabels(table, family);
    for (const chain of table.chains) {
      const own = ours ? OWN_CHAIN_RE.exec(chain.name) : null;
      if (own && own[1] !== FAMILY_TAG[family]) continue;
      const id = chainId(table, chain.name);
      if (own && isOwnedChain(id)) chains.push({ table: own[2] as Table, name: id });
      for (const label of labels.get(chain.name) ?? []) {
        if (chain.hook)
          entryList.push({
            hook: chain.hook.hook,
            priority: chain.hook.priority,
            order: entryList.length,
            entry: { table: label, chain: id, policy: chain.policy },
          });
        pending.push(...chainRules(table, chain, label, family));
      }
    }
  }
  const dispatch = (p: Pending): string | null =>
    p.purpose.startsWith('dispatch-') && p.kernel.owner === 'meshctl' && !isOwnedChain(p.chain) && p.chain.includes('/')
      ? 'built-in (nftables per-family dispatch)'
      : null;
  return {
    family,
    chains,
    rules: withOrigins(pending, recorded, dispatch),
    entries: { outbound: hookEntries(entryList, 'outbound'), inbound: hookEntries(entryList, 'inbound') },
  };
}

/** The plan explain walks for the nftables backend, from `nft list ruleset`. `recorded` is the ledger's plan. */
export function planFromNftRuleset(ruleset: string, recorded: CapturePlan | null): ExplainPlan {
  const tables = parseNftRuleset(ruleset);
  return {
    source: 'kernel',
    families: FAMILIES.map((family) =>
      nftFamily(family, tables, recorded?.families.find((f) => f.family === family) ?? null),
    ),
    routes: recorded?.routes ?? [],
    loopbackAddresses: recorded?.loopbackAddresses ?? [],
  };
}

// --- differences -----------------------------------------------------------------------------------------------

/** meshctl's rules of a plan as `family table chain ruleKey` → display lines (several for duplicates). */
function ownRules(plan: ExplainPlan | CapturePlan): Map<string, string[]> {
  const out = new Map<string, string[]>();
  for (const fp of plan.families) {
    for (const rule of fp.rules as readonly ExplainRule[]) {
      if (rule.kernel?.owner === 'foreign') continue;
      if (rule.kernel && rule.chain.includes('/')) continue; // nft base chains: the dispatch layer, not a planned rule
      const unparsed = rule.kernel?.effect?.kind === 'unevaluable';
      const key = `${fp.family} ${rule.table} ${rule.chain} ${unparsed ? `unparsed ${rule.kernel!.text}` : ruleKey(rule)}`;
      const text = rule.kernel?.text ?? renderRule(rule, fp.family);
      out.set(key, [
        ...(out.get(key) ?? []),
        `${fp.family} ${rule.table} ${rule.chain}: meshctl:${rule.purpose} (${rule.origin}) ${text}`,
      ]);
    }
  }
  return out;
}

function minus(a: Map<string, string[]>, b: Map<string, string[]>): string[] {
  const out: string[] = [];
  for (const [key, lines] of a) out.push(...lines.slice(b.get(key)?.length ?? 0));
  return out;
}

/** meshctl's rules in `left` that `right` lacks and the other way round (foreign rules are not compared). */
export function compareOwnRules(
  left: ExplainPlan | CapturePlan,
  right: ExplainPlan | CapturePlan,
): { leftOnly: string[]; rightOnly: string[] } {
  const a = ownRules(left);
  const b = ownRules(right);
  return { leftOnly: minus(a, b), rightOnly: minus(b, a) };
}

export interface FieldDifference {
  /** Config path, e.g. `capture.outbound.excludePorts`. */
  readonly path: string;
  readonly installed: string;
  readonly config: string;
}

/** The config fields the planner reads (capture rules), so only differences that can change rules are listed. */
function planInputs(c: Config): unknown {
  const { user, outboundPort, inboundPort, adminPort, inboundPassthroughSource } = c.proxy;
  const { sshPorts, unsafeCaptureSsh, sshPeer } = c.safety;
  // capture.backend picks where the rules go, not which rules: it is not a difference explain should report.
  const { backend: _backend, ...capture } = c.capture;
  return {
    capture,
    proxy: { user, outboundPort, inboundPort, adminPort, inboundPassthroughSource },
    safety: { sshPorts, unsafeCaptureSsh, sshPeer },
  };
}

function formatValue(value: unknown): string {
  if (value === null || value === undefined) return 'none';
  if (Array.isArray(value)) return value.length === 0 ? 'none' : value.map(formatValue).join(',');
  if (typeof value === 'object') {
    const v = value as Record<string, unknown>;
    if (typeof v.from === 'number' && typeof v.to === 'number')
      return v.from === v.to ? `${v.from}` : `${v.from}-${v.to}`;
    if (typeof v.address === 'string' && typeof v.prefix === 'number') return `${v.address}/${v.prefix}`;
    return JSON.stringify(value);
  }
  return String(value);
}

const isRecord = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);

/** Which rule-shaping config fields differ between the installed config (ledger) and the current one. */
function diffConfigFields(installed: Config, current: Config): FieldDifference[] {
  const out: FieldDifference[] = [];
  const walk = (a: unknown, b: unknown, path: string) => {
    if (isRecord(a) && isRecord(b) && !('from' in a) && !('prefix' in a)) {
      for (const key of new Set([...Object.keys(a), ...Object.keys(b)]))
        walk(a[key], b[key], path ? `${path}.${key}` : key);
      return;
    }
    if (JSON.stringify(a) !== JSON.stringify(b)) out.push({ path, installed: formatValue(a), config: formatValue(b) });
  };
  walk(planInputs(installed), planInputs(current), '');
  return out;
}

export interface RuleDifferences {
  /** True when meshctl's rules in the kernel are not those the current config plans (explain would differ). */
  readonly differs: boolean;
  /** Rule-shaping fields that differ between the installed config and the current one. */
  readonly configFields: readonly FieldDifference[];
  /** meshctl rules in the kernel that the config does not plan, and planned rules the kernel lacks. */
  readonly kernelOnly: readonly string[];
  readonly configOnly: readonly string[];
  /** meshctl rules in the kernel that differ from what the install recorded (drift: `meshctl status`). */
  readonly drift: { readonly kernelOnly: readonly string[]; readonly recordedOnly: readonly string[] };
}

/** Compares the kernel's meshctl rules with the config's plan and with what the install recorded. */
export function describeDifferences(
  kernel: ExplainPlan,
  configPlan: CapturePlan,
  recorded: CapturePlan,
  installed: Config,
  current: Config,
): RuleDifferences {
  const vsConfig = compareOwnRules(kernel, configPlan);
  const vsRecorded = compareOwnRules(kernel, recorded);
  return {
    differs: vsConfig.leftOnly.length + vsConfig.rightOnly.length > 0,
    configFields: diffConfigFields(installed, current),
    kernelOnly: vsConfig.leftOnly,
    configOnly: vsConfig.rightOnly,
    drift: { kernelOnly: vsRecorded.leftOnly, recordedOnly: vsRecorded.rightOnly },
  };
}
