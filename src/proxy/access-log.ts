// The access log: one JSON line per connection at close (plus optional progress lines for long-lived ones), each
// serialized once, straight to a string, and handed to a batched writer that never blocks the event loop.
//
// The lines are what pino wrote before (issue 19 measured that access log at ~41 µs of the proxy's CPU per
// connection, most of it a write per line: bench/notes.md; pino stays the operational logger, src/log.ts): `level`,
// `time` (ISO), the base fields (`worker` or `component`), the record's fields in AccessRecord's order (absent when
// undefined), then `msg`. A string is copied as it is unless it holds a
// character JSON must escape (or a lone surrogate, which JSON.stringify writes as \uXXXX): those go through
// JSON.stringify, so a hostile SNI or SPIFFE ID cannot break a line.
import type { AccessLogConfig } from '../config/types.js';
import { LineWriter, type LineWriterOptions } from './access-log-writer.js';
import type { Direction, EndResult } from './metrics.js';

export interface AccessRecord {
  readonly id: string;
  readonly direction: Direction;
  /** The client's address:port as the proxy saw it. */
  readonly source: string;
  /** Where the client was going before the capture rules redirected it (null when not redirected). */
  readonly originalDst: string | null;
  /** The upstream endpoint the proxy actually connected to (null when it never tried). */
  readonly upstream: string | null;
  /** The proxy's own address:port on the upstream leg (shows the passthrough source for inbound). */
  readonly upstreamLocal: string | null;
  readonly bytesFromClient: number;
  readonly bytesFromUpstream: number;
  readonly durationMs: number;
  /** Accept to upstream established, or null when it never connected. */
  readonly connectMs: number | null;
  readonly result: EndResult;
  /** Why, in a word: `client-first`, `upstream-reset`, `ECONNREFUSED`, `idle`, `not-redirected`... */
  readonly detail: string;
  /** The mesh service the connection matched (src/policy), and its upstream connect attempts; absent otherwise. */
  readonly service?: string | undefined;
  readonly attempts?: number | undefined;
  /** With mTLS configured: `mtls` through the tunnel, else `plaintext`; the peer proxy's SPIFFE ID; the handshake (ms) of the session the connection opened, absent when it reused one. */
  readonly tls?: 'mtls' | 'plaintext';
  readonly peerIdentity?: string;
  readonly handshakeMs?: number;
}

/** A progress line's record: a connection still open, and its state. */
export type ProgressRecord = Omit<AccessRecord, 'result' | 'detail'> & { readonly state: string };

/** The order of a line's record fields; serializeRecord writes exactly these (the type check below keeps it whole). */
export const ACCESS_RECORD_KEYS = [
  'id',
  'direction',
  'source',
  'originalDst',
  'upstream',
  'upstreamLocal',
  'bytesFromClient',
  'bytesFromUpstream',
  'durationMs',
  'connectMs',
  'result',
  'detail',
  'service',
  'attempts',
  'tls',
  'peerIdentity',
  'handshakeMs',
] as const satisfies readonly (keyof AccessRecord)[];
// A field added to AccessRecord without a place in the line fails to compile here.
const everyKeyListed: Exclude<keyof AccessRecord, (typeof ACCESS_RECORD_KEYS)[number]> extends never ? true : never =
  true;
void everyKeyListed;

/** One process's access log. Swappable on reload; `flush` before exit. Throws WRITE_FAILED when its file cannot be opened. */
export class AccessLog {
  private writer: LineWriter | null = null;
  private config: AccessLogConfig;
  /** `,"worker":3`: the base fields, serialized once. */
  private readonly baseText: string;
  private readonly writerOptions: LineWriterOptions;
  /** Lines dropped by writers closed on reconfigure, so `dropped` counts since this log was made. */
  private droppedBefore = 0;

  constructor(config: AccessLogConfig, base: Record<string, unknown> = {}, options: LineWriterOptions = {}) {
    this.config = config;
    this.baseText = serializeFields(base);
    this.writerOptions = {
      dropWarning: (dropped, total) =>
        `{"level":40,"time":"${isoNow()}"${this.baseText},"dropped":${dropped},"droppedTotal":${total + this.droppedBefore},` +
        '"msg":"access log lines dropped: the destination did not keep up"}\n',
      ...options,
    };
    this.writer = this.open(config);
  }

  private open(config: AccessLogConfig): LineWriter | null {
    if (!config.enabled) return null;
    return new LineWriter(
      config.path === null ? { kind: 'stdout' } : { kind: 'file', path: config.path },
      this.writerOptions,
    );
  }

  /**
   * Applies a new access-log config; reopens the destination only when the target changed. Throws WRITE_FAILED
   * when the new file cannot be opened, and then keeps writing where it did.
   */
  reconfigure(next: AccessLogConfig): void {
    const reopen = next.enabled !== this.config.enabled || next.path !== this.config.path;
    if (!reopen) {
      this.config = next;
      return;
    }
    const writer = this.open(next);
    this.close();
    this.writer = writer;
    this.config = next;
  }

  /** Whether records are written (callers skip building them otherwise). */
  get enabled(): boolean {
    return this.writer !== null;
  }

  get periodicIntervalMs(): number | null {
    return this.config.enabled ? this.config.periodicIntervalMs : null;
  }

  /** Lines dropped because the destination did not keep up (or failed) since this log was made, for metrics. */
  get dropped(): number {
    return this.droppedBefore + (this.writer?.dropped ?? 0);
  }

  /**
   * Whether a closed connection with this result is logged: FIN ones are sampled by sampleRatio, others always.
   * Asked before building the record (then `writeClosed`), a sampled-out connection costs no record at all.
   */
  sampled(result: EndResult): boolean {
    return (
      this.writer !== null &&
      (result !== 'FIN' || this.config.sampleRatio >= 1 || Math.random() < this.config.sampleRatio)
    );
  }

  /** Logs a closed connection; successful (FIN) ones are sampled by sampleRatio, every other result is kept. */
  closed(record: AccessRecord): void {
    if (!this.sampled(record.result)) return;
    this.writer!.append(serializeRecord(this.baseText, record, null, CLOSED_MSG));
  }

  /** Logs a closed connection already sampled in by `sampled(record.result)` (no second draw). */
  writeClosed(record: AccessRecord): void {
    this.writer?.append(serializeRecord(this.baseText, record, null, CLOSED_MSG));
  }

  /** Logs one DNS query the proxy answered (the DNS server samples them like connections). */
  dnsQuery(record: object): void {
    this.writer?.append(`{"level":30,"time":"${isoNow()}"${this.baseText}${serializeFields(record)}${DNS_MSG}`);
  }

  /** A progress line for a connection still open after periodicInterval. */
  progress(record: ProgressRecord): void {
    this.writer?.append(serializeRecord(this.baseText, record, record.state, OPEN_MSG));
  }

  /** Writes out everything buffered, synchronously; safe to call at exit. */
  flush(): void {
    this.writer?.flushSync();
  }

  close(): void {
    if (this.writer === null) return;
    this.writer.close();
    this.droppedBefore += this.writer.dropped;
    this.writer = null;
  }
}

const CLOSED_MSG = ',"msg":"connection closed"}\n';
const OPEN_MSG = ',"msg":"connection open"}\n';
const DNS_MSG = ',"msg":"dns query"}\n';

/**
 * One access-log line for `record` (closed: `state` null; progress: its state after the record's fields), as pino
 * wrote it: `{"level":30,"time":"…"<base><fields><msg>`.
 */
export function serializeRecord(
  baseText: string,
  r: Omit<AccessRecord, 'result' | 'detail'> & { readonly result?: EndResult; readonly detail?: string },
  state: string | null,
  msg: string,
): string {
  let line =
    `{"level":30,"time":"${isoNow()}"${baseText},"id":${quote(r.id)},"direction":${quote(r.direction)}` +
    `,"source":${quote(r.source)},"originalDst":${quoteOrNull(r.originalDst)},"upstream":${quoteOrNull(r.upstream)}` +
    `,"upstreamLocal":${quoteOrNull(r.upstreamLocal)},"bytesFromClient":${num(r.bytesFromClient)}` +
    `,"bytesFromUpstream":${num(r.bytesFromUpstream)},"durationMs":${num(r.durationMs)}` +
    `,"connectMs":${r.connectMs === null ? 'null' : num(r.connectMs)}`;
  if (r.result !== undefined) line += `,"result":${quote(r.result)}`;
  if (r.detail !== undefined) line += `,"detail":${quote(r.detail)}`;
  if (r.service !== undefined) line += `,"service":${quote(r.service)}`;
  if (r.attempts !== undefined) line += `,"attempts":${num(r.attempts)}`;
  if (r.tls !== undefined) line += `,"tls":${quote(r.tls)}`;
  if (r.peerIdentity !== undefined) line += `,"peerIdentity":${quote(r.peerIdentity)}`;
  if (r.handshakeMs !== undefined) line += `,"handshakeMs":${num(r.handshakeMs)}`;
  if (state !== null) line += `,"state":${quote(state)}`;
  return line + msg;
}

/** `,"k":v` for each own field whose value is not undefined (as pino writes a logged object). */
export function serializeFields(fields: object): string {
  let out = '';
  for (const [key, value] of Object.entries(fields)) {
    switch (typeof value) {
      case 'undefined':
      case 'function':
      case 'symbol':
        continue;
      case 'string':
        out += `,${quote(key)}:${quote(value)}`;
        break;
      case 'number':
        out += `,${quote(key)}:${num(value)}`;
        break;
      case 'boolean':
        out += `,${quote(key)}:${value}`;
        break;
      default: {
        const text = JSON.stringify(value) as string | undefined; // bigint throws: not a field the proxy logs
        if (text !== undefined) out += `,${quote(key)}:${text}`;
      }
    }
  }
  return out;
}

/** A JSON string literal: `s` in quotes as it is when nothing in it needs escaping, else JSON.stringify's. */
export function quote(s: string): string {
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    // control characters, `"`, `\`, and surrogates (a lone one must become \uXXXX; a pair is fine either way)
    if (c < 0x20 || c === 0x22 || c === 0x5c || (c >= 0xd800 && c <= 0xdfff)) return JSON.stringify(s);
  }
  return `"${s}"`;
}

function quoteOrNull(s: string | null): string {
  return s === null ? 'null' : quote(s);
}

/** A JSON number; NaN and ±Infinity become null, as JSON.stringify and pino write them. */
function num(n: number): string {
  return Number.isFinite(n) ? `${n}` : 'null';
}

// `time` as Date.prototype.toISOString() writes it, rebuilt only when the second changes.
let secondStart = 0;
let secondPrefix = '';

/** The current time in ISO 8601 with milliseconds (UTC), as pino's isoTime wrote it. */
export function isoNow(now = Date.now()): string {
  const ms = now - secondStart;
  if (ms < 0 || ms >= 1000) {
    secondStart = now - (now % 1000);
    secondPrefix = new Date(secondStart).toISOString().slice(0, 20); // 2026-12-05T00:25:42.
    return `${secondPrefix}${MS3[now - secondStart]}Z`;
  }
  return `${secondPrefix}${MS3[ms]}Z`;
}

const MS3 = Array.from({ length: 1000 }, (_, i) => String(i).padStart(3, '0'));
