// The control-plane poller against local HTTP(S) servers: conditional GETs, what is applied, what is rejected and
// kept, timeouts, HTTPS with an extra CA, and what /ready and /metrics say about it.
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import type { PolicyOverlay } from '../../src/config/load.js';
import { MeshctlError } from '../../src/errors.js';
import { silentLogger } from '../../src/log.js';
import {
  ControlPlanePoller,
  controlPlaneReadyDetail,
  parsePolicyDocument,
  renderControlPlanePrometheus,
} from '../../src/policy/control-plane.js';

let servers: Server[] = [];
afterEach(async () => {
  await Promise.all(
    servers.map(
      (s) =>
        new Promise((resolve) => {
          s.closeAllConnections();
          s.close(resolve);
        }),
    ),
  );
  servers = [];
});

async function serve(
  handler: (req: IncomingMessage, res: ServerResponse) => void,
  server: Server = createServer(),
): Promise<string> {
  server.on('request', handler);
  servers.push(server);
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return `http://127.0.0.1:${(server.address() as AddressInfo).port}/policy`;
}

const cp = (url: string, extra: { timeoutMs?: number; caFile?: string | null } = {}) => ({
  url,
  pollIntervalMs: 60_000,
  timeoutMs: extra.timeoutMs ?? 1000,
  caFile: extra.caFile ?? null,
});

describe('ControlPlanePoller', () => {
  it('applies a document, then asks with If-None-Match and applies nothing on 304', async () => {
    const seen: (string | null)[] = [];
    let body = JSON.stringify({ services: [] });
    let etag = '"a"';
    const url = await serve((req, res) => {
      const inm = (req.headers['if-none-match'] as string | undefined) ?? null;
      seen.push(inm);
      if (inm === etag) return void res.writeHead(304, { etag }).end();
      res.writeHead(200, { etag, 'content-type': 'application/json' }).end(body);
    });
    const applied: PolicyOverlay[] = [];
    const poller = new ControlPlanePoller(cp(url), async (o) => void applied.push(o), silentLogger);
    expect(await poller.poll()).toBe('ok');
    expect(await poller.poll()).toBe('not-modified');
    body = 'outbound:\n  policy: registry-only\n';
    etag = '"b"';
    expect(await poller.poll()).toBe('ok');
    expect(seen).toEqual([null, '"a"', '"a"']);
    expect(applied.map((a) => a.raw)).toEqual([{ services: [] }, { outbound: { policy: 'registry-only' } }]);
    expect(applied[1]!.origin).toBe(`control plane ${url} (etag "b")`);
    expect(poller.status()).toMatchObject({
      state: 'ok',
      appliedEtag: '"b"',
      lastError: null,
      consecutiveFailures: 0,
      fetches: { ok: 2, 'not-modified': 1, failed: 0, rejected: 0 },
    });
  });

  it('keeps the last good policy when a document is rejected, and keeps reporting it while the server answers 304', async () => {
    let etag = '"good"';
    let body = '{"services": []}';
    const url = await serve((req, res) => {
      if (req.headers['if-none-match'] === etag) return void res.writeHead(304).end();
      res.writeHead(200, { etag }).end(body);
    });
    const poller = new ControlPlanePoller(
      cp(url),
      async (o) => {
        if ('inbound' in o.raw)
          throw new MeshctlError('CONFIG_INVALID', 'inbound.ports[0].port (x): bad', undefined, {
            details: ['first', 'second'],
          });
      },
      silentLogger,
    );
    await poller.poll();
    etag = '"bad"';
    body = '{"inbound": {"ports": [{}]}}';
    expect(await poller.poll()).toBe('rejected');
    expect(await poller.poll()).toBe('rejected');
    expect(poller.status()).toMatchObject({
      state: 'failing',
      appliedEtag: '"good"',
      lastError: 'inbound.ports[0].port (x): bad (first; second)',
      consecutiveFailures: 2,
    });
    etag = '"fixed"';
    body = '{"services": []}';
    expect(await poller.poll()).toBe('ok');
    expect(poller.status()).toMatchObject({ state: 'ok', appliedEtag: '"fixed"', consecutiveFailures: 0 });
  });

  it('reports unparsable documents, HTTP errors, refused connections and timeouts as failures', async () => {
    let mode = 'yaml';
    const url = await serve((_req, res) => {
      if (mode === 'yaml') res.writeHead(200).end('services: [\n  - {');
      else if (mode === 'list') res.writeHead(200).end('[1, 2]');
      else if (mode === 'error') res.writeHead(500).end('boom');
      // 'hang': never answers
    });
    const poller = new ControlPlanePoller(cp(url, { timeoutMs: 200 }), async () => {}, silentLogger);
    expect(await poller.poll()).toBe('rejected');
    expect(poller.status().lastError).toMatch(/^control plane http:\S+ is not valid YAML\/JSON: /);
    mode = 'list';
    expect(await poller.poll()).toBe('rejected');
    expect(poller.status().lastError).toContain(
      'the document must be a mapping with services, outbound, inbound and/or mtls.peers',
    );
    mode = 'error';
    expect(await poller.poll()).toBe('failed');
    expect(poller.status().lastError).toBe(`GET ${url}: HTTP 500: boom`);
    mode = 'hang';
    const started = performance.now();
    expect(await poller.poll()).toBe('failed');
    expect(performance.now() - started).toBeLessThan(1000);
    expect(poller.status().lastError).toContain('within 200 ms');
    const closed = new ControlPlanePoller(cp('http://127.0.0.1:1/policy'), async () => {}, silentLogger);
    expect(await closed.poll()).toBe('failed');
    expect(closed.status().lastError).toContain('ECONNREFUSED');
    expect(poller.status()).toMatchObject({
      state: 'failing',
      appliedEtag: null,
      consecutiveFailures: 4,
      fetches: { ok: 0, failed: 2, rejected: 2 },
    });
  });

  it('fetches over HTTPS trusting the CA in caFile, and fails without it', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'mq-cp-tls-'));
    try {
      execFileSync(
        'openssl',
        [
          'req',
          '-x509',
          '-newkey',
          'rsa:2048',
          '-nodes',
          '-keyout',
          join(dir, 'key.pem'),
          '-out',
          join(dir, 'cert.pem'),
          '-days',
          '1',
          '-subj',
          '/CN=127.0.0.1',
          '-addext',
          'subjectAltName=IP:127.0.0.1',
        ],
        { stdio: 'ignore' },
      );
      const https = createHttpsServer({
        key: readFileSync(join(dir, 'key.pem')),
        cert: readFileSync(join(dir, 'cert.pem')),
      });
      const url = (
        await serve((_req, res) => void res.writeHead(200, { etag: '"tls"' }).end('{"services": []}'), https)
      ).replace('http:', 'https:');
      const trusted = new ControlPlanePoller(cp(url, { caFile: join(dir, 'cert.pem') }), async () => {}, silentLogger);
      expect(await trusted.poll()).toBe('ok');
      const untrusted = new ControlPlanePoller(cp(url), async () => {}, silentLogger);
      expect(await untrusted.poll()).toBe('failed');
      expect(untrusted.status().lastError).toMatch(/self.signed|SELF_SIGNED/i);
      const missing = new ControlPlanePoller(cp(url, { caFile: join(dir, 'nope.pem') }), async () => {}, silentLogger);
      expect(await missing.poll()).toBe('failed');
      expect(missing.status().lastError).toBe(`cannot read controlPlane.caFile ${join(dir, 'nope.pem')}: ENOENT`);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('describes its state for /ready and /metrics', async () => {
    const url = await serve((_req, res) => void res.writeHead(200, { etag: '"v9"' }).end('{}'));
    const poller = new ControlPlanePoller(cp(url), async () => {}, silentLogger);
    expect(controlPlaneReadyDetail(poller.status(), 1)).toEqual([
      `control plane ${url}: not fetched yet; config version 1`,
    ]);
    await poller.poll();
    expect(controlPlaneReadyDetail(poller.status(), 2)[0]).toMatch(
      new RegExp(
        `^control plane ${url}: ok; policy from the control plane \\(etag "v9"\\) applied \\S+; config version 2$`,
      ),
    );
    const text = renderControlPlanePrometheus(poller.status(), 2);
    expect(text).toContain('meshctl_proxy_config_version 2');
    expect(text).toContain('meshctl_control_plane_up 1');
    expect(text).toContain('meshctl_control_plane_fetches_total{result="ok"} 1');
    expect(text).toMatch(/meshctl_control_plane_last_success_timestamp_seconds \d+\.\d{3}/);
    expect(renderControlPlanePrometheus(null, 5)).toBe(
      '# HELP meshctl_proxy_config_version Version of the running config (1 at start, +1 per applied change).\n# TYPE meshctl_proxy_config_version gauge\nmeshctl_proxy_config_version 5\n',
    );
  });

  it('parses YAML and JSON documents', () => {
    expect(parsePolicyDocument('services: []\n', 'cp')).toEqual({ services: [] });
    expect(() => parsePolicyDocument('a: 1\na: 2\n', 'cp')).toThrow('cp is not valid YAML/JSON');
    expect(() => parsePolicyDocument('', 'cp')).toThrow('the document must be a mapping');
  });
});
