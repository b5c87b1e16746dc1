// Shared pieces for the netfilter tests: configs resolved against the fixed test host, private state directories and
// xtables lock, whole-ruleset reads of a namespace per backend, and a Docker-like set of foreign rules.
import { execFileSync, spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Backend } from '../../src/config/types.js';
import type { Config } from '../../src/config/types.js';
import { loadCase } from '../cases.js';
import { inNs } from './netns.js';

export const BACKENDS: readonly Backend[] = ['iptables-legacy', 'iptables-nft', 'nftables'];
export const ROOT = fileURLToPath(new URL('../../', import.meta.url));
export const MESHCTL = join(ROOT, 'bin/meshctl');

const lockDir = mkdtempSync(join(tmpdir(), 'mn-xtables-'));
/** Environment with a private xtables lock, so tests never wait on the host's /run/xtables.lock. */
export const labEnv: NodeJS.ProcessEnv = { ...process.env, XTABLES_LOCKFILE: join(lockDir, 'xtables.lock') };

const stateDirs: string[] = [];

/** A fresh state directory under /tmp, removed by removeStateDirs(). */
export function tempStateDir(): string {
  const dir = mkdtempSync(join(tmpdir(), 'mn-state-'));
  stateDirs.push(dir);
  return dir;
}

export function removeStateDirs(): void {
  for (const dir of stateDirs.splice(0)) rmSync(dir, { recursive: true, force: true });
}

/** A config for the test host (proxy uid 1337, sshd on 22), with the given state dir and backend. */
export function labConfig(stateDir: string, backend: Backend, raw: Record<string, unknown> = {}): Config {
  const capture = { ...((raw.capture as Record<string, unknown> | undefined) ?? {}), backend };
  return loadCase('lab', { proxy: { user: 'meshproxy' }, ...raw, capture, stateDir });
}

function run(ns: string, cmd: string, args: readonly string[], input?: string): string {
  return execFileSync('ip', ['netns', 'exec', ns, cmd, ...args], { encoding: 'utf8', input, env: labEnv, stdio: ['pipe', 'pipe', 'pipe'] });
}

const xt = (backend: Backend, family: 'ipv4' | 'ipv6', tool: 'save' | 'restore'): string =>
  `${family === 'ipv4' ? 'iptables' : 'ip6tables'}-${backend === 'iptables-legacy' ? 'legacy' : 'nft'}-${tool}`;

/**
 * The whole ruleset of a namespace as the backend shows it, counters and comment lines removed: both iptables-save
 * families for the iptables backends, `nft list ruleset` (handles stripped) for nftables.
 */
export function rulesetOf(ns: string, backend: Backend): string {
  if (backend === 'nftables') return run(ns, 'nft', ['list', 'ruleset']).replace(/\s+# handle \d+/g, '').replace(/counter packets \d+ bytes \d+ ?/g, '');
  return (['ipv4', 'ipv6'] as const)
    .map((family) => `## ${family}\n${run(ns, xt(backend, family, 'save'), [])
      .split('\n')
      .filter((l) => !l.startsWith('#'))
      .map((l) => l.replace(/\s\[\d+:\d+\]$/, '').replace(/^\[\d+:\d+\]\s+/, ''))
      .join('\n')}`)
    .join('\n');
}

/** Every line mentioning our markers (MESHCTL_ chains, meshctl: comments, table inet meshctl) in any backend. */
export function meshctlResidue(ns: string): string[] {
  const lines: string[] = [];
  for (const backend of ['iptables-legacy', 'iptables-nft'] as const) {
    for (const family of ['ipv4', 'ipv6'] as const) {
      lines.push(...run(ns, xt(backend, family, 'save'), []).split('\n').filter((l) => /MESHCTL|meshctl:/.test(l)).map((l) => `${backend} ${family}: ${l}`));
    }
  }
  lines.push(...run(ns, 'nft', ['list', 'tables']).split('\n').filter((l) => /meshctl/.test(l)));
  return lines;
}

/** Applies iptables-restore --noflush text for a family with the backend's own binary (foreign rules). */
export function restoreForeign(ns: string, backend: Backend, family: 'ipv4' | 'ipv6', text: string): void {
  if (backend === 'nftables') throw new Error('use nftForeign for nftables');
  run(ns, xt(backend, family, 'restore'), ['--wait', '--noflush'], text);
}

export function nftForeign(ns: string, script: string): void {
  run(ns, 'nft', ['-f', '-'], script);
}

/** Docker-like foreign rules: a DOCKER chain in nat with jumps from PREROUTING and OUTPUT, and a filter rule. */
export function addDockerLike(ns: string, backend: Backend): void {
  if (backend === 'nftables') {
    nftForeign(ns, [
      'table ip dockerish {',
      '  chain DOCKER { tcp dport 8080 dnat to 172.17.0.2:80; }',
      '  chain prerouting { type nat hook prerouting priority dstnat; policy accept; fib daddr type local jump DOCKER; }',
      '  chain output { type nat hook output priority -100; policy accept; ip daddr != 127.0.0.0/8 fib daddr type local jump DOCKER; }',
      '}',
      'table inet hostfw { chain input { type filter hook input priority filter; policy accept; tcp dport 9999 drop; }; }',
      '',
    ].join('\n'));
    return;
  }
  restoreForeign(ns, backend, 'ipv4', [
    '*nat', ':DOCKER - [0:0]',
    '-A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER',
    '-A OUTPUT ! -d 127.0.0.0/8 -m addrtype --dst-type LOCAL -j DOCKER',
    '-A DOCKER -p tcp -m tcp --dport 8080 -j DNAT --to-destination 172.17.0.2:80',
    'COMMIT',
    '*filter', '-A INPUT -p tcp -m tcp --dport 9999 -j DROP', 'COMMIT', '',
  ].join('\n'));
  restoreForeign(ns, backend, 'ipv6', ['*filter', '-A INPUT -p tcp -m tcp --dport 9999 -j DROP', 'COMMIT', ''].join('\n'));
}

/** Foreign rules added after install, in tables and chains we also use. */
export function addForeignLater(ns: string, backend: Backend): void {
  if (backend === 'nftables') {
    nftForeign(ns, 'add rule ip dockerish DOCKER tcp dport 8443 dnat to 172.17.0.3:443\ntable inet later { chain out { type nat hook output priority 50; policy accept; tcp dport 7777 redirect to :7778; }; }\n');
    return;
  }
  restoreForeign(ns, backend, 'ipv4', ['*nat', '-A OUTPUT -p tcp -m tcp --dport 7777 -j REDIRECT --to-ports 7778', '-A DOCKER -p tcp -m tcp --dport 8443 -j DNAT --to-destination 172.17.0.3:443', 'COMMIT', ''].join('\n'));
  restoreForeign(ns, backend, 'ipv6', ['*nat', '-A PREROUTING -p tcp -m tcp --dport 7777 -j REDIRECT --to-ports 7778', 'COMMIT', '*filter', ':LATER - [0:0]', '-A LATER -j RETURN', '-A OUTPUT -j LATER', 'COMMIT', ''].join('\n'));
}

export function builtCli(): void {
  if (!existsSync(join(ROOT, 'dist/cli/main.js'))) throw new Error('dist/cli/main.js is missing: run `npm run build` before the integration tests');
}

/** Runs bin/meshctl to completion. */
export function meshctl(args: readonly string[], env: NodeJS.ProcessEnv = labEnv): { status: number | null; stdout: string; stderr: string } {
  const result = spawnSync(process.execPath, [MESHCTL, ...args], { encoding: 'utf8', env, timeout: 60_000 });
  return { status: result.status, stdout: result.stdout, stderr: result.stderr };
}

/** Starts bin/meshctl in its own process group (so a test can kill -9 it and every child). */
export function meshctlDetached(args: readonly string[], env: NodeJS.ProcessEnv = labEnv): ChildProcess {
  return spawn(process.execPath, [MESHCTL, ...args], { env, detached: true, stdio: ['ignore', 'pipe', 'pipe'] });
}

export function nsSysctl(ns: string, key: string, value: string): void {
  inNs(ns, 'sysctl', ['-q', '-w', `${key}=${value}`]);
}
