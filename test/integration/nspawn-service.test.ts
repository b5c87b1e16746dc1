// System test of the systemd units and `meshctl service` (issue 5): a Debian rootfs booted with systemd as PID 1
// in systemd-nspawn, in a network namespace of its own, with the built meshctl tree bind-mounted and installed by
// `meshctl service install`. A separate client namespace plays the peer. Checks interception both ways, proxy
// restarts under load (systemctl restart, kill -9), fail-open, a reboot, and an exact uninstall.
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { mkdirSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { integrationEnabled } from '../helpers/integration.js';
import {
  Container,
  REPO_ROOT,
  createLabTopology,
  tearDownNspawnLab,
  requireNspawnTools,
  loopDuring,
  resetLabTopology,
  rootfsTarball,
  sleep,
  unpackRootfs,
  writeLabScripts,
  type LabTopology,
} from '../helpers/nspawn-lab.js';
import { waitUntil } from '../helpers/wait.js';

const PREFIX = 'ms-sys';
const SUBNET = 213;
const MESHCTL = '/opt/meshctl/bin/meshctl';
const NODE = '/usr/local/bin/node';

const CONFIG = `# lab config: two worker processes (node:cluster on the socket-activated fds), a short drain so restarts are quick
proxy:
  user: meshproxy
  workers: 2
  drainTimeout: 5s
capture:
  ipv6: intercept
safety:
  onProxyDown: closed
`;

// Foreign rules present at every boot before meshctl (as Docker or ufw would add them): uninstall must keep them.
const FOREIGN_UNIT = `[Unit]
Description=lab: foreign netfilter rules that meshctl must leave alone
Before=meshctl-capture.service
[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/sbin/iptables -t nat -A OUTPUT -p tcp --dport 9999 -m comment --comment lab-foreign -j RETURN
ExecStart=/usr/sbin/iptables -t filter -A INPUT -p tcp --dport 9998 -j ACCEPT
ExecStart=/usr/sbin/ip6tables -t nat -A PREROUTING -p tcp --dport 9997 -j RETURN
[Install]
WantedBy=multi-user.target
`;

describe.skipIf(!integrationEnabled)('meshctl service in a systemd-nspawn container', () => {
  let topo: LabTopology;
  let root = '';
  let labDir = '';
  let ct: Container;
  let outboundServer: ChildProcess | null = null;
  let rulesBefore = '';

  /** What iptables-save and ip6tables-save show in the container's namespace, without counters and timestamps. */
  const xtablesRules = (): string => {
    const strip = (text: string) =>
      text
        .split('\n')
        .filter((l) => l && !l.startsWith('#'))
        .map((l) => l.replace(/\[\d+:\d+\]$/, ''))
        .join('\n');
    return ['iptables-save', 'ip6tables-save'].map((c) => strip(ct.run(c))).join('\n---\n');
  };
  // Exact: uninstall also removes the empty base chains iptables-nft created for our rules (src/netfilter/nft-tidy.ts).
  const nftRules = (): string => ct.run('nft', ['list', 'ruleset']);
  const ruleset = (): string => `${xtablesRules()}\n---\n${nftRules()}`;
  const stats = (): { accepted: { outbound: number; inbound: number } } => {
    const text = ct.run(NODE, [
      '-e',
      "fetch('http://127.0.0.1:15000/stats').then((r) => r.text()).then((t) => process.stdout.write(t))",
    ]);
    return (JSON.parse(text) as { connections: { accepted: { outbound: number; inbound: number } } }).connections;
  };
  const show = (unit: string, prop: string): string =>
    ct.run('systemctl', ['show', unit, `--property=${prop}`, '--value']).trim();
  const startInboundServer = (): void => {
    ct.run('systemd-run', ['--unit=lab-echo', '-p', 'DynamicUser=yes', NODE, '/opt/lab/echo-server.mjs', '::', '9090']);
    const listening = () => ct.run('ss', ['-Hltn', 'sport = :9090']);
    for (let i = 0; i < 200 && !listening().includes('9090'); i++) spawnSync('sleep', ['0.05']);
    if (!listening().includes('9090'))
      throw new Error(
        `lab-echo not listening on :9090 after 10 s; ss shows: ${JSON.stringify(listening())}, unit: ${show('lab-echo.service', 'ActiveState')}`,
      );
  };
  /** One connection from `where`; returns the greeting line (peer=… local=…). */
  const connectOnce = (where: 'client' | 'container', host: string, port: number): string => {
    const code = `const s=require('net').connect({host:'${host}',port:${port}});let b='';s.setTimeout(10000,()=>{console.error('timeout');process.exit(2)});s.on('data',d=>{b+=d;if(b.includes('\\n')){process.stdout.write(b.split('\\n')[0]);s.destroy()}});s.on('error',e=>{console.error(e.code||e.message);process.exit(1)})`;
    if (where === 'container') return ct.run(NODE, ['-e', code]);
    const r = spawnSync('ip', ['netns', 'exec', topo.clientNs, process.execPath, '-e', code], {
      encoding: 'utf8',
      timeout: 20_000,
    });
    if (r.status !== 0) throw new Error(`client connect to ${host}:${port} failed: ${r.stderr}`);
    return r.stdout;
  };
  const clientLoop = (host: string, port: number) => (stopFile: string) =>
    spawn(
      'ip',
      [
        'netns',
        'exec',
        topo.clientNs,
        process.execPath,
        join(labDir, 'conn-loop.mjs'),
        host,
        String(port),
        stopFile,
        '3000',
        '60000',
      ],
      { stdio: ['ignore', 'pipe', 'pipe'] },
    );
  const containerLoop = (host: string, port: number) => (stopFile: string) =>
    ct.spawn(NODE, [
      '/opt/lab/conn-loop.mjs',
      host,
      String(port),
      `/opt/lab/${stopFile.split('/').pop()}`,
      '3000',
      '60000',
    ]);

  beforeAll(async () => {
    requireNspawnTools();
    const tarball = rootfsTarball();
    root = unpackRootfs(tarball);
    labDir = writeLabScripts();
    writeFileSync(join(labDir, 'config.yaml'), CONFIG);
    writeFileSync(join(root, 'etc/systemd/system/lab-foreign-rules.service'), FOREIGN_UNIT);
    mkdirSync(join(root, 'etc/systemd/system/multi-user.target.wants'), { recursive: true });
    symlinkSync(
      '/etc/systemd/system/lab-foreign-rules.service',
      join(root, 'etc/systemd/system/multi-user.target.wants/lab-foreign-rules.service'),
    );
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
    outboundServer = spawn(
      'ip',
      ['netns', 'exec', topo.clientNs, process.execPath, join(labDir, 'echo-server.mjs'), '::', '8080'],
      { stdio: 'ignore' },
    );
    rulesBefore = ruleset();
  }, 600_000);

  afterAll(async () => {
    outboundServer?.kill('SIGKILL');
    await tearDownNspawnLab({ ct, topo, root, dirs: [labDir] });
  }, 120_000);

  it('installs the units, the meshproxy user and the config, and reports the host protected', () => {
    expect(rulesBefore).toContain('lab-foreign');
    const out = ct.run(MESHCTL, ['service', 'install', '--config', '/opt/lab/config.yaml']);
    expect(out).toContain('proxy ready on 127.0.0.1:15000');
    expect(ct.run('getent', ['passwd', 'meshproxy'])).toMatch(/^meshproxy:x:\d+:\d+:/);
    for (const unit of ['meshctl-proxy.socket', 'meshctl-proxy.service', 'meshctl-capture.service']) {
      expect(show(unit, 'ActiveState')).toBe('active');
      expect(show(unit, 'UnitFileState')).toBe('enabled');
    }
    // The proxy runs as the dedicated user on the sockets systemd passed (LISTEN_FDS), not on ports of its own.
    const pid = show('meshctl-proxy.service', 'MainPID');
    expect(ct.run('ps', ['-o', 'user=', '-p', pid]).trim()).toBe('meshproxy');
    const journal = ct.run('journalctl', ['-u', 'meshctl-proxy', '-o', 'cat', '--no-pager']);
    expect(journal).toContain('"socketActivation":true');
    expect(journal).toContain('"workers":2'); // node:cluster workers share the fds systemd passed
    const status = ct.exec(MESHCTL, ['service', 'status']);
    expect(status.stdout).toContain('PROTECTED');
    expect(status.status).toBe(0);
    startInboundServer();
  });

  it('runs capture sandboxed: systemd-analyze security rates both units at most 2.0, capture with only CAP_NET_ADMIN and CAP_NET_RAW', () => {
    for (const [unit, target] of [
      ['meshctl-capture.service', 2.0],
      ['meshctl-proxy.service', 2.0],
    ] as const) {
      // Exits non-zero only with --threshold; the verdict is the last line: "→ Overall exposure level for <unit>: X.Y OK …".
      const out = ct.run('systemd-analyze', ['security', '--no-pager', unit]);
      const last = out.trim().split('\n').pop() ?? '';
      const m = /Overall exposure level for (\S+): (\d+\.\d+) (\S+)/.exec(last);
      expect(m, `systemd-analyze security ${unit} ended with: ${JSON.stringify(last)}`).not.toBeNull();
      expect(m![1]).toBe(unit);
      expect(Number(m![2]), out).toBeLessThanOrEqual(target);
    }
    expect(show('meshctl-capture.service', 'CapabilityBoundingSet')).toBe('cap_net_admin cap_net_raw');
    expect(show('meshctl-capture.service', 'ProtectSystem')).toBe('strict');
    // The sandbox did not get in the way: the rules are there, the ledger was written to the state directory, and
    // a reload (ExecReload = `meshctl install` again, under the same sandbox) succeeds and keeps them.
    expect(ct.run('iptables-save', ['-t', 'nat'])).toContain('MESHCTL_OUTPUT');
    ct.run('systemctl', ['reload', 'meshctl-capture.service']);
    expect(show('meshctl-capture.service', 'ActiveState')).toBe('active');
    expect(ct.run('iptables-save', ['-t', 'nat'])).toContain('MESHCTL_OUTPUT');
    expect(ct.run('ls', ['/var/lib/meshctl'])).not.toBe('');
    // iptables' lock, shared with other xtables writers, exists for the unit to bind writable.
    expect(ct.exec('test', ['-f', '/run/xtables.lock']).status).toBe(0);
  });

  it('intercepts outbound connections from the container over IPv4 and IPv6', () => {
    const before = stats();
    expect(connectOnce('container', topo.client4, 8080)).toContain(`local=::ffff:${topo.client4}:8080`);
    expect(connectOnce('container', topo.client6, 8080)).toContain(`local=${topo.client6}:8080`);
    // The relay threads report a closed connection in their next batch, and the access log is written in batches
    // (at most 100 ms apart) before it reaches the journal: both polled, with a bound.
    let accepted = 0;
    let log = '';
    for (let i = 0; i < 100; i++) {
      accepted = stats().accepted.outbound - before.accepted.outbound;
      log = ct.run('journalctl', ['-u', 'meshctl-proxy', '-o', 'cat', '--no-pager']);
      if (accepted >= 2 && log.includes(`${topo.client4}:8080`)) break;
      spawnSync('sleep', ['0.1']);
    }
    expect(accepted).toBe(2);
    expect(log).toContain(`${topo.client4}:8080`);
    // The sandbox lets the proxy ask the kernel who owns a socket (sock_diag over netlink): the self-loop check ran
    // on both connections without failing, and root may use the admin API's privileged paths.
    expect(log).not.toContain('self-loop check: cannot ask the kernel');
    const admin = ct.run(NODE, [
      '-e',
      "fetch('http://127.0.0.1:15000/connections').then((r) => process.stdout.write(String(r.status)))",
    ]);
    expect(admin).toBe('200');
  });

  it('intercepts inbound connections from the client namespace over IPv4 and IPv6', () => {
    const before = stats();
    // The server sees the proxy's inbound passthrough source, not the client: the connection went through the proxy.
    expect(connectOnce('client', topo.ct4, 9090)).toMatch(/^peer=(::ffff:)?127\.0\.0\.6 /);
    expect(connectOnce('client', topo.ct6, 9090)).toMatch(/^peer=::6 /);
    expect(stats().accepted.inbound - before.accepted.inbound).toBe(2);
  });

  it('keeps every connection working while systemctl restart meshctl-proxy runs under load', async () => {
    const restartsBefore = Number(show('meshctl-proxy.service', 'NRestarts'));
    const pidBefore = show('meshctl-proxy.service', 'MainPID');
    // Both loops are going before the restart, and the outbound one runs until it is over (then 20 more each).
    let outboundGoing!: () => void;
    let restartDone!: () => void;
    const outboundStarted = new Promise<void>((resolve) => (outboundGoing = resolve));
    const restarted = new Promise<void>((resolve) => (restartDone = resolve));
    const [inbound, outbound] = await Promise.all([
      loopDuring(clientLoop(topo.ct4, 9090), join(labDir, 'stop-in'), async () => {
        try {
          await outboundStarted;
          ct.run('systemctl', ['restart', 'meshctl-proxy.service']);
        } finally {
          restartDone();
        }
      }),
      loopDuring(containerLoop(topo.client4, 8080), join(labDir, 'stop-out'), async () => {
        outboundGoing();
        await restarted;
      }),
    ]);
    expect(show('meshctl-proxy.service', 'MainPID')).not.toBe(pidBefore);
    expect(Number(show('meshctl-proxy.service', 'NRestarts'))).toBe(restartsBefore);
    for (const r of [inbound, outbound]) {
      expect(r.errors).toEqual([]);
      expect(r.refused).toBe(0);
      expect(r.failed).toBe(0);
      expect(r.ok).toBeGreaterThan(5);
    }
    expect(Object.keys(inbound.peers).every((p) => p.endsWith('127.0.0.6'))).toBe(true);
    expect(show('meshctl-capture.service', 'ActiveState')).toBe('active');
  });

  it('in closed mode, connections made while a kill -9ed proxy restarts wait and then succeed', async () => {
    // One process: with cluster workers a kill -9 of the primary leaves its workers draining while systemd stops the
    // cgroup; a connection handed to a worker in that window is still occasionally lost (open issue, noted in the
    // README). A worker no longer resets a connection it accepted while draining, which was one cause.
    ct.run('sed', ['-i', 's/workers: 2/workers: 1/', '/etc/meshctl/config.yaml']);
    ct.run('systemctl', ['restart', 'meshctl-proxy.service']);
    expect(ct.run('journalctl', ['-u', 'meshctl-proxy', '-o', 'cat', '--no-pager', '-n', '5'])).toContain(
      '"workers":1',
    );
    const captureSince = show('meshctl-capture.service', 'ActiveEnterTimestampMonotonic');
    const restartsBefore = Number(show('meshctl-proxy.service', 'NRestarts'));
    const pidBefore = show('meshctl-proxy.service', 'MainPID');
    const result = await loopDuring(
      clientLoop(topo.ct4, 9090),
      join(labDir, 'stop-kill'),
      async ({ quiesce, resume }) => {
        // No connection is in flight at the kill (one open through the killed process is lost, as with any crash);
        // every connection after it is made while systemd brings the proxy back, and must wait and then succeed.
        await quiesce();
        ct.run('kill', ['-9', pidBefore]);
        resume();
        await waitUntil(
          'meshctl-proxy active again after the kill',
          () => show('meshctl-proxy.service', 'ActiveState') === 'active',
          20_000,
          { seen: () => show('meshctl-proxy.service', 'ActiveState'), intervalMs: 50 },
        );
      },
    );
    expect(Number(show('meshctl-proxy.service', 'NRestarts'))).toBe(restartsBefore + 1);
    expect(show('meshctl-proxy.service', 'MainPID')).not.toBe(pidBefore);
    const journal = () => ct.run('journalctl', ['-u', 'meshctl-proxy', '-o', 'cat', '--no-pager', '-n', '40']);
    expect(result.errors, journal()).toEqual([]);
    expect(result.refused + result.failed).toBe(0);
    expect(Object.keys(result.peers).every((p) => p.endsWith('127.0.0.6'))).toBe(true);
    // Capture was never taken down: same activation as before the kill.
    expect(show('meshctl-capture.service', 'ActiveEnterTimestampMonotonic')).toBe(captureSince);
  });

  it('after a power-off and a fresh boot, capture is back and in sync', async () => {
    await ct.poweroff();
    resetLabTopology(topo, PREFIX); // a reboot: the kernel's rules and conntrack are gone
    outboundServer?.kill('SIGKILL');
    outboundServer = spawn(
      'ip',
      ['netns', 'exec', topo.clientNs, process.execPath, join(labDir, 'echo-server.mjs'), '::', '8080'],
      { stdio: 'ignore' },
    );
    await ct.boot();
    await waitUntil(
      'meshctl-capture active after the boot',
      () => show('meshctl-capture.service', 'ActiveState') === 'active',
      20_000,
      { seen: () => show('meshctl-capture.service', 'ActiveState'), intervalMs: 100 },
    );
    const status = ct.exec(MESHCTL, ['status', '--config', '/etc/meshctl/config.yaml']);
    expect(status.stdout).toContain('in sync');
    expect(status.status).toBe(0);
    expect(ct.exec(MESHCTL, ['service', 'status']).status).toBe(0);
    startInboundServer();
    expect(connectOnce('client', topo.ct4, 9090)).toMatch(/^peer=(::ffff:)?127\.0\.0\.6 /);
    const before = stats();
    connectOnce('container', topo.client4, 8080);
    expect(stats().accepted.outbound - before.accepted.outbound).toBe(1);
  }, 300_000);

  it('in open mode, stopping the proxy removes capture and traffic flows direct', () => {
    ct.run('sed', ['-i', 's/onProxyDown: closed/onProxyDown: open/', '/etc/meshctl/config.yaml']);
    ct.run(MESHCTL, ['service', 'install']);
    expect(ct.run('cat', ['/etc/systemd/system/meshctl-capture.service.d/10-meshctl-config.conf'])).toContain(
      'BindsTo=meshctl-proxy.service',
    );
    ct.run('systemctl', ['stop', 'meshctl-proxy.service']);
    expect(show('meshctl-capture.service', 'ActiveState')).toBe('inactive');
    expect(ct.run('iptables-save', ['-t', 'nat'])).not.toContain('MESHCTL');
    expect(connectOnce('client', topo.ct4, 9090)).toMatch(
      new RegExp(`^peer=(::ffff:)?${topo.client4.replace(/\./g, '\\.')} `),
    );
    expect(connectOnce('container', topo.client4, 8080)).toContain(`local=::ffff:${topo.client4}:8080`);
    expect(ct.exec(MESHCTL, ['service', 'status']).status).toBe(1);
    // Starting capture pulls the proxy up first (Wants= + After=), and interception is back.
    ct.run('systemctl', ['start', 'meshctl-capture.service']);
    expect(show('meshctl-proxy.service', 'ActiveState')).toBe('active');
    expect(connectOnce('client', topo.ct4, 9090)).toMatch(/^peer=(::ffff:)?127\.0\.0\.6 /);
  });

  it('meshctl service uninstall leaves the ruleset exactly as it was before install', () => {
    const out = ct.run(MESHCTL, ['service', 'uninstall']);
    expect(out).toContain('meshctl service removed');
    expect(ruleset()).toBe(rulesBefore);
    expect(xtablesRules()).not.toContain('MESHCTL');
    expect(ct.run('nft', ['list', 'ruleset'])).not.toMatch(/meshctl/i);
    for (const unit of ['meshctl-proxy.socket', 'meshctl-proxy.service', 'meshctl-capture.service']) {
      expect(show(unit, 'LoadState')).toBe('not-found');
    }
    expect(ct.exec('test', ['-e', '/usr/local/bin/meshctl']).status).not.toBe(0);
    expect(ct.run('cat', ['/etc/meshctl/config.yaml'])).toContain('onProxyDown: open');
    expect(ct.exec(MESHCTL, ['service', 'status']).status).toBe(3);
    expect(connectOnce('client', topo.ct4, 9090)).toMatch(
      new RegExp(`^peer=(::ffff:)?${topo.client4.replace(/\./g, '\\.')} `),
    );
  });

  it('service install --confirm-within removes capture again unless meshctl confirm arrives', async () => {
    const out = ct.run(MESHCTL, ['service', 'install', '--confirm-within', '3s']);
    expect(out).toContain('run `meshctl confirm` within 3s');
    expect(ct.run('iptables-save', ['-t', 'nat'])).toContain('MESHCTL_OUTPUT');
    // Nobody confirms: the revert timer (a transient systemd timer) removes the rules.
    await waitUntil(
      'the revert timer to remove the rules',
      () => !ct.run('iptables-save', ['-t', 'nat']).includes('MESHCTL'),
      20_000,
      { seen: () => ct.run('iptables-save', ['-t', 'nat']), intervalMs: 100 },
    );
    const status = ct.exec(MESHCTL, ['service', 'status']);
    expect(status.stdout).toContain('no capture rules are installed');
    expect(status.status).toBe(1);
    // Again, and confirmed: the rules stay past the deadline; the next start has no deadline (the env file is reset).
    ct.run(MESHCTL, ['service', 'install', '--confirm-within', '3s']);
    expect(ct.run(MESHCTL, ['confirm'])).toMatch(/confirm/i);
    // A bound on a negative (the confirmed install must not be reverted), so a fixed wait: past the 3 s deadline.
    await sleep(4500);
    expect(ct.run('iptables-save', ['-t', 'nat'])).toContain('MESHCTL_OUTPUT');
    expect(ct.run('cat', ['/run/meshctl/capture.env'])).toMatch(/^MESHCTL_INSTALL_ARGS=$/m);
    expect(ct.exec(MESHCTL, ['service', 'status']).status).toBe(0);
    ct.run(MESHCTL, ['service', 'uninstall']);
    expect(ruleset()).toBe(rulesBefore);
  }, 60_000);

  it("under the capture unit's sandbox, iptables-legacy can take the xtables lock and write rules (CAP_NET_RAW, /run/xtables.lock)", () => {
    // Last, so the legacy table it leaves in the container's namespace meets no other test. The bookworm rootfs runs
    // iptables-nft (no xtables lock), so this lab unit runs iptables-legacy under the shipped unit's hardening lines
    // as they are, including the ExecStartPre that creates the lock, removed here first.
    const unit = ct.run('cat', ['/opt/meshctl/systemd/meshctl-capture.service']);
    const hardening = unit.slice(unit.indexOf('# Hardening'), unit.indexOf('[Install]'));
    expect(hardening).toContain('ProtectSystem=strict');
    const legacy = ['iptables-legacy', 'ip6tables-legacy'].flatMap((c) => [
      `ExecStart=/usr/sbin/${c} -w -t filter -N LAB_SANDBOX`,
      `ExecStart=/usr/sbin/${c} -w -t filter -X LAB_SANDBOX`,
    ]);
    ct.run('sh', ['-c', 'cat >/etc/systemd/system/lab-sandbox-legacy.service'], {
      input: `[Service]\nType=oneshot\n${hardening}${legacy.join('\n')}\n`,
    });
    ct.run('rm', ['-f', '/run/xtables.lock']);
    ct.run('systemctl', ['daemon-reload']);
    const started = ct.exec('systemctl', ['start', 'lab-sandbox-legacy.service']);
    expect(started.status, ct.run('journalctl', ['-u', 'lab-sandbox-legacy', '-o', 'cat', '--no-pager'])).toBe(0);
    expect(ct.exec('test', ['-f', '/run/xtables.lock']).status).toBe(0);
    ct.run('rm', ['/etc/systemd/system/lab-sandbox-legacy.service']);
    ct.run('systemctl', ['daemon-reload']);
  });
});
