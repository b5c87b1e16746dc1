// The service registry through the real proxy: registry-only refuses unknown destinations, exact addresses beat
// CIDRs (longest prefix first), and DNS discovery — endpoints from A and SRV records and a service address from a
// hostname — follows record changes on their TTL, from a real DNS server in the server namespace, keeping the last
// answer when the DNS server stops answering.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { integrationEnabled } from '../helpers/integration.js';
import { inNs } from '../helpers/netns.js';
import { createPolicyLab, policyConfig, tally, type PolicyLab, type PolicyProxy } from '../helpers/policy-lab.js';

const RR_A = 1;

describe.skipIf(!integrationEnabled)('service registry: registry-only, CIDR services and DNS discovery', () => {
  let lab: PolicyLab;
  let proxy: PolicyProxy;
  let A: string;
  let B: string;
  let C: string;
  const net = (n: string) => `10.163.${n}`;

  const zone = (backend: string[], srv: { priority: number; target: string; port: number }[], named: string) => ({
    'backend.mesh.test': { ttl: 1, A: backend },
    '_svc._tcp.mesh.test': { ttl: 1, SRV: srv.map((s) => ({ ...s, weight: 10 })) },
    'ep-a.mesh.test': { ttl: 1, A: [A] },
    'ep-b.mesh.test': { ttl: 1, A: [B] },
    'named.mesh.test': { ttl: 1, A: [named] },
  });

  const dial = (host: string, count: number, port = 80) =>
    lab.app.call<{ ids: string[]; ms: number[] }>('dial', { host, port, count, concurrency: 1 }).then((r) => r.ids);
  const queries = () => lab.peer.call<{ name: string; type: number; at: number }[]>('records', { name: 'dns' });

  beforeAll(async () => {
    lab = await createPolicyLab('reg', 163, { endpoints: 3 });
    [A, B, C] = lab.endpoints as [string, string, string];
    for (const ep of lab.endpoints) {
      await lab.peer.call('serve', { name: `${ep}:8080`, host: ep, port: 8080, id: `${ep}:8080` });
      await lab.peer.call('serve', { name: `${ep}:8081`, host: ep, port: 8081, id: `${ep}:8081` });
    }
    await lab.peer.call('serve', { name: 'direct', host: lab.addrs.b4, port: 8080, id: 'direct' });
    await lab.peer.call('serveDns', {
      name: 'dns',
      host: lab.addrs.b4,
      port: 53,
      zone: zone(
        [A],
        [
          { priority: 10, target: 'ep-a.mesh.test', port: 8081 },
          { priority: 20, target: 'ep-b.mesh.test', port: 8081 },
        ],
        net('0.200'),
      ),
    });
    // Service addresses outside the client's subnet need a route for connect() to reach the OUTPUT hook.
    inNs(lab.client, 'ip', ['route', 'add', net('128.0/17'), 'dev', `${lab.client}-v`.slice(0, 15)]);
    const raw = policyConfig(lab, {
      outbound: {
        policy: 'registry-only',
        resolver: { servers: [lab.addrs.b4], timeout: '300ms', minTtl: '500ms', maxTtl: '1m' },
      },
      services: [
        { name: 'broad', addresses: [`${net('128.0')}/17:80`], endpoints: [`${A}:8080`] },
        { name: 'narrow', addresses: [`${net('200.0')}/24:80`], endpoints: [`${B}:8080`] },
        { name: 'exact', addresses: [`${net('200.7')}:80`], endpoints: [`${C}:8080`] },
        { name: 'known', addresses: [`${lab.addrs.b4}:8080`], endpoints: [`${lab.addrs.b4}:8080`] },
        { name: 'dns', addresses: [`${net('0.100')}:80`], endpoints: [{ dns: 'backend.mesh.test:8080' }] },
        { name: 'srv', addresses: [`${net('0.101')}:80`], endpoints: [{ srv: '_svc._tcp.mesh.test' }] },
        { name: 'named', addresses: ['named.mesh.test:80'], endpoints: [`${C}:8081`] },
      ],
    });
    proxy = await lab.startProxy(lab.writeConfig(raw).file);
    await proxy.waitReady();
  });

  afterAll(async () => {
    await lab?.destroy();
  });

  it('with registry-only, refuses an unknown destination (counted and logged) and allows a known one', async () => {
    expect(await dial(lab.addrs.b4, 2, 8080)).toEqual(['direct', 'direct']);
    expect(await dial(lab.addrs.b4, 2, 8081)).toEqual(['ERR:ECONNRESET', 'ERR:ECONNRESET']);
    const line = await proxy.waitFor('the refusal in the access log', async () =>
      proxy.accessLog().find((l) => l.originalDst === `${lab.addrs.b4}:8081`),
    );
    expect(line).toMatchObject({ result: 'refused', detail: 'registry-only', upstream: null });
    expect((await proxy.adminJson('/stats')).refusals['registry-only']).toBe(2);
    expect((await proxy.admin('/metrics')).body).toContain('meshctl_proxy_refused_total{reason="registry-only"} 2');
  });

  it('matches an exact address before a CIDR, and a longer prefix before a shorter one', async () => {
    expect(await dial(net('200.7'), 1)).toEqual([`${C}:8080`]);
    expect(await dial(net('200.8'), 1)).toEqual([`${B}:8080`]);
    expect(await dial(net('129.9'), 1)).toEqual([`${A}:8080`]);
    // Same address, other port: no service.
    expect(await dial(net('200.7'), 1, 81)).toEqual(['ERR:ECONNRESET']);
  });

  it('takes endpoints from A records and follows a change after the TTL', async () => {
    expect(tally(await dial(net('0.100'), 4))).toEqual({ [`${A}:8080`]: 4 });
    await lab.peer.call('setZone', {
      name: 'dns',
      zone: zone(
        [B, C],
        [
          { priority: 10, target: 'ep-a.mesh.test', port: 8081 },
          { priority: 20, target: 'ep-b.mesh.test', port: 8081 },
        ],
        net('0.200'),
      ),
    });
    await proxy.waitFor(
      'endpoints B and C',
      async () => {
        const eps = (await proxy.adminJson('/stats')).policy.services.dns.endpoints
          .map((e: { endpoint: string }) => e.endpoint)
          .sort();
        return eps.join() === [`${B}:8080`, `${C}:8080`].join();
      },
      5000,
    );
    expect(tally(await dial(net('0.100'), 4))).toEqual({ [`${B}:8080`]: 2, [`${C}:8080`]: 2 });
    // Re-resolved on the 1 s TTL, not more often (the queries of one name are about a second apart).
    const times = (await queries()).filter((q) => q.name === 'backend.mesh.test' && q.type === RR_A).map((q) => q.at);
    expect(times.length).toBeGreaterThanOrEqual(2);
    for (let i = 1; i < times.length; i++) expect(times[i]! - times[i - 1]!).toBeGreaterThan(900);
  });

  it('takes endpoints from the best-priority SRV records, with their ports', async () => {
    expect(tally(await dial(net('0.101'), 3))).toEqual({ [`${A}:8081`]: 3 });
    await lab.peer.call('setZone', {
      name: 'dns',
      zone: zone(
        [B, C],
        [
          { priority: 30, target: 'ep-a.mesh.test', port: 8081 },
          { priority: 20, target: 'ep-b.mesh.test', port: 8080 },
        ],
        net('0.200'),
      ),
    });
    await proxy.waitFor('the SRV change', async () => (await dial(net('0.101'), 1))[0] === `${B}:8080`, 5000);
    expect(tally(await dial(net('0.101'), 3))).toEqual({ [`${B}:8080`]: 3 });
  });

  it('matches a service address given as a hostname by its resolved addresses, and follows it when it moves', async () => {
    expect(await dial(net('0.200'), 2)).toEqual([`${C}:8081`, `${C}:8081`]);
    expect(await dial(net('0.201'), 1)).toEqual(['ERR:ECONNRESET']);
    await lab.peer.call('setZone', {
      name: 'dns',
      zone: zone([B, C], [{ priority: 20, target: 'ep-b.mesh.test', port: 8080 }], net('0.201')),
    });
    await proxy.waitFor(
      'named.mesh.test moved to .201',
      async () => (await dial(net('0.201'), 1))[0] === `${C}:8081`,
      5000,
    );
    expect(await dial(net('0.200'), 1)).toEqual(['ERR:ECONNRESET']);
  });

  it('keeps the last DNS answers when the DNS server stops answering, and reports the failures', async () => {
    await lab.peer.call('closeServer', { name: 'dns' });
    await proxy.waitFor(
      'a failed DNS refresh',
      async () => {
        const d = (await proxy.adminJson('/stats')).policy.discovery as {
          name: string;
          lastError: string | null;
          failures: number;
        }[];
        return d.find((w) => w.name === 'backend.mesh.test' && w.lastError !== null && w.failures > 0);
      },
      5000,
    );
    expect(tally(await dial(net('0.100'), 4))).toEqual({ [`${B}:8080`]: 2, [`${C}:8080`]: 2 });
    expect(await dial(net('0.201'), 1)).toEqual([`${C}:8081`]);
    expect((await proxy.admin('/metrics')).body).toMatch(
      /meshctl_dns_failures_total\{kind="addresses",name="backend.mesh.test"\} [1-9]/,
    );
    expect(proxy.stderr()).toContain('DNS refresh failed; keeping the last answer');
  });
});
