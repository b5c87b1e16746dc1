// Matching original destinations to services and sources to CIDRs: fast IPv4 parsing, longest-prefix tables,
// exact-before-CIDR, IPv6 canonical forms.
import { describe, expect, it } from 'vitest';
import { parseCidr } from '../../src/values/ip.js';
import type { Cidr } from '../../src/values/ip.js';
import { CidrSet, CidrTable, ipv4ToInt } from '../../src/policy/cidr-table.js';
import { ServiceMatcher, type RegistryEntry } from '../../src/policy/registry.js';

const cidr = (text: string) => parseCidr(text) as Cidr;

describe('ipv4ToInt', () => {
  it('parses dotted quads, IPv4-mapped IPv6, and rejects everything else', () => {
    expect(ipv4ToInt('0.0.0.0')).toBe(0);
    expect(ipv4ToInt('10.1.2.3')).toBe(0x0a010203);
    expect(ipv4ToInt('255.255.255.255')).toBe(0xffffffff);
    expect(ipv4ToInt('::ffff:192.168.1.1')).toBe(0xc0a80101);
    for (const bad of [
      '',
      '1.2.3',
      '1.2.3.4.5',
      '256.0.0.1',
      '1..2.3',
      '1.2.3.',
      'a.b.c.d',
      '1.2.3.4 ',
      'fd00::1',
      '1234.1.1.1',
    ])
      expect(ipv4ToInt(bad), bad).toBe(-1);
  });
});

describe('CidrTable', () => {
  const table = new CidrTable<string>([
    [cidr('10.0.0.0/8'), 'eight'],
    [cidr('10.1.0.0/16'), 'sixteen'],
    [cidr('10.1.2.3/32'), 'host'],
    [cidr('0.0.0.0/0'), 'any4'],
    [cidr('fd00::/8'), 'ula'],
    [cidr('fd00:1::/32'), 'ula32'],
    [cidr('10.0.0.0/8'), 'shadowed'],
  ]);

  it('returns the longest prefix that contains the address', () => {
    expect(table.lookup('10.1.2.3')).toBe('host');
    expect(table.lookup('10.1.9.9')).toBe('sixteen');
    expect(table.lookup('10.200.0.1')).toBe('eight');
    expect(table.lookup('192.0.2.1')).toBe('any4');
    expect(table.lookup('::ffff:10.1.2.3')).toBe('host');
    expect(table.lookup('fd00:1::5')).toBe('ula32');
    expect(table.lookup('fd00:2::5')).toBe('ula');
    expect(table.lookup('2001:db8::1')).toBeUndefined();
    expect(table.lookup('fd00::1%eth0')).toBe('ula');
    expect(table.lookup('not an address')).toBeUndefined();
  });

  it('keeps the first value of an identical CIDR', () => {
    expect(table.lookup('10.9.9.9')).toBe('eight');
    expect(table.size).toBe(7);
  });

  it('answers set membership for allow/deny lists', () => {
    const set = new CidrSet([cidr('192.0.2.0/24'), cidr('2001:db8::/32')]);
    expect(set.has('192.0.2.77')).toBe(true);
    expect(set.has('192.0.3.1')).toBe(false);
    expect(set.has('2001:db8:1::1')).toBe(true);
    expect(set.has('2001:db9::1')).toBe(false);
    expect(new CidrSet([]).has('10.0.0.1')).toBe(false);
  });
});

describe('ServiceMatcher', () => {
  const entries: RegistryEntry<string>[] = [
    { kind: 'cidr', cidr: cidr('10.96.0.0/16'), port: 80, value: 'broad' },
    { kind: 'cidr', cidr: cidr('10.96.5.0/24'), port: 80, value: 'narrow' },
    { kind: 'ip', address: '10.96.5.5', port: 80, value: 'exact' },
    { kind: 'ip', address: 'fd00:0:0::10', port: 443, value: 'six' },
    { kind: 'cidr', cidr: cidr('fd00:96::/64'), port: 443, value: 'six-net' },
    { kind: 'ip', address: '10.96.5.5', port: 80, value: 'duplicate' },
  ];
  const m = new ServiceMatcher(entries);

  it('matches an exact address:port first, then the longest CIDR on that port', () => {
    expect(m.lookup('10.96.5.5', 80)).toBe('exact');
    expect(m.lookup('10.96.5.6', 80)).toBe('narrow');
    expect(m.lookup('10.96.200.1', 80)).toBe('broad');
    expect(m.lookup('10.97.0.1', 80)).toBeNull();
    expect(m.lookup('10.96.5.5', 81)).toBeNull();
  });

  it('matches IPv6 whatever the text form of the original destination', () => {
    expect(m.lookup('fd00::10', 443)).toBe('six');
    expect(m.lookup('fd00:0:0:0:0:0:0:10', 443)).toBe('six');
    expect(m.lookup('fd00:96::1234', 443)).toBe('six-net');
    expect(m.lookup('fd00::11', 443)).toBeNull();
  });

  it('holds a hundred services at one lookup each (no scan)', () => {
    const many = new ServiceMatcher(
      Array.from({ length: 100 }, (_, i): RegistryEntry<number> => ({
        kind: 'ip',
        address: `10.200.${i}.1`,
        port: 80,
        value: i,
      })),
    );
    expect(many.size).toBe(100);
    expect(many.lookup('10.200.57.1', 80)).toBe(57);
    expect(many.lookup('10.200.57.2', 80)).toBeNull();
  });
});
