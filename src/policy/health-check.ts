// Optional active health checks: every interval, a TCP connect to each endpoint of a service (from the proxy's
// uid, so never captured). `unhealthyThreshold` failures in a row take an endpoint out of rotation,
// `healthyThreshold` successes bring it back. Passive outlier detection works independently of this.
import { connect } from 'node:net';
import type { HealthCheckPolicy } from '../config/types.js';
import type { Logger } from '../log.js';
import type { Endpoint } from './endpoint.js';

/** One TCP connect check; resolves true when the connection was established within `timeoutMs`. */
function probeTcp(host: string, port: number, timeoutMs: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect({ host, port });
    const finish = (ok: boolean) => {
      clearTimeout(timer);
      socket.destroy();
      resolve(ok);
    };
    const timer = setTimeout(() => finish(false), timeoutMs);
    socket.once('connect', () => finish(true));
    socket.once('error', () => finish(false));
  });
}

/** Applies one check result to an endpoint; returns true when its health flipped. */
export function recordCheck(ep: Endpoint, ok: boolean, policy: HealthCheckPolicy): boolean {
  if (ok) {
    ep.checkFailures = 0;
    ep.checkPasses++;
    if (!ep.healthy && ep.checkPasses >= policy.healthyThreshold) {
      ep.healthy = true;
      return true;
    }
  } else {
    ep.checkPasses = 0;
    ep.checkFailures++;
    if (ep.healthy && ep.checkFailures >= policy.unhealthyThreshold) {
      ep.healthy = false;
      return true;
    }
  }
  return false;
}

export class HealthChecker {
  private timer: NodeJS.Timeout | null = null;
  private running = false;
  private stopped = false;

  constructor(
    private readonly service: string,
    private readonly policy: HealthCheckPolicy,
    /** The service's current endpoints (read at each round, so discovery changes are followed). */
    private readonly endpoints: () => readonly Endpoint[],
    private readonly log: Logger,
  ) {}

  /** Runs the first round now (so start-up knows which endpoints answer), then one per interval. */
  async start(): Promise<void> {
    await this.round();
    this.schedule();
  }

  private schedule(): void {
    if (this.stopped) return;
    this.timer = setTimeout(() => {
      void this.round().then(() => this.schedule());
    }, this.policy.intervalMs);
    this.timer.unref();
  }

  private async round(): Promise<void> {
    if (this.running || this.stopped) return;
    this.running = true;
    try {
      await Promise.all(
        this.endpoints().map(async (ep) => {
          const ok = await probeTcp(ep.address, ep.port, this.policy.timeoutMs);
          if (this.stopped) return;
          if (recordCheck(ep, ok, this.policy)) {
            this.log.warn(
              { service: this.service, endpoint: ep.text, healthy: ep.healthy },
              ep.healthy
                ? 'endpoint passed its health checks: back in rotation'
                : 'endpoint failed its health checks: out of rotation',
            );
          }
        }),
      );
    } finally {
      this.running = false;
    }
  }

  stop(): void {
    this.stopped = true;
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
  }
}
