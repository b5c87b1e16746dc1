// Passive outlier detection on connect results (Envoy's consecutive-failure detector at L4): an endpoint whose
// connects fail N times in a row is ejected for base × (its ejection count), never beyond maxEjectionPercent of the
// service's endpoints; it returns by itself when the time is up (checked lazily when endpoints are picked), with
// a fresh failure count. The ejection count decays by one per base time spent back in service, so an endpoint
// that failed long ago starts over at the base time.
import type { OutlierDetectionPolicy } from '../config/types.js';
import type { Endpoint } from './endpoint.js';

/** Endpoints ejected at the same time may not exceed this many of `total` (one is always allowed). */
export function maxEjected(total: number, percent: number): number {
  if (percent <= 0) return 0;
  return Math.max(1, Math.floor((total * percent) / 100));
}

/** Brings an endpoint whose ejection ended back into service (idempotent). */
function settle(ep: Endpoint, now: number): void {
  if (ep.ejectedUntil !== 0 && ep.ejectedUntil <= now) {
    ep.lastEjectionEndedAt = ep.ejectedUntil;
    ep.ejectedUntil = 0;
    ep.consecutiveFailures = 0;
  }
}

/** Records a failed connect; returns the ejection time in ms when this failure ejected the endpoint, else 0. */
export function noteConnectFailure(
  ep: Endpoint,
  all: readonly Endpoint[],
  policy: OutlierDetectionPolicy,
  now: number,
): number {
  ep.connectFailures++;
  if (!policy.enabled) return 0;
  settle(ep, now);
  if (ep.ejectedUntil !== 0) return 0; // a connect that started before the ejection
  ep.consecutiveFailures++;
  if (ep.consecutiveFailures < policy.consecutiveFailures) return 0;
  let ejectedNow = 0;
  for (const other of all) if (other.ejectedUntil > now) ejectedNow++;
  if (ejectedNow >= maxEjected(all.length, policy.maxEjectionPercent)) return 0;
  if (ep.lastEjectionEndedAt > 0 && ep.ejections > 0) {
    const decay = Math.floor((now - ep.lastEjectionEndedAt) / policy.baseEjectionMs);
    ep.ejections = Math.max(0, ep.ejections - decay);
  }
  ep.ejections++;
  const ms = policy.baseEjectionMs * ep.ejections;
  ep.ejectedUntil = now + ms;
  return ms;
}

/** Records a successful connect: the failure streak ends. */
export function noteConnectSuccess(ep: Endpoint, now: number): void {
  settle(ep, now);
  ep.consecutiveFailures = 0;
}
