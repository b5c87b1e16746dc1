// `meshctl status` on the proxy's mTLS identity: the expiry a proxy reports at GET /stats (expiryJson), read back
// (parseExpiryView, fetchIdentity against a real loopback server) and rendered as the status line, in each state.
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterAll, describe, expect, it } from 'vitest';
import { proxyLines } from '../../src/cli/status.js';
import type { StatusReport } from '../../src/netfilter/status.js';
import {
  describeExpiry,
  expiryJson,
  formatSpan,
  identityExpiry,
  parseExpiryView,
  type ExpiryView,
} from '../../src/mtls/expiry.js';
import type { Identity } from '../../src/mtls/identity.js';
import type { ProxyReport } from '../../src/service/proxy-contract.js';
import { fetchIdentity } from '../../src/service/readiness.js';

const ID = 'spiffe://mesh.test/host/a';
const HOUR = 3600_000;
const issued = new Date('2026-12-04T00:00:00.000Z');
const identity = {
  spiffeId: { text: ID } as Identity['spiffeId'],
  notBefore: issued,
  notAfter: new Date(issued.getTime() + 24 * HOUR),
};
/** The view a proxy with a 24 h certificate reports `hours` after issue. */
const at = (hours: number): ExpiryView =>
  parseExpiryView(expiryJson(identityExpiry(identity, new Date(issued.getTime() + hours * HOUR))))!;

describe('the certificate expiry in meshctl status', () => {
  it('reads back what /stats reports, and refuses what is not an expiry', () => {
    expect(at(1)).toEqual({
      spiffeId: ID,
      notBefore: '2026-12-04T00:00:00.000Z',
      notAfter: '2026-12-05T00:00:00.000Z',
      secondsLeft: 23 * 3600,
      warnAt: '2026-12-04T16:00:00.000Z',
      state: 'valid',
    });
    expect(parseExpiryView(null)).toBeNull();
    expect(parseExpiryView({ ...expiryJson(identityExpiry(identity)), state: 'fine' })).toBeNull();
    expect(parseExpiryView({ ...expiryJson(identityExpiry(identity)), secondsLeft: '10' })).toBeNull();
  });

  it('shows the identity and the time left, a warning a third of the lifetime before expiry, and expiry', () => {
    expect(describeExpiry(at(1))).toBe(
      `identity ${ID}, certificate valid for 23h 0m (82800 s left, until 2026-12-05T00:00:00.000Z; warning from 2026-12-04T16:00:00.000Z)`,
    );
    expect(describeExpiry(at(17))).toMatch(
      new RegExp(
        `^identity ${ID}, WARNING: the certificate expires in 7h 0m \\(25200 s left, at 2026-12-05T00:00:00.000Z\\): renew it`,
      ),
    );
    expect(describeExpiry(at(26))).toMatch(
      new RegExp(`^identity ${ID}, EXPIRED 2h 0m ago \\(at 2026-12-05T00:00:00.000Z\\): peers refuse it`),
    );
    expect(describeExpiry(at(-1))).toMatch(/NOT YET VALID \(from 2026-12-04T00:00:00\.000Z\)/);
  });

  it('formats spans in days, hours, minutes or seconds', () => {
    expect([formatSpan(3 * 86400 + 5 * 3600 + 59), formatSpan(3599), formatSpan(42), formatSpan(-7260)]).toEqual([
      '3d 5h',
      '59m 59s',
      '42s',
      '2h 1m',
    ]);
  });

  it("adds an mtls line under the proxy's, and none without mTLS", () => {
    const rules = { proxyCheck: null } as unknown as StatusReport;
    const proxy: ProxyReport = {
      state: 'ready',
      admin: '127.0.0.1:15000',
      detail: 'ready',
      contract: null,
      mismatches: [],
      identity: at(17),
    };
    const lines = proxyLines(rules, proxy);
    expect(lines[0]).toMatch(/^ {2}proxy: ready on 127\.0\.0\.1:15000/);
    expect(lines[1]).toBe(`  mtls: ${describeExpiry(at(17))}`);
    expect(proxyLines(rules, { ...proxy, identity: null })).toHaveLength(1);
  });

  describe('fetchIdentity (GET /stats)', () => {
    let server: Server;
    let body = '';
    afterAll(() => new Promise((resolve) => server.close(resolve)));

    it("returns the mtls section's identity, and null for a proxy without mTLS", async () => {
      server = createServer((req, res) => {
        if (req.url === '/stats') res.writeHead(200, { 'content-type': 'application/json' }).end(body);
        else res.writeHead(404).end();
      });
      const port = await new Promise<number>((resolve) =>
        server.listen(0, '127.0.0.1', () => resolve((server.address() as AddressInfo).port)),
      );
      const endpoint = { address: '127.0.0.1', port };
      body = JSON.stringify({ connections: 0, mtls: { counters: {}, identity: expiryJson(identityExpiry(identity)) } });
      expect((await fetchIdentity(endpoint))?.spiffeId).toBe(ID);
      body = JSON.stringify({ connections: 0, mtls: null });
      expect(await fetchIdentity(endpoint)).toBeNull();
    });
  });
});
