// Fault injection for resilience testing: a percentage of a service's new connections is reset at once (abort)
// or held before its upstream connect (delay). Decided once per connection at accept.
import type { FaultPolicy } from '../config/types.js';
import type { Random } from './load-balancer.js';

/** -1 to abort the connection, otherwise the delay in ms before connecting (0 = none). */
export function injectFault(faults: FaultPolicy, random: Random = Math.random): number {
  if (faults.abort !== null && faults.abort.percent > 0 && random() * 100 < faults.abort.percent) return -1;
  if (faults.delay !== null && faults.delay.percent > 0 && random() * 100 < faults.delay.percent)
    return faults.delay.durationMs;
  return 0;
}
