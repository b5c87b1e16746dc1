// proxy.relayThreads and the worker count it implies: "auto" relay threads are one per core, and "auto" workers
// are one process with the native relay (its threads use the cores) but one per core with the streams relay.
import { availableParallelism } from 'node:os';
import { describe, expect, it } from 'vitest';
import { configFromObject } from '../../src/config/load.js';
import { workerCount } from '../../src/proxy/lifecycle.js';
import { ProxyWorker, relayThreadCount } from '../../src/proxy/worker.js';
import { silentLogger } from '../../src/log.js';
import { testHost } from '../cases.js';

const load = (proxy: Record<string, unknown>) =>
  configFromObject({ proxy: { user: 'meshproxy', ...proxy } }, { file: 'config.yaml', host: testHost, env: {} });

describe('proxy.relayThreads', () => {
  it('defaults to one relay thread per core and one worker process with the native relay', () => {
    const c = load({});
    expect(c.proxy.relayThreads).toBe('auto');
    expect(relayThreadCount(c)).toBe(availableParallelism());
    expect(workerCount(c)).toBe(1);
  });

  it('keeps one worker per core with the streams relay, and an explicit worker count either way', () => {
    expect(workerCount(load({ relay: 'node' }))).toBe(availableParallelism());
    expect(workerCount(load({ workers: 3 }))).toBe(3);
    expect(workerCount(load({ relay: 'node', workers: 2 }))).toBe(2);
  });

  it('takes a number from 1 to 64 and refuses others, naming the field', () => {
    expect(relayThreadCount(load({ relayThreads: 5 }))).toBe(5);
    for (const bad of [0, 65, 1.5, 'many']) {
      expect(() => load({ relayThreads: bad }), String(bad)).toThrow(/proxy\.relayThreads|relayThreads/);
    }
  });

  it('leaves the config hash of configs that do not set it unchanged, and changes it when set', () => {
    expect(load({ relayThreads: 'auto' }).hash).toBe(load({}).hash);
    expect(load({ relayThreads: 2 }).hash).not.toBe(load({}).hash);
  });

  it('starts that many relay threads in a worker and hands established pairs to them in turn', () => {
    const worker = new ProxyWorker(load({ relayThreads: 3 }), [], silentLogger);
    // start() would also open listeners; the threads alone are what is checked here.
    (worker as unknown as { startRelay(c: unknown): void }).startRelay(load({ relayThreads: 3 }));
    try {
      const picked = Array.from({ length: 6 }, () => worker.relayThread);
      expect(new Set(picked).size).toBe(3);
      expect(picked.slice(3)).toEqual(picked.slice(0, 3));
    } finally {
      for (const t of (worker as unknown as { relays: { close(): void }[] }).relays) t.close();
    }
  });
});

describe('/lookup and the front door records still in flight', () => {
  // A relay thread that ended a connection but has not sent its end record yet (records leave once per ms): the
  // connection is neither live (list) nor in the recent ring. `deliverAfter` record deliveries arrive on timers.
  function fakeThread(worker: ProxyWorker, deliverAfter: number) {
    const thread = {
      due: 1,
      seen: 0,
      frontDoorDue: () => thread.due,
      get frontDoorSeen() {
        return thread.seen;
      },
      list: () => [],
      close: () => undefined,
    };
    const deliver = () => {
      worker.recent.add(
        {
          id: '0.7',
          direction: 'outbound',
          source: '10.0.0.1:40000',
          dst: '10.0.0.2:80',
          result: 'FIN',
          detail: '',
          startedAt: performance.now(),
        },
        performance.now(),
      );
      thread.seen = 1;
    };
    setTimeout(deliver, deliverAfter);
    return thread;
  }

  it('waits for the records due at the question before it answers that nothing came from a source', async () => {
    const worker = new ProxyWorker(load({ relayThreads: 1 }), [], silentLogger);
    (worker as unknown as { relays: unknown[] }).relays = [fakeThread(worker, 5)];
    const rows = await worker.lookupSource('10.0.0.1:40000');
    expect(rows).toEqual([expect.objectContaining({ id: '0.7', source: '10.0.0.1:40000', state: 'closed' })]);
  });

  it('answers at once when no record is due, and gives up on a record that never comes within its bound', async () => {
    const worker = new ProxyWorker(load({ relayThreads: 1 }), [], silentLogger);
    const idle = { frontDoorDue: () => 3, frontDoorSeen: 3, list: () => [] };
    (worker as unknown as { relays: unknown[] }).relays = [idle];
    expect(await worker.lookupSource('10.0.0.1:40001')).toEqual([]);
    const stuck = { frontDoorDue: () => 1, frontDoorSeen: 0, list: () => [] };
    (worker as unknown as { relays: unknown[] }).relays = [stuck];
    // Bounded: a thread whose outbox never empties does not hold the answer (the test's timeout would).
    expect(await worker.lookupSource('10.0.0.1:40001')).toEqual([]);
  });
});

describe('/stats and the front door records still in flight', () => {
  // A connection that ended on a relay thread, its end record not delivered yet: no thread lists it and no counter
  // has it. /stats once counted it neither accepted nor closed (proxy-relay's counts came up short under load).
  function endedOnThread(worker: ProxyWorker, deliverAfter: number | null) {
    const metrics = (worker as unknown as { metrics: { accepted(d: string): void; closed(...a: unknown[]): void } })
      .metrics;
    const thread = {
      seen: 0,
      frontDoorDue: () => 1,
      get frontDoorSeen() {
        return thread.seen;
      },
      frontDoorStats: () => null,
      list: () => [],
      close: () => undefined,
    };
    if (deliverAfter !== null)
      setTimeout(() => {
        metrics.accepted('outbound');
        metrics.closed('outbound', 'FIN', 10, 20);
        thread.seen = 1;
      }, deliverAfter);
    return thread;
  }

  it('counts a connection whose end record was due at the question', async () => {
    const worker = new ProxyWorker(load({ relayThreads: 1 }), [], silentLogger);
    (worker as unknown as { relays: unknown[] }).relays = [endedOnThread(worker, 5)];
    expect(worker.stats().metrics.directions.outbound.accepted).toBe(0);
    const settled = await worker.settledStats();
    expect(settled.metrics.directions.outbound).toMatchObject({ accepted: 1, active: 0 });
    expect(settled.metrics.directions.outbound.closed.FIN).toBe(1);
  });

  it('answers within its bound when a thread never delivers', async () => {
    const worker = new ProxyWorker(load({ relayThreads: 1 }), [], silentLogger);
    (worker as unknown as { relays: unknown[] }).relays = [endedOnThread(worker, null)];
    const settled = await worker.settledStats();
    expect(settled.metrics.directions.outbound.accepted).toBe(0);
  });
});
