// Endpoints as a relay thread packs them into a batch of end records (src/proxy/packed-endpoint.ts): printed as
// inet_ntop prints them (the text the thread used to send), and kept packed by the recent ring until a /lookup.
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import {
  formatPackedEndpoint,
  PACKED_ENDPOINT_BYTES,
  packedAddress,
  packedPort,
} from '../../src/proxy/packed-endpoint.js';
import { parseSourceQuery, RecentConnections, type SourceQuery } from '../../src/proxy/recent-connections.js';
import { parseIp } from '../../src/values/ip.js';

function pack(
  family: 0 | 4 | 6,
  address: readonly number[],
  port: number,
  out = new Uint8Array(PACKED_ENDPOINT_BYTES),
  at = 0,
) {
  out[at] = family;
  out[at + 2] = port >> 8;
  out[at + 3] = port & 0xff;
  out.set(address, at + 4);
  return out;
}

const v6 = (hex: string): number[] => {
  const ip = parseIp(hex);
  if (ip === null || ip.family !== 'ipv6') throw new Error(hex);
  return Array.from({ length: 16 }, (_, i) => Number((ip.value >> BigInt((15 - i) * 8)) & 0xffn));
};

const query = (text: string) => parseSourceQuery(text) as SourceQuery;

describe('formatPackedEndpoint', () => {
  it('prints what inet_ntop prints (glibc: these strings are its output for the same bytes)', () => {
    expect(formatPackedEndpoint(pack(4, [10, 61, 0, 1], 40000), 0)).toBe('10.61.0.1:40000');
    expect(formatPackedEndpoint(pack(6, v6('::1'), 80), 0)).toBe('[::1]:80');
    expect(formatPackedEndpoint(pack(6, v6('::'), 1), 0)).toBe('[::]:1');
    expect(formatPackedEndpoint(pack(6, v6('::1.2.3.4'), 443), 0)).toBe('[::1.2.3.4]:443');
    expect(formatPackedEndpoint(pack(6, v6('::ffff:1.2.3.4'), 443), 0)).toBe('[::ffff:1.2.3.4]:443');
    expect(formatPackedEndpoint(pack(6, v6('::2'), 443), 0)).toBe('[::2]:443');
    expect(formatPackedEndpoint(pack(6, v6('::102'), 443), 0)).toBe('[::102]:443');
    expect(formatPackedEndpoint(pack(6, v6('fd00::'), 65535), 0)).toBe('[fd00::]:65535');
    expect(formatPackedEndpoint(pack(6, v6('1:0:0:2:0:0:0:3'), 7), 0)).toBe('[1:0:0:2::3]:7');
    expect(formatPackedEndpoint(pack(6, v6('1:0:2:0:3:0:4:0'), 7), 0)).toBe('[1:0:2:0:3:0:4:0]:7');
    expect(formatPackedEndpoint(pack(6, v6('1:0:0:2:0:0:3:4'), 7), 0)).toBe('[1::2:0:0:3:4]:7');
    expect(formatPackedEndpoint(pack(0, [], 0), 0)).toBe('');
  });

  it('round-trips any address and port through the text (parsed back, the same value)', () => {
    fc.assert(
      fc.property(
        fc.boolean(),
        fc.uint8Array({ minLength: 16, maxLength: 16 }),
        fc.integer({ min: 0, max: 65535 }),
        (four, raw, port) => {
          const bytes = pack(
            four ? 4 : 6,
            four ? Array.from(raw.subarray(0, 4)) : Array.from(raw),
            port,
            new Uint8Array(40),
            20,
          );
          const text = formatPackedEndpoint(bytes, 20);
          expect(packedPort(bytes, 20)).toBe(port);
          const address = packedAddress(bytes, 20);
          expect(text).toBe(four ? `${address}:${port}` : `[${address}]:${port}`);
          const ip = parseIp(address);
          expect(ip?.family).toBe(four ? 'ipv4' : 'ipv6');
          const want = (four ? raw.subarray(0, 4) : raw).reduce((acc, b) => (acc << 8n) | BigInt(b), 0n);
          expect(ip?.value).toBe(want);
        },
      ),
    );
  });
});

describe('RecentConnections.addPacked', () => {
  it('keeps the bytes (not a view of the batch) and prints them only for a matching /lookup', () => {
    const ring = new RecentConnections(4);
    const batch = new Uint8Array(3 * PACKED_ENDPOINT_BYTES);
    pack(4, [10, 61, 0, 3], 40000, batch, 0);
    pack(4, [10, 61, 0, 2], 7001, batch, PACKED_ENDPOINT_BYTES);
    const close = { idPrefix: '2.', id: 2 ** 32 + 9, direction: 'outbound' as const, bytes: batch, at: 0 };
    ring.addPacked({ ...close, result: 'FIN', detail: 'client-first', startedAt: 10 }, 30);
    batch.fill(0); // the thread's next batch reuses nothing, but the ring must not depend on that
    ring.add(
      {
        id: '2.7',
        direction: 'outbound',
        source: '10.61.0.3:40001',
        dst: '10.61.0.2:7001',
        result: 'FIN',
        detail: 'client-first',
        startedAt: 20,
      },
      30,
    );
    expect(ring.lookup(query('10.61.0.3:40000'), 40)).toEqual([
      {
        id: `2.${2 ** 32 + 9}`,
        direction: 'outbound',
        state: 'closed',
        source: '10.61.0.3:40000',
        originalDst: '10.61.0.2:7001',
        ageMs: 30,
        closedAgoMs: 10,
        result: 'FIN',
        detail: 'client-first',
      },
    ]);
    expect(ring.lookup(query('10.61.0.3:40001'), 40).map((r) => r.id)).toEqual(['2.7']);
    expect(ring.lookup(query('[::ffff:10.61.0.3]:40000'), 40).map((r) => r.id)).toEqual([`2.${2 ** 32 + 9}`]);
    expect(ring.lookup(query('10.61.0.4:40000'), 40)).toEqual([]);
  });

  it('overwrites the oldest slot, packed or not, when it comes round', () => {
    const ring = new RecentConnections(2);
    const bytes = new Uint8Array(3 * PACKED_ENDPOINT_BYTES);
    for (let i = 0; i < 5; i++) {
      pack(4, [10, 0, 0, 1], 1000 + i, bytes, 0);
      ring.addPacked(
        { idPrefix: '0.', id: i, direction: 'inbound', bytes, at: 0, result: 'FIN', detail: '', startedAt: 0 },
        0,
      );
    }
    expect(ring.size).toBe(2);
    expect(ring.lookup(query('10.0.0.1:1002'), 1)).toEqual([]);
    expect(ring.lookup(query('10.0.0.1:1004'), 1).map((r) => [r.id, r.originalDst])).toEqual([['0.4', null]]);
  });
});
