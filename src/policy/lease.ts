// The narrow contract between the proxy's connection (src/proxy/connection.ts) and the policy attached to it at accept:
// the policy starts the upstream side, may retry a failed connect elsewhere, and is released exactly once when the
// connection closes (giving back circuit-breaker, endpoint and inbound-limit counts).
import type { RefusalReason } from './refusals.js';

/** A route the connection can connect to (the `connect` Route of src/proxy/routing.ts). */
export interface LeaseRoute {
  readonly kind: 'connect';
  readonly host: string;
  readonly port: number;
  readonly localAddress: string | null;
}

/** What a lease may do with its connection. */
export interface LeasedConnection {
  /** Opens (or, after a failed attempt, re-opens) the upstream leg. */
  connect(route: LeaseRoute): void;
  /** Resets the client without connecting; counted and logged as refused with `reason`. */
  refuse(reason: RefusalReason, detail?: string): void;
  /** The client has gone (closed or reset) while the lease was waiting. */
  readonly clientGone: boolean;
}

export interface ConnectionLease {
  /** The service name for the access log, or null (inbound admission). */
  readonly service: string | null;
  /** Upstream connect attempts so far. */
  readonly attempts: number;
  /** Timeout of one connect attempt (the sweep enforces it while an attempt runs). */
  readonly connectTimeoutMs: number;
  /** Starts the upstream side (connect, or a fault delay first). `route` is where the proxy would go without policy. */
  begin(conn: LeasedConnection, route: LeaseRoute): void;
  /**
   * The current attempt failed (`code`: ECONNREFUSED, ETIMEDOUT...). True when the lease retries (the connection
   * must drop the failed socket and wait for connect()); false when it gives up (the connection fails).
   */
  connectFailed(conn: LeasedConnection, code: string): boolean;
  connected(conn: LeasedConnection): void;
  /** The connection has closed; called once. */
  release(): void;
}
