// The forwarder's answer cache: answers keyed by (name, type, class, DNSSEC bits), kept for their TTL (capped),
// negative answers (NXDOMAIN and NODATA) for the SOA's negative TTL (RFC 2308 §5: min(SOA TTL, SOA minimum)),
// bounded in entries with least-recently-used eviction. A hit gives back the stored answer with its TTLs
// counted down. Pure apart from the clock it is given.
import type * as packet from 'dns-packet';

/** Positive answers are kept at most this long, whatever their TTL. */
export const MAX_TTL_S = 3600;
/** Negative answers at most this long (RFC 2308 §5 recommends 1 to 3 hours; resolvers use far less). */
export const MAX_NEGATIVE_TTL_S = 300;

export interface CachedAnswer {
  readonly packet: packet.DecodedPacket;
  /** Seconds since it was stored (subtract from every TTL). */
  readonly ageS: number;
  readonly negative: boolean;
}

interface Entry {
  readonly packet: packet.DecodedPacket;
  readonly storedAt: number;
  readonly expiresAt: number;
  readonly negative: boolean;
}

const RCODE_NAMES = ['NOERROR', 'FORMERR', 'SERVFAIL', 'NXDOMAIN', 'NOTIMP', 'REFUSED'];

/** The rcode name of a decoded message (dns-packet decodes it; its typings leave it out). */
export function rcodeOf(p: packet.DecodedPacket): string {
  const code = (p.flags ?? 0) & 0xf;
  return RCODE_NAMES[code] ?? `RCODE${code}`;
}

export function cacheKey(
  name: string,
  type: string,
  klass: string,
  dnssecOk: boolean,
  checkingDisabled: boolean,
): string {
  return `${name.toLowerCase().replace(/\.$/, '')}|${type}|${klass}|${dnssecOk ? 'do' : ''}${checkingDisabled ? 'cd' : ''}`;
}

function ttlOf(r: packet.Answer): number {
  return 'ttl' in r && typeof r.ttl === 'number' ? r.ttl : 0;
}

/**
 * How long an upstream answer may be cached (seconds), whether it is negative, or null when it must not be:
 * NOERROR with answers → the smallest answer TTL; NXDOMAIN or NOERROR without answers → the SOA's negative TTL,
 * not cached without an SOA (RFC 2308 §5); truncated answers and any other rcode (SERVFAIL, REFUSED) → null.
 */
export function cacheLifetime(p: packet.DecodedPacket): { ttlS: number; negative: boolean } | null {
  if (p.flag_tc) return null;
  const rcode = rcodeOf(p);
  const answers = (p.answers ?? []).filter((r) => r.type !== 'OPT');
  if (rcode === 'NOERROR' && answers.length > 0)
    return { ttlS: Math.min(MAX_TTL_S, ...answers.map(ttlOf)), negative: false };
  if (rcode !== 'NXDOMAIN' && rcode !== 'NOERROR') return null;
  const soa = (p.authorities ?? []).find((r): r is packet.SoaAnswer => r.type === 'SOA');
  if (!soa) return null;
  return { ttlS: Math.min(MAX_NEGATIVE_TTL_S, ttlOf(soa), soa.data.minimum ?? 0), negative: true };
}

export class DnsCache {
  private readonly entries = new Map<string, Entry>();
  hits = 0;
  misses = 0;
  evictions = 0;

  constructor(
    readonly maxEntries: number,
    private readonly now: () => number = () => Date.now(),
  ) {}

  get size(): number {
    return this.entries.size;
  }

  get(key: string): CachedAnswer | null {
    const e = this.entries.get(key);
    const now = this.now();
    if (e === undefined || e.expiresAt <= now) {
      if (e !== undefined) this.entries.delete(key);
      this.misses++;
      return null;
    }
    // Re-insert: Map order is the LRU order.
    this.entries.delete(key);
    this.entries.set(key, e);
    this.hits++;
    return { packet: e.packet, ageS: Math.floor((now - e.storedAt) / 1000), negative: e.negative };
  }

  /** Stores `p` if it may be cached; returns whether it was. */
  put(key: string, p: packet.DecodedPacket): boolean {
    const life = cacheLifetime(p);
    if (life === null || life.ttlS <= 0 || this.maxEntries <= 0) return false;
    const now = this.now();
    this.entries.delete(key);
    this.entries.set(key, { packet: p, storedAt: now, expiresAt: now + life.ttlS * 1000, negative: life.negative });
    while (this.entries.size > this.maxEntries) {
      this.entries.delete(this.entries.keys().next().value!);
      this.evictions++;
    }
    return true;
  }

  clear(): void {
    this.entries.clear();
  }
}
