// chooseBackend: the read-only heuristic (kube-proxy's and Istio's): the ledger's backend, then an explicit request,
// then the backend holding the most rules, then what `iptables` points to. Pure given an inventory.
import { describe, expect, it } from 'vitest';
import { chooseBackend, type BackendInventory } from '../../src/netfilter/host/detect.js';
import { isMeshctlError } from '../../src/errors.js';

function inventory(
  overrides: {
    legacy?: number;
    nft?: number;
    available?: Partial<BackendInventory['available']>;
    defaultIptables?: BackendInventory['defaultIptables'];
  } = {},
): BackendInventory {
  const available = { 'iptables-legacy': true, 'iptables-nft': true, nftables: true, ...overrides.available };
  return {
    available,
    missingBinaries: {
      'iptables-legacy': available['iptables-legacy'] ? [] : ['iptables-legacy-restore'],
      'iptables-nft': available['iptables-nft'] ? [] : ['iptables-nft-restore'],
      nftables: available.nftables ? [] : ['nft'],
    },
    ruleCounts: {
      'iptables-legacy': { ipv4: overrides.legacy ?? 0, ipv6: 0 },
      'iptables-nft': { ipv4: overrides.nft ?? 0, ipv6: 0 },
    },
    nativeTables: [],
    defaultIptables: overrides.defaultIptables === undefined ? 'iptables-nft' : overrides.defaultIptables,
  };
}

describe('chooseBackend', () => {
  it('picks iptables-legacy when only legacy holds rules, and says why', () => {
    const decision = chooseBackend(inventory({ legacy: 12 }), 'auto', null);
    expect(decision.backend).toBe('iptables-legacy');
    expect(decision.reasons.join('\n')).toContain('rules held: iptables-legacy 12, iptables-nft 0');
    expect(decision.reasons.at(-1)).toContain('holds more rules (12 vs 0)');
  });

  it('picks iptables-nft when it holds the rules', () => {
    expect(chooseBackend(inventory({ nft: 3 }), 'auto', null).backend).toBe('iptables-nft');
  });

  it('warns about mixing when both iptables backends hold rules, and picks the bigger one', () => {
    const decision = chooseBackend(inventory({ legacy: 2, nft: 40 }), 'auto', null);
    expect(decision.backend).toBe('iptables-nft');
    expect(decision.warnings[0]).toMatch(/both iptables-legacy \(2 rules\) and iptables-nft \(40 rules\)/);
  });

  it('follows the host default `iptables` when no backend holds rules', () => {
    expect(chooseBackend(inventory({ defaultIptables: 'iptables-legacy' }), 'auto', null).backend).toBe(
      'iptables-legacy',
    );
    expect(
      chooseBackend(inventory({ defaultIptables: null, available: { 'iptables-nft': false } }), 'auto', null).backend,
    ).toBe('iptables-legacy');
    expect(
      chooseBackend(
        inventory({ defaultIptables: null, available: { 'iptables-nft': false, 'iptables-legacy': false } }),
        'auto',
        null,
      ).backend,
    ).toBe('nftables');
  });

  it('honours an explicit request but warns when the other iptables backend holds rules', () => {
    const decision = chooseBackend(inventory({ legacy: 5 }), 'iptables-nft', null);
    expect(decision.backend).toBe('iptables-nft');
    expect(decision.warnings.join('\n')).toContain('the other iptables backend holds 5 rules');
  });

  it('sticks to the installed backend and refuses a conflicting request', () => {
    expect(chooseBackend(inventory({ nft: 50 }), 'auto', 'iptables-legacy').backend).toBe('iptables-legacy');
    try {
      chooseBackend(inventory(), 'nftables', 'iptables-nft');
      expect.unreachable();
    } catch (error) {
      expect(isMeshctlError(error, 'BACKEND_UNAVAILABLE')).toBe(true);
      expect((error as Error).message).toContain(
        'installed here with iptables-nft (ledger), but nftables was requested',
      );
    }
  });

  it('names the missing binaries when the requested backend is not installed', () => {
    try {
      chooseBackend(inventory({ available: { nftables: false } }), 'nftables', null);
      expect.unreachable();
    } catch (error) {
      expect(isMeshctlError(error, 'BACKEND_UNAVAILABLE')).toBe(true);
      expect((error as Error).message).toContain('nft not found on PATH');
    }
  });
});
