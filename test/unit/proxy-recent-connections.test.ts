// The worker's ring of recent closes and the source match behind the admin /lookup (src/proxy/recent-connections.ts).
import { describe, expect, it } from 'vitest';
import {
  lookupRows,
  matchesSource,
  parseSourceQuery,
  RecentConnections,
  type ClosedConnection,
  type LiveConnection,
  type SourceQuery,
} from '../../src/proxy/recent-connections.js';

function query(text: string): SourceQuery {
  const q = parseSourceQuery(text);
  if (typeof q === 'string') throw new Error(q);
  return q;
}

function closed(
  id: string,
  source: string,
  startedAt: number,
  extra: Partial<ClosedConnection> = {},
): ClosedConnection {
  return {
    id,
    direction: 'outbound',
    source,
    dst: { family: 'ipv4', address: '192.0.2.10', port: 80 },
    result: 'connect-failed',
    detail: 'ECONNREFUSED',
    startedAt,
    ...extra,
  };
}

describe('parseSourceQuery', () => {
  it('spells the asked endpoint canonically: dotted quad, RFC 5952 IPv6 in brackets, IPv4-mapped as IPv4', () => {
    expect(query('10.1.0.1:40000').text).toBe('10.1.0.1:40000');
    expect(query('[2001:DB8:0:0::0:1]:443').text).toBe('[2001:db8::1]:443');
    expect(query('[::ffff:10.1.0.1]:5').text).toBe('10.1.0.1:5');
    expect(query('[::ffff:10.1.0.1]:5').address.family).toBe('ipv4');
  });

  it('names what is wrong with a malformed source', () => {
    expect(parseSourceQuery('')).toBe('source must be ADDR:PORT or [IPV6]:PORT, got ""');
    expect(parseSourceQuery('2001:db8::1:80')).toBe('source must be ADDR:PORT or [IPV6]:PORT, got "2001:db8::1:80"');
    expect(parseSourceQuery('example.com:80')).toBe('source must be ADDR:PORT or [IPV6]:PORT, got "example.com:80"');
    expect(parseSourceQuery('10.0.0.1:0')).toBe('source port must be 1-65535, got 0 in "10.0.0.1:0"');
    expect(parseSourceQuery('[::1]:65536')).toBe('source port must be 1-65535, got 65536 in "[::1]:65536"');
  });
});

describe('matchesSource', () => {
  it('matches the same address and port however the address is spelled', () => {
    expect(matchesSource('10.1.0.1:40000', query('10.1.0.1:40000'))).toBe(true);
    expect(matchesSource('[::ffff:10.1.0.1]:40000', query('10.1.0.1:40000'))).toBe(true);
    expect(matchesSource('[2001:db8::1]:443', query('[2001:0db8:0000::1]:443'))).toBe(true);
  });

  it('does not match another port, another address, another family or an unknown source', () => {
    expect(matchesSource('10.1.0.1:40001', query('10.1.0.1:40000'))).toBe(false);
    expect(matchesSource('10.1.0.2:40000', query('10.1.0.1:40000'))).toBe(false);
    expect(matchesSource('[::a01:1]:40000', query('10.1.0.1:40000'))).toBe(false);
    expect(matchesSource('?', query('10.1.0.1:40000'))).toBe(false);
    expect(matchesSource('?:40000', query('10.1.0.1:40000'))).toBe(false);
  });
});

describe('RecentConnections', () => {
  it('keeps the last `capacity` closes, newest first, with their age since accept and since close', () => {
    const ring = new RecentConnections(4);
    for (let i = 1; i <= 6; i++) ring.add(closed(`0.${i}`, '10.1.0.1:40000', i * 100), i * 100 + 10);
    expect(ring.size).toBe(4);
    const rows = ring.lookup(query('10.1.0.1:40000'), 1000);
    expect(rows.map((r) => r.id)).toEqual(['0.6', '0.5', '0.4', '0.3']);
    expect(rows[0]).toEqual({
      id: '0.6',
      direction: 'outbound',
      state: 'closed',
      source: '10.1.0.1:40000',
      originalDst: '192.0.2.10:80',
      ageMs: 400,
      closedAgoMs: 390,
      result: 'connect-failed',
      detail: 'ECONNREFUSED',
    });
  });

  it('finds only the asked source, and keeps what a close said about it (refused, no original destination)', () => {
    const ring = new RecentConnections(8);
    ring.add(closed('0.1', '10.1.0.1:40000', 0), 1);
    ring.add(
      closed('0.2', '[fd00::2]:40000', 0, {
        direction: 'inbound',
        dst: null,
        result: 'refused',
        detail: 'not-redirected',
      }),
      2,
    );
    ring.add(closed('0.3', '?', 0), 3);
    expect(ring.lookup(query('[fd00::2]:40000'), 10)).toEqual([
      {
        id: '0.2',
        direction: 'inbound',
        state: 'closed',
        source: '[fd00::2]:40000',
        originalDst: null,
        ageMs: 10,
        closedAgoMs: 8,
        result: 'refused',
        detail: 'not-redirected',
      },
    ]);
    expect(ring.lookup(query('10.9.9.9:40000'), 10)).toEqual([]);
  });

  it('starts empty and refuses a capacity that is not a positive integer', () => {
    expect(new RecentConnections(2).lookup(query('10.1.0.1:1'), 0)).toEqual([]);
    expect(() => new RecentConnections(0)).toThrow('ring capacity must be a positive integer, got 0');
    expect(() => new RecentConnections(1.5)).toThrow(RangeError);
  });
});

describe('lookupRows', () => {
  it('merges the live table and the ring, newest first, live rows with their state and any decided result', () => {
    const ring = new RecentConnections(4);
    ring.add(closed('0.1', '10.1.0.1:40000', 100), 150);
    const live: LiveConnection[] = [
      {
        ...closed('0.3', '10.1.0.1:40000', 900),
        state: 'connecting',
        result: null,
        detail: '',
        dst: { family: 'ipv4', address: '192.0.2.10', port: 443 },
      },
      { ...closed('0.2', '10.1.0.9:40000', 800), state: 'open', result: null, detail: '' },
    ];
    const rows = lookupRows(live, ring, query('10.1.0.1:40000'), 1000);
    expect(rows.map((r) => [r.id, r.state, r.originalDst, r.ageMs, r.result])).toEqual([
      ['0.3', 'connecting', '192.0.2.10:443', 100, null],
      ['0.1', 'closed', '192.0.2.10:80', 900, 'connect-failed'],
    ]);
    expect('closedAgoMs' in rows[0]!).toBe(false);
  });
});
