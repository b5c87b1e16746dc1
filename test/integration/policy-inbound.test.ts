// Inbound policy through the real proxy: peers in the server namespace (several source addresses) dial apps in the
// client namespace; PREROUTING redirects them to the proxy's inbound listener, which applies the port's policy —
// CIDR allow/deny, max concurrent connections, token-bucket rate limits (all sources, and per source).
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { integrationEnabled } from '../helpers/integration.js';
import { createPolicyLab, policyConfig, tally, type PolicyLab, type PolicyProxy } from '../helpers/policy-lab.js';

describe.skipIf(!integrationEnabled)('inbound policy: authorization, limits and rate limits', () => {
  let lab: PolicyLab;
  let proxy: PolicyProxy;
  let P1: string;
  let P2: string;

  const dial = (port: number, count: number, extra: Record<string, unknown> = {}) =>
    lab.peer.call<{ ids: string[]; ms: number[] }>('dial', {
      host: lab.addrs.a4,
      port,
      count,
      concurrency: 1,
      ...extra,
    });
  const inbound = async (label: string) => (await proxy.adminJson('/stats')).policy.inbound[label];

  beforeAll(async () => {
    lab = await createPolicyLab('in', 162, { endpoints: 0, peerSources: 2 });
    [P1, P2] = lab.peerSources as [string, string];
    for (const port of [8080, 8081, 8082, 8083, 8084, 8090])
      await lab.app.call('serve', { name: `app${port}`, host: '0.0.0.0', port, id: `app${port}` });
    await lab.app.call('serve', { name: 'app8081-6', host: '::', port: 8081, id: 'app8081-6' });
    const raw = policyConfig(lab, {
      inbound: {
        ports: [
          { port: 8080, deny: [`${P1}/32`] },
          { port: 8081, allow: [`${P2}/32`, 'fd00::/8'] },
          { port: 8082, rateLimit: { connections: 40, per: '1s', burst: 5 } },
          { port: 8083, maxConnections: 3 },
          { port: 8084, sourceRateLimit: { connections: 5, per: '10s', burst: 5 } },
        ],
      },
    });
    proxy = await lab.startProxy(lab.writeConfig(raw).file);
    await proxy.waitReady();
  });

  afterAll(async () => {
    await lab?.destroy();
  });

  it('refuses a source denied by CIDR and allows the other sources of the peer namespace', async () => {
    expect((await dial(8080, 3, { localAddress: P1 })).ids).toEqual(Array(3).fill('ERR:ECONNRESET'));
    expect((await dial(8080, 3, { localAddress: P2 })).ids).toEqual(Array(3).fill('app8080'));
    expect((await dial(8080, 2)).ids).toEqual(['app8080', 'app8080']);
    expect(await inbound('8080')).toMatchObject({ admitted: 5, refused: { denied: 3 } });
    const line = await proxy.waitFor('the denied connection in the access log', async () =>
      proxy
        .accessLog()
        .find((l) => l.direction === 'inbound' && l.result === 'refused' && l.source.startsWith(`${P1}:`)),
    );
    expect(line).toMatchObject({ detail: 'denied', originalDst: `${lab.addrs.a4}:8080`, upstream: null });
    expect((await proxy.adminJson('/stats')).refusals.denied).toBe(3);
  });

  it('admits only the allowed CIDRs of an allow-list', async () => {
    expect((await dial(8081, 2, { localAddress: P1 })).ids).toEqual(['ERR:ECONNRESET', 'ERR:ECONNRESET']);
    expect((await dial(8081, 2)).ids).toEqual(['ERR:ECONNRESET', 'ERR:ECONNRESET']);
    expect((await dial(8081, 2, { localAddress: P2 })).ids).toEqual(['app8081', 'app8081']);
    // The IPv6 peer is inside fd00::/8.
    const six = await lab.peer.call<{ ids: string[] }>('dial', { host: lab.addrs.a6, port: 8081, count: 1 });
    expect(six.ids).toEqual(['app8081-6']);
  });

  it('refuses a connection beyond maxConnections on the port and admits again once one closes', async () => {
    expect(tally((await dial(8083, 3, { hold: 'max' })).ids)).toEqual({ app8083: 3 });
    const over = await dial(8083, 1);
    expect(over.ids).toEqual(['ERR:ECONNRESET']);
    expect(over.ms[0]).toBeLessThan(500);
    expect(await inbound('8083')).toMatchObject({ active: 3, refused: { 'over-capacity': 1 } });
    // Another port has no limit.
    expect((await dial(8090, 5)).ids).toEqual(Array(5).fill('app8090'));
    await lab.peer.call('closeHeld', { tag: 'max' });
    await proxy.waitFor('port 8083 idle', async () => (await inbound('8083')).active === 0);
    expect((await dial(8083, 1)).ids).toEqual(['app8083']);
  });

  it('limits each source address to its own token bucket', async () => {
    const first = await dial(8084, 7, { localAddress: P1 });
    expect(first.ids).toEqual([...Array(5).fill('app8084'), 'ERR:ECONNRESET', 'ERR:ECONNRESET']);
    expect((await dial(8084, 5, { localAddress: P2 })).ids).toEqual(Array(5).fill('app8084'));
    expect((await inbound('8084')).refused['rate-limited']).toBe(2);
  });

  it('admits the configured connection rate within ±10 % over 5 s', async () => {
    // 40 connections/s with a burst of 5, offered 250/s for 5 s: 5 + 40 × 5 = 205 are admitted (rate × 5 s = 200).
    const r = await lab.peer.call<{
      attempts: number;
      served: number;
      errors: Record<string, number>;
      elapsedMs: number;
    }>('rate', { host: lab.addrs.a4, port: 8082, durationMs: 5000, intervalMs: 4 });
    expect(r.attempts).toBeGreaterThan(1000);
    expect(r.served).toBeGreaterThanOrEqual(180);
    expect(r.served).toBeLessThanOrEqual(220);
    expect(Object.keys(r.errors)).toEqual(['ECONNRESET']);
    expect(r.served + r.errors.ECONNRESET!).toBe(r.attempts);
    const stats = await inbound('8082');
    expect(stats.admitted).toBe(r.served);
    expect(stats.refused['rate-limited']).toBe(r.attempts - r.served);
    const metrics = (await proxy.admin('/metrics')).body;
    expect(metrics).toContain(
      `meshctl_inbound_refused_total{ports="8082",reason="rate-limited"} ${r.attempts - r.served}`,
    );
    expect(metrics).toContain(`meshctl_inbound_admitted_total{ports="8082"} ${r.served}`);
  });
});
