// Verifying a peer's certificate chain against a trust bundle, the SPIFFE way (go-spiffe's x509svid.Verify): one
// URI SAN holding a SPIFFE workload ID, of the bundle's trust domain, a chain to a CA of the bundle, every
// certificate valid now. The result is a verdict with a reason code, never an exception, so the tunnel can log,
// count and refuse by reason.
import { X509Certificate } from 'node:crypto';
import type { DetailedPeerCertificate, PeerCertificate, TLSSocket } from 'node:tls';
import { buildChain, describeCertificate, uriSansOf, validityAt } from './certificate.js';
import type { PeerReason } from './reasons.js';
import { parseSpiffeId, type SpiffeId } from '../values/spiffe-id.js';
import { identityAllowed, type IdentityPattern } from './spiffe-id.js';

/** Which side the peer is on: a `server` must allow serverAuth, a `client` clientAuth (when it lists usages). */
export type PeerRole = 'server' | 'client';

/** What a peer certificate is checked against: the trust domain's CA certificates. */
export interface TrustBundle {
  readonly trustDomain: string;
  readonly certificates: readonly X509Certificate[];
}

export type PeerVerdict =
  | {
      readonly ok: true;
      readonly spiffeId: SpiffeId;
      readonly notAfter: Date;
      readonly chain: readonly X509Certificate[];
    }
  | { readonly ok: false; readonly reason: PeerReason; readonly detail: string; readonly spiffeId: string | null };

/**
 * A peer's certificates as Node's TLS gives them: `socket.getPeerCertificate(true)` (the leaf, linked to its
 * issuers), or the chain as DER buffers or X509Certificates, leaf first.
 */
export type PeerChain = DetailedPeerCertificate | PeerCertificate | readonly (Buffer | X509Certificate)[];

export interface VerifyOptions {
  readonly role: PeerRole;
  readonly now?: Date;
  /** The IDs the peer may present (`services[].identities`); absent or empty: any workload ID of the trust domain. */
  readonly allowed?: readonly IdentityPattern[];
}

const EKU = { server: '1.3.6.1.5.5.7.3.1', client: '1.3.6.1.5.5.7.3.2' } as const;

function fail(reason: PeerReason, detail: string, spiffeId: string | null = null): PeerVerdict {
  return { ok: false, reason, detail, spiffeId };
}

/** The DER certificates of a peer chain, leaf first; an empty list when the peer sent none. */
export function peerChainDer(peer: PeerChain): Buffer[] {
  if (Array.isArray(peer)) return peer.map((c: Buffer | X509Certificate) => (Buffer.isBuffer(c) ? c : c.raw));
  const out: Buffer[] = [];
  let cert = peer as Partial<DetailedPeerCertificate>;
  // getPeerCertificate(true) links each certificate to its issuer; a self-signed root links to itself.
  while (cert !== undefined && Buffer.isBuffer(cert.raw) && out.length < 16) {
    if (out.some((d) => d.equals(cert.raw!))) break;
    out.push(cert.raw);
    cert = cert.issuerCertificate as Partial<DetailedPeerCertificate>;
  }
  return out;
}

/** The peer's one SPIFFE workload ID, or why there is none. */
export function spiffeIdOfCertificate(cert: X509Certificate): SpiffeId | { readonly problem: string } {
  let uris: string[];
  try {
    uris = uriSansOf(cert);
  } catch (error) {
    return { problem: `its subjectAltName cannot be read (${(error as Error).message})` };
  }
  if (uris.length === 0) return { problem: 'it has no URI SAN' };
  if (uris.length > 1)
    return { problem: `it has ${uris.length} URI SANs (${uris.join(', ')}); a SPIFFE certificate has one` };
  const id = parseSpiffeId(uris[0]!);
  if (typeof id === 'string') return { problem: `its URI SAN ${JSON.stringify(uris[0])} is not a SPIFFE ID: ${id}` };
  if (id.path === '') return { problem: `its URI SAN ${id.text} is a trust domain, not a workload ID` };
  return id;
}

/** Checks a peer's chain against `bundle`: a verdict with the SPIFFE ID, or a reason and a detail naming the value. */
export function verifyPeer(peer: PeerChain, bundle: TrustBundle, options: VerifyOptions): PeerVerdict {
  const now = options.now ?? new Date();
  const der = peerChainDer(peer);
  if (der.length === 0) return fail('no-certificate', 'the peer presented no certificate');
  let certs: X509Certificate[];
  try {
    certs = der.map((d) => new X509Certificate(d));
  } catch (error) {
    return fail('bad-certificate', `a certificate of the peer cannot be parsed: ${(error as Error).message}`);
  }
  const leaf = certs[0]!;
  const id = spiffeIdOfCertificate(leaf);
  if ('problem' in id) return fail('no-spiffe-id', `${describeCertificate(leaf)}: ${id.problem}`);
  if (id.trustDomain !== bundle.trustDomain)
    return fail('wrong-trust-domain', `${id.text} is not in trust domain ${bundle.trustDomain}`, id.text);
  if (leaf.ca) return fail('bad-certificate', `${id.text}: the certificate is a CA certificate, not a leaf`, id.text);
  const usages = leaf.keyUsage; // Node names the extended key usage OIDs keyUsage
  if (usages !== undefined && usages.length > 0 && !usages.includes(EKU[options.role]))
    return fail(
      'bad-certificate',
      `${id.text}: its extended key usage (${usages.join(', ')}) lacks ${options.role === 'server' ? 'serverAuth' : 'clientAuth'}`,
      id.text,
    );
  const chain = buildChain(leaf, certs.slice(1), bundle.certificates);
  if (chain === null)
    return fail(
      'untrusted-chain',
      `${id.text}: no chain from ${describeCertificate(leaf)} to a CA of the ${bundle.trustDomain} bundle (${bundle.certificates.length} certificates)`,
      id.text,
    );
  for (const cert of chain) {
    const state = validityAt(cert, now);
    if (state === 'valid') continue;
    const which = cert === leaf ? 'the certificate' : `its issuer ${describeCertificate(cert)}`;
    const when = state === 'expired' ? `expired at ${cert.validTo}` : `is not valid before ${cert.validFrom}`;
    return fail(state, `${id.text}: ${which} ${when} (now ${now.toISOString()})`, id.text);
  }
  if (!identityAllowed(options.allowed ?? [], id.text, bundle.trustDomain))
    return fail('identity-not-allowed', `${id.text} is not among the identities allowed`, id.text);
  return { ok: true, spiffeId: id, notAfter: new Date(leaf.validTo), chain };
}

/** OpenSSL's verification errors (tls `authorizationError`) as reasons. */
const OPENSSL_REASONS: Readonly<Record<string, PeerReason>> = {
  CERT_HAS_EXPIRED: 'expired',
  CERT_NOT_YET_VALID: 'not-yet-valid',
};

/**
 * For a tunnel socket after its handshake (made with `requestCert: true`, `rejectUnauthorized: false`, `ca` the
 * bundle, and `checkServerIdentity: () => undefined` on the client, since SPIFFE names are URIs, not host names):
 * verifyPeer on its peer chain, and OpenSSL's own verdict (`socket.authorized`) on top — a chain either of them
 * refuses is refused.
 */
export function verifyTlsPeer(
  socket: Pick<TLSSocket, 'getPeerCertificate' | 'authorized' | 'authorizationError'>,
  bundle: TrustBundle,
  options: VerifyOptions,
): PeerVerdict {
  const verdict = verifyPeer(socket.getPeerCertificate(true), bundle, options);
  if (!verdict.ok || socket.authorized) return verdict;
  const code = String(socket.authorizationError ?? 'unknown');
  return fail(
    OPENSSL_REASONS[code] ?? 'untrusted-chain',
    `${verdict.spiffeId.text}: OpenSSL refused the chain (${code})`,
    verdict.spiffeId.text,
  );
}
