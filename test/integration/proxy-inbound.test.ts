// Inbound interception: a peer in the server namespace dials an app in the client namespace; PREROUTING redirects
// to the proxy's inbound listener, which connects to the app from the passthrough source (127.0.0.6 / ::6).
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { integrationEnabled } from '../helpers/integration.js';
import { createProxyLab, labConfigObject, type ProxyLab, type RunningProxy } from '../helpers/proxy-lab.js';

describe.skipIf(!integrationEnabled)('inbound interception', () => {
  let lab: ProxyLab;
  let proxy: RunningProxy;

  beforeAll(async () => {
    const raw = labConfigObject();
    lab = await createProxyLab('in', 213, raw);
    await lab.app.call('serve', { name: 'app', kind: 'http', host: '0.0.0.0', port: 8080 });
    await lab.app.call('serve', { name: 'app6', kind: 'http', host: '::', port: 8086 });
    proxy = await lab.startProxy(lab.writeConfig(raw).file);
    await proxy.waitReady();
  });

  afterAll(async () => {
    await lab?.destroy();
  });

  it('delivers a connection from the server namespace to the app, which sees the 127.0.0.6 passthrough source', async () => {
    const { addrs } = lab;
    const r = await lab.peer.call<{ status: number; body: string }>('http', {
      host: addrs.a4,
      port: 8080,
      path: '/in',
    });
    expect(r.status).toBe(200);
    const seen = JSON.parse(r.body) as { remote: string; local: string; localPort: number };
    expect(seen).toMatchObject({ remote: '127.0.0.6', local: addrs.a4, localPort: 8080 });
    const line = await proxy.waitForAccess((l) => l.direction === 'inbound' && l.originalDst === `${addrs.a4}:8080`);
    expect(line).toMatchObject({ upstream: `${addrs.a4}:8080`, result: 'FIN' });
    expect(line.source.startsWith(`${addrs.b4}:`)).toBe(true);
    expect(line.upstreamLocal?.startsWith('127.0.0.6:')).toBe(true);
  });

  it('delivers IPv6 inbound connections from ::6', async () => {
    const { addrs } = lab;
    const r = await lab.peer.call<{ status: number; body: string }>('http', {
      host: addrs.a6,
      port: 8086,
      path: '/in6',
    });
    expect(r.status).toBe(200);
    expect(JSON.parse(r.body)).toMatchObject({ remote: '::6', local: addrs.a6 });
    const line = await proxy.waitForAccess((l) => l.direction === 'inbound' && l.originalDst === `[${addrs.a6}]:8086`);
    expect(line.upstreamLocal?.startsWith('[::6]:')).toBe(true);
  });

  it('resets the peer when no app listens on the port, and logs connect-failed', async () => {
    const r = await lab.peer.call<{ outcome: string; ms: number }>('connectOutcome', {
      host: lab.addrs.a4,
      port: 8099,
      send: 'x',
    });
    expect(r.outcome).toBe('reset');
    expect(r.ms).toBeLessThan(1000);
    const line = await proxy.waitForAccess((l) => l.originalDst === `${lab.addrs.a4}:8099`);
    expect(line).toMatchObject({ direction: 'inbound', result: 'connect-failed', detail: 'ECONNREFUSED' });
  });

  it('counts inbound connections separately in /stats and /metrics', async () => {
    const stats = await proxy.adminJson('/stats');
    expect(stats.connections.accepted.inbound).toBeGreaterThanOrEqual(3);
    expect(stats.connections.closed.inbound['connect-failed']).toBeGreaterThanOrEqual(1);
    const metrics = await proxy.admin('/metrics');
    expect(metrics.body).toMatch(/meshctl_proxy_connections_total\{direction="inbound",result="FIN"\} [2-9]/);
  });
});
