// Load balancing and canary subsets through the real proxy: apps (uid 1000) dial service addresses that exist
// nowhere; the capture rules redirect them to the proxy, which connects each to one of the service's endpoints
// (real servers on three addresses in the server namespace, each naming itself on connect).
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { integrationEnabled } from '../helpers/integration.js';
import { createPolicyLab, policyConfig, tally, type PolicyLab, type PolicyProxy } from '../helpers/policy-lab.js';

const PORT = 8080;

describe.skipIf(!integrationEnabled)('load balancing and canary subsets', () => {
  let lab: PolicyLab;
  let proxy: PolicyProxy;
  let file: string;
  let A: string;
  let B: string;
  let C: string;
  const vip = (n: number) => `10.160.0.${n}`;

  const services = (overrides: { lcEndpoints?: string[]; canary?: Record<string, number> } = {}) => [
    { name: 'rr', addresses: [`${vip(100)}:80`], endpoints: [`${A}:${PORT}`, `${B}:${PORT}`, `${C}:${PORT}`] },
    {
      name: 'lc',
      addresses: [`${vip(101)}:80`],
      loadBalancer: 'least-connections',
      endpoints: (overrides.lcEndpoints ?? [B, C]).map((e) => `${e}:${PORT}`),
    },
    {
      name: 'sh',
      addresses: [`${vip(102)}:80`],
      loadBalancer: 'source-hash',
      endpoints: [`${A}:${PORT}`, `${B}:${PORT}`, `${C}:${PORT}`],
    },
    {
      name: 'canary',
      addresses: [`${vip(103)}:80`],
      subsets: overrides.canary ?? { v1: 90, v2: 10 },
      endpoints: [
        { address: `${A}:${PORT}`, subset: 'v1' },
        { address: `${B}:${PORT}`, subset: 'v1' },
        { address: `${C}:${PORT}`, subset: 'v2' },
      ],
    },
  ];

  const dial = (host: string, count: number, extra: Record<string, unknown> = {}) =>
    lab.app.call<{ ids: string[] }>('dial', { host, port: 80, count, concurrency: 20, ...extra }).then((r) => r.ids);

  /** Writes the config and waits until the proxy runs it (its version moved past `from`). */
  const reconfigure = async (raw: Record<string, unknown>, from: number) => {
    lab.writeConfig(raw);
    return proxy.waitFor(`config version > ${from}`, async () => {
      const c = await proxy.adminJson<{ version: number }>('/config');
      return c.version > from ? c.version : null;
    });
  };

  beforeAll(async () => {
    lab = await createPolicyLab('lb', 160, { endpoints: 3, clientSources: 4 });
    [A, B, C] = lab.endpoints as [string, string, string];
    for (const ep of lab.endpoints) await lab.peer.call('serve', { name: ep, host: ep, port: PORT, id: ep });
    file = lab.writeConfig(policyConfig(lab, { services: services() })).file;
    proxy = await lab.startProxy(file);
    await proxy.waitReady();
  });

  afterAll(async () => {
    await lab?.destroy();
  });

  it('spreads 300 connections over three endpoints by round robin within ±10 %', async () => {
    const ids = await dial(vip(100), 300);
    const counts = tally(ids);
    expect(Object.keys(counts).sort()).toEqual([A, B, C].sort());
    for (const ep of [A, B, C]) {
      expect(counts[ep]).toBeGreaterThanOrEqual(90);
      expect(counts[ep]).toBeLessThanOrEqual(110);
    }
    // Each connection is logged when both legs have closed (asynchronously, after the client is done).
    const lines = await proxy.waitFor('300 access-log lines', async () => {
      const found = proxy.accessLog().filter((l) => l.originalDst === `${vip(100)}:80`);
      return found.length === 300 ? found : null;
    });
    expect(lines.every((l) => l.service === 'rr' && l.attempts === 1 && l.upstream?.endsWith(`:${PORT}`))).toBe(true);
    const stats = await proxy.adminJson('/stats');
    expect(stats.policy.services.rr).toMatchObject({ connections: 300, connected: 300, active: 0, pending: 0 });
  });

  it('keeps each source address on one endpoint with source-hash balancing', async () => {
    const seen = new Map<string, string>();
    for (const source of lab.clientSources) {
      const ids = await dial(vip(102), 15, { localAddress: source });
      expect(new Set(ids).size, `${source} got ${ids.join(',')}`).toBe(1);
      expect([A, B, C]).toContain(ids[0]);
      seen.set(source, ids[0]!);
    }
    // Still the same endpoint per source after more traffic from the others.
    for (const source of [...lab.clientSources].reverse()) {
      expect(new Set(await dial(vip(102), 5, { localAddress: source }))).toEqual(new Set([seen.get(source)]));
    }
  });

  it('sends new connections to the idle endpoint with least-connections (power of two choices)', async () => {
    // 120 long-lived connections on B and C only (two endpoints: P2C is exact, 60 each).
    const busy = tally(
      await lab.app
        .call<{ ids: string[] }>('dial', { host: vip(101), port: 80, count: 120, concurrency: 1, hold: 'lc-busy' })
        .then((r) => r.ids),
    );
    expect(busy).toEqual({ [B]: 60, [C]: 60 });
    const version = (await proxy.adminJson<{ version: number }>('/config')).version;
    await reconfigure(policyConfig(lab, { services: services({ lcEndpoints: [A, B, C] }) }), version);
    // A joins idle; B and C keep their 60 (endpoint state survives the reload). Each new connection compares two
    // random endpoints: A wins whenever it is one of them (2 in 3), so it takes about 40 of 60 (a uniform or
    // round-robin choice would give it 20).
    const fresh = tally(
      await lab.app
        .call<{ ids: string[] }>('dial', { host: vip(101), port: 80, count: 60, concurrency: 1, hold: 'lc-new' })
        .then((r) => r.ids),
    );
    expect(fresh[A] ?? 0).toBeGreaterThanOrEqual(28);
    expect(fresh[A] ?? 0).toBeGreaterThan(fresh[B] ?? 0);
    expect(fresh[A] ?? 0).toBeGreaterThan(fresh[C] ?? 0);
    const endpoints = (await proxy.adminJson('/stats')).policy.services.lc.endpoints as {
      endpoint: string;
      active: number;
    }[];
    expect(Object.fromEntries(endpoints.map((e) => [e.endpoint, e.active]))).toEqual({
      [`${A}:${PORT}`]: fresh[A] ?? 0,
      [`${B}:${PORT}`]: 60 + (fresh[B] ?? 0),
      [`${C}:${PORT}`]: 60 + (fresh[C] ?? 0),
    });
    await lab.app.call('closeHeld', { tag: 'lc-busy' });
    await lab.app.call('closeHeld', { tag: 'lc-new' });
  });

  it('splits a 90/10 canary within ±3 % over 1,000 connections, and shifting it to 0/100 by config drains none of the open connections', async () => {
    const ids = await dial(vip(103), 1000);
    const counts = tally(ids);
    const v2 = counts[C] ?? 0;
    const v1 = (counts[A] ?? 0) + (counts[B] ?? 0);
    expect(v1 + v2).toBe(1000);
    expect(Math.abs(v2 - 100)).toBeLessThanOrEqual(30);
    expect(Math.abs(v1 - 900)).toBeLessThanOrEqual(30);

    // 20 open connections on both subsets, then the canary moves all traffic to v2.
    const held = tally(
      await lab.app
        .call<{ ids: string[] }>('dial', { host: vip(103), port: 80, count: 20, concurrency: 1, hold: 'canary' })
        .then((r) => r.ids),
    );
    expect(held[C] ?? 0).toBeGreaterThanOrEqual(1);
    expect((held[A] ?? 0) + (held[B] ?? 0)).toBeGreaterThanOrEqual(15);
    const version = (await proxy.adminJson<{ version: number }>('/config')).version;
    await reconfigure(
      policyConfig(lab, { services: services({ lcEndpoints: [A, B, C], canary: { v1: 0, v2: 100 } }) }),
      version,
    );
    const config = await proxy.adminJson('/config');
    expect(config.services.find((s: { name: string }) => s.name === 'canary').subsets).toEqual([
      { name: 'v1', weight: 0 },
      { name: 'v2', weight: 100 },
    ]);

    expect(tally(await dial(vip(103), 50))).toEqual({ [C]: 50 });
    const ping = await lab.app.call<{ ok: number; failures: string[] }>('pingHeld', { tag: 'canary' });
    expect(ping).toMatchObject({ ok: 20, failures: [] });
    // The 50 dialed just before end as they are answered: wait until only the 20 held are active.
    const stats = await proxy.waitFor('the 20 held canary connections as the only active ones', async () => {
      const s = await proxy.adminJson('/stats');
      return s.policy.services.canary.active === 20 ? s : null;
    });
    expect(stats.reloads.failed).toBe(0);
    await lab.app.call('closeHeld', { tag: 'canary' });
    await proxy.waitFor(
      'canary connections closed',
      async () => (await proxy.adminJson('/stats')).policy.services.canary.active === 0,
    );
  });
});
