// What outlives a config reload for one service in one proxy process: the open/pending connection counts the
// circuit breaker reads (open connections decrement them when they close, whatever config is current by then),
// and the cumulative counters behind /stats and /metrics.

export const SERVICE_REFUSALS = ['circuit-open', 'fault-abort', 'no-endpoint'] as const;
export type ServiceRefusal = (typeof SERVICE_REFUSALS)[number];

export class ServiceState {
  /** Connections open or opening to the service. */
  active = 0;
  /** Connections accepted but not yet connected upstream (connecting, backing off, or delayed by a fault). */
  pending = 0;
  connections = 0;
  connected = 0;
  connectFailures = 0;
  retries = 0;
  ejections = 0;
  delayed = 0;
  readonly refused: Record<ServiceRefusal, number> = { 'circuit-open': 0, 'fault-abort': 0, 'no-endpoint': 0 };

  constructor(readonly name: string) {}
}
