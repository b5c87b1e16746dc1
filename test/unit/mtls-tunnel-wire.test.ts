// The mTLS tunnel's wire helpers, and the dialer and tunnel server against each other on loopback (no capture, no
// root): CONNECT with the destination as :authority, 200 once accepted, END_STREAM ↔ FIN, RST_STREAM ↔ RST, and the
// refusals by reason (server identity not allowed, wrong trust domain, expired client certificate, server refusal).
import { mkdtempSync } from 'node:fs';
import { createServer, Socket as NetSocket, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { silentLogger } from '../../src/log.js';
import { initCa, issueIdentity } from '../../src/mtls/ca.js';
import { loadIdentity, type Identity } from '../../src/mtls/identity.js';
import type { IdentityPattern } from '../../src/mtls/spiffe-id.js';
import { parsePrincipal as parseIdentityPattern } from '../../src/values/spiffe-id.js';
import { TunnelDialer } from '../../src/proxy/tunnel-client.js';
import { legEstablished, serverLeg } from '../../src/proxy/tunnel-leg.js';
import { TunnelMetrics } from '../../src/proxy/tunnel-metrics.js';
import { TunnelServer } from '../../src/proxy/tunnel-server.js';
import {
  authorityOf,
  parseAuthority,
  refusalCode,
  statusForRefusal,
  tunnelFailureCode,
} from '../../src/proxy/tunnel-wire.js';

describe('tunnel wire helpers', () => {
  it('writes and reads the CONNECT authority (IPv6 in brackets; hostnames refused)', () => {
    expect(authorityOf('10.0.0.2', 8080)).toBe('10.0.0.2:8080');
    expect(authorityOf('fd00::2', 80)).toBe('[fd00::2]:80');
    expect(parseAuthority('[fd00::2]:80')).toEqual({ address: 'fd00::2', port: 80, family: 'ipv6' });
    expect(parseAuthority('10.0.0.2:8080')).toEqual({ address: '10.0.0.2', port: 8080, family: 'ipv4' });
    expect(parseAuthority('api.internal:80')).toMatch(/names a host/);
    expect(parseAuthority('10.0.0.2')).toMatch(/not ADDRESS:PORT/);
    expect(parseAuthority(undefined)).toMatch(/no :authority/);
  });

  it('maps refusals to statuses and answers to connect-failure codes', () => {
    expect(statusForRefusal('denied')).toBe(403);
    expect(statusForRefusal('ECONNREFUSED')).toBe(502);
    expect(statusForRefusal('over-capacity')).toBe(503);
    expect(refusalCode(403, 'denied')).toBe('remote-denied');
    expect(refusalCode(502, undefined)).toBe('remote-status-502');
    expect(refusalCode(403, 'no spaces allowed')).toBe('remote-status-403');
    expect(tunnelFailureCode({ code: 'ECONNREFUSED' }, false)).toBe('tunnel-unreachable');
    expect(tunnelFailureCode({ code: 'ECONNRESET' }, false)).toBe('tunnel-handshake-failed');
    expect(tunnelFailureCode({ code: 'ECONNRESET' }, true)).toBe('tunnel-closed');
  });
});

/** Waits for `fn` to be true (polling), failing with what `seen` last said. */
async function until(what: string, fn: () => boolean, seen: () => unknown = () => '', ms = 5000): Promise<void> {
  const end = Date.now() + ms;
  while (!fn()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}; last seen: ${JSON.stringify(seen())}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

describe('dialer and tunnel server on loopback', () => {
  const dir = mkdtempSync(join(tmpdir(), 'mt-wire-'));
  let a: Identity;
  let b: Identity;
  let other: Identity;
  let expired: Identity;
  let server: TunnelServer;
  let echo: Server;
  let echoPort = 0;
  let port = 0;
  const serverMetrics = new TunnelMetrics();
  /** Per stream: the app socket of the server side, and what the app read. */
  const appSockets: Socket[] = [];

  const pattern = (t: string) => parseIdentityPattern(t) as IdentityPattern;

  beforeAll(async () => {
    // Backdated, so that it can issue a certificate that expired yesterday.
    const caValidity = {
      notBefore: new Date(Date.now() - 7 * 86400_000),
      notAfter: new Date(Date.now() + 86400_000 * 30),
    };
    await initCa(join(dir, 'ca'), { trustDomain: 'mesh.test', validity: caValidity });
    await initCa(join(dir, 'ca2'), { trustDomain: 'other.test' });
    const issue = async (ca: string, id: string, out: string, validity?: { notBefore: Date; notAfter: Date }) =>
      loadIdentity(
        (await issueIdentity({ caDir: join(dir, ca), id, outDir: join(dir, out), ...(validity ? { validity } : {}) }))
          .paths,
        validity ? { now: new Date(validity.notBefore.getTime() + 1000) } : {},
      );
    a = await issue('ca', 'spiffe://mesh.test/a', 'a');
    b = await issue('ca', 'spiffe://mesh.test/b', 'b');
    other = await issue('ca2', 'spiffe://other.test/x', 'x');
    const past = Date.now() - 48 * 3600_000;
    expired = await issue('ca', 'spiffe://mesh.test/old', 'old', {
      notBefore: new Date(past),
      notAfter: new Date(past + 3600_000),
    });
    // The app: echoes, and ends its side when the client ends.
    echo = createServer({ allowHalfOpen: true }, (s) => {
      appSockets.push(s);
      s.on('data', (d) => s.write(d));
      s.on('end', () => s.end());
      s.on('error', () => {});
    });
    await new Promise<void>((r) => echo.listen(0, '127.0.0.1', r));
    echoPort = (echo.address() as { port: number }).port;
    server = new TunnelServer(
      b,
      (stream, dst, peer) => {
        const leg = serverLeg(stream, { ...peer, localIdentity: b.spiffeId.text }, () => 'denied');
        if (dst.port === 1) {
          leg.resetAndDestroy();
          return;
        }
        const up = new NetSocket({ allowHalfOpen: true });
        up.connect(dst.port, dst.address, () => {
          legEstablished(leg);
          leg.pipe(up);
          up.pipe(leg);
          leg.resume();
        });
        up.on('error', () => leg.resetAndDestroy());
        leg.on('error', () => up.resetAndDestroy());
      },
      serverMetrics,
      silentLogger,
    );
    await server.listen(0, [{ family: 'ipv4', fd: null }]);
    port = Number(/:(\d+)$/.exec(server.listening[0]!)![1]);
  });

  afterAll(() => {
    server?.close();
    server?.destroySessions();
    echo?.close();
  });

  const dialOnce = (id: Identity, allowed: IdentityPattern[] = [], dstPort = echoPort) => {
    const dialer = new TunnelDialer(id, new TunnelMetrics(), silentLogger);
    const leg = dialer.dial({
      host: '127.0.0.1',
      tunnelPort: port,
      authority: authorityOf('127.0.0.1', dstPort),
      allowed,
      fallback: false,
    });
    const got: { connected: boolean; error: string | null; data: string; ended: boolean } = {
      connected: false,
      error: null,
      data: '',
      ended: false,
    };
    leg.on('connect', () => (got.connected = true));
    leg.on('error', (e: NodeJS.ErrnoException) => (got.error = e.code ?? 'error'));
    leg.on('data', (d: Buffer) => (got.data += d.toString()));
    leg.on('end', () => (got.ended = true));
    return { dialer, leg, got };
  };

  it('carries a connection: 200, bytes both ways, END_STREAM as FIN in each direction', async () => {
    const { dialer, leg, got } = dialOnce(a, [pattern('spiffe://mesh.test/b')]);
    await until(
      'the CONNECT to be answered',
      () => got.connected || got.error !== null,
      () => got,
    );
    expect(got.error).toBeNull();
    leg.write('hello');
    await until(
      'the echo',
      () => got.data === 'hello',
      () => got,
    );
    leg.end();
    await until(
      'the server side to end too',
      () => got.ended,
      () => got,
    );
    // The server timed the session's handshake.
    expect(serverMetrics.data.handshake.count).toBe(1);
    expect(serverMetrics.data.sessions.server.opened).toBe(1);
    dialer.close();
  });

  it('refuses a server whose identity is not allowed (identity-not-allowed) before sending the CONNECT', async () => {
    const before = appSockets.length;
    const { dialer, got } = dialOnce(a, [pattern('spiffe://mesh.test/c')]);
    await until(
      'the refusal',
      () => got.error !== null,
      () => got,
    );
    expect(got.error).toBe('identity-not-allowed');
    expect(appSockets.length).toBe(before);
    dialer.close();
  });

  it('is refused by the server with the reason: wrong trust domain, expired certificate', async () => {
    for (const [id, reason] of [
      [other, 'remote-wrong-trust-domain'],
      [expired, 'remote-expired'],
    ] as const) {
      const { dialer, got } = dialOnce(id);
      await until(
        `the refusal (${reason})`,
        () => got.error !== null,
        () => got,
      );
      // A client of another trust domain also refuses the server first (its bundle cannot verify B).
      expect([reason, 'wrong-trust-domain', 'untrusted-chain']).toContain(got.error);
      dialer.close();
    }
    await until(
      'the server to count both refusals',
      () =>
        (serverMetrics.data.handshakeFailures['expired'] ?? 0) >= 1 &&
        (serverMetrics.data.handshakeFailures['wrong-trust-domain'] ?? 0) +
          (serverMetrics.data.handshakeFailures['untrusted-chain'] ?? 0) +
          (serverMetrics.data.handshakeFailures['tls-error'] ?? 0) >=
          1,
      () => serverMetrics.data.handshakeFailures,
    );
  });

  it('passes a refusal of the server on as remote-<reason>', async () => {
    const { dialer, got } = dialOnce(a, [], 1);
    await until(
      'the refusal',
      () => got.error !== null,
      () => got,
    );
    expect(got.error).toBe('remote-denied');
    dialer.close();
  });

  it('mirrors an RST of the app as RST_STREAM, seen as ECONNRESET by the client', async () => {
    const { dialer, leg, got } = dialOnce(a);
    await until(
      'connect',
      () => got.connected,
      () => got,
    );
    leg.write('x');
    await until(
      'the echo',
      () => got.data === 'x',
      () => got,
    );
    appSockets.at(-1)!.resetAndDestroy();
    await until(
      'the reset',
      () => got.error !== null,
      () => got,
    );
    expect(got.error).toBe('ECONNRESET');
    dialer.close();
  });

  it('fails with tunnel-unreachable when the tunnel port does not answer, marked for fallback only when allowed', async () => {
    const closed = createServer();
    await new Promise<void>((r) => closed.listen(0, '127.0.0.1', r));
    const deadPort = (closed.address() as { port: number }).port;
    await new Promise<void>((r) => closed.close(() => r()));
    for (const fallback of [false, true]) {
      const dialer = new TunnelDialer(a, new TunnelMetrics(), silentLogger);
      const leg = dialer.dial({
        host: '127.0.0.1',
        tunnelPort: deadPort,
        authority: '127.0.0.1:1',
        allowed: [],
        fallback,
      });
      const seen: { code?: string; fallback?: boolean }[] = [];
      leg.on('error', (e: NodeJS.ErrnoException & { fallback?: boolean }) =>
        seen.push({ code: e.code, fallback: e.fallback }),
      );
      await until(
        'the failure',
        () => seen.length > 0,
        () => seen,
      );
      expect(seen[0]).toEqual({ code: 'tunnel-unreachable', fallback: fallback ? true : undefined });
      dialer.close();
    }
  });

  it('reuses one session for many streams', async () => {
    const metrics = new TunnelMetrics();
    const dialer = new TunnelDialer(a, metrics, silentLogger);
    const legs = Array.from({ length: 5 }, () =>
      dialer.dial({
        host: '127.0.0.1',
        tunnelPort: port,
        authority: authorityOf('127.0.0.1', echoPort),
        allowed: [],
        fallback: false,
      }),
    );
    let connected = 0;
    for (const l of legs) l.on('connect', () => connected++);
    await until(
      '5 streams',
      () => connected === 5,
      () => connected,
    );
    expect(metrics.data.sessions.client.opened).toBe(1);
    expect(metrics.data.streams.client.opened).toBe(5);
    for (const l of legs) l.end();
    dialer.close();
  });
});
