// The discovery resolver: the DNS wire codec (checked against Node's c-ares), the stub client (UDP, TCP on
// truncation, server failover, TTLs, CNAME chains, SRV with and without glue) and Discovery's TTL refresh.
import { Resolver } from 'node:dns/promises';
import { afterEach, describe, expect, it } from 'vitest';
import { silentLogger } from '../../src/log.js';
import { DnsClient, resolveAddresses, resolveSrv } from '../../src/policy/dns-client.js';
import { DnsWireError, RR, decodeMessage, encodeMessage, encodeQuery } from '../../src/policy/dns-wire.js';
import { Discovery } from '../../src/policy/discovery.js';
import { startDnsServer, type TestDnsServer } from '../helpers/policy-dns.js';
import { waitUntil } from '../helpers/wait.js';

let servers: TestDnsServer[] = [];
const server = async (zone: Parameters<typeof startDnsServer>[0]) => {
  const s = await startDnsServer(zone);
  servers.push(s);
  return s;
};
afterEach(async () => {
  await Promise.all(servers.map((s) => s.close()));
  servers = [];
});

describe('DNS wire codec', () => {
  it('round-trips a response with A, AAAA, CNAME and SRV records', () => {
    const message = {
      id: 4242,
      response: true,
      rcode: 0,
      questions: [{ name: 'api.mesh', type: RR.SRV }],
      answers: [
        { name: 'api.mesh', ttl: 30, type: RR.SRV, priority: 10, weight: 5, port: 8080, target: 'ep1.mesh' },
        { name: 'alias.mesh', ttl: 7, type: RR.CNAME, target: 'api.mesh' },
      ],
      additionals: [
        { name: 'ep1.mesh', ttl: 20, type: RR.A, address: '10.0.0.1' },
        { name: 'ep1.mesh', ttl: 20, type: RR.AAAA, address: 'fd00::1:2' },
      ],
    };
    const decoded = decodeMessage(encodeMessage(message));
    expect(decoded).toMatchObject({
      id: 4242,
      response: true,
      truncated: false,
      rcode: 0,
      questions: message.questions,
      answers: message.answers,
      additionals: message.additionals,
    });
  });

  it('follows compression pointers and rejects malformed messages', () => {
    // Header (1 question, 1 answer), question api.mesh A, answer named by a pointer to offset 12.
    const header = Buffer.from([0x12, 0x34, 0x81, 0x80, 0, 1, 0, 1, 0, 0, 0, 0]);
    const qname = Buffer.from([3, 0x61, 0x70, 0x69, 4, 0x6d, 0x65, 0x73, 0x68, 0]);
    const question = Buffer.concat([qname, Buffer.from([0, 1, 0, 1])]);
    const answer = Buffer.from([0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 192, 0, 2, 7]);
    const m = decodeMessage(Buffer.concat([header, question, answer]));
    expect(m.answers).toEqual([{ name: 'api.mesh', ttl: 60, type: RR.A, address: '192.0.2.7' }]);
    expect(() => decodeMessage(Buffer.from([1, 2, 3]))).toThrow(DnsWireError);
    const loop = Buffer.concat([
      header.subarray(0, 4),
      Buffer.from([0, 1, 0, 0, 0, 0, 0, 0]),
      Buffer.from([0xc0, 12, 0, 1, 0, 1]),
    ]);
    expect(() => decodeMessage(loop)).toThrow(DnsWireError);
    expect(() => decodeMessage(loop)).toThrow('bad pointer');
    expect(() => decodeMessage(Buffer.concat([header, question, answer.subarray(0, 14)]))).toThrow(DnsWireError);
  });

  it("is understood by Node's c-ares resolver, TTLs included", async () => {
    const dns = await server({
      'api.mesh.test': { ttl: 42, A: ['10.1.0.1', '10.1.0.2'], AAAA: ['fd00::7'] },
      '_api._tcp.mesh.test': { ttl: 9, SRV: [{ priority: 1, weight: 2, port: 8443, target: 'api.mesh.test' }] },
    });
    const resolver = new Resolver({ timeout: 1000, tries: 1 });
    resolver.setServers([`127.0.0.1:${dns.port}`]);
    expect(await resolver.resolve4('api.mesh.test', { ttl: true })).toEqual([
      { address: '10.1.0.1', ttl: 42 },
      { address: '10.1.0.2', ttl: 42 },
    ]);
    expect(await resolver.resolve6('api.mesh.test')).toEqual(['fd00::7']);
    // Node 24 adds `type: 'SRV'` to each record; the fields we encode must match on every version.
    expect(await resolver.resolveSrv('_api._tcp.mesh.test')).toEqual([
      expect.objectContaining({ priority: 1, weight: 2, port: 8443, name: 'api.mesh.test' }),
    ]);
    await expect(resolver.resolve4('nope.mesh.test')).rejects.toMatchObject({ code: 'ENOTFOUND' });
  });
});

describe('DnsClient and resolvers', () => {
  it('resolves A and AAAA with the smallest TTL, following a CNAME chain', async () => {
    const dns = await server({
      'alias.mesh': { ttl: 5, CNAME: 'real.mesh' },
      'real.mesh': { ttl: 30, A: ['10.2.0.1'] },
      'both.mesh': { ttl: 12, A: ['10.2.0.2'], AAAA: ['fd00::2'] },
    });
    const client = new DnsClient([{ address: '127.0.0.1', port: dns.port }], 500);
    expect(await resolveAddresses(client, 'both.mesh')).toEqual({
      addresses: [
        { address: '10.2.0.2', family: 'ipv4' },
        { address: 'fd00::2', family: 'ipv6' },
      ],
      ttl: 12,
    });
    expect(await resolveAddresses(client, 'alias.mesh')).toEqual({
      addresses: [{ address: '10.2.0.1', family: 'ipv4' }],
      ttl: 5,
    });
    expect(await resolveAddresses(client, 'missing.mesh')).toEqual({ addresses: [], ttl: null });
  });

  it('retries over TCP when the UDP answer is truncated', async () => {
    const dns = await server({ 'big.mesh': { ttl: 8, A: Array.from({ length: 40 }, (_, i) => `10.3.0.${i + 1}`) } });
    dns.truncateUdp = true;
    const answer = await resolveAddresses(new DnsClient([{ address: '127.0.0.1', port: dns.port }], 500), 'big.mesh');
    expect(answer.addresses).toHaveLength(40);
    expect(dns.queries.filter((q) => q.name === 'big.mesh' && q.type === RR.A).map((q) => q.transport)).toEqual([
      'udp',
      'tcp',
    ]);
  });

  it('fails over to the next server when one times out or fails, and says why when all do', async () => {
    const dead = await server({});
    dead.silent = true;
    const good = await server({ 'x.mesh': { ttl: 3, A: ['10.4.0.1'] } });
    const failing = await server({ 'x.mesh': { rcode: 2 } });
    const client = new DnsClient(
      [
        { address: '127.0.0.1', port: dead.port },
        { address: '127.0.0.1', port: failing.port },
        { address: '127.0.0.1', port: good.port },
      ],
      200,
    );
    expect((await resolveAddresses(client, 'x.mesh')).addresses).toEqual([{ address: '10.4.0.1', family: 'ipv4' }]);
    const none = new DnsClient(
      [
        { address: '127.0.0.1', port: dead.port },
        { address: '127.0.0.1', port: failing.port },
      ],
      200,
    );
    await expect(none.query('x.mesh', RR.A)).rejects.toThrow(
      `x.mesh A: 127.0.0.1:${dead.port}: no answer within 200 ms; 127.0.0.1:${failing.port}: SERVFAIL`,
    );
  });

  it('resolves SRV targets of the best priority, from glue records or by asking', async () => {
    const dns = await server({
      '_svc._tcp.mesh': {
        ttl: 20,
        SRV: [
          { priority: 10, weight: 1, port: 8080, target: 'a.mesh' },
          { priority: 10, weight: 1, port: 9090, target: 'b.mesh' },
          { priority: 20, weight: 1, port: 1, target: 'backup.mesh' },
        ],
        glue: [{ name: 'a.mesh', ttl: 4, type: RR.A, address: '10.5.0.1' }],
      },
      'b.mesh': { ttl: 15, A: ['10.5.0.2'], AAAA: ['fd00::5:2'] },
      'backup.mesh': { A: ['10.5.0.9'] },
    });
    const answer = await resolveSrv(new DnsClient([{ address: '127.0.0.1', port: dns.port }], 500), '_svc._tcp.mesh');
    expect(answer).toEqual({
      targets: [
        { address: '10.5.0.1', family: 'ipv4', port: 8080 },
        { address: '10.5.0.2', family: 'ipv4', port: 9090 },
        { address: 'fd00::5:2', family: 'ipv6', port: 9090 },
      ],
      ttl: 4,
    });
    expect(dns.queries.some((q) => q.name === 'a.mesh')).toBe(false);
    expect(dns.queries.some((q) => q.name === 'backup.mesh')).toBe(false);
  });

  it('keeps the rdata of record types it does not model (TXT, unknown types) through a round trip', () => {
    const txt = Buffer.from([5, 0x68, 0x65, 0x6c, 0x6c, 0x6f]);
    const raw = Buffer.from([1, 2, 3]);
    const decoded = decodeMessage(
      encodeMessage({
        id: 1,
        response: true,
        rcode: 3,
        answers: [
          { name: 'T.mesh', ttl: 5, type: 16, raw: txt },
          { name: 'u.mesh', ttl: 6, type: 65280, raw },
        ],
      }),
    );
    expect(decoded.rcode).toBe(3);
    expect(decoded.answers).toEqual([
      { name: 't.mesh', ttl: 5, type: 16, raw: txt },
      { name: 'u.mesh', ttl: 6, type: 65280, raw },
    ]);
  });

  it('encodes queries with the name normalized (lower case, no trailing dot)', async () => {
    const id = 7;
    const decoded = decodeMessage(encodeQuery(id, 'Q.Mesh.', RR.A));
    expect(decoded.questions).toEqual([{ name: 'q.mesh', type: RR.A }]);
    expect(decoded.response).toBe(false);
  });
});

describe('Discovery', () => {
  const resolver = (port: number) => ({
    servers: [{ address: '127.0.0.1', port }],
    timeoutMs: 200,
    minTtlMs: 100,
    maxTtlMs: 60_000,
  });

  it('resolves at start, re-resolves when the TTL runs out, and reports changes', async () => {
    const dns = await server({ 'svc.mesh': { ttl: 1, A: ['10.6.0.1'] } });
    let changes = 0;
    const d = new Discovery(resolver(dns.port), () => changes++, silentLogger);
    d.watch('addresses', 'svc.mesh');
    await d.start(null);
    expect(d.get('addresses', 'svc.mesh')).toEqual([{ address: '10.6.0.1', family: 'ipv4', port: null }]);
    expect(changes).toBe(1);
    const info = d.info()[0]!;
    expect(info.nextRefreshInMs).toBeGreaterThan(800);
    expect(info.nextRefreshInMs).toBeLessThanOrEqual(1000);
    dns.zone = { 'svc.mesh': { ttl: 1, A: ['10.6.0.2', '10.6.0.3'] } };
    await waitUntil('the re-resolved answer after the 1 s TTL', () => changes === 2, 5000, {
      seen: () => ({ changes, info: d.info(), queries: dns.queries.length }),
    });
    expect(d.get('addresses', 'svc.mesh')!.map((a) => a.address)).toEqual(['10.6.0.2', '10.6.0.3']);
    expect(changes).toBe(2);
    expect(dns.queries.filter((q) => q.type === RR.A)).toHaveLength(2);
    d.stop();
  });

  it('keeps the last answer when a refresh fails, retries sooner, and adopts answers across a reload', async () => {
    const dns = await server({
      'svc.mesh': { ttl: 1, A: ['10.7.0.1'] },
      '_s._tcp.mesh': { ttl: 1, SRV: [{ priority: 0, weight: 0, port: 81, target: 'svc.mesh' }] },
    });
    const d = new Discovery(resolver(dns.port), () => {}, silentLogger);
    d.watch('addresses', 'svc.mesh');
    d.watch('srv', '_s._tcp.mesh');
    await d.start(null);
    expect(d.get('srv', '_s._tcp.mesh')).toEqual([{ address: '10.7.0.1', family: 'ipv4', port: 81 }]);
    dns.silent = true;
    await waitUntil(
      'a failed refresh of svc.mesh',
      () => (d.info().find((w) => w.name === 'svc.mesh')?.failures ?? 0) >= 1,
      5000,
      { seen: () => d.info() },
    );
    expect(d.get('addresses', 'svc.mesh')).toEqual([{ address: '10.7.0.1', family: 'ipv4', port: null }]);
    const failed = d.info().find((w) => w.name === 'svc.mesh')!;
    expect(failed.failures).toBeGreaterThanOrEqual(1);
    expect(failed.lastError).toContain('no answer within 200 ms');
    // A reload's Discovery takes the answers over without asking (the server is still silent).
    const next = new Discovery(resolver(dns.port), () => {}, silentLogger);
    next.watch('addresses', 'svc.mesh');
    const asked = dns.queries.length;
    await next.start(d);
    d.stop();
    expect(next.get('addresses', 'svc.mesh')).toEqual([{ address: '10.7.0.1', family: 'ipv4', port: null }]);
    expect(dns.queries.length).toBe(asked);
    next.stop();
  });
});
