// The outbound side of one connection to a service: an optional injected delay, the endpoint choice, and on a
// failed connect (refused, unreachable, timed out) a retry to a different endpoint after a jittered backoff, up to
// the attempt bound. Every result feeds outlier detection. Counts taken at begin are given back at release.
import { performance } from 'node:perf_hooks';
import type { Endpoint } from './endpoint.js';
import type { ConnectionLease, LeasedConnection, LeaseRoute } from './lease.js';
import type { Random } from './load-balancer.js';
import { noteConnectFailure, noteConnectSuccess } from './outlier.js';
import { backoffMs } from './retry.js';
import type { ServiceRuntime } from './service.js';

/** Notified of outlier ejections (the runtime logs them). */
export interface EjectionListener {
  ejected(service: ServiceRuntime, endpoint: Endpoint, ms: number): void;
}

export class UpstreamLease implements ConnectionLease {
  endpoint: Endpoint | null = null;
  attempts = 0;
  private tried: Endpoint[] | null = null;
  private pending = true;
  private released = false;
  private timer: NodeJS.Timeout | null = null;

  constructor(
    readonly svc: ServiceRuntime,
    /** The client address's hash (source-hash balancing). */
    private readonly hash: number,
    /** An injected delay before the first attempt (fault injection), or 0. */
    private readonly delayMs: number,
    private readonly listener: EjectionListener,
    private readonly random: Random = Math.random,
  ) {
    const state = svc.state;
    state.active++;
    state.pending++;
    state.connections++;
    if (delayMs > 0) state.delayed++;
  }

  get service(): string {
    return this.svc.config.name;
  }

  get connectTimeoutMs(): number {
    return this.svc.config.connectTimeoutMs;
  }

  begin(conn: LeasedConnection): void {
    if (this.delayMs > 0) {
      this.timer = setTimeout(() => {
        this.timer = null;
        this.first(conn);
      }, this.delayMs);
      return;
    }
    this.first(conn);
  }

  private first(conn: LeasedConnection): void {
    if (this.released || conn.clientGone) return;
    const ep = this.svc.pick(this.hash, null, performance.now());
    if (ep === null) {
      this.svc.state.refused['no-endpoint']++;
      conn.refuse('no-endpoint');
      return;
    }
    this.attempt(conn, ep);
  }

  private attempt(conn: LeasedConnection, ep: Endpoint): void {
    ep.active++;
    ep.connections++;
    this.endpoint = ep;
    this.attempts++;
    conn.connect(ep.route as LeaseRoute);
  }

  connectFailed(conn: LeasedConnection, _code: string): boolean {
    const ep = this.endpoint;
    if (ep === null) return false;
    const svc = this.svc;
    const now = performance.now();
    svc.state.connectFailures++;
    const ejectedMs = noteConnectFailure(ep, svc.endpoints, svc.config.outlierDetection, now);
    if (ejectedMs > 0) {
      svc.state.ejections++;
      this.listener.ejected(svc, ep, ejectedMs);
    }
    if (this.attempts >= svc.config.retries.attempts || conn.clientGone || this.released) return false;
    (this.tried ??= []).push(ep);
    const next = svc.pick(this.hash, this.tried, now);
    if (next === null) return false;
    ep.active--;
    this.endpoint = null;
    svc.state.retries++;
    const wait = backoffMs(svc.config.retries, this.attempts, this.random);
    this.timer = setTimeout(() => {
      this.timer = null;
      if (this.released || conn.clientGone) return;
      this.attempt(conn, next);
    }, wait);
    return true;
  }

  connected(): void {
    const ep = this.endpoint;
    if (ep !== null) noteConnectSuccess(ep, performance.now());
    if (this.pending) {
      this.pending = false;
      this.svc.state.pending--;
      this.svc.state.connected++;
    }
  }

  release(): void {
    if (this.released) return;
    this.released = true;
    if (this.timer !== null) clearTimeout(this.timer);
    this.timer = null;
    const state = this.svc.state;
    state.active--;
    if (this.pending) {
      this.pending = false;
      state.pending--;
    }
    if (this.endpoint !== null) this.endpoint.active--;
  }
}
