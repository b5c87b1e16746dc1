// How long this proxy's certificate has left, and when that deserves a warning, for `status`, `/stats` and the
// metric. The warning starts when less than a third of the lifetime is left: cert-manager renews at two thirds of
// the lifetime and SPIRE at one half, so a certificate still in use then means a rotation was missed (for the 24 h
// default of `meshctl ca issue`: 8 hours before expiry).
import type { Identity } from './identity.js';

export type ExpiryState = 'valid' | 'warning' | 'expired' | 'not-yet-valid';

export interface Expiry {
  readonly spiffeId: string;
  readonly notBefore: Date;
  readonly notAfter: Date;
  /** Seconds until notAfter (negative once expired), whole seconds rounded down. */
  readonly secondsLeft: number;
  readonly lifetimeSeconds: number;
  /** When the warning starts. */
  readonly warnAt: Date;
  readonly state: ExpiryState;
}

/** The fraction of the lifetime left below which a certificate is in `warning`. */
export const WARN_FRACTION_LEFT = 1 / 3;

/** The expiry of an identity at `now`. */
export function identityExpiry(
  identity: Pick<Identity, 'spiffeId' | 'notBefore' | 'notAfter'>,
  now: Date = new Date(),
): Expiry {
  const from = identity.notBefore.getTime();
  const to = identity.notAfter.getTime();
  const lifetimeMs = to - from;
  const warnAt = new Date(to - lifetimeMs * WARN_FRACTION_LEFT);
  const t = now.getTime();
  const state: ExpiryState =
    t < from ? 'not-yet-valid' : t > to ? 'expired' : t >= warnAt.getTime() ? 'warning' : 'valid';
  return {
    spiffeId: identity.spiffeId.text,
    notBefore: identity.notBefore,
    notAfter: identity.notAfter,
    secondsLeft: Math.floor((to - t) / 1000),
    lifetimeSeconds: Math.floor(lifetimeMs / 1000),
    warnAt,
    state,
  };
}

/** The expiry as JSON-ready fields (for `/stats` and `status --json`). */
export function expiryJson(expiry: Expiry): Record<string, string | number> {
  return {
    spiffeId: expiry.spiffeId,
    notBefore: expiry.notBefore.toISOString(),
    notAfter: expiry.notAfter.toISOString(),
    secondsLeft: expiry.secondsLeft,
    lifetimeSeconds: expiry.lifetimeSeconds,
    warnAt: expiry.warnAt.toISOString(),
    state: expiry.state,
  };
}

function label(value: string): string {
  return value.replace(/\\/g, '\\\\').replace(/"/g, '\\"').replace(/\n/g, '\\n');
}

/**
 * Prometheus text for the identity's expiry: `meshctl_mtls_certificate_expiry_seconds` (seconds left, negative
 * once expired) and `meshctl_mtls_certificate_expiry_warning` (1 in warning, expired or not yet valid), both
 * labelled with the SPIFFE ID; nothing when mTLS has no identity.
 */
export function renderExpiryMetrics(expiry: Expiry | null): string {
  if (expiry === null) return '';
  const id = `spiffe_id="${label(expiry.spiffeId)}"`;
  return [
    '# HELP meshctl_mtls_certificate_expiry_seconds Seconds until the mTLS identity certificate expires (negative once expired).',
    '# TYPE meshctl_mtls_certificate_expiry_seconds gauge',
    `meshctl_mtls_certificate_expiry_seconds{${id}} ${expiry.secondsLeft}`,
    '# HELP meshctl_mtls_certificate_expiry_warning 1 when the identity certificate is past its warning point, expired or not yet valid.',
    '# TYPE meshctl_mtls_certificate_expiry_warning gauge',
    `meshctl_mtls_certificate_expiry_warning{${id}} ${expiry.state === 'valid' ? 0 : 1}`,
    '',
  ].join('\n');
}

/** An expiry as a proxy reports it (expiryJson, the `mtls.identity` of GET /stats), read back by `meshctl status`. */
export interface ExpiryView {
  readonly spiffeId: string;
  readonly notBefore: string;
  readonly notAfter: string;
  readonly secondsLeft: number;
  readonly warnAt: string;
  readonly state: ExpiryState;
}

const STATES: readonly ExpiryState[] = ['valid', 'warning', 'expired', 'not-yet-valid'];

/** `value` as an ExpiryView, or null when it is not one (an older proxy, no mTLS). */
export function parseExpiryView(value: unknown): ExpiryView | null {
  if (typeof value !== 'object' || value === null) return null;
  const v = value as Record<string, unknown>;
  const texts = ['spiffeId', 'notBefore', 'notAfter', 'warnAt'].every((k) => typeof v[k] === 'string');
  if (!texts || typeof v.secondsLeft !== 'number' || !STATES.includes(v.state as ExpiryState)) return null;
  return {
    spiffeId: v.spiffeId as string,
    notBefore: v.notBefore as string,
    notAfter: v.notAfter as string,
    secondsLeft: v.secondsLeft,
    warnAt: v.warnAt as string,
    state: v.state as ExpiryState,
  };
}

/** A span of seconds for people: `2d 3h`, `7h 59m`, `12m 5s`, `42s`. */
export function formatSpan(seconds: number): string {
  const s = Math.max(0, Math.floor(Math.abs(seconds)));
  const d = Math.floor(s / 86400);
  const h = Math.floor((s % 86400) / 3600);
  const m = Math.floor((s % 3600) / 60);
  if (d > 0) return `${d}d ${h}h`;
  if (h > 0) return `${h}h ${m}m`;
  if (m > 0) return `${m}m ${s % 60}s`;
  return `${s}s`;
}

/** One line on the identity and its expiry (`meshctl status`): the state in capitals when it needs action. */
export function describeExpiry(v: ExpiryView): string {
  const left = `${v.secondsLeft} s`;
  switch (v.state) {
    case 'valid':
      return `identity ${v.spiffeId}, certificate valid for ${formatSpan(v.secondsLeft)} (${left} left, until ${v.notAfter}; warning from ${v.warnAt})`;
    case 'warning':
      return `identity ${v.spiffeId}, WARNING: the certificate expires in ${formatSpan(v.secondsLeft)} (${left} left, at ${v.notAfter}): renew it (\`meshctl ca issue\`, or your CA's agent); the proxy reloads the files`;
    case 'expired':
      return `identity ${v.spiffeId}, EXPIRED ${formatSpan(v.secondsLeft)} ago (at ${v.notAfter}): peers refuse it; renew it (\`meshctl ca issue\`, or your CA's agent)`;
    case 'not-yet-valid':
      return `identity ${v.spiffeId}, NOT YET VALID (from ${v.notBefore}): peers refuse it until then; check the clocks`;
  }
}
