// The control plane: the proxy polls an HTTP server in the server namespace for its policy document (ETag,
// If-None-Match), applies a new one within the poll interval without dropping open connections, and keeps the last
// good policy — reporting it on /ready, /config and /metrics — when the document is broken, invalid, forbidden or
// the server fails.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { integrationEnabled } from '../helpers/integration.js';
import { createPolicyLab, policyConfig, type PolicyLab, type PolicyProxy } from '../helpers/policy-lab.js';
import { waitUntil } from '../helpers/wait.js';

const POLL_MS = 500;

describe.skipIf(!integrationEnabled)('control plane: policy from an HTTP URL', () => {
  let lab: PolicyLab;
  let proxy: PolicyProxy;
  let A: string;
  let B: string;
  let url: string;
  const vip = '10.164.0.100';

  const doc = (endpoint: string) =>
    JSON.stringify({ services: [{ name: 'api', addresses: [`${vip}:80`], endpoints: [`${endpoint}:8080`] }] });
  const dial = (count: number, extra: Record<string, unknown> = {}) =>
    lab.app
      .call<{ ids: string[] }>('dial', { host: vip, port: 80, count, concurrency: 1, ...extra })
      .then((r) => r.ids);
  const config = () =>
    proxy.adminJson<{ version: number; services: { name: string }[]; controlPlaneStatus: Record<string, any> }>(
      '/config',
    );
  const requests = () => lab.peer.call<{ at: number; ifNoneMatch: string | null }[]>('records', { name: 'cp' });
  const waitState = (state: string, minFailures = 1) =>
    proxy.waitFor(
      `control plane ${state}`,
      async () => {
        const s = (await config()).controlPlaneStatus;
        return s.state === state && (state !== 'failing' || s.consecutiveFailures >= minFailures) ? s : null;
      },
      5000,
    );

  beforeAll(async () => {
    lab = await createPolicyLab('cp', 164, { endpoints: 2 });
    [A, B] = lab.endpoints as [string, string];
    for (const ep of lab.endpoints) await lab.peer.call('serve', { name: ep, host: ep, port: 8080, id: ep });
    url = `http://${lab.addrs.b4}:8088/mesh/policy.json`;
    await lab.peer.call('serveDocument', { name: 'cp', host: lab.addrs.b4, port: 8088, body: doc(A), etag: '"v1"' });
    const raw = policyConfig(lab, { controlPlane: { url, pollInterval: `${POLL_MS}ms`, timeout: '1s' } });
    proxy = await lab.startProxy(lab.writeConfig(raw).file);
    await proxy.waitReady();
  });

  afterAll(async () => {
    await lab?.destroy();
  });

  it('starts with the policy served by the control plane and reports it on /ready and /config', async () => {
    expect(await dial(3)).toEqual([A, A, A]);
    const c = await config();
    expect(c.version).toBe(1);
    expect(c.services.map((s) => s.name)).toEqual(['api']);
    expect(c.controlPlaneStatus).toMatchObject({ url, state: 'ok', appliedEtag: '"v1"', lastError: null });
    const ready = await proxy.admin('/ready');
    expect(ready.status).toBe(200);
    expect(ready.body).toMatch(
      /^ready\ncontrol plane http:\S+: ok; policy from the control plane \(etag "v1"\) applied \S+; config version 1\n$/,
    );
  });

  it('polls with If-None-Match and gets 304 while the document is unchanged', async () => {
    let fetches: Record<string, number> = {};
    await waitUntil(
      'two 304 answers counted by the proxy',
      async () => {
        fetches = (await config()).controlPlaneStatus.fetches;
        return (fetches['not-modified'] ?? 0) >= 2;
      },
      10 * POLL_MS + 5000,
      { seen: () => fetches },
    );
    const seen = await requests();
    expect(seen[0]!.ifNoneMatch).toBeNull();
    expect(seen.length).toBeGreaterThanOrEqual(3);
    expect(seen.slice(1).every((r) => r.ifNoneMatch === '"v1"')).toBe(true);
    expect((await config()).controlPlaneStatus.fetches).toMatchObject({ ok: 1, failed: 0, rejected: 0 });
    expect((await config()).controlPlaneStatus.fetches['not-modified']).toBeGreaterThanOrEqual(2);
  });

  it('applies a changed document within the poll interval and keeps the open connections', async () => {
    expect(await dial(5, { hold: 'before' })).toEqual(Array(5).fill(A));
    const changedAt = performance.now();
    await lab.peer.call('setDocument', { name: 'cp', body: doc(B), etag: '"v2"' });
    await proxy.waitFor('version 2', async () => (await config()).version === 2, 5000);
    // The next poll is at most one interval away; fetching and applying take a few milliseconds more.
    expect(performance.now() - changedAt).toBeLessThan(POLL_MS + 1000);
    expect(await dial(3)).toEqual([B, B, B]);
    expect(await lab.app.call('pingHeld', { tag: 'before' })).toMatchObject({ ok: 5, failures: [] });
    expect((await config()).controlPlaneStatus).toMatchObject({ state: 'ok', appliedEtag: '"v2"' });
    await lab.app.call('closeHeld', { tag: 'before' });
  });

  it('keeps the last good policy when the document is broken, and reports it on /ready and /metrics', async () => {
    await lab.peer.call('setDocument', { name: 'cp', body: '{ "services": [ {', etag: '"v3"' });
    const status = await waitState('failing');
    expect(status.lastError).toContain('is not valid YAML/JSON');
    expect(status.appliedEtag).toBe('"v2"');
    expect(await dial(2)).toEqual([B, B]);
    expect((await config()).version).toBe(2);
    const ready = await proxy.admin('/ready');
    expect(ready.status).toBe(200);
    expect(ready.body).toContain('FAILING');
    expect(ready.body).toContain('keeping the last good config: policy from the control plane (etag "v2")');
    const metrics = (await proxy.admin('/metrics')).body;
    expect(metrics).toContain('meshctl_control_plane_up 0');
    expect(metrics).toMatch(/meshctl_control_plane_fetches_total\{result="rejected"\} [1-9]/);
    expect(metrics).toContain('meshctl_proxy_config_version 2');
    // The server answers 304 to the rejected ETag from now on; the document is still reported as rejected.
    // A 304 to the rejected ETag counts as rejected again (src/policy/control-plane.ts), so wait for one more.
    const rejected = status.fetches.rejected ?? 0;
    let fetches: Record<string, number> = status.fetches;
    await waitUntil(
      'a 304 answer to the rejected ETag',
      async () => {
        fetches = (await config()).controlPlaneStatus.fetches;
        return (fetches.rejected ?? 0) > rejected;
      },
      10 * POLL_MS + 5000,
      { seen: () => fetches },
    );
    expect((await config()).controlPlaneStatus).toMatchObject({ state: 'failing', appliedEtag: '"v2"' });
  });

  it('rejects a document that fails validation, naming the field and the control plane', async () => {
    await lab.peer.call('setDocument', {
      name: 'cp',
      body: JSON.stringify({ services: [{ name: 'api', addresses: [`${vip}`], endpoints: [`${A}:8080`] }] }),
      etag: '"v4"',
    });
    await proxy.waitFor(
      'the v4 rejection',
      async () => {
        const s = (await config()).controlPlaneStatus;
        return typeof s.lastError === 'string' && s.lastError.includes('"v4"') ? s : null;
      },
      5000,
    );
    const { lastError } = (await config()).controlPlaneStatus;
    expect(lastError).toContain(
      `services[0].addresses[0] (control plane ${url} (etag "v4")): "${vip}" is not a service address`,
    );
    expect(await dial(1)).toEqual([B]);
  });

  it('rejects a document that tries to change host-local settings', async () => {
    await lab.peer.call('setDocument', {
      name: 'cp',
      body: JSON.stringify({ proxy: { user: 'root' }, services: [] }),
      etag: '"v5"',
    });
    await proxy.waitFor(
      'the v5 rejection',
      async () => {
        const s = (await config()).controlPlaneStatus;
        return typeof s.lastError === 'string' &&
          s.lastError.includes('may only hold services, outbound, inbound and mtls.peers; it has proxy')
          ? s
          : null;
      },
      5000,
    );
    expect(await dial(1)).toEqual([B]);
  });

  it('reports a failing server and recovers when it serves a good document again', async () => {
    await lab.peer.call('setDocument', { name: 'cp', status: 503 });
    const failing = await proxy.waitFor(
      'HTTP 503 reported',
      async () => {
        const s = (await config()).controlPlaneStatus;
        return typeof s.lastError === 'string' && s.lastError.includes('HTTP 503') ? s : null;
      },
      5000,
    );
    expect(failing.state).toBe('failing');
    expect(await dial(1)).toEqual([B]);
    await lab.peer.call('setDocument', { name: 'cp', status: 200, body: doc(A), etag: '"v6"' });
    await waitState('ok');
    expect((await config()).version).toBe(3);
    expect(await dial(2)).toEqual([A, A]);
    expect((await proxy.admin('/metrics')).body).toContain('meshctl_control_plane_up 1');
    expect((await proxy.admin('/ready')).body).toContain('ok; policy from the control plane (etag "v6")');
  });
});
