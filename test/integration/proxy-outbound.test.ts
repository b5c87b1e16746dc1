// Outbound interception end to end: apps (uid 1000) in the client namespace dial servers in the server namespace,
// the capture rules from the planner REDIRECT them to the real proxy (uid nobody, two cluster workers), which
// reads the original destination and connects there itself.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { integrationEnabled } from '../helpers/integration.js';
import { inNs } from '../helpers/netns.js';
import {
  createProxyLab,
  labConfigObject,
  type AccessLine,
  type ProxyLab,
  type RunningProxy,
} from '../helpers/proxy-lab.js';

interface Outcome {
  outcome: 'reset' | 'end' | 'refused' | 'timeout' | 'closed' | 'error';
  code?: string;
  connected: boolean;
  ms: number;
}

describe.skipIf(!integrationEnabled)('outbound interception', () => {
  let lab: ProxyLab;
  let proxy: RunningProxy;
  const subnet = 211;

  beforeAll(async () => {
    const raw = labConfigObject({ proxy: { workers: 2, connectTimeout: '1s' } });
    lab = await createProxyLab('out', subnet, raw);
    // The app may dial 10.211.9.0/24; the proxy's uid is routed to "unreachable" there (uid policy routing).
    inNs(lab.client, 'ip', ['route', 'add', `10.${subnet}.9.0/24`, 'dev', `${lab.client}-v`]);
    inNs(lab.client, 'ip', ['rule', 'add', 'uidrange', '65534-65534', 'lookup', '77']);
    inNs(lab.client, 'ip', ['route', 'add', 'unreachable', `10.${subnet}.9.0/24`, 'table', '77']);
    // A server port that silently drops SYNs (connect timeout).
    inNs(lab.server, 'iptables', ['-w', '-A', 'INPUT', '-p', 'tcp', '--dport', '9999', '-j', 'DROP']);
    await lab.peer.call('serve', { name: 'http', kind: 'http', host: '0.0.0.0', port: 8080 });
    await lab.peer.call('serve', { name: 'http6', kind: 'http', host: '::', port: 8086 });
    await lab.peer.call('serve', {
      name: 'smtp',
      kind: 'banner',
      host: '0.0.0.0',
      port: 2525,
      opts: { banner: '220 mp-out ESMTP ready\r\n' },
    });
    proxy = await lab.startProxy(lab.writeConfig(raw).file);
    await proxy.waitReady();
  });

  afterAll(async () => {
    await lab?.destroy();
  });

  it('intercepts an HTTP request and logs its original destination', async () => {
    const { addrs } = lab;
    const r = await lab.app.call<{ status: number; body: string }>('http', {
      host: addrs.b4,
      port: 8080,
      path: '/hello',
    });
    expect(r.status).toBe(200);
    const seen = JSON.parse(r.body) as { path: string; remote: string; remotePort: number };
    expect(seen.path).toBe('/hello');
    const line = await proxy.waitForAccess((l) => l.originalDst === `${addrs.b4}:8080`);
    expect(line).toMatchObject({
      msg: 'connection closed',
      direction: 'outbound',
      upstream: `${addrs.b4}:8080`,
      result: 'FIN',
    });
    expect(line.source.startsWith(`${addrs.a4}:`)).toBe(true);
    // The server's peer is the proxy's upstream socket, not the app's.
    expect(line.upstreamLocal).toBe(`${seen.remote}:${seen.remotePort}`);
    expect(line.bytesFromClient).toBeGreaterThan(0);
    expect(line.bytesFromUpstream).toBeGreaterThan(r.body.length);
    expect(line.connectMs).not.toBeNull();
  });

  it('relays a server-first protocol: the banner arrives within 50 ms of connecting', async () => {
    const r = await lab.app.call<{ banner: string; msAfterConnect: number }>('banner', {
      host: lab.addrs.b4,
      port: 2525,
    });
    expect(r.banner).toBe('220 mp-out ESMTP ready\r\n');
    expect(r.msAfterConnect).toBeLessThan(50);
    await proxy.waitForAccess((l) => l.originalDst === `${lab.addrs.b4}:2525`);
  });

  it("intercepts IPv6 outbound connections through ip6tables and the addon's IPv6 path", async () => {
    const { addrs } = lab;
    const r = await lab.app.call<{ status: number; body: string }>('http', {
      host: addrs.b6,
      port: 8086,
      path: '/six',
    });
    expect(r.status).toBe(200);
    expect((JSON.parse(r.body) as { remote: string }).remote).toBe(addrs.a6);
    const line = await proxy.waitForAccess((l) => l.originalDst === `[${addrs.b6}]:8086`);
    expect(line).toMatchObject({ direction: 'outbound', upstream: `[${addrs.b6}]:8086`, result: 'FIN' });
    expect(line.source.startsWith(`[${addrs.a6}]:`)).toBe(true);
  });

  it('refuses a direct connection to 15001 at once, counts it, and opens no upstream (no loop)', async () => {
    const before = await proxy.adminJson('/stats');
    for (const host of ['127.0.0.1', '::1']) {
      const r = await lab.app.call<Outcome>('connectOutcome', { host, port: 15001, send: 'GET / HTTP/1.0\r\n\r\n' });
      // The listener accepts, then the proxy resets at once: the client sees a reset (sometimes before its own
      // connect callback ran, so `connected` is not asserted), never ECONNREFUSED and never a hang.
      expect(['reset', 'end', 'closed'], host).toContain(r.outcome);
      expect(r.ms).toBeLessThan(1000);
    }
    const lines = await Promise.all([
      proxy.waitForAccess((l) => l.originalDst === '127.0.0.1:15001'),
      proxy.waitForAccess((l) => l.originalDst === '[::1]:15001'),
    ]);
    for (const l of lines)
      expect(l).toMatchObject({ result: 'refused', detail: 'not-redirected', upstream: null, bytesFromUpstream: 0 });
    const after = await proxy.adminJson('/stats');
    expect(after.connections.accepted.outbound - before.connections.accepted.outbound).toBe(2);
    expect(after.refusals['not-redirected'] - before.refusals['not-redirected']).toBe(2);
    expect(after.connections.active.outbound).toBe(0);
  });

  it('resets the client promptly when the upstream refuses, and logs connect-failed ECONNREFUSED', async () => {
    const r = await lab.app.call<Outcome>('connectOutcome', { host: lab.addrs.b4, port: 9, send: 'x' });
    expect(r.outcome).toBe('reset');
    expect(r.ms).toBeLessThan(1000);
    const line = await proxy.waitForAccess((l) => l.originalDst === `${lab.addrs.b4}:9`);
    expect(line).toMatchObject({ result: 'connect-failed', detail: 'ECONNREFUSED', connectMs: null });
  });

  it('resets the client promptly when the upstream is unreachable, and logs connect-failed EHOSTUNREACH', async () => {
    const target = `10.${subnet}.9.9`;
    const r = await lab.app.call<Outcome>('connectOutcome', { host: target, port: 80 });
    expect(r.outcome).toBe('reset');
    expect(r.ms).toBeLessThan(1000);
    const line = await proxy.waitForAccess((l) => l.originalDst === `${target}:80`);
    expect(line.result).toBe('connect-failed');
    expect(['EHOSTUNREACH', 'ENETUNREACH']).toContain(line.detail);
  });

  it('resets the client when the upstream never answers, after the 1 s connect timeout', async () => {
    const r = await lab.app.call<Outcome>('connectOutcome', { host: lab.addrs.b4, port: 9999, timeoutMs: 8000 });
    expect(r.outcome).toBe('reset');
    expect(r.ms).toBeGreaterThanOrEqual(900);
    expect(r.ms).toBeLessThan(3000);
    const line: AccessLine = await proxy.waitForAccess((l) => l.originalDst === `${lab.addrs.b4}:9999`);
    expect(line).toMatchObject({ result: 'timeout', detail: 'connect' });
  });

  it('serves /metrics with the connections it counted', async () => {
    const r = await proxy.admin('/metrics');
    expect(r.status).toBe(200);
    expect(r.body).toMatch(/meshctl_proxy_connections_total\{direction="outbound",result="FIN"\} [1-9]/);
    expect(r.body).toMatch(/meshctl_proxy_connections_total\{direction="outbound",result="connect-failed"\} [2-9]/);
    expect(r.body).toMatch(/meshctl_proxy_refused_total\{reason="not-redirected"\} 2/);
    expect(r.body).toMatch(/meshctl_proxy_upstream_connect_seconds_count\{direction="outbound"\} [1-9]/);
    expect(r.body).toContain('meshctl_proxy_workers 2');
  });
});
