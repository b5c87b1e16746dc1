// Install, re-install, drift repair and uninstall on a real kernel, in namespaces, for iptables-legacy, iptables-nft
// and native nftables. Foreign rules (Docker-like chains and jumps, a filter rule) exist before install and more
// are added after install; uninstall must leave exactly pre-install + those additions.
import { afterAll, describe, expect, it } from 'vitest';
import { isMeshctlError } from '../../src/errors.js';
import { installCapture } from '../../src/netfilter/install.js';
import { readLedger, scopeDir } from '../../src/netfilter/transaction/ledger.js';
import { captureStatus } from '../../src/netfilter/status.js';
import { uninstallCapture } from '../../src/netfilter/uninstall.js';
import { integrationEnabled } from '../helpers/integration.js';
import { inNs } from '../helpers/netns.js';
import {
  BACKEND_SHORT,
  BACKENDS,
  addDockerLike,
  addForeignLater,
  deleteOurRule,
  faultBin,
  labConfig,
  labEnv,
  labNamespaces,
  meshctlResidue,
  moveOurRuleToEnd,
  normalizedRuleset,
  restoreForeign,
  rulesetOf,
  tempStateDir,
} from '../helpers/netfilter-lab.js';

const { freshNs, cleanup } = labNamespaces();

describe.skipIf(!integrationEnabled)('install and uninstall on a real kernel', () => {
  afterAll(cleanup);

  describe.each(BACKENDS)('%s', (backend) => {
    it('leaves the ruleset equal to pre-install plus the foreign rules added after install', async () => {
      const ns = freshNs(`mn-rt-${BACKEND_SHORT[backend]}`);
      const twin = freshNs(`mn-rt-${BACKEND_SHORT[backend]}-twin`);
      const stateDir = tempStateDir();
      addDockerLike(ns, backend);
      addDockerLike(twin, backend);
      const before = normalizedRuleset(ns, backend);

      const config = labConfig(stateDir, backend, {
        capture: { outbound: { excludePorts: [5432], excludeCidrs: ['10.0.0.0/8', 'fd00:1::/64'] } },
      });
      const installed = await installCapture({ config, netns: ns, env: labEnv });
      expect(installed.action).toBe('installed');
      expect(installed.backend).toBe(backend);
      expect(normalizedRuleset(ns, backend)).not.toBe(before);
      expect(meshctlResidue(ns).length).toBeGreaterThan(0);
      // The foreign rules are still in place while we are installed.
      expect(rulesetOf(ns, backend)).toContain(
        backend === 'nftables' ? 'dnat to 172.17.0.2:80' : '--to-destination 172.17.0.2:80',
      );

      addForeignLater(ns, backend);
      addForeignLater(twin, backend);
      const result = await uninstallCapture({ stateDir, netns: ns, env: labEnv });
      expect(result.action).toBe('uninstalled');
      expect(result.foreignChanges.added.length).toBeGreaterThan(0);
      expect(result.foreignChanges.removed).toEqual([]);
      expect(meshctlResidue(ns)).toEqual([]);
      expect(normalizedRuleset(ns, backend)).toBe(normalizedRuleset(twin, backend));
      // Byte for byte as nftables sees it, too: with iptables-nft the empty tables and base chains created for our
      // jumps are gone again (for iptables-legacy this is the nft view, untouched throughout).
      expect(rulesetOf(ns, 'nftables')).toBe(rulesetOf(twin, 'nftables'));
      expect(readLedger(scopeDir(stateDir, ns))).toBeNull();
    });

    it('makes a re-install with the same config a verified no-op, without a single restore', async () => {
      const ns = freshNs(`mn-rt-${BACKEND_SHORT[backend]}-same`);
      const stateDir = tempStateDir();
      const config = labConfig(stateDir, backend);
      await installCapture({ config, netns: ns, env: labEnv });
      const rules = normalizedRuleset(ns, backend);
      const bin = faultBin();
      const again = await installCapture({ config, netns: ns, env: bin.env });
      expect(again.action).toBe('unchanged');
      expect(again.steps).toEqual([]);
      expect(bin.calls().filter((c) => /-restore|^nft -f|^nft -c/.test(c))).toEqual([]);
      expect(bin.calls().filter((c) => /-save|^nft list/.test(c)).length).toBeGreaterThan(0);
      expect(normalizedRuleset(ns, backend)).toBe(rules);
      await uninstallCapture({ stateDir, netns: ns, env: labEnv });
    });

    it('replaces our chains with one atomic restore per family when the config changes', async () => {
      const ns = freshNs(`mn-rt-${BACKEND_SHORT[backend]}-upd`);
      const twin = freshNs(`mn-rt-${BACKEND_SHORT[backend]}-updt`);
      const stateDir = tempStateDir();
      addDockerLike(ns, backend);
      addDockerLike(twin, backend);
      await installCapture({
        config: labConfig(stateDir, backend, { capture: { outbound: { excludePorts: [5432] } } }),
        netns: ns,
        env: labEnv,
      });
      const changed = labConfig(stateDir, backend, {
        capture: { ipv6: 'block', outbound: { excludePorts: [6543], excludeUids: [33] } },
      });
      const bin = faultBin();
      const updated = await installCapture({ config: changed, netns: ns, env: bin.env });
      expect(updated.action).toBe('updated');
      const applies = bin.calls().filter((c) => /-restore --wait --noflush$|^nft -f -$/.test(c));
      expect(applies).toEqual(
        backend === 'nftables'
          ? ['nft -f -']
          : [
              `iptables-${BACKEND_SHORT[backend] === 'leg' ? 'legacy' : 'nft'}-restore --wait --noflush`,
              `ip6tables-${BACKEND_SHORT[backend] === 'leg' ? 'legacy' : 'nft'}-restore --wait --noflush`,
            ],
      );
      if (backend !== 'nftables') {
        // IPv4 keeps its chains: they are redeclared (flushed and refilled) in the same COMMIT, never deleted.
        const v4 = updated.steps.find((s) => s.label === 'ipv4')!.text;
        expect(v4).not.toMatch(/^-X |^-F /m);
        expect(v4.match(/^COMMIT$/gm)).toHaveLength(1);
        expect(v4).toContain(':MESHCTL_OUTPUT - [0:0]');
        // IPv6 moves from nat capture to filter blocking: nat chains go after their jumps, in the nat COMMIT.
        const v6 = updated.steps.find((s) => s.label === 'ipv6')!.text;
        expect(v6.indexOf('-X MESHCTL_OUTPUT')).toBeGreaterThan(v6.indexOf('-D OUTPUT'));
      }
      // The result is exactly what a fresh install of the new config gives.
      await installCapture({
        config: labConfig(tempStateDir(), backend, {
          capture: { ipv6: 'block', outbound: { excludePorts: [6543], excludeUids: [33] } },
        }),
        netns: twin,
        env: labEnv,
      });
      expect(normalizedRuleset(ns, backend)).toBe(normalizedRuleset(twin, backend));
      expect((await captureStatus({ stateDir, netns: ns, env: labEnv })).inSync).toBe(true);
      await uninstallCapture({ stateDir, netns: ns, env: labEnv });
      expect(meshctlResidue(ns)).toEqual([]);
    });

    it('reports a deleted and a reordered rule as drift, and install repairs both', async () => {
      const ns = freshNs(`mn-rt-${BACKEND_SHORT[backend]}-drift`);
      const stateDir = tempStateDir();
      const config = labConfig(stateDir, backend, { capture: { outbound: { excludePorts: [5432] } } });
      await installCapture({ config, netns: ns, env: labEnv });
      const clean = normalizedRuleset(ns, backend);

      deleteOurRule(ns, backend, 'ipv4', 'meshctl:skip-proxy-uid');
      const deleted = await captureStatus({ stateDir, netns: ns, env: labEnv });
      expect(deleted.installed).toBe(true);
      expect(deleted.inSync).toBe(false);
      const missing = deleted.drift.flatMap((d) => d.missing);
      expect(missing).toHaveLength(1);
      expect(missing[0]).toContain('meshctl:skip-proxy-uid');
      expect(deleted.drift.flatMap((d) => [...d.extra, ...d.outOfOrder])).toEqual([]);

      const repaired = await installCapture({ config, netns: ns, env: labEnv });
      expect(repaired.action).toBe('repaired');
      expect((await captureStatus({ stateDir, netns: ns, env: labEnv })).inSync).toBe(true);
      expect(normalizedRuleset(ns, backend)).toBe(clean);

      moveOurRuleToEnd(ns, backend, 'ipv6', 'meshctl:skip-port');
      const reordered = await captureStatus({ stateDir, netns: ns, env: labEnv });
      expect(reordered.inSync).toBe(false);
      expect(reordered.drift.flatMap((d) => d.outOfOrder).join('\n')).toMatch(
        backend === 'nftables' ? /in another order/ : /MESHCTL_OUTPUT/,
      );
      expect(reordered.drift.flatMap((d) => d.missing)).toEqual([]);
      expect((await installCapture({ config, netns: ns, env: labEnv })).action).toBe('repaired');
      expect((await captureStatus({ stateDir, netns: ns, env: labEnv })).inSync).toBe(true);
      expect(normalizedRuleset(ns, backend)).toBe(clean);
      await uninstallCapture({ stateDir, netns: ns, env: labEnv });
    });
  });

  describe.each(['iptables-legacy', 'iptables-nft'] as const)('%s ownership', (backend) => {
    it('leaves a MESHCTL_ chain it did not create in place and reports it', async () => {
      const ns = freshNs(`mn-rt-${BACKEND_SHORT[backend]}-own`);
      const stateDir = tempStateDir();
      await installCapture({ config: labConfig(stateDir, backend), netns: ns, env: labEnv });
      restoreForeign(
        ns,
        backend,
        'ipv4',
        '*filter\n:MESHCTL_SOMEONE_ELSE - [0:0]\n-A MESHCTL_SOMEONE_ELSE -j RETURN\nCOMMIT\n',
      );
      const result = await uninstallCapture({ stateDir, netns: ns, env: labEnv });
      expect(result.leftovers).toEqual(['ipv4 filter chain MESHCTL_SOMEONE_ELSE']);
      expect(meshctlResidue(ns).every((l) => l.includes('MESHCTL_SOMEONE_ELSE'))).toBe(true);
    });

    it('refuses to uninstall while a foreign rule jumps into one of its chains, and changes nothing', async () => {
      const ns = freshNs(`mn-rt-${BACKEND_SHORT[backend]}-ref`);
      const stateDir = tempStateDir();
      await installCapture({ config: labConfig(stateDir, backend), netns: ns, env: labEnv });
      restoreForeign(ns, backend, 'ipv4', '*nat\n:HOOK - [0:0]\n-A HOOK -j MESHCTL_REDIRECT\nCOMMIT\n');
      const rules = normalizedRuleset(ns, backend);
      const error = await uninstallCapture({ stateDir, netns: ns, env: labEnv }).catch((e: unknown) => e);
      expect(isMeshctlError(error, 'NOT_OWNED')).toBe(true);
      expect((error as Error).message).toContain('"-A HOOK -j MESHCTL_REDIRECT" jumps to MESHCTL_REDIRECT');
      expect(normalizedRuleset(ns, backend)).toBe(rules);
      expect(readLedger(scopeDir(stateDir, ns))?.state).toBe('installed');
      restoreForeign(ns, backend, 'ipv4', '*nat\n-D HOOK -j MESHCTL_REDIRECT\nCOMMIT\n');
      expect((await uninstallCapture({ stateDir, netns: ns, env: labEnv })).action).toBe('uninstalled');
    });
  });

  it("keeps the backend that holds the host's rules when detecting, and explains the choice", async () => {
    const ns = freshNs('mn-rt-detect');
    const stateDir = tempStateDir();
    restoreForeign(ns, 'iptables-legacy', 'ipv4', '*filter\n-A INPUT -p tcp -m tcp --dport 9999 -j DROP\nCOMMIT\n');
    // The config names a backend; the flag (--backend auto) overrides it, as on the command line.
    const config = labConfig(stateDir, 'iptables-nft');
    const result = await installCapture({ config, netns: ns, env: labEnv, backend: 'auto' });
    expect(result.backend).toBe('iptables-legacy');
    expect(result.backendReasons.join('\n')).toContain('rules held: iptables-legacy 1, iptables-nft 0');
    expect(inNs(ns, 'iptables-legacy-save', ['-t', 'nat'])).toContain('MESHCTL_OUTPUT');
    await uninstallCapture({ stateDir, netns: ns, env: labEnv });
  });
});
