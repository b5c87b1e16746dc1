// renderNft: one atomic script for `table inet meshctl`, in exactly the text `nft list` prints back.
import { describe, expect, it } from 'vitest';
import {
  normalizeNftListing,
  nftChainName,
  renderNft,
  renderNftDelete,
  renderNftRule,
  renderNftTable,
} from '../../src/capture/render-nft.js';
import { planCapture } from '../../src/capture/plan.js';
import { isMeshctlError } from '../../src/errors.js';
import type { CapturePlan, Rule } from '../../src/capture/model.js';
import { cases } from '../cases.js';
import { featurePlan } from '../helpers/kernel-cases.js';

const planOf = (name: string): CapturePlan => planCapture(cases.find((c) => c.name === name)!.config);
const feature: CapturePlan = {
  families: [featurePlan('ipv4'), featurePlan('ipv6')],
  routes: [],
  loopbackAddresses: [],
};

/** The rendered nft lines of the feature plan's rule with this purpose. */
function linesFor(purpose: string, family: 'ipv4' | 'ipv6' = 'ipv4'): string[] {
  const fp = feature.families.find((f) => f.family === family)!;
  const rule = fp.rules.find((r) => r.purpose === purpose)!;
  return renderNftRule(rule, family);
}

function internalError(fn: () => unknown): string {
  try {
    fn();
  } catch (error) {
    if (isMeshctlError(error, 'INTERNAL')) return error.message;
    throw error;
  }
  throw new Error('expected INTERNAL');
}

/**
 * A plan or rule nftables cannot express, so render-nft refuses it: a group list (matching supplementary groups), or
 * includeUnits (a negated unit match).
 */
function nftRefuses(x: CapturePlan | Rule): boolean {
  const rules = 'families' in x ? x.families.flatMap((f) => f.rules) : [x];
  return rules.some((r) =>
    r.matches.some((m) => (m.kind === 'gidOwner' && m.suppl === true) || (m.kind === 'cgroup' && m.negate === true)),
  );
}

describe('renderNft script shape', () => {
  it('creates then deletes the table before redefining it, so one nft -f replaces it atomically', () => {
    const script = renderNft(planOf('vm-default'));
    expect(script.split('\n').slice(0, 3)).toEqual([
      'add table inet meshctl',
      'delete table inet meshctl',
      'table inet meshctl {',
    ]);
    expect(script.endsWith('}\n')).toBe(true);
    expect(renderNftDelete()).toBe('add table inet meshctl\ndelete table inet meshctl\n');
  });

  it('declares one base chain per hook in use, dispatching per family', () => {
    const table = renderNftTable(planOf('vm-default'));
    expect(table).toContain(
      '\tchain nat_prerouting {\n\t\ttype nat hook prerouting priority dstnat; policy accept;\n' +
        '\t\tmeta nfproto ipv4 jump v4_nat_PREROUTING comment "meshctl:dispatch-ipv4"\n' +
        '\t\tmeta nfproto ipv6 jump v6_nat_PREROUTING comment "meshctl:dispatch-ipv6"\n\t}',
    );
    expect(table).toContain('\tchain nat_output {\n\t\ttype nat hook output priority -100; policy accept;\n');
    expect(table).not.toContain('mangle_');
    expect(table).not.toContain('raw_');
    const tproxy = renderNftTable(planOf('vm-tproxy-dns'));
    expect(tproxy).toContain(
      '\tchain mangle_prerouting {\n\t\ttype filter hook prerouting priority mangle; policy accept;\n',
    );
    expect(tproxy).toContain('\tchain raw_output {\n\t\ttype filter hook output priority raw; policy accept;\n');
    const block = renderNftTable(planOf('dual-stack-block'));
    expect(block).toContain(
      '\tchain filter_output {\n\t\ttype filter hook output priority filter; policy accept;\n\t\tmeta nfproto ipv6 jump v6_filter_OUTPUT',
    );
    expect(block).toContain('\tchain filter_input {\n\t\ttype filter hook input priority filter; policy accept;\n');
  });

  it('mirrors every planned chain per family and puts a meshctl comment on every rule', () => {
    // Plans with group lists are refused by nftables (supplementary groups), see below.
    for (const c of cases.filter((x) => !nftRefuses(planCapture(x.config)))) {
      const plan = planCapture(c.config);
      const table = renderNftTable(plan);
      for (const fp of plan.families)
        for (const chain of fp.chains)
          expect(table).toContain(`\tchain ${nftChainName(fp.family, chain.table, chain.name)} {\n`);
      const ruleLines = table.split('\n').filter((l) => l.startsWith('\t\t') && !l.includes(' hook '));
      const expected = plan.families
        .flatMap((f) => f.rules)
        .reduce((n, r) => n + (r.target.kind === 'tproxy' ? 2 : 1), 0);
      const dispatch = table.split('\n').filter((l) => l.includes('meta nfproto')).length;
      expect(ruleLines).toHaveLength(expected + dispatch);
      for (const line of ruleLines) expect(line).toMatch(/ comment "meshctl:[a-z0-9-]+"$/);
    }
  });
});

describe('renderNftRule translations', () => {
  it('translates owner, interface, address and port matches like nft prints them', () => {
    const plan = planOf('owner-group-allowlist');
    const out = plan.families.find((f) => f.family === 'ipv4')!;
    const rendered = out.rules.filter((r) => !nftRefuses(r)).flatMap((r) => renderNftRule(r, 'ipv4'));
    const groups = out.rules.find((r) => r.purpose === 'skip-gid-not-included')!;
    expect(() => renderNftRule(groups, 'ipv4')).toThrow(
      /capture\.outbound\.includeGids \(group 2000\) cannot be honoured by the nftables backend/,
    );
    expect(rendered).toContain('ip saddr 127.0.0.6 oifname "lo" return comment "meshctl:skip-inbound-passthrough"');
    expect(rendered).toContain(
      'ip daddr != 127.0.0.1 oifname "lo" meta l4proto tcp meta skuid 1337 jump v4_nat_MESHCTL_INBOUND comment "meshctl:proxy-to-own-address-inbound"',
    );
    expect(rendered).toContain('meta l4proto tcp redirect to :15001 comment "meshctl:redirect-outbound"');
    expect(
      rendered.some((l) => l.startsWith('tcp dport { 80, 443, 5432, 8000-8999 } jump v4_nat_MESHCTL_REDIRECT')),
    ).toBe(true);
    const v6 = plan.families
      .find((f) => f.family === 'ipv6')!
      .rules.filter((r) => !nftRefuses(r))
      .flatMap((r) => renderNftRule(r, 'ipv6'));
    expect(v6).toContain('ip6 saddr ::6 oifname "lo" return comment "meshctl:skip-inbound-passthrough"');
  });

  it('drops the redundant l4proto before a port match and keeps it otherwise', () => {
    expect(linesFor('f-reject')).toEqual(['tcp dport 25 reject with tcp reset comment "meshctl:f-reject"']);
    expect(linesFor('f-accept-lo')).toEqual(['meta l4proto tcp iifname "lo" accept comment "meshctl:f-accept-lo"']);
    expect(linesFor('f-not-udp')).toEqual([
      'meta l4proto != udp ip saddr != 192.0.2.0/24 return comment "meshctl:f-not-udp"',
    ]);
  });

  it('sorts and merges port sets and renders negated sets', () => {
    expect(linesFor('f-not-multiport')).toEqual([
      'tcp dport != { 80, 8080, 9000-9010 } return comment "meshctl:f-not-multiport"',
    ]);
    expect(linesFor('f-sports')).toEqual(['tcp sport { 1000-2000, 3000 } return comment "meshctl:f-sports"']);
    expect(linesFor('f-redirect')).toEqual([
      'tcp sport 1024-65535 ip daddr 192.0.2.0 oifname "eth0" redirect to :15001 comment "meshctl:f-redirect"',
    ]);
  });

  it('renders conntrack state sets in kernel bit order and marks as 0x%08x', () => {
    expect(linesFor('f-ctstate-set')).toEqual(['ct state { invalid, new } drop comment "meshctl:f-ctstate-set"']);
    expect(linesFor('f-ctstate-not')).toEqual([
      'ct state != { established, related } return comment "meshctl:f-ctstate-not"',
    ]);
    expect(linesFor('f-ctstate-untracked')).toEqual([
      'ct state untracked accept comment "meshctl:f-ctstate-untracked"',
    ]);
    expect(linesFor('f-mark-masked')).toEqual([
      'meta mark & 0x00000001 == 0x00000001 return comment "meshctl:f-mark-masked"',
    ]);
    expect(linesFor('f-mark-not')).toEqual(['meta mark != 0x00000539 return comment "meshctl:f-mark-not"']);
    expect(linesFor('f-mark-masked-not')).toEqual([
      'meta mark & 0x00000003 != 0x00000002 return comment "meshctl:f-mark-masked-not"',
    ]);
  });

  it('renders xmark semantics in the folded form nft lists', () => {
    expect(linesFor('f-set-mark-bit')).toEqual([
      'meta mark set meta mark | 0x00000001 comment "meshctl:f-set-mark-bit"',
    ]);
    expect(linesFor('f-set-mark-partial')).toEqual([
      'meta mark set meta mark & 0xfffffffd | 0x00000001 comment "meshctl:f-set-mark-partial"',
    ]);
    expect(linesFor('f-set-mark-xor')).toEqual([
      'meta mark set meta mark & 0xfffffffc ^ 0x00000004 comment "meshctl:f-set-mark-xor"',
    ]);
    expect(linesFor('f-clear-mark')).toEqual(['meta mark set meta mark & 0xffff00ff comment "meshctl:f-clear-mark"']);
  });

  it('renders TPROXY as tproxy + mark + accept, then drop for when no proxy socket listens (as xt_TPROXY does)', () => {
    expect(linesFor('f-tproxy-masked')).toEqual([
      'tcp dport != 22 tproxy ip to :15006 meta mark set meta mark | 0x00000010 accept comment "meshctl:f-tproxy-masked"',
      'tcp dport != 22 drop comment "meshctl:f-tproxy-masked"',
    ]);
    expect(linesFor('f-tproxy-masked', 'ipv6')[0]).toContain('tproxy ip6 to :15006');
    expect(linesFor('f-zone')).toEqual(['udp dport 53 meta skuid 0 ct zone set 7 comment "meshctl:f-zone"']);
    expect(linesFor('f-socket')).toEqual(['meta l4proto tcp socket transparent 1 accept comment "meshctl:f-socket"']);
    expect(linesFor('f-mangle-jump')).toEqual([
      'meta l4proto tcp iifname != "veth*" jump v4_mangle_MESHCTL_F_MANGLE comment "meshctl:f-mangle-jump"',
    ]);
  });

  it('refuses rules nft cannot express with an INTERNAL error', () => {
    const base: Rule = {
      table: 'nat',
      chain: 'MESHCTL_X',
      matches: [],
      target: { kind: 'return' },
      purpose: 'x',
      origin: 'test',
    };
    expect(
      internalError(() =>
        renderNftRule({ ...base, matches: [{ kind: 'destinationPort', ports: [{ from: 1, to: 1 }] }] }, 'ipv4'),
      ),
    ).toContain('port match without');
    expect(internalError(() => renderNftRule({ ...base, purpose: 'say "hi"' }, 'ipv4'))).toContain('rule comment');
    expect(internalError(() => renderNftRule({ ...base, target: { kind: 'redirect', toPort: 1 } }, 'ipv4'))).toContain(
      'REDIRECT without',
    );
    expect(
      internalError(() =>
        renderNftRule(
          { ...base, matches: [{ kind: 'source', cidr: { family: 'ipv6', address: '::1', prefix: 128 } }] },
          'ipv4',
        ),
      ),
    ).toContain('in a ipv4 rule');
  });
});

describe('normalizeNftListing', () => {
  it('makes a listing with handles and counters equal to the rendered script', () => {
    const script = renderNft(planOf('vm-default'));
    const listing = renderNftTable(planOf('vm-default'))
      .split('\n')
      .map((l, i) =>
        l.startsWith('\t\t') && !l.includes('hook')
          ? l.replace(/ comment /, ' counter packets 12 bytes 720 comment ') + ` # handle ${i}`
          : l,
      )
      .join('\n')
      .replace(/\t/g, '    ');
    expect(listing).not.toBe(script);
    expect(normalizeNftListing(listing)).toBe(normalizeNftListing(script));
    expect(normalizeNftListing('# comment\n\n  table inet meshctl {  \n\tchain a {\n\t}\n}\n')).toBe(
      'table inet meshctl {\nchain a {\n}\n}',
    );
  });

  it('keeps differences that matter', () => {
    const a = renderNftTable(planOf('vm-default'));
    expect(normalizeNftListing(a.replace('redirect to :15001', 'redirect to :15002'))).not.toBe(normalizeNftListing(a));
  });
});
