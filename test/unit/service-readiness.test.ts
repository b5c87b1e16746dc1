// probeReady / waitReady / requireProxyReady against real local HTTP servers on loopback (no root needed).
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { isMeshctlError } from '../../src/errors.js';
import { probeReady, requireProxyReady, waitReady } from '../../src/service/readiness.js';

let servers: Server[] = [];
afterEach(async () => {
  await Promise.all(servers.map((s) => new Promise((resolve) => s.close(resolve))));
  servers = [];
});

function serve(handler: (path: string) => { status: number; body: string } | 'hang'): Promise<number> {
  const server = createServer((req, res) => {
    const answer = handler(req.url ?? '');
    if (answer === 'hang') return;
    res.writeHead(answer.status).end(answer.body);
  });
  servers.push(server);
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve((server.address() as AddressInfo).port)));
}

/** A port nothing listens on: bound once, then closed. */
async function closedPort(): Promise<number> {
  const server = createServer();
  const port = await new Promise<number>((resolve) =>
    server.listen(0, '127.0.0.1', () => resolve((server.address() as AddressInfo).port)),
  );
  await new Promise((resolve) => server.close(resolve));
  return port;
}

describe('proxy readiness', () => {
  it('is ready only on HTTP 200 from /ready', async () => {
    const port = await serve((path) =>
      path === '/ready' ? { status: 200, body: 'ready\n' } : { status: 404, body: '' },
    );
    expect(await probeReady({ address: '127.0.0.1', port })).toEqual({ ready: true, detail: 'ready' });
  });

  it('reports a draining proxy as not ready with what it said', async () => {
    const port = await serve(() => ({ status: 503, body: 'not ready: draining\n' }));
    expect(await probeReady({ address: '127.0.0.1', port })).toEqual({
      ready: false,
      detail: 'HTTP 503: not ready: draining',
    });
  });

  it('says when nothing listens, and when the port does not answer in time', async () => {
    expect(await probeReady({ address: '127.0.0.1', port: await closedPort() })).toEqual({
      ready: false,
      detail: 'nothing listens there (ECONNREFUSED)',
    });
    const port = await serve(() => 'hang');
    expect((await probeReady({ address: '127.0.0.1', port }, 200)).detail).toMatch(
      /no answer within 200 ms|ECONNRESET/,
    );
  });

  it('waits until the proxy becomes ready', async () => {
    let calls = 0;
    const port = await serve(() =>
      ++calls < 3 ? { status: 503, body: 'not ready: starting' } : { status: 200, body: 'ready' },
    );
    expect((await waitReady({ address: '127.0.0.1', port }, { timeoutMs: 5000, intervalMs: 20 })).ready).toBe(true);
    expect(calls).toBe(3);
  });

  it('throws PROXY_NOT_READY naming the endpoint, the reason and --without-proxy', async () => {
    const port = await closedPort();
    const error = await requireProxyReady({ address: '127.0.0.1', port }, { timeoutMs: 150 }).catch((e: unknown) => e);
    expect(isMeshctlError(error, 'PROXY_NOT_READY')).toBe(true);
    const e = error as Error & { hint?: string };
    expect(e.message).toContain(`127.0.0.1:${port}`);
    expect(e.message).toContain('ECONNREFUSED');
    expect(e.hint).toContain('--without-proxy');
  });
});
