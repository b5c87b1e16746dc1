// Certificates meshctl ca would never issue, for the refusal tests: built with the same @peculiar/x509 over
// WebCrypto (no DER by hand), so each differs from a good one in exactly the field a test names.
import 'reflect-metadata';
import * as x509 from '@peculiar/x509';
import { createPrivateKey, webcrypto, X509Certificate } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

x509.cryptoProvider.set(webcrypto as unknown as Crypto);
const ALG = { name: 'ECDSA', namedCurve: 'P-256', hash: 'SHA-256' } as const;

export interface TestCert {
  readonly cert: X509Certificate;
  readonly pem: string;
  readonly keyPem: string;
  readonly keys: CryptoKeyPair;
  readonly peculiar: x509.X509Certificate;
}

export interface CertSpec {
  /** URI SANs (none: no SAN extension). */
  readonly uris?: readonly string[];
  readonly ca?: boolean;
  readonly eku?: readonly string[] | null;
  readonly notBefore?: Date;
  readonly notAfter?: Date;
  /** The issuer; absent: self-signed. */
  readonly issuer?: TestCert;
  readonly name?: string;
}

let counter = 0;

/** A certificate as `spec` says, with a fresh P-256 key. */
export async function makeCert(spec: CertSpec): Promise<TestCert> {
  const keys = (await webcrypto.subtle.generateKey(ALG, true, ['sign', 'verify'])) as CryptoKeyPair;
  const name = spec.name ?? `CN=test ${++counter}, O=meshctl-test`;
  const extensions: x509.Extension[] = [
    new x509.BasicConstraintsExtension(spec.ca === true, undefined, true),
    new x509.KeyUsagesExtension(
      spec.ca === true
        ? x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign
        : x509.KeyUsageFlags.digitalSignature,
      true,
    ),
    await x509.SubjectKeyIdentifierExtension.create(keys.publicKey),
  ];
  if (spec.uris !== undefined && spec.uris.length > 0)
    extensions.push(
      new x509.SubjectAlternativeNameExtension(spec.uris.map((value) => ({ type: 'url' as const, value }))),
    );
  const eku = spec.eku === undefined ? (spec.ca ? null : ['1.3.6.1.5.5.7.3.1', '1.3.6.1.5.5.7.3.2']) : spec.eku;
  if (eku !== null) extensions.push(new x509.ExtendedKeyUsageExtension([...eku]));
  const notBefore = spec.notBefore ?? new Date(Date.now() - 60_000);
  const notAfter = spec.notAfter ?? new Date(Date.now() + 3600_000);
  let peculiar: x509.X509Certificate;
  if (spec.issuer === undefined) {
    peculiar = await x509.X509CertificateGenerator.createSelfSigned({
      name,
      notBefore,
      notAfter,
      keys,
      signingAlgorithm: ALG,
      extensions,
    });
  } else {
    extensions.push(await x509.AuthorityKeyIdentifierExtension.create(spec.issuer.keys.publicKey));
    peculiar = await x509.X509CertificateGenerator.create({
      subject: name,
      issuer: spec.issuer.peculiar.subject,
      notBefore,
      notAfter,
      publicKey: keys.publicKey,
      signingKey: spec.issuer.keys.privateKey,
      signingAlgorithm: ALG,
      extensions,
    });
  }
  const der = Buffer.from(await webcrypto.subtle.exportKey('pkcs8', keys.privateKey));
  const keyPem = createPrivateKey({ key: der, format: 'der', type: 'pkcs8' }).export({ format: 'pem', type: 'pkcs8' });
  const pem = `${peculiar.toString('pem')}\n`;
  return { cert: new X509Certificate(pem), pem, keyPem: keyPem as string, keys, peculiar };
}

const dirs: string[] = [];

/** A fresh directory under /tmp, removed by removeTempDirs(). */
export function tempDir(prefix = 'mi-mtls-'): string {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  dirs.push(dir);
  return dir;
}

export function removeTempDirs(): void {
  for (const dir of dirs.splice(0)) rmSync(dir, { recursive: true, force: true });
}
