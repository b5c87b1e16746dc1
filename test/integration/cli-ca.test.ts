// `meshctl ca` through bin/meshctl (dist/): exit statuses and coded errors, the files and their modes, and the
// certificates checked by a verifier that is not meshctl's (`openssl verify`, `openssl x509 -text`).
import { spawnSync } from 'node:child_process';
import { createPrivateKey, X509Certificate } from 'node:crypto';
import { readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { builtCli, meshctl } from '../helpers/netfilter-lab.js';
import { removeTempDirs, tempDir } from '../helpers/mtls-certs.js';

afterAll(removeTempDirs);

function openssl(args: readonly string[]): { status: number | null; out: string } {
  const r = spawnSync('openssl', args, { encoding: 'utf8' });
  return { status: r.status, out: `${r.stdout}${r.stderr}` };
}

const mode = (path: string) => (statSync(path).mode & 0o777).toString(8);

describe('meshctl ca', () => {
  beforeAll(() => builtCli());

  it('init creates a CA (key 0600, directory 0700) for the trust domain, and refuses to overwrite it', () => {
    const ca = join(tempDir(), 'ca');
    const first = meshctl(['ca', 'init', ca, '--trust-domain', 'prod.example.com']);
    expect(first).toMatchObject({ status: 0, stderr: '' });
    expect(first.stdout).toContain('trust domain prod.example.com');
    expect([mode(ca), mode(join(ca, 'ca_key.pem')), mode(join(ca, 'ca.pem'))]).toEqual(['700', '600', '644']);
    const cert = new X509Certificate(readFileSync(join(ca, 'ca.pem')));
    expect([cert.ca, cert.subjectAltName]).toEqual([true, 'URI:spiffe://prod.example.com']);
    const text = openssl(['x509', '-in', join(ca, 'ca.pem'), '-noout', '-text']).out;
    expect(text).toMatch(/CA:TRUE/);
    expect(text).toMatch(/Certificate Sign, CRL Sign/);
    expect(text).toMatch(/ASN1 OID: prime256v1/);

    const key = readFileSync(join(ca, 'ca_key.pem'));
    const again = meshctl(['ca', 'init', ca, '--trust-domain', 'other.example.com']);
    expect(again.status).toBe(1);
    expect(again.stderr).toContain('meshctl: CA_EXISTS:');
    expect(readFileSync(join(ca, 'ca_key.pem'))).toEqual(key);
  });

  it('init refuses a malformed trust domain and a malformed --ttl', () => {
    const bad = meshctl(['ca', 'init', join(tempDir(), 'ca'), '--trust-domain', 'Prod:8443']);
    expect([bad.status, bad.stderr]).toEqual([
      1,
      expect.stringContaining('meshctl: SPIFFE_ID_INVALID: --trust-domain'),
    ]);
    const ttl = meshctl(['ca', 'init', join(tempDir(), 'ca'), '--ttl', '10 years']);
    expect([ttl.status, ttl.stderr]).toEqual([1, expect.stringContaining('meshctl: CONFIG_INVALID: --ttl')]);
  });

  it('issue writes a workload certificate that openssl verifies against the bundle, with one SPIFFE URI SAN', () => {
    const ca = join(tempDir(), 'ca');
    expect(meshctl(['ca', 'init', ca, '--trust-domain', 'td.test']).status).toBe(0);
    const out = join(tempDir(), 'web');
    const r = meshctl(['ca', 'issue', '--ca', ca, '--id', 'spiffe://td.test/ns/web', '--out', out]);
    expect(r).toMatchObject({ status: 0, stderr: '' });
    expect(r.stdout).toContain('issued spiffe://td.test/ns/web');
    expect([mode(join(out, 'svid.pem')), mode(join(out, 'svid_key.pem')), mode(join(out, 'svid_bundle.pem'))]).toEqual([
      '644',
      '600',
      '644',
    ]);
    expect(readFileSync(join(out, 'svid_bundle.pem'), 'utf8')).toBe(readFileSync(join(ca, 'ca.pem'), 'utf8'));
    const verify = openssl([
      'verify',
      '-CAfile',
      join(out, 'svid_bundle.pem'),
      '-purpose',
      'sslclient',
      join(out, 'svid.pem'),
    ]);
    expect(verify).toEqual({ status: 0, out: `${join(out, 'svid.pem')}: OK\n` });
    expect(
      openssl(['verify', '-CAfile', join(out, 'svid_bundle.pem'), '-purpose', 'sslserver', join(out, 'svid.pem')])
        .status,
    ).toBe(0);
    const cert = new X509Certificate(readFileSync(join(out, 'svid.pem')));
    expect([cert.ca, cert.subjectAltName, cert.keyUsage]).toEqual([
      false,
      'URI:spiffe://td.test/ns/web',
      ['1.3.6.1.5.5.7.3.1', '1.3.6.1.5.5.7.3.2'],
    ]);
    const lifetimeH = (Date.parse(cert.validTo) - Date.parse(cert.validFrom)) / 3_600_000;
    expect(lifetimeH).toBeCloseTo(24 + 1 / 60, 3); // 24 h, from a minute back
    expect(openssl(['x509', '-in', join(out, 'svid.pem'), '-noout', '-text']).out).toMatch(
      /Key Usage: critical\s+Digital Signature\n/,
    );
    expect(cert.checkPrivateKey(createKey(join(out, 'svid_key.pem')))).toBe(true);

    const long = meshctl(['ca', 'issue', '--ca', ca, '--id', 'spiffe://td.test/batch', '--out', out, '--ttl', '90d']);
    expect(long.status).toBe(0);
    const reissued = new X509Certificate(readFileSync(join(out, 'svid.pem')));
    expect((Date.parse(reissued.validTo) - Date.parse(reissued.validFrom)) / 86_400_000).toBeCloseTo(90, 2);
  });

  it.each([
    { name: 'an id of another trust domain', args: ['--id', 'spiffe://other.test/web'], code: 'SPIFFE_ID_INVALID' },
    { name: 'a trust domain id', args: ['--id', 'spiffe://td.test'], code: 'SPIFFE_ID_INVALID' },
    { name: 'an id with a port', args: ['--id', 'spiffe://td.test:443/web'], code: 'SPIFFE_ID_INVALID' },
    { name: 'a malformed --ttl', args: ['--id', 'spiffe://td.test/web', '--ttl', 'soon'], code: 'CONFIG_INVALID' },
    { name: 'a --ttl beyond the CA', args: ['--id', 'spiffe://td.test/web', '--ttl', '100000d'], code: 'CA_INVALID' },
  ])('issue refuses $name with $code, writing nothing', ({ args, code }) => {
    const ca = join(tempDir(), 'ca');
    expect(meshctl(['ca', 'init', ca, '--trust-domain', 'td.test']).status).toBe(0);
    const out = join(tempDir(), 'out');
    const r = meshctl(['ca', 'issue', '--ca', ca, '--out', out, ...args]);
    expect([r.status, r.stdout]).toEqual([1, '']);
    expect(r.stderr).toContain(`meshctl: ${code}:`);
    expect(() => statSync(out)).toThrow(/ENOENT/);
  });

  it('issue and bundle refuse a directory without a CA; missing options are usage errors (exit 2)', () => {
    const empty = tempDir();
    const issue = meshctl(['ca', 'issue', '--ca', empty, '--id', 'spiffe://td.test/web', '--out', tempDir()]);
    expect([issue.status, issue.stderr]).toEqual([1, expect.stringContaining('meshctl: CA_INVALID:')]);
    const bundle = meshctl(['ca', 'bundle', '--ca', empty]);
    expect([bundle.status, bundle.stderr]).toEqual([1, expect.stringContaining('meshctl: CA_INVALID:')]);
    const noId = meshctl(['ca', 'issue', '--ca', empty, '--out', empty]);
    expect([noId.status, noId.stderr]).toEqual([2, expect.stringContaining("required option '--id <spiffe-id>'")]);
    const noCa = meshctl(['ca', 'bundle']);
    expect([noCa.status, noCa.stderr]).toEqual([2, expect.stringContaining("required option '--ca <dir>'")]);
  });

  it('says WRITE_FAILED, exit 1, when the directory cannot be made', () => {
    const file = join(tempDir(), 'a-file');
    writeFileSync(file, '');
    const init = meshctl(['ca', 'init', join(file, 'ca')]);
    expect([init.status, init.stderr]).toEqual([
      1,
      expect.stringContaining(`meshctl: WRITE_FAILED: creating the CA directory ${join(file, 'ca')}: ENOTDIR`),
    ]);
    const ca = join(tempDir(), 'ca');
    expect(meshctl(['ca', 'init', ca]).status).toBe(0);
    const issue = meshctl([
      'ca',
      'issue',
      '--ca',
      ca,
      '--id',
      'spiffe://meshctl.internal/w',
      '--out',
      join(file, 'out'),
    ]);
    expect([issue.status, issue.stderr]).toEqual([
      1,
      expect.stringContaining('meshctl: WRITE_FAILED: writing the identity into'),
    ]);
  });

  it('bundle prints the CA certificate', () => {
    const ca = join(tempDir(), 'ca');
    expect(meshctl(['ca', 'init', ca]).status).toBe(0);
    const r = meshctl(['ca', 'bundle', '--ca', ca]);
    expect(r).toEqual({ status: 0, stdout: readFileSync(join(ca, 'ca.pem'), 'utf8'), stderr: '' });
    expect(new X509Certificate(r.stdout).subjectAltName).toBe('URI:spiffe://meshctl.internal');
  });
});

function createKey(path: string) {
  return createPrivateKey(readFileSync(path));
}
