// Inbound admission per local port: L4 authorization by source CIDR and by principal (the peer's SPIFFE ID through
// the mTLS tunnel; plaintext has none) — deny wins, default allow — then the port's
// limit on concurrent connections, then its token buckets (all sources, and per source). A port's entry is found
// through a 64 Ki table of entry indexes (one typed-array read); refusals allocate nothing.
import { performance } from 'node:perf_hooks';
import type { InboundPolicyConfig, InboundPortPolicy } from '../config/types.js';
import { portText } from '../values/ports.js';
import { CidrSet } from './cidr-table.js';
import type { ConnectionLease, LeasedConnection, LeaseRoute } from './lease.js';
import { SourceBuckets, TokenBucket } from './token-bucket.js';
import { anyPrincipalMatches } from '../values/spiffe-id.js';

export const INBOUND_REFUSALS = ['denied', 'rate-limited', 'over-capacity'] as const;
export type InboundRefusal = (typeof INBOUND_REFUSALS)[number];

/** Counts of one inbound entry that outlive reloads (open connections release into them). */
class InboundPortState {
  active = 0;
  admitted = 0;
  readonly refused: Record<InboundRefusal, number> = { denied: 0, 'rate-limited': 0, 'over-capacity': 0 };

  constructor(readonly label: string) {}
}

export function inboundLabel(ports: InboundPortPolicy['ports']): string {
  return ports === 'all' ? '*' : portText(ports);
}

/**
 * One entry of inbound.ports, compiled. It is also the lease of the connections it admits: every admitted
 * connection holds it and releases one count at close (an entry has no per-connection state).
 */
export class InboundEntry implements ConnectionLease {
  readonly service = null;
  readonly attempts = 0;
  readonly connectTimeoutMs = 0;
  private readonly allow: CidrSet | null;
  private readonly deny: CidrSet | null;
  private readonly bucket: TokenBucket | null;
  private readonly sources: SourceBuckets | null;

  constructor(
    readonly config: InboundPortPolicy,
    readonly state: InboundPortState,
    now: number,
  ) {
    this.allow = config.allow === 'all' ? null : new CidrSet(config.allow);
    this.deny = config.deny.length === 0 ? null : new CidrSet(config.deny);
    this.bucket = config.rateLimit ? new TokenBucket(config.rateLimit, now) : null;
    this.sources = config.sourceRateLimit ? new SourceBuckets(config.sourceRateLimit) : null;
  }

  /** Null when `source` (with `principal`, its SPIFFE ID, or null) may connect now (and counts it), otherwise why not. */
  admit(source: string, now: number, principal: string | null = null): InboundRefusal | null {
    const state = this.state;
    if (!this.authorized(source, principal)) {
      state.refused.denied++;
      return 'denied';
    }
    if (this.config.maxConnections !== null && state.active >= this.config.maxConnections) {
      state.refused['over-capacity']++;
      return 'over-capacity';
    }
    const perSource = this.sources === null ? null : this.sources.bucket(source, now);
    // Both buckets must have a token before either gives one: a refused connection costs no tokens.
    if ((this.bucket !== null && !this.bucket.ready(now)) || (perSource !== null && !perSource.ready(now))) {
      state.refused['rate-limited']++;
      return 'rate-limited';
    }
    this.bucket?.take();
    perSource?.take();
    state.active++;
    state.admitted++;
    return null;
  }

  /** Deny (by address or principal) wins; then allowed by address or by principal, or by an allow of "*". */
  private authorized(source: string, principal: string | null): boolean {
    const c = this.config;
    if (this.deny !== null && this.deny.has(source)) return false;
    if (c.denyPrincipals.length > 0 && anyPrincipalMatches(c.denyPrincipals, principal)) return false;
    if (this.allow === null) return true;
    return this.allow.has(source) || anyPrincipalMatches(c.allowPrincipals, principal);
  }

  begin(conn: LeasedConnection, route: LeaseRoute): void {
    conn.connect(route);
  }

  connectFailed(): boolean {
    return false;
  }

  connected(): void {}

  release(): void {
    this.state.active--;
  }

  sweep(now: number): void {
    this.sources?.sweep(now);
  }
}

/** Every inbound entry, indexed by port. */
export class InboundPolicy {
  readonly entries: InboundEntry[];
  private readonly index = new Int16Array(65536).fill(-1);
  private readonly catchAll: InboundEntry | null;

  constructor(config: InboundPolicyConfig, previous: InboundPolicy | null, now = performance.now()) {
    const states = new Map<string, InboundPortState>();
    for (const e of previous?.entries ?? []) states.set(e.state.label, e.state);
    this.entries = config.ports.map((p) => {
      const label = inboundLabel(p.ports);
      return new InboundEntry(p, states.get(label) ?? new InboundPortState(label), now);
    });
    let catchAll: InboundEntry | null = null;
    this.entries.forEach((entry, i) => {
      const ports = entry.config.ports;
      if (ports === 'all') {
        catchAll ??= entry;
        return;
      }
      for (let p = ports.from; p <= ports.to; p++) if (this.index[p] === -1) this.index[p] = i;
    });
    this.catchAll = catchAll;
  }

  get empty(): boolean {
    return this.entries.length === 0;
  }

  /** The entry for local port `port`, or null when no entry (and no "*") covers it. */
  entryFor(port: number): InboundEntry | null {
    const i = this.index[port]!;
    return i >= 0 ? this.entries[i]! : this.catchAll;
  }
}
