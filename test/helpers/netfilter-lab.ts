// Shared pieces for the netfilter tests: configs resolved against the fixed test host, private state directories and
// xtables lock, whole-ruleset reads of a namespace per backend, and a Docker-like set of foreign rules.
import { execFileSync, spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, symlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Backend } from '../../src/config/types.js';
import type { Config } from '../../src/config/types.js';
import { loadCase } from '../cases.js';
import { createIsolatedNs, deleteNs, inNs } from './netns.js';

export const BACKENDS: readonly Backend[] = ['iptables-legacy', 'iptables-nft', 'nftables'];
export const ROOT = fileURLToPath(new URL('../../', import.meta.url));
export const MESHCTL = join(ROOT, 'bin/meshctl');

/**
 * Environment with a private xtables lock (one file shared by these test files), so tests never wait on, or block,
 * the host's /run/xtables.lock.
 */
export const labEnv: NodeJS.ProcessEnv = { ...process.env, XTABLES_LOCKFILE: join(tmpdir(), 'mn-xtables.lock') };

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

/** Short backend names for namespace names (which, with a veth suffix, must fit in 15 characters). */
export const BACKEND_SHORT = {
  'iptables-legacy': 'leg',
  'iptables-nft': 'ipn',
  nftables: 'nft',
} as const satisfies Record<Backend, string>;

export interface LabNamespaces {
  /** Creates the isolated namespace `name` (see createIsolatedNs) and remembers it for cleanup. */
  freshNs(name: string): string;
  /** Remembers namespaces created otherwise (a veth pair, say) for cleanup. */
  track(...names: string[]): void;
  /** For afterAll: deletes every remembered namespace, then the state directories (removeStateDirs). */
  cleanup(): void;
}

/** The namespaces of one test file, deleted together in its afterAll (also after a failed test). */
export function labNamespaces(): LabNamespaces {
  const created = new Set<string>();
  return {
    freshNs(name) {
      created.add(name);
      createIsolatedNs(name);
      return name;
    },
    track(...names) {
      for (const name of names) created.add(name);
    },
    cleanup() {
      for (const ns of created) deleteNs(ns);
      removeStateDirs();
    },
  };
}

/** A config for the test host (proxy uid 1337, sshd on 22), with the given state dir and backend. */
export function labConfig(stateDir: string, backend: Backend, raw: Record<string, unknown> = {}): Config {
  const capture = { ...((raw.capture as Record<string, unknown> | undefined) ?? {}), backend };
  return loadCase('lab', { proxy: { user: 'meshproxy' }, ...raw, capture, stateDir });
}

function run(ns: string, cmd: string, args: readonly string[], input?: string): string {
  return execFileSync('ip', ['netns', 'exec', ns, cmd, ...args], {
    encoding: 'utf8',
    input,
    env: labEnv,
    stdio: ['pipe', 'pipe', 'pipe'],
  });
}

const xt = (backend: Backend, family: 'ipv4' | 'ipv6', tool: 'save' | 'restore'): string =>
  `${family === 'ipv4' ? 'iptables' : 'ip6tables'}-${backend === 'iptables-legacy' ? 'legacy' : 'nft'}-${tool}`;

/**
 * The whole ruleset of a namespace as the backend shows it, counters and comment lines removed: both iptables-save
 * families for the iptables backends, `nft list ruleset` (handles stripped) for nftables.
 */
export function rulesetOf(ns: string, backend: Backend): string {
  if (backend === 'nftables')
    return run(ns, 'nft', ['list', 'ruleset'])
      .replace(/\s+# handle \d+/g, '')
      .replace(/counter packets \d+ bytes \d+ ?/g, '');
  return (['ipv4', 'ipv6'] as const)
    .map(
      (family) =>
        `## ${family}\n${run(ns, xt(backend, family, 'save'), [])
          .split('\n')
          .filter((l) => !l.startsWith('#'))
          .map((l) => l.replace(/\s\[\d+:\d+\]$/, '').replace(/^\[\d+:\d+\]\s+/, ''))
          .join('\n')}`,
    )
    .join('\n');
}

/** Every line mentioning our markers (MESHCTL_ chains, meshctl: comments, table inet meshctl) in any backend. */
export function meshctlResidue(ns: string): string[] {
  const lines: string[] = [];
  for (const backend of ['iptables-legacy', 'iptables-nft'] as const) {
    for (const family of ['ipv4', 'ipv6'] as const) {
      lines.push(
        ...run(ns, xt(backend, family, 'save'), [])
          .split('\n')
          .filter((l) => /MESHCTL|meshctl:/.test(l))
          .map((l) => `${backend} ${family}: ${l}`),
      );
    }
  }
  lines.push(
    ...run(ns, 'nft', ['list', 'tables'])
      .split('\n')
      .filter((l) => /meshctl/.test(l)),
  );
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
    nftForeign(
      ns,
      [
        'table ip dockerish {',
        '  chain DOCKER { tcp dport 8080 dnat to 172.17.0.2:80; }',
        '  chain prerouting { type nat hook prerouting priority dstnat; policy accept; fib daddr type local jump DOCKER; }',
        '  chain output { type nat hook output priority -100; policy accept; ip daddr != 127.0.0.0/8 fib daddr type local jump DOCKER; }',
        '}',
        'table inet hostfw { chain input { type filter hook input priority filter; policy accept; tcp dport 9999 drop; }; }',
        '',
      ].join('\n'),
    );
    return;
  }
  restoreForeign(
    ns,
    backend,
    'ipv4',
    [
      '*nat',
      ':DOCKER - [0:0]',
      '-A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER',
      '-A OUTPUT ! -d 127.0.0.0/8 -m addrtype --dst-type LOCAL -j DOCKER',
      '-A DOCKER -p tcp -m tcp --dport 8080 -j DNAT --to-destination 172.17.0.2:80',
      'COMMIT',
      '*filter',
      '-A INPUT -p tcp -m tcp --dport 9999 -j DROP',
      'COMMIT',
      '',
    ].join('\n'),
  );
  restoreForeign(
    ns,
    backend,
    'ipv6',
    ['*filter', '-A INPUT -p tcp -m tcp --dport 9999 -j DROP', 'COMMIT', ''].join('\n'),
  );
}

/** Foreign rules added after install, in tables and chains we also use. */
export function addForeignLater(ns: string, backend: Backend): void {
  if (backend === 'nftables') {
    nftForeign(
      ns,
      'add rule ip dockerish DOCKER tcp dport 8443 dnat to 172.17.0.3:443\ntable inet later { chain out { type nat hook output priority 50; policy accept; tcp dport 7777 redirect to :7778; }; }\n',
    );
    return;
  }
  restoreForeign(
    ns,
    backend,
    'ipv4',
    [
      '*nat',
      '-A OUTPUT -p tcp -m tcp --dport 7777 -j REDIRECT --to-ports 7778',
      '-A DOCKER -p tcp -m tcp --dport 8443 -j DNAT --to-destination 172.17.0.3:443',
      'COMMIT',
      '',
    ].join('\n'),
  );
  restoreForeign(
    ns,
    backend,
    'ipv6',
    [
      '*nat',
      '-A PREROUTING -p tcp -m tcp --dport 7777 -j REDIRECT --to-ports 7778',
      'COMMIT',
      '*filter',
      ':LATER - [0:0]',
      '-A LATER -j RETURN',
      '-A OUTPUT -j LATER',
      'COMMIT',
      '',
    ].join('\n'),
  );
}

export function builtCli(): void {
  if (!existsSync(join(ROOT, 'dist/cli/main.js')))
    throw new Error('dist/cli/main.js is missing: run `npm run build` before the integration tests');
}

/** Runs bin/meshctl to completion. */
export function meshctl(
  args: readonly string[],
  env: NodeJS.ProcessEnv = labEnv,
): { status: number | null; stdout: string; stderr: string } {
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

/**
 * A ruleset compared the way the issue means "equal": counters ignored, and a table holding nothing but empty
 * built-in chains with policy ACCEPT dropped (iptables-legacy cannot unload a table once used, so "never used" and
 * "used, now empty" must compare equal). Our objects are NOT filtered out: residue shows up as a difference.
 */
export function normalizedRuleset(ns: string, backend: Backend): string {
  const text = rulesetOf(ns, backend);
  if (backend === 'nftables')
    return text
      .split('\n')
      .map((l) => l.trimEnd())
      .filter((l) => l.trim() !== '')
      .join('\n');
  const out: string[] = [];
  let section: string[] = [];
  for (const line of text.split('\n')) {
    if (line.startsWith('*')) section = [line];
    else if (section.length > 0) {
      section.push(line);
      if (line === 'COMMIT') {
        const empty = section.slice(1, -1).every((l) => /^:[A-Z]+ ACCEPT$/.test(l));
        if (!empty) out.push(...section);
        section = [];
      }
    } else if (line.trim() !== '') out.push(line);
  }
  return out.join('\n');
}

const WRAPPED = ['iptables', 'ip6tables']
  .flatMap((base) => ['legacy', 'nft'].flatMap((v) => ['save', 'restore'].map((t) => `${base}-${v}-${t}`)))
  .concat(['nft']);
const WRAPPER = join(ROOT, 'test/fixtures/bin/fault-wrapper');

export interface FaultBin {
  readonly env: NodeJS.ProcessEnv;
  readonly paused: string;
  /** Every wrapped call so far, as "name args". */
  calls(): string[];
}

/** A PATH with test/fixtures/bin/fault-wrapper in front of every iptables-*-save/-restore and nft. */
export function faultBin(options: { fail?: string; pauseAt?: number; pauseWhen?: 'before' | 'after' } = {}): FaultBin {
  const dir = mkdtempSync(join(tmpdir(), 'mn-fault-'));
  stateDirs.push(dir);
  for (const name of WRAPPED) symlinkSync(WRAPPER, join(dir, name));
  const log = join(dir, 'calls.log');
  const paused = join(dir, 'paused');
  const env: NodeJS.ProcessEnv = {
    ...labEnv,
    PATH: `${dir}:${labEnv.PATH ?? ''}`,
    MESHCTL_FAKE_REAL_PATH: labEnv.PATH ?? '/usr/sbin:/usr/bin:/sbin:/bin',
    MESHCTL_FAKE_LOG: log,
    MESHCTL_FAKE_COUNTER: join(dir, 'counter'),
    MESHCTL_FAKE_PAUSED: paused,
    ...(options.fail ? { MESHCTL_FAKE_FAIL: options.fail } : {}),
    ...(options.pauseAt !== undefined
      ? { MESHCTL_FAKE_PAUSE_AT: String(options.pauseAt), MESHCTL_FAKE_PAUSE_WHEN: options.pauseWhen ?? 'before' }
      : {}),
  };
  return { env, paused, calls: () => (existsSync(log) ? readFileSync(log, 'utf8').split('\n').filter(Boolean) : []) };
}

/**
 * Waits until `predicate` holds, polling; throws with `what` after `ms`. A function for `what` is called at the
 * timeout, so it can show what was seen last (output so far, say).
 */
export async function waitFor(predicate: () => boolean, ms: number, what: string | (() => string)): Promise<void> {
  const deadline = Date.now() + ms;
  while (!predicate()) {
    if (Date.now() > deadline)
      throw new Error(`timed out after ${ms} ms waiting for ${typeof what === 'function' ? what() : what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

/** The nat chain that holds our outbound rules, as the backend names it. */
function outputChain(backend: Backend, family: 'ipv4' | 'ipv6'): string {
  return backend === 'nftables' ? `${family === 'ipv4' ? 'v4' : 'v6'}_nat_MESHCTL_OUTPUT` : 'MESHCTL_OUTPUT';
}

/** Finds our rule with `comment` in the outbound chain: its raw text (xtables) or its listing line and handle (nft). */
function findOurRule(
  ns: string,
  backend: Backend,
  family: 'ipv4' | 'ipv6',
  comment: string,
): { raw: string; handle: string | null } {
  const chain = outputChain(backend, family);
  if (backend === 'nftables') {
    const line = run(ns, 'nft', ['-a', 'list', 'chain', 'inet', 'meshctl', chain])
      .split('\n')
      .find((l) => l.includes(`"${comment}"`));
    if (!line) throw new Error(`no rule ${comment} in ${chain}`);
    const handle = /# handle (\d+)/.exec(line)![1]!;
    return { raw: line.replace(/\s*# handle \d+\s*$/, '').trim(), handle };
  }
  const line = run(ns, xt(backend, family, 'save'), ['-t', 'nat'])
    .split('\n')
    .find((l) => l.startsWith(`-A ${chain} `) && l.includes(`"${comment}"`));
  if (!line) throw new Error(`no rule ${comment} in ${chain}`);
  return { raw: line.slice(`-A ${chain} `.length), handle: null };
}

/** Deletes one of our outbound rules behind meshctl's back (drift). */
export function deleteOurRule(ns: string, backend: Backend, family: 'ipv4' | 'ipv6', comment: string): void {
  const rule = findOurRule(ns, backend, family, comment);
  const chain = outputChain(backend, family);
  if (backend === 'nftables') run(ns, 'nft', ['delete', 'rule', 'inet', 'meshctl', chain, 'handle', rule.handle!]);
  else run(ns, xt(backend, family, 'restore'), ['--wait', '--noflush'], `*nat\n-D ${chain} ${rule.raw}\nCOMMIT\n`);
}

/** Moves one of our outbound rules to the end of its chain (drift: out of order). */
export function moveOurRuleToEnd(ns: string, backend: Backend, family: 'ipv4' | 'ipv6', comment: string): void {
  const rule = findOurRule(ns, backend, family, comment);
  const chain = outputChain(backend, family);
  if (backend === 'nftables')
    nftForeign(
      ns,
      `delete rule inet meshctl ${chain} handle ${rule.handle!}\nadd rule inet meshctl ${chain} ${rule.raw}\n`,
    );
  else
    run(
      ns,
      xt(backend, family, 'restore'),
      ['--wait', '--noflush'],
      `*nat\n-D ${chain} ${rule.raw}\n-A ${chain} ${rule.raw}\nCOMMIT\n`,
    );
}

/** Deletes the jump from nat OUTPUT into our outbound chain (capture silently off). */
export function deleteOutboundJump(ns: string, backend: Backend, family: 'ipv4' | 'ipv6'): void {
  if (backend === 'nftables') {
    const chain = `${family === 'ipv4' ? 'v4' : 'v6'}_nat_OUTPUT`;
    const line = run(ns, 'nft', ['-a', 'list', 'chain', 'inet', 'meshctl', chain])
      .split('\n')
      .find((l) => l.includes('"meshctl:outbound-capture"'))!;
    run(ns, 'nft', ['delete', 'rule', 'inet', 'meshctl', chain, 'handle', /# handle (\d+)/.exec(line)![1]!]);
    return;
  }
  const line = run(ns, xt(backend, family, 'save'), ['-t', 'nat'])
    .split('\n')
    .find((l) => l.startsWith('-A OUTPUT ') && l.includes('meshctl:outbound-capture'))!;
  run(ns, xt(backend, family, 'restore'), ['--wait', '--noflush'], `*nat\n-D ${line.slice(3)}\nCOMMIT\n`);
}
