// Weighted subsets (canary): which group of a service's endpoints a new connection goes to. Smooth weighted round
// robin (nginx's algorithm) is deterministic and exact: over any window of sum(weights) connections each subset gets
// exactly its weight, interleaved (90/10 → one v2 connection in every ten). With source-hash load balancing the
// subset comes from the client's hash instead, so a client stays on its subset too.
import type { Endpoint } from './endpoint.js';

export interface WeightedSubset {
  readonly name: string | null;
  readonly weight: number;
  /** SWRR state. */
  current: number;
  endpoints: readonly Endpoint[];
}

/** The subset for the next connection among those with weight > 0 and endpoints (and not `skip`); -1 when none. */
export function nextSubset(subsets: readonly WeightedSubset[], skip: WeightedSubset | null): number {
  if (subsets.length === 1) {
    const only = subsets[0]!;
    return only !== skip && only.weight > 0 && only.endpoints.length > 0 ? 0 : -1;
  }
  let total = 0;
  let best = -1;
  for (let i = 0; i < subsets.length; i++) {
    const s = subsets[i]!;
    if (s === skip || s.weight === 0 || s.endpoints.length === 0) continue;
    s.current += s.weight;
    total += s.weight;
    if (best < 0 || s.current > subsets[best]!.current) best = i;
  }
  if (best >= 0) subsets[best]!.current -= total;
  return best;
}

/** The subset for a client hash: the same hash always lands in the same subset while weights and sets hold. */
export function hashedSubset(subsets: readonly WeightedSubset[], hash: number, skip: WeightedSubset | null): number {
  let total = 0;
  for (const s of subsets) if (s !== skip && s.weight > 0 && s.endpoints.length > 0) total += s.weight;
  if (total === 0) return -1;
  // Decorrelate from the ring position, which uses the same hash.
  let point = (Math.imul(hash ^ 0x5bd1e995, 0x9e3779b1) >>> 0) % total;
  for (let i = 0; i < subsets.length; i++) {
    const s = subsets[i]!;
    if (s === skip || s.weight === 0 || s.endpoints.length === 0) continue;
    if (point < s.weight) return i;
    point -= s.weight;
  }
  return -1;
}
