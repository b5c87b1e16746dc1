// DNS messages on the wire for discovery, as plain values: a thin layer over `dns-packet` (RFC 1035, AAAA RFC
// 3596, SRV RFC 2782, EDNS(0) RFC 6891, name compression), the one DNS codec of meshctl (the DNS server in
// src/dns uses it too). Node's resolver (c-ares) gives no TTL for SRV records, and discovery must re-resolve on the
// TTL of every answer, so the proxy speaks DNS itself. Pure: buffers in, values out. Names are lower case here
// (discovery compares them); the server, which must preserve the client's 0x20 case, uses dns-packet directly.
import { createRequire } from 'node:module';
import * as packet from 'dns-packet';
import { formatIp, parseIp } from '../values/ip.js';

interface PacketInternals {
  /** dns-packet's rdata encoder of a type (writes a 2-byte length, then the data). */
  record(type: string): { encode(data: unknown): Buffer };
}
/** dns-packet's type-number table (types.js; its typings leave it out). */
const types = createRequire(import.meta.url)('dns-packet/types.js') as {
  toString(type: number): string;
  toType(name: string): number;
};

export const RR = { A: 1, NS: 2, CNAME: 5, SOA: 6, AAAA: 28, SRV: 33, OPT: 41 } as const;
export type RecordType = (typeof RR)[keyof typeof RR];
export const RCODE = { NOERROR: 0, FORMERR: 1, SERVFAIL: 2, NXDOMAIN: 3, NOTIMP: 4, REFUSED: 5 } as const;
const RCODE_NAMES = ['NOERROR', 'FORMERR', 'SERVFAIL', 'NXDOMAIN', 'NOTIMP', 'REFUSED'] as const;

export interface Question {
  readonly name: string;
  readonly type: number;
}

export type RecordData =
  | { readonly type: typeof RR.A; readonly address: string }
  | { readonly type: typeof RR.AAAA; readonly address: string }
  | { readonly type: typeof RR.CNAME; readonly target: string }
  | {
      readonly type: typeof RR.SRV;
      readonly priority: number;
      readonly weight: number;
      readonly port: number;
      readonly target: string;
    }
  | { readonly type: number; readonly raw: Buffer };

export type ResourceRecord = { readonly name: string; readonly ttl: number } & RecordData;

export interface Message {
  readonly id: number;
  readonly response: boolean;
  readonly truncated: boolean;
  readonly recursionDesired: boolean;
  readonly rcode: number;
  readonly questions: readonly Question[];
  readonly answers: readonly ResourceRecord[];
  readonly authorities: readonly ResourceRecord[];
  readonly additionals: readonly ResourceRecord[];
}

export class DnsWireError extends Error {}

export function normalizeDnsName(name: string): string {
  return name.toLowerCase().replace(/\.$/, '');
}

/** The numeric RR type of a dns-packet type name (`A`, `UNKNOWN_99`). */
export function typeNumber(name: string): number {
  return types.toType(name);
}

/** The dns-packet type name of a numeric RR type (`UNKNOWN_n` for one it has no name for). */
export function typeName(type: number): string {
  return types.toString(type);
}

export function rcodeName(rcode: number): string {
  return RCODE_NAMES[rcode] ?? `RCODE${rcode}`;
}

function toPacketRecord(r: ResourceRecord): packet.Answer {
  const base = { name: normalizeDnsName(r.name), ttl: r.ttl, class: 'IN' as const };
  if (r.type === RR.A && 'address' in r) return { ...base, type: 'A', data: r.address };
  if (r.type === RR.AAAA && 'address' in r) return { ...base, type: 'AAAA', data: r.address };
  if (r.type === RR.CNAME && 'target' in r && !('port' in r))
    return { ...base, type: 'CNAME', data: normalizeDnsName(r.target) };
  if (r.type === RR.SRV && 'port' in r)
    return {
      ...base,
      type: 'SRV',
      data: { priority: r.priority, weight: r.weight, port: r.port, target: normalizeDnsName(r.target) },
    };
  if ('raw' in r) return { ...base, type: `UNKNOWN_${r.type}`, data: r.raw } as unknown as packet.Answer;
  throw new DnsWireError(`cannot encode a record of type ${r.type}`);
}

/** Encodes a whole message (with name compression). Throws DnsWireError for a record it cannot encode. */
export function encodeMessage(m: Partial<Message> & { readonly id: number }): Buffer {
  let flags = 0;
  if (m.response) flags |= packet.RECURSION_AVAILABLE;
  if (m.truncated) flags |= packet.TRUNCATED_RESPONSE;
  if (m.recursionDesired ?? true) flags |= packet.RECURSION_DESIRED;
  flags |= (m.rcode ?? 0) & 0xf;
  try {
    return packet.encode({
      id: m.id & 0xffff,
      type: m.response ? 'response' : 'query',
      flags,
      questions: (m.questions ?? []).map((q) => ({
        name: normalizeDnsName(q.name),
        type: typeName(q.type) as packet.RecordType,
        class: 'IN',
      })),
      answers: (m.answers ?? []).map(toPacketRecord),
      authorities: (m.authorities ?? []).map(toPacketRecord),
      additionals: (m.additionals ?? []).map(toPacketRecord),
    } as packet.Packet);
  } catch (error) {
    if (error instanceof DnsWireError) throw error;
    throw new DnsWireError(`cannot encode the message: ${(error as Error).message}`, { cause: error });
  }
}

export function encodeQuery(id: number, name: string, type: number): Buffer {
  return encodeMessage({ id, questions: [{ name, type }] });
}

function fromPacketRecord(r: packet.Answer): ResourceRecord {
  const type = typeNumber(r.type);
  const ttl = 'ttl' in r && typeof r.ttl === 'number' ? (r.ttl > 0x7fffffff ? 0 : r.ttl) : 0;
  const base = { name: normalizeDnsName(r.name), ttl };
  if (r.type === 'A') return { ...base, type: RR.A, address: r.data };
  if (r.type === 'AAAA') {
    const ip = parseIp(r.data);
    return { ...base, type: RR.AAAA, address: ip ? formatIp(ip) : r.data };
  }
  if (r.type === 'CNAME') return { ...base, type: RR.CNAME, target: normalizeDnsName(r.data) };
  if (r.type === 'SRV')
    return {
      ...base,
      type: RR.SRV,
      priority: r.data.priority ?? 0,
      weight: r.data.weight ?? 0,
      port: r.data.port,
      target: normalizeDnsName(r.data.target),
    };
  // Any other type keeps its rdata bytes (dns-packet decoded them; its encoder gives them back).
  const data = 'data' in r ? r.data : Buffer.alloc(0);
  const raw = Buffer.isBuffer(data)
    ? Buffer.from(data)
    : (packet as unknown as PacketInternals).record(r.type).encode(data).subarray(2);
  return { ...base, type, raw };
}

/** Decodes a message; throws DnsWireError for malformed input. */
export function decodeMessage(buf: Buffer): Message {
  if (buf.length < 12) throw new DnsWireError(`message of ${buf.length} bytes is shorter than a header`);
  let p: packet.DecodedPacket;
  try {
    p = packet.decode(buf);
  } catch (error) {
    throw new DnsWireError(`malformed DNS message: ${(error as Error).message}`, { cause: error });
  }
  // dns-packet reads fixed-size rdata (A, AAAA) without a bounds check; a record cut short reads past the end.
  if (packet.decode.bytes > buf.length)
    throw new DnsWireError(`malformed DNS message: records run past the end of its ${buf.length} bytes`);
  const flags = p.flags ?? 0;
  return {
    id: p.id ?? 0,
    response: p.type === 'response',
    truncated: (flags & packet.TRUNCATED_RESPONSE) !== 0,
    recursionDesired: (flags & packet.RECURSION_DESIRED) !== 0,
    rcode: flags & 0xf,
    questions: (p.questions ?? []).map((q) => ({ name: normalizeDnsName(q.name), type: typeNumber(q.type) })),
    answers: (p.answers ?? []).map(fromPacketRecord),
    authorities: (p.authorities ?? []).map(fromPacketRecord),
    additionals: (p.additionals ?? []).filter((r) => r.type !== 'OPT').map(fromPacketRecord),
  };
}
