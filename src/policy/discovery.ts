// DNS-based discovery for one proxy process: every hostname (service addresses, `dns` endpoints) and SRV name of the
// config is resolved once at start and again when its answer's TTL runs out (clamped to the resolver's bounds), on
// timers, never on the connection path. A failed refresh keeps the last answer and retries with backoff. Answers
// survive config reloads (a new Discovery adopts the old one's), so a reload never starts from nothing.
import { performance } from 'node:perf_hooks';
import type { ResolverConfig } from '../config/types.js';
import type { Logger } from '../log.js';
import { DnsClient, resolveAddresses, resolveSrv } from './dns-client.js';
import type { Family } from '../values/ip.js';

export type WatchKind = 'addresses' | 'srv';

export interface DiscoveredAddress {
  readonly address: string;
  readonly family: Family;
  /** The SRV record's port; null for A/AAAA. */
  readonly port: number | null;
}

/** Seconds-free view of a watched name for /stats. */
export interface WatchInfo {
  readonly kind: WatchKind;
  readonly name: string;
  readonly addresses: readonly string[];
  readonly resolved: boolean;
  readonly nextRefreshInMs: number | null;
  readonly lastError: string | null;
  readonly queries: number;
  readonly failures: number;
}

interface Watch {
  readonly kind: WatchKind;
  readonly name: string;
  result: readonly DiscoveredAddress[] | null;
  dueAt: number;
  timer: NodeJS.Timeout | null;
  lastError: string | null;
  queries: number;
  failures: number;
  streak: number;
}

const NEGATIVE_TTL_MS = 5000;

function watchKey(kind: WatchKind, name: string): string {
  return `${kind}:${name}`;
}

function resultText(result: readonly DiscoveredAddress[] | null): string {
  return result === null
    ? ''
    : result
        .map((a) => `${a.address}:${a.port ?? ''}`)
        .sort()
        .join(',');
}

export class Discovery {
  private readonly watches = new Map<string, Watch>();
  private readonly client: DnsClient;
  private stopped = false;

  constructor(
    private readonly resolver: ResolverConfig,
    private readonly onChange: () => void,
    private readonly log: Logger,
  ) {
    this.client = new DnsClient(resolver.servers, resolver.timeoutMs);
  }

  /** Registers a name (before start); the answer is available through `get` once resolved. */
  watch(kind: WatchKind, name: string): void {
    const key = watchKey(kind, name);
    if (!this.watches.has(key)) {
      this.watches.set(key, {
        kind,
        name,
        result: null,
        dueAt: 0,
        timer: null,
        lastError: null,
        queries: 0,
        failures: 0,
        streak: 0,
      });
    }
  }

  get size(): number {
    return this.watches.size;
  }

  /** The current answer for a name, or null when it has never been resolved. */
  get(kind: WatchKind, name: string): readonly DiscoveredAddress[] | null {
    return this.watches.get(watchKey(kind, name))?.result ?? null;
  }

  /**
   * Takes over the answers of `previous` (the process's Discovery before a reload) for the names this one
   * watches, and resolves every name that has none. Resolves when each name has an answer or failed once.
   */
  async start(previous: Discovery | null): Promise<void> {
    const now = performance.now();
    const fresh: Watch[] = [];
    for (const [key, w] of this.watches) {
      const old = previous?.watches.get(key);
      if (old && old.result !== null) {
        Object.assign(w, {
          result: old.result,
          lastError: old.lastError,
          queries: old.queries,
          failures: old.failures,
          streak: old.streak,
        });
        this.schedule(w, Math.max(0, old.dueAt - now));
      } else {
        fresh.push(w);
      }
    }
    await Promise.all(fresh.map((w) => this.refresh(w)));
  }

  stop(): void {
    this.stopped = true;
    for (const w of this.watches.values()) {
      if (w.timer) clearTimeout(w.timer);
      w.timer = null;
    }
  }

  private schedule(w: Watch, inMs: number): void {
    if (this.stopped) return;
    if (w.timer) clearTimeout(w.timer);
    w.dueAt = performance.now() + inMs;
    w.timer = setTimeout(() => void this.refresh(w), inMs);
    w.timer.unref();
  }

  private clamp(ms: number): number {
    return Math.min(this.resolver.maxTtlMs, Math.max(this.resolver.minTtlMs, ms));
  }

  private async refresh(w: Watch): Promise<void> {
    w.timer = null;
    w.queries++;
    const before = resultText(w.result);
    try {
      let result: DiscoveredAddress[];
      let ttl: number | null;
      if (w.kind === 'addresses') {
        const answer = await resolveAddresses(this.client, w.name);
        result = answer.addresses.map((a) => ({ ...a, port: null }));
        ttl = answer.ttl;
      } else {
        const answer = await resolveSrv(this.client, w.name);
        result = answer.targets.map((t) => ({ address: t.address, family: t.family, port: t.port }));
        ttl = answer.ttl;
      }
      if (this.stopped) return;
      if (result.length === 0 && w.lastError === null)
        this.log.warn(
          { name: w.name, kind: w.kind },
          'DNS name has no records: its endpoints/addresses are empty until it has',
        );
      w.result = result;
      w.lastError = null;
      w.streak = 0;
      this.schedule(w, ttl === null ? this.clamp(NEGATIVE_TTL_MS) : this.clamp(ttl * 1000));
    } catch (error) {
      if (this.stopped) return;
      w.failures++;
      w.streak++;
      w.lastError = (error as Error).message;
      // Keep the last answer; retry sooner than its TTL would, with backoff.
      const retry = this.clamp(this.resolver.minTtlMs * 2 ** Math.min(10, w.streak - 1));
      this.log.warn(
        { name: w.name, kind: w.kind, err: w.lastError, retryInMs: retry, keeping: w.result?.length ?? 0 },
        'DNS refresh failed; keeping the last answer',
      );
      this.schedule(w, retry);
    }
    if (resultText(w.result) !== before) this.onChange();
  }

  info(): WatchInfo[] {
    const now = performance.now();
    return [...this.watches.values()].map((w) => ({
      kind: w.kind,
      name: w.name,
      addresses: (w.result ?? []).map((a) =>
        a.port === null ? a.address : `${a.family === 'ipv6' ? `[${a.address}]` : a.address}:${a.port}`,
      ),
      resolved: w.result !== null,
      nextRefreshInMs: w.timer ? Math.max(0, Math.round(w.dueAt - now)) : null,
      lastError: w.lastError,
      queries: w.queries,
      failures: w.failures,
    }));
  }
}
