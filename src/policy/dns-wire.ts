// DNS messages on the wire (RFC 1035, AAAA RFC 3596, SRV RFC 2782): encoding queries and responses, decoding
// responses with name compression. Node's resolver (c-ares) gives no TTL for SRV records, and discovery must
// re-resolve on the TTL of every answer, so the proxy speaks DNS itself. Pure: buffers in, values out.
import { formatIp } from '../values/ip.js';

export const RR = { A: 1, NS: 2, CNAME: 5, SOA: 6, AAAA: 28, SRV: 33 } as const;
export type RecordType = (typeof RR)[keyof typeof RR];
export const RCODE = { NOERROR: 0, FORMERR: 1, SERVFAIL: 2, NXDOMAIN: 3, NOTIMP: 4, REFUSED: 5 } as const;

export interface Question {
  readonly name: string;
  readonly type: number;
}

export type RecordData =
  | { readonly type: typeof RR.A; readonly address: string }
  | { readonly type: typeof RR.AAAA; readonly address: string }
  | { readonly type: typeof RR.CNAME; readonly target: string }
  | { readonly type: typeof RR.SRV; readonly priority: number; readonly weight: number; readonly port: number; readonly target: string }
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

function normalizeName(name: string): string {
  return name.toLowerCase().replace(/\.$/, '');
}

function encodeName(name: string): Buffer {
  const parts: Buffer[] = [];
  for (const label of normalizeName(name).split('.')) {
    if (label === '') continue;
    const bytes = Buffer.from(label, 'ascii');
    if (bytes.length > 63) throw new DnsWireError(`label "${label}" is longer than 63 bytes`);
    parts.push(Buffer.from([bytes.length]), bytes);
  }
  parts.push(Buffer.from([0]));
  return Buffer.concat(parts);
}

function ipv4Bytes(address: string): Buffer {
  return Buffer.from(address.split('.').map(Number));
}

function ipv6Bytes(address: string): Buffer {
  const halves = address.split('::');
  const left = halves[0] ? halves[0].split(':') : [];
  const right = halves.length > 1 && halves[1] ? halves[1].split(':') : [];
  const groups = [...left, ...Array<string>(8 - left.length - right.length).fill('0'), ...right];
  const out = Buffer.alloc(16);
  groups.forEach((g, i) => out.writeUInt16BE(parseInt(g, 16), i * 2));
  return out;
}

function encodeRecord(r: ResourceRecord): Buffer {
  let rdata: Buffer;
  if (r.type === RR.A && 'address' in r) rdata = ipv4Bytes(r.address);
  else if (r.type === RR.AAAA && 'address' in r) rdata = ipv6Bytes(r.address);
  else if (r.type === RR.CNAME && 'target' in r && !('port' in r)) rdata = encodeName(r.target);
  else if (r.type === RR.SRV && 'port' in r) {
    const head = Buffer.alloc(6);
    head.writeUInt16BE(r.priority, 0);
    head.writeUInt16BE(r.weight, 2);
    head.writeUInt16BE(r.port, 4);
    rdata = Buffer.concat([head, encodeName(r.target)]);
  } else if ('raw' in r) rdata = r.raw;
  else throw new DnsWireError(`cannot encode a record of type ${r.type}`);
  const fixed = Buffer.alloc(10);
  fixed.writeUInt16BE(r.type, 0);
  fixed.writeUInt16BE(1, 2); // class IN
  fixed.writeUInt32BE(r.ttl >>> 0, 4);
  fixed.writeUInt16BE(rdata.length, 8);
  return Buffer.concat([encodeName(r.name), fixed, rdata]);
}

/** Encodes a whole message (no name compression). */
export function encodeMessage(m: Partial<Message> & { readonly id: number }): Buffer {
  const questions = m.questions ?? [];
  const answers = m.answers ?? [];
  const authorities = m.authorities ?? [];
  const additionals = m.additionals ?? [];
  const header = Buffer.alloc(12);
  header.writeUInt16BE(m.id & 0xffff, 0);
  let flags = 0;
  if (m.response) flags |= 0x8000 | 0x0080; // QR, RA
  if (m.truncated) flags |= 0x0200;
  if (m.recursionDesired ?? true) flags |= 0x0100;
  flags |= (m.rcode ?? 0) & 0xf;
  header.writeUInt16BE(flags, 2);
  header.writeUInt16BE(questions.length, 4);
  header.writeUInt16BE(answers.length, 6);
  header.writeUInt16BE(authorities.length, 8);
  header.writeUInt16BE(additionals.length, 10);
  const parts: Buffer[] = [header];
  for (const q of questions) {
    const tail = Buffer.alloc(4);
    tail.writeUInt16BE(q.type, 0);
    tail.writeUInt16BE(1, 2);
    parts.push(encodeName(q.name), tail);
  }
  for (const r of [...answers, ...authorities, ...additionals]) parts.push(encodeRecord(r));
  return Buffer.concat(parts);
}

export function encodeQuery(id: number, name: string, type: number): Buffer {
  return encodeMessage({ id, questions: [{ name, type }] });
}

/** Reads a (possibly compressed) name at `offset`; returns it and the offset after it in the original stream. */
function readName(buf: Buffer, offset: number): [string, number] {
  const labels: string[] = [];
  let pos = offset;
  let end = -1;
  for (let jumps = 0; ; ) {
    if (pos >= buf.length) throw new DnsWireError('name runs past the end of the message');
    const len = buf[pos]!;
    if (len === 0) {
      pos++;
      break;
    }
    if ((len & 0xc0) === 0xc0) {
      if (pos + 1 >= buf.length) throw new DnsWireError('truncated compression pointer');
      if (++jumps > 64) throw new DnsWireError('compression pointer loop');
      if (end < 0) end = pos + 2;
      pos = ((len & 0x3f) << 8) | buf[pos + 1]!;
      continue;
    }
    if (len > 63) throw new DnsWireError(`bad label length ${len}`);
    if (pos + 1 + len > buf.length) throw new DnsWireError('label runs past the end of the message');
    labels.push(buf.toString('ascii', pos + 1, pos + 1 + len));
    pos += 1 + len;
  }
  return [labels.join('.').toLowerCase(), end >= 0 ? end : pos];
}

function readRecord(buf: Buffer, offset: number): [ResourceRecord, number] {
  const [name, afterName] = readName(buf, offset);
  if (afterName + 10 > buf.length) throw new DnsWireError('record header runs past the end of the message');
  const type = buf.readUInt16BE(afterName);
  const ttl = buf.readUInt32BE(afterName + 4);
  const length = buf.readUInt16BE(afterName + 8);
  const start = afterName + 10;
  const end = start + length;
  if (end > buf.length) throw new DnsWireError('record data runs past the end of the message');
  const base = { name, ttl: ttl > 0x7fffffff ? 0 : ttl };
  let record: ResourceRecord;
  if (type === RR.A && length === 4) {
    record = { ...base, type, address: `${buf[start]}.${buf[start + 1]}.${buf[start + 2]}.${buf[start + 3]}` };
  } else if (type === RR.AAAA && length === 16) {
    let value = 0n;
    for (let i = 0; i < 16; i++) value = (value << 8n) | BigInt(buf[start + i]!);
    record = { ...base, type, address: formatIp({ family: 'ipv6', value }) };
  } else if (type === RR.CNAME) {
    record = { ...base, type, target: readName(buf, start)[0] };
  } else if (type === RR.SRV && length >= 7) {
    record = { ...base, type, priority: buf.readUInt16BE(start), weight: buf.readUInt16BE(start + 2), port: buf.readUInt16BE(start + 4), target: readName(buf, start + 6)[0] };
  } else {
    record = { ...base, type, raw: Buffer.from(buf.subarray(start, end)) };
  }
  return [record, end];
}

/** Decodes a message; throws DnsWireError for malformed input. */
export function decodeMessage(buf: Buffer): Message {
  if (buf.length < 12) throw new DnsWireError(`message of ${buf.length} bytes is shorter than a header`);
  const flags = buf.readUInt16BE(2);
  const counts = [buf.readUInt16BE(4), buf.readUInt16BE(6), buf.readUInt16BE(8), buf.readUInt16BE(10)] as const;
  let pos = 12;
  const questions: Question[] = [];
  for (let i = 0; i < counts[0]; i++) {
    const [name, after] = readName(buf, pos);
    if (after + 4 > buf.length) throw new DnsWireError('question runs past the end of the message');
    questions.push({ name, type: buf.readUInt16BE(after) });
    pos = after + 4;
  }
  const sections: ResourceRecord[][] = [[], [], []];
  for (let s = 0; s < 3; s++) {
    for (let i = 0; i < counts[s + 1]!; i++) {
      const [record, after] = readRecord(buf, pos);
      sections[s]!.push(record);
      pos = after;
    }
  }
  return {
    id: buf.readUInt16BE(0),
    response: (flags & 0x8000) !== 0,
    truncated: (flags & 0x0200) !== 0,
    recursionDesired: (flags & 0x0100) !== 0,
    rcode: flags & 0xf,
    questions,
    answers: sections[0]!,
    authorities: sections[1]!,
    additionals: sections[2]!,
  };
}

export { normalizeName as normalizeDnsName };
