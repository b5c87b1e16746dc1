// The cgroups of the scenario table's systemd units (test/cases.ts TEST_UNITS), for the kernel tests: both backends
// refuse a rule whose cgroup path does not exist, so a test loading a plan with unit rules makes those cgroups first
// (under the host's cgroup v2 hierarchy, wherever it is mounted) and removes what it made. nft resolves the paths
// itself under /sys/fs/cgroup of its mount namespace, which `ip netns exec` replaces by a /sys without cgroups, so
// nft is run in the namespace with nsenter and, on a hybrid host (cgroup v2 at /sys/fs/cgroup/unified), in a private
// mount namespace where the v2 hierarchy is bind-mounted on /sys/fs/cgroup, as on a unified host.
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, rmdirSync } from 'node:fs';
import { join } from 'node:path';
import type { CapturePlan } from '../../src/capture/model.js';
import { cgroup2Mount } from '../../src/netfilter/host/unit-cgroups.js';
import { netnsPath } from '../../src/values/netns.js';
import { TEST_UNITS } from '../cases.js';

/** Whether any rule of the plan matches a cgroup. */
export function planMatchesCgroups(plan: CapturePlan): boolean {
  return plan.families.some((f) => f.rules.some((r) => r.matches.some((m) => m.kind === 'cgroup')));
}

/** The cgroup v2 path of this process (children inherit it): the `0::` line of /proc/self/cgroup. */
export function ownCgroup(): string {
  const line = readFileSync('/proc/self/cgroup', 'utf8')
    .split('\n')
    .find((l) => l.startsWith('0::'));
  if (!line) throw new Error('no cgroup v2 line in /proc/self/cgroup');
  return line.slice(3);
}

function mountOrThrow(): string {
  const mount = cgroup2Mount();
  if (mount === null) throw new Error('no cgroup v2 hierarchy is mounted (see /proc/self/mountinfo)');
  return mount;
}

/** Makes every cgroup of TEST_UNITS that does not exist; returns a function that removes the ones it made. */
export function createTestUnitCgroups(): () => void {
  const mount = mountOrThrow();
  const made: string[] = [];
  for (const path of Object.values(TEST_UNITS)) {
    const parts = path.split('/').filter(Boolean);
    for (let i = 1; i <= parts.length; i++) {
      const dir = join(mount, ...parts.slice(0, i));
      if (existsSync(dir)) continue;
      mkdirSync(dir);
      made.push(dir);
    }
  }
  return () => {
    for (const dir of made.reverse()) {
      try {
        rmdirSync(dir);
      } catch {
        // still in use by another test of the same run; the last one removes it
      }
    }
  };
}

/** Runs nft in namespace `ns` seeing the cgroup v2 hierarchy at /sys/fs/cgroup; returns stdout. */
export function nftWithCgroups(ns: string, args: readonly string[], input?: string): string {
  const mount = mountOrThrow();
  const enter = ['nsenter', `--net=${netnsPath(ns)}`, 'nft', ...args];
  const [cmd, ...rest] =
    mount === '/sys/fs/cgroup'
      ? enter
      : [
          'unshare',
          '--mount',
          '--propagation',
          'private',
          'sh',
          '-c',
          `mount --bind '${mount}' /sys/fs/cgroup && exec "$@"`,
          'sh',
          ...enter,
        ];
  return execFileSync(cmd!, rest, { encoding: 'utf8', input, stdio: ['pipe', 'pipe', 'pipe'] });
}

/** `nft -c -f -` then `nft -f -` of `script` in `ns`, seeing the cgroup hierarchy (as kernel-rules' applyNft). */
export function applyNftWithCgroups(ns: string, script: string): void {
  nftWithCgroups(ns, ['-c', '-f', '-'], script);
  nftWithCgroups(ns, ['-f', '-'], script);
}

/** The cgroup.procs file of the cgroup v2 at `path` (writing a pid there moves that process in). */
export function cgroupProcsFile(path: string): string {
  return join(mountOrThrow(), path, 'cgroup.procs');
}
