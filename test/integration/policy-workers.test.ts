// Policy with several worker processes (node:cluster): every worker runs the services (config over IPC), /stats
// and /metrics sum their counters, and a reload reaches all of them without dropping open connections.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { integrationEnabled } from '../helpers/integration.js';
import { createPolicyLab, policyConfig, tally, type PolicyLab, type PolicyProxy } from '../helpers/policy-lab.js';

describe.skipIf(!integrationEnabled)('policy with two worker processes', () => {
  let lab: PolicyLab;
  let proxy: PolicyProxy;
  let A: string;
  let B: string;
  let C: string;
  const vip = '10.167.0.100';
  const raw = (endpoints: string[]) =>
    policyConfig(lab, {
      proxy: { workers: 2 },
      services: [{ name: 'api', addresses: [`${vip}:80`], endpoints: endpoints.map((e) => `${e}:8080`) }],
      inbound: { ports: [{ port: 9000, deny: [`${lab.peerSources[0]}/32`] }] },
    });

  beforeAll(async () => {
    lab = await createPolicyLab('wk', 167, { endpoints: 3, peerSources: 1 });
    [A, B, C] = lab.endpoints as [string, string, string];
    for (const ep of lab.endpoints) await lab.peer.call('serve', { name: ep, host: ep, port: 8080, id: ep });
    await lab.app.call('serve', { name: 'app', host: '0.0.0.0', port: 9000, id: 'app' });
    proxy = await lab.startProxy(lab.writeConfig(raw([A, B, C])).file);
    await proxy.waitReady();
  });

  afterAll(async () => {
    await lab?.destroy();
  });

  it('balances within ±10 % across workers and sums their counters in /stats and /metrics', async () => {
    const ids = (await lab.app.call<{ ids: string[] }>('dial', { host: vip, port: 80, count: 300, concurrency: 8 }))
      .ids;
    const counts = tally(ids);
    for (const ep of [A, B, C]) {
      expect(counts[ep]).toBeGreaterThanOrEqual(90);
      expect(counts[ep]).toBeLessThanOrEqual(110);
    }
    const stats = await proxy.adminJson('/stats');
    expect(stats.workers).toHaveLength(2);
    expect(stats.policy.services.api).toMatchObject({ connections: 300, connected: 300 });
    expect(
      stats.policy.services.api.endpoints
        .map((e: { connections: number }) => e.connections)
        .reduce((a: number, b: number) => a + b, 0),
    ).toBe(300);
    expect((await proxy.admin('/metrics')).body).toContain('meshctl_service_connections_total{service="api"} 300');
  });

  it('applies inbound policy in every worker', async () => {
    const denied = await lab.peer.call<{ ids: string[] }>('dial', {
      host: lab.addrs.a4,
      port: 9000,
      count: 6,
      localAddress: lab.peerSources[0],
    });
    expect(denied.ids).toEqual(Array(6).fill('ERR:ECONNRESET'));
    expect((await lab.peer.call<{ ids: string[] }>('dial', { host: lab.addrs.a4, port: 9000, count: 6 })).ids).toEqual(
      Array(6).fill('app'),
    );
    expect((await proxy.adminJson('/stats')).policy.inbound['9000']).toMatchObject({
      admitted: 6,
      refused: { denied: 6 },
    });
  });

  it('reloads every worker: new connections follow the new endpoints, open ones stay', async () => {
    expect(
      (await lab.app.call<{ ids: string[] }>('dial', { host: vip, port: 80, count: 12, concurrency: 4, hold: 'open' }))
        .ids,
    ).toHaveLength(12);
    const version = (await proxy.adminJson<{ version: number }>('/config')).version;
    lab.writeConfig(raw([C]));
    await proxy.waitFor(
      'version bump',
      async () => (await proxy.adminJson<{ version: number }>('/config')).version > version,
    );
    expect(
      tally((await lab.app.call<{ ids: string[] }>('dial', { host: vip, port: 80, count: 20, concurrency: 4 })).ids),
    ).toEqual({ [C]: 20 });
    expect(await lab.app.call('pingHeld', { tag: 'open' })).toMatchObject({ ok: 12, failures: [] });
    // The 20 dialed just before end as they are answered: wait until only the 12 held are active.
    await proxy.waitFor(
      'the 12 held connections as the only active ones',
      async () => (await proxy.adminJson('/stats')).policy.services.api.active === 12,
    );
    await lab.app.call('closeHeld', { tag: 'open' });
  });
});
