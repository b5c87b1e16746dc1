// The worker's side of the addon's relay thread (src/native/relay.cc): gives each handed-off connection an id,
// keeps the event loop alive while any is relayed, and turns the thread's end reports back into the
// connections' results. Payload never crosses into JS; only one report per connection does, in batches.
import {
  createRelay,
  errnoCode,
  FRONT_FLAG_SOURCE_FALLBACK,
  frontDoorEndCodes,
  relayDetailFields,
  relayEndCodes,
  relayEndpointBytes,
  relayRecordFields,
  withErrnoCode,
  type AcceptedConnection,
  type EndDetails,
  type FrontDoorEnd as FrontDoorEndName,
  type FrontDoorOptions,
  type FrontDoorStats,
  type LiveFrontConnection,
  type NativeRelay,
  type RelayEnd,
} from '../native/addon.js';
import type { EndResult } from './metrics.js';
import { formatPackedEndpoint } from './packed-endpoint.js';

/** A connection the relay thread carries: told once how it ended. `result` null: ended on our own request. */
export interface RelayedConnection {
  relayEnded(fromClient: number, fromUpstream: number, result: EndResult | null, detail: string): void;
}

/** The bounds a connection takes to the thread (ms, -1 = none; keepalive in whole seconds, -1 = off). */
export interface RelayBounds {
  readonly maxRemainingMs: number;
  readonly idleMs: number;
  readonly halfCloseMs: number;
  readonly keepaliveSec: number;
}

/** Live counters of a relayed connection. */
export interface RelaySnapshot {
  readonly fromClient: number;
  readonly fromUpstream: number;
  readonly halfClosed: boolean;
}

const SIDES = ['client', 'upstream'] as const;

let endNames: ReadonlyMap<number, RelayEnd | FrontDoorEndName> | undefined;

/** The end a code from the relay thread stands for, by the addon's own tables (loaded on first use). */
function endOf(code: number): RelayEnd | FrontDoorEndName | undefined {
  endNames ??= new Map(
    [...Object.entries(relayEndCodes()), ...Object.entries(frontDoorEndCodes())].map(([name, value]) => [
      value,
      name as RelayEnd | FrontDoorEndName,
    ]),
  );
  return endNames.get(code);
}

/**
 * How a pair ended, in the words of the access log (the same results and details as the stream relay and, for the
 * front door's own ends, the JavaScript accept path); null for a pair ended on our own request. Throws
 * ADDON_UNAVAILABLE (the codes come from the addon).
 */
export function describeEnd(code: number, side: number, errno: number): { result: EndResult; detail: string } | null {
  const who = SIDES[side === 1 ? 1 : 0];
  switch (endOf(code)) {
    case 'fin':
      return { result: 'FIN', detail: `${who}-first` };
    case 'reset':
      return { result: 'RST', detail: `${who}-reset` };
    case 'error':
      return { result: 'RST', detail: `${who}-${errnoCode(errno)}` };
    case 'keepalive':
      return { result: 'timeout', detail: `${who}-keepalive` };
    case 'idle':
      return { result: 'timeout', detail: 'idle' };
    case 'halfClose':
      return { result: 'timeout', detail: 'half-close' };
    case 'maxDuration':
      return { result: 'timeout', detail: 'max-duration' };
    case 'aborted':
      return null;
    case 'adoptFailed':
      // The thread could not watch the sockets (epoll_ctl: ENOMEM, ENOSPC at fs.epoll.max_user_watches).
      return { result: 'RST', detail: `relay-${errnoCode(errno)}` };
    case 'connectFailed':
      return { result: 'connect-failed', detail: errnoCode(errno) };
    case 'connectTimeout':
      return { result: 'timeout', detail: 'connect' };
    case 'selfLoop':
      return { result: 'refused', detail: 'own-uid' };
    case 'notRedirected':
      // ENOENT: no NAT record (as the JavaScript path says it); 0: the destination was the listener itself.
      return { result: 'refused', detail: errno > 0 ? errnoCode(errno) : 'not-redirected' };
    case undefined:
      return { result: 'RST', detail: `relay-code-${code}` };
  }
}

/** A connection the front door handed to JavaScript (its destination matched `ask`): JS owns the fd now. */
export type FrontDoorAccepted = AcceptedConnection;

/** How a connection the front door accepted and carried ended, from its end record. */
export interface FrontDoorEnd {
  readonly id: number;
  readonly listenerId: number;
  readonly fromClient: number;
  readonly fromUpstream: number;
  /** null: ended on our own request (abort); the caller knows why. */
  readonly result: EndResult | null;
  readonly detail: string;
  readonly durationMs: number;
  /** Accept to upstream established; null if it never was. */
  readonly connectMs: number | null;
  /** `a:p` / `[a]:p`, '' when unknown (formatted when read, from `packed` when there is one). */
  readonly source: string;
  readonly originalDst: string;
  readonly upstreamLocal: string;
  /** The bind to the passthrough source gave EADDRNOTAVAIL; the upstream connected without it. */
  readonly sourceFallback: boolean;
  /**
   * The endpoints as the thread packed them (src/proxy/packed-endpoint.ts): source at `at`, original destination
   * at `at + PACKED_ENDPOINT_BYTES`, upstream local after it. Absent for a record built in JavaScript.
   */
  readonly packed?: { readonly bytes: Uint8Array; readonly at: number };
}

/**
 * The front-door record under a cursor over one delivered batch: one object per thread, moved from record to record,
 * so a batch allocates nothing per connection until something reads an address (formatted then, from the bytes).
 * A sink must not keep it past its ended() call.
 */
class PackedFrontDoorEnd implements FrontDoorEnd {
  id = 0;
  listenerId = 0;
  fromClient = 0;
  fromUpstream = 0;
  result: EndResult | null = null;
  detail = '';
  durationMs = 0;
  connectMs: number | null = null;
  sourceFallback = false;
  readonly packed: { bytes: Uint8Array; at: number } = { bytes: new Uint8Array(0), at: 0 };

  constructor(private readonly endpointBytes: number) {}

  get source(): string {
    return formatPackedEndpoint(this.packed.bytes, this.packed.at);
  }

  get originalDst(): string {
    return formatPackedEndpoint(this.packed.bytes, this.packed.at + this.endpointBytes);
  }

  get upstreamLocal(): string {
    return formatPackedEndpoint(this.packed.bytes, this.packed.at + 2 * this.endpointBytes);
  }

  /** Points the cursor at record `r` of the batch (its numbers at `i` of records, at `at` of details.numbers). */
  load(records: Float64Array, i: number, details: EndDetails, at: number, r: number): this {
    const n = details.numbers;
    const end = describeEnd(records[i + 3]!, records[i + 4]!, records[i + 5]!);
    const connectUs = n[at + 3]!;
    this.id = records[i]!;
    this.listenerId = n[at + 1]!;
    this.fromClient = records[i + 1]!;
    this.fromUpstream = records[i + 2]!;
    this.result = end?.result ?? null;
    this.detail = end?.detail ?? '';
    this.durationMs = n[at + 2]! / 1000;
    this.connectMs = connectUs < 0 ? null : connectUs / 1000;
    this.sourceFallback = ((n[at + 4] ?? 0) & FRONT_FLAG_SOURCE_FALLBACK) !== 0;
    this.packed.bytes = details.endpoints;
    this.packed.at = r * 3 * this.endpointBytes;
    return this;
  }
}

/** A live front-door connection (the thread's list()). */
export type FrontDoorRow = LiveFrontConnection;

/** Where a relay thread's front door reports: asked connections and the ends of the ones it carried. */
export interface FrontDoorSink {
  accepted(batch: readonly FrontDoorAccepted[]): void;
  ended(end: FrontDoorEnd): void;
}

/** Converts a configured bound to what the thread takes (rounded up: a bound never ends a connection early). */
export function relayBounds(
  cfg: {
    readonly maxConnectionDurationMs: number | null;
    readonly idleTimeoutMs: number | null;
    readonly halfCloseTimeoutMs: number;
    readonly keepaliveDelayMs: number | null;
  },
  ageMs: number,
): RelayBounds {
  return {
    maxRemainingMs:
      cfg.maxConnectionDurationMs === null ? -1 : Math.max(0, Math.ceil(cfg.maxConnectionDurationMs - ageMs)),
    idleMs: cfg.idleTimeoutMs ?? -1,
    halfCloseMs: cfg.halfCloseTimeoutMs,
    keepaliveSec: cfg.keepaliveDelayMs === null ? -1 : Math.max(1, Math.ceil(cfg.keepaliveDelayMs / 1000)),
  };
}

export class RelayThread {
  private readonly relay: NativeRelay;
  private readonly open = new Map<number, RelayedConnection>();
  private nextId = 0;
  private readonly counters = new Float64Array(3);
  /** Numbers per end record, and per record of a batch's front-door details, as the addon writes them. */
  private readonly recordFields: number;
  private readonly detailFields: number;
  /** The cursor the front-door records of a batch are read through (see PackedFrontDoorEnd). */
  private readonly frontCursor: PackedFrontDoorEnd;
  /** The listeners this thread accepts on (front door), by id. */
  private readonly listening = new Set<number>();
  /** Whether the event loop is held (ref) for open pairs or listeners. */
  private held = false;
  /** Front-door connections whose end record, or whose hand-off to JS, has reached JS. */
  private frontEnded = 0;
  private askedSeen = 0;

  /**
   * Starts the thread; throws (ADDON_UNAVAILABLE, or a system error with `code`) when it cannot. With `frontDoor`,
   * the thread can also accept (listen) and reports there.
   */
  constructor(
    sweepMs: number,
    private readonly frontDoor: FrontDoorSink | null = null,
  ) {
    this.relay =
      frontDoor === null ? createRelay(this.onEnded, sweepMs) : createRelay(this.onEnded, sweepMs, this.onAccepted);
    this.recordFields = relayRecordFields();
    this.detailFields = relayDetailFields();
    this.frontCursor = new PackedFrontDoorEnd(relayEndpointBytes());
  }

  /** Whether this thread can accept on listening sockets (it was given a sink, and the addon has listen()). */
  get canListen(): boolean {
    return this.frontDoor !== null && typeof (this.relay as Partial<NativeRelay>).listen === 'function';
  }

  /**
   * Accepts on the listening socket `fd` (the thread takes a duplicate; the caller may close its own) with
   * `options`; again with the same id, replaces the options for the next accepts. Throws the system error.
   */
  listen(listenerId: number, fd: number, options: FrontDoorOptions): void {
    withErrnoCode(() => this.relay.listen(listenerId, fd, options));
    this.listening.add(listenerId);
    this.hold();
  }

  /** Stops accepting on the listener (its duplicate is closed); accepted connections go on. */
  unlisten(listenerId: number): void {
    if (!this.listening.delete(listenerId)) return;
    this.relay.unlisten(listenerId);
    this.hold();
  }

  get listenerIds(): ReadonlySet<number> {
    return this.listening;
  }

  /** The live front-door connections, at most `limit`. */
  list(limit: number): FrontDoorRow[] {
    return this.relay.list(limit);
  }

  /**
   * Front-door connections the thread accepted whose end record or hand-off has not reached JS yet (a drain
   * waits for none to be left: a record still in the thread's outbox would be lost at exit). One native call.
   */
  get frontDoorPending(): number {
    if (!this.canListen) return 0;
    return this.relay.stats().accepted - this.frontEnded - this.askedSeen;
  }

  /**
   * The count of front-door records (end records and hand-offs) JS will have seen once everything that has left
   * the thread's pairs by now has arrived: what was accepted less what is still open. Compared with frontDoorSeen
   * by a reader that must not miss a connection that just ended (records leave a thread once per millisecond).
   */
  frontDoorDue(): number {
    if (!this.canListen) return 0;
    const stats = this.relay.stats();
    return stats.accepted - stats.open;
  }

  /** Front-door records JS has seen: end records and hand-offs. */
  get frontDoorSeen(): number {
    return this.frontEnded + this.askedSeen;
  }

  /** The front door's counters (null: an addon without it, or no sink). */
  frontDoorStats(): FrontDoorStats | null {
    return this.canListen ? this.relay.stats() : null;
  }

  /** Holds the event loop while pairs are open or the thread listens (its reports must reach JS), else lets go. */
  private hold(): void {
    const want = this.open.size > 0 || this.listening.size > 0;
    if (want === this.held) return;
    this.held = want;
    if (want) this.relay.ref();
    else this.relay.unref();
  }

  /**
   * Hands a connected pair to the thread, which duplicates both fds: the caller then closes its sockets.
   * Returns the pair's id. Throws the system error (EMFILE when the fd limit is reached, ...) and keeps nothing.
   * The thread registers the pair on its next pass; if it cannot, the pair ends at once with both peers reset
   * (detail `relay-<errno>`).
   */
  adopt(conn: RelayedConnection, clientFd: number, upstreamFd: number, bounds: RelayBounds): number {
    let id = this.nextId;
    while (this.open.has(id)) id = (id + 1) >>> 0;
    withErrnoCode(() =>
      this.relay.adopt(
        id,
        clientFd,
        upstreamFd,
        bounds.maxRemainingMs,
        bounds.idleMs,
        bounds.halfCloseMs,
        bounds.keepaliveSec,
      ),
    );
    this.nextId = (id + 1) >>> 0;
    this.open.set(id, conn);
    this.hold();
    return id;
  }

  /** Ends a relayed connection now (RST to both peers when `reset`); its report follows as usual. False if it had already ended. */
  abort(id: number, reset: boolean): boolean {
    return this.relay.abort(id, reset);
  }

  /** Live counters, or null once the thread has ended the pair (its report is on the way). */
  snapshot(id: number): RelaySnapshot | null {
    const out = this.counters;
    if (!this.relay.snapshot(id, out)) return null;
    return { fromClient: out[0]!, fromUpstream: out[1]!, halfClosed: out[2] === 1 };
  }

  setSweepInterval(ms: number): void {
    this.relay.setSweepInterval(Math.max(1, Math.round(ms)));
  }

  get size(): number {
    return this.open.size;
  }

  /** Stops the thread; pairs still open are closed without a report. */
  close(): void {
    this.relay.close();
    this.open.clear();
    this.listening.clear();
  }

  private readonly onAccepted = (batch: FrontDoorAccepted[]): void => {
    this.askedSeen += batch.length;
    this.frontDoor?.accepted(batch);
  };

  private readonly onEnded = (records: Float64Array, details?: EndDetails): void => {
    for (let i = 0, r = 0; i + this.recordFields <= records.length; i += this.recordFields, r++) {
      if (details !== undefined && details.numbers[r * this.detailFields] === 1) {
        this.frontEnded++;
        this.frontDoor?.ended(this.frontCursor.load(records, i, details, r * this.detailFields, r));
        continue;
      }
      const id = records[i]!;
      const conn = this.open.get(id);
      if (conn === undefined) continue;
      this.open.delete(id);
      const end = describeEnd(records[i + 3]!, records[i + 4]!, records[i + 5]!);
      conn.relayEnded(records[i + 1]!, records[i + 2]!, end?.result ?? null, end?.detail ?? '');
    }
    this.hold();
  };
}
