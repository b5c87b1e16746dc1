// SPIFFE IDs as principals: `spiffe://<trust-domain>/<path>`, and the patterns config writes for them (an exact ID,
// or a trailing `/*` matching every ID under that path). Pure string work: certificates are read elsewhere.

/** An exact SPIFFE ID, or every ID under `prefix` (the pattern `prefix/*`). */
export type PrincipalPattern =
  { readonly kind: 'exact'; readonly id: string } | { readonly kind: 'prefix'; readonly prefix: string };

const ID = /^spiffe:\/\/([a-z0-9._-]+)((?:\/[A-Za-z0-9._~%!$&'()+,;=:@-]+)*)$/;

/** Whether `text` is a principal (a SPIFFE ID pattern) rather than a CIDR or anything else. */
export function isPrincipalText(text: string): boolean {
  return text.startsWith('spiffe://');
}

/** The trust domain of a SPIFFE ID, or null when `id` is not one. */
export function trustDomainOf(id: string): string | null {
  const m = ID.exec(id);
  return m === null ? null : m[1]!;
}

/** A principal pattern, or a problem naming what is wrong with `text`. */
export function parsePrincipal(text: string): PrincipalPattern | string {
  const wildcard = text.endsWith('/*');
  const id = wildcard ? text.slice(0, -2) : text;
  if (ID.exec(id) === null)
    return `${JSON.stringify(text)} is not a SPIFFE ID (spiffe://trust-domain/path, optionally ending in /*)`;
  return wildcard ? { kind: 'prefix', prefix: `${id}/` } : { kind: 'exact', id };
}

export function principalText(p: PrincipalPattern): string {
  return p.kind === 'exact' ? p.id : `${p.prefix}*`;
}

/** Whether the peer's SPIFFE ID `id` matches `pattern`; a null id (plaintext) matches nothing. */
export function principalMatches(pattern: PrincipalPattern, id: string | null): boolean {
  if (id === null) return false;
  return pattern.kind === 'exact'
    ? id === pattern.id
    : id.startsWith(pattern.prefix) && id.length > pattern.prefix.length;
}

/** Whether any of `patterns` matches `id`. */
export function anyPrincipalMatches(patterns: readonly PrincipalPattern[], id: string | null): boolean {
  return patterns.some((p) => principalMatches(p, id));
}
