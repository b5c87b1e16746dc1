// The last closed connections of one worker, in a fixed ring, and the source match behind the admin `/lookup`.
// `meshctl verify` asks the running proxy which original destination a probe's connection had; a connection the
// proxy has already closed (refused, connect-failed, timeout) is gone from the live table by then, so each worker
// keeps its last RECENT_CAPACITY closes here. The ring is columns of preallocated arrays written in place: a close
// costs a few stores of values the connection already holds (no allocation, whatever the access log does), and a
// slot is simply overwritten when the ring comes round. Matching parses only the rows whose port matches.
import { formatIp, parseIp, type IpAddress } from '../values/ip.js';
import type { Direction, EndResult } from './metrics.js';
import type { OriginalDst } from '../native/original-dst.js';
import { endpoint, type ConnState } from './connection.js';
import { formatPackedEndpoint, PACKED_ENDPOINT_BYTES, packedPort } from './packed-endpoint.js';

/** Closed connections kept per worker. */
export const RECENT_CAPACITY = 256;

/** What the ring reads from a connection at close (src/proxy/connection.ts Connection has these). */
export interface ClosedConnection {
  readonly id: string;
  readonly direction: Direction;
  /** address:port of the client, '?' when it was never read (see Connection.source). */
  readonly source: string;
  /** A JavaScript connection's destination (printed only when looked up), or a relay thread's as it printed it. */
  readonly dst: OriginalDst | string | null;
  readonly result: EndResult | null;
  readonly detail: string;
  /** performance.now() at accept. */
  readonly startedAt: number;
}

/** A live connection as the lookup sees it. */
export interface LiveConnection extends ClosedConnection {
  readonly state: ConnState;
}

/** A row of the admin `/lookup` answer: a connection from the asked source, open or recently closed. */
export interface SourceLookupRow {
  readonly id: string;
  readonly direction: Direction;
  readonly state: ConnState;
  readonly source: string;
  /** Where the client was going before the capture rules redirected it (null: it was not redirected). */
  readonly originalDst: string | null;
  /** Since the proxy accepted it. */
  readonly ageMs: number;
  /** Closed rows only: since the proxy closed it. */
  readonly closedAgoMs?: number;
  /** How it ended (null while open, unless a result is already decided, e.g. connect-failed while closing). */
  readonly result: EndResult | null;
  readonly detail: string;
}

/** A client endpoint asked for: an address (IPv4-mapped IPv6 counts as IPv4) and a port. */
export interface SourceQuery {
  readonly address: IpAddress;
  readonly port: number;
  /** Canonical text: `192.0.2.1:40000`, `[2001:db8::1]:40000`. */
  readonly text: string;
}

function unmapped(ip: IpAddress): IpAddress {
  return ip.family === 'ipv6' && ip.value >> 32n === 0xffffn ? { family: 'ipv4', value: ip.value & 0xffffffffn } : ip;
}

function splitEndpoint(text: string): { host: string; port: string } | null {
  if (text.startsWith('[')) {
    const m = /^\[([^\]]+)\]:(\d+)$/.exec(text);
    return m ? { host: m[1]!, port: m[2]! } : null;
  }
  const m = /^([^:]+):(\d+)$/.exec(text);
  return m ? { host: m[1]!, port: m[2]! } : null;
}

/**
 * Parses `ADDR:PORT` (IPv4) or `[ADDR]:PORT` (IPv6) as asked at `/lookup?source=`. Returns the query, or a reason
 * naming the value when it is not one.
 */
export function parseSourceQuery(text: string): SourceQuery | string {
  const parts = splitEndpoint(text);
  const ip = parts ? parseIp(parts.host) : null;
  const port = parts ? Number(parts.port) : NaN;
  if (!parts || !ip) return `source must be ADDR:PORT or [IPV6]:PORT, got ${JSON.stringify(text)}`;
  if (!Number.isInteger(port) || port < 1 || port > 65535)
    return `source port must be 1-65535, got ${parts.port} in ${JSON.stringify(text)}`;
  const address = unmapped(ip);
  return { address, port, text: endpoint(formatIp(address), port) };
}

/** Whether `source` (as Connection.source shows it) is the queried endpoint, whatever the address's spelling. */
export function matchesSource(source: string, query: SourceQuery): boolean {
  // Most rows differ in the port: compare it before parsing anything.
  const colon = source.lastIndexOf(':');
  if (colon < 0 || Number(source.slice(colon + 1)) !== query.port) return false;
  const host = source.startsWith('[') ? source.slice(1, colon - 1) : source.slice(0, colon);
  const ip = parseIp(host);
  if (ip === null) return false;
  const address = unmapped(ip);
  return address.family === query.address.family && address.value === query.address.value;
}

function dstText(dst: OriginalDst | string | null): string | null {
  return dst === null || typeof dst === 'string' ? dst : endpoint(dst.address, dst.port);
}

/** The lookup row of a connection still in the live table. */
function liveRow(conn: LiveConnection, now: number): SourceLookupRow {
  return {
    id: conn.id,
    direction: conn.direction,
    state: conn.state,
    source: conn.source,
    originalDst: dstText(conn.dst),
    ageMs: Math.round(now - conn.startedAt),
    result: conn.result,
    detail: conn.detail,
  };
}

/**
 * A relay thread's close as the front door hands it over (src/proxy/front-door-runtime.ts): its id as a number
 * after the worker's prefix, and its source and original destination as packed bytes (src/proxy/packed-endpoint.ts),
 * copied into the ring and printed only by a lookup that matches them.
 */
export interface PackedClose {
  readonly idPrefix: string;
  readonly id: number;
  readonly direction: Direction;
  readonly bytes: Uint8Array;
  /** Offset of the source; the original destination follows it. */
  readonly at: number;
  readonly result: EndResult | null;
  readonly detail: string;
  readonly startedAt: number;
}

/** The last `capacity` closed connections of a worker, newest overwriting oldest. */
export class RecentConnections {
  private readonly ids: string[];
  private readonly directions: Direction[];
  private readonly sources: string[];
  private readonly dsts: (OriginalDst | string | null)[];
  private readonly results: (EndResult | null)[];
  private readonly details: string[];
  private readonly startedAt: Float64Array;
  private readonly closedAt: Float64Array;
  /** Per slot: 1 when it came from addPacked (id = ids[i] + numIds[i], endpoints in `endpoints`). */
  private readonly packed: Uint8Array;
  private readonly numIds: Float64Array;
  /** Source and original destination of packed slots, PACKED_ENDPOINT_BYTES each. */
  private readonly endpoints: Uint8Array;
  /** The slot the next close goes to. */
  private next = 0;
  private filled = 0;

  constructor(readonly capacity = RECENT_CAPACITY) {
    if (!Number.isInteger(capacity) || capacity < 1)
      throw new RangeError(`ring capacity must be a positive integer, got ${capacity}`);
    this.ids = new Array<string>(capacity).fill('');
    this.directions = new Array<Direction>(capacity).fill('outbound');
    this.sources = new Array<string>(capacity).fill('');
    this.dsts = new Array<OriginalDst | string | null>(capacity).fill(null);
    this.results = new Array<EndResult | null>(capacity).fill(null);
    this.details = new Array<string>(capacity).fill('');
    this.startedAt = new Float64Array(capacity);
    this.closedAt = new Float64Array(capacity);
    this.packed = new Uint8Array(capacity);
    this.numIds = new Float64Array(capacity);
    this.endpoints = new Uint8Array(capacity * 2 * PACKED_ENDPOINT_BYTES);
  }

  /** How many closes the ring holds (at most `capacity`). */
  get size(): number {
    return this.filled;
  }

  /** Records a close (at `closedAt`, performance.now()). */
  add(conn: ClosedConnection, closedAt: number): void {
    const i = this.next;
    this.ids[i] = conn.id;
    this.directions[i] = conn.direction;
    this.sources[i] = conn.source;
    this.dsts[i] = conn.dst;
    this.results[i] = conn.result;
    this.details[i] = conn.detail;
    this.startedAt[i] = conn.startedAt;
    this.closedAt[i] = closedAt;
    this.packed[i] = 0;
    this.advance();
  }

  /** Records a relay thread's close (at `closedAt`): a few stores and a 40-byte copy, no string made. */
  addPacked(conn: PackedClose, closedAt: number): void {
    const i = this.next;
    this.ids[i] = conn.idPrefix;
    this.numIds[i] = conn.id;
    this.directions[i] = conn.direction;
    this.endpoints.set(
      conn.bytes.subarray(conn.at, conn.at + 2 * PACKED_ENDPOINT_BYTES),
      i * 2 * PACKED_ENDPOINT_BYTES,
    );
    this.results[i] = conn.result;
    this.details[i] = conn.detail;
    this.startedAt[i] = conn.startedAt;
    this.closedAt[i] = closedAt;
    this.packed[i] = 1;
    this.advance();
  }

  private advance(): void {
    this.next = this.next + 1 === this.capacity ? 0 : this.next + 1;
    if (this.filled < this.capacity) this.filled++;
  }

  /** Slot i's source text, or null when a packed slot's port already rules it out for `query`. */
  private sourceOf(i: number, query: SourceQuery | null): string | null {
    if (this.packed[i] === 0) return this.sources[i]!;
    const at = i * 2 * PACKED_ENDPOINT_BYTES;
    if (query !== null && packedPort(this.endpoints, at) !== query.port) return null;
    return formatPackedEndpoint(this.endpoints, at) || '?';
  }

  /** The closed connections from `query`, newest first. */
  lookup(query: SourceQuery, now: number): SourceLookupRow[] {
    const rows: SourceLookupRow[] = [];
    for (let k = 1; k <= this.filled; k++) {
      const i = (this.next - k + this.capacity) % this.capacity;
      const source = this.sourceOf(i, query);
      if (source === null || !matchesSource(source, query)) continue;
      const packed = this.packed[i] === 1;
      const dst = packed
        ? formatPackedEndpoint(this.endpoints, i * 2 * PACKED_ENDPOINT_BYTES + PACKED_ENDPOINT_BYTES) || null
        : dstText(this.dsts[i]!);
      rows.push({
        id: packed ? `${this.ids[i]!}${this.numIds[i]!}` : this.ids[i]!,
        direction: this.directions[i]!,
        state: 'closed',
        source,
        originalDst: dst,
        ageMs: Math.round(now - this.startedAt[i]!),
        closedAgoMs: Math.round(now - this.closedAt[i]!),
        result: this.results[i]!,
        detail: this.details[i]!,
      });
    }
    return rows;
  }
}

/** The open and recently closed connections from `query`, newest (smallest age) first. */
export function lookupRows(
  live: Iterable<LiveConnection>,
  ring: RecentConnections,
  query: SourceQuery,
  now: number,
): SourceLookupRow[] {
  const rows = ring.lookup(query, now);
  for (const conn of live) if (matchesSource(conn.source, query)) rows.push(liveRow(conn, now));
  return rows.sort((a, b) => a.ageMs - b.ageMs);
}

/** Orders rows of several workers newest first. */
export function newestFirst<T extends { readonly ageMs: number }>(rows: T[]): T[] {
  return rows.sort((a, b) => a.ageMs - b.ageMs);
}
