// Builds the one `iptables-restore --noflush` input that moves a family from the objects it has now to the objects
// wanted, per table in a single COMMIT. Pure. Our chains are redeclared (`:MESHCTL_X - [0:0]` creates or flushes
// in noflush mode) and refilled, our jumps in built-in chains are deleted and re-inserted at the same position,
// and chains no longer wanted are flushed and deleted after their jumps are gone: the kernel swaps the table in
// one step, so there is never a moment without capture (istio's iptables-restore flow, kuma's RestoreWithFlush).
import { renderRule } from '../../capture/render-iptables.js';
import { TABLES, isOwnedChain, type FamilyPlan } from '../../capture/model.js';
import { isOwnedRule, tokenizeSaveLine, type SaveDump } from '../../capture/parse-save.js';
import { MeshctlError } from '../../errors.js';
import type { RuleLine, TableObjects } from './objects.js';

/** The objects a plan creates, rendered the way `iptables-restore` takes them. */
export function planObjects(plan: FamilyPlan): TableObjects[] {
  return TABLES.flatMap((table) => {
    const chains = plan.chains.filter((c) => c.table === table).map((c) => c.name);
    const rules = plan.rules
      .filter((r) => r.table === table)
      .map((r) => ({ chain: r.chain, raw: renderRule(r, plan.family) }));
    return chains.length > 0 || rules.length > 0 ? [{ table, chains, rules }] : [];
  });
}

/** Everything in a dump that carries our markers: MESHCTL_ chains and every rule isOwnedRule accepts. */
export function ownedInDump(dump: SaveDump): TableObjects[] {
  return dump.tables.flatMap((t) => {
    const chains = t.chains.filter((c) => !c.builtin && isOwnedChain(c.name)).map((c) => c.name);
    const rules = t.rules.filter((r) => isOwnedRule(r)).map((r) => ({ chain: r.chain, raw: r.raw }));
    return chains.length > 0 || rules.length > 0 ? [{ table: t.table, chains, rules }] : [];
  });
}

/** `objects` restricted to what still exists in `dump` (chains present; built-in chain rules matched one for one). */
export function presentIn(dump: SaveDump, objects: readonly TableObjects[]): TableObjects[] {
  return objects.flatMap((o) => {
    const t = dump.tables.find((x) => x.table === o.table);
    if (!t) return [];
    const names = new Set(t.chains.map((c) => c.name));
    const chains = o.chains.filter((c) => names.has(c));
    const available = t.rules.filter((r) => !isOwnedChain(r.chain)).map((r) => key(r.chain, r.raw));
    const rules: RuleLine[] = [];
    for (const rule of o.rules) {
      if (isOwnedChain(rule.chain)) {
        if (names.has(rule.chain)) rules.push(rule);
        continue;
      }
      const at = available.indexOf(key(rule.chain, rule.raw));
      if (at >= 0) {
        available.splice(at, 1);
        rules.push(rule);
      }
    }
    return chains.length > 0 || rules.length > 0 ? [{ table: o.table, chains, rules }] : [];
  });
}

function key(chain: string, raw: string): string {
  return `${chain}\u0000${canonical(raw)}`;
}

/** Token-level form, so `"a b"` quoting differences between renderers do not matter. */
function canonical(raw: string): string {
  try {
    return JSON.stringify(tokenizeSaveLine(raw));
  } catch {
    return raw;
  }
}

function jumpTarget(raw: string): string | null {
  let tokens: string[];
  try {
    tokens = tokenizeSaveLine(raw);
  } catch {
    return null;
  }
  const at = tokens.findIndex((t) => t === '-j' || t === '--jump');
  return at >= 0 ? (tokens[at + 1] ?? null) : null;
}

/**
 * The restore text turning `remove` (objects present in `dump`) into `target`, or '' when there is nothing to do.
 * Throws NOT_OWNED when a rule that stays (one we do not own) jumps to a chain this would delete.
 */
export function buildTransition(
  dump: SaveDump,
  remove: readonly TableObjects[],
  target: readonly TableObjects[],
): string {
  const sections: string[] = [];
  for (const table of TABLES) {
    const cur = remove.find((o) => o.table === table) ?? { table, chains: [], rules: [] };
    const tgt = target.find((o) => o.table === table) ?? { table, chains: [], rules: [] };
    if (cur.chains.length === 0 && cur.rules.length === 0 && tgt.chains.length === 0 && tgt.rules.length === 0)
      continue;
    const saved = dump.tables.find((t) => t.table === table);
    const lines: string[] = [`*${table}`];
    const dropped = cur.chains.filter((c) => !tgt.chains.includes(c));
    for (const chain of [...tgt.chains, ...dropped]) lines.push(`:${chain} - [0:0]`);

    // Built-in chains (the jumps into ours): delete ours, then insert the wanted ones where the first of ours was.
    const builtinChains = new Set(
      [...cur.rules, ...tgt.rules].filter((r) => !isOwnedChain(r.chain)).map((r) => r.chain),
    );
    const removedKeys: string[] = [];
    for (const chain of builtinChains) {
      const ours = cur.rules.filter((r) => r.chain === chain);
      const wanted = tgt.rules.filter((r) => r.chain === chain);
      const inChain = (saved?.rules ?? []).filter((r) => r.chain === chain);
      const pending = ours.map((r) => canonical(r.raw));
      let firstOurs = -1;
      let foreignBefore = 0;
      const sequence: string[] = [];
      for (const rule of inChain) {
        const at = pending.indexOf(canonical(rule.raw));
        if (at >= 0) {
          pending.splice(at, 1);
          sequence.push(canonical(rule.raw));
          if (firstOurs < 0) firstOurs = foreignBefore;
        } else if (firstOurs < 0) {
          foreignBefore++;
        }
      }
      const unchanged =
        sequence.length === wanted.length &&
        sequence.every((s, i) => s === canonical(wanted[i]!.raw)) &&
        firstOurs >= 0 === wanted.length > 0;
      if (unchanged) continue;
      for (const rule of ours) {
        lines.push(`-D ${chain} ${rule.raw}`);
        removedKeys.push(key(chain, rule.raw));
      }
      wanted.forEach((rule, i) => {
        lines.push(firstOurs >= 0 ? `-I ${chain} ${firstOurs + 1 + i} ${rule.raw}` : `-A ${chain} ${rule.raw}`);
      });
    }
    for (const rule of tgt.rules.filter((r) => isOwnedChain(r.chain))) lines.push(`-A ${rule.chain} ${rule.raw}`);
    for (const chain of dropped) lines.push(`-X ${chain}`);
    lines.push('COMMIT');

    // A rule that survives (not ours, not inside a chain we flush) must not jump to a chain we delete.
    const flushed = new Set([...tgt.chains, ...dropped]);
    const removedLeft = [...removedKeys];
    for (const rule of saved?.rules ?? []) {
      if (flushed.has(rule.chain)) continue;
      const at = removedLeft.indexOf(key(rule.chain, rule.raw));
      if (at >= 0) {
        removedLeft.splice(at, 1);
        continue;
      }
      const jump = jumpTarget(rule.raw);
      if (jump !== null && dropped.includes(jump)) {
        throw new MeshctlError(
          'NOT_OWNED',
          `${table} rule "-A ${rule.chain} ${rule.raw}" jumps to ${jump}, which meshctl is about to delete, but meshctl did not create that rule`,
          `remove or change that rule first (iptables -t ${table} -D ${rule.chain} …), then run the command again`,
        );
      }
    }
    sections.push(lines.join('\n'));
  }
  return sections.length > 0 ? `${sections.join('\n')}\n` : '';
}
