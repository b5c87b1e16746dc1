// The sweep's decisions: which bound a connection crossed, and how often to look.
import { once } from 'node:events';
import { createServer, connect, type AddressInfo } from 'node:net';
import { describe, expect, it } from 'vitest';
import { expiredTimer, Sweeper, sweepIntervalMs, type TimerConfig, type TimerView } from '../../src/proxy/timers.js';

const cfg: TimerConfig = {
  connectTimeoutMs: 10_000,
  idleTimeoutMs: null,
  maxConnectionDurationMs: null,
  halfCloseTimeoutMs: 60_000,
  accessLog: { periodicIntervalMs: null },
};
const view = (v: Partial<TimerView>): TimerView => ({
  state: 'open',
  startedAt: 0,
  halfClosedAt: 0,
  lastActiveAt: 0,
  ...v,
});

describe('expiredTimer', () => {
  it('times out a connect that takes longer than connectTimeout, with a reset', () => {
    expect(expiredTimer(view({ state: 'connecting' }), cfg, 9_999)).toBeNull();
    expect(expiredTimer(view({ state: 'connecting' }), cfg, 10_000)).toEqual({
      result: 'timeout',
      detail: 'connect',
      mode: 'reset',
    });
  });

  it('never idles out by default, however long a connection is quiet', () => {
    expect(expiredTimer(view({}), cfg, 86_400_000)).toBeNull();
  });

  it('closes a connection idle for idleTimeout when one is set', () => {
    const withIdle = { ...cfg, idleTimeoutMs: 5_000 };
    expect(expiredTimer(view({ lastActiveAt: 1_000 }), withIdle, 5_999)).toBeNull();
    expect(expiredTimer(view({ lastActiveAt: 1_000 }), withIdle, 6_000)).toEqual({
      result: 'timeout',
      detail: 'idle',
      mode: 'close',
    });
  });

  it('closes a connection half-closed for longer than halfCloseTimeout', () => {
    expect(
      expiredTimer(view({ state: 'half-closed', halfClosedAt: 100, lastActiveAt: 59_000 }), cfg, 60_099),
    ).toBeNull();
    expect(expiredTimer(view({ state: 'half-closed', halfClosedAt: 100, lastActiveAt: 59_000 }), cfg, 60_100)).toEqual({
      result: 'timeout',
      detail: 'half-close',
      mode: 'close',
    });
  });

  it('closes a connection older than maxConnectionDuration even while busy', () => {
    const withMax = { ...cfg, maxConnectionDurationMs: 30_000 };
    expect(expiredTimer(view({ lastActiveAt: 29_999 }), withMax, 30_000)).toEqual({
      result: 'timeout',
      detail: 'max-duration',
      mode: 'close',
    });
  });

  it('ignores closed connections', () => {
    expect(expiredTimer(view({ state: 'closed' }), { ...cfg, idleTimeoutMs: 1 }, 1e9)).toBeNull();
  });
});

describe('sweepIntervalMs', () => {
  it('sweeps once a second with the defaults', () => {
    expect(sweepIntervalMs(cfg)).toBe(1000);
  });

  it('sweeps at a quarter of the shortest bound, never below 25 ms', () => {
    expect(sweepIntervalMs({ ...cfg, connectTimeoutMs: 400 })).toBe(100);
    expect(sweepIntervalMs({ ...cfg, idleTimeoutMs: 20 })).toBe(25);
    expect(sweepIntervalMs({ ...cfg, accessLog: { periodicIntervalMs: 1000 } })).toBe(250);
  });
});

describe('Sweeper', () => {
  it('sweeps after the I/O that arrived while the event loop ran late, not before it', async () => {
    const server = createServer((s) => s.destroy());
    server.listen(0, '127.0.0.1');
    await once(server, 'listening');
    try {
      const socket = connect((server.address() as AddressInfo).port, '127.0.0.1');
      socket.on('error', () => {});
      const seen: boolean[] = [];
      const sweeper = new Sweeper(() => {
        seen.push(socket.connecting);
        sweeper.stop();
      });
      sweeper.start(5);
      // The loop runs late: the connect completes in the kernel and the interval expires while it is blocked.
      const until = performance.now() + 30;
      while (performance.now() < until);
      await once(socket, 'connect');
      await new Promise((resolve) => setImmediate(resolve));
      expect(seen).toEqual([false]);
      socket.destroy();
    } finally {
      server.close();
    }
  });
});
