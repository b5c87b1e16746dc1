// Backoff between connect attempts: exponential from `backoffMs`, capped at `maxBackoffMs`, with full jitter
// (AWS Architecture Blog, "Exponential Backoff And Jitter") so that clients failing together do not retry together.
import type { RetryPolicy } from '../config/types.js';
import type { Random } from './load-balancer.js';

/** The wait before retry number `retry` (1 = the first retry). */
export function backoffMs(policy: RetryPolicy, retry: number, random: Random = Math.random): number {
  const ceiling = Math.min(policy.maxBackoffMs, policy.backoffMs * 2 ** Math.max(0, retry - 1));
  return Math.round(random() * ceiling);
}
