// One upstream endpoint of a service and everything this proxy process knows about it: open connections (for
// least-connections and the admin view), passive failure state (outlier detection) and active health. Endpoint
// objects outlive config reloads and DNS refreshes (matched by service and address), so the counts open
// connections decrement stay right.
import type { Family } from '../values/ip.js';
import { hostPortText } from '../values/addresses.js';

/** What the proxy's Connection (src/proxy/connection.ts) connects to: created once per endpoint, so picking an endpoint allocates nothing. */
export interface EndpointRoute {
  readonly kind: 'connect';
  readonly host: string;
  readonly port: number;
  readonly localAddress: null;
}

export class Endpoint {
  readonly key: string;
  readonly route: EndpointRoute;
  /** Connections open or opening to this endpoint from this process. */
  active = 0;
  connections = 0;
  connectFailures = 0;
  /** Outlier detection: connect failures in a row, and the ejection state. */
  consecutiveFailures = 0;
  ejectedUntil = 0;
  ejections = 0;
  lastEjectionEndedAt = 0;
  /** Active health checks: false once unhealthyThreshold checks failed in a row. */
  healthy = true;
  checkFailures = 0;
  checkPasses = 0;

  constructor(
    readonly address: string,
    readonly port: number,
    readonly family: Family,
    /** The subset label (canary group), or null. Part of the identity: the same address in two subsets is two endpoints. */
    readonly subset: string | null,
  ) {
    this.key = endpointKey(address, port, subset);
    this.route = Object.freeze({ kind: 'connect', host: address, port, localAddress: null });
  }

  get text(): string {
    return hostPortText(this.address, this.port);
  }

  /** Usable for new connections at `now`: healthy and not ejected. */
  available(now: number): boolean {
    return this.healthy && this.ejectedUntil <= now;
  }

  ejected(now: number): boolean {
    return this.ejectedUntil > now;
  }
}

export function endpointKey(address: string, port: number, subset: string | null): string {
  return `${hostPortText(address, port)}${subset === null ? '' : `#${subset}`}`;
}
