// The worker's side of the front door (src/proxy/front-door-runtime.ts) without a kernel: what an end record from
// a relay thread leaves behind — metrics, the access-log record, the recent ring (`/lookup`), a self-loop event —
// in the words the JavaScript path uses for the same outcome; and the address text of the records.
import { describe, expect, it } from 'vitest';
import type { Socket } from 'node:net';
import type { AccessLog, AccessRecord } from '../../src/proxy/access-log.js';
import { FrontDoor, type FrontDoorHost } from '../../src/proxy/front-door-runtime.js';
import { ProxyMetrics } from '../../src/proxy/metrics.js';
import { parseSourceQuery, RecentConnections, type SourceQuery } from '../../src/proxy/recent-connections.js';
import type { FrontDoorEnd } from '../../src/proxy/relay-thread.js';

function host(mtlsActive = false) {
  const logged: AccessRecord[] = [];
  const events: string[] = [];
  const h: FrontDoorHost = {
    index: 3,
    metrics: new ProxyMetrics(),
    accessLog: {
      enabled: true,
      sampled: () => true,
      writeClosed: (r: AccessRecord) => logged.push(r),
    } as unknown as AccessLog,
    recent: new RecentConnections(8),
    mtlsActive,
    acceptAsked: (_s: Socket) => events.push('asked'),
    selfLoop: (source, dst) => events.push(`self-loop ${source} -> ${dst}`),
    sourceFallback: (family) => events.push(`fallback ${family}`),
    frontDoorEnded: () => events.push('ended'),
  };
  return { h, logged, events };
}

const base: FrontDoorEnd = {
  id: 2 ** 32 + 5,
  listenerId: 1,
  fromClient: 10,
  fromUpstream: 20,
  result: 'FIN',
  detail: 'client-first',
  durationMs: 12.3456,
  connectMs: 0.25,
  source: '10.0.0.1:40000',
  originalDst: '10.0.0.2:80',
  upstreamLocal: '10.0.0.1:40001',
  sourceFallback: false,
};

const query = (text: string) => parseSourceQuery(text) as SourceQuery;

describe('FrontDoor end records', () => {
  it('count, log and keep a carried connection as the JavaScript path would', () => {
    const { h, logged, events } = host(true);
    new FrontDoor(h).ended(base);
    const out = h.metrics.data.directions.outbound;
    expect(out).toMatchObject({ accepted: 1, active: 0, bytesFromClient: 10, bytesFromUpstream: 20 });
    expect(out.closed.FIN).toBe(1);
    expect(out.connectLatency.count).toBe(1);
    expect(logged).toEqual([
      {
        id: `3.${2 ** 32 + 5}`,
        direction: 'outbound',
        source: '10.0.0.1:40000',
        originalDst: '10.0.0.2:80',
        upstream: '10.0.0.2:80',
        upstreamLocal: '10.0.0.1:40001',
        bytesFromClient: 10,
        bytesFromUpstream: 20,
        durationMs: 12.346,
        connectMs: 0.25,
        result: 'FIN',
        detail: 'client-first',
        tls: 'plaintext',
      },
    ]);
    expect(h.recent.lookup(query('10.0.0.1:40000'), 100)).toEqual([
      expect.objectContaining({ id: `3.${2 ** 32 + 5}`, originalDst: '10.0.0.2:80', result: 'FIN', state: 'closed' }),
    ]);
    expect(events).toEqual(['ended']);
  });

  it('turns a self-loop refusal into the refusal counter, a self-loop event and a record without an upstream', () => {
    const { h, logged, events } = host();
    const refused = { ...base, result: 'refused' as const, detail: 'own-uid', connectMs: null, upstreamLocal: '' };
    new FrontDoor(h).ended(refused);
    expect(h.metrics.data.refusals['self-loop']).toBe(1);
    expect(h.metrics.data.directions.outbound.closed.refused).toBe(1);
    expect(h.metrics.data.directions.outbound.connectLatency.count).toBe(0);
    expect(logged[0]).toMatchObject({ upstream: null, upstreamLocal: null, connectMs: null, result: 'refused' });
    expect(logged[0]!.tls).toBeUndefined();
    expect(events).toEqual(['self-loop 10.0.0.1:40000 -> 10.0.0.2:80', 'ended']);
  });

  it('counts an unredirected connection as not-redirected, and reports a passthrough-source fallback', () => {
    const { h, events } = host();
    const door = new FrontDoor(h);
    door.ended({ ...base, result: 'refused', detail: 'ENOENT', connectMs: null });
    door.ended({ ...base, originalDst: '[fd00::2]:80', sourceFallback: true });
    expect(h.metrics.data.refusals['not-redirected']).toBe(1);
    expect(events).toEqual(['ended', 'fallback ipv6', 'ended']);
  });

  it('gives a connection ended by our own abort (no result from the thread) the drain result', () => {
    const { h, logged } = host();
    new FrontDoor(h).ended({ ...base, result: null, detail: '' });
    expect(logged[0]).toMatchObject({ result: 'drain', detail: 'forced' });
    expect(h.metrics.data.directions.outbound.closed.drain).toBe(1);
  });
});
