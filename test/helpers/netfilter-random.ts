// The randomized install → (re-install with a changed config)* → uninstall test, shared by one test file per backend
// (so vitest can run the backends in parallel). Configs are random but valid: a small seeded generator picks each
// feature, with include and exclude sets drawn from disjoint ranges so the loader never rejects them.
import { afterAll, describe, expect, it } from 'vitest';
import type { Backend } from '../../src/config/types.js';
import { installCapture } from '../../src/netfilter/install.js';
import { captureStatus } from '../../src/netfilter/status.js';
import { uninstallCapture } from '../../src/netfilter/uninstall.js';
import { loadCase } from '../cases.js';
import { integrationEnabled } from './integration.js';
import { soakCount } from './soak.js';
import { createIsolatedNs, deleteNs, inNs } from './netns.js';
import {
  addDockerLike,
  labEnv,
  meshctlResidue,
  normalizedRuleset,
  removeStateDirs,
  tempStateDir,
} from './netfilter-lab.js';

/** mulberry32: a tiny seeded PRNG, so a failing run can be replayed with MESHCTL_RANDOM_SEED. */
export function seededRandom(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** A random, valid raw config (before defaults). */
export function randomRawConfig(rand: () => number, backend: Backend, stateDir: string): Record<string, unknown> {
  const int = (lo: number, hi: number) => lo + Math.floor(rand() * (hi - lo + 1));
  const pick = <T>(items: readonly T[]): T => items[int(0, items.length - 1)]!;
  const some = <T>(max: number, make: () => T): T[] =>
    [...new Set(Array.from({ length: int(0, max) }, make).map((x) => JSON.stringify(x)))].map(
      (x) => JSON.parse(x) as T,
    );
  const ports = (lo: number, max: number) =>
    some(max, () => (rand() < 0.25 ? `${int(lo, lo + 400)}-${int(lo + 401, lo + 999)}` : int(lo, lo + 999)));
  const inboundOn = rand() < 0.8;
  const outboundOn = !inboundOn || rand() < 0.85;
  const groups = rand();
  return {
    proxy: { user: 'meshproxy', ...(rand() < 0.3 ? { outboundPort: 15101, inboundPort: 15106 } : {}) },
    stateDir,
    safety: { sshPorts: rand() < 0.3 ? [22, 2222] : [22] },
    capture: {
      backend,
      ipv6: pick(['intercept', 'intercept', 'block', 'off'] as const),
      dropInvalid: rand() < 0.3,
      excludeInterfaces: some(2, () => pick(['docker0', 'wg0', 'eth9', 'veth+'])),
      inbound: {
        enabled: inboundOn,
        mode: rand() < 0.25 ? 'tproxy' : 'redirect',
        includePorts:
          rand() < 0.6
            ? '*'
            : (() => {
                const p = ports(1000, 4);
                return p.length > 0 ? p : '*';
              })(),
        excludePorts: ports(5000, 3),
      },
      outbound: {
        enabled: outboundOn,
        includeCidrs:
          rand() < 0.6
            ? '*'
            : [`10.${int(0, 255)}.${int(0, 255)}.0/24`, ...(rand() < 0.5 ? [`fd00:${int(1, 999)}::/48`] : [])],
        excludeCidrs: some(3, () => (rand() < 0.6 ? `172.16.${int(0, 255)}.0/24` : `fd10:${int(1, 999)}::/64`)),
        includePorts:
          rand() < 0.6
            ? '*'
            : (() => {
                const p = ports(3000, 4);
                return p.length > 0 ? p : '*';
              })(),
        excludePorts: ports(7000, 3),
        excludeUids: some(2, () => int(2000, 2999)),
        // nftables refuses group lists (it cannot match supplementary groups).
        ...(backend === 'nftables'
          ? {}
          : groups < 0.2
            ? { includeGids: [int(3000, 3999)] }
            : groups < 0.5
              ? { excludeGids: some(2, () => int(4000, 4999)) }
              : {}),
      },
      dns: { enabled: rand() < 0.3 },
    },
  };
}

/** Policy rules, the ::6 passthrough address and the TPROXY route table: the host state outside netfilter we touch. */
function hostExtras(ns: string): string {
  return [
    inNs(ns, 'ip', ['-4', 'rule', 'show']),
    inNs(ns, 'ip', ['-6', 'rule', 'show']),
    inNs(ns, 'ip', ['-6', 'addr', 'show', 'dev', 'lo']),
    inNs(ns, 'ip', ['-4', 'route', 'show', 'table', 'all'])
      .split('\n')
      .filter((l) => l.includes('table') && !/table (local|main)/.test(l))
      .join('\n'),
  ].join('\n--\n');
}

/** Runs `cycles` randomized cycles in one namespace; the seed is printed and named in every failure. */
export async function runRandomCycles(
  backend: Backend,
  ns: string,
  cycles: number,
): Promise<{ seed: number; installs: number; actions: Record<string, number> }> {
  const seed = Number(process.env.MESHCTL_RANDOM_SEED ?? Date.now() % 2 ** 31);
  process.stdout.write(
    `[netfilter-random] ${backend}: seed ${seed} (replay with MESHCTL_RANDOM_SEED=${seed}), ${cycles} cycles\n`,
  );
  const rand = seededRandom(seed);
  createIsolatedNs(ns);
  addDockerLike(ns, backend);
  const baseline = normalizedRuleset(ns, backend);
  const baselineExtras = hostExtras(ns);
  const stateDir = tempStateDir();
  const actions: Record<string, number> = {};
  let installs = 0;
  for (let cycle = 0; cycle < cycles; cycle++) {
    const generations = 1 + Math.floor(rand() * 3);
    const history: unknown[] = [];
    try {
      for (let g = 0; g < generations; g++) {
        const raw = randomRawConfig(rand, backend, stateDir);
        history.push(raw);
        const result = await installCapture({ config: loadCase(`random-${cycle}-${g}`, raw), netns: ns, env: labEnv });
        actions[result.action] = (actions[result.action] ?? 0) + 1;
        installs++;
      }
      if (cycle % 10 === 0) expect((await captureStatus({ stateDir, netns: ns, env: labEnv })).inSync).toBe(true);
      const removed = await uninstallCapture({ stateDir, netns: ns, env: labEnv });
      expect(removed.action).toBe('uninstalled');
      expect(removed.foreignChanges).toEqual({ added: [], removed: [] });
      expect(meshctlResidue(ns)).toEqual([]);
      expect(normalizedRuleset(ns, backend)).toBe(baseline);
      expect(hostExtras(ns)).toBe(baselineExtras);
    } catch (error) {
      throw new Error(
        `randomized ${backend} cycle ${cycle} failed (seed ${seed}; replay with MESHCTL_RANDOM_SEED=${seed}); configs of this cycle:\n${JSON.stringify(history, null, 1)}\n${(error as Error).stack ?? String(error)}`,
      );
    }
  }
  return { seed, installs, actions };
}

/**
 * 25 cycles in `npm test` (every feature and the update path show up many times over; about 20 s per backend), 200 in
 * `npm run test:soak` (MESHCTL_SOAK=1); MESHCTL_RANDOM_CYCLES sets any count.
 */
export const RANDOM_CYCLES = Number(process.env.MESHCTL_RANDOM_CYCLES ?? soakCount(25, 200));

/**
 * The whole test of one backend's file: RANDOM_CYCLES cycles in the namespace `ns`, which is deleted afterwards
 * (with the state directories), also when a cycle fails.
 */
export function describeRandomCycles(backend: Backend, ns: string): void {
  describe.skipIf(!integrationEnabled)(`randomized cycles on ${backend}`, () => {
    afterAll(() => {
      deleteNs(ns);
      removeStateDirs();
    });

    it(`leaves zero meshctl objects and no foreign damage after ${RANDOM_CYCLES} random cycles`, async () => {
      const { installs, actions } = await runRandomCycles(backend, ns, RANDOM_CYCLES);
      expect(installs).toBeGreaterThanOrEqual(RANDOM_CYCLES);
      expect(actions.installed).toBe(RANDOM_CYCLES);
      expect(actions.updated ?? 0).toBeGreaterThan(0);
    }, 600_000);
  });
}
