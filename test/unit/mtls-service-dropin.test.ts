// The proxy unit's drop-in carries the mTLS key as a systemd credential when mtls.identity.key names one, and
// nothing when the key is a file the proxy user reads itself.
import { describe, expect, it } from 'vitest';
import type { HostFacts } from '../../src/config/host-facts.js';
import { configFromObject } from '../../src/config/load.js';
import { DEFAULT_LAYOUT, renderDropIns, UNITS } from '../../src/service/layout.js';

const host: HostFacts = {
  userDb: {
    user: (ref) => (ref === 'meshproxy' || ref === 997 ? { name: 'meshproxy', uid: 997, gid: 997 } : null),
    group: () => ({ name: 'meshproxy', gid: 997 }),
  },
  detectSshPorts: () => ({ ports: [22], source: 'default' }),
};

function proxyDropIn(key: string | null): string {
  const identity =
    key === null
      ? {}
      : { certificate: '/etc/meshctl/identity/svid.pem', key, bundle: '/etc/meshctl/identity/svid_bundle.pem' };
  const config = configFromObject({ proxy: { user: 'meshproxy' }, mtls: { identity } }, { host });
  return renderDropIns(config, DEFAULT_LAYOUT).find((d) => d.unit === UNITS.proxy)!.text;
}

const loadCredential = (text: string) => text.split('\n').filter((l) => l.startsWith('LoadCredential'));

describe('the proxy drop-in and the mTLS key', () => {
  it('loads credential:NAME from the credential stores, and credential:NAME:PATH from PATH', () => {
    expect(loadCredential(proxyDropIn('credential:meshctl-mtls-key'))).toEqual(['LoadCredential=meshctl-mtls-key']);
    const withSource = proxyDropIn('credential:meshctl-mtls-key:/etc/meshctl/identity/svid_key.pem');
    expect(loadCredential(withSource)).toEqual(['LoadCredential=meshctl-mtls-key:/etc/meshctl/identity/svid_key.pem']);
    expect(withSource).toMatch(
      /^# mtls\.identity\.key = credential:meshctl-mtls-key:\/etc\/meshctl\/identity\/svid_key\.pem: /m,
    );
  });

  it('adds no credential for a key file, nor without mTLS', () => {
    expect(loadCredential(proxyDropIn('/etc/meshctl/identity/svid_key.pem'))).toEqual([]);
    expect(loadCredential(proxyDropIn(null))).toEqual([]);
  });

  it('refuses a malformed credential rather than writing a unit systemd would reject', () => {
    expect(() => proxyDropIn('credential:a/b')).toThrow(/not a credential name/);
    expect(() => proxyDropIn('credential:k:relative/key.pem')).toThrow(/not an absolute path/);
  });
});
