// What mTLS adds to SPIFFE IDs (src/values/spiffe-id.ts has the grammar and the patterns): the default trust
// domain of `meshctl ca`, the trust domain's own ID, and the default of `services[].identities`.
import { anyPrincipalMatches, type PrincipalPattern } from '../values/spiffe-id.js';

/** The trust domain `meshctl ca init` creates without --trust-domain (`.internal` is reserved for private use). */
export const DEFAULT_TRUST_DOMAIN = 'meshctl.internal';

/** The SPIFFE ID of a trust domain itself (`spiffe://td`), as a CA certificate carries it. */
export function trustDomainId(trustDomain: string): string {
  return `spiffe://${trustDomain}`;
}

/** The IDs a peer may present (`services[].identities`): exact IDs, or `spiffe://td/ns/*` for every ID below. */
export type IdentityPattern = PrincipalPattern;

/**
 * Whether `id` is one a service may present: with `patterns` empty, any workload ID of `trustDomain` (the default
 * of `services[].identities`: `spiffe://td/*`); otherwise one matching any pattern. Null (no identity) never is.
 */
export function identityAllowed(patterns: readonly IdentityPattern[], id: string | null, trustDomain: string): boolean {
  if (id === null) return false;
  if (patterns.length === 0) return id.startsWith(`spiffe://${trustDomain}/`);
  return anyPrincipalMatches(patterns, id);
}
