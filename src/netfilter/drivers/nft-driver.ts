// The native nftables backend: everything of ours is `table inet meshctl`, replaced or deleted by one `nft -f`
// transaction (add + delete + define), so both families change in one atomic step.
import type { CapturePlan } from '../../capture/model.js';
import {
  NFT_TABLE,
  normalizeNftListing,
  renderNft,
  renderNftDelete,
  renderNftTable,
} from '../../capture/render-nft.js';
import { COMMENT_PREFIX } from '../../capture/model.js';
import { MeshctlError } from '../../errors.js';
import type { Logger } from '../../log.js';
import {
  inSyncReport,
  type ApplyStep,
  type BackendDriver,
  type DriftReport,
  type KernelState,
  type TransitionTarget,
} from './driver.js';
import type { OwnedObjects, Snapshot } from './objects.js';
import type { NetfilterRunner } from './runner.js';

interface NftState extends KernelState {
  readonly ruleset: string;
  /** Our table as listed (`table inet meshctl { … }`), '' when absent. */
  readonly table: string;
}

const HEADER = `table inet ${NFT_TABLE} {`;

/** Splits `nft list ruleset` into our table block and everything else. */
function splitRuleset(ruleset: string): { ours: string; rest: string } {
  const ours: string[] = [];
  const rest: string[] = [];
  let inside = false;
  for (const line of ruleset.split('\n')) {
    if (!inside && line.trim() === HEADER && !line.startsWith('\t')) {
      inside = true;
      ours.push(line);
      continue;
    }
    if (inside) {
      ours.push(line);
      if (line === '}') inside = false;
      continue;
    }
    rest.push(line);
  }
  return { ours: ours.length > 0 ? `${ours.join('\n')}\n` : '', rest: rest.join('\n') };
}

/** Multiset difference of lines: what `a` has that `b` lacks. */
function linesMinus(a: readonly string[], b: readonly string[]): string[] {
  const left = new Map<string, number>();
  for (const line of b) left.set(line, (left.get(line) ?? 0) + 1);
  return a.filter((line) => {
    const n = left.get(line) ?? 0;
    if (n > 0) {
      left.set(line, n - 1);
      return false;
    }
    return true;
  });
}

/** Our table carries a `meshctl:` comment on its rules; one without any (empty, or someone else's rules) is not ours. */
export function isMarkedTable(listing: string): boolean {
  return listing.includes(`comment "${COMMENT_PREFIX}`);
}

function refuseForeignTable(listing: string, doing: string): void {
  if (listing === '' || isMarkedTable(listing)) return;
  const rules = listing.split('\n').filter((l) => /^\t\t(?!type |policy )\S/.test(l)).length;
  throw new MeshctlError(
    'NOT_OWNED',
    `table inet ${NFT_TABLE} exists (${rules} rule(s), none with a meshctl: comment) but meshctl did not create it; ${doing} would replace or delete it`,
    `if it is not in use, delete it (nft delete table inet ${NFT_TABLE}); otherwise rename the table that uses the name; then run the command again`,
  );
}

const nftStep = (text: string): ApplyStep[] => [{ label: 'inet', family: null, text }];

/** The nft scripts that take our table (`table`, '' when absent) to `target`. */
function nftStepsTo(table: string, target: TransitionTarget): ApplyStep[] {
  refuseForeignTable(table, target.kind === 'plan' ? 'install' : 'this change');
  const exists = table !== '';
  if (target.kind === 'plan' && target.plan.families.length > 0) return nftStep(renderNft(target.plan));
  if (target.kind === 'objects' && target.objects.kind === 'nftables' && target.objects.listing !== '') {
    // Already exactly the recorded table (a rollback of an untouched table): nothing to do.
    if (normalizeNftListing(table) === normalizeNftListing(target.objects.listing)) return [];
    return nftStep(`${renderNftDelete()}${target.objects.listing}`);
  }
  return exists ? nftStep(renderNftDelete()) : [];
}

/** How our table in the kernel (`actualText`, '' when absent) differs from the one `plan` renders. */
function nftDrift(actualText: string, plan: CapturePlan): DriftReport[] {
  if (plan.families.length === 0 && actualText === '') return [];
  const expected = plan.families.length > 0 ? normalizeNftListing(renderNftTable(plan)).split('\n') : [];
  const actual = actualText === '' ? [] : normalizeNftListing(actualText).split('\n');
  if (expected.join('\n') === actual.join('\n')) return [inSyncReport('inet')];
  const missing = linesMinus(expected, actual);
  const extra = linesMinus(actual, expected);
  const isChain = (l: string) => l.startsWith('chain ') || l.startsWith('table ');
  return [
    {
      label: 'inet',
      inSync: false,
      missingChains: missing.filter(isChain),
      extraChains: extra.filter(isChain),
      missing: missing.filter((l) => !isChain(l) && l !== '}'),
      extra: extra.filter((l) => !isChain(l) && l !== '}'),
      outOfOrder:
        missing.length === 0 && extra.length === 0
          ? [`table inet ${NFT_TABLE}: the rules are all there but in another order`]
          : [],
    },
  ];
}

export function createNftDriver(runner: NetfilterRunner, log: Logger): BackendDriver {
  const dlog = log.child({ component: 'nftables' });
  const asNft = (state: KernelState): NftState => state as NftState;

  return {
    backend: 'nftables',
    async read() {
      const ruleset = await runner.list();
      const state: NftState = {
        backend: 'nftables',
        texts: new Map([['inet', ruleset]]),
        ruleset,
        table: splitRuleset(ruleset).ours,
      };
      return state;
    },
    stepsTo(state, target: TransitionTarget) {
      return nftStepsTo(asNft(state).table, target);
    },
    stepsRemoving(state, objects) {
      // Only what the ledger lists is removed, and only while it still carries our markers.
      if (objects.kind !== 'nftables' || objects.listing === '') return [];
      refuseForeignTable(asNft(state).table, 'uninstall');
      return asNft(state).table !== '' ? nftStep(renderNftDelete()) : [];
    },
    async check(s) {
      await runner.nft(s.text, { check: true });
    },
    async apply(s) {
      await runner.nft(s.text, { check: false });
      dlog.info({ lines: s.text.split('\n').length - 1 }, 'applied');
    },
    owned(state): OwnedObjects {
      return { kind: 'nftables', listing: asNft(state).table };
    },
    remaining(state, objects) {
      return objects.kind === 'nftables' && objects.listing !== '' && asNft(state).table !== ''
        ? [`table inet ${NFT_TABLE}`]
        : [];
    },
    drift(state, plan: CapturePlan): DriftReport[] {
      return nftDrift(asNft(state).table, plan);
    },
    foreign(state) {
      return normalizeNftListing(splitRuleset(asNft(state).ruleset).rest);
    },
    async snapshot(state): Promise<Snapshot> {
      return { kind: 'nftables', ruleset: asNft(state).ruleset };
    },
    async tidy() {
      return [];
    },
    foreignOfSnapshot(snapshot) {
      return snapshot.kind === 'nftables' ? normalizeNftListing(splitRuleset(snapshot.ruleset).rest) : '';
    },
    ownedInSnapshot(snapshot) {
      return { kind: 'nftables', listing: snapshot.kind === 'nftables' ? splitRuleset(snapshot.ruleset).ours : '' };
    },
  };
}
