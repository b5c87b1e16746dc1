// A small stub resolver for discovery: A/AAAA and SRV queries over UDP (TCP when the answer is truncated) to the
// configured servers or the system's (/etc/resolv.conf via dns.getServers()), with a timeout per server and the
// answers' TTLs. Runs only on discovery timers, never while a connection waits.
import { createSocket } from 'node:dgram';
import { getServers } from 'node:dns';
import { connect as tcpConnect } from 'node:net';
import { randomInt } from 'node:crypto';
import { isIPv6 } from 'node:net';
import { parseResolverServer } from '../values/addresses.js';
import {
  RCODE,
  RR,
  decodeMessage,
  encodeQuery,
  normalizeDnsName,
  type Message,
  type ResourceRecord,
} from './dns-wire.js';
import type { Family } from '../values/ip.js';

export interface DnsServer {
  readonly address: string;
  readonly port: number;
}

class DnsQueryError extends Error {
  constructor(
    message: string,
    /** Whether another server might answer (timeouts, SERVFAIL) rather than a definite answer. */
    readonly transient: boolean,
  ) {
    super(message);
  }
}

function systemServers(): DnsServer[] {
  return getServers().flatMap((s) => {
    const parsed = parseResolverServer(s);
    return typeof parsed === 'string' ? [] : [parsed];
  });
}

function server(s: DnsServer): string {
  return isIPv6(s.address) ? `[${s.address}]:${s.port}` : `${s.address}:${s.port}`;
}

export class DnsClient {
  constructor(
    private readonly configured: readonly DnsServer[],
    private readonly timeoutMs: number,
  ) {}

  get servers(): readonly DnsServer[] {
    return this.configured.length > 0 ? this.configured : systemServers();
  }

  /** Asks each server in turn until one answers (any rcode but SERVFAIL/REFUSED); throws DnsQueryError. */
  async query(name: string, type: number): Promise<Message> {
    const servers = this.servers;
    if (servers.length === 0)
      throw new DnsQueryError(
        'no DNS server configured (outbound.resolver.servers is empty and /etc/resolv.conf names none)',
        false,
      );
    const failures: string[] = [];
    for (const s of servers) {
      try {
        let reply = await this.udp(s, name, type);
        if (reply.truncated) reply = await this.tcp(s, name, type);
        if (reply.rcode === RCODE.SERVFAIL || reply.rcode === RCODE.REFUSED) {
          failures.push(`${server(s)}: ${reply.rcode === RCODE.SERVFAIL ? 'SERVFAIL' : 'REFUSED'}`);
          continue;
        }
        return reply;
      } catch (error) {
        failures.push(`${server(s)}: ${(error as Error).message}`);
      }
    }
    throw new DnsQueryError(
      `${name} ${type === RR.SRV ? 'SRV' : type === RR.AAAA ? 'AAAA' : 'A'}: ${failures.join('; ')}`,
      true,
    );
  }

  private udp(s: DnsServer, name: string, type: number): Promise<Message> {
    const id = randomInt(0, 0x10000);
    const socket = createSocket(isIPv6(s.address) ? 'udp6' : 'udp4');
    return new Promise<Message>((resolve, reject) => {
      const timer = setTimeout(() => done(new Error(`no answer within ${this.timeoutMs} ms`)), this.timeoutMs);
      const done = (error: Error | null, message?: Message) => {
        clearTimeout(timer);
        socket.close();
        if (error) reject(error);
        else resolve(message!);
      };
      socket.on('error', (error) => done(error));
      socket.on('message', (buf) => {
        let message: Message;
        try {
          message = decodeMessage(buf);
        } catch {
          return; // not a DNS answer; keep waiting
        }
        // Only the answer to this query (id and question) counts: anything else may be spoofed or stale.
        if (
          message.id !== id ||
          !message.response ||
          message.questions[0]?.name !== normalizeDnsName(name) ||
          message.questions[0]?.type !== type
        )
          return;
        done(null, message);
      });
      socket.send(encodeQuery(id, name, type), s.port, s.address, (error) => {
        if (error) done(error);
      });
    });
  }

  private tcp(s: DnsServer, name: string, type: number): Promise<Message> {
    const id = randomInt(0, 0x10000);
    const query = encodeQuery(id, name, type);
    const framed = Buffer.alloc(query.length + 2);
    framed.writeUInt16BE(query.length, 0);
    query.copy(framed, 2);
    return new Promise<Message>((resolve, reject) => {
      const socket = tcpConnect({ host: s.address, port: s.port });
      const chunks: Buffer[] = [];
      let received = 0;
      const timer = setTimeout(() => done(new Error(`no TCP answer within ${this.timeoutMs} ms`)), this.timeoutMs);
      const done = (error: Error | null, message?: Message) => {
        clearTimeout(timer);
        socket.destroy();
        if (error) reject(error);
        else resolve(message!);
      };
      socket.on('connect', () => socket.write(framed));
      socket.on('error', (error) => done(error));
      socket.on('data', (d: Buffer) => {
        chunks.push(d);
        received += d.length;
        const all = Buffer.concat(chunks, received);
        if (all.length < 2 || all.length < 2 + all.readUInt16BE(0)) return;
        try {
          const message = decodeMessage(all.subarray(2, 2 + all.readUInt16BE(0)));
          if (message.id !== id) throw new Error('TCP answer with a different id');
          done(null, message);
        } catch (error) {
          done(error as Error);
        }
      });
      socket.on('end', () => done(new Error('TCP connection closed before a full answer')));
    });
  }
}

export interface ResolvedAddress {
  readonly address: string;
  readonly family: Family;
}

export interface AddressAnswer {
  readonly addresses: readonly ResolvedAddress[];
  /** Smallest TTL of the records used (seconds); null when the name has no addresses (negative answer). */
  readonly ttl: number | null;
}

export interface SrvTarget extends ResolvedAddress {
  readonly port: number;
}

export interface SrvAnswer {
  readonly targets: readonly SrvTarget[];
  readonly ttl: number | null;
}

function minTtl(records: readonly ResourceRecord[]): number | null {
  return records.length === 0 ? null : Math.min(...records.map((r) => r.ttl));
}

/** The address records for `name` in a message, following a CNAME chain within it. */
function addressesIn(message: Message, name: string, type: number): ResourceRecord[] {
  const names = new Set([normalizeDnsName(name)]);
  const used: ResourceRecord[] = [];
  for (let again = true; again;) {
    again = false;
    for (const r of message.answers) {
      if (r.type === RR.CNAME && 'target' in r && names.has(r.name) && !names.has(r.target)) {
        names.add(r.target);
        used.push(r);
        again = true;
      }
    }
  }
  const records = [...message.answers, ...message.additionals].filter((r) => r.type === type && names.has(r.name));
  return records.length === 0 ? [] : [...used, ...records];
}

/** A and AAAA records of `name` (both asked at once). NXDOMAIN and empty answers are an empty list, not an error. */
export async function resolveAddresses(client: DnsClient, name: string): Promise<AddressAnswer> {
  const [a, aaaa] = await Promise.allSettled([client.query(name, RR.A), client.query(name, RR.AAAA)]);
  if (a.status === 'rejected' && aaaa.status === 'rejected') throw a.reason;
  const records: ResourceRecord[] = [];
  for (const [result, type] of [
    [a, RR.A],
    [aaaa, RR.AAAA],
  ] as const) {
    if (result.status === 'fulfilled') records.push(...addressesIn(result.value, name, type));
  }
  const addresses = records.flatMap((r): ResolvedAddress[] =>
    'address' in r ? [{ address: r.address, family: r.type === RR.AAAA ? 'ipv6' : 'ipv4' }] : [],
  );
  return { addresses, ttl: addresses.length === 0 ? null : minTtl(records) };
}

/**
 * SRV records of `name`; the targets of the best (lowest) priority are resolved to addresses — from the
 * answer's additional section when the server sent them, otherwise by A/AAAA queries.
 */
export async function resolveSrv(client: DnsClient, name: string): Promise<SrvAnswer> {
  const message = await client.query(name, RR.SRV);
  const srv = message.answers.filter(
    (r): r is Extract<ResourceRecord, { port: number }> => r.type === RR.SRV && 'port' in r && r.target !== '',
  );
  if (srv.length === 0) return { targets: [], ttl: null };
  const best = Math.min(...srv.map((r) => r.priority));
  const chosen = srv.filter((r) => r.priority === best);
  const ttls: number[] = [minTtl(chosen)!];
  const targets: SrvTarget[] = [];
  for (const record of chosen) {
    const glue = [...addressesIn(message, record.target, RR.A), ...addressesIn(message, record.target, RR.AAAA)];
    let addresses: readonly ResolvedAddress[];
    if (glue.length > 0) {
      addresses = glue.flatMap((r): ResolvedAddress[] =>
        'address' in r ? [{ address: r.address, family: r.type === RR.AAAA ? 'ipv6' : 'ipv4' }] : [],
      );
      ttls.push(minTtl(glue)!);
    } else {
      const answer = await resolveAddresses(client, record.target);
      addresses = answer.addresses;
      if (answer.ttl !== null) ttls.push(answer.ttl);
    }
    for (const a of addresses) targets.push({ ...a, port: record.port });
  }
  return { targets, ttl: Math.min(...ttls) };
}
