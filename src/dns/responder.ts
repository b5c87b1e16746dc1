// What the DNS server answers, transport aside: mesh names authoritatively from the running config (A/AAAA, NODATA
// for other types), everything else from the cache or forwarded upstream. The client's ID, question (its 0x20
// letter case) and EDNS(0) record are kept in every answer; a UDP answer larger than the client can take (512
// bytes, or its EDNS payload size) goes out truncated (TC) so the client asks again over TCP.
import { performance } from 'node:perf_hooks';
import * as packet from 'dns-packet';
import type { MeshName } from '../policy/mesh-names.js';
import { DnsCache, cacheKey } from './cache.js';
import { Forwarder, ForwardError, type ForwardResult } from './forwarder.js';
import { DnsMetrics, type AnsweredFrom } from './metrics.js';
import type { UpstreamServers } from './resolv-conf.js';

/** TTL of mesh answers: VIPs never move, fixed addresses only on a reload. */
export const MESH_TTL_S = 30;
/** The UDP payload size the server advertises in its EDNS(0) record (the DNS flag day 2020 value). */
export const EDNS_PAYLOAD = 1232;
/** Forwards waiting for an answer at once; queries beyond it are answered SERVFAIL at once. */
export const MAX_IN_FLIGHT = 1024;

export interface DnsAnswerRecord {
  readonly transport: 'udp' | 'tcp';
  readonly source: string;
  readonly id: number;
  /** The name as the client asked it (letter case kept). */
  readonly name: string;
  readonly type: string;
  readonly rcode: string;
  readonly answeredFrom: AnsweredFrom;
  readonly answers: number;
  readonly truncated: boolean;
  readonly upstream: string | null;
  readonly durationMs: number;
  readonly detail?: string;
}

export interface DnsResponderOptions {
  readonly meshNames: ReadonlyMap<string, MeshName>;
  readonly upstreams: UpstreamServers;
  readonly forwarder: Forwarder;
  readonly cache: DnsCache;
  /** Called for every answered query; the caller samples. */
  readonly onAnswer?: (record: DnsAnswerRecord) => void;
}

type Question = packet.Question;
type Opt = Extract<packet.Answer, { type: 'OPT' }>;

function optOf(p: packet.DecodedPacket): Opt | undefined {
  return (p.additionals ?? []).find((r): r is Opt => r.type === 'OPT');
}

function ourOpt(clientOpt: Opt): packet.Answer {
  return {
    type: 'OPT',
    name: '.',
    udpPayloadSize: EDNS_PAYLOAD,
    extendedRcode: 0,
    ednsVersion: 0,
    flags: clientOpt.flags & packet.DNSSEC_OK,
    options: [],
  } as unknown as packet.Answer;
}

const RCODES: Record<string, number> = { NOERROR: 0, FORMERR: 1, SERVFAIL: 2, NXDOMAIN: 3, NOTIMP: 4, REFUSED: 5 };

/** An answer of our own (mesh, or an error) to `q`. */
function ownAnswer(
  q: packet.DecodedPacket,
  rcode: string,
  answers: packet.Answer[],
  authoritative: boolean,
): packet.Packet {
  const opt = optOf(q);
  const flags =
    ((q.flags ?? 0) & packet.RECURSION_DESIRED) |
    packet.RECURSION_AVAILABLE |
    (authoritative ? packet.AUTHORITATIVE_ANSWER : 0) |
    (RCODES[rcode] ?? 2);
  return {
    id: q.id ?? 0,
    type: 'response',
    flags,
    questions: q.questions ?? [],
    answers,
    additionals: opt ? [ourOpt(opt)] : [],
  } as packet.Packet;
}

export class DnsResponder {
  readonly metrics = new DnsMetrics();
  private inFlight = 0;
  /** Identical forwards in flight share one upstream query. */
  private readonly pending = new Map<string, Promise<ForwardResult>>();

  constructor(private options: DnsResponderOptions) {}

  get inFlightCount(): number {
    return this.inFlight;
  }

  update(options: Partial<DnsResponderOptions>): void {
    this.options = { ...this.options, ...options };
  }

  get cache(): DnsCache {
    return this.options.cache;
  }

  /** The answer to one query message, or null to send nothing (not a query, or no header to answer). */
  async answer(query: Buffer, transport: 'udp' | 'tcp', source: string): Promise<Buffer | null> {
    const started = performance.now();
    let q: packet.DecodedPacket;
    try {
      q = packet.decode(query);
      if (packet.decode.bytes > query.length) throw new RangeError('records run past the end');
    } catch {
      if (query.length < 12 || (query[2]! & 0x80) !== 0) return this.drop();
      // A header we can answer: FORMERR with the client's ID and no question.
      const reply = packet.encode({
        id: query.readUInt16BE(0),
        type: 'response',
        flags: packet.RECURSION_AVAILABLE | RCODES.FORMERR!,
        questions: [],
        answers: [],
      } as packet.Packet);
      this.finish({
        transport,
        source,
        id: query.readUInt16BE(0),
        name: '',
        type: '',
        rcode: 'FORMERR',
        answeredFrom: 'error',
        answers: 0,
        truncated: false,
        upstream: null,
        durationMs: performance.now() - started,
        detail: 'malformed query',
      });
      return reply;
    }
    if (q.type !== 'query') return this.drop();
    const question = q.questions?.[0];
    this.metrics.query(question?.type ?? 'none', transport);
    const base = { transport, source, id: q.id ?? 0, name: question?.name ?? '', type: question?.type ?? '' };
    const own = (rcode: string, detail: string) => {
      this.finish({
        ...base,
        rcode,
        answeredFrom: 'error',
        answers: 0,
        truncated: false,
        upstream: null,
        durationMs: performance.now() - started,
        detail,
      });
      return packet.encode(ownAnswer(q, rcode, [], false));
    };
    const opcode = ((q.flags ?? 0) >> 11) & 0xf;
    if (opcode !== 0) return own('NOTIMP', `opcode ${opcode}`);
    if (question === undefined || (q.questions ?? []).length !== 1)
      return own('FORMERR', `${(q.questions ?? []).length} questions`);
    const mesh =
      (question.class ?? 'IN') === 'IN'
        ? this.options.meshNames.get(question.name.toLowerCase().replace(/\.$/, ''))
        : undefined;
    let reply: { p: packet.Packet; from: AnsweredFrom; upstream: string | null; detail?: string };
    if (mesh !== undefined) {
      reply = { p: ownAnswer(q, 'NOERROR', meshRecords(question, mesh), true), from: 'mesh', upstream: null };
    } else {
      const resolved = await this.resolve(query, q, question);
      if (resolved === null) return own('SERVFAIL', `over ${MAX_IN_FLIGHT} queries in flight`);
      if ('error' in resolved) return own('SERVFAIL', resolved.error);
      reply = resolved;
    }
    return this.send(reply, q, transport, { ...base, started });
  }

  /** Encodes `reply`, truncating it for a UDP client that cannot take it whole, and records the answer. */
  private send(
    reply: { p: packet.Packet; from: AnsweredFrom; upstream: string | null },
    q: packet.DecodedPacket,
    transport: 'udp' | 'tcp',
    base: Omit<DnsAnswerRecord, 'rcode' | 'answeredFrom' | 'answers' | 'truncated' | 'upstream' | 'durationMs'> & {
      started: number;
    },
  ): Buffer {
    let out = packet.encode(reply.p);
    const opt = optOf(q);
    const limit = transport === 'tcp' ? 65535 : Math.max(512, Math.min(opt?.udpPayloadSize ?? 512, 65535));
    let truncated = false;
    if (out.length > limit) {
      truncated = true;
      this.metrics.truncated++;
      out = packet.encode({
        ...reply.p,
        flags: (reply.p.flags ?? 0) | packet.TRUNCATED_RESPONSE,
        answers: [],
        authorities: [],
        additionals: opt ? [ourOpt(opt)] : [],
      } as packet.Packet);
    }
    const rcode =
      Object.keys(RCODES).find((k) => RCODES[k] === ((reply.p.flags ?? 0) & 0xf)) ?? String((reply.p.flags ?? 0) & 0xf);
    const { started, ...rest } = base;
    this.finish({
      ...rest,
      rcode,
      answeredFrom: reply.from,
      answers: truncated ? 0 : (reply.p.answers ?? []).length,
      truncated,
      upstream: reply.upstream,
      durationMs: performance.now() - started,
    });
    return out;
  }

  /** From the cache, or forwarded (one upstream query for identical ones in flight); null when over the bound. */
  private async resolve(
    query: Buffer,
    q: packet.DecodedPacket,
    question: Question,
  ): Promise<{ p: packet.Packet; from: AnsweredFrom; upstream: string | null } | { error: string } | null> {
    const opt = optOf(q);
    const key = cacheKey(
      question.name,
      question.type,
      question.class ?? 'IN',
      opt?.flag_do ?? false,
      ((q.flags ?? 0) & packet.CHECKING_DISABLED) !== 0,
    );
    const hit = this.options.cache.get(key);
    if (hit !== null) return { p: adapt(hit.packet, hit.ageS, q), from: 'cache', upstream: null };
    let flight = this.pending.get(key);
    if (flight === undefined) {
      if (this.inFlight >= MAX_IN_FLIGHT) return null;
      this.inFlight++;
      flight = this.options.forwarder.forward(query, q, this.options.upstreams.list()).finally(() => {
        this.inFlight--;
        this.pending.delete(key);
      });
      this.pending.set(key, flight);
      void flight.then(
        (r) => {
          this.metrics.upstreamLatency(r.latencyMs);
          this.options.cache.put(key, r.packet);
        },
        () => {},
      );
    }
    try {
      const r = await flight;
      return { p: adapt(r.packet, 0, q), from: 'upstream', upstream: r.server };
    } catch (error) {
      return { error: error instanceof ForwardError ? error.message : String(error) };
    }
  }

  private drop(): null {
    this.metrics.dropped++;
    return null;
  }

  private finish(record: DnsAnswerRecord): void {
    this.metrics.answered(record.rcode, record.answeredFrom);
    this.options.onAnswer?.(record);
  }
}

/** The A/AAAA records of a mesh name for `question` (none for other types: NODATA). */
function meshRecords(question: Question, mesh: MeshName): packet.Answer[] {
  const records: packet.Answer[] = [];
  if (question.type === 'A' || (question.type as string) === 'ANY')
    for (const a of mesh.ipv4) records.push({ name: question.name, type: 'A', class: 'IN', ttl: MESH_TTL_S, data: a });
  if (question.type === 'AAAA' || (question.type as string) === 'ANY')
    for (const a of mesh.ipv6)
      records.push({ name: question.name, type: 'AAAA', class: 'IN', ttl: MESH_TTL_S, data: a });
  return records;
}

/**
 * An upstream answer made the answer to `q`: `q`'s ID, RD bit and question (its letter case, also in the owner
 * names that repeat it), TTLs counted down by `ageS`, and an EDNS record only when `q` had one.
 */
function adapt(p: packet.DecodedPacket, ageS: number, q: packet.DecodedPacket): packet.Packet {
  const question = q.questions![0]!;
  const lower = question.name.toLowerCase();
  const records = (list: readonly packet.Answer[] | undefined) =>
    (list ?? [])
      .filter((r) => r.type !== 'OPT')
      .map((r) => {
        const ttl = 'ttl' in r && typeof r.ttl === 'number' ? Math.max(0, r.ttl - ageS) : undefined;
        return {
          ...r,
          name: r.name.toLowerCase() === lower ? question.name : r.name,
          ...(ttl === undefined ? {} : { ttl }),
        } as packet.Answer;
      });
  const clientOpt = optOf(q);
  const upstreamOpt = optOf(p);
  const flags =
    ((p.flags ?? 0) & ~packet.RECURSION_DESIRED & ~packet.TRUNCATED_RESPONSE) |
    ((q.flags ?? 0) & packet.RECURSION_DESIRED);
  return {
    id: q.id ?? 0,
    type: 'response',
    flags,
    questions: [question],
    answers: records(p.answers),
    authorities: records(p.authorities),
    additionals: [...records(p.additionals), ...(clientOpt ? [upstreamOpt ?? ourOpt(clientOpt)] : [])],
  } as packet.Packet;
}
