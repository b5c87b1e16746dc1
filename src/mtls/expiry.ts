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
