// Forwards a client's query to the upstream resolvers, as the client wrote it (EDNS(0) OPT record and the name's
// letter case included) under a fresh random ID and source port per query: UDP first, the same query over TCP
// when the answer is truncated, the next server on a timeout, SERVFAIL or REFUSED. An answer counts only if it
// comes from the server asked, with our ID and the question exactly as sent (case included: the 0x20 check).
// The proxy's sockets are exempt from capture (its uid), so these queries reach the servers, never the proxy.
import { createSocket } from 'node:dgram';
import { connect as tcpConnect, isIPv6 } from 'node:net';
import { randomInt } from 'node:crypto';
import * as packet from 'dns-packet';
import { rcodeOf } from './cache.js';
import type { UpstreamServer } from './resolv-conf.js';

export interface ForwardResult {
  readonly response: Buffer;
  readonly packet: packet.DecodedPacket;
  /** `address:port` of the server that answered. */
  readonly server: string;
  readonly transport: 'udp' | 'tcp';
  readonly latencyMs: number;
}

export class ForwardError extends Error {}

export function serverLabel(s: UpstreamServer): string {
  return isIPv6(s.address) ? `[${s.address}]:${s.port}` : `${s.address}:${s.port}`;
}

/** Whether `reply` answers `sent`: same ID and the same question, byte for byte (name case included). */
function answers(sent: Buffer, reply: packet.DecodedPacket, id: number, sentPacket: packet.DecodedPacket): boolean {
  const q = sentPacket.questions?.[0];
  const r = reply.questions?.[0];
  return (
    reply.type === 'response' &&
    reply.id === id &&
    sent.length >= 12 &&
    q !== undefined &&
    r !== undefined &&
    r.name === q.name &&
    r.type === q.type &&
    (r.class ?? 'IN') === (q.class ?? 'IN')
  );
}

function withId(query: Buffer, id: number): Buffer {
  const copy = Buffer.from(query);
  copy.writeUInt16BE(id, 0);
  return copy;
}

export class Forwarder {
  constructor(private readonly timeoutMs: number) {}

  /** Asks each server in turn; throws ForwardError naming every server's failure when none answers. */
  async forward(
    query: Buffer,
    parsed: packet.DecodedPacket,
    servers: readonly UpstreamServer[],
  ): Promise<ForwardResult> {
    if (servers.length === 0)
      throw new ForwardError(
        'no upstream DNS server (outbound.resolver.servers is empty and /etc/resolv.conf names none)',
      );
    const failures: string[] = [];
    let last: ForwardResult | null = null;
    for (const s of servers) {
      const started = performance.now();
      try {
        let result = await this.udp(s, query, parsed);
        let transport: 'udp' | 'tcp' = 'udp';
        if (result.packet.flag_tc) {
          result = await this.tcp(s, query, parsed);
          transport = 'tcp';
        }
        last = { ...result, server: serverLabel(s), transport, latencyMs: performance.now() - started };
        const rcode = rcodeOf(result.packet);
        if (rcode === 'SERVFAIL' || rcode === 'REFUSED') {
          failures.push(`${serverLabel(s)}: ${rcode}`);
          continue;
        }
        return last;
      } catch (error) {
        failures.push(`${serverLabel(s)}: ${(error as Error).message}`);
      }
    }
    if (last !== null) return last;
    throw new ForwardError(failures.join('; '));
  }

  private udp(
    s: UpstreamServer,
    query: Buffer,
    parsed: packet.DecodedPacket,
  ): Promise<{ response: Buffer; packet: packet.DecodedPacket }> {
    const id = randomInt(0, 0x10000);
    const sent = withId(query, id);
    const socket = createSocket(isIPv6(s.address) ? 'udp6' : 'udp4');
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => done(new Error(`no UDP answer within ${this.timeoutMs} ms`)), this.timeoutMs);
      const done = (error: Error | null, value?: { response: Buffer; packet: packet.DecodedPacket }) => {
        clearTimeout(timer);
        socket.close();
        if (error) reject(error);
        else resolve(value!);
      };
      socket.on('error', (error) => done(error));
      socket.on('message', (buf, rinfo) => {
        if (rinfo.address !== s.address || rinfo.port !== s.port) return;
        let reply: packet.DecodedPacket;
        try {
          reply = packet.decode(buf);
        } catch {
          return; // not a DNS message: keep waiting for the real answer
        }
        if (answers(sent, reply, id, parsed)) done(null, { response: buf, packet: reply });
      });
      socket.send(sent, s.port, s.address, (error) => {
        if (error) done(error);
      });
    });
  }

  private tcp(
    s: UpstreamServer,
    query: Buffer,
    parsed: packet.DecodedPacket,
  ): Promise<{ response: Buffer; packet: packet.DecodedPacket }> {
    const id = randomInt(0, 0x10000);
    const sent = withId(query, id);
    const framed = Buffer.alloc(sent.length + 2);
    framed.writeUInt16BE(sent.length, 0);
    sent.copy(framed, 2);
    return new Promise((resolve, reject) => {
      const socket = tcpConnect({ host: s.address, port: s.port });
      let data = Buffer.alloc(0);
      const timer = setTimeout(() => done(new Error(`no TCP answer within ${this.timeoutMs} ms`)), this.timeoutMs);
      const done = (error: Error | null, value?: { response: Buffer; packet: packet.DecodedPacket }) => {
        clearTimeout(timer);
        socket.destroy();
        if (error) reject(error);
        else resolve(value!);
      };
      socket.on('connect', () => socket.write(framed));
      socket.on('error', (error) => done(error));
      socket.on('data', (chunk: Buffer) => {
        data = Buffer.concat([data, chunk]);
        if (data.length < 2 || data.length < 2 + data.readUInt16BE(0)) return;
        const buf = data.subarray(2, 2 + data.readUInt16BE(0));
        try {
          const reply = packet.decode(buf);
          if (!answers(sent, reply, id, parsed)) throw new Error('TCP answer to another question or ID');
          done(null, { response: Buffer.from(buf), packet: reply });
        } catch (error) {
          done(error as Error);
        }
      });
      socket.on('end', () => done(new Error('TCP connection closed before a full answer')));
    });
  }
}
