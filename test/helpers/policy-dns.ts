// An in-process DNS server on 127.0.0.1 (UDP and TCP on one port) answering from a zone, for the resolver's unit
// tests. It encodes with the proxy's own codec; tests cross-check that codec against Node's c-ares resolver.
import { createSocket, type Socket as UdpSocket } from 'node:dgram';
import { createServer, type Server } from 'node:net';
import { RCODE, RR, decodeMessage, encodeMessage, type ResourceRecord } from '../../src/policy/dns-wire.js';

export interface ZoneEntry {
  readonly ttl?: number;
  readonly A?: readonly string[];
  readonly AAAA?: readonly string[];
  readonly CNAME?: string;
  readonly SRV?: readonly { priority: number; weight: number; port: number; target: string }[];
  /** Extra records for the additional section of SRV answers (glue). */
  readonly glue?: readonly ResourceRecord[];
  readonly rcode?: number;
}

export interface TestDnsServer {
  readonly port: number;
  readonly queries: { name: string; type: number; transport: 'udp' | 'tcp' }[];
  zone: Record<string, ZoneEntry>;
  /** Answer UDP queries with the TC bit and no records (forces TCP). */
  truncateUdp: boolean;
  /** Do not answer UDP at all (timeouts). */
  silent: boolean;
  close(): Promise<void>;
}

function answer(server: TestDnsServer, buf: Buffer, transport: 'udp' | 'tcp'): Buffer {
  const q = decodeMessage(buf);
  const question = q.questions[0]!;
  server.queries.push({ name: question.name, type: question.type, transport });
  if (transport === 'udp' && server.truncateUdp)
    return encodeMessage({ id: q.id, response: true, truncated: true, questions: q.questions });
  const entry = server.zone[question.name];
  const answers: ResourceRecord[] = [];
  const additionals: ResourceRecord[] = [];
  if (entry) {
    const ttl = entry.ttl ?? 60;
    if (entry.CNAME) {
      answers.push({ name: question.name, ttl, type: RR.CNAME, target: entry.CNAME });
      const target = server.zone[entry.CNAME];
      if (target && question.type === RR.A)
        for (const address of target.A ?? [])
          answers.push({ name: entry.CNAME, ttl: target.ttl ?? 60, type: RR.A, address });
    }
    if (question.type === RR.A)
      for (const address of entry.A ?? []) answers.push({ name: question.name, ttl, type: RR.A, address });
    if (question.type === RR.AAAA)
      for (const address of entry.AAAA ?? []) answers.push({ name: question.name, ttl, type: RR.AAAA, address });
    if (question.type === RR.SRV) {
      for (const s of entry.SRV ?? []) answers.push({ name: question.name, ttl, type: RR.SRV, ...s });
      additionals.push(...(entry.glue ?? []));
    }
  }
  return encodeMessage({
    id: q.id,
    response: true,
    rcode: entry ? (entry.rcode ?? RCODE.NOERROR) : RCODE.NXDOMAIN,
    questions: q.questions,
    answers,
    additionals,
  });
}

export async function startDnsServer(zone: Record<string, ZoneEntry>): Promise<TestDnsServer> {
  for (let attempt = 0; ; attempt++) {
    const udp: UdpSocket = createSocket('udp4');
    await new Promise<void>((resolve) => udp.bind(0, '127.0.0.1', resolve));
    const port = udp.address().port;
    const tcp: Server = createServer();
    const ok = await new Promise<boolean>((resolve) => {
      tcp.once('error', () => resolve(false));
      tcp.listen({ host: '127.0.0.1', port }, () => resolve(true));
    });
    if (!ok) {
      udp.close();
      if (attempt > 10) throw new Error('no free port for the test DNS server');
      continue;
    }
    const server: TestDnsServer = {
      port,
      queries: [],
      zone,
      truncateUdp: false,
      silent: false,
      close: () =>
        new Promise<void>((resolve) => {
          udp.close();
          tcp.close(() => resolve());
        }),
    };
    udp.on('message', (buf, rinfo) => {
      if (server.silent) return;
      udp.send(answer(server, buf, 'udp'), rinfo.port, rinfo.address);
    });
    tcp.on('connection', (socket) => {
      let data = Buffer.alloc(0);
      socket.on('error', () => {});
      socket.on('data', (d: Buffer) => {
        data = Buffer.concat([data, d]);
        while (data.length >= 2 && data.length >= 2 + data.readUInt16BE(0)) {
          const reply = answer(server, data.subarray(2, 2 + data.readUInt16BE(0)), 'tcp');
          data = data.subarray(2 + data.readUInt16BE(0));
          const framed = Buffer.alloc(reply.length + 2);
          framed.writeUInt16BE(reply.length, 0);
          reply.copy(framed, 2);
          socket.write(framed);
        }
      });
    });
    return server;
  }
}
