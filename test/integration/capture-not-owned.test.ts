// Never adopt what is not ours: a MESHCTL_ chain (IPv4 or IPv6) or a `table inet meshctl` that meshctl did not
// create is refused with NOT_OWNED by install (nothing changes, byte for byte), and uninstall removes only what the
// ledger lists, never such an object. Real kernel, one namespace per case, per backend.
import { afterAll, describe, expect, it } from 'vitest';
import { MeshctlError, isMeshctlError } from '../../src/errors.js';
import { installCapture } from '../../src/netfilter/install.js';
import { readLedger, scopeDir } from '../../src/netfilter/transaction/ledger.js';
import { uninstallCapture } from '../../src/netfilter/uninstall.js';
import type { Backend } from '../../src/config/types.js';
import { integrationEnabled } from '../helpers/integration.js';
import {
  BACKEND_SHORT,
  BACKENDS,
  labConfig,
  labEnv,
  labNamespaces,
  nftForeign,
  restoreForeign,
  rulesetOf,
  tempStateDir,
} from '../helpers/netfilter-lab.js';

const { freshNs, cleanup } = labNamespaces();

async function refusal(run: () => Promise<unknown>): Promise<MeshctlError> {
  try {
    await run();
  } catch (error) {
    if (isMeshctlError(error)) return error;
    throw error;
  }
  throw new Error('expected NOT_OWNED, but the command succeeded');
}

/** A foreign object with our name, in the form each backend would adopt. */
function addForeignNamesake(ns: string, backend: Backend): void {
  if (backend === 'nftables') {
    nftForeign(
      ns,
      'table inet meshctl {\n  chain MESHCTL_OUTPUT { tcp dport 9 return; }\n  chain out { type nat hook output priority -100; policy accept; jump MESHCTL_OUTPUT; }\n}\n',
    );
    return;
  }
  restoreForeign(
    ns,
    backend,
    'ipv4',
    [
      '*nat',
      ':MESHCTL_OUTPUT - [0:0]',
      '-A MESHCTL_OUTPUT -p tcp -m tcp --dport 9 -j RETURN',
      '-A OUTPUT -p tcp -j MESHCTL_OUTPUT',
      'COMMIT',
      '',
    ].join('\n'),
  );
  restoreForeign(ns, backend, 'ipv6', ['*nat', ':MESHCTL_OUTPUT - [0:0]', 'COMMIT', ''].join('\n'));
}

describe.skipIf(!integrationEnabled)('objects named like ours that meshctl did not create', () => {
  afterAll(cleanup);

  describe.each(BACKENDS)('%s', (backend) => {
    it('install refuses with NOT_OWNED naming the object and leaves the ruleset byte-identical', async () => {
      const ns = freshNs(`hk-no-${BACKEND_SHORT[backend]}`);
      const stateDir = tempStateDir();
      addForeignNamesake(ns, backend);
      const before = rulesetOf(ns, backend);
      const nftBefore = rulesetOf(ns, 'nftables');
      const error = await refusal(() =>
        installCapture({ config: labConfig(stateDir, backend), netns: ns, env: labEnv }),
      );
      expect(error.code).toBe('NOT_OWNED');
      expect(error.message).toContain(backend === 'nftables' ? 'table inet meshctl' : 'nat chain MESHCTL_OUTPUT');
      expect(error.hint).toMatch(backend === 'nftables' ? /nft delete table inet meshctl/ : /-X MESHCTL_OUTPUT/);
      expect(rulesetOf(ns, backend)).toBe(before);
      expect(rulesetOf(ns, 'nftables')).toBe(nftBefore);
      expect(readLedger(scopeDir(stateDir, ns))).toBeNull();
    });

    if (backend !== 'nftables') {
      it('install refuses an empty IPv6 MESHCTL_ chain too', async () => {
        const ns = freshNs(`hk-no6-${BACKEND_SHORT[backend]}`);
        const stateDir = tempStateDir();
        restoreForeign(ns, backend, 'ipv6', ['*filter', ':MESHCTL_BLOCK_OUT - [0:0]', 'COMMIT', ''].join('\n'));
        const before = rulesetOf(ns, backend);
        const error = await refusal(() =>
          installCapture({
            config: labConfig(stateDir, backend, { capture: { ipv6: 'block' } }),
            netns: ns,
            env: labEnv,
          }),
        );
        expect(error.code).toBe('NOT_OWNED');
        expect(error.message).toContain('ipv6 filter chain MESHCTL_BLOCK_OUT (empty');
        expect(rulesetOf(ns, backend)).toBe(before);
      });
    }

    it('uninstall leaves a namesake that replaced our objects after install, with NOT_OWNED', async () => {
      const ns = freshNs(`hk-nou-${BACKEND_SHORT[backend]}`);
      const stateDir = tempStateDir();
      await installCapture({ config: labConfig(stateDir, backend), netns: ns, env: labEnv });
      // Someone removes our objects by hand and creates their own under the same names.
      if (backend === 'nftables') {
        nftForeign(ns, 'delete table inet meshctl\n');
      } else {
        restoreForeign(
          ns,
          backend,
          'ipv4',
          ['*nat', ':MESHCTL_OUTPUT - [0:0]', '-A MESHCTL_OUTPUT -p tcp -m tcp --dport 9 -j RETURN', 'COMMIT', ''].join(
            '\n',
          ),
        );
      }
      if (backend === 'nftables') addForeignNamesake(ns, backend);
      const before = rulesetOf(ns, backend);
      const error = await refusal(() => uninstallCapture({ stateDir, netns: ns, env: labEnv }));
      expect(error.code).toBe('NOT_OWNED');
      expect(rulesetOf(ns, backend)).toBe(before);
      expect(rulesetOf(ns, backend)).toContain(
        backend === 'nftables' ? 'tcp dport 9 return' : '-A MESHCTL_OUTPUT -p tcp -m tcp --dport 9 -j RETURN',
      );
    });

    if (backend !== 'nftables') {
      it('uninstall removes what the ledger lists and leaves a MESHCTL_ chain it does not list', async () => {
        const ns = freshNs(`hk-nol-${BACKEND_SHORT[backend]}`);
        const stateDir = tempStateDir();
        await installCapture({ config: labConfig(stateDir, backend), netns: ns, env: labEnv });
        restoreForeign(
          ns,
          backend,
          'ipv6',
          ['*mangle', ':MESHCTL_THEIRS - [0:0]', '-A MESHCTL_THEIRS -j RETURN', 'COMMIT', ''].join('\n'),
        );
        const result = await uninstallCapture({ stateDir, netns: ns, env: labEnv });
        expect(result.action).toBe('uninstalled');
        const after = rulesetOf(ns, backend);
        expect(after).toContain(':MESHCTL_THEIRS');
        expect(after).toContain('-A MESHCTL_THEIRS -j RETURN');
        expect(after).not.toContain('meshctl:');
      });
    }
  });
});
