// Mutual TLS between two meshctl hosts, through the real kernel: namespaces a and b each run the capture rules and a
// proxy as `nobody` with its own certificate (issued by src/mtls/ca.ts, as `meshctl ca issue` does); c is a plain
// host. Apps on a reach b (and b reaches a) through the tunnel — a sniffer on a's link never sees their payload, while
// it does see a plaintext one — and b's access log names a's SPIFFE ID. Then: half-close and a server-first protocol
// through the tunnel; strict mode refusing c's plaintext and permissive accepting it; principals in inbound.ports
// (denied, wildcard, deny wins); a server identity outside services[].identities; client certificates of another
// trust domain and expired ones refused by reason; and a rotation of a's files under a long connection.
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { integrationEnabled } from '../helpers/integration.js';
import {
  createMtlsLab,
  mtlsConfig,
  type IdentityFiles,
  type MtlsLab,
  type MtlsLine,
  type MtlsProxy,
} from '../helpers/mtls-lab.js';

const MARKER = 'MESHCTL-MTLS-MARKER-7f3a9c';
const MESHCTL = fileURLToPath(new URL('../../bin/meshctl', import.meta.url));

interface ProxyVerdict {
  proxy: {
    verdict: string;
    reason: string;
    tunnel?: { via: string; to: string; identities: string[] | string } | null;
  };
}

/** `meshctl explain --plan --json` with `args` against config file `config`. */
function explain(config: string, stateDir: string, ...args: string[]): ProxyVerdict {
  const r = spawnSync(
    process.execPath,
    [MESHCTL, 'explain', '--plan', '--json', '--config', config, '--state-dir', stateDir, ...args],
    { encoding: 'utf8', timeout: 60_000 },
  );
  if (r.status !== 0) throw new Error(`explain ${args.join(' ')} exited ${r.status}: ${r.stderr}`);
  return JSON.parse(r.stdout) as ProxyVerdict;
}

describe.skipIf(!integrationEnabled)('mTLS tunnel between two meshctl hosts', () => {
  let lab: MtlsLab;
  let proxyA: MtlsProxy;
  let proxyB: MtlsProxy;
  let idA: IdentityFiles;
  let idB: IdentityFiles;
  let configB: (inbound: 'strict' | 'permissive') => Record<string, unknown>;
  let configA: (allowPlaintextFallback: boolean) => Record<string, unknown>;
  let A: MtlsLab['hosts']['a'];
  let B: MtlsLab['hosts']['b'];
  let C: MtlsLab['hosts']['c'];

  const outcome = (from: 'a' | 'b' | 'c', host: string, port: number, send?: string) =>
    lab.hosts[from].app.call<{ outcome: string; code?: string; connected: boolean; bytes: number }>('connectOutcome', {
      host,
      port,
      ...(send ? { send } : {}),
    });
  const inboundLine = (proxy: MtlsProxy, port: number, match: (l: MtlsLine) => boolean = () => true) =>
    proxy.waitForAccess((l) => l.direction === 'inbound' && l.originalDst?.endsWith(`:${port}`) === true && match(l));

  beforeAll(async () => {
    lab = await createMtlsLab('mt-tun', 181);
    ({ a: A, b: B, c: C } = lab.hosts);
    idA = await lab.issue('spiffe://mesh.test/a', 'id-a');
    idB = await lab.issue('spiffe://mesh.test/b', 'id-b');
    for (const port of [8080, 8081, 8082, 8083, 8084, 8085])
      await B.app.call('serve', { name: `b${port}`, kind: 'echo', host: '0.0.0.0', port });
    await B.app.call('serve', {
      name: 'b8090',
      kind: 'reply-after-eof',
      host: '0.0.0.0',
      port: 8090,
      opts: { replyBytes: 300_000 },
    });
    await B.app.call('serve', {
      name: 'b8091',
      kind: 'send-first',
      host: '0.0.0.0',
      port: 8091,
      opts: { sendBytes: 200_000 },
    });
    await A.app.call('serve', { name: 'a8080', kind: 'echo', host: '0.0.0.0', port: 8080 });
    await C.app.call('serve', { name: 'c8080', kind: 'echo', host: '0.0.0.0', port: 8080 });
    await B.app.call('serve', { name: 'b8080-6', kind: 'echo', host: '::', port: 8080 });
    configA = (allowPlaintextFallback) =>
      mtlsConfig(lab.dir, idA, {
        // c runs no meshctl: listed as a peer, its tunnel port does not answer.
        mtls: { peers: [`${B.v4}/32`, `${B.v6}/128`, `${C.v4}/32`], allowPlaintextFallback },
        services: [
          {
            name: 'b-wrong-id',
            addresses: [`${B.v4}:8085`],
            endpoints: [`${B.v4}:8085`],
            mtls: true,
            identities: ['spiffe://mesh.test/not-b'],
            retries: { attempts: 1 },
          },
          {
            // c first: its tunnel port does not answer, so a connection's attempt there fails and is retried on b
            // (10.181.0.50 is on the link's subnet, so the app's connect is routed and captured).
            name: 'c-then-b',
            addresses: ['10.181.0.50:80'],
            endpoints: [`${C.v4}:8080`, `${B.v4}:8080`],
            mtls: true,
            retries: { attempts: 2, backoff: '1ms', maxBackoff: '2ms' },
            outlierDetection: { enabled: false },
          },
        ],
      });
    configB = (inbound) =>
      mtlsConfig(lab.dir, idB, {
        mtls: { peers: [`${A.v4}/32`], inbound },
        inbound: {
          ports: [
            { port: 8081, allow: ['spiffe://mesh.test/a'] },
            { port: 8082, allow: ['spiffe://mesh.test/someone-else'] },
            { port: 8083, allow: ['spiffe://mesh.test/*'] },
            { port: 8084, allow: ['10.181.0.0/24', 'spiffe://mesh.test/*'], deny: ['spiffe://mesh.test/a'] },
          ],
        },
      });
    await lab.installCapture('a', configA(false));
    await lab.installCapture('b', configB('permissive'));
    proxyA = await lab.startProxy('a', lab.writeConfig('a', configA(false)));
    proxyB = await lab.startProxy('b', lab.writeConfig('b', configB('permissive')));
    await proxyA.waitReady();
    await proxyB.waitReady();
  });

  afterAll(async () => {
    await lab?.destroy();
  });

  it('carries app a → service on b through the tunnel: no plaintext on the link, b logs a’s SPIFFE ID', async () => {
    const stop = await lab.sniff('a', MARKER);
    const held = await A.app.call<{ open: number; errors: string[] }>('hold', {
      tag: 'ab',
      host: B.v4,
      port: 8080,
      count: 1,
    });
    expect(held).toEqual({ open: 1, errors: [] });
    expect(await A.app.call('pingHeld', { tag: 'ab', payload: `${MARKER}\n` })).toEqual({ ok: 1, failures: [] });
    await A.app.call('closeHeld', { tag: 'ab' });
    const seen = await stop();
    expect(seen.markerFrames).toBe(0);
    expect(seen.tcpPayloadByPort['15008'] ?? 0).toBeGreaterThan(0);
    expect(seen.tcpPayloadByPort['8080'] ?? 0).toBe(0);
    const atB = await inboundLine(proxyB, 8080, (l) => l.tls === 'mtls');
    expect(atB).toMatchObject({
      peerIdentity: 'spiffe://mesh.test/a',
      originalDst: `${B.v4}:8080`,
      result: 'FIN',
    });
    expect(atB.upstreamLocal).toMatch(/^127\.0\.0\.6:/);
    expect(atB.source).toMatch(new RegExp(`^${A.v4.replace(/\./g, '\\.')}:`));
    const atA = await proxyA.waitForAccess((l) => l.direction === 'outbound' && l.originalDst === `${B.v4}:8080`);
    expect(atA).toMatchObject({ tls: 'mtls', peerIdentity: 'spiffe://mesh.test/b', result: 'FIN' });
    // The first connection opened the session: both ends timed its handshake.
    expect(atA.handshakeMs).toBeGreaterThan(0);
    expect(atB.handshakeMs).toBeGreaterThan(0);
    const metrics = (await proxyB.admin('/metrics')).body;
    expect(metrics).toMatch(/meshctl_mtls_tunnel_streams_total\{side="server"\} [1-9]/);
    expect(metrics).toMatch(/meshctl_mtls_handshake_seconds_count [1-9]/);
    expect(metrics).toMatch(/meshctl_mtls_certificate_expiry_seconds\{spiffe_id="spiffe:\/\/mesh.test\/b"\} \d{4,}/);
    const stats = await proxyB.adminJson<{ mtls: { identity: { spiffeId: string }; listening: string[] } }>('/stats');
    expect(stats.mtls.identity.spiffeId).toBe('spiffe://mesh.test/b');
    expect(stats.mtls.listening).toEqual(['tunnel 0.0.0.0:15008', 'tunnel [::]:15008']);
  });

  it('status --netns shows the proxy’s identity and its certificate’s time left (from its /stats)', () => {
    const r = spawnSync(
      process.execPath,
      [MESHCTL, 'status', '--netns', A.ns, '--state-dir', join(lab.dir, 'state-a'), '--json'],
      { encoding: 'utf8', timeout: 60_000 },
    );
    const report = JSON.parse(r.stdout) as {
      proxy?: { identity?: { spiffeId: string; state: string; secondsLeft: number } };
    };
    expect(report.proxy?.identity, r.stdout + r.stderr).toMatchObject({
      spiffeId: 'spiffe://mesh.test/a',
      state: 'valid',
    });
    expect(report.proxy!.identity!.secondsLeft).toBeGreaterThan(3600);
    const text = spawnSync(
      process.execPath,
      [MESHCTL, 'status', '--netns', A.ns, '--state-dir', join(lab.dir, 'state-a')],
      { encoding: 'utf8', timeout: 60_000 },
    );
    expect(text.stdout).toMatch(
      /^ {2}mtls: identity spiffe:\/\/mesh\.test\/a, certificate valid for \S+ \S+ \(\d+ s left, until /m,
    );
  });

  it('carries IPv6 through the tunnel too', async () => {
    expect(await A.app.call('hold', { tag: 'ab6', host: B.v6, port: 8080, count: 1 })).toEqual({ open: 1, errors: [] });
    await A.app.call('closeHeld', { tag: 'ab6' });
    const line = await inboundLine(proxyB, 8080, (l) => l.originalDst === `[${B.v6}]:8080`);
    expect(line).toMatchObject({ tls: 'mtls', peerIdentity: 'spiffe://mesh.test/a', result: 'FIN' });
    expect(line.upstreamLocal).toMatch(/^\[::6\]:/);
  });

  it('shows the same marker in plaintext when a host without meshctl sends it (the sniffer would see a leak)', async () => {
    const stop = await lab.sniff('c', MARKER);
    expect(await C.app.call('hold', { tag: 'cb', host: B.v4, port: 8080, count: 1 })).toEqual({ open: 1, errors: [] });
    expect(await C.app.call('pingHeld', { tag: 'cb', payload: `${MARKER}\n` })).toEqual({ ok: 1, failures: [] });
    await C.app.call('closeHeld', { tag: 'cb' });
    expect((await stop()).markerFrames).toBeGreaterThan(0);
    // Permissive: b accepted the plaintext connection, logged as such.
    expect(await inboundLine(proxyB, 8080, (l) => l.tls === 'plaintext')).toMatchObject({ result: 'FIN' });
  });

  it('carries b → a likewise, a logging b’s identity', async () => {
    // b's peers list a, so b's outbound to a tunnels too.
    expect(await B.app.call('hold', { tag: 'ba', host: A.v4, port: 8080, count: 1 })).toEqual({ open: 1, errors: [] });
    await B.app.call('closeHeld', { tag: 'ba' });
    const atA = await inboundLine(proxyA, 8080, (l) => l.tls === 'mtls');
    expect(atA).toMatchObject({ peerIdentity: 'spiffe://mesh.test/b', originalDst: `${A.v4}:8080` });
  });

  it('keeps half-close and a server-first protocol working through the tunnel', async () => {
    // The client sends, shuts down its side, and reads the server's reply that comes only after that FIN.
    const half = await A.app.call<{ sent: number; received: number; error?: string }>('exchange', {
      host: B.v4,
      port: 8090,
      sendBytes: 100_000,
      mode: 'send-then-read',
    });
    expect(half).toMatchObject({ sent: 100_000, received: 300_000 });
    expect(half.error).toBeUndefined();
    const recordsHalf = await B.app.call<{ received: number }[]>('records', { name: 'b8090' });
    expect(recordsHalf.at(-1)).toMatchObject({ received: 100_000 });
    // The server speaks first and ends its side first; the client replies after reading to EOF.
    const first = await A.app.call<{ sent: number; received: number; error?: string }>('exchange', {
      host: B.v4,
      port: 8091,
      sendBytes: 50_000,
      mode: 'read-then-send',
    });
    expect(first).toMatchObject({ received: 200_000, sent: 50_000 });
    await proxyB.waitFor(
      'the server-first connection to finish at b',
      async () => (await B.app.call<{ received?: number }[]>('records', { name: 'b8091' })).at(-1)?.received === 50_000,
    );
    const line = await inboundLine(proxyB, 8091);
    expect(line).toMatchObject({ tls: 'mtls', detail: 'upstream-first' });
  });

  it('authorizes by principal: allowed, not allowed (denied), wildcard, deny wins', async () => {
    expect((await A.app.call('hold', { tag: 'p81', host: B.v4, port: 8081, count: 1 })) as object).toEqual({
      open: 1,
      errors: [],
    });
    await A.app.call('closeHeld', { tag: 'p81' });
    expect(await outcome('a', B.v4, 8082)).toMatchObject({ outcome: 'reset' });
    expect(await inboundLine(proxyB, 8082)).toMatchObject({
      result: 'refused',
      detail: 'denied',
      tls: 'mtls',
      peerIdentity: 'spiffe://mesh.test/a',
    });
    expect(
      await proxyA.waitForAccess((l) => l.direction === 'outbound' && l.originalDst === `${B.v4}:8082`),
    ).toMatchObject({ result: 'connect-failed', detail: 'remote-denied' });
    expect(await A.app.call('hold', { tag: 'p83', host: B.v4, port: 8083, count: 1 })).toEqual({ open: 1, errors: [] });
    await A.app.call('closeHeld', { tag: 'p83' });
    expect(await outcome('a', B.v4, 8084)).toMatchObject({ outcome: 'reset' });
    expect(await inboundLine(proxyB, 8084)).toMatchObject({ result: 'refused', detail: 'denied' });
    // Plaintext has no principal: c is refused on 8081, whose allow-list names only a principal.
    expect(await outcome('c', B.v4, 8081)).toMatchObject({ outcome: 'reset' });
    expect(await inboundLine(proxyB, 8081, (l) => l.tls === 'plaintext')).toMatchObject({ detail: 'denied' });
  });

  it('fails the connect when the server identity is not in services[].identities (identity-not-allowed)', async () => {
    expect(await outcome('a', B.v4, 8085)).toMatchObject({ outcome: 'reset' });
    expect(
      await proxyA.waitForAccess((l) => l.direction === 'outbound' && l.originalDst === `${B.v4}:8085`),
    ).toMatchObject({ result: 'connect-failed', detail: 'identity-not-allowed', service: 'b-wrong-id' });
    expect((await B.app.call<unknown[]>('records', { name: 'b8085' })).length).toBe(0);
    const metrics = (await proxyA.admin('/metrics')).body;
    expect(metrics).toMatch(/meshctl_mtls_handshake_failures_total\{reason="identity-not-allowed"\} [1-9]/);
  });

  it('retries a tunnel failure on another endpoint, as any connect failure', async () => {
    const held = await A.app.call<{ open: number; errors: string[] }>('hold', {
      tag: 'retry',
      host: '10.181.0.50',
      port: 80,
      count: 4,
    });
    expect(held).toEqual({ open: 4, errors: [] });
    await A.app.call('closeHeld', { tag: 'retry' });
    type Svc = { connectFailures: number; retries: number };
    const stats = (await proxyA.adminJson<{ policy: { services: Record<string, Svc> } }>('/stats')).policy.services[
      'c-then-b'
    ]!;
    expect(stats.connectFailures).toBeGreaterThan(0);
    expect(stats.retries).toBe(stats.connectFailures);
    const lines = await proxyA.waitFor('the four connections in a’s log', async () => {
      const l = proxyA.accessLog().filter((x) => x.service === 'c-then-b');
      return l.length === 4 ? l : null;
    });
    for (const l of lines)
      expect(l).toMatchObject({ result: 'FIN', tls: 'mtls', peerIdentity: 'spiffe://mesh.test/b' });
    expect(lines.some((l) => (l as { attempts?: number }).attempts === 2)).toBe(true);
  });

  it('fails a peer whose tunnel port does not answer (tunnel-unreachable), and falls back to plaintext only when allowed', async () => {
    expect(await outcome('a', C.v4, 8080)).toMatchObject({ outcome: 'reset' });
    expect(
      await proxyA.waitForAccess((l) => l.direction === 'outbound' && l.originalDst === `${C.v4}:8080`),
    ).toMatchObject({ result: 'connect-failed', detail: 'tunnel-unreachable' });
    lab.writeConfig('a', configA(true));
    let tries = 0;
    await proxyA.waitFor(
      'a to fall back to plaintext for c after the config reload',
      async () =>
        (await A.app.call<{ open: number }>('hold', { tag: `fb-${++tries}`, host: C.v4, port: 8080, count: 1 }))
          .open === 1,
    );
    expect(
      await proxyA.waitForAccess(
        (l) => l.direction === 'outbound' && l.originalDst === `${C.v4}:8080` && l.tls === 'plaintext',
      ),
    ).toMatchObject({ upstream: `${C.v4}:8080` });
  });

  it('refuses client certificates of another trust domain and expired ones, by reason', async () => {
    const other = await lab.issue('spiffe://other.test/x', 'id-other', { ca: 'other' });
    const past = Date.now() - 3 * 86400_000;
    const expired = await lab.issue('spiffe://mesh.test/old', 'id-old', {
      validity: { notBefore: new Date(past), notAfter: new Date(past + 3600_000) },
    });
    const wrongTd = lab.tunnelClient('c', B.v4, other, `${B.v4}:8080`);
    expect(wrongTd).toMatchObject({ status: null, goaway: 'wrong-trust-domain' });
    const old = lab.tunnelClient('c', B.v4, expired, `${B.v4}:8080`);
    expect(old).toMatchObject({ status: null, goaway: 'expired' });
    // A valid certificate of the trust domain gets through the same client (the refusals are the certificates').
    expect(lab.tunnelClient('c', B.v4, idA, `${B.v4}:8080`)).toMatchObject({ status: 200 });
    const metrics = (await proxyB.admin('/metrics')).body;
    expect(metrics).toMatch(/meshctl_mtls_handshake_failures_total\{reason="wrong-trust-domain"\} 1/);
    expect(metrics).toMatch(/meshctl_mtls_handshake_failures_total\{reason="expired"\} 1/);
    expect(proxyB.stderr()).toMatch(/"reason":"expired"/);
  });

  it('refuses plaintext through capture in strict mode (plaintext-refused) and accepts it again in permissive', async () => {
    lab.writeConfig('b', configB('strict'));
    let tries = 0;
    await proxyB.waitFor('b to refuse plaintext (strict) after the config reload', async () => {
      const r = await C.app.call<{ open: number; errors: string[] }>('hold', {
        tag: `strict-${++tries}`,
        host: B.v4,
        port: 8080,
        count: 1,
      });
      return r.errors.includes('ECONNRESET');
    });
    expect(await inboundLine(proxyB, 8080, (l) => l.detail === 'plaintext-refused')).toMatchObject({
      result: 'refused',
      tls: 'plaintext',
    });
    // The tunnel still works in strict mode.
    expect(await A.app.call('hold', { tag: 'strict', host: B.v4, port: 8080, count: 1 })).toEqual({
      open: 1,
      errors: [],
    });
    await A.app.call('closeHeld', { tag: 'strict' });
    expect(
      (await proxyB.adminJson<{ refusals: Record<string, number> }>('/stats')).refusals['plaintext-refused'],
    ).toBeGreaterThan(0);
    lab.writeConfig('b', configB('permissive'));
    await proxyB.waitFor(
      'b to accept plaintext again (permissive)',
      async () =>
        (await C.app.call<{ open: number }>('hold', { tag: `perm-${++tries}`, host: B.v4, port: 8080, count: 1 }))
          .open === 1,
    );
  });

  it('rotates a’s certificate under a long connection: it continues, new connections present the new one', async () => {
    expect(await A.app.call('hold', { tag: 'long', host: B.v4, port: 8080, count: 1 })).toEqual({
      open: 1,
      errors: [],
    });
    // /connections shows the peer's identity of an open tunneled connection.
    const open = await proxyB.adminJson<{ peerIdentity?: string; originalDst: string }[]>('/connections');
    expect(open).toContainEqual(
      expect.objectContaining({ peerIdentity: 'spiffe://mesh.test/a', originalDst: `${B.v4}:8080` }),
    );
    await lab.issue('spiffe://mesh.test/a-rotated', 'id-a');
    await proxyA.waitForStderr(/mTLS identity rotated/, 10_000);
    expect(await A.app.call('pingHeld', { tag: 'long', payload: 'still here\n' })).toEqual({ ok: 1, failures: [] });
    expect(await A.app.call('hold', { tag: 'new', host: B.v4, port: 8080, count: 1 })).toEqual({ open: 1, errors: [] });
    await A.app.call('closeHeld', { tag: 'new' });
    await inboundLine(proxyB, 8080, (l) => l.peerIdentity === 'spiffe://mesh.test/a-rotated');
    await A.app.call('closeHeld', { tag: 'long' });
    // The long connection closed normally and was the old identity's.
    const long = await inboundLine(
      proxyB,
      8080,
      (l) =>
        l.peerIdentity === 'spiffe://mesh.test/a' &&
        l.durationMs > 0 &&
        l.bytesFromClient >= 'hello\nstill here\n'.length,
    );
    expect(long.result).toBe('FIN');
  });

  it('refuses to start with an expired identity, saying why', async () => {
    const past = Date.now() - 3 * 86400_000;
    const expired = await lab.issue('spiffe://mesh.test/c-old', 'id-c-old', {
      validity: { notBefore: new Date(past), notAfter: new Date(past + 3600_000) },
    });
    // On c (no capture): only the identity is at stake.
    const proxy = await lab.startProxy('c', lab.writeConfig('c-expired', mtlsConfig(lab.dir, expired)));
    const exit = await proxy.exited;
    expect(exit.code).not.toBe(0);
    expect(proxy.stderr()).toMatch(/IDENTITY_EXPIRED: .*spiffe:\/\/mesh\.test\/c-old.*expired/);
  });

  it('explains whether a flow is tunneled and to which identity, and evaluates --src-id against principals', () => {
    const state = join(lab.dir, 'explain-state');
    const fileA = lab.writeConfig('a-explain', configA(false));
    const fileB = lab.writeConfig('b-explain', configB('permissive'));
    expect(explain(fileA, state, '--out', '--dst', `${B.v4}:8080`).proxy.tunnel).toEqual({
      via: `mtls.peers[0] (${B.v4}/32)`,
      to: `${B.v4}:15008`,
      identities: 'trust-domain',
      plaintextFallback: false,
    });
    expect(explain(fileA, state, '--out', '--dst', `${B.v4}:8085`).proxy.tunnel).toMatchObject({
      via: 'services[0].mtls',
      identities: ['spiffe://mesh.test/not-b'],
    });
    expect(explain(fileA, state, '--out', '--dst', '10.181.0.77:80').proxy.tunnel).toBeNull();
    const inbound = (port: number, ...extra: string[]) =>
      explain(fileB, state, '--in', '--dst', `${B.v4}:${port}`, '--src', A.v4, ...extra).proxy;
    expect(inbound(8082, '--src-id', 'spiffe://mesh.test/a')).toMatchObject({
      verdict: 'refused',
      reason: expect.stringContaining('is not in inbound.ports[1].allow'),
    });
    expect(inbound(8083, '--src-id', 'spiffe://mesh.test/a').verdict).toBe('admitted');
    expect(inbound(8084, '--src-id', 'spiffe://mesh.test/a')).toMatchObject({
      verdict: 'refused',
      reason: expect.stringContaining('deny wins'),
    });
    expect(inbound(8081).verdict).toBe('refused');
    const strict = lab.writeConfig('b-explain-strict', configB('strict'));
    expect(explain(strict, state, '--in', '--dst', `${B.v4}:8080`, '--src', C.v4).proxy).toMatchObject({
      verdict: 'refused',
      reason: expect.stringContaining('plaintext-refused'),
    });
    expect(
      explain(strict, state, '--in', '--dst', `${B.v4}:8080`, '--src', A.v4, '--src-id', 'spiffe://mesh.test/a').proxy
        .verdict,
    ).toBe('passthrough');
  });
});

describe.skipIf(!integrationEnabled)('mTLS tunnel into a host with TPROXY inbound capture and two workers', () => {
  let lab: MtlsLab;
  let proxyB: MtlsProxy;

  beforeAll(async () => {
    lab = await createMtlsLab('mt-tp', 182);
    const { b: B } = lab.hosts;
    const idA = await lab.issue('spiffe://mesh.test/a', 'id-a');
    const idB = await lab.issue('spiffe://mesh.test/b', 'id-b');
    await B.app.call('serve', { name: 'b-http', kind: 'http', host: '0.0.0.0', port: 8080 });
    const configA = mtlsConfig(lab.dir, idA, { mtls: { peers: [`${B.v4}/32`] } });
    const configB = mtlsConfig(lab.dir, idB, {
      // Two workers: the tunnel listener is shared through node:cluster, each worker with its own identity watcher.
      proxy: { user: 'nobody', workers: 2, connectTimeout: '2s' },
      capture: { ipv6: 'intercept', inbound: { mode: 'tproxy' } },
      mtls: { inbound: 'strict' },
    });
    await lab.installCapture('a', configA);
    await lab.installCapture('b', configB);
    const proxyA = await lab.startProxy('a', lab.writeConfig('a', configA));
    // Started as root: it keeps CAP_NET_ADMIN (IP_TRANSPARENT) when it switches to nobody.
    proxyB = await lab.startProxy('b', lab.writeConfig('b', configB), { asRoot: true });
    await proxyA.waitReady();
    await proxyB.waitReady();
  });

  afterAll(async () => {
    await lab?.destroy();
  });

  it("connects to the local app from the peer host's own address, as TPROXY does for plaintext", async () => {
    const { a: A, b: B } = lab.hosts;
    const r = await A.app.call<{ status: number; body: string }>('http', { host: B.v4, port: 8080, path: '/tunnel' });
    expect(r.status).toBe(200);
    expect(JSON.parse(r.body)).toMatchObject({ remote: A.v4, local: B.v4, localPort: 8080 });
    const line = await proxyB.waitForAccess((l) => l.direction === 'inbound' && l.originalDst === `${B.v4}:8080`);
    expect(line).toMatchObject({ tls: 'mtls', peerIdentity: 'spiffe://mesh.test/a', result: 'FIN' });
    expect(line.upstreamLocal).toMatch(new RegExp(`^${A.v4.replace(/\./g, '\\.')}:`));
    // More connections: streams of a's one session, on the worker that accepted it; /stats adds the workers up.
    for (let i = 0; i < 6; i++)
      expect((await A.app.call<{ status: number }>('http', { host: B.v4, port: 8080, path: `/n${i}` })).status).toBe(
        200,
      );
    const stats = await proxyB.adminJson<{ mtls: { counters: { streams: { server: { opened: number } } } } }>('/stats');
    expect(stats.mtls.counters.streams.server.opened).toBe(7);
  });
});
