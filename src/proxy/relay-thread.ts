// The worker's side of the addon's relay thread (src/native/relay.cc): gives each handed-off connection an id,
// keeps the event loop alive while any is relayed, and turns the thread's end reports back into the
// connections' results. Payload never crosses into JS; only one report per connection does, in batches.
import {
  createRelay,
  errnoCode,
  relayEndCodes,
  relayRecordFields,
  withErrnoCode,
  type NativeRelay,
  type RelayEnd,
} from '../native/addon.js';
import type { EndResult } from './metrics.js';

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

let endNames: ReadonlyMap<number, RelayEnd> | undefined;

/** The end a code from the relay thread stands for, by the addon's own table (loaded on first use). */
function endOf(code: number): RelayEnd | undefined {
  endNames ??= new Map(Object.entries(relayEndCodes()).map(([name, value]) => [value, name as RelayEnd]));
  return endNames.get(code);
}

/**
 * How a pair ended, in the words of the access log (the same results and details as the stream relay); null for a
 * pair ended on our own request. Throws ADDON_UNAVAILABLE (the codes come from the addon).
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
    case undefined:
      return { result: 'RST', detail: `relay-code-${code}` };
  }
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
  /** Numbers per end record, as the addon writes them. */
  private readonly recordFields: number;

  /** Starts the thread; throws (ADDON_UNAVAILABLE, or a system error with `code`) when it cannot. */
  constructor(sweepMs: number) {
    this.relay = createRelay(this.onEnded, sweepMs);
    this.recordFields = relayRecordFields();
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
    if (this.open.size === 0) this.relay.ref();
    this.open.set(id, conn);
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
  }

  private readonly onEnded = (records: Float64Array): void => {
    for (let i = 0; i + this.recordFields <= records.length; i += this.recordFields) {
      const id = records[i]!;
      const conn = this.open.get(id);
      if (conn === undefined) continue;
      this.open.delete(id);
      const end = describeEnd(records[i + 3]!, records[i + 4]!, records[i + 5]!);
      conn.relayEnded(records[i + 1]!, records[i + 2]!, end?.result ?? null, end?.detail ?? '');
    }
    if (this.open.size === 0) this.relay.unref();
  };
}
