// The mtls config: its defaults and parsed types, the checks (an inbound mode or peers without an identity),
// principals next to CIDRs in inbound.ports[].allow/deny and services[].identities, what the capture contract
// and plan do with the tunnel port, and authorization by principal at admission.
import { describe, expect, it } from 'vitest';
import { planCapture } from '../../src/capture/plan.js';
import { renderIptablesRestore } from '../../src/capture/render-iptables.js';
import { compareContract, contractOf, type LiveContract } from '../../src/config/contract.js';
import { configFromObject } from '../../src/config/load.js';
import { renderConfig } from '../../src/config/render.js';
import { MeshctlError } from '../../src/errors.js';
import { InboundPolicy } from '../../src/policy/inbound.js';
import { principalMatches } from '../../src/values/spiffe-id.js';
import { testHost } from '../cases.js';

const identity = {
  certificate: '/etc/meshctl/svid.pem',
  key: '/etc/meshctl/svid_key.pem',
  bundle: '/etc/meshctl/b.pem',
};
const load = (raw: Record<string, unknown>) =>
  configFromObject({ proxy: { user: 'meshproxy' }, ...raw }, { file: 'mesh.yaml', host: testHost, env: {} });

function problems(fn: () => unknown): string[] {
  try {
    fn();
  } catch (error) {
    if (error instanceof MeshctlError)
      return [error.code, ...(error.details.length > 0 ? error.details : [error.message])];
    throw error;
  }
  throw new Error('expected a MeshctlError');
}

describe('mtls config', () => {
  it('is off by default: no identity, inbound disable, tunnel port 15008, no peers, no fallback', () => {
    const c = load({});
    expect(c.mtls).toEqual({
      identity: { certificate: null, key: null, bundle: null },
      inbound: 'disable',
      tunnelPort: 15008,
      peers: [],
      allowPlaintextFallback: false,
    });
    expect(contractOf(c).tunnelPort).toBeNull();
  });

  it('reads the identity, mode, port, peers and fallback, and renders them back', () => {
    const c = load({
      mtls: { identity, inbound: 'strict', tunnelPort: 15100, peers: ['10.1.0.0/16'], allowPlaintextFallback: true },
    });
    expect(c.mtls).toMatchObject({ identity, inbound: 'strict', tunnelPort: 15100, allowPlaintextFallback: true });
    expect(c.mtls.peers).toEqual([{ family: 'ipv4', address: '10.1.0.0', prefix: 16 }]);
    expect(renderConfig(c, testHost.userDb)).toMatchObject({
      mtls: { identity, inbound: 'strict', tunnelPort: 15100, peers: ['10.1.0.0/16'], allowPlaintextFallback: true },
    });
    expect(contractOf(c).tunnelPort).toBe(15100);
  });

  it('refuses an inbound mode or peers without an identity, and a partial identity, naming the field', () => {
    expect(problems(() => load({ mtls: { inbound: 'strict' } }))).toEqual([
      'CONFIG_INVALID',
      expect.stringMatching(/mtls\.inbound.*"strict" needs this proxy's identity/),
    ]);
    expect(problems(() => load({ mtls: { peers: ['10.0.0.0/8'] } }))[1]).toMatch(
      /mtls\.peers.*needs this proxy's identity/,
    );
    expect(problems(() => load({ mtls: { identity: { certificate: '/a.pem' } } })).slice(1)).toEqual([
      expect.stringMatching(/mtls\.identity\.key.*give the certificate, key and bundle files together/),
      expect.stringMatching(/mtls\.identity\.bundle/),
    ]);
    expect(problems(() => load({ mtls: { identity, inbound: 'strict', tunnelPort: 15006 } }))[1]).toMatch(
      /mtls\.tunnelPort.*port 15006 is also proxy\.inboundPort/,
    );
    expect(problems(() => load({ mtls: { inbound: 'sometimes' } }))[0]).toBe('CONFIG_INVALID');
    expect(
      problems(() =>
        load({ services: [{ name: 'api', addresses: ['10.96.0.1:80'], endpoints: ['10.0.0.1:80'], mtls: true }] }),
      )[1],
    ).toMatch(/services\[0\]\.mtls.*service "api" goes through the mTLS tunnel, but this proxy has no identity/);
  });

  it('takes principals next to CIDRs in inbound allow/deny and SPIFFE patterns in services[].identities', () => {
    const c = load({
      mtls: { identity },
      inbound: {
        ports: [{ port: 8080, allow: ['10.0.0.0/8', 'spiffe://td/web/*'], deny: ['spiffe://td/web/old'] }],
      },
      services: [
        {
          name: 'api',
          addresses: ['10.96.0.1:80'],
          endpoints: ['10.0.0.1:80'],
          mtls: true,
          identities: ['spiffe://td/api'],
        },
      ],
    });
    expect(c.inbound.ports[0]).toMatchObject({
      allow: [{ family: 'ipv4', address: '10.0.0.0', prefix: 8 }],
      deny: [],
      allowPrincipals: [{ kind: 'prefix', prefix: 'spiffe://td/web/' }],
      denyPrincipals: [{ kind: 'exact', id: 'spiffe://td/web/old' }],
    });
    expect(c.services[0]).toMatchObject({ mtls: true, identities: [{ kind: 'exact', id: 'spiffe://td/api' }] });
    expect(renderConfig(c, testHost.userDb)).toMatchObject({
      inbound: { ports: [{ allow: ['10.0.0.0/8', 'spiffe://td/web/*'], deny: ['spiffe://td/web/old'] }] },
    });
    for (const bad of ['spiffe://TD/x', 'spiffe://td/a/*/b', 'http://td/x'])
      expect(problems(() => load({ inbound: { ports: [{ port: 1, allow: [bad] }] } }))[0]).toBe('CONFIG_INVALID');
  });

  it('keeps the hash of a config without mtls as it was, and changes it when mtls is on', () => {
    const off = load({ services: [{ name: 'api', addresses: ['10.96.0.1:80'], endpoints: ['10.0.0.1:80'] }] });
    const explicitOff = load({
      mtls: { inbound: 'disable', tunnelPort: 15008 },
      services: [{ name: 'api', addresses: ['10.96.0.1:80'], endpoints: ['10.0.0.1:80'], mtls: false }],
    });
    expect(explicitOff.hash).toBe(off.hash);
    expect(load({ mtls: { identity, inbound: 'permissive' } }).hash).not.toBe(load({}).hash);
  });
});

describe('the tunnel port in the capture rules', () => {
  const inboundSkip = (raw: Record<string, unknown>) =>
    renderIptablesRestore(
      planCapture(load({ capture: { ipv6: 'off' }, safety: { sshPorts: [22] }, ...raw })).families[0]!,
    )
      .split('\n')
      .find((l) => l.includes('meshctl:skip-proxy-ports') && l.includes('MESHCTL_INBOUND'));

  it('is never captured inbound while the tunnel listens, and absent otherwise', () => {
    expect(inboundSkip({})).not.toContain('15008');
    expect(inboundSkip({ mtls: { identity, inbound: 'permissive' } })).toContain('15008');
    expect(inboundSkip({ mtls: { identity, inbound: 'strict', tunnelPort: 15100 } })).toContain('15100');
    // An identity with inbound disable: outbound tunnels only, nothing listens.
    expect(inboundSkip({ mtls: { identity } })).not.toContain('15008');
  });
});

describe('the tunnel port in the capture contract', () => {
  it('is a mismatch when the rules leave it to a proxy that does not listen there', () => {
    const rules = contractOf(load({ mtls: { identity, inbound: 'strict' } }));
    const live = (tcp: number[], expects = rules): LiveContract => ({
      pid: 1,
      processes: [{ pid: 1, uid: rules.proxyUser.uid, gid: rules.proxyUser.gid }],
      uid: rules.proxyUser.uid,
      gid: rules.proxyUser.gid,
      user: 'meshproxy',
      tcp: { ipv4: tcp, ipv6: tcp },
      udp: { ipv4: [], ipv6: [] },
      transparentPorts: [],
      config: { file: null, hash: '', version: 1 },
      expects,
    });
    expect(compareContract(rules, live([15000, 15001, 15006, 15008]))).toEqual([]);
    const off = contractOf(load({ mtls: { identity } }));
    expect(compareContract(rules, live([15000, 15001, 15006], off))).toEqual([
      expect.objectContaining({
        field: 'tunnelPort',
        fix: 'start the proxy with mtls.inbound permissive or strict and an mtls.identity, or install with --mtls-inbound disable',
      }),
    ]);
  });
});

describe('authorization by principal', () => {
  const admit = (entry: Record<string, unknown>, source: string, principal: string | null) => {
    const c = load({ inbound: { ports: [{ port: 8080, ...entry }] } });
    return new InboundPolicy(c.inbound, null).entryFor(8080)!.admit(source, 0, principal);
  };

  it('allows a listed principal or wildcard, refuses others and plaintext (no principal)', () => {
    const allow = { allow: ['spiffe://td/a', 'spiffe://td/team/*'] };
    expect(admit(allow, '10.0.0.1', 'spiffe://td/a')).toBeNull();
    expect(admit(allow, '10.0.0.1', 'spiffe://td/team/x/y')).toBeNull();
    expect(admit(allow, '10.0.0.1', 'spiffe://td/b')).toBe('denied');
    expect(admit(allow, '10.0.0.1', 'spiffe://td/team')).toBe('denied');
    expect(admit(allow, '10.0.0.1', null)).toBe('denied');
  });

  it('lets deny win over allow, by principal or by address', () => {
    const entry = { allow: ['10.0.0.0/8', 'spiffe://td/*'], deny: ['spiffe://td/bad', '10.9.0.0/16'] };
    expect(admit(entry, '10.0.0.1', 'spiffe://td/bad')).toBe('denied');
    expect(admit(entry, '10.9.0.1', 'spiffe://td/good')).toBe('denied');
    expect(admit(entry, '10.0.0.1', 'spiffe://td/good')).toBeNull();
    // A plaintext source allowed by address.
    expect(admit(entry, '10.0.0.1', null)).toBeNull();
    expect(admit(entry, '192.168.0.1', 'spiffe://td/good')).toBeNull();
    expect(admit(entry, '192.168.0.1', null)).toBe('denied');
  });

  it('matches patterns as SPIFFE paths: the wildcard needs a segment below it', () => {
    expect(principalMatches({ kind: 'prefix', prefix: 'spiffe://td/ns/' }, 'spiffe://td/ns')).toBe(false);
    expect(principalMatches({ kind: 'prefix', prefix: 'spiffe://td/ns/' }, 'spiffe://td/nsx/a')).toBe(false);
    expect(principalMatches({ kind: 'exact', id: 'spiffe://td/a' }, 'spiffe://td/a/b')).toBe(false);
  });
});
