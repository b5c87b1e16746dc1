// Planner semantics that golden files alone would not make obvious.
import { describe, expect, it } from 'vitest';
import { chunkPorts, planCapture } from '../../src/capture/plan.js';
import type { FamilyPlan } from '../../src/capture/model.js';
import { cases, loadCase } from '../cases.js';

const fam = (plan: ReturnType<typeof planCapture>, family: 'ipv4' | 'ipv6'): FamilyPlan => {
  const found = plan.families.find((f) => f.family === family);
  if (!found) throw new Error(`no ${family} plan`);
  return found;
};
const purposes = (p: FamilyPlan, chain: string) => p.rules.filter((r) => r.chain === chain).map((r) => r.purpose);

describe('planCapture', () => {
  it('marks every rule with a purpose and only declares MESHCTL_ chains', () => {
    for (const { config } of cases) {
      for (const family of planCapture(config).families) {
        for (const chain of family.chains) expect(chain.name).toMatch(/^MESHCTL_[A-Z0-9_]+$/);
        for (const rule of family.rules) {
          expect(rule.purpose).toMatch(/^[a-z0-9-]+$/);
          expect(rule.origin.length).toBeGreaterThan(0);
          if (rule.target.kind === 'jump')
            expect(
              family.chains.some((c) => c.table === rule.table && c.name === (rule.target as { chain: string }).chain),
            ).toBe(true);
        }
      }
    }
  });

  it('exempts the proxy uid and gid before anything can redirect outbound traffic', () => {
    const p = fam(planCapture(loadCase('t', { proxy: { user: 'meshproxy' } })), 'ipv4');
    const order = purposes(p, 'MESHCTL_OUTPUT');
    expect(order.indexOf('skip-proxy-uid')).toBeLessThan(order.indexOf('outbound-to-proxy'));
    expect(order.indexOf('skip-proxy-gid')).toBeLessThan(order.indexOf('outbound-to-proxy'));
    expect(order.indexOf('skip-midstream')).toBe(0);
    expect(order.indexOf('skip-inbound-passthrough')).toBe(1);
    expect(order.indexOf('skip-inbound-passthrough')).toBeLessThan(order.indexOf('proxy-to-own-address-inbound'));
  });

  it('plans IPv6 like IPv4 in intercept mode, with ::1 and ::6 instead of 127.0.0.1 and 127.0.0.6', () => {
    const plan = planCapture(loadCase('t', { proxy: { user: 'meshproxy' } }));
    const v6 = fam(plan, 'ipv6');
    expect(purposes(v6, 'MESHCTL_OUTPUT')).toEqual(purposes(fam(plan, 'ipv4'), 'MESHCTL_OUTPUT'));
    expect(v6.rules.find((r) => r.purpose === 'skip-inbound-passthrough')?.matches).toContainEqual({
      kind: 'source',
      cidr: { family: 'ipv6', address: '::6', prefix: 128 },
    });
    expect(plan.loopbackAddresses).toEqual([{ family: 'ipv6', cidr: { family: 'ipv6', address: '::6', prefix: 128 } }]);
  });

  it('plans no IPv6 rules when ipv6 is off, and only reject rules when it is block', () => {
    expect(
      planCapture(loadCase('t', { proxy: { user: 'meshproxy' }, capture: { ipv6: 'off' } })).families.map(
        (f) => f.family,
      ),
    ).toEqual(['ipv4']);
    const v6 = fam(planCapture(loadCase('t', { proxy: { user: 'meshproxy' }, capture: { ipv6: 'block' } })), 'ipv6');
    expect(new Set(v6.rules.map((r) => r.table))).toEqual(new Set(['filter']));
    expect(v6.rules.filter((r) => r.target.kind === 'reject').map((r) => r.purpose)).toEqual([
      'ipv6-block-outbound',
      'ipv6-block-inbound',
    ]);
    expect(v6.rules.some((r) => r.target.kind === 'redirect')).toBe(false);
  });

  it('plans TPROXY with a mark, policy routes for each intercepted family and an established-socket shortcut', () => {
    const plan = planCapture(
      loadCase('t', {
        proxy: { user: 'meshproxy' },
        capture: { inbound: { mode: 'tproxy', tproxyMark: 7, tproxyRouteTable: 77 } },
      }),
    );
    expect(plan.routes).toEqual([
      { family: 'ipv4', mark: 7, mask: 0xffffffff, table: 77, priority: 32000 },
      { family: 'ipv6', mark: 7, mask: 0xffffffff, table: 77, priority: 32000 },
    ]);
    const v4 = fam(plan, 'ipv4');
    expect(purposes(v4, 'MESHCTL_INBOUND').slice(0, 4)).toEqual([
      'tproxy-established',
      'skip-loopback',
      'skip-midstream',
      'tproxy-established',
    ]);
    expect(v4.rules.find((r) => r.target.kind === 'tproxy')?.target).toEqual({
      kind: 'tproxy',
      toPort: 15006,
      mark: 7,
      mask: 0xffffffff,
    });
    expect(v4.rules.find((r) => r.purpose === 'proxy-to-own-address-inbound')?.target).toEqual({
      kind: 'jump',
      chain: 'MESHCTL_LOCAL_INBOUND',
    });
  });

  it("separates DNS conntrack zones so the proxy's own queries come first", () => {
    const v4 = fam(
      planCapture(loadCase('t', { proxy: { user: 'meshproxy' }, capture: { dns: { enabled: true, port: 15053 } } })),
      'ipv4',
    );
    expect(purposes(v4, 'MESHCTL_DNS_ZONE_OUT')).toEqual([
      'dns-zone-proxy-query',
      'dns-zone-proxy-reply',
      'dns-zone-proxy-query',
      'dns-zone-proxy-reply',
      'dns-zone-app-query',
    ]);
    expect(purposes(v4, 'MESHCTL_DNS')).toEqual([
      'skip-proxy-uid',
      'skip-proxy-gid',
      'dns-udp-to-proxy',
      'dns-tcp-to-proxy',
    ]);
    expect(v4.rules.find((r) => r.purpose === 'dns-tcp-to-proxy')?.target).toEqual({ kind: 'redirect', toPort: 15053 });
  });

  it("captures DNS over TCP like UDP, loopback included (before skip-loopback), and never sends the proxy's own TCP DNS to the inbound port", () => {
    const config = loadCase('t', { proxy: { user: 'meshproxy' }, capture: { dns: { enabled: true, port: 15053 } } });
    const v4 = fam(planCapture(config), 'ipv4');
    const jumps = v4.rules
      .filter((r) => r.table === 'nat' && r.chain === 'OUTPUT')
      .map((r) => [r.purpose, r.matches.find((m) => m.kind === 'protocol')]);
    expect(jumps).toEqual([
      ['dns-capture', { kind: 'protocol', protocol: 'udp' }],
      ['dns-capture', { kind: 'protocol', protocol: 'tcp' }],
      ['outbound-capture', { kind: 'protocol', protocol: 'tcp' }],
    ]);
    expect(purposes(v4, 'MESHCTL_OUTPUT')).not.toContain('dns-tcp-to-proxy');
    for (const rule of v4.rules.filter((r) => r.purpose === 'proxy-to-own-address-inbound')) {
      expect(rule.matches).toContainEqual({ kind: 'destinationPort', ports: [{ from: 53, to: 53 }], negate: true });
    }
  });

  it("puts only the listed DNS servers' replies in the upstream conntrack zone", () => {
    const v4 = fam(
      planCapture(
        loadCase('t', {
          proxy: { user: 'meshproxy' },
          capture: { dns: { enabled: true, servers: ['10.0.0.53/32', '10.0.1.0/24'] } },
        }),
      ),
      'ipv4',
    );
    const replies = v4.rules.filter((r) => r.purpose === 'dns-zone-upstream-reply');
    expect(replies.map((r) => [r.matches.find((m) => m.kind === 'source'), r.origin])).toEqual([
      [{ kind: 'source', cidr: { family: 'ipv4', address: '10.0.0.53', prefix: 32 } }, 'capture.dns.servers[0]'],
      [{ kind: 'source', cidr: { family: 'ipv4', address: '10.0.1.0', prefix: 24 } }, 'capture.dns.servers[1]'],
    ]);
  });

  it('never redirects the SSH ports inbound, and includes the current SSH session when known', () => {
    const config = loadCase('t', { proxy: { user: 'meshproxy' }, safety: { sshPorts: [22, 2022] } });
    const v4 = fam(planCapture(config), 'ipv4');
    expect(v4.rules.find((r) => r.purpose === 'skip-ssh')?.matches).toContainEqual({
      kind: 'destinationPort',
      ports: [
        { from: 22, to: 22 },
        { from: 2022, to: 2022 },
      ],
    });
    const unsafe = fam(
      planCapture(loadCase('t', { proxy: { user: 'meshproxy' }, safety: { unsafeCaptureSsh: true } })),
      'ipv4',
    );
    expect(unsafe.rules.some((r) => r.purpose === 'skip-ssh')).toBe(false);
  });

  it('splits long port lists into multiport groups of at most 15 slots (a range takes two)', () => {
    const ports = Array.from({ length: 20 }, (_, i) => ({ from: 1000 + i, to: 1000 + i }));
    expect(chunkPorts(ports).map((c) => c.length)).toEqual([15, 5]);
    expect(
      chunkPorts([
        ...Array.from({ length: 7 }, (_, i) => ({ from: i * 10 + 1, to: i * 10 + 5 })),
        { from: 98, to: 98 },
        { from: 99, to: 99 },
      ]).map((c) => c.length),
    ).toEqual([8, 1]);
  });

  it('restricts capture to included groups with one rule of negated owner matches', () => {
    const v4 = fam(
      planCapture(
        loadCase('t', { proxy: { user: 'meshproxy' }, capture: { outbound: { includeGids: ['apps', 2100] } } }),
      ),
      'ipv4',
    );
    const rule = v4.rules.find((r) => r.purpose === 'skip-gid-not-included');
    expect(rule?.matches).toEqual([
      { kind: 'gidOwner', gid: 2000, negate: true, suppl: true },
      { kind: 'gidOwner', gid: 2100, negate: true, suppl: true },
    ]);
  });

  it('lets only a SYN start capture, so connections older than the rules are never cut', () => {
    for (const ipv6 of ['intercept', 'block'] as const) {
      const plan = planCapture(loadCase('t', { proxy: { user: 'meshproxy' }, capture: { ipv6 } }));
      for (const f of plan.families) {
        const entry = f.rules
          .filter((r) => r.target.kind === 'jump' && !r.chain.startsWith('MESHCTL_'))
          .map((r) => (r.target as { chain: string }).chain);
        for (const chain of entry.filter((c) => !c.startsWith('MESHCTL_DNS') && c !== 'MESHCTL_DROP_INVALID')) {
          expect(
            f.rules.find((r) => r.chain === chain && r.purpose === 'skip-midstream'),
            `${f.family} ${chain}`,
          ).toBeDefined();
        }
      }
    }
  });

  it('plans nothing but what is enabled', () => {
    const plan = planCapture(
      loadCase('t', {
        proxy: { user: 'meshproxy' },
        capture: { inbound: { enabled: false }, outbound: { enabled: false }, ipv6: 'off' },
      }),
    );
    expect(plan.families).toEqual([]);
  });
});
