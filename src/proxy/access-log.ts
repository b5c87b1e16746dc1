// The access log: one JSON line per connection at close (plus optional progress lines for long-lived ones),
// written through an asynchronous pino destination so the event loop never waits on the disk or a pipe.
import { pino, type Logger } from 'pino';
import type { AccessLogConfig } from '../config/types.js';
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

type Destination = ReturnType<typeof pino.destination>;

/** One process's access log. Swappable on reload; `flush` before exit. */
export class AccessLog {
  private logger: Logger | null = null;
  private destination: Destination | null = null;
  private config: AccessLogConfig;
  private readonly base: Record<string, unknown>;

  constructor(config: AccessLogConfig, base: Record<string, unknown> = {}) {
    this.config = config;
    this.base = base;
    this.open();
  }

  private open(): void {
    if (!this.config.enabled) return;
    // On stdout (a pipe or the journal's stream socket, shared by every worker) each write stays within
    // PIPE_BUF so lines of different workers never interleave; sonic-boom never splits a line across writes.
    this.destination =
      this.config.path === null
        ? pino.destination({ dest: 1, sync: false, maxWrite: 4096 })
        : // 0640: the log names every app's peers and destinations; it is no business of other local users.
          pino.destination({ dest: this.config.path, sync: false, mkdir: true, append: true, mode: 0o640 });
    this.logger = pino(
      { base: this.base, timestamp: pino.stdTimeFunctions.isoTime, messageKey: 'msg' },
      this.destination,
    );
  }

  /** Applies a new access-log config; reopens the destination only when the target changed. */
  reconfigure(next: AccessLogConfig): void {
    const reopen = next.enabled !== this.config.enabled || next.path !== this.config.path;
    this.config = next;
    if (!reopen) return;
    this.close();
    this.open();
  }

  /** Whether records are written (callers skip building them otherwise). */
  get enabled(): boolean {
    return this.logger !== null;
  }

  get periodicIntervalMs(): number | null {
    return this.config.enabled ? this.config.periodicIntervalMs : null;
  }

  /** Logs a closed connection; successful (FIN) ones are sampled by sampleRatio, every other result is kept. */
  closed(record: AccessRecord): void {
    if (!this.logger) return;
    if (record.result === 'FIN' && this.config.sampleRatio < 1 && Math.random() >= this.config.sampleRatio) return;
    this.logger.info(record, 'connection closed');
  }

  /** Logs one DNS query the proxy answered (the DNS server samples them like connections). */
  dnsQuery(record: object): void {
    this.logger?.info(record, 'dns query');
  }

  /** A progress line for a connection still open after periodicInterval. */
  progress(record: Omit<AccessRecord, 'result' | 'detail'> & { readonly state: string }): void {
    this.logger?.info(record, 'connection open');
  }

  /** Writes out everything buffered; safe to call at exit. */
  flush(): void {
    try {
      this.destination?.flushSync();
    } catch {
      // the destination may not be open yet (async open) or already closed; nothing buffered then
    }
  }

  close(): void {
    this.flush();
    this.destination?.end();
    this.destination = null;
    this.logger = null;
  }
}
