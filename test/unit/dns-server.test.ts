// The proxy's DNS server against an upstream test server, both on 127.0.0.1: mesh names answered authoritatively
// (ID and letter case kept), other names forwarded and cached (TTL counted down, negative answers for the SOA's
// TTL), truncation both ways (UDP → TC, TCP → whole; upstream TC → the forwarder retries over TCP), EDNS(0)
// passed through, SERVFAIL when the upstream fails, the access log sampled with errors always kept.
import { createSocket } from 'node:dgram';
import { connect } from 'node:net';
import * as packet from 'dns-packet';
import { afterEach, describe, expect, it } from 'vitest';
import { configFromObject } from '../../src/config/load.js';
import { DnsCache, cacheLifetime } from '../../src/dns/cache.js';
import { parseResolvConf } from '../../src/dns/resolv-conf.js';
import { renderDnsPrometheus } from '../../src/dns/metrics.js';
import { MESH_TTL_S } from '../../src/dns/responder.js';
import { DnsServer, type DnsQueryLog } from '../../src/dns/server.js';
import type { DnsAnswerRecord } from '../../src/dns/responder.js';
import { silentLogger } from '../../src/log.js';
import { meshNames } from '../../src/policy/mesh-names.js';
import { testHost } from '../cases.js';
import { startUpstream, type TestUpstream, type Zone } from '../helpers/dns-upstream.mjs';

type Query = { name: string; type: packet.RecordType; id?: number; edns?: number };

function encodeQuery(q: Query): Buffer {
  return packet.encode({
    id: q.id ?? 4321,
    type: 'query',
    flags: packet.RECURSION_DESIRED,
    questions: [{ name: q.name, type: q.type, class: 'IN' }],
    additionals: q.edns
      ? [{ type: 'OPT', name: '.', udpPayloadSize: q.edns, flags: 0, options: [] } as unknown as packet.Answer]
      : [],
  } as packet.Packet);
}

export function udpQuery(
  port: number,
  q: Query,
  host = '127.0.0.1',
): Promise<{ raw: Buffer; p: packet.DecodedPacket }> {
  const socket = createSocket(host.includes(':') ? 'udp6' : 'udp4');
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      socket.close();
      reject(new Error(`no UDP answer for ${q.name} ${q.type} from ${host}:${port} within 3 s`));
    }, 3000);
    socket.on('message', (raw) => {
      clearTimeout(timer);
      socket.close();
      resolve({ raw, p: packet.decode(raw) });
    });
    socket.send(encodeQuery(q), port, host);
  });
}

export function tcpQuery(
  port: number,
  q: Query,
  host = '127.0.0.1',
): Promise<{ raw: Buffer; p: packet.DecodedPacket }> {
  return new Promise((resolve, reject) => {
    const socket = connect({ host, port });
    let data = Buffer.alloc(0);
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new Error(`no TCP answer for ${q.name} from ${host}:${port} within 3 s (had ${data.length} bytes)`));
    }, 3000);
    socket.on('connect', () => {
      const msg = encodeQuery(q);
      const head = Buffer.alloc(2);
      head.writeUInt16BE(msg.length, 0);
      socket.write(Buffer.concat([head, msg]));
    });
    socket.on('error', reject);
    socket.on('data', (d: Buffer) => {
      data = Buffer.concat([data, d]);
      if (data.length >= 2 && data.length >= 2 + data.readUInt16BE(0)) {
        clearTimeout(timer);
        socket.destroy();
        const raw = data.subarray(2, 2 + data.readUInt16BE(0));
        resolve({ raw, p: packet.decode(raw) });
      }
    });
  });
}

const rcode = (p: packet.DecodedPacket) =>
  ['NOERROR', 'FORMERR', 'SERVFAIL', 'NXDOMAIN', 'NOTIMP', 'REFUSED'][(p.flags ?? 0) & 0xf];
const ttls = (p: packet.DecodedPacket) => (p.answers ?? []).map((a) => (a as { ttl: number }).ttl);

let upstream: TestUpstream | null = null;
let server: DnsServer | null = null;
afterEach(async () => {
  await server?.close();
  await upstream?.close();
  server = null;
  upstream = null;
});

const zone = (): Zone => ({
  names: {
    'www.example.test': { ttl: 120, A: ['192.0.2.10'], AAAA: ['2001:db8::10'] },
    'big.example.test': { ttl: 60, txt: 12 },
    'tc.example.test': { ttl: 60, A: ['192.0.2.11'], truncate: true },
    'broken.example.test': { rcode: 'SERVFAIL' },
  },
  negativeTtl: 30,
});

async function start(log: DnsQueryLog | null = null, upstreamZone: Zone = zone()) {
  upstream = await startUpstream(upstreamZone);
  for (let attempt = 0; ; attempt++) {
    const port = 20000 + Math.floor(Math.random() * 20000);
    const config = configFromObject(
      {
        proxy: { user: 'meshproxy' },
        capture: { dns: { enabled: true, port } },
        outbound: { resolver: { servers: [`127.0.0.1:${upstream.port}`], timeout: '500ms' } },
        services: [
          { name: 'api', addresses: ['api.mesh.internal:80'], endpoints: ['10.0.1.1:8080'] },
          { name: 'db', addresses: ['db.mesh.internal:5432', '10.96.0.20:5432'], endpoints: ['10.0.2.1:5432'] },
        ],
      },
      { file: 'mesh.yaml', host: testHost, env: {} },
    );
    try {
      server = await DnsServer.start(
        config,
        [{ family: 'ipv4', host: '127.0.0.1', port, udpFd: null, tcpFd: null }],
        log,
        silentLogger,
      );
      return { port, config };
    } catch (error) {
      if (attempt > 10) throw error;
    }
  }
}

describe('the DNS server', () => {
  it('answers mesh names authoritatively with their VIP or fixed address, keeping the ID and the letter case', async () => {
    const { port, config } = await start();
    const vip = meshNames(config.services).get('api.mesh.internal')!;
    const a = await udpQuery(port, { name: 'Api.MESH.internal', type: 'A', id: 777 });
    expect(a.p).toMatchObject({
      id: 777,
      flag_aa: true,
      flag_rd: true,
      questions: [{ name: 'Api.MESH.internal', type: 'A' }],
    });
    expect(a.p.answers).toEqual([
      expect.objectContaining({ name: 'Api.MESH.internal', type: 'A', data: vip.ipv4[0], ttl: MESH_TTL_S }),
    ]);
    const aaaa = await tcpQuery(port, { name: 'api.mesh.internal', type: 'AAAA' });
    expect(aaaa.p.answers).toEqual([expect.objectContaining({ type: 'AAAA', data: vip.ipv6[0] })]);
    const db = await udpQuery(port, { name: 'db.mesh.internal', type: 'A' });
    expect(db.p.answers).toEqual([expect.objectContaining({ data: '10.96.0.20' })]);
    // NODATA: the name exists, no AAAA (db has no IPv6 address), and nothing was forwarded.
    const none = await udpQuery(port, { name: 'db.mesh.internal', type: 'AAAA' });
    expect([rcode(none.p), none.p.answers, none.p.flag_aa]).toEqual(['NOERROR', [], true]);
    expect(upstream!.queries).toEqual([]);
    expect(server!.snapshot().answeredFrom).toMatchObject({ mesh: 4, upstream: 0 });
    const text = renderDnsPrometheus(server!.snapshot());
    expect(text).toContain('meshctl_dns_server_answered_total{from="mesh"} 4\n');
    expect(text).toContain('meshctl_dns_server_queries_total{type="A"} 2\n');
    expect(text).toContain('meshctl_dns_server_queries_by_transport_total{transport="tcp"} 1\n');
    // Discovery's own meshctl_dns_* families (src/policy/metrics.ts) are other names: no family twice.
    expect(text).not.toMatch(/meshctl_dns_(queries|failures)_total/);
  });

  it('forwards other names, then answers from the cache with the TTL counted down (upstream asked once)', async () => {
    const { port } = await start();
    const first = await udpQuery(port, { name: 'WWW.example.test', type: 'A', id: 1 });
    expect(first.p).toMatchObject({ id: 1, flag_aa: false, questions: [{ name: 'WWW.example.test' }] });
    expect(first.p.answers).toEqual([
      expect.objectContaining({ name: 'WWW.example.test', data: '192.0.2.10', ttl: 120 }),
    ]);
    const second = await tcpQuery(port, { name: 'www.EXAMPLE.test', type: 'A', id: 2 });
    expect(second.p).toMatchObject({ id: 2, questions: [{ name: 'www.EXAMPLE.test' }] });
    expect(second.p.answers).toEqual([expect.objectContaining({ name: 'www.EXAMPLE.test', data: '192.0.2.10' })]);
    expect(ttls(second.p)[0]).toBeLessThanOrEqual(120);
    expect(upstream!.queries.filter((q) => q.name.toLowerCase() === 'www.example.test')).toHaveLength(1);
    // The upstream saw the client's own letter case (0x20 passes through).
    expect(upstream!.queries[0]!.name).toBe('WWW.example.test');
    expect(server!.snapshot()).toMatchObject({
      answeredFrom: { upstream: 1, cache: 1 },
      cache: { entries: 1, hits: 1 },
    });
  });

  it("caches NXDOMAIN for the SOA's negative TTL (RFC 2308) and does not cache SERVFAIL", async () => {
    const { port } = await start();
    for (let i = 0; i < 3; i++)
      expect(rcode((await udpQuery(port, { name: 'nope.example.test', type: 'A' })).p)).toBe('NXDOMAIN');
    expect(upstream!.queries.filter((q) => q.name === 'nope.example.test')).toHaveLength(1);
    for (let i = 0; i < 2; i++)
      expect(rcode((await udpQuery(port, { name: 'broken.example.test', type: 'A' })).p)).toBe('SERVFAIL');
    expect(upstream!.queries.filter((q) => q.name === 'broken.example.test')).toHaveLength(2);
  });

  it('truncates a large answer over UDP (no EDNS), gives it whole over TCP, and retries a truncated upstream answer over TCP', async () => {
    const { port } = await start();
    const udp = await udpQuery(port, { name: 'big.example.test', type: 'TXT' });
    expect([udp.p.flag_tc, udp.p.answers, udp.raw.length <= 512]).toEqual([true, [], true]);
    const tcp = await tcpQuery(port, { name: 'big.example.test', type: 'TXT' });
    expect([tcp.p.flag_tc, tcp.p.answers?.length]).toEqual([false, 12]);
    // With a large EDNS payload size the same answer fits one datagram.
    const edns = await udpQuery(port, { name: 'big.example.test', type: 'TXT', edns: 4096 });
    expect([edns.p.flag_tc, edns.p.answers?.length]).toEqual([false, 12]);
    const viaTcp = await udpQuery(port, { name: 'tc.example.test', type: 'A' });
    expect(viaTcp.p.answers).toEqual([expect.objectContaining({ data: '192.0.2.11' })]);
    expect(upstream!.queries.filter((q) => q.name === 'tc.example.test').map((q) => q.transport)).toEqual([
      'udp',
      'tcp',
    ]);
  });

  it('passes EDNS(0) through: an OPT record back only to a client that sent one', async () => {
    const { port } = await start();
    const withOpt = await udpQuery(port, { name: 'www.example.test', type: 'A', edns: 1232 });
    expect(withOpt.p.additionals?.filter((r) => r.type === 'OPT')).toHaveLength(1);
    const without = await udpQuery(port, { name: 'www.example.test', type: 'A' });
    expect(without.p.additionals?.filter((r) => r.type === 'OPT')).toHaveLength(0);
    const mesh = await udpQuery(port, { name: 'api.mesh.internal', type: 'A', edns: 1232 });
    expect(mesh.p.additionals?.filter((r) => r.type === 'OPT')).toHaveLength(1);
  });

  it('answers SERVFAIL when no upstream answers, and logs every error while sampling the rest', async () => {
    const records: DnsAnswerRecord[] = [];
    const { port } = await start({ sampleRatio: 0, write: (r) => records.push(r) }, { ...zone(), silent: true });
    const mesh = await udpQuery(port, { name: 'api.mesh.internal', type: 'A' });
    expect(rcode(mesh.p)).toBe('NOERROR');
    const failed = await udpQuery(port, { name: 'www.example.test', type: 'A' });
    expect(rcode(failed.p)).toBe('SERVFAIL');
    expect(records).toEqual([
      expect.objectContaining({
        name: 'www.example.test',
        rcode: 'SERVFAIL',
        answeredFrom: 'error',
        detail: expect.stringContaining('no UDP answer within 500 ms'),
      }),
    ]);
  });

  it('drops what is not a query and answers FORMERR to a malformed one', async () => {
    const { port } = await start();
    const socket = createSocket('udp4');
    const reply = new Promise<Buffer>((resolve) => socket.on('message', resolve));
    socket.send(Buffer.from([0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0, 0xc0]), port, '127.0.0.1');
    const raw = await reply;
    socket.close();
    expect([raw.readUInt16BE(0), raw[3]! & 0xf]).toEqual([0x1234, 1]);
  });
});

describe('the DNS cache', () => {
  const answer = (ttl: number): packet.DecodedPacket =>
    packet.decode(
      packet.encode({
        type: 'response',
        id: 1,
        flags: 0,
        questions: [{ name: 'a.test', type: 'A' }],
        answers: [{ name: 'a.test', type: 'A', ttl, data: '192.0.2.1' }],
      }),
    );
  it('keeps an answer for its TTL, a negative one for min(SOA TTL, SOA minimum), and evicts the least recently used', () => {
    let now = 0;
    const cache = new DnsCache(2, () => now);
    expect(cache.put('a', answer(10))).toBe(true);
    now = 4000;
    expect(cache.get('a')).toMatchObject({ ageS: 4 });
    now = 10_000;
    expect(cache.get('a')).toBeNull();
    const negative = packet.decode(
      packet.encode({
        type: 'response',
        id: 1,
        flags: 3,
        questions: [{ name: 'n.test', type: 'A' }],
        answers: [],
        authorities: [
          {
            name: 'test',
            type: 'SOA',
            ttl: 900,
            data: { mname: 'ns', rname: 'r', serial: 1, refresh: 1, retry: 1, expire: 1, minimum: 20 },
          },
        ],
      }),
    );
    expect(cacheLifetime(negative)).toEqual({ ttlS: 20, negative: true });
    const noSoa = packet.decode(
      packet.encode({ type: 'response', id: 1, flags: 3, questions: [{ name: 'n.test', type: 'A' }], answers: [] }),
    );
    expect(cacheLifetime(noSoa)).toBeNull();
    cache.put('x', answer(60));
    cache.put('y', answer(60));
    cache.get('x');
    cache.put('z', answer(60));
    expect([cache.get('x') !== null, cache.get('y'), cache.get('z') !== null, cache.evictions]).toEqual([
      true,
      null,
      true,
      1,
    ]);
  });

  it('reads nameservers from resolv.conf text', () => {
    expect(
      parseResolvConf(
        '# c\nsearch a.test\nnameserver 127.0.0.53\nnameserver fe80::1%eth0\nnameserver bogus\noptions edns0\n',
      ),
    ).toEqual([
      { address: '127.0.0.53', port: 53 },
      { address: 'fe80::1', port: 53 },
    ]);
  });
});
