// Plans the parser, diff, nft renderer and kernel-load tests run on: every shipped example (test/cases.ts), a few
// extra configs that reach features the examples do not combine, and one hand-built plan using every model feature.
import type { CapturePlan, FamilyPlan, Match, Rule, Target } from '../../src/capture/model.js';
import { planCapture } from '../../src/capture/plan.js';
import { hostCidr } from '../../src/values/ip.js';
import { cases, loadCase } from '../cases.js';

/** Configs beyond the examples: TPROXY + DNS + IPv6 intercept + wildcard interfaces + group allow-list together. */
export const extraConfigs: readonly { name: string; raw: unknown }[] = [
  {
    name: 'extra-everything-dual-stack',
    raw: {
      proxy: { user: 'meshproxy' },
      capture: {
        ipv6: 'intercept',
        dropInvalid: true,
        excludeInterfaces: ['docker+', 'wg0'],
        inbound: { mode: 'tproxy', excludePorts: ['8000-8100'] },
        dns: { enabled: true },
        outbound: {
          excludeCidrs: ['10.0.0.0/8', 'fd00::/8'],
          excludePorts: [5432],
          excludeUids: ['backup'],
          includeGids: ['apps', 'batch'],
        },
      },
    },
  },
  {
    name: 'extra-outbound-only-v4',
    raw: {
      proxy: { user: 'meshproxy' },
      capture: { ipv6: 'off', inbound: { enabled: false }, outbound: { includePorts: [80, 443] } },
    },
  },
];

const tcp: Match = { kind: 'protocol', protocol: 'tcp' };
const udp: Match = { kind: 'protocol', protocol: 'udp' };

function rule(table: Rule['table'], chain: string, matches: Match[], target: Target, purpose: string): Rule {
  return { table, chain, matches, target, purpose, origin: 'test' };
}

/**
 * One family's plan using every match and target kind, in forms the planner does not (yet) produce: partial mark
 * masks, several conntrack states, negated multiport, source-port lists, negated interfaces and protocols.
 */
export function featurePlan(family: 'ipv4' | 'ipv6'): FamilyPlan {
  const net = family === 'ipv4' ? hostCidr('192.0.2.0') : hostCidr('2001:db8::');
  const wide = { ...net, prefix: family === 'ipv4' ? 24 : 64 };
  const rules: Rule[] = [
    rule(
      'raw',
      'MESHCTL_F_RAW',
      [udp, { kind: 'destinationPort', ports: [{ from: 53, to: 53 }] }, { kind: 'uidOwner', uid: 0 }],
      { kind: 'ctZone', zone: 7 },
      'f-zone',
    ),
    rule('raw', 'OUTPUT', [udp], { kind: 'jump', chain: 'MESHCTL_F_RAW' }, 'f-raw-jump'),
    rule('mangle', 'MESHCTL_F_MANGLE', [{ kind: 'mark', value: 1, mask: 1 }], { kind: 'return' }, 'f-mark-masked'),
    rule(
      'mangle',
      'MESHCTL_F_MANGLE',
      [{ kind: 'mark', value: 0x539, mask: 0xffffffff, negate: true }],
      { kind: 'return' },
      'f-mark-not',
    ),
    rule(
      'mangle',
      'MESHCTL_F_MANGLE',
      [{ kind: 'mark', value: 2, mask: 3, negate: true }],
      { kind: 'return' },
      'f-mark-masked-not',
    ),
    rule('mangle', 'MESHCTL_F_MANGLE', [], { kind: 'setMark', value: 1, mask: 1 }, 'f-set-mark-bit'),
    rule('mangle', 'MESHCTL_F_MANGLE', [], { kind: 'setMark', value: 1, mask: 3 }, 'f-set-mark-partial'),
    rule('mangle', 'MESHCTL_F_MANGLE', [], { kind: 'setMark', value: 4, mask: 3 }, 'f-set-mark-xor'),
    rule('mangle', 'MESHCTL_F_MANGLE', [], { kind: 'setMark', value: 0, mask: 0xff00 }, 'f-clear-mark'),
    rule(
      'mangle',
      'MESHCTL_F_MANGLE',
      [{ kind: 'connmark', value: 0x539, mask: 0xffffffff }],
      { kind: 'setMark', value: 0x539, mask: 0xffffffff },
      'f-connmark',
    ),
    rule(
      'mangle',
      'MESHCTL_F_MANGLE',
      [{ kind: 'connmark', value: 2, mask: 3, negate: true }],
      { kind: 'return' },
      'f-connmark-masked-not',
    ),
    rule('mangle', 'MESHCTL_F_MANGLE', [], { kind: 'setConnmark', value: 0x539, mask: 0xffffffff }, 'f-set-connmark'),
    rule('mangle', 'MESHCTL_F_MANGLE', [], { kind: 'setConnmark', value: 1, mask: 3 }, 'f-set-connmark-partial'),
    rule(
      'mangle',
      'MESHCTL_F_MANGLE',
      [{ kind: 'ctState', states: ['NEW', 'INVALID'] }],
      { kind: 'drop' },
      'f-ctstate-set',
    ),
    rule(
      'mangle',
      'MESHCTL_F_MANGLE',
      [{ kind: 'ctState', states: ['ESTABLISHED', 'RELATED'], negate: true }],
      { kind: 'return' },
      'f-ctstate-not',
    ),
    rule(
      'mangle',
      'MESHCTL_F_MANGLE',
      [{ kind: 'ctState', states: ['UNTRACKED'] }],
      { kind: 'accept' },
      'f-ctstate-untracked',
    ),
    rule('mangle', 'MESHCTL_F_MANGLE', [tcp, { kind: 'socketTransparent' }], { kind: 'accept' }, 'f-socket'),
    rule(
      'mangle',
      'MESHCTL_F_MANGLE',
      [tcp, { kind: 'destinationPort', ports: [{ from: 22, to: 22 }], negate: true }],
      { kind: 'tproxy', toPort: 15006, mark: 0x10, mask: 0x10 },
      'f-tproxy-masked',
    ),
    rule(
      'mangle',
      'PREROUTING',
      [tcp, { kind: 'inInterface', name: 'veth+', negate: true }],
      { kind: 'jump', chain: 'MESHCTL_F_MANGLE' },
      'f-mangle-jump',
    ),
    rule(
      'nat',
      'MESHCTL_F_NAT',
      [
        { kind: 'protocol', protocol: 'udp', negate: true },
        { kind: 'source', cidr: wide, negate: true },
      ],
      { kind: 'return' },
      'f-not-udp',
    ),
    rule(
      'nat',
      'MESHCTL_F_NAT',
      [
        tcp,
        {
          kind: 'destinationPort',
          ports: [
            { from: 8080, to: 8080 },
            { from: 80, to: 80 },
            { from: 9000, to: 9010 },
          ],
          negate: true,
        },
      ],
      { kind: 'return' },
      'f-not-multiport',
    ),
    rule(
      'nat',
      'MESHCTL_F_NAT',
      [
        tcp,
        {
          kind: 'sourcePort',
          ports: [
            { from: 1000, to: 2000 },
            { from: 3000, to: 3000 },
          ],
        },
      ],
      { kind: 'return' },
      'f-sports',
    ),
    rule(
      'nat',
      'MESHCTL_F_NAT',
      [
        tcp,
        { kind: 'sourcePort', ports: [{ from: 1024, to: 65535 }] },
        { kind: 'destination', cidr: net },
        { kind: 'outInterface', name: 'eth0' },
      ],
      { kind: 'redirect', toPort: 15001 },
      'f-redirect',
    ),
    rule(
      'nat',
      'MESHCTL_F_NAT',
      [
        { kind: 'gidOwner', gid: 2000, negate: true },
        { kind: 'gidOwner', gid: 2100, negate: true },
      ],
      { kind: 'return' },
      'f-groups',
    ),
    rule('nat', 'OUTPUT', [tcp], { kind: 'jump', chain: 'MESHCTL_F_NAT' }, 'f-nat-jump'),
    rule(
      'filter',
      'MESHCTL_F_FILTER',
      [tcp, { kind: 'destinationPort', ports: [{ from: 25, to: 25 }] }],
      { kind: 'reject', with: 'tcp-reset' },
      'f-reject',
    ),
    rule('filter', 'MESHCTL_F_FILTER', [tcp, { kind: 'inInterface', name: 'lo' }], { kind: 'accept' }, 'f-accept-lo'),
    rule('filter', 'OUTPUT', [tcp], { kind: 'jump', chain: 'MESHCTL_F_FILTER' }, 'f-filter-jump'),
    rule('filter', 'INPUT', [tcp], { kind: 'jump', chain: 'MESHCTL_F_FILTER' }, 'f-filter-jump-in'),
  ];
  const chains = [
    { table: 'raw' as const, name: 'MESHCTL_F_RAW' },
    { table: 'mangle' as const, name: 'MESHCTL_F_MANGLE' },
    { table: 'mangle' as const, name: 'MESHCTL_F_EMPTY' },
    { table: 'nat' as const, name: 'MESHCTL_F_NAT' },
    { table: 'filter' as const, name: 'MESHCTL_F_FILTER' },
  ];
  return { family, chains, rules };
}

export interface PlanCase {
  readonly name: string;
  readonly plan: CapturePlan;
}

/** Every example, the extra configs, and the hand-built feature plan (both families). */
export function unitPlans(): PlanCase[] {
  return [
    ...cases.map((c) => ({ name: c.name, plan: planCapture(c.config) })),
    ...extraConfigs.map((c) => ({ name: c.name, plan: planCapture(loadCase(c.name, c.raw)) })),
    {
      name: 'feature-plan',
      plan: { families: [featurePlan('ipv4'), featurePlan('ipv6')], routes: [], loopbackAddresses: [] },
    },
  ];
}
