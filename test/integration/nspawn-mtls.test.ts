// System test of one mTLS connection under real systemd: a Debian container booted with systemd (systemd-nspawn)
// runs meshctl from `meshctl service install` with an identity from `meshctl ca` whose key is root's (0600 in
// /etc/credstore) and reaches the proxy, running as meshproxy, through LoadCredential=; mtls.inbound is strict, two
// workers. The socket unit holds the tunnel port (socket activation). The client namespace is a second meshctl host:
// capture rules and a proxy (as nobody, outside systemd) with the peer's certificate from the same CA. Its app's
// connections to a service in the container go through the tunnel, over IPv4 and IPv6, and arrive on the activated
// tunnel fds; the container's access log (journal) names the peer's SPIFFE ID. After `systemctl restart
// meshctl-proxy` a new tunnel connection works; with the proxy stopped, the connection waits in the socket's backlog
// and starts the proxy.
import { spawnSync } from 'node:child_process';
import { chmodSync, chownSync, copyFileSync, mkdirSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { configFromObject } from '../../src/config/load.js';
import { integrationEnabled } from '../helpers/integration.js';
import { nsCommand, spawnLabProxy } from '../helpers/lab-process.js';
import {
  Container,
  REPO_ROOT,
  createLabTopology,
  tearDownNspawnLab,
  requireNspawnTools,
  rootfsTarball,
  unpackRootfs,
  writeLabScripts,
  type LabTopology,
} from '../helpers/nspawn-lab.js';
import {
  APP_UID,
  PROXY_GID,
  PROXY_UID,
  assertBuilt,
  installLabCapture,
  startAgent,
  type Agent,
} from '../helpers/proxy-lab.js';
import type { MtlsLine, MtlsProxy } from '../helpers/mtls-lab.js';
import { waitUntil } from '../helpers/wait.js';

const PREFIX = 'ms-mt';
const SUBNET = 241;
const MESHCTL = '/opt/meshctl/bin/meshctl';
const NODE = '/usr/local/bin/node';
const CT_ID = 'spiffe://lab.test/host/ct';
const PEER_ID = 'spiffe://lab.test/host/peer';
const APP_PORT = 9090;

const CONFIG = `# lab config: strict mTLS inbound, the key as a credential, two workers (node:cluster on the activated fds)
proxy:
  user: meshproxy
  workers: 2
  drainTimeout: 2s
capture:
  ipv6: intercept
mtls:
  inbound: strict
  identity:
    certificate: /etc/meshctl/identity/svid.pem
    key: credential:meshctl-mtls-key
    bundle: /etc/meshctl/identity/svid_bundle.pem
`;

interface ProxyAccess {
  tls?: string;
  peerIdentity?: string;
  localIdentity?: string;
  direction?: string;
  originalDst?: string;
  result?: string;
}

describe.skipIf(!integrationEnabled)('one mTLS connection into meshctl under systemd (systemd-nspawn)', () => {
  let topo: LabTopology;
  let root = '';
  let labDir = '';
  let peerDir = '';
  let ct: Container;
  let admin: Agent | null = null;
  let peer: MtlsProxy | null = null;

  const show = (unit: string, prop: string): string =>
    ct.run('systemctl', ['show', unit, `--property=${prop}`, '--value']).trim();
  /** The container proxy's access-log lines from the journal (JSON lines with a direction). */
  const journalAccess = (): ProxyAccess[] =>
    ct
      .run('journalctl', ['-u', 'meshctl-proxy', '-o', 'cat', '--no-pager'])
      .split('\n')
      .filter((l) => l.startsWith('{'))
      .flatMap((l) => {
        try {
          return [JSON.parse(l) as ProxyAccess];
        } catch {
          return [];
        }
      })
      .filter((l) => l.direction !== undefined);
  const proxyLog = () => ct.run('journalctl', ['-u', 'meshctl-proxy', '-o', 'cat', '--no-pager', '-n', '20']);
  /** One connection from the peer host's app (uid 1000, captured); returns the echo server's greeting. */
  const connectFromPeer = (host: string, timeoutMs = 15_000): string => {
    const code = `const s=require('net').connect({host:'${host}',port:${APP_PORT}});let b='';s.setTimeout(${timeoutMs},()=>{console.error('timeout, got '+JSON.stringify(b));process.exit(2)});s.on('connect',()=>s.write('tok\\n'));s.on('data',d=>{b+=d;if(b.split('\\n').length>=3){process.stdout.write(b);s.destroy()}});s.on('error',e=>{console.error(e.code||e.message);process.exit(1)});s.on('close',()=>{if(b.split('\\n').length<3){console.error('closed early, got '+JSON.stringify(b));process.exit(3)}})`;
    const r = spawnSync(
      'ip',
      nsCommand(topo.clientNs, [process.execPath, '-e', code], { uid: APP_UID, gid: APP_UID }),
      {
        encoding: 'utf8',
        timeout: timeoutMs + 5000,
      },
    );
    if (r.status !== 0)
      throw new Error(
        `the peer's app could not reach ${host}:${APP_PORT}: ${r.stderr}\npeer proxy:\n${peer?.stderr().slice(-2000)}\ncontainer proxy:\n${proxyLog()}`,
      );
    return r.stdout;
  };

  beforeAll(async () => {
    requireNspawnTools();
    assertBuilt();
    root = unpackRootfs(rootfsTarball());
    labDir = writeLabScripts();
    writeFileSync(join(labDir, 'config.yaml'), CONFIG);
    for (const dir of ['opt/meshctl', 'opt/lab']) mkdirSync(join(root, dir), { recursive: true });
    writeFileSync(join(root, 'usr/local/bin/node'), '');
    topo = createLabTopology(PREFIX, SUBNET);
    ct = new Container({
      name: `${PREFIX}-ct`,
      root,
      netns: topo.ctNs,
      binds: { [process.execPath]: NODE, [REPO_ROOT]: '/opt/meshctl', [labDir]: '/opt/lab' },
    });
    await ct.boot();
    // The kernel adds the veth's IPv6 addresses' local routes a moment after the link is up.
    await waitUntil(
      "the container's IPv6 address",
      () => ct.run('ip', ['-6', 'route', 'show', 'table', 'local']).includes(topo.ct6),
      10_000,
    );
  }, 600_000);

  afterAll(async () => {
    peer?.kill();
    admin?.stop();
    await tearDownNspawnLab({ ct, topo, root, dirs: [labDir, peerDir] });
  }, 120_000);

  it('installs with the tunnel port in the socket unit and the key as a credential meshproxy cannot read', () => {
    ct.run(MESHCTL, ['ca', 'init', '/root/ca', '--trust-domain', 'lab.test']);
    ct.run(MESHCTL, ['ca', 'issue', '--ca', '/root/ca', '--id', CT_ID, '--out', '/etc/meshctl/identity']);
    ct.run(MESHCTL, ['ca', 'issue', '--ca', '/root/ca', '--id', PEER_ID, '--out', '/root/peer-identity']);
    ct.run('install', ['-d', '-m', '0700', '/etc/credstore']);
    ct.run('install', ['-m', '0600', '/etc/meshctl/identity/svid_key.pem', '/etc/credstore/meshctl-mtls-key']);

    const out = ct.run(MESHCTL, ['service', 'install', '--config', '/opt/lab/config.yaml']);
    expect(out).toContain('proxy ready on 127.0.0.1:15000');
    for (const unit of ['meshctl-proxy.socket', 'meshctl-proxy.service', 'meshctl-capture.service'])
      expect(show(unit, 'ActiveState'), unit).toBe('active');
    const socketDropIn = ct.run('cat', ['/etc/systemd/system/meshctl-proxy.socket.d/10-meshctl-config.conf']);
    expect(socketDropIn).toContain('ListenStream=0.0.0.0:15008\nListenStream=[::]:15008\n');
    const proxyDropIn = ct.run('cat', ['/etc/systemd/system/meshctl-proxy.service.d/10-meshctl-config.conf']);
    expect(proxyDropIn).toContain('LoadCredential=meshctl-mtls-key\n');
    // systemd (PID 1) holds the tunnel port, both families; the proxy got the fds.
    const held = ct.run('ss', ['-Hltnp', 'sport = :15008']);
    expect(held.trim().split('\n'), held).toHaveLength(2);
    for (const line of held.trim().split('\n')) expect(line, held).toMatch(/\("systemd",pid=1,/);
    const pid = show('meshctl-proxy.service', 'MainPID');
    expect(ct.run('ps', ['-o', 'user=', '-p', pid]).trim()).toBe('meshproxy');
    for (const file of ['/etc/credstore/meshctl-mtls-key', '/etc/meshctl/identity/svid_key.pem'])
      expect(ct.exec('runuser', ['-u', 'meshproxy', '--', 'cat', file]).status, file).not.toBe(0);
    const journal = ct.run('journalctl', ['-u', 'meshctl-proxy', '-o', 'cat', '--no-pager']);
    expect(journal).toMatch(/"socketActivation":true/);
    expect(journal).toContain('tunnel (fd 7)');
    // status reads the live proxy's identity and its expiry (24 h from meshctl ca issue).
    expect(ct.run(MESHCTL, ['status'])).toMatch(
      /^ {2}mtls: identity spiffe:\/\/lab\.test\/host\/ct, certificate valid for 23h \d+m \(\d+ s left, until /m,
    );
  });

  it("carries the peer host's app through the tunnel to the container's app; the journal names the peer's SPIFFE ID", async () => {
    ct.run('systemd-run', [
      '--unit=lab-echo',
      '-p',
      'DynamicUser=yes',
      NODE,
      '/opt/lab/echo-server.mjs',
      '::',
      String(APP_PORT),
    ]);
    await waitUntil('the echo server to listen', () => ct.run('ss', ['-Hltn', `sport = :${APP_PORT}`]).trim(), 10_000);

    // The peer host: its own capture and proxy, its certificate from the container's CA (nobody reads it).
    peerDir = mkdtempSync(join(tmpdir(), `${PREFIX}-peer-`));
    chmodSync(peerDir, 0o755);
    const identity = {
      certificate: join(peerDir, 'svid.pem'),
      key: join(peerDir, 'svid_key.pem'),
      bundle: join(peerDir, 'svid_bundle.pem'),
    };
    for (const file of Object.values(identity)) {
      copyFileSync(join(root, 'root/peer-identity', file.slice(peerDir.length + 1)), file);
      chownSync(file, PROXY_UID, PROXY_GID);
      chmodSync(file, file.endsWith('key.pem') ? 0o600 : 0o644);
    }
    const raw = {
      proxy: { user: 'nobody', workers: 1, connectTimeout: '20s' },
      capture: { ipv6: 'intercept' },
      safety: { sshPorts: [22] },
      stateDir: join(peerDir, 'state'),
      mtls: { identity, peers: [`${topo.ct4}/32`, `${topo.ct6}/128`] },
    };
    const file = join(peerDir, 'peer.json');
    writeFileSync(file, JSON.stringify(raw, null, 2), { mode: 0o644 });
    await installLabCapture(topo.clientNs, configFromObject(raw, { file }), join(peerDir, 'xtables.lock'));
    admin = await startAgent(topo.clientNs);
    peer = spawnLabProxy<MtlsLine>(topo.clientNs, ['--config', file], {
      user: { uid: PROXY_UID, gid: PROXY_GID },
      adminVia: admin,
    });
    await peer.waitReady();

    // The container's app sees the proxy's inbound passthrough source, and its echo: a served connection.
    expect(connectFromPeer(topo.ct4)).toMatch(
      new RegExp(`^peer=(::ffff:)?127\\.0\\.0\\.6 local=.*:${APP_PORT}\\ntok\\n`),
    );
    expect(connectFromPeer(topo.ct6)).toMatch(new RegExp(`^peer=::6 local=.*:${APP_PORT}\\ntok\\n`));
    const seen = await waitUntil(
      "two mTLS lines with the peer's SPIFFE ID in the container's journal",
      () => {
        const lines = journalAccess().filter((l) => l.tls === 'mtls' && l.peerIdentity === PEER_ID);
        return lines.length >= 2 ? lines : null;
      },
      10_000,
      { seen: () => journalAccess().slice(-4) },
    );
    for (const address of [topo.ct4, topo.ct6])
      expect(
        seen.some((l) => l.originalDst?.includes(address) && l.originalDst.endsWith(`:${APP_PORT}`)),
        `${address}: ${JSON.stringify(seen)}`,
      ).toBe(true);
    // The peer's side names the container's identity: both identities on one connection.
    const out = await peer.waitForAccess((l) => l.direction === 'outbound' && l.tls === 'mtls', 10_000);
    expect(out.peerIdentity).toBe(CT_ID);
    // Strict: nothing reached the container's app in plaintext.
    expect(journalAccess().filter((l) => l.tls === 'plaintext' && l.result !== 'refused')).toEqual([]);
  });

  it('a new tunnel connection works after systemctl restart meshctl-proxy', async () => {
    const before = show('meshctl-proxy.service', 'MainPID');
    const count = () => journalAccess().filter((l) => l.tls === 'mtls' && l.peerIdentity === PEER_ID).length;
    const served = count();
    ct.run('systemctl', ['restart', 'meshctl-proxy.service']);
    expect(show('meshctl-proxy.service', 'MainPID')).not.toBe(before);
    expect(connectFromPeer(topo.ct4)).toMatch(/^peer=(::ffff:)?127\.0\.0\.6 /);
    await waitUntil('the restarted proxy to log the tunneled connection', () => count() > served, 10_000, {
      seen: () => journalAccess().slice(-3),
    });
  });

  it('with the proxy stopped, a tunnel connection waits in the socket backlog and starts it', async () => {
    ct.run('systemctl', ['stop', 'meshctl-proxy.service']);
    expect(show('meshctl-proxy.service', 'ActiveState')).toBe('inactive');
    // The port stays open: systemd holds it.
    expect(ct.run('ss', ['-Hltnp', 'sport = :15008'])).toMatch(/\("systemd",pid=1,/);
    const served = journalAccess().filter((l) => l.tls === 'mtls' && l.peerIdentity === PEER_ID).length;
    expect(connectFromPeer(topo.ct4, 30_000)).toMatch(/^peer=(::ffff:)?127\.0\.0\.6 /);
    // The connection was served by the proxy the socket started (systemd marks it active once /ready answers).
    await waitUntil(
      'the socket-started proxy to be active',
      () => show('meshctl-proxy.service', 'ActiveState') === 'active',
      30_000,
      {
        seen: () => show('meshctl-proxy.service', 'ActiveState'),
      },
    );
    await waitUntil(
      'the socket-started proxy to log the tunneled connection',
      () => journalAccess().filter((l) => l.tls === 'mtls' && l.peerIdentity === PEER_ID).length > served,
      10_000,
      { seen: () => journalAccess().slice(-3) },
    );
  });
});
