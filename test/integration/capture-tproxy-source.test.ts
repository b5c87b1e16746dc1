// TPROXY gives the app the peer's own address. Two namespaces joined by veth: the app host (`tp-src…-c`: meshctl
// install with capture.inbound.mode tproxy through bin/meshctl, the real proxy as nobody holding only CAP_NET_ADMIN,
// ambient, as the tproxy drop-in of `meshctl service install` grants it, and the apps as uid 1000) and a client
// (`tp-src…-s`). The proxy's leg to the app leaves from the client's address (IP_TRANSPARENT, SO_MARK); the app's
// replies come back through MESHCTL_TPROXY_REPLY's connmark and the fwmark policy route. Shown for IPv4 and IPv6,
// for request/response, half-close and RST, on iptables-nft and on native nftables (its `type route` chain is what
// re-routes a marked reply); uninstall leaves the rules and the policy routing exactly as they were.
import { join } from 'node:path';
import { readFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { integrationEnabled } from '../helpers/integration.js';
import { inNs } from '../helpers/netns.js';
import { builtCli, labEnv, meshctl, normalizedRuleset } from '../helpers/netfilter-lab.js';
import { createProxyLab, labConfigObject, PROXY_UID, type ProxyLab, type RunningProxy } from '../helpers/proxy-lab.js';

const HTTP = 8080;
const HTTP6 = 8086;
const HALF_CLOSE = 7071;
const RESET = 7072;
const ECHO = 7073;
const ROOT = { uid: 0, gid: 0 };
/** How systemd starts the proxy in tproxy mode (User=, AmbientCapabilities=CAP_NET_ADMIN): nobody, one capability. */
const AS_UNIT = [
  'setpriv',
  '--reuid=65534',
  '--regid=65534',
  '--clear-groups',
  '--inh-caps=+net_admin',
  '--ambient-caps=+net_admin',
];
const CAP_NET_ADMIN = 1n << 12n;

interface Seen {
  remote: string;
  remotePort: number;
  local: string;
  localPort: number;
}

interface ServerRecord {
  remote: string;
  remotePort: number;
  received?: number;
  receivedHash?: string;
  sent?: number;
  sentHash?: string;
  error?: string;
  closed?: boolean;
}

/** Everything uninstall must give back: the ruleset and both families' policy rules and routes (all tables). */
function hostState(ns: string, backend: 'iptables-nft' | 'nftables'): string {
  return [
    normalizedRuleset(ns, backend),
    inNs(ns, 'ip', ['-4', 'rule', 'show']),
    inNs(ns, 'ip', ['-6', 'rule', 'show']),
    inNs(ns, 'ip', ['-4', 'route', 'show', 'table', 'all']),
    inNs(ns, 'ip', ['-6', 'route', 'show', 'table', 'all']),
  ].join('\n----\n');
}

/** The kernel adds the veth's IPv6 link-local address (and its local route) a moment after the link is up. */
async function waitForLinkLocal(ns: string, timeoutMs = 10_000): Promise<void> {
  const deadline = performance.now() + timeoutMs;
  for (;;) {
    const local = inNs(ns, 'ip', ['-6', 'route', 'show', 'table', 'local']);
    if (/^local fe80::/m.test(local)) return;
    if (performance.now() > deadline)
      throw new Error(`no IPv6 link-local address in ${ns} within ${timeoutMs} ms; local table:\n${local}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

async function waitForRecord(
  lab: ProxyLab,
  name: string,
  done: (r: ServerRecord) => boolean,
  timeoutMs = 10_000,
): Promise<ServerRecord> {
  const deadline = performance.now() + timeoutMs;
  for (;;) {
    const records = await lab.app.call<ServerRecord[]>('records', { name });
    const hit = records.find(done);
    if (hit) return hit;
    if (performance.now() > deadline)
      throw new Error(`server ${name} has no finished record within ${timeoutMs} ms; have ${JSON.stringify(records)}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

describe.skipIf(!integrationEnabled).each([
  ['iptables-nft', 232],
  ['nftables', 233],
] as const)("TPROXY inbound connects to the app from the peer's own address (%s)", (backend, subnet) => {
  let lab: ProxyLab;
  let proxy: RunningProxy;
  let before: string;
  let stateDir: string;
  let installed = false;

  beforeAll(async () => {
    builtCli();
    lab = await createProxyLab(`src${subnet}`, subnet, null, 'tp');
    await waitForLinkLocal(lab.client);
    before = hostState(lab.client, backend);
    stateDir = join(lab.dir, 'state');
    const raw = labConfigObject({ capture: { backend, inbound: { mode: 'tproxy' } } }, stateDir);
    const { file } = lab.writeConfig(raw);
    await lab.app.call('serve', { name: 'http4', kind: 'http', host: '0.0.0.0', port: HTTP });
    await lab.app.call('serve', { name: 'http6', kind: 'http', host: '::', port: HTTP6 });
    await lab.app.call('serve', {
      name: 'half',
      kind: 'reply-after-eof',
      host: '::',
      port: HALF_CLOSE,
      opts: { replyBytes: 300_000 },
    });
    await lab.app.call('serve', {
      name: 'half4',
      kind: 'reply-after-eof',
      host: '0.0.0.0',
      port: HALF_CLOSE,
      opts: { replyBytes: 300_000 },
    });
    await lab.app.call('serve', { name: 'reset', kind: 'reset-on-data', host: '0.0.0.0', port: RESET });
    await lab.app.call('serve', { name: 'echo', kind: 'echo', host: '0.0.0.0', port: ECHO });
    // As the units order it: the proxy first (install refuses to capture into nothing), then the rules.
    proxy = await lab.startProxy(file, [], AS_UNIT, ROOT);
    await proxy.waitReady();
    const install = meshctl(['install', '--netns', lab.client, '--config', file], labEnv);
    expect(install.status, install.stderr).toBe(0);
    installed = true;
  });

  afterAll(async () => {
    if (installed && lab) meshctl(['uninstall', '--netns', lab.client, '--state-dir', stateDir], labEnv);
    await lab?.destroy();
  });

  it('runs the proxy as nobody with CAP_NET_ADMIN as its only capability', () => {
    const status = readFileSync(`/proc/${proxy.pid}/status`, 'utf8');
    const cap = (key: string) => BigInt(`0x${new RegExp(`^${key}:\\s+([0-9a-f]+)$`, 'm').exec(status)![1]}`);
    expect(status).toMatch(new RegExp(`^Uid:\\s+${PROXY_UID}\\s+${PROXY_UID}\\s+${PROXY_UID}\\s+${PROXY_UID}$`, 'm'));
    expect(cap('CapEff')).toBe(CAP_NET_ADMIN);
    expect(cap('CapPrm')).toBe(CAP_NET_ADMIN);
  });

  it("gives the app the peer's IPv4 address, and the reply reaches the peer", async () => {
    const { addrs } = lab;
    const r = await lab.peer.call<{ status: number; body: string }>('http', {
      host: addrs.a4,
      port: HTTP,
      path: '/v4',
    });
    expect(r.status).toBe(200);
    const seen = JSON.parse(r.body) as Seen;
    expect(seen).toMatchObject({ remote: addrs.b4, local: addrs.a4, localPort: HTTP });
    const line = await proxy.waitForAccess((l) => l.direction === 'inbound' && l.originalDst === `${addrs.a4}:${HTTP}`);
    expect(line).toMatchObject({ upstream: `${addrs.a4}:${HTTP}`, result: 'FIN' });
    expect(line.source.startsWith(`${addrs.b4}:`), line.source).toBe(true);
    // The proxy's leg: the peer's address, on a port of its own (never the peer's: one conntrack entry each).
    expect(line.upstreamLocal).toBe(`${addrs.b4}:${seen.remotePort}`);
    expect(line.source).not.toBe(line.upstreamLocal);
  });

  it("gives the app the peer's IPv6 address, and the reply reaches the peer", async () => {
    const { addrs } = lab;
    const r = await lab.peer.call<{ status: number; body: string }>('http', {
      host: addrs.a6,
      port: HTTP6,
      path: '/v6',
    });
    expect(r.status).toBe(200);
    const seen = JSON.parse(r.body) as Seen;
    expect(seen).toMatchObject({ remote: addrs.b6, local: addrs.a6, localPort: HTTP6 });
    const line = await proxy.waitForAccess(
      (l) => l.direction === 'inbound' && l.originalDst === `[${addrs.a6}]:${HTTP6}`,
    );
    expect(line.upstreamLocal).toBe(`[${addrs.b6}]:${seen.remotePort}`);
  });

  it.each(['ipv4', 'ipv6'] as const)(
    'carries a half-close over %s: the peer ends its side, the app still sends, then closes',
    async (family) => {
      const { addrs } = lab;
      const host = family === 'ipv4' ? addrs.a4 : addrs.a6;
      const r = await lab.peer.call<{
        sent: number;
        sentHash: string;
        received: number;
        receivedHash: string;
        error?: string;
      }>('exchange', { host, port: HALF_CLOSE, sendBytes: 200_000, mode: 'send-then-read' });
      expect(r.error).toBeUndefined();
      const record = await waitForRecord(lab, family === 'ipv4' ? 'half4' : 'half', (s) => s.sentHash !== undefined);
      expect(record.remote).toBe(family === 'ipv4' ? addrs.b4 : addrs.b6);
      // Everything the peer sent before its FIN reached the app, and all the app sent after it reached the peer.
      expect({ received: record.received, hash: record.receivedHash }).toEqual({ received: 200_000, hash: r.sentHash });
      expect({ received: r.received, hash: r.receivedHash }).toEqual({ received: 300_000, hash: record.sentHash });
    },
  );

  it("passes the app's RST to the peer as a reset", async () => {
    const { addrs } = lab;
    const r = await lab.peer.call<{ outcome: string; code?: string; connected: boolean }>('connectOutcome', {
      host: addrs.a4,
      port: RESET,
      send: 'hello\n',
    });
    expect(r).toMatchObject({ outcome: 'reset', code: 'ECONNRESET', connected: true });
    const record = await waitForRecord(lab, 'reset', (s) => s.received !== undefined);
    expect(record.remote).toBe(addrs.b4);
    const line = await proxy.waitForAccess(
      (l) => l.direction === 'inbound' && l.originalDst === `${addrs.a4}:${RESET}`,
    );
    expect(line.result).toBe('RST');
  });

  it('never gives its leg the port of another live connection from the same peer to the app (one conntrack entry each)', async () => {
    const { addrs } = lab;
    const range = inNs(lab.client, 'sysctl', ['-n', 'net.ipv4.ip_local_port_range']).trim();
    // Two ports for the proxy's legs. Connection A comes from the peer's port 40000, so its leg takes 40001; for
    // connection B the kernel can then offer only 40000, A's port: B's leg would share A's conntrack entry (and the
    // app's replies to A would go to B's socket), so the proxy refuses it and resets B, and A goes on unharmed.
    inNs(lab.client, 'sysctl', ['-q', '-w', 'net.ipv4.ip_local_port_range=40000 40001']);
    try {
      const held = await lab.peer.call('hold', {
        tag: 'ports',
        host: addrs.a4,
        port: ECHO,
        count: 1,
        localPort: 40000,
      });
      expect(held).toEqual({ open: 1, errors: [] });
      const legs = inNs(lab.client, 'ss', ['-Htn', 'state', 'established', `dst ${addrs.a4}:${ECHO}`]);
      expect(legs).toContain(`${addrs.b4}:40001`);
      expect(legs).not.toContain(`${addrs.b4}:40000 `);
      const b = await lab.peer.call<{ outcome: string; code?: string }>('connectOutcome', {
        host: addrs.a4,
        port: ECHO,
        send: 'hello\n',
      });
      expect(b.outcome).toBe('reset');
      const refused = await proxy.waitForAccess(
        (l) => l.originalDst === `${addrs.a4}:${ECHO}` && l.result === 'connect-failed',
      );
      expect(refused.detail).toBe('EADDRINUSE');
      expect(await lab.peer.call('pingHeld', { tag: 'ports' })).toEqual({ ok: 1, failures: [] });
    } finally {
      await lab.peer.call('closeHeld', { tag: 'ports' });
      inNs(lab.client, 'sysctl', ['-q', '-w', `net.ipv4.ip_local_port_range=${range.replace(/\s+/, ' ')}`]);
    }
  });

  it('leaves the rules, the policy rules and the routes exactly as before on uninstall', async () => {
    proxy.child.kill('SIGTERM');
    await proxy.exited;
    const r = meshctl(['uninstall', '--netns', lab.client, '--state-dir', stateDir], labEnv);
    expect(r.status, r.stderr).toBe(0);
    installed = false;
    expect(hostState(lab.client, backend)).toBe(before);
  });
});
