// The iptables backends (legacy and nft flavours of iptables-restore): one `--noflush` restore per family holding a
// COMMIT per table, built by transition.ts from the family's iptables-save dump.
import { FAMILIES, type Family } from '../../values/ip.js';
import { type CapturePlan, type FamilyPlan } from '../../capture/model.js';
import { diffFamily, foreignView } from '../../capture/diff.js';
import { parseSave, tokenizeSaveLine, type SaveDump } from '../../capture/parse-save.js';
import { COMMENT_PREFIX, isOwnedChain } from '../../capture/model.js';
import { MeshctlError } from '../../errors.js';
import { renderRule } from '../../capture/render-iptables.js';
import type { Logger } from '../../log.js';
import type { ApplyStep, BackendDriver, DriftReport, KernelState, TransitionTarget } from './driver.js';
import type { FamilyObjects, OwnedObjects, Snapshot, TableObjects } from './objects.js';
import type { NetfilterRunner, XtablesBackend } from './runner.js';
import { tidyXtablesNft, xtablesNftInventory } from './nft-tidy.js';
import { buildTransition, ownedInDump, planObjects, presentIn } from './xtables-transition.js';

interface XtablesState extends KernelState {
  readonly dumps: ReadonlyMap<Family, SaveDump>;
  /** Families whose save failed (no IPv6 in the kernel): usable only when nothing is planned for them. */
  readonly unreadable: ReadonlyMap<Family, unknown>;
}

function asXt(state: KernelState): XtablesState {
  return state as XtablesState;
}

/** Splits iptables-save text into `*table … COMMIT` sections (comments dropped). */
export function splitTables(text: string): { table: string; text: string }[] {
  const out: { table: string; text: string }[] = [];
  let current: string[] | null = null;
  let name = '';
  for (const line of text.split('\n')) {
    if (line.startsWith('*')) {
      current = [line];
      name = line.slice(1).trim();
    } else if (current) {
      if (line.startsWith('#')) continue;
      current.push(line);
      if (line.trim() === 'COMMIT') {
        out.push({ table: name, text: `${current.join('\n')}\n` });
        current = null;
      }
    }
  }
  return out;
}

function canonicalObjects(tables: readonly TableObjects[]): string {
  const canon = (raw: string): string => {
    try {
      return JSON.stringify(tokenizeSaveLine(raw));
    } catch {
      return raw;
    }
  };
  return JSON.stringify(
    tables
      .filter((t) => t.chains.length + t.rules.length > 0)
      .map((t) => [t.table, [...t.chains].sort(), t.rules.map((r) => [r.chain, canon(r.raw)])]),
  );
}

function sameObjects(a: readonly TableObjects[], b: readonly TableObjects[]): boolean {
  return canonicalObjects(a) === canonicalObjects(b);
}

function familyObjects(objects: OwnedObjects, family: Family): readonly TableObjects[] {
  if (objects.kind !== 'xtables') return [];
  return objects.families.find((f) => f.family === family)?.tables ?? [];
}

function describe(family: Family, tables: readonly TableObjects[]): string[] {
  return tables.flatMap((t) => [
    ...t.chains.map((c) => `${family} ${t.table} chain ${c}`),
    ...t.rules.map((r) => `${family} ${t.table} -A ${r.chain} ${r.raw}`),
  ]);
}

const emptyPlan = (family: Family): FamilyPlan => ({ family, chains: [], rules: [] });

function dumpOf(state: KernelState, family: Family): SaveDump {
  return asXt(state).dumps.get(family) ?? { tables: [] };
}

function requireReadable(state: KernelState, family: Family): void {
  const error = asXt(state).unreadable.get(family);
  if (error !== undefined) throw error;
}

function stepFor(family: Family, text: string): ApplyStep[] {
  return text === '' ? [] : [{ label: family, family, text }];
}

/** iptables-save of every family; only IPv4 must be readable (a kernel without IPv6 has no ip6tables tables). */
async function readFamilies(backend: XtablesBackend, runner: NetfilterRunner, dlog: Logger): Promise<XtablesState> {
  const texts = new Map<string, string>();
  const dumps = new Map<Family, SaveDump>();
  const unreadable = new Map<Family, unknown>();
  await Promise.all(
    FAMILIES.map(async (family) => {
      try {
        const text = await runner.save(backend, family);
        texts.set(family, text);
        dumps.set(family, parseSave(text));
      } catch (error) {
        if (family === 'ipv4') throw error;
        dlog.warn({ family, err: error }, 'cannot read the IPv6 rules; treating them as empty');
        unreadable.set(family, error);
      }
    }),
  );
  return { backend, texts, dumps, unreadable };
}

/** MESHCTL_ chains of a dump that carry none of our markers (empty, or only rules without a `meshctl:` comment). */
export function unmarkedChains(dump: SaveDump): { table: string; chain: string; rules: number }[] {
  return dump.tables.flatMap((t) =>
    t.chains
      .filter((c) => !c.builtin && isOwnedChain(c.name))
      .map((c) => ({ table: t.table, chain: c.name, rules: t.rules.filter((r) => r.chain === c.name) }))
      .filter((c) => !c.rules.some((r) => r.comment !== null && r.comment.startsWith(COMMENT_PREFIX)))
      .map((c) => ({ table: c.table, chain: c.chain, rules: c.rules.length })),
  );
}

function notOwned(
  backend: string,
  family: Family,
  found: readonly { table: string; chain: string; rules: number }[],
  doing: string,
): MeshctlError {
  const tool = `${family === 'ipv6' ? 'ip6tables' : 'iptables'}${backend === 'iptables-legacy' ? '-legacy' : '-nft'}`;
  const list = found
    .map(
      (c) =>
        `${family} ${c.table} chain ${c.chain} (${c.rules === 0 ? 'empty' : `${c.rules} rule(s)`}, no meshctl: comment)`,
    )
    .join(', ');
  const first = found[0]!;
  return new MeshctlError(
    'NOT_OWNED',
    `${list} is named like meshctl's chains but meshctl did not create it; ${doing} would flush or delete it`,
    `if it is not in use, remove it (${tool} -t ${first.table} -F ${first.chain} && ${tool} -t ${first.table} -X ${first.chain}, after deleting the rules that jump to it); otherwise rename it out of the MESHCTL_ prefix; then run the command again`,
  );
}

/** Throws NOT_OWNED when a family holds a MESHCTL_ chain without our markers: we never flush or delete one. */
function refuseUnmarked(state: KernelState, doing: string): void {
  for (const family of FAMILIES) {
    const found = unmarkedChains(dumpOf(state, family));
    if (found.length > 0) throw notOwned(state.backend, family, found, doing);
  }
}

function stepsTo(state: KernelState, target: TransitionTarget): ApplyStep[] {
  refuseUnmarked(state, target.kind === 'plan' ? 'install' : 'this change');
  return FAMILIES.flatMap((family) => {
    const dump = dumpOf(state, family);
    const wanted =
      target.kind === 'plan'
        ? planObjects(target.plan.families.find((f) => f.family === family) ?? emptyPlan(family))
        : target.kind === 'objects'
          ? familyObjects(target.objects, family)
          : [];
    if (wanted.length > 0) requireReadable(state, family);
    const current = ownedInDump(dump);
    // Going back to recorded objects that are already there is nothing to do (a rollback of an untouched family).
    if (target.kind === 'objects' && sameObjects(current, wanted)) return [];
    return stepFor(family, buildTransition(dump, current, wanted));
  });
}

/** Drift per family that has a plan or any of our objects: capture/diff's FamilyDiff as the text status prints. */
function driftReports(state: KernelState, plan: CapturePlan): DriftReport[] {
  const reports: DriftReport[] = [];
  for (const family of FAMILIES) {
    const planned = plan.families.find((f) => f.family === family);
    const dump = dumpOf(state, family);
    if (!planned && ownedInDump(dump).length === 0) continue;
    const diff = diffFamily(planned ?? emptyPlan(family), dump);
    reports.push({
      label: family,
      inSync: diff.inSync,
      missingChains: diff.missingChains.map((c) => `${c.table} ${c.name}`),
      extraChains: diff.extraChains.map((c) => `${c.table} ${c.name}`),
      missing: diff.missing.map((r) => `${r.table} -A ${r.chain} ${renderRule(r, family)}`),
      extra: diff.extra.map((r) => `${r.table} -A ${r.chain} ${r.raw}`),
      outOfOrder: diff.outOfOrder.map(
        (o) => `${o.table} ${o.chain}: expected [${o.expected.join(' | ')}], found [${o.actual.join(' | ')}]`,
      ),
    });
  }
  return reports;
}

/** The save text of each family, table by table; with iptables-nft also which nftables tables and chains existed. */
async function snapshotOf(backend: XtablesBackend, runner: NetfilterRunner, state: KernelState): Promise<Snapshot> {
  return {
    kind: 'xtables',
    nftInventory: backend === 'iptables-nft' ? await xtablesNftInventory(runner) : null,
    families: FAMILIES.map((family) => ({
      family,
      tables: splitTables(asXt(state).texts.get(family) ?? '').map((t) => ({ table: t.table, text: t.text })),
    })),
  };
}

function foreignOfSnapshot(snapshot: Snapshot): string {
  if (snapshot.kind !== 'xtables') return '';
  return FAMILIES.map((family) => {
    const text =
      snapshot.families
        .find((f) => f.family === family)
        ?.tables.map((t) => t.text)
        .join('') ?? '';
    return `# ${family}\n${foreignView(parseSave(text))}`;
  }).join('');
}

function ownedInSnapshot(snapshot: Snapshot): OwnedObjects {
  if (snapshot.kind !== 'xtables') return { kind: 'xtables', families: [] };
  return {
    kind: 'xtables',
    families: snapshot.families.map((f) => ({
      family: f.family,
      tables: ownedInDump(parseSave(f.tables.map((t) => t.text).join(''))),
    })),
  };
}

export function createXtablesDriver(backend: XtablesBackend, runner: NetfilterRunner, log: Logger): BackendDriver {
  const dlog = log.child({ component: 'xtables', backend });
  return {
    backend,
    read: () => readFamilies(backend, runner, dlog),
    stepsTo,
    stepsRemoving(state, objects) {
      return FAMILIES.flatMap((family) => {
        const dump = dumpOf(state, family);
        const present = presentIn(dump, familyObjects(objects, family));
        // Only what the ledger lists is removed; a listed chain that now holds only unmarked rules is someone else's.
        const listed = new Set(present.flatMap((t) => t.chains.map((c) => `${t.table} ${c}`)));
        const taken = unmarkedChains(dump).filter((c) => c.rules > 0 && listed.has(`${c.table} ${c.chain}`));
        if (taken.length > 0) throw notOwned(backend, family, taken, 'uninstall');
        return stepFor(family, buildTransition(dump, present, []));
      });
    },
    async check(step) {
      await runner.restore(backend, step.family!, step.text, { mode: 'test' });
    },
    async apply(step) {
      await runner.restore(backend, step.family!, step.text, { mode: 'noflush' });
      dlog.info({ family: step.family, lines: step.text.split('\n').length - 1 }, 'applied');
    },
    owned(state) {
      const families: FamilyObjects[] = FAMILIES.map((family) => ({
        family,
        tables: ownedInDump(dumpOf(state, family)),
      }));
      return { kind: 'xtables', families };
    },
    remaining(state, objects) {
      return FAMILIES.flatMap((family) =>
        describe(family, presentIn(dumpOf(state, family), familyObjects(objects, family))),
      );
    },
    drift: driftReports,
    foreign(state) {
      return FAMILIES.map((family) => `# ${family}\n${foreignView(dumpOf(state, family))}`).join('');
    },
    snapshot: (state) => snapshotOf(backend, runner, state),
    async tidy(snapshot) {
      if (backend !== 'iptables-nft' || snapshot.kind !== 'xtables' || !snapshot.nftInventory) return [];
      return tidyXtablesNft(runner, snapshot.nftInventory, dlog);
    },
    foreignOfSnapshot,
    ownedInSnapshot,
  };
}
