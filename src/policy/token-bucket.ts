// Token buckets for inbound connection-rate limits: one for all sources of a port, and one per source address
// (kept in a Map that drops buckets once they are full again, so idle sources cost nothing). Refill is computed
// from the elapsed time at each check: no timers.
import type { TokenBucketConfig } from '../config/types.js';

export class TokenBucket {
  private tokens: number;
  private last: number;
  private readonly perMs: number;

  constructor(
    readonly config: TokenBucketConfig,
    now: number,
  ) {
    this.tokens = config.burst;
    this.last = now;
    this.perMs = config.connections / config.perMs;
  }

  private refill(now: number): void {
    if (now > this.last) {
      this.tokens = Math.min(this.config.burst, this.tokens + (now - this.last) * this.perMs);
      this.last = now;
    }
  }

  /** Whether a token is there (without taking it). */
  ready(now: number): boolean {
    this.refill(now);
    return this.tokens >= 1;
  }

  /** Takes one token; call after ready() said yes. */
  take(): void {
    this.tokens -= 1;
  }

  /** Full again: forgetting this bucket changes nothing. */
  full(now: number): boolean {
    this.refill(now);
    return this.tokens >= this.config.burst;
  }
}

/** Per-source buckets, bounded: `sweep` drops the full ones; past `maxSources` the oldest full ones go first. */
export class SourceBuckets {
  private readonly buckets = new Map<string, TokenBucket>();

  constructor(
    readonly config: TokenBucketConfig,
    private readonly maxSources = 100_000,
  ) {}

  bucket(source: string, now: number): TokenBucket {
    let b = this.buckets.get(source);
    if (b === undefined) {
      if (this.buckets.size >= this.maxSources) this.sweep(now);
      b = new TokenBucket(this.config, now);
      this.buckets.set(source, b);
    }
    return b;
  }

  get size(): number {
    return this.buckets.size;
  }

  sweep(now: number): void {
    for (const [source, b] of this.buckets) if (b.full(now)) this.buckets.delete(source);
  }
}
