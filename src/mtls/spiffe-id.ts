// SPIFFE IDs (https://github.com/spiffe/spiffe/blob/main/standards/SPIFFE-ID.md): `spiffe://<trust-domain>/<path>`,
// validated strictly, and the identity patterns `services[].identities` and principals use (an exact ID, or a
// trailing `/*` for every ID below a path). Pure string work, no imports: certificates are read in certificate.ts.

/** A validated SPIFFE ID: `text` is `spiffe://${trustDomain}${path}`; `path` is '' or starts with '/'. */
export interface SpiffeId {
  readonly text: string;
  readonly trustDomain: string;
  readonly path: string;
}

/** The trust domain `meshctl ca init` creates without --trust-domain (`.internal` is reserved for private use). */
export const DEFAULT_TRUST_DOMAIN = 'meshctl.internal';

/** SPIFFE ID §2.3: IDs up to 2048 bytes must work; longer ones are refused here. */
export const MAX_SPIFFE_ID_BYTES = 2048;
/** SPIFFE ID §2.1: a trust domain name is at most 255 characters. */
export const MAX_TRUST_DOMAIN_CHARS = 255;

const TRUST_DOMAIN_CHARS = /^[a-z0-9._-]+$/;
const SEGMENT_CHARS = /^[A-Za-z0-9._-]+$/;

/** What is wrong with a trust domain name, or null when it is one (lowercase letters, digits, `.`, `-`, `_`). */
export function trustDomainProblem(name: string): string | null {
  if (name === '') return 'the trust domain is empty';
  if (name.length > MAX_TRUST_DOMAIN_CHARS)
    return `the trust domain has ${name.length} characters (at most ${MAX_TRUST_DOMAIN_CHARS})`;
  if (!TRUST_DOMAIN_CHARS.test(name)) {
    const bad = [...name].find((c) => !/[a-z0-9._-]/.test(c))!;
    const why =
      bad === ':'
        ? ' (a port is not allowed)'
        : bad === '@'
          ? ' (userinfo is not allowed)'
          : /[A-Z]/.test(bad)
            ? ' (trust domains are lowercase)'
            : '';
    return `the trust domain contains ${JSON.stringify(bad)}${why}; allowed: a-z 0-9 . - _`;
  }
  return null;
}

/** What is wrong with `text` as a SPIFFE ID, or null when it is one. Never throws, whatever the input. */
export function spiffeIdProblem(text: string): string | null {
  if (typeof text !== 'string') return 'not a string';
  const bytes = Buffer.byteLength(text, 'utf8');
  if (bytes > MAX_SPIFFE_ID_BYTES) return `it is ${bytes} bytes long (at most ${MAX_SPIFFE_ID_BYTES})`;
  if (!text.startsWith('spiffe://')) {
    return /^spiffe:\/\//i.test(text)
      ? 'the scheme must be lowercase "spiffe://"'
      : 'it does not start with "spiffe://"';
  }
  const rest = text.slice('spiffe://'.length);
  if (rest.includes('?')) return 'a query ("?") is not allowed';
  if (rest.includes('#')) return 'a fragment ("#") is not allowed';
  const slash = rest.indexOf('/');
  const trustDomain = slash === -1 ? rest : rest.slice(0, slash);
  const tdProblem = trustDomainProblem(trustDomain);
  if (tdProblem !== null) return tdProblem;
  if (slash === -1) return null;
  const segments = rest.slice(slash + 1).split('/');
  for (const [i, segment] of segments.entries()) {
    if (segment === '')
      return i === segments.length - 1 ? 'the path ends with "/"' : 'the path has an empty segment ("//")';
    if (segment === '.' || segment === '..') return `the path has a ${JSON.stringify(segment)} segment`;
    if (!SEGMENT_CHARS.test(segment)) {
      const bad = [...segment].find((c) => !/[A-Za-z0-9._-]/.test(c))!;
      return `the path contains ${JSON.stringify(bad)}; allowed in a segment: A-Z a-z 0-9 . - _`;
    }
  }
  return null;
}

/** `text` as a SpiffeId, or a problem (a string saying what is wrong). */
export function parseSpiffeId(text: string): SpiffeId | string {
  const problem = spiffeIdProblem(text);
  if (problem !== null) return problem;
  const rest = text.slice('spiffe://'.length);
  const slash = rest.indexOf('/');
  return slash === -1
    ? { text, trustDomain: rest, path: '' }
    : { text, trustDomain: rest.slice(0, slash), path: rest.slice(slash) };
}

/** The SPIFFE ID of a trust domain itself (`spiffe://td`), as a CA certificate carries it. */
export function trustDomainId(trustDomain: string): string {
  return `spiffe://${trustDomain}`;
}

/**
 * An identity pattern: an exact SPIFFE ID, or every ID strictly below a path (`spiffe://td/ns/*`: `prefix` is
 * `spiffe://td/ns/`, matching `spiffe://td/ns/a` and `spiffe://td/ns/a/b`, not `spiffe://td/ns` itself).
 * `spiffe://td/*` is every workload ID of trust domain td.
 */
export type IdentityPattern =
  { readonly kind: 'exact'; readonly id: string } | { readonly kind: 'prefix'; readonly prefix: string };

/** `text` (a SPIFFE ID, optionally ending in `/*`) as an IdentityPattern, or a problem. */
export function parseIdentityPattern(text: string): IdentityPattern | string {
  if (typeof text !== 'string') return 'not a string';
  const wildcard = text.endsWith('/*');
  const id = wildcard ? text.slice(0, -2) : text;
  const problem = spiffeIdProblem(id);
  if (problem !== null)
    return `${JSON.stringify(text.length > 120 ? `${text.slice(0, 120)}…` : text)} is not a SPIFFE ID pattern: ${problem}`;
  return wildcard ? { kind: 'prefix', prefix: `${id}/` } : { kind: 'exact', id };
}

/** The text a pattern was written as. */
export function identityPatternText(pattern: IdentityPattern): string {
  return pattern.kind === 'exact' ? pattern.id : `${pattern.prefix}*`;
}

/** Whether the SPIFFE ID `id` matches `pattern`; null (no identity: plaintext) matches nothing. */
export function identityMatches(pattern: IdentityPattern, id: string | null): boolean {
  if (id === null) return false;
  return pattern.kind === 'exact'
    ? id === pattern.id
    : id.length > pattern.prefix.length && id.startsWith(pattern.prefix);
}

/**
 * Whether `id` is one a service may present: with `patterns` empty, any workload ID of `trustDomain` (the default
 * of `services[].identities`: `spiffe://td/*`); otherwise one matching any pattern.
 */
export function identityAllowed(patterns: readonly IdentityPattern[], id: string | null, trustDomain: string): boolean {
  if (id === null) return false;
  if (patterns.length === 0) return id.startsWith(`spiffe://${trustDomain}/`);
  return patterns.some((p) => identityMatches(p, id));
}
