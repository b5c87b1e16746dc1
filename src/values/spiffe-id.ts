// SPIFFE IDs (https://github.com/spiffe/spiffe/blob/main/standards/SPIFFE-ID.md): `spiffe://<trust-domain>/<path>`,
// validated strictly (the config's principals and identities, `meshctl ca`, and peers' certificates alike), and the
// patterns config writes for them (an exact ID, or a trailing `/*` matching every ID under that path). Pure string
// work: certificates are read in src/mtls.

/** An exact SPIFFE ID, or every ID under `prefix` (the pattern `prefix/*`). */
export type PrincipalPattern =
  { readonly kind: 'exact'; readonly id: string } | { readonly kind: 'prefix'; readonly prefix: string };

/** A validated SPIFFE ID: `text` is `spiffe://${trustDomain}${path}`; `path` is '' or starts with '/'. */
export interface SpiffeId {
  readonly text: string;
  readonly trustDomain: string;
  readonly path: string;
}

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

/** Whether `text` is a principal (a SPIFFE ID pattern) rather than a CIDR or anything else. */
export function isPrincipalText(text: string): boolean {
  return text.startsWith('spiffe://');
}

/** The trust domain of a SPIFFE ID, or null when `id` is not one. */
export function trustDomainOf(id: string): string | null {
  const parsed = parseSpiffeId(id);
  return typeof parsed === 'string' ? null : parsed.trustDomain;
}

/** A principal pattern, or a problem naming what is wrong with `text`. */
export function parsePrincipal(text: string): PrincipalPattern | string {
  const wildcard = text.endsWith('/*');
  const id = wildcard ? text.slice(0, -2) : text;
  const problem = spiffeIdProblem(id);
  if (problem !== null)
    return `${JSON.stringify(text.length > 120 ? `${text.slice(0, 120)}…` : text)} is not a SPIFFE ID (spiffe://trust-domain/path, optionally ending in /*): ${problem}`;
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
