// Randomized cycles on nftables: install → (re-install with a changed random config)* → uninstall, in one shared namespace
// with Docker-like foreign rules; after every cycle no MESHCTL_/meshctl: object is left and nothing foreign changed.
// The seed is printed (MESHCTL_RANDOM_SEED replays it); MESHCTL_RANDOM_CYCLES changes the count (default 200).
import { afterAll, describe, expect, it } from 'vitest';
import { integrationEnabled } from '../helpers/integration.js';
import { deleteNs } from '../helpers/netns.js';
import { removeStateDirs } from '../helpers/netfilter-lab.js';
import { RANDOM_CYCLES, runRandomCycles } from '../helpers/netfilter-random.js';

const NS = 'mn-rand-nftables';

describe.skipIf(!integrationEnabled)('randomized cycles on nftables', () => {
  afterAll(() => {
    deleteNs(NS);
    removeStateDirs();
  });

  it(`leaves zero meshctl objects and no foreign damage after ${RANDOM_CYCLES} random cycles`, async () => {
    const { installs, actions } = await runRandomCycles('nftables', NS, RANDOM_CYCLES);
    expect(installs).toBeGreaterThanOrEqual(RANDOM_CYCLES);
    expect(actions.installed).toBe(RANDOM_CYCLES);
    expect(actions.updated ?? 0).toBeGreaterThan(0);
  }, 600_000);
});
