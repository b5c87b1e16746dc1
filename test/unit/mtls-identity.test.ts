// The identity round trip through the library: ca init → issue → load → verify as a peer, and every refusal with
// its reason (wrong trust domain, untrusted chain, expired, not yet valid, key mismatch, no or several SPIFFE IDs,
// a CA as leaf, a missing usage); the key as a systemd credential; and a real TLS 1.3 handshake over loopback where
// each side checks the other's chain with verifyTlsPeer, as the tunnel does.
import { readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { connect, createServer, type TLSSocket } from 'node:tls';
import fc from 'fast-check';
import { afterAll, describe, expect, it } from 'vitest';
import { uriSansOf } from '../../src/mtls/certificate.js';
import { caBundle, initCa, issueIdentity } from '../../src/mtls/ca.js';
import { identityExpiry, renderExpiryMetrics } from '../../src/mtls/expiry.js';
import {
  identityPathsIn,
  loadIdentity,
  parseKeySource,
  resolveKeyPath,
  type Identity,
} from '../../src/mtls/identity.js';
import { IdentityError } from '../../src/mtls/reasons.js';
import { verifyPeer, verifyTlsPeer, type PeerVerdict } from '../../src/mtls/verify.js';
import { makeCert, removeTempDirs, tempDir } from '../helpers/mtls-certs.js';

afterAll(removeTempDirs);

const HOUR = 3600_000;

async function newCa(trustDomain = 'example.org'): Promise<string> {
  const dir = join(tempDir(), 'ca');
  await initCa(dir, { trustDomain });
  return dir;
}

async function issued(
  caDir: string,
  id: string,
  extra: Parameters<typeof issueIdentity>[0] extends infer O ? Partial<O> : never = {},
): Promise<string> {
  const outDir = tempDir('mi-svid-');
  await issueIdentity({ caDir, id, outDir, ...extra });
  return outDir;
}

function refusal(fn: () => unknown): IdentityError {
  try {
    fn();
  } catch (error) {
    if (error instanceof IdentityError) return error;
    throw error;
  }
  throw new Error('expected an IdentityError, nothing was thrown');
}

function reasonOf(verdict: PeerVerdict): string {
  return verdict.ok ? `ok ${verdict.spiffeId.text}` : verdict.reason;
}

describe('meshctl ca in the library', () => {
  it('round-trips: init, issue, load the identity, verify it as a peer', async () => {
    const caDir = await newCa();
    expect(statSync(caDir).mode & 0o777).toBe(0o700);
    expect(statSync(join(caDir, 'ca_key.pem')).mode & 0o777).toBe(0o600);
    const outDir = await issued(caDir, 'spiffe://example.org/ns/web');
    const paths = identityPathsIn(outDir);
    expect(statSync(paths.key).mode & 0o777).toBe(0o600);
    expect(readFileSync(paths.bundle, 'utf8')).toBe(await caBundle(caDir));

    const identity = loadIdentity(paths);
    expect(identity.spiffeId).toEqual({
      text: 'spiffe://example.org/ns/web',
      trustDomain: 'example.org',
      path: '/ns/web',
    });
    expect(identity.trustDomain).toBe('example.org');
    expect(identity.notAfter.getTime() - identity.notBefore.getTime()).toBe(24 * HOUR + 60_000);
    expect(identity.certificate.keyUsage).toEqual(['1.3.6.1.5.5.7.3.1', '1.3.6.1.5.5.7.3.2']);
    expect(identity.certificate.ca).toBe(false);

    const other = loadIdentity(identityPathsIn(await issued(caDir, 'spiffe://example.org/ns/db')));
    for (const role of ['client', 'server'] as const) {
      const verdict = verifyPeer(other.chain, identity.bundle, { role });
      expect(reasonOf(verdict)).toBe('ok spiffe://example.org/ns/db');
    }
  });

  it('refuses to overwrite a CA, leaving its files as they were', async () => {
    const caDir = await newCa();
    const before = [readFileSync(join(caDir, 'ca.pem')), readFileSync(join(caDir, 'ca_key.pem'))];
    await expect(initCa(caDir, { trustDomain: 'other.org' })).rejects.toMatchObject({ code: 'CA_EXISTS' });
    expect([readFileSync(join(caDir, 'ca.pem')), readFileSync(join(caDir, 'ca_key.pem'))]).toEqual(before);
  });

  it('refuses an id outside the CA trust domain, a trust domain id and a malformed one', async () => {
    const caDir = await newCa();
    const out = tempDir();
    for (const id of [
      'spiffe://other.org/web',
      'spiffe://example.org',
      'spiffe://example.org/a?b',
      'https://example.org/x',
    ])
      await expect(issueIdentity({ caDir, id, outDir: out }), id).rejects.toMatchObject({ code: 'SPIFFE_ID_INVALID' });
    await expect(initCa(join(tempDir(), 'ca'), { trustDomain: 'Example.org' })).rejects.toMatchObject({
      code: 'SPIFFE_ID_INVALID',
    });
  });

  it('refuses a certificate that would outlive the CA, and a missing CA', async () => {
    const caDir = join(tempDir(), 'ca');
    await initCa(caDir, { trustDomain: 'example.org', ttlMs: 2 * HOUR });
    await expect(
      issueIdentity({ caDir, id: 'spiffe://example.org/w', outDir: tempDir(), ttlMs: 3 * HOUR }),
    ).rejects.toMatchObject({ code: 'CA_INVALID', message: expect.stringContaining('the CA expires at') });
    await expect(
      issueIdentity({ caDir: tempDir(), id: 'spiffe://example.org/w', outDir: tempDir() }),
    ).rejects.toMatchObject({
      code: 'CA_INVALID',
    });
  });
});

describe('loading an identity', () => {
  it('refuses an expired certificate and one not yet valid, with the reason', async () => {
    const caDir = await newCa();
    const now = Date.now();
    const expired = await issued(caDir, 'spiffe://example.org/old', {
      validity: { notBefore: new Date(now - 48 * HOUR), notAfter: new Date(now - 24 * HOUR) },
    });
    const early = await issued(caDir, 'spiffe://example.org/early', {
      validity: { notBefore: new Date(now + HOUR), notAfter: new Date(now + 25 * HOUR) },
    });
    const e = refusal(() => loadIdentity(identityPathsIn(expired)));
    expect([e.code, e.reason]).toEqual(['IDENTITY_EXPIRED', 'expired']);
    expect(e.message).toContain('spiffe://example.org/old');
    const n = refusal(() => loadIdentity(identityPathsIn(early)));
    expect([n.code, n.reason]).toEqual(['IDENTITY_EXPIRED', 'not-yet-valid']);
    // The same files load at a time inside their validity.
    expect(loadIdentity(identityPathsIn(early), { now: new Date(now + 2 * HOUR) }).spiffeId.text).toBe(
      'spiffe://example.org/early',
    );
  });

  it('refuses a key that is not the certificate’s', async () => {
    const caDir = await newCa();
    const a = identityPathsIn(await issued(caDir, 'spiffe://example.org/a'));
    const b = identityPathsIn(await issued(caDir, 'spiffe://example.org/b'));
    const e = refusal(() => loadIdentity({ ...a, key: b.key }));
    expect([e.code, e.reason]).toEqual(['IDENTITY_INVALID', 'key-mismatch']);
    expect(e.message).toContain(b.key);
  });

  it('refuses a chain the bundle does not trust, and a bundle of another trust domain', async () => {
    const caDir = await newCa();
    const sameTd = await newCa();
    const otherTd = await newCa('other.org');
    const paths = identityPathsIn(await issued(caDir, 'spiffe://example.org/a'));
    const foreign = join(tempDir(), 'bundle.pem');
    writeFileSync(foreign, await caBundle(sameTd));
    expect(refusal(() => loadIdentity({ ...paths, bundle: foreign })).reason).toBe('untrusted-chain');
    writeFileSync(foreign, await caBundle(otherTd));
    expect(refusal(() => loadIdentity({ ...paths, bundle: foreign })).reason).toBe('wrong-trust-domain');
  });

  it('refuses unreadable and malformed files, naming the file', async () => {
    const caDir = await newCa();
    const paths = identityPathsIn(await issued(caDir, 'spiffe://example.org/a'));
    const missing = refusal(() => loadIdentity({ ...paths, bundle: '/nonexistent/mi-bundle.pem' }));
    expect([missing.reason, missing.message]).toEqual([
      'unreadable',
      expect.stringContaining('/nonexistent/mi-bundle.pem'),
    ]);
    const junk = join(tempDir(), 'junk.pem');
    writeFileSync(junk, 'not pem\n');
    expect(refusal(() => loadIdentity({ ...paths, certificate: junk })).reason).toBe('malformed');
    expect(refusal(() => loadIdentity({ ...paths, key: junk })).reason).toBe('malformed');
    expect(refusal(() => loadIdentity({ ...paths, key: 'relative/key.pem' })).reason).toBe('unreadable');
  });

  it('reads the key from $CREDENTIALS_DIRECTORY for credential:NAME', async () => {
    const caDir = await newCa();
    const paths = identityPathsIn(await issued(caDir, 'spiffe://example.org/a'));
    const credentials = tempDir('mi-cred-');
    writeFileSync(join(credentials, 'mtls-key'), readFileSync(paths.key), { mode: 0o400 });
    const env = { CREDENTIALS_DIRECTORY: credentials };
    const identity = loadIdentity({ ...paths, key: 'credential:mtls-key' }, { env });
    expect(identity.paths.key).toBe(join(credentials, 'mtls-key'));
    expect(identity.spiffeId.text).toBe('spiffe://example.org/a');
    expect(refusal(() => resolveKeyPath('credential:mtls-key', {})).message).toContain(
      'CREDENTIALS_DIRECTORY is not set',
    );
    // With the file systemd loads it from (for `meshctl service install`'s LoadCredential=NAME:PATH): same credential.
    expect(loadIdentity({ ...paths, key: `credential:mtls-key:${paths.key}` }, { env }).paths.key).toBe(
      join(credentials, 'mtls-key'),
    );
    expect(parseKeySource(`credential:mtls-key:${paths.key}`)).toEqual({
      kind: 'credential',
      name: 'mtls-key',
      source: paths.key,
    });
    expect(parseKeySource('credential:mtls-key')).toEqual({ kind: 'credential', name: 'mtls-key', source: null });
    expect(parseKeySource('/etc/k.pem')).toEqual({ kind: 'file', path: '/etc/k.pem' });
    for (const bad of [
      'credential:',
      'credential:../x',
      'credential:a/b',
      'credential:..',
      'credential:k:rel/key',
      'credential:k:/a b',
    ])
      expect(refusal(() => resolveKeyPath(bad, env)).reason, bad).toBe('unreadable');
  });

  it('loads a chain through an intermediate CA, and refuses it without the intermediate', async () => {
    const root = await makeCert({ ca: true, uris: ['spiffe://example.org'] });
    const intermediate = await makeCert({ ca: true, issuer: root });
    const leaf = await makeCert({ uris: ['spiffe://example.org/deep'], issuer: intermediate });
    const dir = tempDir();
    writeFileSync(join(dir, 'svid.pem'), leaf.pem + intermediate.pem);
    writeFileSync(join(dir, 'svid_key.pem'), leaf.keyPem);
    writeFileSync(join(dir, 'svid_bundle.pem'), root.pem);
    const identity = loadIdentity(identityPathsIn(dir));
    expect(identity.chain.length).toBe(2);
    expect(reasonOf(verifyPeer(identity.chain, identity.bundle, { role: 'client' }))).toBe(
      'ok spiffe://example.org/deep',
    );
    expect(reasonOf(verifyPeer([leaf.cert], identity.bundle, { role: 'client' }))).toBe('untrusted-chain');
  });
});

describe('verifying a peer', () => {
  async function bundleOf(): Promise<{ root: Awaited<ReturnType<typeof makeCert>>; bundle: Identity['bundle'] }> {
    const root = await makeCert({ ca: true, uris: ['spiffe://example.org'] });
    return { root, bundle: { trustDomain: 'example.org', certificates: [root.cert] } };
  }

  it.each([
    { name: 'no URI SAN', spec: { uris: [] }, reason: 'no-spiffe-id' },
    {
      name: 'two URI SANs',
      spec: { uris: ['spiffe://example.org/a', 'spiffe://example.org/b'] },
      reason: 'no-spiffe-id',
    },
    // Node quotes this one value; it must not read as two names.
    {
      name: 'one URI SAN that reads like two',
      spec: { uris: ['spiffe://example.org/a, URI:spiffe://example.org/b'] },
      reason: 'no-spiffe-id',
    },
    { name: 'an https URI', spec: { uris: ['https://example.org/a'] }, reason: 'no-spiffe-id' },
    { name: 'the trust domain id', spec: { uris: ['spiffe://example.org'] }, reason: 'no-spiffe-id' },
    { name: 'another trust domain', spec: { uris: ['spiffe://other.org/a'] }, reason: 'wrong-trust-domain' },
    { name: 'a CA certificate', spec: { uris: ['spiffe://example.org/a'], ca: true }, reason: 'bad-certificate' },
    {
      name: 'serverAuth only, as a client',
      spec: { uris: ['spiffe://example.org/a'], eku: ['1.3.6.1.5.5.7.3.1'] },
      reason: 'bad-certificate',
    },
    {
      name: 'an expired leaf',
      spec: {
        uris: ['spiffe://example.org/a'],
        notBefore: new Date(Date.now() - 2 * HOUR),
        notAfter: new Date(Date.now() - HOUR),
      },
      reason: 'expired',
    },
    {
      name: 'a leaf not yet valid',
      spec: {
        uris: ['spiffe://example.org/a'],
        notBefore: new Date(Date.now() + HOUR),
        notAfter: new Date(Date.now() + 2 * HOUR),
      },
      reason: 'not-yet-valid',
    },
  ])('refuses $name: $reason', async ({ spec, reason }) => {
    const { root, bundle } = await bundleOf();
    const leaf = await makeCert({ ...spec, issuer: root });
    expect(reasonOf(verifyPeer([leaf.cert], bundle, { role: 'client' }))).toBe(reason);
  });

  it('refuses a self-signed leaf, an empty chain, and a chain through an expired root', async () => {
    const { bundle } = await bundleOf();
    const self = await makeCert({ uris: ['spiffe://example.org/a'] });
    expect(reasonOf(verifyPeer([self.cert], bundle, { role: 'server' }))).toBe('untrusted-chain');
    expect(reasonOf(verifyPeer([], bundle, { role: 'server' }))).toBe('no-certificate');
    expect(reasonOf(verifyPeer({} as never, bundle, { role: 'server' }))).toBe('no-certificate');
    const oldRoot = await makeCert({
      ca: true,
      notBefore: new Date(Date.now() - 3 * HOUR),
      notAfter: new Date(Date.now() - HOUR),
    });
    const leaf = await makeCert({ uris: ['spiffe://example.org/a'], issuer: oldRoot });
    const verdict = verifyPeer(
      [leaf.cert],
      { trustDomain: 'example.org', certificates: [oldRoot.cert] },
      { role: 'server' },
    );
    expect(reasonOf(verdict)).toBe('expired');
    expect(verdict.ok ? '' : verdict.detail).toContain('its issuer');
  });

  it('applies the allowed identities: exact, wildcard, and any of the trust domain by default', async () => {
    const { root, bundle } = await bundleOf();
    const leaf = await makeCert({ uris: ['spiffe://example.org/ns/web'], issuer: root });
    const check = (allowed: string[]) =>
      reasonOf(
        verifyPeer([leaf.cert], bundle, {
          role: 'server',
          allowed: allowed.map((t) =>
            t.endsWith('/*') ? { kind: 'prefix', prefix: t.slice(0, -1) } : { kind: 'exact', id: t },
          ),
        }),
      );
    expect(check([])).toBe('ok spiffe://example.org/ns/web');
    expect(check(['spiffe://example.org/ns/*'])).toBe('ok spiffe://example.org/ns/web');
    expect(check(['spiffe://example.org/ns/web'])).toBe('ok spiffe://example.org/ns/web');
    expect(check(['spiffe://example.org/ns/db', 'spiffe://example.org/other/*'])).toBe('identity-not-allowed');
  });
});

describe('a TLS 1.3 handshake with two identities, as the tunnel makes it', () => {
  async function handshake(
    server: Identity,
    client: Identity,
  ): Promise<{ atServer: PeerVerdict; atClient: PeerVerdict }> {
    let atServer: PeerVerdict | null = null;
    const listener = createServer(
      { ...server.secureContext, requestCert: true, rejectUnauthorized: false, minVersion: 'TLSv1.3' },
      (socket: TLSSocket) => {
        atServer = verifyTlsPeer(socket, server.bundle, { role: 'client' });
        socket.end();
      },
    );
    await new Promise<void>((resolve) => listener.listen(0, '127.0.0.1', resolve));
    const port = (listener.address() as { port: number }).port;
    try {
      const atClient = await new Promise<PeerVerdict>((resolve, reject) => {
        const socket = connect({
          ...client.secureContext,
          host: '127.0.0.1',
          port,
          rejectUnauthorized: false,
          checkServerIdentity: () => undefined,
          minVersion: 'TLSv1.3',
        });
        socket.on('secureConnect', () => {
          const verdict = verifyTlsPeer(socket, client.bundle, { role: 'server' });
          socket.on('close', () => resolve(verdict));
          socket.resume();
        });
        socket.on('error', reject);
      });
      return { atServer: atServer!, atClient };
    } finally {
      listener.close();
    }
  }

  it('each side sees the other’s SPIFFE ID; a peer of another CA is untrusted-chain', async () => {
    const caDir = await newCa();
    const a = loadIdentity(identityPathsIn(await issued(caDir, 'spiffe://example.org/a')));
    const b = loadIdentity(identityPathsIn(await issued(caDir, 'spiffe://example.org/b')));
    const good = await handshake(b, a);
    expect([reasonOf(good.atServer), reasonOf(good.atClient)]).toEqual([
      'ok spiffe://example.org/a',
      'ok spiffe://example.org/b',
    ]);

    const stranger = loadIdentity(identityPathsIn(await issued(await newCa(), 'spiffe://example.org/x')));
    const bad = await handshake(b, stranger);
    expect([reasonOf(bad.atServer), reasonOf(bad.atClient)]).toEqual(['untrusted-chain', 'untrusted-chain']);
  });
});

describe('expiry', () => {
  it('is valid, then warning with a third of the lifetime left, then expired; and renders as metrics', async () => {
    const caDir = await newCa();
    const identity = loadIdentity(identityPathsIn(await issued(caDir, 'spiffe://example.org/a')));
    const { notBefore, notAfter } = identity;
    const at = (ms: number) => identityExpiry(identity, new Date(ms));
    const third = (notAfter.getTime() - notBefore.getTime()) / 3;
    expect(at(notBefore.getTime() - 1000).state).toBe('not-yet-valid');
    expect(at(notBefore.getTime() + 1000).state).toBe('valid');
    expect(at(notAfter.getTime() - third - 1000).state).toBe('valid');
    expect(at(notAfter.getTime() - third + 1000).state).toBe('warning');
    expect(at(notAfter.getTime() + 1000)).toMatchObject({ state: 'expired', secondsLeft: -1 });
    const now = at(notAfter.getTime() - 3600_000);
    expect(now.secondsLeft).toBe(3600);
    expect(renderExpiryMetrics(now)).toContain(
      'meshctl_mtls_certificate_expiry_seconds{spiffe_id="spiffe://example.org/a"} 3600',
    );
    expect(renderExpiryMetrics(now)).toContain(
      'meshctl_mtls_certificate_expiry_warning{spiffe_id="spiffe://example.org/a"} 1',
    );
    expect(renderExpiryMetrics(null)).toBe('');
  });
});

describe('reading URI SANs', () => {
  it('reads back any printable URI value, however it imitates a list (commas, quotes, "URI:")', async () => {
    const piece = fc.constantFrom(',', ', ', '"', '\\', 'URI:', 'spiffe://td/a', ':', ' ', '\\u002c', 'DNS:x');
    const value = fc.oneof(
      fc.string({ unit: fc.constantFrom(...' !"#$%&\'()*+,-./:;<=>?@[\\]^_`{|}~aZ09'), minLength: 1, maxLength: 40 }),
      fc.array(piece, { minLength: 1, maxLength: 8 }).map((p) => p.join('')),
    );
    await fc.assert(
      fc.asyncProperty(fc.array(value, { minLength: 1, maxLength: 3 }), async (uris) => {
        const { cert } = await makeCert({ uris });
        expect(uriSansOf(cert)).toEqual(uris);
      }),
      { numRuns: Number(process.env.MESHCTL_FUZZ_RUNS ?? 60) },
    );
  });
});
