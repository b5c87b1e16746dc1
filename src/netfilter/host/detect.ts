// Backend detection: which netfilter front-ends exist and which already hold rules, and the choice that follows.
// Read-only (saves and listings, never a probe rule). The heuristic is kube-proxy's and Istio's: use the backend
// that already holds the most rules, because mixing iptables-legacy and iptables-nft on one host makes both
// sets of rules run and neither tool sees the other's.
import { findOnPath } from '../drivers/runner.js';
import type { Family } from '../../values/ip.js';
import type { Backend, BackendChoice } from '../../config/types.js';
import { MeshctlError } from '../../errors.js';
import { xtablesBinary, type NetfilterRunner, type XtablesBackend } from '../drivers/runner.js';

const BACKENDS: readonly Backend[] = ['iptables-legacy', 'iptables-nft', 'nftables'];

/** Tables iptables-nft creates in nftables; any other table in `nft list tables` is native nftables. */
const XTABLES_NFT_TABLES = new Set([
  'ip filter',
  'ip nat',
  'ip mangle',
  'ip raw',
  'ip security',
  'ip6 filter',
  'ip6 nat',
  'ip6 mangle',
  'ip6 raw',
  'ip6 security',
]);

export interface BackendInventory {
  /** Binaries found on PATH per backend (save and restore for both families, or nft). */
  readonly available: Readonly<Record<Backend, boolean>>;
  readonly missingBinaries: Readonly<Record<Backend, readonly string[]>>;
  /** `-A` rules per xtables backend and family (null when the backend is not installed or unreadable). */
  readonly ruleCounts: Readonly<Record<XtablesBackend, Readonly<Record<Family, number | null>>>>;
  /** Native nftables tables (`inet meshctl`, `inet firewalld`, …); null when nft is unavailable. */
  readonly nativeTables: readonly string[] | null;
  /** What plain `iptables` is on this host (`iptables --version`), or null when it is absent. */
  readonly defaultIptables: XtablesBackend | null;
}

export interface BackendDecision {
  readonly backend: Backend;
  /** Why, in order, one sentence each: what exists, who holds rules, what was requested. */
  readonly reasons: readonly string[];
  /** Problems worth a warning even though a choice was made (mixing legacy and nft). */
  readonly warnings: readonly string[];
  readonly inventory: BackendInventory;
}

function countRules(saveText: string): number {
  return saveText.split('\n').filter((line) => /^(\[\d+:\d+\]\s+)?-A\s/.test(line)).length;
}

/**
 * Collects the inventory. Never changes a rule; a failing read is recorded as null, not thrown. With
 * `countRules: false` only the binaries are looked up (enough when the ledger already fixes the backend).
 */
export async function inspectBackends(
  runner: NetfilterRunner,
  env: NodeJS.ProcessEnv = process.env,
  options: { countRules?: boolean } = {},
): Promise<BackendInventory> {
  const missingBinaries: Record<Backend, string[]> = { 'iptables-legacy': [], 'iptables-nft': [], nftables: [] };
  for (const backend of ['iptables-legacy', 'iptables-nft'] as const) {
    for (const family of ['ipv4', 'ipv6'] as const) {
      for (const tool of ['save', 'restore'] as const) {
        const bin = xtablesBinary(backend, family, tool);
        if (!findOnPath(bin, env)) missingBinaries[backend].push(bin);
      }
    }
  }
  if (!findOnPath('nft', env)) missingBinaries.nftables.push('nft');
  const available = {
    'iptables-legacy': missingBinaries['iptables-legacy'].length === 0,
    'iptables-nft': missingBinaries['iptables-nft'].length === 0,
    nftables: missingBinaries.nftables.length === 0,
  };

  const counting = options.countRules !== false;
  const count = async (backend: XtablesBackend, family: Family): Promise<number | null> => {
    if (!counting || !findOnPath(xtablesBinary(backend, family, 'save'), env)) return null;
    try {
      return countRules(await runner.save(backend, family));
    } catch {
      return null;
    }
  };
  const [legacy4, legacy6, nft4, nft6] = await Promise.all([
    count('iptables-legacy', 'ipv4'),
    count('iptables-legacy', 'ipv6'),
    count('iptables-nft', 'ipv4'),
    count('iptables-nft', 'ipv6'),
  ]);

  let nativeTables: string[] | null = null;
  if (available.nftables && counting) {
    const listed = await runner.exec('nft', ['list', 'tables']);
    if (listed.exitCode === 0) {
      nativeTables = listed.stdout
        .split('\n')
        .map((l) => l.trim())
        .filter((l) => l.startsWith('table '))
        .map((l) => l.slice(6))
        .filter((t) => !XTABLES_NFT_TABLES.has(t));
    }
  }

  let defaultIptables: XtablesBackend | null = null;
  if (counting && findOnPath('iptables', env)) {
    const version = await runner.exec('iptables', ['--version']);
    if (/nf_tables/.test(version.stdout)) defaultIptables = 'iptables-nft';
    else if (/legacy/.test(version.stdout)) defaultIptables = 'iptables-legacy';
  }
  return {
    available,
    missingBinaries,
    ruleCounts: { 'iptables-legacy': { ipv4: legacy4, ipv6: legacy6 }, 'iptables-nft': { ipv4: nft4, ipv6: nft6 } },
    nativeTables,
    defaultIptables,
  };
}

function total(counts: Readonly<Record<Family, number | null>>): number {
  return (counts.ipv4 ?? 0) + (counts.ipv6 ?? 0);
}

function unavailable(backend: Backend, inventory: BackendInventory, why: string): MeshctlError {
  return new MeshctlError(
    'BACKEND_UNAVAILABLE',
    `backend ${backend} (${why}) cannot be used: ${inventory.missingBinaries[backend].join(', ')} not found on PATH`,
    backend === 'nftables'
      ? 'install nftables (apt-get install nftables), or pick --backend iptables-nft'
      : 'install iptables (apt-get install iptables), or pick another --backend',
  );
}

/**
 * Chooses the backend: the ledger's when meshctl is installed, then an explicit request, then the backend that
 * holds rules, then the host's default `iptables`. Pure given the inventory. Throws BACKEND_UNAVAILABLE.
 */
export function chooseBackend(
  inventory: BackendInventory,
  requested: BackendChoice,
  installed: Backend | null,
): BackendDecision {
  const reasons: string[] = [];
  const warnings: string[] = [];
  const legacy = total(inventory.ruleCounts['iptables-legacy']);
  const nft = total(inventory.ruleCounts['iptables-nft']);
  const have = BACKENDS.filter((b) => inventory.available[b]);
  reasons.push(`installed: ${have.length > 0 ? have.join(', ') : 'none of iptables-legacy, iptables-nft, nftables'}`);
  const counted =
    inventory.ruleCounts['iptables-legacy'].ipv4 !== null || inventory.ruleCounts['iptables-nft'].ipv4 !== null;
  if (counted)
    reasons.push(
      `rules held: iptables-legacy ${legacy}, iptables-nft ${nft}${inventory.nativeTables ? `, native nftables tables ${inventory.nativeTables.length > 0 ? inventory.nativeTables.join(', ') : 'none'}` : ''}`,
    );
  if (legacy > 0 && nft > 0) {
    warnings.push(
      `both iptables-legacy (${legacy} rules) and iptables-nft (${nft} rules) hold rules: both sets run and neither tool shows the other's; move everything to one backend`,
    );
  }
  const decide = (backend: Backend, reason: string): BackendDecision => {
    if (!inventory.available[backend]) throw unavailable(backend, inventory, reason);
    reasons.push(`chose ${backend}: ${reason}`);
    return { backend, reasons, warnings, inventory };
  };

  if (installed !== null) {
    if (requested !== 'auto' && requested !== installed) {
      throw new MeshctlError(
        'BACKEND_UNAVAILABLE',
        `meshctl is installed here with ${installed} (ledger), but ${requested} was requested`,
        `run \`meshctl uninstall\` first to switch backends, or drop --backend ${requested}`,
      );
    }
    return decide(installed, 'meshctl is already installed with it (ledger)');
  }
  if (requested !== 'auto') {
    const other = requested === 'iptables-legacy' ? nft : requested === 'iptables-nft' ? legacy : 0;
    if (other > 0)
      warnings.push(
        `${requested} was requested but the other iptables backend holds ${other} rules; traffic passes through both`,
      );
    return decide(requested, 'requested (--backend / capture.backend)');
  }
  if (legacy > nft && inventory.available['iptables-legacy'])
    return decide('iptables-legacy', `it holds more rules (${legacy} vs ${nft}), so the host's firewall lives there`);
  if (nft > 0 && inventory.available['iptables-nft'])
    return decide('iptables-nft', `it holds the rules (${nft} vs ${legacy})`);
  if (inventory.defaultIptables && inventory.available[inventory.defaultIptables]) {
    return decide(inventory.defaultIptables, `no rules anywhere; it is what \`iptables\` points to on this host`);
  }
  for (const backend of ['iptables-nft', 'iptables-legacy', 'nftables'] as const) {
    if (inventory.available[backend])
      return decide(backend, 'no rules anywhere; first available in the order iptables-nft, iptables-legacy, nftables');
  }
  throw new MeshctlError(
    'BACKEND_UNAVAILABLE',
    'no netfilter front-end found: none of iptables-nft-restore, iptables-legacy-restore or nft is on PATH',
    'install iptables (apt-get install iptables) or nftables',
  );
}
