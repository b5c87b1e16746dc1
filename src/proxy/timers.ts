// Connection timers without a timer per connection: one coarse sweep per process checks every open
// connection's connect, idle, max-duration and half-close deadlines. The decision itself is pure.
import type { ProxyConfig } from '../config/types.js';
import type { EndResult } from './metrics.js';

const MIN_SWEEP_MS = 25;
const MAX_SWEEP_MS = 1000;

export type TimerConfig = Pick<
  ProxyConfig,
  'connectTimeoutMs' | 'idleTimeoutMs' | 'maxConnectionDurationMs' | 'halfCloseTimeoutMs'
> & {
  readonly accessLog: Pick<ProxyConfig['accessLog'], 'periodicIntervalMs'>;
};

/** How often to sweep: a quarter of the shortest enabled bound, between 25 ms and 1 s. */
export function sweepIntervalMs(cfg: TimerConfig): number {
  const bounds = [
    cfg.connectTimeoutMs,
    cfg.idleTimeoutMs,
    cfg.maxConnectionDurationMs,
    cfg.halfCloseTimeoutMs,
    cfg.accessLog.periodicIntervalMs,
  ].filter((n): n is number => n !== null && n > 0);
  const shortest = bounds.length === 0 ? MAX_SWEEP_MS * 4 : Math.min(...bounds);
  return Math.min(MAX_SWEEP_MS, Math.max(MIN_SWEEP_MS, Math.floor(shortest / 4)));
}

/** What the sweep knows about a connection (all times from performance.now()). */
export interface TimerView {
  readonly state: 'connecting' | 'open' | 'half-closed' | 'closed';
  readonly startedAt: number;
  /** When the first direction saw FIN; 0 while neither has. */
  readonly halfClosedAt: number;
  /** When bytes last moved in either direction (or the connect time). */
  readonly lastActiveAt: number;
}

export interface TimerVerdict {
  readonly result: EndResult;
  readonly detail: 'connect' | 'idle' | 'max-duration' | 'half-close';
  /** `reset` aborts both legs with RST (the connection never worked); `close` ends them with FIN. */
  readonly mode: 'reset' | 'close';
}

/** The bound a connection has crossed at `now`, or null. */
export function expiredTimer(view: TimerView, cfg: TimerConfig, now: number): TimerVerdict | null {
  if (view.state === 'closed') return null;
  if (view.state === 'connecting') {
    return now - view.startedAt >= cfg.connectTimeoutMs
      ? { result: 'timeout', detail: 'connect', mode: 'reset' }
      : null;
  }
  if (cfg.maxConnectionDurationMs !== null && now - view.startedAt >= cfg.maxConnectionDurationMs) {
    return { result: 'timeout', detail: 'max-duration', mode: 'close' };
  }
  if (view.state === 'half-closed' && view.halfClosedAt > 0 && now - view.halfClosedAt >= cfg.halfCloseTimeoutMs) {
    return { result: 'timeout', detail: 'half-close', mode: 'close' };
  }
  if (cfg.idleTimeoutMs !== null && now - view.lastActiveAt >= cfg.idleTimeoutMs) {
    return { result: 'timeout', detail: 'idle', mode: 'close' };
  }
  return null;
}

/** A single unref'd interval that calls `tick`; the interval can change on reload. */
export class Sweeper {
  private timer: NodeJS.Timeout | null = null;
  private interval = 0;

  constructor(private readonly tick: () => void) {}

  // The tick runs in the check phase after the event loop's next poll, not in the timers phase: libuv runs expired
  // timers before it polls for I/O, so a loop that ran late (a loaded host) would judge a bound before it has seen
  // the connect, or the bytes, that arrived in time (the relay thread asks the socket for the same reason).
  private readonly afterPoll = (): void => {
    if (this.timer !== null) this.tick();
  };

  start(intervalMs: number): void {
    if (this.timer && intervalMs === this.interval) return;
    this.stop();
    this.interval = intervalMs;
    this.timer = setInterval(() => setImmediate(this.afterPoll), intervalMs);
    this.timer.unref();
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
  }
}
