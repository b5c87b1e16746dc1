// This proxy's own identity: the certificate chain, key and trust bundle files (the shape spiffe-helper, Vault
// agent, cert-manager's csi-driver and `step` write), loaded and checked as a peer would check them, ready for
// tls.createSecureContext. The key may come as a systemd credential (`credential:NAME`, LoadCredential=), so the
// proxy user never needs to read a root-owned key file.
import { createHash, createPrivateKey, X509Certificate, type KeyObject } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { isAbsolute, join } from 'node:path';
import type { SecureContextOptions } from 'node:tls';
import { describeCertificate, parsePemCertificates, uriSansOf, validityOf } from './certificate.js';
import { IdentityError } from './reasons.js';
import { parseSpiffeId, type SpiffeId } from '../values/spiffe-id.js';
import { verifyPeer, type TrustBundle } from './verify.js';

/** Where the identity's files are, as configured (`mtls.identity.certificate|key|bundle`). */
export interface IdentityPaths {
  /** PEM: the leaf certificate first, then any intermediates. */
  readonly certificate: string;
  /** PEM private key (PKCS#8 `PRIVATE KEY`, SEC1 `EC PRIVATE KEY` or PKCS#1), or `credential:NAME`. */
  readonly key: string;
  /** PEM: the trust domain's CA certificates. */
  readonly bundle: string;
}

/** The file names `meshctl ca issue` writes (those of SPIRE's spiffe-helper). */
export const IDENTITY_FILE_NAMES = {
  certificate: 'svid.pem',
  key: 'svid_key.pem',
  bundle: 'svid_bundle.pem',
} as const;

/** The identity files in directory `dir` under the names `meshctl ca issue` writes. */
export function identityPathsIn(dir: string): IdentityPaths {
  return {
    certificate: join(dir, IDENTITY_FILE_NAMES.certificate),
    key: join(dir, IDENTITY_FILE_NAMES.key),
    bundle: join(dir, IDENTITY_FILE_NAMES.bundle),
  };
}

/** The prefix naming a systemd credential instead of a path: `credential:NAME` → `$CREDENTIALS_DIRECTORY/NAME`. */
export const CREDENTIAL_PREFIX = 'credential:';

/**
 * Where the key comes from: a file, or a systemd credential NAME with the file systemd loads it from (`source`:
 * `credential:NAME:/path/to/key`), or null for `credential:NAME`, which systemd looks up in its credential stores
 * (/etc/credstore/NAME, /run/credstore/NAME, /usr/lib/credstore/NAME; systemd ≥ 250).
 */
export type KeySource =
  | { readonly kind: 'file'; readonly path: string }
  | { readonly kind: 'credential'; readonly name: string; readonly source: string | null };

function keyRefused(configured: string, why: string, hint: string): IdentityError {
  return new IdentityError('unreadable', `mtls.identity.key ${JSON.stringify(configured)}: ${why}`, hint);
}

/** The configured key (`mtls.identity.key`) as a KeySource. Throws IDENTITY_INVALID (`unreadable`) when malformed. */
export function parseKeySource(configured: string): KeySource {
  if (!configured.startsWith(CREDENTIAL_PREFIX)) {
    if (!isAbsolute(configured))
      throw keyRefused(
        configured,
        'a relative path',
        `give an absolute path, or ${CREDENTIAL_PREFIX}NAME for a systemd credential (LoadCredential=NAME)`,
      );
    return { kind: 'file', path: configured };
  }
  const rest = configured.slice(CREDENTIAL_PREFIX.length);
  const colon = rest.indexOf(':');
  const name = colon === -1 ? rest : rest.slice(0, colon);
  const source = colon === -1 ? null : rest.slice(colon + 1);
  // systemd's credential names: a valid file name, no "/" (and no ":", which separates the source here).
  if (name === '' || name === '.' || name === '..' || name.includes('/') || name.includes('\0') || name.length > 255)
    throw keyRefused(
      configured,
      `${JSON.stringify(name)} is not a credential name`,
      `write ${CREDENTIAL_PREFIX}NAME or ${CREDENTIAL_PREFIX}NAME:/path/to/key, NAME a plain file name`,
    );
  if (source !== null && (!isAbsolute(source) || /[\s\0]/.test(source)))
    throw keyRefused(
      configured,
      `the credential's source ${JSON.stringify(source)} is not an absolute path without spaces`,
      `write ${CREDENTIAL_PREFIX}${name}:/path/to/key`,
    );
  return { kind: 'credential', name, source };
}

/**
 * The file a configured key names: its path, or for a credential the file NAME in the directory systemd passes as
 * $CREDENTIALS_DIRECTORY. Throws IDENTITY_INVALID (`unreadable`) for a malformed key (parseKeySource), and for a
 * credential when the variable is unset.
 */
export function resolveKeyPath(configured: string, env: NodeJS.ProcessEnv = process.env): string {
  const key = parseKeySource(configured);
  if (key.kind === 'file') return key.path;
  const dir = env.CREDENTIALS_DIRECTORY;
  if (dir === undefined || dir === '')
    throw keyRefused(
      configured,
      'names a systemd credential, but $CREDENTIALS_DIRECTORY is not set (not started by systemd with LoadCredential=)',
      `run the proxy from its unit (meshctl service install writes LoadCredential=${key.name}${key.source === null ? '' : `:${key.source}`}), or give the key's path`,
    );
  return join(dir, key.name);
}

/**
 * The `LoadCredential=` line a unit needs for a configured key, or null for a key file (or none): `NAME` (systemd
 * looks it up in its credential stores) or `NAME:/path/to/key`. Throws like parseKeySource.
 */
export function loadCredentialSetting(configured: string | null): string | null {
  if (configured === null) return null;
  const key = parseKeySource(configured);
  if (key.kind === 'file') return null;
  return `LoadCredential=${key.name}${key.source === null ? '' : `:${key.source}`}`;
}

/** A loaded, checked identity. Immutable; a rotation makes a new one. */
export interface Identity {
  readonly spiffeId: SpiffeId;
  readonly trustDomain: string;
  /** The leaf certificate, and the chain as presented (leaf first). */
  readonly certificate: X509Certificate;
  readonly chain: readonly X509Certificate[];
  readonly bundle: TrustBundle;
  readonly notBefore: Date;
  readonly notAfter: Date;
  /** For tls.createSecureContext / tls.connect / tls.createServer: this identity's chain and key, the bundle as CAs. */
  readonly secureContext: Readonly<Required<Pick<SecureContextOptions, 'cert' | 'key' | 'ca'>>>;
  /** The files it was read from (the key's as resolved: a credential's real path). */
  readonly paths: IdentityPaths;
  /** sha256 over the three files' bytes: equal digests, same identity (the watcher skips a reload then). */
  readonly digest: string;
}

/** The raw bytes of the three files (the key's path already resolved). Throws IDENTITY_INVALID `unreadable`. */
export function readIdentityFiles(paths: IdentityPaths): { certificate: string; key: string; bundle: string } {
  const read = (what: keyof IdentityPaths): string => {
    try {
      return readFileSync(paths[what], 'utf8');
    } catch (error) {
      const code = (error as NodeJS.ErrnoException).code ?? String(error);
      throw new IdentityError(
        'unreadable',
        `mtls.identity.${what} ${paths[what]} cannot be read (${code})`,
        code === 'EACCES'
          ? `the proxy user cannot read it: make it readable to that user${what === 'key' ? `, or pass the key as a systemd credential (${CREDENTIAL_PREFIX}NAME)` : ''}`
          : 'check the path, and that the tool writing the identity (meshctl ca issue, spiffe-helper, cert-manager) has run',
        { cause: error },
      );
    }
  };
  return { certificate: read('certificate'), key: read('key'), bundle: read('bundle') };
}

function malformed(what: keyof IdentityPaths, path: string, why: string, cause?: unknown): IdentityError {
  return new IdentityError(
    'malformed',
    `mtls.identity.${what} ${path}: ${why}`,
    `it must be PEM (${what === 'key' ? 'a private key' : 'certificates'})`,
    { cause },
  );
}

function parseCertificates(what: 'certificate' | 'bundle', path: string, pem: string): X509Certificate[] {
  let certs: X509Certificate[];
  try {
    certs = parsePemCertificates(pem);
  } catch (error) {
    throw malformed(what, path, `a certificate cannot be parsed (${(error as Error).message})`, error);
  }
  if (certs.length === 0) throw malformed(what, path, 'holds no PEM CERTIFICATE block');
  return certs;
}

/** The trust domain a bundle declares: the one of its CAs' `spiffe://td` URI SANs, or `fallback` when none has one. */
function bundleTrustDomain(path: string, certs: readonly X509Certificate[], fallback: string): string {
  const declared = new Set<string>();
  for (const cert of certs)
    for (const uri of uriSansOf(cert)) {
      const id = parseSpiffeId(uri);
      if (typeof id !== 'string' && id.path === '') declared.add(id.trustDomain);
    }
  if (declared.size > 1)
    throw new IdentityError(
      'wrong-trust-domain',
      `mtls.identity.bundle ${path} holds CAs of several trust domains (${[...declared].join(', ')})`,
      'give the bundle of this proxy’s trust domain only',
    );
  return declared.size === 1 ? [...declared][0]! : fallback;
}

/** sha256 over the three files' bytes (Identity.digest). */
export function identityDigest(files: { certificate: string; key: string; bundle: string }): string {
  return createHash('sha256')
    .update(files.certificate)
    .update('\0')
    .update(files.key)
    .update('\0')
    .update(files.bundle)
    .digest('hex');
}

/**
 * Parses and checks identity files already read: the key is the leaf certificate's, the leaf carries exactly one
 * SPIFFE workload ID, its chain leads to a CA of the bundle, and every certificate of it is valid at `now`.
 * Throws IdentityError (IDENTITY_INVALID, or IDENTITY_EXPIRED for `expired` / `not-yet-valid`) with the reason.
 */
export function checkIdentity(
  files: { certificate: string; key: string; bundle: string },
  paths: IdentityPaths,
  now: Date = new Date(),
): Identity {
  const chain = parseCertificates('certificate', paths.certificate, files.certificate);
  const bundleCerts = parseCertificates('bundle', paths.bundle, files.bundle);
  const leaf = chain[0]!;
  let key: KeyObject;
  try {
    key = createPrivateKey(files.key);
  } catch (error) {
    throw malformed('key', paths.key, `not a PEM private key (${(error as Error).message})`, error);
  }
  if (!leaf.checkPrivateKey(key))
    throw new IdentityError(
      'key-mismatch',
      `mtls.identity.key ${paths.key} is not the key of the certificate ${describeCertificate(leaf)} in ${paths.certificate}`,
      'the files come from different issuances: write the certificate and its key together (meshctl ca issue writes both)',
    );
  const claimed = uriSansOf(leaf)
    .map(parseSpiffeId)
    .find((id) => typeof id !== 'string');
  const trustDomain = bundleTrustDomain(paths.bundle, bundleCerts, claimed?.trustDomain ?? '');
  const bundle: TrustBundle = { trustDomain, certificates: bundleCerts };
  // Our certificate is presented both ways (client and server): check it as each side's peer would.
  for (const role of ['server', 'client'] as const) {
    const verdict = verifyPeer(chain, bundle, { role, now });
    if (verdict.ok) continue;
    if (verdict.reason === 'identity-not-allowed' || verdict.reason === 'no-certificate') break; // not asked for
    throw new IdentityError(
      verdict.reason,
      `mtls.identity.certificate ${paths.certificate}: ${verdict.detail}`,
      identityHint(verdict.reason, paths),
    );
  }
  const spiffeId = claimed!;
  const { notBefore, notAfter } = validityOf(leaf);
  const digest = identityDigest(files);
  return {
    spiffeId,
    trustDomain,
    certificate: leaf,
    chain,
    bundle,
    notBefore,
    notAfter,
    secureContext: { cert: files.certificate, key: files.key, ca: files.bundle },
    paths,
    digest,
  };
}

function identityHint(reason: string, paths: IdentityPaths): string {
  switch (reason) {
    case 'expired':
      return 'issue a new certificate (meshctl ca issue, or check that the rotating agent runs); meshctl never uses an expired one';
    case 'not-yet-valid':
      return "check this host's clock (timedatectl), or wait until the certificate's notBefore";
    case 'untrusted-chain':
      return `${paths.bundle} must hold the CA that issued the certificate (meshctl ca bundle --ca DIR prints it)`;
    case 'wrong-trust-domain':
      return 'issue the certificate in the trust domain of the bundle, or give the bundle of its trust domain';
    case 'no-spiffe-id':
      return 'issue a certificate with exactly one URI SAN spiffe://TRUST-DOMAIN/PATH (meshctl ca issue --id …)';
    default:
      return 'issue a workload certificate (not a CA) allowing serverAuth and clientAuth (meshctl ca issue does)';
  }
}

/** Reads and checks the identity at `paths` (the key's `credential:NAME` resolved against `env`). */
export function loadIdentity(paths: IdentityPaths, options: { now?: Date; env?: NodeJS.ProcessEnv } = {}): Identity {
  const resolved = { ...paths, key: resolveKeyPath(paths.key, options.env) };
  return checkIdentity(readIdentityFiles(resolved), resolved, options.now);
}
