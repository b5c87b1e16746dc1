// The admin server's routes, methods and status codes, with handlers that record what they were asked.
import type { AddressInfo } from 'node:net';
import type { Server } from 'node:http';
import { afterEach, describe, expect, it } from 'vitest';
import { startAdminServer, type AdminHandlers } from '../../src/proxy/admin.js';
import { isMeshctlError } from '../../src/errors.js';

let server: Server | undefined;
afterEach(() => {
  server?.close();
  server = undefined;
});

async function serve(overrides: Partial<AdminHandlers> = {}) {
  const calls: string[] = [];
  let ready = true;
  const handlers: AdminHandlers = {
    ready: () => (ready ? { ready: true, reason: '' } : { ready: false, reason: 'draining' }),
    stats: async () => ({ connections: { active: { outbound: 1, inbound: 0 } } }),
    metrics: async () => 'meshctl_proxy_ready 1\n',
    config: () => ({ proxy: { outboundPort: 15001 } }),
    contract: async () => ({ pid: 1, uid: 998 }),
    connections: async (limit) => {
      calls.push(`connections:${limit}`);
      return [{ id: '0.1' }];
    },
    lookup: async (source) => {
      calls.push(`lookup:${source}`);
      return { source, connections: [] };
    },
    drain: () => {
      calls.push('drain');
      const already = !ready;
      ready = false;
      return { alreadyDraining: already, timeoutMs: 20_000 };
    },
    ...overrides,
  };
  server = await startAdminServer(handlers, '127.0.0.1', 0);
  const port = (server.address() as AddressInfo).port;
  const get = async (path: string, method = 'GET') => {
    const r = await fetch(`http://127.0.0.1:${port}${path}`, { method });
    return { status: r.status, type: r.headers.get('content-type'), body: await r.text() };
  };
  return { get, calls };
}

describe('admin server', () => {
  it('reports ready with 200 and not ready with 503 and the reason', async () => {
    const { get } = await serve();
    expect(await get('/ready')).toMatchObject({ status: 200, body: 'ready\n' });
    await get('/drain', 'POST');
    expect(await get('/ready')).toMatchObject({ status: 503, body: 'not ready: draining\n' });
  });

  it('serves stats and config as JSON and metrics as Prometheus text', async () => {
    const { get } = await serve();
    const stats = await get('/stats');
    expect(stats.type).toContain('application/json');
    expect(JSON.parse(stats.body)).toEqual({ connections: { active: { outbound: 1, inbound: 0 } } });
    expect(JSON.parse((await get('/config')).body)).toEqual({ proxy: { outboundPort: 15001 } });
    expect(JSON.parse((await get('/contract')).body)).toEqual({ pid: 1, uid: 998 });
    const metrics = await get('/metrics');
    expect(metrics.type).toContain('text/plain; version=0.0.4');
    expect(metrics.body).toBe('meshctl_proxy_ready 1\n');
  });

  it('limits /connections, 1000 rows by default, and rejects a bad limit', async () => {
    const { get, calls } = await serve();
    expect(JSON.parse((await get('/connections')).body)).toEqual([{ id: '0.1' }]);
    await get('/connections?limit=5');
    expect(calls).toEqual(['connections:1000', 'connections:5']);
    for (const bad of ['0', '-1', 'x', '1.5', '100001'])
      expect((await get(`/connections?limit=${bad}`)).status).toBe(400);
  });

  it('looks a source up in its canonical spelling, and rejects a missing or malformed one with 400', async () => {
    const { get, calls } = await serve();
    expect(JSON.parse((await get('/lookup?source=10.1.0.1:40000')).body)).toEqual({
      source: '10.1.0.1:40000',
      connections: [],
    });
    await get(`/lookup?source=${encodeURIComponent('[2001:DB8:0::1]:40001')}`);
    await get(`/lookup?source=${encodeURIComponent('[::ffff:10.1.0.1]:40002')}`);
    expect(calls).toEqual(['lookup:10.1.0.1:40000', 'lookup:[2001:db8::1]:40001', 'lookup:10.1.0.1:40002']);
    expect(await get('/lookup')).toMatchObject({
      status: 400,
      body: 'source must be ADDR:PORT or [IPV6]:PORT, got "" (ask /lookup?source=ADDR:PORT)\n',
    });
    for (const bad of ['10.1.0.1', '10.1.0.1:0', '10.1.0.1:70000', '2001:db8::1:80', 'host:80'])
      expect((await get(`/lookup?source=${encodeURIComponent(bad)}`)).status).toBe(400);
    expect((await get('/lookup?source=10.1.0.1:1', 'POST')).status).toBe(405);
    expect(calls).toHaveLength(3);
  });

  it('drains only on POST, answering 202 and whether a drain was already running', async () => {
    const { get, calls } = await serve();
    expect((await get('/drain')).status).toBe(405);
    expect(calls).toEqual([]);
    const first = await get('/drain', 'POST');
    expect(first.status).toBe(202);
    expect(JSON.parse(first.body)).toEqual({ draining: true, alreadyDraining: false, timeoutMs: 20_000 });
    expect(JSON.parse((await get('/drain', 'POST')).body).alreadyDraining).toBe(true);
  });

  it('answers 403 on the privileged paths to a client the authorizer refuses, and never calls their handlers', async () => {
    const calls: string[] = [];
    server = await startAdminServer(
      {
        ready: () => ({ ready: true, reason: '' }),
        stats: async () => ({}),
        metrics: async () => '',
        config: () => calls.push('config'),
        contract: async () => ({}),
        connections: async () => calls.push('connections'),
        lookup: async () => calls.push('lookup'),
        drain: () => {
          calls.push('drain');
          return { alreadyDraining: false, timeoutMs: 1 };
        },
      },
      '127.0.0.1',
      0,
      () => ({ allowed: false, uid: 1000, who: "root and the proxy's user (uid 998)" }),
    );
    const port = (server.address() as AddressInfo).port;
    const status = async (path: string, method = 'GET') =>
      (await fetch(`http://127.0.0.1:${port}${path}`, { method })).status;
    for (const path of ['/ready', '/stats', '/metrics', '/contract']) expect(await status(path), path).toBe(200);
    expect(await status('/config')).toBe(403);
    expect(await status('/connections')).toBe(403);
    expect(await status('/lookup?source=10.0.0.1:1')).toBe(403);
    expect(await status('/drain', 'POST')).toBe(403);
    expect(await (await fetch(`http://127.0.0.1:${port}/config`)).text()).toBe(
      "/config is only for root and the proxy's user (uid 998); this request came from uid 1000 (ask as root, e.g. with sudo)\n",
    );
    expect(calls).toEqual([]);
  });

  it('answers 404 for unknown paths, 405 for writes to read-only ones, 500 when a handler fails', async () => {
    const { get } = await serve({ stats: async () => Promise.reject(new Error('worker 1 did not answer')) });
    expect((await get('/nope')).status).toBe(404);
    expect((await get('/stats', 'POST')).status).toBe(405);
    expect(await get('/stats')).toMatchObject({ status: 500, body: 'admin handler failed: worker 1 did not answer\n' });
  });

  it('fails with LISTEN_FAILED naming the port when it is taken', async () => {
    await serve();
    const port = (server!.address() as AddressInfo).port;
    let caught: unknown;
    try {
      await startAdminServer({} as AdminHandlers, '127.0.0.1', port);
    } catch (error) {
      caught = error;
    }
    expect(isMeshctlError(caught, 'LISTEN_FAILED')).toBe(true);
    expect((caught as Error).message).toContain(`127.0.0.1:${port}: EADDRINUSE`);
  });
});
