// Reading X.509 with Node's own parser (crypto.X509Certificate): PEM files with several certificates, the URI SANs
// of a certificate, its validity as dates, and the chain from a leaf to a CA of a bundle. No ASN.1 is parsed here:
// OpenSSL (through Node) parses, checks issuers (names, key identifiers, keyCertSign) and verifies signatures.
import { X509Certificate } from 'node:crypto';

const PEM_CERTIFICATE = /-----BEGIN CERTIFICATE-----[\s\S]*?-----END CERTIFICATE-----/g;

/** Every CERTIFICATE block of a PEM text, parsed, in file order; throws (Node's error) on a malformed block. */
export function parsePemCertificates(pem: string): X509Certificate[] {
  return [...pem.matchAll(PEM_CERTIFICATE)].map((m) => new X509Certificate(m[0]));
}

/** One general name of a subjectAltName, as Node prints it (`URI`, `DNS`, `IP Address`, `email`, ...). */
export interface AltName {
  readonly type: string;
  readonly value: string;
}

/**
 * The subjectAltName entries of a certificate. Node prints them as `TYPE:value, TYPE:value`, and since the fix
 * for CVE-2021-44532 it JSON-quotes a value holding a comma, a quote or other special characters
 * (`URI:"spiffe://a, URI:spiffe://b"`), so a crafted name cannot pass for two; this reads both forms.
 */
export function altNamesOf(cert: X509Certificate): AltName[] {
  const text = cert.subjectAltName;
  if (text === undefined || text === '') return [];
  const names: AltName[] = [];
  let i = 0;
  while (i < text.length) {
    const colon = text.indexOf(':', i);
    if (colon === -1) break;
    const type = text.slice(i, colon);
    let j = colon + 1;
    let value: string;
    if (text[j] === '"') {
      let k = j + 1;
      while (k < text.length && text[k] !== '"') k += text[k] === '\\' ? 2 : 1;
      value = JSON.parse(text.slice(j, k + 1)) as string;
      j = k + 1;
    } else {
      const end = text.indexOf(', ', j);
      value = text.slice(j, end === -1 ? text.length : end);
      j = end === -1 ? text.length : end;
    }
    names.push({ type, value });
    i = text.startsWith(', ', j) ? j + 2 : j;
  }
  return names;
}

/** The URI SAN values of a certificate (a SPIFFE certificate has exactly one, its SPIFFE ID). */
export function uriSansOf(cert: X509Certificate): string[] {
  return altNamesOf(cert)
    .filter((n) => n.type === 'URI')
    .map((n) => n.value);
}

/** The validity period as dates (Node 20's X509Certificate gives text only: `Dec  5 21:18:53 2026 GMT`). */
export function validityOf(cert: X509Certificate): { readonly notBefore: Date; readonly notAfter: Date } {
  return { notBefore: new Date(cert.validFrom), notAfter: new Date(cert.validTo) };
}

/** Where `now` falls against a certificate's validity period. */
export function validityAt(cert: X509Certificate, now: Date): 'valid' | 'expired' | 'not-yet-valid' {
  const { notBefore, notAfter } = validityOf(cert);
  if (!(now.getTime() >= notBefore.getTime())) return 'not-yet-valid';
  if (!(now.getTime() <= notAfter.getTime())) return 'expired';
  return 'valid';
}

/** A short name for a certificate in messages: its subject on one line and serial. */
export function describeCertificate(cert: X509Certificate): string {
  return `${cert.subject.replace(/\n/g, ', ')} (serial ${cert.serialNumber})`;
}

/** The longest chain followed from a leaf to a trust anchor (leaf, intermediates, root). */
export const MAX_CHAIN_LENGTH = 8;

/**
 * The chain from `leaf` through `intermediates` (any order; extra ones ignored) to a CA certificate of `roots`,
 * leaf first and the root last, or null when there is none. Each step needs the issuer to be a CA whose name and key
 * identifier match (`checkIssued`, which also refuses an issuer whose key usage lacks keyCertSign) and whose key
 * verifies the signature. Validity in time is not checked here (see verifyChainAt).
 */
export function buildChain(
  leaf: X509Certificate,
  intermediates: readonly X509Certificate[],
  roots: readonly X509Certificate[],
): X509Certificate[] | null {
  const chain = [leaf];
  let current = leaf;
  while (chain.length < MAX_CHAIN_LENGTH) {
    const issues = (issuer: X509Certificate) =>
      issuer.ca && current.checkIssued(issuer) && current.verify(issuer.publicKey);
    const root = roots.find(issues);
    if (root !== undefined) return [...chain, root];
    const next = intermediates.find((c) => !chain.some((d) => d.raw.equals(c.raw)) && issues(c));
    if (next === undefined) return null;
    chain.push(next);
    current = next;
  }
  return null;
}
