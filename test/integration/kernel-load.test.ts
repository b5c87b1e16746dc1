// Every rendered rule set loads into a real kernel and reads back equal to the plan: iptables-nft, iptables-legacy
// (both families, --test then --noflush, compared through parseSave + diffFamily) and native nft (nft -c, nft -f,
// nft list compared after normalisation). One fresh namespace per case and backend; nothing touches the root netns.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { diffFamily, foreignView } from '../../src/capture/diff.js';
import { parseSave } from '../../src/capture/parse-save.js';
import { renderIptablesRestore } from '../../src/capture/render-iptables.js';
import { normalizeNftListing, renderNft, renderNftDelete } from '../../src/capture/render-nft.js';
import type { CapturePlan } from '../../src/capture/model.js';
import { integrationEnabled } from '../helpers/integration.js';
import { createIsolatedNs, deleteNs } from '../helpers/netns.js';
import { unitPlans } from '../helpers/kernel-cases.js';
import {
  applyNftWithCgroups,
  createTestUnitCgroups,
  nftWithCgroups,
  planMatchesCgroups,
} from '../helpers/unit-cgroups.js';
import {
  IPTABLES_VARIANTS,
  applyNft,
  listNftTable,
  listNftTables,
  restoreIptables,
  saveIptables,
} from '../helpers/kernel-rules.js';

const plans = unitPlans();

function usesSupplementaryGroups(plan: CapturePlan): boolean {
  return plan.families.some((f) =>
    f.rules.some((r) => r.matches.some((m) => m.kind === 'gidOwner' && m.suppl === true)),
  );
}
function negatesCgroup(plan: CapturePlan): boolean {
  return plan.families.some((f) =>
    f.rules.some((r) => r.matches.some((m) => m.kind === 'cgroup' && m.negate === true)),
  );
}
const created = new Set<string>();

function freshNs(index: number, backend: string): string {
  const name = `mg-load-${index}-${backend}`;
  created.add(name);
  createIsolatedNs(name);
  return name;
}

describe.skipIf(!integrationEnabled)(
  'rendered rule sets load into a real kernel and read back equal to the plan',
  () => {
    // Both backends refuse a rule for a cgroup that does not exist: the scenarios' units get theirs.
    let removeUnitCgroups = (): void => {};
    beforeAll(() => {
      removeUnitCgroups = createTestUnitCgroups();
    });
    afterAll(() => {
      for (const ns of created) deleteNs(ns);
      removeUnitCgroups();
    });

    describe.each(plans.map((p, index) => ({ ...p, index })))('$name', ({ plan, index }) => {
      it.each(IPTABLES_VARIANTS)(
        'loads through iptables-%s-restore for every family and parses back in sync',
        (variant) => {
          const ns = freshNs(index, variant);
          try {
            for (const family of plan.families) {
              const before = foreignView(parseSave(saveIptables(ns, family.family, variant)));
              restoreIptables(ns, family.family, variant, renderIptablesRestore(family));
              const saved = saveIptables(ns, family.family, variant);
              const diff = diffFamily(family, parseSave(saved));
              expect(diff, `${family.family} via iptables-${variant}:\n${saved}`).toMatchObject({
                inSync: true,
                missingChains: [],
                extraChains: [],
                missing: [],
                extra: [],
                outOfOrder: [],
              });
              // Only our objects were added: the rest of the ruleset is what it was.
              expect(foreignView(parseSave(saved))).toBe(before);
            }
          } finally {
            deleteNs(ns);
          }
        },
      );

      it('loads through nft -c -f and nft -f, lists back exactly the rendering, replaces itself and deletes cleanly', () => {
        if (usesSupplementaryGroups(plan)) {
          // nftables cannot match supplementary groups: the renderer refuses, naming the field.
          expect(() => renderNft(plan)).toThrow(/capture\.outbound\.(in|ex)cludeGids.*nftables backend/);
          return;
        }
        if (negatesCgroup(plan)) {
          // nft's cgroupv2 match cannot negate for shallower cgroups: includeUnits is refused, naming the field.
          expect(() => renderNft(plan)).toThrow(/capture\.outbound\.includeUnits.*nftables backend/);
          return;
        }
        const ns = freshNs(index, 'nft');
        // Unit rules: nft resolves their cgroup paths itself, so it must see the hierarchy (helpers/unit-cgroups.ts).
        const units = planMatchesCgroups(plan);
        const apply = (text: string) => (units ? applyNftWithCgroups : applyNft)(ns, text);
        const list = () => (units ? nftWithCgroups(ns, ['list', 'table', 'inet', 'meshctl']) : listNftTable(ns));
        try {
          const script = renderNft(plan);
          apply(script);
          expect(normalizeNftListing(list())).toBe(normalizeNftListing(script));
          // Applying again replaces the existing table in one transaction (no duplicate rules, no error).
          apply(script);
          expect(normalizeNftListing(list())).toBe(normalizeNftListing(script));
          apply(renderNftDelete());
          expect(listNftTables(ns)).not.toContain('meshctl');
          // Deleting when absent is fine too.
          applyNft(ns, renderNftDelete());
        } finally {
          deleteNs(ns);
        }
      });
    });

    it('finds drift after a rule is deleted behind meshctl’s back', () => {
      const { plan } = plans.find((p) => p.name === 'vm-default')!;
      const family = plan.families.find((f) => f.family === 'ipv4')!;
      const ns = freshNs(999, 'drift');
      try {
        restoreIptables(ns, 'ipv4', 'nft', renderIptablesRestore(family));
        const text = saveIptables(ns, 'ipv4', 'nft');
        const victim = text.split('\n').find((l) => l.includes('meshctl:skip-proxy-gid'))!;
        restoreIptables(ns, 'ipv4', 'nft', `*nat\n${victim.replace(/^-A /, '-D ')}\nCOMMIT\n`);
        const diff = diffFamily(family, parseSave(saveIptables(ns, 'ipv4', 'nft')));
        expect(diff.inSync).toBe(false);
        expect(diff.missing.map((r) => r.purpose)).toEqual(['skip-proxy-gid']);
      } finally {
        deleteNs(ns);
      }
    });
  },
);
