// Loading rendered rules into a test namespace with the real tools (iptables-{nft,legacy}-restore, nft) and reading
// them back. Only ever inside a namespace the test created; the xtables lock file is private to the test run.
import { execFileSync } from 'node:child_process';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Family } from '../../src/values/ip.js';

export type IptablesVariant = 'nft' | 'legacy';
export const IPTABLES_VARIANTS: readonly IptablesVariant[] = ['nft', 'legacy'];

const lockDir = mkdtempSync(join(tmpdir(), 'mg-xtables-'));
/** A private lock file, so tests never wait on (or block) the host's /run/xtables.lock. */
export const xtablesEnv = { ...process.env, XTABLES_LOCKFILE: join(lockDir, 'xtables.lock') };

function run(ns: string, cmd: string, args: readonly string[], input?: string): string {
  try {
    return execFileSync('ip', ['netns', 'exec', ns, cmd, ...args], {
      encoding: 'utf8',
      input,
      env: xtablesEnv,
      stdio: ['pipe', 'pipe', 'pipe'],
    });
  } catch (error) {
    const e = error as { stderr?: string; status?: number };
    throw new Error(`${cmd} ${args.join(' ')} in ${ns} failed (exit ${e.status}): ${e.stderr ?? String(error)}`);
  }
}

/** One `iptables -w` command in `ns` (a rule a test adds or deletes beside the lab's own), with the private lock. */
export function iptablesIn(ns: string, args: readonly string[]): void {
  run(ns, 'iptables', ['-w', ...args]);
}

export function iptablesTool(family: Family, variant: IptablesVariant, tool: 'restore' | 'save'): string {
  return `${family === 'ipv4' ? 'iptables' : 'ip6tables'}-${variant}-${tool}`;
}

/** `*-restore --test` then `*-restore --noflush`, as the install transaction does. */
export function restoreIptables(ns: string, family: Family, variant: IptablesVariant, text: string): void {
  run(ns, iptablesTool(family, variant, 'restore'), ['--wait', '--test'], text);
  run(ns, iptablesTool(family, variant, 'restore'), ['--wait', '--noflush'], text);
}

export function saveIptables(ns: string, family: Family, variant: IptablesVariant): string {
  return run(ns, iptablesTool(family, variant, 'save'), []);
}

/** `nft -c -f` then `nft -f`. */
export function applyNft(ns: string, script: string): void {
  run(ns, 'nft', ['-c', '-f', '-'], script);
  run(ns, 'nft', ['-f', '-'], script);
}

export function listNftTable(ns: string): string {
  return run(ns, 'nft', ['list', 'table', 'inet', 'meshctl']);
}

export function listNftTables(ns: string): string {
  return run(ns, 'nft', ['list', 'tables']);
}
