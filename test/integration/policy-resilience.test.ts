// Resilience policy through the real proxy against real servers: retries to another endpoint, outlier ejection and
// return, the circuit breaker, per-attempt connect timeouts, active health checks and fault injection.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { integrationEnabled } from '../helpers/integration.js';
import { inNs } from '../helpers/netns.js';
import { createPolicyLab, policyConfig, tally, type PolicyLab, type PolicyProxy } from '../helpers/policy-lab.js';
import { waitUntil } from '../helpers/wait.js';

const PORT = 8080;
const DROP_PORT = 9999;

interface EndpointRow {
  endpoint: string;
  active: number;
  connections: number;
  connectFailures: number;
  ejections: number;
  ejected: boolean;
  ejectedForMs: number;
  healthy: boolean;
}

describe.skipIf(!integrationEnabled)(
  'resilience: retries, outlier detection, circuit breaker, health checks, faults',
  () => {
    let lab: PolicyLab;
    let proxy: PolicyProxy;
    let A: string;
    let B: string;
    let C: string;
    const vip = (n: number) => `10.161.0.${n}`;

    const dial = (n: number, count: number, extra: Record<string, unknown> = {}) =>
      lab.app.call<{ ids: string[]; ms: number[] }>('dial', {
        host: vip(n),
        port: 80,
        count,
        concurrency: 1,
        ...extra,
      });
    const service = async (name: string) => (await proxy.adminJson('/stats')).policy.services[name];
    const endpoint = async (name: string, address: string): Promise<EndpointRow> =>
      (await service(name)).endpoints.find((e: EndpointRow) => e.endpoint.startsWith(`${address}:`));

    beforeAll(async () => {
      lab = await createPolicyLab('rs', 161, { endpoints: 3 });
      [A, B, C] = lab.endpoints as [string, string, string];
      // A and B serve; C's port is closed (connections to it are refused). DROP_PORT swallows SYNs (connect timeout).
      await lab.peer.call('serve', { name: 'A', host: A, port: PORT, id: A });
      await lab.peer.call('serve', { name: 'B', host: B, port: PORT, id: B });
      await lab.peer.call('serve', { name: 'A-hc', host: A, port: 8081, id: A });
      inNs(lab.server, 'iptables', ['-w', '-A', 'INPUT', '-p', 'tcp', '--dport', String(DROP_PORT), '-j', 'DROP']);
      const raw = policyConfig(lab, {
        services: [
          {
            name: 'flaky',
            addresses: [`${vip(100)}:80`],
            endpoints: [A, B, C].map((e) => `${e}:${PORT}`),
            retries: { attempts: 3, backoff: '10ms', maxBackoff: '50ms' },
            outlierDetection: { consecutiveFailures: 3, baseEjectionTime: '1500ms', maxEjectionPercent: 50 },
          },
          {
            name: 'breaker',
            addresses: [`${vip(101)}:80`],
            endpoints: [`${A}:${PORT}`],
            circuitBreaker: { maxConnections: 5 },
          },
          {
            name: 'pending',
            addresses: [`${vip(102)}:80`],
            endpoints: [`${A}:${DROP_PORT}`],
            connectTimeout: '5s',
            retries: { attempts: 1 },
            circuitBreaker: { maxPending: 2 },
          },
          {
            name: 'timeouts',
            addresses: [`${vip(103)}:80`],
            endpoints: [`${A}:${DROP_PORT}`, `${B}:${PORT}`],
            connectTimeout: '300ms',
            retries: { attempts: 2, backoff: '10ms', maxBackoff: '10ms' },
            outlierDetection: { enabled: false },
          },
          {
            name: 'checked',
            addresses: [`${vip(104)}:80`],
            endpoints: [`${A}:8081`, `${B}:8081`],
            retries: { attempts: 1 },
            outlierDetection: { enabled: false },
            healthCheck: { interval: '200ms', timeout: '150ms', unhealthyThreshold: 1, healthyThreshold: 1 },
          },
          {
            name: 'aborted',
            addresses: [`${vip(105)}:80`],
            endpoints: [`${A}:${PORT}`],
            faults: { abort: { percent: 100 } },
          },
          {
            name: 'delayed',
            addresses: [`${vip(106)}:80`],
            endpoints: [`${A}:${PORT}`],
            faults: { delay: { percent: 100, duration: '300ms' } },
          },
        ],
      });
      proxy = await lab.startProxy(lab.writeConfig(raw).file);
      await proxy.waitReady();
    });

    afterAll(async () => {
      await lab?.destroy();
    });

    it('retries make every client connection succeed while one of three endpoints is down, and eject it after N failures', async () => {
      const { ids } = await dial(100, 60);
      expect(ids.filter((id) => id.startsWith('ERR'))).toEqual([]);
      expect(new Set(ids)).toEqual(new Set([A, B]));
      // Round robin reached C on the 3rd, 6th and 9th connection; each failed over to the next endpoint. The third
      // failure in a row ejected it, so the other 51 connections never tried it.
      const c = await endpoint('flaky', C);
      expect(c).toMatchObject({ connectFailures: 3, ejections: 1, ejected: true, active: 0 });
      expect(c.ejectedForMs).toBeGreaterThan(0);
      expect(c.ejectedForMs).toBeLessThanOrEqual(1500);
      const svc = await service('flaky');
      expect(svc).toMatchObject({ connections: 60, connected: 60, connectFailures: 3, retries: 3, ejections: 1 });
      const retried = await proxy.waitFor('3 retried connections in the access log', async () => {
        const lines = proxy.accessLog().filter((l) => l.service === 'flaky' && l.attempts === 2);
        return lines.length === 3 ? lines : null;
      });
      expect(retried.every((l) => l.result === 'FIN' && l.upstream !== `${C}:${PORT}`)).toBe(true);
      expect(proxy.stderr()).toContain('endpoint ejected by outlier detection');
      const metrics = (await proxy.admin('/metrics')).body;
      expect(metrics).toContain('meshctl_service_ejections_total{service="flaky"} 1');
      expect(metrics).toContain('meshctl_service_endpoints{service="flaky",state="ejected"} 1');
      expect(metrics).toContain('meshctl_service_retries_total{service="flaky"} 3');
    });

    it('keeps an ejected endpoint out until the base ejection time has passed, then sends it traffic again', async () => {
      // C comes back up, but it stays ejected until its time is up.
      await lab.peer.call('serve', { name: 'C', host: C, port: PORT, id: C });
      const { ejectedForMs } = await endpoint('flaky', C);
      const start = performance.now();
      const during = await dial(100, 12);
      if (performance.now() - start < ejectedForMs - 50) expect(during.ids).not.toContain(C);
      let row: EndpointRow | undefined;
      await waitUntil(
        `C back in rotation once its ${ejectedForMs} ms ejection is over`,
        async () => !(row = await endpoint('flaky', C)).ejected,
        ejectedForMs + 10_000,
        { seen: () => row, intervalMs: 50 },
      );
      expect(await endpoint('flaky', C)).toMatchObject({ ejected: false, ejectedForMs: 0 });
      const after = tally((await dial(100, 30)).ids);
      expect(after[C]).toBeGreaterThanOrEqual(9);
      expect((await endpoint('flaky', C)).connectFailures).toBe(3);
    });

    it('refuses the (max+1)th concurrent connection at once when the circuit breaker is full, and counts it', async () => {
      const held = await dial(101, 5, { hold: 'breaker' });
      expect(tally(held.ids)).toEqual({ [A]: 5 });
      const over = await dial(101, 1);
      expect(over.ids).toEqual(['ERR:ECONNRESET']);
      expect(over.ms[0]).toBeLessThan(500);
      expect(await service('breaker')).toMatchObject({ active: 5, refused: { 'circuit-open': 1 } });
      expect((await proxy.admin('/metrics')).body).toContain(
        'meshctl_service_refused_total{service="breaker",reason="circuit-open"} 1',
      );
      await proxy.waitFor('the refusal in the access log', async () =>
        proxy
          .accessLog()
          .some((l) => l.originalDst === `${vip(101)}:80` && l.result === 'refused' && l.detail === 'circuit-open'),
      );
      // One closes: there is room for one again.
      await lab.app.call('closeHeld', { tag: 'breaker' });
      await proxy.waitFor('breaker connections closed', async () => (await service('breaker')).active === 0);
      expect((await dial(101, 1)).ids).toEqual([A]);
    });

    it('refuses a connection beyond maxPending while the others still wait for their upstream connect', async () => {
      const waiting = lab.app.call<{ ids: string[] }>('dial', {
        host: vip(102),
        port: 80,
        count: 2,
        concurrency: 2,
        timeoutMs: 1500,
      });
      await proxy.waitFor('two pending connections', async () => (await service('pending')).pending === 2);
      const over = await dial(102, 1);
      expect(over.ids).toEqual(['ERR:ECONNRESET']);
      expect(over.ms[0]).toBeLessThan(500);
      expect((await waiting).ids).toEqual(['ERR:timeout', 'ERR:timeout']);
      expect((await service('pending')).refused['circuit-open']).toBe(1);
    });

    it('times out each connect attempt after the service connectTimeout and retries on another endpoint', async () => {
      const { ids, ms } = await dial(103, 6);
      expect(ids).toEqual(Array(6).fill(B));
      // Round robin starts at A (SYNs dropped) for every other connection: 300 ms, then B.
      const slow = ms.filter((m) => m >= 290);
      expect(slow.length).toBe(3);
      const lines = await proxy.waitFor('6 access-log lines', async () => {
        const found = proxy.accessLog().filter((l) => l.service === 'timeouts');
        return found.length === 6 ? found : null;
      });
      expect(lines.filter((l) => l.attempts === 2)).toHaveLength(3);
      expect(await service('timeouts')).toMatchObject({ connectFailures: 3, retries: 3 });
    });

    it('takes an endpoint that fails its active health checks out of rotation and brings it back when it passes', async () => {
      // B:8081 has no server: the first check round (before the proxy was ready) marked it unhealthy.
      expect(await endpoint('checked', B)).toMatchObject({ healthy: false, connections: 0 });
      expect(tally((await dial(104, 10)).ids)).toEqual({ [A]: 10 });
      expect((await endpoint('checked', B)).connectFailures).toBe(0);
      await lab.peer.call('serve', { name: 'B-hc', host: B, port: 8081, id: B });
      await proxy.waitFor('B healthy', async () => (await endpoint('checked', B)).healthy);
      expect(tally((await dial(104, 10)).ids)).toEqual({ [A]: 5, [B]: 5 });
    });

    it('injects faults: aborts reset every new connection, delays hold it before connecting', async () => {
      const aborted = await dial(105, 5);
      expect(aborted.ids).toEqual(Array(5).fill('ERR:ECONNRESET'));
      expect((await service('aborted')).refused['fault-abort']).toBe(5);
      const delayed = await dial(106, 3);
      expect(delayed.ids).toEqual([A, A, A]);
      for (const m of delayed.ms) expect(m).toBeGreaterThanOrEqual(300);
      expect((await service('delayed')).delayed).toBe(3);
    });
  },
);
