// TPROXY under real systemd: a Debian rootfs booted with systemd as PID 1 in systemd-nspawn (its own network
// namespace), `meshctl service install` with capture.inbound.mode tproxy. The drop-ins it writes for that mode
// (Transparent=yes on the socket; CAP_NET_ADMIN bounding and ambient, PrivateUsers=no on the proxy) must be enough for
// the hardened proxy unit to connect to the app from the client's own address; a client namespace plays the peer.
// Uninstall leaves the ruleset and the policy routing exactly as before.
import { spawnSync } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { integrationEnabled } from '../helpers/integration.js';
import {
  Container,
  REPO_ROOT,
  createLabTopology,
  tearDownNspawnLab,
  requireNspawnTools,
  rootfsTarball,
  sleep,
  unpackRootfs,
  writeLabScripts,
  type LabTopology,
} from '../helpers/nspawn-lab.js';

const PREFIX = 'tp-sys';
const SUBNET = 234;
const MESHCTL = '/opt/meshctl/bin/meshctl';
const NODE = '/usr/local/bin/node';
const CAP_NET_ADMIN = '0000000000001000';

const CONFIG = `# lab config: TPROXY inbound, two worker processes (node:cluster on the socket-activated fds)
proxy:
  user: meshproxy
  workers: 2
  drainTimeout: 5s
capture:
  ipv6: intercept
  inbound:
    mode: tproxy
`;

describe.skipIf(!integrationEnabled)('meshctl service with TPROXY inbound in a systemd-nspawn container', () => {
  let topo: LabTopology;
  let root = '';
  let labDir = '';
  let ct: Container;
  let before = '';

  /** The container namespace's rules (both families, nft included) and policy routing, without counters. */
  const hostState = (): string => {
    const strip = (text: string) =>
      text
        .split('\n')
        .filter((l) => l && !l.startsWith('#'))
        .map((l) => l.replace(/\[\d+:\d+\]$/, ''))
        .join('\n');
    return [
      strip(ct.run('iptables-save')),
      strip(ct.run('ip6tables-save')),
      ct.run('nft', ['list', 'ruleset']),
      ct.run('ip', ['-4', 'rule', 'show']),
      ct.run('ip', ['-6', 'rule', 'show']),
      ct.run('ip', ['-4', 'route', 'show', 'table', 'all']),
      ct.run('ip', ['-6', 'route', 'show', 'table', 'all']),
    ].join('\n---\n');
  };
  const show = (unit: string, prop: string): string =>
    ct.run('systemctl', ['show', unit, `--property=${prop}`, '--value']).trim();
  const caps = (pid: string): Record<string, string> =>
    Object.fromEntries(
      ct
        .run('grep', ['^Cap', `/proc/${pid}/status`])
        .trim()
        .split('\n')
        .map((l) => l.split(/:\s+/) as [string, string]),
    );
  /** One connection from the client namespace; returns the echo server's greeting (peer=… local=…). */
  const connectOnce = (host: string, port: number): string => {
    const code = `const s=require('net').connect({host:'${host}',port:${port}});let b='';s.setTimeout(10000,()=>{console.error('timeout');process.exit(2)});s.on('data',d=>{b+=d;if(b.includes('\\n')){process.stdout.write(b.split('\\n')[0]);s.destroy()}});s.on('error',e=>{console.error(e.code||e.message);process.exit(1)})`;
    const r = spawnSync('ip', ['netns', 'exec', topo.clientNs, process.execPath, '-e', code], {
      encoding: 'utf8',
      timeout: 20_000,
    });
    if (r.status !== 0) {
      const journal = ct.run('journalctl', ['-u', 'meshctl-proxy', '-o', 'cat', '--no-pager', '-n', '15']);
      throw new Error(`client connect to ${host}:${port} failed: ${r.stderr}\nthe proxy's last log lines:\n${journal}`);
    }
    return r.stdout;
  };

  beforeAll(async () => {
    requireNspawnTools();
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
    // The kernel adds the veth's IPv6 link-local address (and its local route) a moment after the link is up.
    for (let i = 0; i < 400 && !/^local fe80::/m.test(ct.run('ip', ['-6', 'route', 'show', 'table', 'local'])); i++)
      await sleep(25);
    expect(ct.run('ip', ['-6', 'route', 'show', 'table', 'local'])).toMatch(/^local fe80::/m);
    before = hostState();
  }, 600_000);

  afterAll(async () => {
    await tearDownNspawnLab({ ct, topo, root, dirs: [labDir] });
  }, 120_000);

  it('installs with transparent sockets and a proxy holding CAP_NET_ADMIN alone, as meshproxy', () => {
    const out = ct.run(MESHCTL, ['service', 'install', '--config', '/opt/lab/config.yaml']);
    expect(out).toContain('proxy ready on 127.0.0.1:15000');
    for (const unit of ['meshctl-proxy.socket', 'meshctl-proxy.service', 'meshctl-capture.service'])
      expect(show(unit, 'ActiveState'), unit).toBe('active');
    expect(show('meshctl-proxy.socket', 'Transparent')).toBe('yes');
    const pid = show('meshctl-proxy.service', 'MainPID');
    expect(ct.run('ps', ['-o', 'user=', '-p', pid]).trim()).toBe('meshproxy');
    const workers = ct
      .run('cat', [`/proc/${pid}/task/${pid}/children`])
      .trim()
      .split(/\s+/);
    expect(workers).toHaveLength(2);
    for (const p of [pid, ...workers]) {
      expect(caps(p), `pid ${p}`).toMatchObject({
        CapEff: CAP_NET_ADMIN,
        CapPrm: CAP_NET_ADMIN,
        CapBnd: CAP_NET_ADMIN,
      });
    }
  });

  it("delivers a client's connection to the app from the client's own address, IPv4 and IPv6", () => {
    ct.run('systemd-run', ['--unit=lab-echo', '-p', 'DynamicUser=yes', NODE, '/opt/lab/echo-server.mjs', '::', '9090']);
    const listening = () => ct.run('ss', ['-Hltn', 'sport = :9090']);
    for (let i = 0; i < 200 && !listening().includes('9090'); i++) spawnSync('sleep', ['0.05']);
    expect(listening()).toContain('9090');
    const v4 = new RegExp(`^peer=(::ffff:)?${topo.client4.replace(/\./g, '\\.')} `);
    expect(connectOnce(topo.ct4, 9090)).toMatch(v4);
    expect(connectOnce(topo.ct6, 9090)).toMatch(new RegExp(`^peer=${topo.client6} `));
    // Through the proxy, not around it: both are in its access log, with the client as the leg's source. The log is
    // written in batches (at most 100 ms apart) and then reaches the journal: polled, with a bound.
    const wanted = [
      new RegExp(`"upstreamLocal":"${topo.client4.replace(/\./g, '\\.')}:\\d+"`),
      new RegExp(`"upstreamLocal":"\\[${topo.client6}\\]:\\d+"`),
    ];
    let journal = '';
    for (let i = 0; i < 100; i++) {
      journal = ct.run('journalctl', ['-u', 'meshctl-proxy', '-o', 'cat', '--no-pager']);
      if (wanted.every((re) => re.test(journal))) break;
      spawnSync('sleep', ['0.1']);
    }
    for (const re of wanted) expect(journal).toMatch(re);
  });

  it('meshctl service uninstall leaves the ruleset and the policy routing exactly as before', () => {
    expect(ct.run(MESHCTL, ['service', 'uninstall'])).toContain('meshctl service removed');
    expect(hostState()).toBe(before);
  });
});
