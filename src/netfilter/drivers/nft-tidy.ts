// iptables-nft leaves a trace that iptables-save hides: the first rule in a built-in chain makes it create the
// nftables table and base chain (`table ip nat { chain OUTPUT { type nat hook output … } }`), and deleting the rule
// leaves both behind, empty. So that `nft list ruleset` after uninstall equals the pre-install ruleset too, the
// install snapshot records which of these tables and base chains existed, and uninstall deletes the ones that did
// not and are empty again (no rules, policy accept). Nothing with a rule in it is ever deleted.
import type { Logger } from '../../log.js';
import type { NetfilterRunner } from './runner.js';

const XT_FAMILIES = new Set(['ip', 'ip6']);
const XT_TABLES = new Set(['filter', 'nat', 'mangle', 'raw', 'security']);

interface NftChain {
  readonly name: string;
  readonly base: boolean;
  readonly policyAccept: boolean;
  readonly rules: number;
}

interface NftTable {
  readonly family: string;
  readonly name: string;
  readonly chains: NftChain[];
}

/** The iptables-nft tables (ip/ip6 filter, nat, …) in `nft list ruleset` output, with their chains. */
export function parseXtablesNftTables(ruleset: string): NftTable[] {
  const tables: NftTable[] = [];
  let table: NftTable | null = null;
  let chain: { name: string; base: boolean; policyAccept: boolean; rules: number } | null = null;
  for (const raw of ruleset.split('\n')) {
    const line = raw.trim();
    const t = /^table (\S+) (\S+) \{$/.exec(line);
    if (t && !raw.startsWith('\t')) {
      table = XT_FAMILIES.has(t[1]!) && XT_TABLES.has(t[2]!) ? { family: t[1]!, name: t[2]!, chains: [] } : null;
      if (table) tables.push(table);
      continue;
    }
    if (!table) continue;
    const c = /^chain (\S+) \{$/.exec(line);
    if (c) {
      chain = { name: c[1]!, base: false, policyAccept: true, rules: 0 };
      table.chains.push(chain);
      continue;
    }
    if (!chain) continue;
    if (line === '}') {
      chain = null;
      continue;
    }
    if (/^type \S+ hook \S+/.test(line)) {
      chain.base = true;
      chain.policyAccept = /policy accept;/.test(line);
    } else if (line !== '' && !line.startsWith('#')) {
      chain.rules++;
    }
  }
  return tables;
}

/** `ip nat` and `ip nat OUTPUT` entries for every iptables-nft table and base chain present now. */
export async function xtablesNftInventory(runner: NetfilterRunner): Promise<string[] | null> {
  const listed = await runner.exec('nft', ['list', 'ruleset']);
  if (listed.exitCode !== 0) return null;
  return parseXtablesNftTables(listed.stdout).flatMap((t) => [
    `${t.family} ${t.name}`,
    ...t.chains.filter((c) => c.base).map((c) => `${t.family} ${t.name} ${c.name}`),
  ]);
}

/** The `nft` commands deleting what `tidyXtablesNft` may delete in `ruleset`: chains first, so that a table is only ever deleted empty. */
export function tidyCommands(ruleset: string, before: readonly string[]): string[] {
  const existed = new Set(before);
  const commands: string[] = [];
  for (const table of parseXtablesNftTables(ruleset)) {
    const id = `${table.family} ${table.name}`;
    const removable = table.chains.filter(
      (c) => c.base && c.policyAccept && c.rules === 0 && !existed.has(`${id} ${c.name}`),
    );
    for (const chain of removable) commands.push(`delete chain ${id} ${chain.name}`);
    if (!existed.has(id) && removable.length === table.chains.length) commands.push(`delete table ${id}`);
  }
  return commands;
}

/** How often tidy lists and tries again when another writer put a rule into a chain between the list and the delete. */
export const TIDY_ATTEMPTS = 3;

/**
 * Deletes the empty iptables-nft tables and base chains that `before` (the inventory at install) lacks. Returns what
 * was deleted. Best effort: a failure is logged, never thrown (the rules themselves are already gone). Another
 * writer racing it cannot lose a rule: every chain is deleted by name (the kernel refuses a chain that is not empty,
 * EBUSY, and the whole batch with it) before its table, so a table is only deleted once it has nothing in it.
 */
export async function tidyXtablesNft(
  runner: NetfilterRunner,
  before: readonly string[],
  log: Logger,
): Promise<string[]> {
  let last = '';
  for (let attempt = 1; attempt <= TIDY_ATTEMPTS; attempt++) {
    const listed = await runner.exec('nft', ['list', 'ruleset']);
    if (listed.exitCode !== 0) return [];
    const commands = tidyCommands(listed.stdout, before);
    if (commands.length === 0) return [];
    const result = await runner.exec('nft', ['-f', '-'], { input: `${commands.join('\n')}\n` });
    if (result.exitCode === 0) {
      log.info({ deleted: commands, attempt }, 'deleted empty iptables-nft tables and base chains created by install');
      return commands;
    }
    last = result.stderr.trim();
    log.info(
      { commands, attempt, stderr: last },
      'deleting empty iptables-nft tables/base chains was refused (another writer changed them?); listing again',
    );
  }
  log.warn({ stderr: last }, 'could not delete the empty iptables-nft tables/base chains install created');
  return [];
}
