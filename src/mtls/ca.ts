// A small CA for fleets that have none: `meshctl ca init` makes a trust domain's root (EC P-256, self-signed, URI
// SAN spiffe://TD), `meshctl ca issue` short-lived workload certificates (X509-SVIDs: one URI SAN, digitalSignature,
// serverAuth + clientAuth), `meshctl ca bundle` the trust bundle. Certificates are built by @peculiar/x509 over
// Node's WebCrypto; nothing here encodes ASN.1 by hand. Only the CLI loads this file, never the proxy.
import 'reflect-metadata'; // @peculiar/x509 resolves its parsers through tsyringe, which needs it loaded first
import * as x509 from '@peculiar/x509';
import { createPrivateKey, randomBytes, webcrypto, X509Certificate, type KeyObject } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { MeshctlError } from '../errors.js';
import { describeCertificate, parsePemCertificates, uriSansOf, validityAt, validityOf } from './certificate.js';
import { writeFileAtomic, writeFileExclusive, writing } from './files.js';
import { identityPathsIn, type IdentityPaths } from './identity.js';
import { parseSpiffeId, trustDomainProblem, type SpiffeId } from '../values/spiffe-id.js';
import { DEFAULT_TRUST_DOMAIN, trustDomainId } from './spiffe-id.js';

x509.cryptoProvider.set(webcrypto as unknown as Crypto);

const ALGORITHM = { name: 'ECDSA', namedCurve: 'P-256', hash: 'SHA-256' } as const;

/** The files of a CA directory. */
export const CA_FILE_NAMES = { certificate: 'ca.pem', key: 'ca_key.pem' } as const;
export const DEFAULT_CA_TTL_MS = 10 * 365 * 24 * 3600_000;
export const DEFAULT_WORKLOAD_TTL_MS = 24 * 3600_000;
/** A workload certificate's notBefore lies this far back, for peers whose clocks run a little behind (SPIRE: 10 s). */
export const BACKDATE_MS = 60_000;

/** An explicit validity period (tests make expired and not-yet-valid certificates with it). */
export interface Validity {
  readonly notBefore: Date;
  readonly notAfter: Date;
}

export interface CaFiles {
  readonly dir: string;
  readonly trustDomain: string;
  readonly certificate: string;
  readonly key: string;
  readonly notBefore: Date;
  readonly notAfter: Date;
}

function serialNumber(): string {
  const bytes = randomBytes(16);
  bytes[0] = (bytes[0]! & 0x7f) | 0x10; // positive, and 16 bytes long as written
  return bytes.toString('hex');
}

async function keyPem(key: CryptoKey): Promise<string> {
  const der = Buffer.from(await webcrypto.subtle.exportKey('pkcs8', key));
  return createPrivateKey({ key: der, format: 'der', type: 'pkcs8' }).export({
    format: 'pem',
    type: 'pkcs8',
  }) as string;
}

async function generateKeys(): Promise<CryptoKeyPair> {
  return (await webcrypto.subtle.generateKey(ALGORITHM, true, ['sign', 'verify'])) as CryptoKeyPair;
}

/**
 * Creates a trust domain's CA in `dir` (made 0700 if missing): ca.pem (the self-signed certificate, URI SAN
 * spiffe://TD) and ca_key.pem (mode 0600). Throws SPIFFE_ID_INVALID for a malformed trust domain, CA_EXISTS,
 * writing nothing, when either file exists, and WRITE_FAILED when the files cannot be written (leaving no half CA).
 */
export async function initCa(
  dir: string,
  options: { trustDomain?: string; ttlMs?: number; validity?: Validity; now?: Date } = {},
): Promise<CaFiles> {
  const trustDomain = options.trustDomain ?? DEFAULT_TRUST_DOMAIN;
  const problem = trustDomainProblem(trustDomain);
  if (problem !== null)
    throw new MeshctlError(
      'SPIFFE_ID_INVALID',
      `--trust-domain ${JSON.stringify(trustDomain)}: ${problem}`,
      'use a DNS-like name in lowercase, e.g. prod.example.com',
    );
  const paths = { certificate: join(dir, CA_FILE_NAMES.certificate), key: join(dir, CA_FILE_NAMES.key) };
  const existing = Object.values(paths).filter((p) => existsSync(p));
  if (existing.length > 0) throw caExists(dir, existing);
  writing(`creating the CA directory ${dir}`, () => mkdirSync(dir, { recursive: true, mode: 0o700 }));
  const now = options.now ?? new Date();
  const validity = options.validity ?? {
    notBefore: new Date(now.getTime() - BACKDATE_MS),
    notAfter: new Date(now.getTime() + (options.ttlMs ?? DEFAULT_CA_TTL_MS)),
  };
  const keys = await generateKeys();
  const name = `CN=meshctl CA ${randomBytes(4).toString('hex')}, O=meshctl`;
  const cert = await x509.X509CertificateGenerator.createSelfSigned({
    serialNumber: serialNumber(),
    name,
    ...validity,
    keys,
    signingAlgorithm: ALGORITHM,
    extensions: [
      new x509.BasicConstraintsExtension(true, undefined, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true),
      new x509.SubjectAlternativeNameExtension([{ type: 'url', value: trustDomainId(trustDomain) }]),
      await x509.SubjectKeyIdentifierExtension.create(keys.publicKey),
    ],
  });
  const key = await keyPem(keys.privateKey);
  try {
    writing(`writing ${paths.key}`, () => writeFileExclusive(paths.key, key, 0o600));
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'EEXIST') throw caExists(dir, [paths.key]);
    throw error;
  }
  try {
    writing(`writing ${paths.certificate}`, () =>
      writeFileExclusive(paths.certificate, cert.toString('pem') + '\n', 0o644),
    );
  } catch (error) {
    rmSync(paths.key, { force: true }); // ours, written just now: a half CA would block the next init
    if ((error as NodeJS.ErrnoException).code === 'EEXIST') throw caExists(dir, [paths.certificate]);
    throw error;
  }
  return { dir, trustDomain, ...paths, ...validity };
}

function caExists(dir: string, files: readonly string[]): MeshctlError {
  return new MeshctlError(
    'CA_EXISTS',
    `${dir} already holds a CA (${files.join(', ')}); nothing was written`,
    'use that CA (meshctl ca issue --ca DIR), or give another directory; meshctl never overwrites a CA key',
  );
}

/** A CA read from its directory, checked: a CA certificate with one spiffe://TD URI SAN, valid now, and its key. */
export interface LoadedCa {
  readonly dir: string;
  readonly trustDomain: string;
  readonly certificate: X509Certificate;
  readonly certificatePem: string;
  readonly signingKey: CryptoKey;
}

function caInvalid(dir: string, why: string, hint: string, cause?: unknown): MeshctlError {
  return new MeshctlError('CA_INVALID', `--ca ${dir}: ${why}`, hint, cause === undefined ? undefined : { cause });
}

/** Reads the CA in `dir`. Throws CA_INVALID naming the file and what is wrong. */
export async function readCa(dir: string, now: Date = new Date()): Promise<LoadedCa> {
  const certPath = join(dir, CA_FILE_NAMES.certificate);
  const keyPath = join(dir, CA_FILE_NAMES.key);
  const read = (path: string): string => {
    try {
      return readFileSync(path, 'utf8');
    } catch (error) {
      throw caInvalid(
        dir,
        `${path} cannot be read (${(error as NodeJS.ErrnoException).code ?? String(error)})`,
        'give the directory `meshctl ca init` created (it holds ca.pem and ca_key.pem), as a user who can read the key',
        error,
      );
    }
  };
  const certificatePem = read(certPath);
  const keyText = read(keyPath);
  let certificate: X509Certificate;
  let key: KeyObject;
  try {
    const certs = parsePemCertificates(certificatePem);
    if (certs.length !== 1) throw new Error(`holds ${certs.length} certificates, expected 1`);
    certificate = certs[0]!;
    key = createPrivateKey(keyText);
  } catch (error) {
    throw caInvalid(
      dir,
      `${certPath} or ${keyPath} is malformed (${(error as Error).message})`,
      'recreate the CA',
      error,
    );
  }
  if (!certificate.ca)
    throw caInvalid(dir, `${certPath} is not a CA certificate`, 'give the directory of `meshctl ca init`');
  if (!certificate.checkPrivateKey(key))
    throw caInvalid(
      dir,
      `${keyPath} is not the key of ${certPath}`,
      'restore the key that belongs to the CA certificate',
    );
  const tds = uriSansOf(certificate)
    .map(parseSpiffeId)
    .filter((id): id is SpiffeId => typeof id !== 'string' && id.path === '');
  if (tds.length !== 1)
    throw caInvalid(
      dir,
      `${certPath} carries no single spiffe://TRUST-DOMAIN URI SAN`,
      'recreate it with meshctl ca init',
    );
  const state = validityAt(certificate, now);
  if (state !== 'valid')
    throw caInvalid(
      dir,
      `the CA certificate ${describeCertificate(certificate)} ${state === 'expired' ? `expired at ${certificate.validTo}` : `is not valid before ${certificate.validFrom}`}`,
      'create a new CA (meshctl ca init) and distribute its bundle',
    );
  if (key.asymmetricKeyType !== 'ec' || key.asymmetricKeyDetails?.namedCurve !== 'prime256v1')
    throw caInvalid(
      dir,
      `${keyPath} is not an EC P-256 key`,
      'meshctl ca issues with P-256 CAs only (meshctl ca init)',
    );
  const der = key.export({ format: 'der', type: 'pkcs8' });
  const signingKey = await webcrypto.subtle.importKey('pkcs8', der, ALGORITHM, false, ['sign']);
  return { dir, trustDomain: tds[0]!.trustDomain, certificate, certificatePem, signingKey };
}

/** The trust bundle of the CA in `dir` (its certificate, PEM). Throws CA_INVALID. */
export async function caBundle(dir: string, now: Date = new Date()): Promise<string> {
  return (await readCa(dir, now)).certificatePem;
}

export interface IssuedIdentity {
  readonly spiffeId: SpiffeId;
  readonly paths: IdentityPaths;
  readonly serialNumber: string;
  readonly notBefore: Date;
  readonly notAfter: Date;
}

/**
 * Issues a workload certificate for `id` from the CA in `caDir` with a new P-256 key, and writes it to `outDir`
 * (made if missing) as svid.pem, svid_key.pem (0600) and svid_bundle.pem, each replaced atomically (a watcher sees
 * old or new files, never a partial one). Throws SPIFFE_ID_INVALID for a malformed id, one without a path or outside
 * the CA's trust domain; CA_INVALID when the CA is unusable or would expire before the certificate; WRITE_FAILED.
 */
export async function issueIdentity(options: {
  readonly caDir: string;
  readonly id: string;
  readonly outDir: string;
  readonly ttlMs?: number;
  readonly validity?: Validity;
  readonly now?: Date;
}): Promise<IssuedIdentity> {
  const spiffeId = parseSpiffeId(options.id);
  if (typeof spiffeId === 'string')
    throw new MeshctlError(
      'SPIFFE_ID_INVALID',
      `--id ${JSON.stringify(options.id)}: ${spiffeId}`,
      'write spiffe://TRUST-DOMAIN/PATH, e.g. spiffe://prod.example.com/web',
    );
  if (spiffeId.path === '')
    throw new MeshctlError(
      'SPIFFE_ID_INVALID',
      `--id ${spiffeId.text} is a trust domain, not a workload ID`,
      `add a path: ${spiffeId.text}/NAME`,
    );
  const now = options.now ?? new Date();
  const ca = await readCa(options.caDir, now);
  if (spiffeId.trustDomain !== ca.trustDomain)
    throw new MeshctlError(
      'SPIFFE_ID_INVALID',
      `--id ${spiffeId.text} is in trust domain ${spiffeId.trustDomain}, the CA in ${options.caDir} issues for ${ca.trustDomain}`,
      `use spiffe://${ca.trustDomain}/PATH, or the CA of ${spiffeId.trustDomain}`,
    );
  const validity = options.validity ?? {
    notBefore: new Date(now.getTime() - BACKDATE_MS),
    notAfter: new Date(now.getTime() + (options.ttlMs ?? DEFAULT_WORKLOAD_TTL_MS)),
  };
  const caValidity = validityOf(ca.certificate);
  if (options.validity === undefined && validity.notAfter > caValidity.notAfter)
    throw caInvalid(
      options.caDir,
      `the CA expires at ${caValidity.notAfter.toISOString()}, before the certificate would (${validity.notAfter.toISOString()})`,
      'issue with a shorter --ttl, or create a new CA',
    );
  const keys = await generateKeys();
  const caPeculiar = new x509.X509Certificate(ca.certificate.raw);
  const serial = serialNumber();
  const cert = await x509.X509CertificateGenerator.create({
    serialNumber: serial,
    subject: 'O=meshctl',
    issuer: caPeculiar.subject,
    ...validity,
    publicKey: keys.publicKey,
    signingKey: ca.signingKey,
    signingAlgorithm: ALGORITHM,
    extensions: [
      new x509.BasicConstraintsExtension(false, undefined, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature, true),
      new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.serverAuth, x509.ExtendedKeyUsage.clientAuth], false),
      new x509.SubjectAlternativeNameExtension([{ type: 'url', value: spiffeId.text }], false),
      await x509.SubjectKeyIdentifierExtension.create(keys.publicKey),
      await x509.AuthorityKeyIdentifierExtension.create(caPeculiar.publicKey),
    ],
  });
  const paths = identityPathsIn(options.outDir);
  const key = await keyPem(keys.privateKey);
  // Bundle and key first, the certificate last: a watcher reloading between two renames finds a key that is not the
  // certificate's, keeps the old identity, and loads the new one on the certificate's rename.
  writing(`writing the identity into ${options.outDir}`, () => {
    mkdirSync(options.outDir, { recursive: true, mode: 0o755 });
    writeFileAtomic(paths.bundle, ca.certificatePem, 0o644);
    writeFileAtomic(paths.key, key, 0o600);
    writeFileAtomic(paths.certificate, cert.toString('pem') + '\n', 0o644);
  });
  return { spiffeId, paths, serialNumber: serial, ...validity };
}
