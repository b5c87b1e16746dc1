// TPROXY inbound end to end: meshctl installs the tproxy capture (mangle TPROXY with a mark, `ip rule fwmark` +
// `ip route local` policy routing) in the client namespace; the real proxy starts as root, opens its inbound
// listeners with IP_TRANSPARENT, drops to nobody keeping CAP_NET_ADMIN alone, reads each connection's destination
// from its local endpoint and connects to the app from the peer's own address.
// A peer in the server namespace dials apps in the client namespace.
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { integrationEnabled } from '../helpers/integration.js';
import { inNs } from '../helpers/netns.js';
import {
  createProxyLab,
  labConfigObject,
  PROXY_GID,
  PROXY_UID,
  startAgent,
  type Agent,
  type ProxyLab,
  type RunningProxy,
} from '../helpers/proxy-lab.js';

interface Seen {
  remote: string;
  remotePort: number;
  local: string;
  localPort: number;
}

interface Outcome {
  outcome: string;
  code?: string;
  ms: number;
}

const ROOT = { uid: 0, gid: 0 };
const ACTIVATE = fileURLToPath(new URL('../helpers/transparent-activate.mjs', import.meta.url));
const APP = 8080;
const APP6 = 8086;
const ECHO = 7070;
const EXCLUDED = 9100;

/** The vm-tproxy-dns example, run by nobody, with IPv6 intercepted; two workers so the fds go through node:cluster. */
function tproxyConfig(proxy: Record<string, unknown> = {}): Record<string, unknown> {
  return labConfigObject({
    proxy: { workers: 2, ...proxy },
    capture: { dropInvalid: true, inbound: { mode: 'tproxy', excludePorts: [EXCLUDED] }, dns: { enabled: true } },
  });
}

/** Established TCP sockets in `ns` as [local, peer, process] (ss -Htnp). */
function establishedSockets(ns: string): Array<{ local: string; peer: string; users: string }> {
  return inNs(ns, 'ss', ['-Htnp', 'state', 'established'])
    .split('\n')
    .filter((l) => l.trim() !== '')
    .map((line) => {
      const [, , local, peer, ...rest] = line.trim().split(/\s+/);
      return { local: local!, peer: peer!, users: rest.join(' ') };
    });
}

describe.skipIf(!integrationEnabled)('TPROXY inbound through the proxy', () => {
  let lab: ProxyLab;
  let proxy: RunningProxy;
  let asProxyUser: Agent | undefined;
  let file: string;

  beforeAll(async () => {
    const raw = tproxyConfig();
    lab = await createProxyLab('tp', 221, raw, 'mt');
    await lab.app.call('serve', { name: 'app', kind: 'http', host: '0.0.0.0', port: APP });
    await lab.app.call('serve', { name: 'app6', kind: 'http', host: '::', port: APP6 });
    await lab.app.call('serve', { name: 'echo', kind: 'echo', host: '0.0.0.0', port: ECHO });
    await lab.app.call('serve', { name: 'excluded', kind: 'http', host: '0.0.0.0', port: EXCLUDED });
    await lab.peer.call('serve', { name: 'web', kind: 'http', host: '0.0.0.0', port: 80 });
    await lab.peer.call('serve', { name: 'web6', kind: 'http', host: '::', port: 80 });
    file = lab.writeConfig(raw).file;
    proxy = await lab.startProxy(file, [], [], ROOT);
    await proxy.waitReady();
  });

  afterAll(async () => {
    asProxyUser?.stop();
    await lab?.destroy();
  });

  it('installed the fwmark policy routes TPROXY needs, for both families', () => {
    expect(inNs(lab.client, 'ip', ['rule', 'show'])).toMatch(/fwmark 0x539 lookup 133/);
    expect(inNs(lab.client, 'ip', ['-6', 'rule', 'show'])).toMatch(/fwmark 0x539 lookup 133/);
    expect(inNs(lab.client, 'ip', ['route', 'show', 'table', '133'])).toMatch(/^local default dev lo/m);
    expect(inNs(lab.client, 'ip', ['-6', 'route', 'show', 'table', '133'])).toMatch(/^local default dev lo/m);
  });

  it('runs as nobody after opening transparent inbound listeners as root', async () => {
    const status = readFileSync(`/proc/${proxy.pid}/status`, 'utf8');
    expect(status).toMatch(new RegExp(`^Uid:\\s+${PROXY_UID}\\s+${PROXY_UID}\\s+${PROXY_UID}\\s+${PROXY_UID}$`, 'm'));
    expect(status).toMatch(new RegExp(`^Gid:\\s+${PROXY_GID}\\s+${PROXY_GID}\\s+${PROXY_GID}\\s+${PROXY_GID}$`, 'm'));
    expect(proxy.stderr()).toMatch(/dropped root: running as nobody.*keeping CAP_NET_ADMIN for TPROXY/);
    // CAP_NET_ADMIN alone (each connection to the app is a new IP_TRANSPARENT socket), ambient so the cluster
    // workers have it too.
    const caps = (text: string, key: string) => new RegExp(`^${key}:\\s+([0-9a-f]+)$`, 'm').exec(text)?.[1];
    for (const key of ['CapEff', 'CapPrm', 'CapAmb']) expect(caps(status, key), key).toBe('0000000000001000');
    const workers = readFileSync(`/proc/${proxy.pid}/task/${proxy.pid}/children`, 'utf8').trim().split(/\s+/);
    expect(workers).toHaveLength(2);
    for (const pid of workers) {
      const worker = readFileSync(`/proc/${pid}/status`, 'utf8');
      expect(worker).toMatch(new RegExp(`^Uid:\\s+${PROXY_UID}\\s+${PROXY_UID}\\s+${PROXY_UID}\\s+${PROXY_UID}$`, 'm'));
      expect(caps(worker, 'CapEff'), `worker ${pid}`).toBe('0000000000001000');
    }
    const stats = await proxy.adminJson('/stats');
    expect(stats.listeners).toEqual([
      'outbound 127.0.0.1:15001',
      expect.stringMatching(/^inbound 0\.0\.0\.0:15006 \(transparent, fd \d+\)$/),
      'outbound6 [::1]:15001',
      expect.stringMatching(/^inbound6 \[::\]:15006 \(transparent, fd \d+\)$/),
    ]);
    expect(stats.workers).toHaveLength(2);
  });

  it("delivers a peer's connection to the app from the peer's own address, and logs it and the app port", async () => {
    const { addrs } = lab;
    const r = await lab.peer.call<{ status: number; body: string }>('http', {
      host: addrs.a4,
      port: APP,
      path: '/tproxy',
    });
    expect(r.status).toBe(200);
    expect(JSON.parse(r.body) as Seen).toMatchObject({ remote: addrs.b4, local: addrs.a4, localPort: APP });
    const line = await proxy.waitForAccess((l) => l.direction === 'inbound' && l.originalDst === `${addrs.a4}:${APP}`);
    expect(line).toMatchObject({ upstream: `${addrs.a4}:${APP}`, result: 'FIN' });
    expect(line.source.startsWith(`${addrs.b4}:`)).toBe(true);
    expect(line.upstreamLocal?.startsWith(`${addrs.b4}:`)).toBe(true);
  });

  it("accepts the peer's connection on the app port itself, never rewritten to 15006 (TPROXY, not REDIRECT)", async () => {
    const { addrs } = lab;
    const held = await lab.peer.call<{ open: number; errors: string[] }>('hold', {
      tag: 'tp',
      host: addrs.a4,
      port: ECHO,
      count: 1,
    });
    expect(held).toEqual({ open: 1, errors: [] });
    try {
      const sockets = establishedSockets(lab.client);
      // The proxy's leg to the app: from the peer's address (a port of its own) to a4:7070.
      const leg = sockets.filter((s) => s.local.startsWith(`${addrs.b4}:`) && s.peer === `${addrs.a4}:${ECHO}`);
      expect(leg, JSON.stringify(sockets)).toHaveLength(1);
      expect(leg[0]!.users).toMatch(/"node"/);
      // Local a4:7070 with the peer's address on the other end: the proxy's accepted socket and the app's (from the leg).
      const fromPeer = sockets.filter((s) => s.local === `${addrs.a4}:${ECHO}` && s.peer.startsWith(`${addrs.b4}:`));
      expect(fromPeer, JSON.stringify(sockets)).toHaveLength(2);
      expect(fromPeer.filter((s) => s.peer === leg[0]!.local)).toHaveLength(1);
      expect(sockets.some((s) => s.local.endsWith(':15006') && s.peer.startsWith(`${addrs.b4}:`))).toBe(false);
      const ping = await lab.peer.call<{ ok: number; failures: string[] }>('pingHeld', { tag: 'tp' });
      expect(ping).toEqual({ ok: 1, failures: [] });
    } finally {
      await lab.peer.call('closeHeld', { tag: 'tp' });
    }
    const line = await proxy.waitForAccess((l) => l.originalDst === `${addrs.a4}:${ECHO}`);
    expect(line).toMatchObject({ direction: 'inbound', result: 'FIN', bytesFromClient: 11, bytesFromUpstream: 11 });
  });

  it("delivers IPv6 inbound connections from the peer's own IPv6 address and logs it", async () => {
    const { addrs } = lab;
    const r = await lab.peer.call<{ status: number; body: string }>('http', {
      host: addrs.a6,
      port: APP6,
      path: '/tproxy6',
    });
    expect(r.status).toBe(200);
    expect(JSON.parse(r.body) as Seen).toMatchObject({ remote: addrs.b6, local: addrs.a6, localPort: APP6 });
    const line = await proxy.waitForAccess(
      (l) => l.direction === 'inbound' && l.originalDst === `[${addrs.a6}]:${APP6}`,
    );
    expect(line).toMatchObject({ upstream: `[${addrs.a6}]:${APP6}`, result: 'FIN' });
    expect(line.source.startsWith(`[${addrs.b6}]:`)).toBe(true);
    expect(line.upstreamLocal?.startsWith(`[${addrs.b6}]:`)).toBe(true);
  });

  it('lets a connection to an excluded inbound port bypass the proxy: the app sees the peer itself', async () => {
    const { addrs } = lab;
    const before = (await proxy.adminJson('/stats')).connections.accepted.inbound as number;
    const r = await lab.peer.call<{ status: number; body: string }>('http', {
      host: addrs.a4,
      port: EXCLUDED,
      path: '/bypass',
    });
    expect(r.status).toBe(200);
    expect(JSON.parse(r.body) as Seen).toMatchObject({ remote: addrs.b4, localPort: EXCLUDED });
    expect((await proxy.adminJson('/stats')).connections.accepted.inbound).toBe(before);
    expect(proxy.accessLog().some((l) => l.originalDst === `${addrs.a4}:${EXCLUDED}`)).toBe(false);
  });

  it('still intercepts outbound connections in tproxy mode, IPv4 and IPv6 (their replies are not eaten by TPROXY)', async () => {
    const { addrs } = lab;
    const r4 = await lab.app.call<{ status: number; body: string }>('http', { host: addrs.b4, port: 80, path: '/out' });
    expect(r4.status).toBe(200);
    expect((JSON.parse(r4.body) as Seen).remote).toBe(addrs.a4);
    const r6 = await lab.app.call<{ status: number; body: string }>('http', {
      host: addrs.b6,
      port: 80,
      path: '/out6',
    });
    expect(r6.status).toBe(200);
    expect((JSON.parse(r6.body) as Seen).remote).toBe(addrs.a6);
    const lines = await Promise.all([
      proxy.waitForAccess((l) => l.direction === 'outbound' && l.originalDst === `${addrs.b4}:80`),
      proxy.waitForAccess((l) => l.direction === 'outbound' && l.originalDst === `[${addrs.b6}]:80`),
    ]);
    for (const l of lines) expect(l.result).toBe('FIN');
    expect(lines[0].source.startsWith(`${addrs.a4}:`)).toBe(true);
  });

  it("takes the nat path into the transparent listener when the proxy's uid calls this host's own address", async () => {
    // The capture plan sends the proxy user's own-address calls through nat REDIRECT to :15006 (no TPROXY on lo):
    // the connection arrives on the inbound port itself and its destination comes from SO_ORIGINAL_DST.
    const { addrs } = lab;
    asProxyUser = await startAgent(lab.client, { uid: PROXY_UID, gid: PROXY_GID });
    const r = await asProxyUser.call<{ status: number; body: string }>('http', {
      host: addrs.a4,
      port: APP,
      path: '/own-address',
    });
    expect(r.status).toBe(200);
    expect(JSON.parse(r.body) as Seen).toMatchObject({ remote: '127.0.0.6', local: addrs.a4, localPort: APP });
    const line = await proxy.waitForAccess(
      (l) => l.direction === 'inbound' && l.originalDst === `${addrs.a4}:${APP}` && l.source.startsWith(`${addrs.a4}:`),
    );
    expect(line).toMatchObject({ upstream: `${addrs.a4}:${APP}`, result: 'FIN' });
  });

  it('refuses a direct connection to the inbound port at once as not redirected, and never loops', async () => {
    const { addrs } = lab;
    const before = await proxy.adminJson('/stats');
    const r = await lab.peer.call<Outcome>('connectOutcome', {
      host: addrs.a4,
      port: 15006,
      send: 'GET / HTTP/1.0\r\n\r\n',
    });
    expect(['reset', 'end', 'closed']).toContain(r.outcome);
    expect(r.ms).toBeLessThan(1000);
    // Skipped by the capture (a proxy port), it reaches the listener itself: conntrack has the unchanged tuple.
    const line = await proxy.waitForAccess((l) => l.direction === 'inbound' && l.originalDst === `${addrs.a4}:15006`);
    expect(line).toMatchObject({ result: 'refused', detail: 'not-redirected', upstream: null, bytesFromUpstream: 0 });
    expect(line.source.startsWith(`${addrs.b4}:`)).toBe(true);
    const after = await proxy.adminJson('/stats');
    expect(after.refusals['not-redirected'] - before.refusals['not-redirected']).toBe(1);
    expect(after.connections.accepted.outbound).toBe(before.connections.accepted.outbound);
  });

  it('refuses to start in tproxy mode without the privilege for IP_TRANSPARENT, saying how to grant it', async () => {
    const { file: other } = lab.writeConfig(
      tproxyConfig({ workers: 1, outboundPort: 16001, inboundPort: 16006, adminPort: 16000 }),
      'unprivileged',
    );
    const unprivileged = await lab.startProxy(other);
    expect((await unprivileged.exited).code).toBe(1);
    expect(unprivileged.stderr()).toMatch(
      /meshctl: LISTEN_FAILED: cannot open the transparent inbound listener inbound 0\.0\.0\.0:16006 for capture\.inbound\.mode "tproxy": setsockopt\(IP_TRANSPARENT\) EPERM/,
    );
    expect(unprivileged.stderr()).toMatch(/CAP_NET_ADMIN/);
  });

  it('keeps its transparent listeners across a reload, and rejects one that would move the inbound port', async () => {
    const { addrs } = lab;
    lab.writeConfig(tproxyConfig({ connectTimeout: '5s' }));
    await proxy.waitForStderr(/"trigger":"file-change".*"msg":"config reloaded"/);
    expect((await proxy.adminJson('/config')).proxy.connectTimeoutMs).toBe(5000);
    const r = await lab.peer.call<{ status: number; body: string }>('http', {
      host: addrs.a4,
      port: APP,
      path: '/after-reload',
    });
    expect(JSON.parse(r.body) as Seen).toMatchObject({ remote: addrs.b4, localPort: APP });

    // Moving the inbound port would leave the installed TPROXY rule pointing at nothing (and need a new
    // IP_TRANSPARENT socket, which the proxy no longer has the privilege for): the capture contract refuses it.
    lab.writeConfig(tproxyConfig({ connectTimeout: '5s', inboundPort: 16006 }));
    await proxy.waitForStderr(
      /config reload failed, keeping the running config: the new config changes the capture contract \(proxy\.inboundPort 15006 → 16006\)/,
    );
    expect((await proxy.adminJson('/config')).proxy.inboundPort).toBe(15006);
    const again = await lab.peer.call<{ status: number; body: string }>('http', {
      host: addrs.a4,
      port: APP,
      path: '/after-failed-reload',
    });
    expect(JSON.parse(again.body) as Seen).toMatchObject({ remote: addrs.b4, localPort: APP });
    const stats = await proxy.adminJson('/stats');
    expect(stats.listeners.filter((l: string) => l.includes('transparent'))).toHaveLength(2);
    expect(stats.ready).toBe(true);
  });
  // The last two replace the proxy (the capture sends TPROXY to :15006, which only one proxy can hold).
  it('refuses socket-activated inbound sockets without Transparent=yes instead of letting TPROXY drop every connection', async () => {
    proxy.child.kill('SIGTERM');
    expect((await proxy.exited).code).toBe(0);
    const { file: activatedFile } = lab.writeConfig(tproxyConfig({ workers: 1 }), 'activated-plain');
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
    const plain = await lab.startProxy(activatedFile, [], prefix);
    await plain.waitForStderr(/Listening on 127\.0\.0\.1:15001/);
    // systemd-socket-activate execs the proxy on the first connection.
    await lab.app.call<Outcome>('connectOutcome', { host: '127.0.0.1', port: 15001, timeoutMs: 10_000 });
    expect((await plain.exited).code).toBe(1);
    expect(plain.stderr()).toMatch(
      /meshctl: LISTEN_FAILED: the socket-activated inbound \(fd 3\) is not transparent, but capture\.inbound\.mode is "tproxy"/,
    );
    expect(plain.stderr()).toMatch(/Transparent=yes/);
  });

  it('serves transparent sockets handed over by socket activation, as nobody from the start (the systemd path)', async () => {
    const { addrs } = lab;
    const { file: activatedFile } = lab.writeConfig(tproxyConfig({ workers: 1 }), 'activated');
    const sockets = [
      'outbound=127.0.0.1:15001',
      'inbound=0.0.0.0:15006',
      'outbound6=[::1]:15001',
      'inbound6=[::]:15006',
    ];
    const prefix = [
      process.execPath,
      ACTIVATE,
      ...sockets,
      '--',
      'setpriv',
      `--reuid=${PROXY_UID}`,
      `--regid=${PROXY_GID}`,
      '--clear-groups',
      // What the tproxy drop-in of `meshctl service install` grants (AmbientCapabilities=CAP_NET_ADMIN).
      '--inh-caps=+net_admin',
      '--ambient-caps=+net_admin',
    ];
    const activated = await lab.startProxy(activatedFile, [], prefix, ROOT);
    await activated.waitReady();
    expect((await activated.adminJson('/stats')).listeners).toEqual([
      'outbound (fd 3)',
      'inbound (fd 4)',
      'outbound6 (fd 5)',
      'inbound6 (fd 6)',
    ]);
    expect(activated.stderr()).not.toMatch(/dropped root/);

    const r4 = await lab.peer.call<{ status: number; body: string }>('http', {
      host: addrs.a4,
      port: APP,
      path: '/activated',
    });
    expect(JSON.parse(r4.body) as Seen).toMatchObject({ remote: addrs.b4, localPort: APP });
    const r6 = await lab.peer.call<{ status: number; body: string }>('http', {
      host: addrs.a6,
      port: APP6,
      path: '/activated6',
    });
    expect(JSON.parse(r6.body) as Seen).toMatchObject({ remote: addrs.b6, localPort: APP6 });
    const out = await lab.app.call<{ status: number; body: string }>('http', {
      host: addrs.b4,
      port: 80,
      path: '/activated-out',
    });
    expect(out.status).toBe(200);
    const lines = await Promise.all([
      activated.waitForAccess((l) => l.originalDst === `${addrs.a4}:${APP}`),
      activated.waitForAccess((l) => l.originalDst === `[${addrs.a6}]:${APP6}`),
      activated.waitForAccess((l) => l.originalDst === `${addrs.b4}:80`),
    ]);
    expect(lines.map((l) => [l.direction, l.result])).toEqual([
      ['inbound', 'FIN'],
      ['inbound', 'FIN'],
      ['outbound', 'FIN'],
    ]);
    expect(lines[0].source.startsWith(`${addrs.b4}:`)).toBe(true);
    expect(lines[1].source.startsWith(`[${addrs.b6}]:`)).toBe(true);
    activated.child.kill('SIGTERM');
    expect((await activated.exited).code).toBe(0);
  });
});
