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
