// The proxy's life: admin endpoints, reload without dropping connections (and refusing an invalid config),
// drain on SIGTERM and POST /drain, and listeners handed over by systemd socket activation.
import { readFileSync, writeFileSync } from 'node:fs';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { integrationEnabled } from '../helpers/integration.js';
import { inNs } from '../helpers/netns.js';
import { createProxyLab, labConfigObject, type ProxyLab, type RunningProxy } from '../helpers/proxy-lab.js';
import { waitUntil } from '../helpers/wait.js';

interface Outcome {
  outcome: string;
  code?: string;
  connected: boolean;
  ms: number;
}

const ECHO = 7100;

describe.skipIf(!integrationEnabled)('proxy lifecycle', () => {
  let lab: ProxyLab;

  beforeAll(async () => {
    lab = await createProxyLab('life', 214, labConfigObject());
    await lab.peer.call('serve', { name: 'echo', kind: 'echo', host: '0.0.0.0', port: ECHO });
    await lab.peer.call('serve', { name: 'http', kind: 'http', host: '0.0.0.0', port: 8080 });
  });

  afterAll(async () => {
    await lab?.destroy();
  });

  // A test that fails part-way must not leave its proxy holding the ports the next test's proxy needs.
  const started = new Set<RunningProxy>();
  afterEach(async () => {
    for (const p of started) {
      if (p.child.exitCode === null && p.child.signalCode === null) {
        p.kill();
        await p.exited;
      }
    }
    started.clear();
  });

  async function start(
    proxy: Record<string, unknown>,
    name: string,
    prefix: readonly string[] = [],
  ): Promise<{ proxy: RunningProxy; file: string }> {
    const { file } = lab.writeConfig(labConfigObject({ proxy }), name);
    const p = await lab.startProxy(file, [], prefix);
    started.add(p);
    await p.waitReady();
    return { proxy: p, file };
  }

  async function stop(proxy: RunningProxy): Promise<void> {
    proxy.child.kill('SIGTERM');
    await proxy.exited;
  }

  it('answers /ready, /stats, /config, /connections, /metrics and rejects wrong methods and paths', async () => {
    const { proxy } = await start({ workers: 2 }, 'admin');
    await lab.app.call('hold', { tag: 'admin', host: lab.addrs.b4, port: ECHO, count: 3 });
    expect(await proxy.admin('/ready')).toEqual({ status: 200, body: 'ready\n' });
    const config = await proxy.adminJson('/config');
    expect(config.proxy).toMatchObject({
      outboundPort: 15001,
      inboundPort: 15006,
      workers: 2,
      user: { name: 'nobody', uid: 65534 },
    });
    const stats = await proxy.adminJson('/stats');
    expect(stats.workers).toHaveLength(2);
    expect(stats.connections.active.outbound).toBe(3);
    expect(stats.listeners).toEqual([
      'outbound 127.0.0.1:15001',
      'inbound 0.0.0.0:15006',
      'outbound6 [::1]:15001',
      'inbound6 [::]:15006',
    ]);
    const table = await proxy.adminJson('/connections');
    expect(table).toHaveLength(3);
    for (const row of table) {
      expect(row).toMatchObject({
        direction: 'outbound',
        state: 'open',
        originalDst: `${lab.addrs.b4}:${ECHO}`,
        bytesFromClient: 6,
        bytesFromUpstream: 6,
      });
      expect(row.ageMs).toBeGreaterThanOrEqual(0);
      expect([0, 1]).toContain(row.worker);
    }
    expect((await proxy.adminJson('/connections?limit=2')).length).toBe(2);
    expect((await proxy.admin('/connections?limit=0')).status).toBe(400);
    expect((await proxy.admin('/drain')).status).toBe(405);
    expect((await proxy.admin('/nope')).status).toBe(404);
    const metrics = await proxy.admin('/metrics');
    expect(metrics.body).toContain('meshctl_proxy_connections_active{direction="outbound"} 3');
    expect(metrics.body).toContain('meshctl_proxy_ready 1');
    await lab.app.call('closeHeld', { tag: 'admin' });
    await stop(proxy);
  });

  it('writes periodic lines for long-lived connections, keeps TCP keepalive on both legs, and takes flags', async () => {
    const { file } = lab.writeConfig(
      labConfigObject({ proxy: { keepalive: '30s', accessLog: { periodicInterval: '200ms' } } }),
      'periodic',
    );
    const proxy = await lab.startProxy(file, ['--proxy-idle-timeout', '5m']);
    started.add(proxy);
    await proxy.waitReady();
    expect((await proxy.adminJson('/config')).proxy).toMatchObject({
      idleTimeoutMs: 300_000,
      keepaliveDelayMs: 30_000,
    });
    await lab.app.call('hold', { tag: 'periodic', host: lab.addrs.b4, port: ECHO, count: 2 });
    const progress = await proxy.waitForAccess(
      (l) => l.msg === 'connection open' && l.originalDst === `${lab.addrs.b4}:${ECHO}`,
    );
    expect(progress).toMatchObject({ state: 'open', bytesFromClient: 6, bytesFromUpstream: 6 });
    expect(progress.durationMs).toBeGreaterThanOrEqual(150);
    // Both legs of both connections are the proxy's sockets (uid 65534), each with a keepalive timer.
    const ss = inNs(lab.client, 'ss', ['-tnoeH', 'state', 'established'])
      .split('\n')
      .filter((l) => l.includes('uid:65534'));
    expect(ss).toHaveLength(4);
    for (const line of ss) expect(line).toContain('timer:(keepalive');
    await lab.app.call('closeHeld', { tag: 'periodic' });
    await stop(proxy);
  });

  it('replaces a worker that dies, and is ready again with the same number of workers and the same flags', async () => {
    const { proxy } = await start({ workers: 2 }, 'respawn');
    const before = await proxy.adminJson('/stats');
    // Workers run with small semi-spaces and, relaying natively, without V8's memory reducer (workerExecArgv).
    const flagsOf = (pid: number) => readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0');
    for (const w of before.workers as { pid: number }[])
      expect(flagsOf(w.pid)).toEqual(expect.arrayContaining(['--max-semi-space-size=1', '--no-memory-reducer']));
    const victim = before.workers[0].pid as number;
    process.kill(victim, 'SIGKILL');
    await proxy.waitForStderr(/worker exited unexpectedly; starting a new one/);
    let seen: any;
    const after = await waitUntil(
      'ready again with 2 workers',
      async () => {
        seen = await proxy.adminJson('/stats');
        return seen.ready && seen.workers.length === 2 ? seen : null;
      },
      15_000,
      { seen: () => ({ ready: seen?.ready, workers: seen?.workers }), intervalMs: 50 },
    );
    expect(after.ready).toBe(true);
    expect(after.workers.map((w: { pid: number }) => w.pid)).not.toContain(victim);
    expect(after.workers).toHaveLength(2);
    for (const w of after.workers as { pid: number }[]) expect(flagsOf(w.pid)).toContain('--no-memory-reducer');
    expect((await lab.app.call<{ status: number }>('http', { host: lab.addrs.b4, port: 8080 })).status).toBe(200);
    await stop(proxy);
  });

  it('refuses to start when a listener port is taken (LISTEN_FAILED) or its uid would be captured (PROXY_USER_MISMATCH)', async () => {
    const { proxy: first } = await start({}, 'first');
    const { file } = lab.writeConfig(labConfigObject(), 'second');
    const second = await lab.startProxy(file);
    expect((await second.exited).code).toBe(1);
    expect(second.stderr()).toMatch(/meshctl: LISTEN_FAILED: cannot listen on outbound 127\.0\.0\.1:15001: EADDRINUSE/);
    await stop(first);
    const asApp = await lab.startProxy(file, [], [], { uid: 1000, gid: 1000 });
    expect((await asApp.exited).code).toBe(1);
    expect(asApp.stderr()).toMatch(
      /meshctl: PROXY_USER_MISMATCH: the proxy runs as uid 1000 gid 1000, but proxy.user is nobody \(uid 65534/,
    );
  });

  it('reloads a changed config while 100 connections are open and drops none of them', async () => {
    const { proxy, file } = await start({ workers: 2 }, 'reload');
    const held = await lab.app.call<{ open: number; errors: string[] }>('hold', {
      tag: 'reload',
      host: lab.addrs.b4,
      port: ECHO,
      count: 100,
    });
    expect(held).toEqual({ open: 100, errors: [] });

    // A changed file is picked up by the watcher.
    const raw = JSON.parse(readFileSync(file, 'utf8'));
    raw.proxy.idleTimeout = '1h';
    raw.proxy.accessLog = { sampleRatio: 0.5 };
    writeFileSync(file, JSON.stringify(raw));
    await proxy.waitForStderr(/"trigger":"file-change".*"msg":"config reloaded"/);
    expect((await proxy.adminJson('/config')).proxy).toMatchObject({
      idleTimeoutMs: 3_600_000,
      accessLog: { sampleRatio: 0.5 },
    });

    // And SIGHUP reloads too: a new connection timeout for new connections.
    raw.proxy.connectTimeout = '3s';
    writeFileSync(file, JSON.stringify(raw));
    proxy.child.kill('SIGHUP');
    await proxy.waitForStderr(/"msg":"config reloaded"[\s\S]*"msg":"config reloaded"/);
    expect((await proxy.adminJson('/config')).proxy.connectTimeoutMs).toBe(3000);

    expect(await lab.app.call('pingHeld', { tag: 'reload' })).toEqual({ ok: 100, failures: [] });
    expect(await lab.app.call('heldState', { tag: 'reload' })).toEqual({ open: 100, closed: [] });
    expect((await lab.app.call<{ status: number }>('http', { host: lab.addrs.b4, port: 8080 })).status).toBe(200);
    // The HTTP request's own connection ends just after its response: wait until only the 100 held are active.
    const stats = await proxy.waitFor('the 100 held connections as the only active ones', async () => {
      const s = await proxy.adminJson('/stats');
      return s.connections.active.outbound === 100 ? s : null;
    });
    expect(stats.reloads.failed).toBe(0);
    expect(stats.reloads.ok).toBeGreaterThanOrEqual(2);
    expect((await lab.app.call<{ errors: string[] }>('closeHeld', { tag: 'reload' })).errors).toEqual([]);
    await stop(proxy);
  });

  it('rejects an invalid config on reload with a logged error and keeps the running one', async () => {
    const { proxy, file } = await start({}, 'invalid');
    await lab.app.call('hold', { tag: 'invalid', host: lab.addrs.b4, port: ECHO, count: 5 });
    const hashBefore = (await proxy.adminJson('/stats')).config.hash;
    const raw = JSON.parse(readFileSync(file, 'utf8'));
    raw.proxy.outboundPort = 70000;
    writeFileSync(file, JSON.stringify(raw));
    proxy.child.kill('SIGHUP');
    await proxy.waitForStderr(/"code":"CONFIG_INVALID".*config reload rejected, keeping the running config.*70000/);
    const stats = await proxy.adminJson('/stats');
    expect(stats.config.hash).toBe(hashBefore);
    expect(stats.reloads.failed).toBeGreaterThanOrEqual(1);
    expect((await proxy.adminJson('/config')).proxy.outboundPort).toBe(15001);
    expect(await proxy.admin('/ready')).toMatchObject({ status: 200 });
    expect(await lab.app.call('pingHeld', { tag: 'invalid' })).toEqual({ ok: 5, failures: [] });
    expect((await lab.app.call<{ status: number }>('http', { host: lab.addrs.b4, port: 8080 })).status).toBe(200);
    await lab.app.call('closeHeld', { tag: 'invalid' });
    await stop(proxy);
  });

  it('drains on SIGTERM: open connections finish, new ones are refused, and it exits 0 once they are done', async () => {
    const { proxy } = await start({ workers: 2, drainTimeout: '20s' }, 'drain');
    await lab.app.call('hold', { tag: 'drain', host: lab.addrs.b4, port: ECHO, count: 10 });
    proxy.child.kill('SIGTERM');
    await proxy.waitForStderr(/drain started/);
    // New connections: refused (nothing listens on 15001 any more, the REDIRECT meets a closed port).
    let refused: Outcome | undefined;
    for (let i = 0; i < 40; i++) {
      refused = await lab.app.call<Outcome>('connectOutcome', { host: lab.addrs.b4, port: ECHO, timeoutMs: 2000 });
      if (refused.outcome === 'refused') break;
      await new Promise((r) => setTimeout(r, 25));
    }
    expect(refused).toMatchObject({ outcome: 'refused', connected: false });
    expect((await proxy.admin('/ready')).status).toBe(503);
    // The open ones keep working during the drain.
    expect(await lab.app.call('pingHeld', { tag: 'drain', payload: 'still here\n' })).toEqual({ ok: 10, failures: [] });
    expect(proxy.child.exitCode).toBeNull();
    await lab.app.call('closeHeld', { tag: 'drain' });
    const closedAt = performance.now();
    const exit = await proxy.exited;
    expect(exit).toMatchObject({ code: 0, signal: null });
    expect(exit.atMs - closedAt).toBeLessThan(3000);
    const drained = proxy.accessLog().filter((l) => l.originalDst === `${lab.addrs.b4}:${ECHO}`);
    expect(drained.filter((l) => l.msg === 'connection closed' && l.result === 'FIN')).toHaveLength(10);
  });

  it('closes what is still open at the drain bound and exits 0 within it', async () => {
    const { proxy } = await start({ drainTimeout: '1s' }, 'bound');
    await lab.app.call('hold', { tag: 'bound', host: lab.addrs.b4, port: ECHO, count: 5 });
    const sentAt = performance.now();
    proxy.child.kill('SIGTERM');
    const exit = await proxy.exited;
    expect(exit).toMatchObject({ code: 0, signal: null });
    expect(exit.atMs - sentAt).toBeGreaterThanOrEqual(900);
    expect(exit.atMs - sentAt).toBeLessThan(3000);
    expect((await lab.app.call<{ open: number }>('heldState', { tag: 'bound' })).open).toBe(0);
    const cut = proxy.accessLog().filter((l) => l.result === 'drain');
    expect(cut).toHaveLength(5);
    expect(cut.every((l) => l.detail === 'deadline')).toBe(true);
    await lab.app.call('closeHeld', { tag: 'bound' });
  });

  it('stops at once on a second SIGTERM during a drain, with exit status 1', async () => {
    const { proxy } = await start({ workers: 2, drainTimeout: '30s' }, 'forced');
    await lab.app.call('hold', { tag: 'forced', host: lab.addrs.b4, port: ECHO, count: 3 });
    proxy.child.kill('SIGTERM');
    await proxy.waitForStderr(/drain started/);
    const sentAt = performance.now();
    proxy.child.kill('SIGTERM');
    const exit = await proxy.exited;
    expect(exit.code).toBe(1);
    expect(exit.atMs - sentAt).toBeLessThan(2000);
    await proxy.waitForStderr(/second signal: stopping now/);
    await lab.app.call('closeHeld', { tag: 'forced' });
  });

  it('stops accepting on POST /drain but stays up until SIGTERM', async () => {
    const { proxy } = await start({}, 'postdrain');
    const r = await proxy.admin('/drain', 'POST');
    expect(r.status).toBe(202);
    expect(JSON.parse(r.body)).toMatchObject({ draining: true, alreadyDraining: false });
    await proxy.waitForStderr(/drain complete/);
    expect((await proxy.admin('/ready')).status).toBe(503);
    expect(await lab.app.call<Outcome>('connectOutcome', { host: lab.addrs.b4, port: ECHO })).toMatchObject({
      outcome: 'refused',
    });
    expect(proxy.child.exitCode).toBeNull();
    proxy.child.kill('SIGTERM');
    expect(await proxy.exited).toMatchObject({ code: 0 });
  });

  it('serves listeners handed over by systemd socket activation (LISTEN_FDS, LISTEN_FDNAMES)', async () => {
    // systemd-socket-activate binds the sockets and execs the proxy on the first connection, as a socket unit
    // without the service enabled would: that first connection waits in the backlog and must be served.
    const prefix = [
      'systemd-socket-activate',
      '-l',
      '0.0.0.0:15006',
      '-l',
      '127.0.0.1:15001',
      '--fdname=inbound:outbound',
      '-E',
      'MESHCTL_LOG_LEVEL=info',
    ];
    const { file } = lab.writeConfig(labConfigObject({ proxy: { workers: 2 } }), 'activated');
    const proxy = await lab.startProxy(file, [], prefix);
    started.add(proxy);
    await proxy.waitForStderr(/Listening on 127\.0\.0\.1:15001/);
    const first = await lab.app.call<{ status: number }>('http', {
      host: lab.addrs.b4,
      port: 8080,
      path: '/activated',
      timeoutMs: 15_000,
    });
    expect(first.status).toBe(200);
    await proxy.waitReady();
    const stats = await proxy.adminJson('/stats');
    expect(stats.listeners).toEqual(['inbound (fd 3)', 'outbound (fd 4)']);
    expect(stats.workers).toHaveLength(2);
    await proxy.waitForAccess((l) => l.originalDst === `${lab.addrs.b4}:8080` && l.result === 'FIN');
    await stop(proxy);
    expect(await proxy.exited).toMatchObject({ code: 0 });
  });
});
